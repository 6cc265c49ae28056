"""What an edge knows of its clients, and decides for them, with no socket in sight.

For each request a client sends, ``Clients.request`` says what to do: answer it here
(pings, frames that are no request, too fast) or relay it to the core. Pings are answered
only while the core is heard: an edge cut off from its core goes quiet, so that its
clients declare it lost and move to another (client/connection.py).

A ping is answered as the core would answer it: ``ok`` only for a client whose session
the core opened (its hello answered ok) and has not ended since as far as the edge can
tell (a ``bye``, a ``no_session`` the core sent it, the core losing this edge or a new
core: ``sessions_ended``); ``no_session`` for the others, so that a client whose session
is gone notices at its next ping and resumes (PROTOCOL.md §5), behind an edge as on a
core. A ping sent while the client's hello is on its way goes to the core, behind it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from schema import ProtocolError, decode, error, ok, pack, unpack
from schema import protocol as P

HELLOS_IN_FLIGHT = 16  # hellos of one client on their way to the core that are followed
# Most of what an edge hears: every idle client's ping, each second, the same bytes from
# every client (id 0, as the protocol has it). Known by those bytes, it is answered
# without decoding it or packing the answer.
_PING = pack({"id": 0, "cmd": "ping"})
_PONG = pack([ok(0)])
_NO_SESSION = pack([error(0, ProtocolError("no_session"))])


@dataclass(slots=True)
class Client:
    last_seen: float
    tokens: float
    refilled: float
    # ids of its hellos on their way to the core (the newest HELLOS_IN_FLIGHT), and when
    # the last went: their replies name this edge's publisher, and pings wait behind them
    hellos: deque[int] = field(default_factory=lambda: deque(maxlen=HELLOS_IN_FLIGHT))
    hello_sent: float = 0.0
    session: bool = False  # the core opened a session for it, as far as the edge knows


@dataclass(frozen=True, slots=True)
class Answer:
    """Send this frame back to the client, here."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Relay:
    """Hand the request to the core (``hello``: it opens a session)."""

    hello: bool


@dataclass
class Clients:
    rate: float = P.RATE_DEFAULT  # requests a second, steady (0: unlimited)
    burst: float = P.BURST_DEFAULT
    timeout: float = P.PEER_TIMEOUT
    known: dict[bytes, Client] = field(default_factory=dict)

    def request(self, client: bytes, body: bytes, now: float, core_alive: bool
                ) -> Answer | Relay | None:
        """What to do with one request frame from a client (None: drop it: a ping while
        the core is not heard)."""
        state = self.known.get(client)
        if state is None:
            state = self.known[client] = Client(now, self.burst, now)
        if body == _PING:
            state.last_seen = now
            return self._ping(state, 0, now, core_alive)
        try:
            request = decode(body)
        except ProtocolError as err:
            # Not a request: refused and charged, and no sign of life (as on the core,
            # where only requests keep a session): junk cannot keep a client alive.
            return Answer(self._refused(state, err.rid, err, now))
        state.last_seen = now
        if request.cmd == "ping":
            return self._ping(state, request.id, now, core_alive)
        if not self._take(state, now):
            return Answer(pack([error(request.id, _too_fast(self.rate))]))
        if request.cmd == "hello":
            state.hellos.append(request.id)
            state.hello_sent = now
            return Relay(hello=True)
        if request.cmd == "bye":
            state.session = False  # (the core ends it; if it refuses, pings tell it so)
        return Relay(hello=False)

    def _ping(self, state: Client, rid: int | None, now: float, core_alive: bool
              ) -> Answer | Relay | None:
        if not core_alive:
            return None
        if state.hellos and now - state.hello_sent < self.timeout:
            return Relay(hello=False)  # answered by the core, after the hello
        if rid == 0:
            return Answer(_PONG if state.session else _NO_SESSION)
        if state.session:
            return Answer(pack([ok(rid)]))
        return Answer(pack([error(rid, ProtocolError("no_session"))]))

    def refuse(self, client: bytes, err: ProtocolError, now: float) -> Answer:
        """A message that is no request at all (several frames), refused and charged."""
        state = self.known.get(client)
        if state is None:
            state = self.known[client] = Client(now, self.burst, now)
        return Answer(self._refused(state, None, err, now))

    def hello_refused(self, client: bytes, rid: int) -> None:
        """Its hello was answered here (``bad_route``): not on its way to the core."""
        state = self.known.get(client)
        if state is not None and rid in state.hellos:
            state.hellos.remove(rid)

    def unrelayed(self, client: bytes) -> bool:
        """A request of this client could not be relayed (no core heard, or the link is
        full): whatever session it had is to end (True if it had one, or was opening
        one), so that its next ping gets ``no_session`` and it resumes, sending again
        what it has not had answered."""
        state = self.known.get(client)
        if state is None or not (state.session or state.hellos):
            return False
        state.session = False
        state.hellos.clear()
        return True

    def session_ended(self, client: bytes) -> None:
        """The core ended this client's session (ENDED): its pings say so from now on."""
        state = self.known.get(client)
        if state is not None:
            state.session = False
            # (a hello answered in the same turn came before the end: not a session)
            state.hellos.clear()

    def sessions_ended(self) -> None:
        """The core holds no session of this edge's clients (it lost this edge, or it is
        a new core): none is open, and no hello on its way will be answered."""
        for state in self.known.values():
            state.session = False

    def _refused(self, state: Client, rid: int | None, err: ProtocolError, now: float
                 ) -> bytes:
        """A frame that is no valid request is charged like one (as the core does)."""
        if not self._take(state, now):
            err = _too_fast(self.rate)
        return pack([error(rid, err)])

    def _take(self, state: Client, now: float) -> bool:
        if self.rate <= 0:
            return True
        state.tokens = min(self.burst, state.tokens + (now - state.refilled) * self.rate)
        state.refilled = now
        if state.tokens < 1:
            return False
        state.tokens -= 1
        return True

    def reply(self, client: bytes, frame: bytes, pub: str) -> bytes:
        """A frame from the core for a client: the answer to its hello names this edge's
        publisher, not the core's (which the client cannot, and must not, reach), and
        opens its session; a ``no_session`` says it has none (any more)."""
        state = self.known.get(client)
        if state is None or not (state.hellos or b"no_session" in frame):
            return frame
        messages = unpack(frame)
        changed = False
        for message in messages:
            if not isinstance(message, dict):
                continue
            rid = message.get("re")
            if rid is not None and rid in state.hellos:
                state.hellos.remove(rid)
                if message.get("ok"):
                    message["pub"] = pub
                    changed = state.session = True
                    self._follow(message.get("limits"))
            elif message.get("code") == "no_session":
                state.session = False
        return pack(messages) if changed else frame

    def _follow(self, limits: object) -> None:
        """The core's limits, as it tells every client: the edge's are the same."""
        if isinstance(limits, dict):
            rate, burst = limits.get("rate"), limits.get("burst")
            if isinstance(rate, (int, float)) and isinstance(burst, (int, float)):
                self.rate, self.burst = float(rate), float(burst)

    def silent(self, now: float) -> list[bytes]:
        """Clients silent longer than the timeout: forgotten, and returned."""
        deadline = now - self.timeout
        gone = [c for c, state in self.known.items() if state.last_seen < deadline]
        for client in gone:
            del self.known[client]
        return gone

    def forget(self, client: bytes) -> None:
        self.known.pop(client, None)

    def pardon(self, seconds: float) -> None:
        """The edge itself was away: nobody's silence then counts."""
        for state in self.known.values():
            state.last_seen += seconds


def _too_fast(rate: float) -> ProtocolError:
    return ProtocolError("rate_limited", f"Slow down: at most {rate:g} requests a second")
