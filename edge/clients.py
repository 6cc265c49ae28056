"""What an edge knows of its clients, and decides for them, with no socket in sight.

For each request a client sends, ``Clients.request`` says what to do: answer it here
(pings, frames that are no request, too fast) or relay it to the core. Pings are answered
only while the core is heard: an edge cut off from its core goes quiet, so that its
clients declare it lost and move to another (client/connection.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schema import ProtocolError, decode, error, ok, pack, unpack
from schema import protocol as P


@dataclass(slots=True)
class Client:
    last_seen: float
    tokens: float
    refilled: float
    hello: int | None = None  # the id of its hello on its way to the core, if any


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
        state.last_seen = now
        try:
            request = decode(body)
        except ProtocolError as err:
            return Answer(self._refused(state, err.rid, err, now))
        if request.cmd == "ping":
            return Answer(pack([ok(request.id)])) if core_alive else None
        if not self._take(state, now):
            return Answer(pack([error(request.id, _too_fast(self.rate))]))
        if request.cmd == "hello":
            state.hello = request.id
            return Relay(hello=True)
        return Relay(hello=False)

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
        publisher, not the core's (which the client cannot, and must not, reach)."""
        state = self.known.get(client)
        if state is None or state.hello is None:
            return frame
        messages = unpack(frame)
        for message in messages:
            if isinstance(message, dict) and message.get("re") == state.hello:
                state.hello = None
                if message.get("ok"):
                    message["pub"] = pub
                    self._follow(message.get("limits"))
                return pack(messages)
        return frame

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
