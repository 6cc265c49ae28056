"""The client library: one session with a broker, turned into a stream of events.

``Connection`` owns a DEALER (requests, replies, private traffic) and a SUB (room events).
It keeps every room it is in gap-free: room events carry a per-room ``seq``; one that
arrives early is held back while the missing ones are fetched over the DEALER, and one
already seen is dropped. Rooms tick once a second with their latest seq, so a missed
*last* message is noticed too, and a room that falls silent is re-subscribed (the broker
may have refused a subscription while guarding against a hostile peer).

Every request keeps within the broker's rate limit by itself: the ``hello`` reply
announces the broker's token bucket (``limits.rate``, ``limits.burst``), and a ``Pacer``
mirrors it, a little tighter. Requests wait in one queue, in order, until a token is
free; ``queued`` says how many of the user's are waiting, for UIs to show. So an honest
client is never answered ``rate_limited``, however fast lines are pasted or piped.

Nothing here prints or reads a terminal: UIs (line mode, JSON, interactive) consume
``Event``s and call ``request``. The bench drives this class directly too.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import zmq

from schema import PROTOCOL_VERSION, keys, messages, pack
from schema import protocol as P

CATCH_UP_PAGE = P.HISTORY_PAGE_MAX
SILENT_ROOM = 3.5 * P.ROOM_TICK_INTERVAL  # no event nor tick this long: re-subscribe
HELD_BACK_MAX = 10_000  # early events kept while a gap is fetched
# How much tighter than the broker's bucket ours is: its rate and burst are measured on
# arrival, ours on sending, and the network may bunch requests up on the way.
PACE_RATE_MARGIN = 0.9
PACE_BURST_MARGIN = 0.1
# With several addresses: once one is lost, each next one has this long to answer the
# resume hello before we move on again (a live broker answers in milliseconds).
MOVE_TIMEOUT = 2.0


def parse_address(text: str) -> str:
    """``HOST:PORT`` or ``tcp://HOST:PORT`` -> ``tcp://HOST:PORT``; ValueError with one
    clear line for anything else (libzmq would only say "Invalid argument")."""
    rest = text.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")  # [::1]:5555
    if (not sep or not host or not port.isascii() or not port.isdigit()
            or not 0 < int(port) < 65536 or "/" in host
            or (":" in host and not bracketed)):
        raise ValueError(f"not a broker address: {text!r} (expected HOST:PORT, "
                         "for example 127.0.0.1:5555, or tcp://HOST:PORT)")
    return f"tcp://{host}:{int(port)}"


def parse_servers(text: str) -> list[str]:
    """``A,B,C``: the addresses of brokers that stand in for each other (a core and its
    standbys), each as ``parse_address`` takes it."""
    return [parse_address(part.strip()) for part in text.split(",")]


class _Bucket:
    """Our mirror of one of the broker's token buckets."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.rate = 0.0  # 0: unlimited (until the broker tells us otherwise)
        self.capacity = 1.0
        self.tokens = 1.0
        self._refilled = clock()

    def configure(self, rate: Any, burst: Any, spent: float) -> None:
        """The broker's limits, a margin tighter. A reconnect keeps what was spent: the
        broker keeps our buckets across sessions."""
        if not _positive(rate) or not _positive(burst):
            self.rate = 0.0
            return
        first = self.rate == 0.0
        self._refill()
        self.rate = float(rate) * PACE_RATE_MARGIN
        self.capacity = max(1.0, float(burst) - max(1.0, float(burst) * PACE_BURST_MARGIN))
        self.tokens = self.capacity - spent if first else min(self.tokens, self.capacity)

    def _refill(self) -> None:
        now = self.clock()
        if self.rate > 0:
            self.tokens = min(self.capacity, self.tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    def _needed(self, cost: float) -> float:
        # A cost over our (tighter) capacity goes once the bucket is full: the broker's,
        # never emptier than ours, then holds it whole.
        return min(cost, self.capacity)

    def ready(self, cost: float) -> bool:
        if self.rate <= 0:
            return True
        self._refill()
        return self.tokens >= self._needed(cost)

    def spend(self, cost: float) -> None:
        """Spend ``cost``, into debt if need be (as for a history page already read)."""
        if self.rate > 0:
            self._refill()
            self.tokens -= cost

    def wait(self, cost: float) -> float:
        if self.rate <= 0:
            return 0.0
        self._refill()
        return max(0.0, (self._needed(cost) - self.tokens) / self.rate)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


class Pacer:
    """Our side of the broker's limits: may a request go now, and if not, how long until
    it may? The broker allows ``burst`` requests at once, then ``rate`` a second, and
    charges what each delivers (characters times recipients) to a second bucket
    (``delivery_rate``, ``delivery_burst``). We allow ourselves a margin less of each, so
    that nothing we send is refused."""

    def __init__(self, clock: Callable[[], float]):
        self.requests = _Bucket(clock)
        self.characters = _Bucket(clock)

    def configure(self, limits: dict[str, Any]) -> None:
        if not _positive(limits.get("rate")):  # the broker then checks neither
            self.requests.rate = self.characters.rate = 0.0
            return
        self.requests.configure(limits.get("rate"), limits.get("burst"), spent=1)  # hello
        self.characters.configure(limits.get("delivery_rate"), limits.get("delivery_burst"),
                                  spent=0)

    def ready(self, characters: float) -> bool:
        return self.requests.ready(1) and self.characters.ready(characters)

    def take(self, characters: float) -> bool:
        """Spend a request's tokens if it may go now."""
        if not self.ready(characters):
            return False
        self.requests.spend(1)
        self.characters.spend(characters)
        return True

    def owe(self, characters: float) -> None:
        """What a reply delivered that could not be known before (history pages)."""
        self.characters.spend(characters)

    def wait(self, characters: float) -> float:
        return max(self.requests.wait(1), self.characters.wait(characters))


class Unreachable(Exception):
    """No broker answered in time."""


class Refused(Exception):
    """The broker answered the hello with an error (full, wrong version)."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


@dataclass(frozen=True)
class Event:
    """Something for the user: ``kind`` names it, ``data`` is JSON-ready."""

    kind: str
    data: dict[str, Any]
    # The id of the request this answers (reply, error), for UIs that track their own
    # lines; not part of what the event says, so not compared.
    re: int | None = field(default=None, compare=False)


@dataclass
class RoomView:
    """What this client knows of a room it is in."""

    name: str
    topic: bytes
    seq: int  # the last event delivered to the user, in order
    oldest: int  # the oldest seq shown, for paging back
    heard: float  # when the room last sent anything (event or tick)
    catching_up: int | None = None  # id of the outstanding catch-up request
    held: dict[int, dict[str, Any]] = field(default_factory=dict)  # early events
    members: list[str] = field(default_factory=list)  # as of ``seq``, in join order
    key: str | None = None  # the room key we joined with, to join again on resuming


@dataclass(frozen=True)
class _Outgoing:
    """A request waiting in the queue for a token of the rate limit."""

    rid: int
    cmd: str
    args: dict[str, Any]
    retry: bool


@dataclass(frozen=True)
class _Pending:
    cmd: str
    args: dict[str, Any]
    purpose: str  # "user" (someone waits on it), "scrollback", "catch-up", "resume" or
    # "members" (the rest of a room's members, a page at a time, after a welcome)


def _pub_address(advertised: str, server: str) -> str:
    """The broker advertises its bound address; a wildcard host means 'my host'."""
    pub, srv = urlsplit(advertised), urlsplit(server)
    if pub.scheme == "tcp" and pub.hostname in ("0.0.0.0", "*", "::") and srv.hostname:
        return f"tcp://{srv.hostname}:{pub.port}"
    return advertised


def tune(sock: zmq.Socket) -> None:
    """Options every client socket gets (the benchmark's simulated clients' too)."""
    sock.setsockopt(zmq.LINGER, 0)
    # Pings tell us within seconds that the broker is silent; these slower ZMTP heartbeats
    # only make libzmq drop and redial a connection that went dead without a FIN (a
    # vanished host), which nothing else would notice. Every one of them costs the broker
    # a CURVE box and a syscall, times every client it has.
    sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)


class Connection:
    def __init__(self, server: str | Sequence[str], *, server_key: bytes | None = None,
                 identity: keys.KeyPair | None = None, ctx: zmq.Context | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``server``: the broker's address, or several of brokers that stand in for each
        other (a core and its standbys: one of them serves at a time); we use one, and
        move to the next when it is lost. ``server_key``: the broker's CURVE public key
        (z85), pinned; None for a plaintext broker. ``identity``: our own key pair, to
        keep a registered nickname across runs; a fresh one is made for each connection
        otherwise."""
        self.servers = [server] if isinstance(server, str) else list(server)
        self.server = self.servers[0]  # the address in use
        self._moved = 0.0  # when we last moved to another address
        self.ctx = ctx or zmq.Context.instance()
        self.clock = clock
        self.client_id = os.urandom(8).hex()
        self.dealer = self.ctx.socket(zmq.DEALER)
        # Our own routing id: after a network blip the broker still knows who we are.
        # (Under CURVE, keys.curve_client replaces it with the one bound to our key.)
        self.dealer.setsockopt(zmq.ROUTING_ID, b"c" + os.urandom(15))
        self.sub = self.ctx.socket(zmq.SUB)
        if server_key is not None:
            if identity is None:
                public, secret = zmq.curve_keypair()
                identity = keys.KeyPair(public, secret)
            for sock in (self.dealer, self.sub):
                keys.curve_client(sock, server_key, identity)
        self.secure = server_key is not None
        for sock in (self.dealer, self.sub):
            tune(sock)
        # Reconnect by ourselves, backing off from 0.1 s to 2 s between attempts.
        self.dealer.setsockopt(zmq.RECONNECT_IVL, 100)
        self.dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.name: str | None = None
        self.current: str | None = None
        self.rooms: dict[str, RoomView] = {}
        self.incarnation: str | None = None
        self._pub = ""
        self._password: str | None = None  # kept to take a registered nickname back
        self._ping_sent: float | None = None  # the unanswered ping, for lag()
        self._round_trip: float | None = None
        self.heartbeat = P.HEARTBEAT_INTERVAL
        self.timeout = P.PEER_TIMEOUT
        self.lost = False
        self.resuming = False
        self._resume_sent = 0.0
        self.closed = False
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._outbox: deque[_Outgoing] = deque()  # in order, waiting for the pacer
        self._resume_rid: int | None = None  # the resume hello, which goes first
        self.pacer = Pacer(clock)
        self._users_seen = 1  # how many users a broadcast reaches, as last listed
        self._events: deque[Event] = deque()
        now = clock()
        self._last_heard = self._last_sent = now

    # -- lifecycle ------------------------------------------------------------------------

    def hello(self, timeout: float = 2.0) -> dict[str, Any]:
        """Open the session with the first address that answers within ``timeout``;
        raise Unreachable if none does, Refused if a broker says no (full, wrong version)
        or refuses our key."""
        with keys.handshake_watch(self.dealer) as monitor:  # from the first attempt on
            for server in self.servers:
                self.server = server
                self.dealer.connect(server)
                try:
                    return self._await_hello(timeout, monitor)
                except keys.HandshakeRefused as exc:
                    raise Refused("handshake", str(exc)) from None
                except Unreachable as exc:
                    unanswered = exc
                    if len(self.servers) > 1:
                        self.dealer.disconnect(server)
        if len(self.servers) == 1:
            raise unanswered
        hint = " (is --server-key the brokers' key?)" if self.secure else ""
        raise Unreachable(f"No broker answered at {', '.join(self.servers)} within "
                          f"{timeout:g} s each{hint}")

    def _await_hello(self, timeout: float, monitor: zmq.Socket) -> dict[str, Any]:
        rid = self._send("hello", self._hello_fields())
        deadline = self.clock() + timeout
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while (left := deadline - self.clock()) > 0:
            ready = dict(poller.poll(left * 1000))
            if monitor in ready:
                raise keys.handshake_failure(monitor, self.server)
            if self.dealer not in ready:
                continue
            frame = messages(self.dealer.recv())
            for k, reply in enumerate(frame):
                if reply.get("re") != rid:
                    continue
                if not reply.get("ok"):
                    raise Refused(str(reply.get("code")), str(reply.get("error")))
                self._session_opened(reply)
                for message in frame[:k] + frame[k + 1:]:  # anything else the turn had
                    self._from_broker(message)
                return reply
        hint = " (is --server-key the broker's key?)" if self.secure else ""
        raise Unreachable(f"No broker answered at {self.server} within {timeout:g} s{hint}")

    def _hello_fields(self) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, "client": self.client_id}

    def _session_opened(self, reply: dict[str, Any]) -> None:
        self._ping_sent = None  # any ping in flight went to a session that is gone
        self.incarnation = reply["inc"]
        self.heartbeat = float(reply.get("heartbeat", self.heartbeat))
        self.timeout = float(reply.get("timeout", self.timeout))
        limits = reply.get("limits")
        if isinstance(limits, dict):
            self.pacer.configure(limits)
        pub = _pub_address(reply["pub"], self.server)
        if pub != self._pub:
            if self._pub:
                self.sub.disconnect(self._pub)
            self.sub.connect(pub)
            self._pub = pub
        self._last_heard = self.clock()

    def close(self) -> None:
        self.closed = True
        self.dealer.close(0)
        self.sub.close(0)

    # -- what UIs call --------------------------------------------------------------------

    def request(self, cmd: str, purpose: str = "user", **fields: Any) -> int:
        args = {k: v for k, v in fields.items() if v is not None}
        rid = self._send(cmd, args)
        self._pending[rid] = _Pending(cmd, args, purpose)
        return rid

    def scroll_back(self, limit: int) -> int | None:
        """Ask for ``limit`` events older than the oldest shown in the current room."""
        view = self.rooms.get(self.current or "")
        if view is None:
            return None
        return self.request("history", "scrollback", room=view.name,
                            before=view.oldest, limit=limit)

    def answered(self, rid: int) -> bool:
        """Has the broker answered request ``rid`` (or was it given up)?"""
        return rid not in self._pending

    # A UI asks these from its own thread while the network thread changes the queues:
    # each looks at a copy taken in one step (tuple() of a deque or a dict's values runs
    # in C, under the GIL), never at the queue itself while it changes.

    @property
    def queued(self) -> int:
        """How many of the user's requests wait for the rate limit (or for the broker to
        come back), not yet sent."""
        pending = self._pending
        return sum(1 for out in tuple(self._outbox)
                   if (p := pending.get(out.rid)) is not None
                   and p.purpose in ("user", "scrollback"))

    @property
    def busy(self) -> bool:
        """Is a request the user made still unanswered?"""
        return any(p.purpose in ("user", "scrollback")
                   for p in tuple(self._pending.values()))

    def silent_for(self) -> float:
        """Seconds since the broker last said anything."""
        return self.clock() - self._last_heard

    def pump(self) -> list[Event]:
        """Take in everything waiting on both sockets, do the housekeeping that is due,
        and return the events for the user, in order. Never blocks."""
        while not self.closed:
            try:
                frame = self.dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._heard()
            for message in messages(frame):  # our replies and direct events of one turn
                self._from_broker(message)
        while not self.closed:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) == 2:
                for event in messages(frames[1]):  # a room's events of one broker turn
                    self._from_room(event)
        if not self.closed:
            self._housekeeping()
        events = list(self._events)
        self._events.clear()
        return events

    def next_wakeup(self) -> float:
        """Seconds until housekeeping is next due (for the caller's poll timeout)."""
        due = min(self._last_sent + self.heartbeat, self.clock() + 0.5)
        if self._outbox and not self.lost:
            due = min(due, self.clock() + self.pacer.wait(self._delivers(self._outbox[0])))
        return max(0.0, due - self.clock())

    # -- sending --------------------------------------------------------------------------

    def _send(self, cmd: str, args: dict[str, Any], *, rid: int | None = None,
              retry: bool = False, first: bool = False) -> int:
        """Queue a request (at the head if ``first``) and send what the pacer allows."""
        if rid is None:
            rid = self._next_id
            self._next_id += 1
        out = _Outgoing(rid, cmd, args, retry)
        self._outbox.appendleft(out) if first else self._outbox.append(out)
        self._flush()
        return rid

    def _flush(self) -> None:
        """Send queued requests, in order, while the rate limit has tokens for them."""
        while self._outbox and not self.closed:
            head = self._outbox[0]
            if head.rid != self._resume_rid and (self.lost or self.resuming):
                # Held: sent now they would reach a broker that is silent (and might then
                # arrive all at once) or that does not know us yet.
                return
            if not self.pacer.take(self._delivers(head)):
                return
            self._outbox.popleft()
            self._wire(head)

    def _delivers(self, out: _Outgoing) -> int:
        """What the broker will charge a request for delivering: its text times its
        recipients, as far as we know them (a broadcast's: the users last listed); a
        join or a leave by those told of it (PROTOCOL.md §5.1)."""
        if out.cmd in ("join", "leave"):
            view = self.rooms.get(out.args.get("room", ""))
            if out.cmd == "join":  # its members are not known before (a rejoin's are)
                return P.text_weight({}) * max(len(view.members) if view else 1, 1)
            return P.REKEY_WEIGHT * max(len(view.members) - 1 if view else 1, 1)
        text = out.args.get("text")
        if not isinstance(text, str) or out.cmd not in ("say", "whisper", "msg",
                                                        "broadcast"):
            return 0
        if out.cmd == "say":
            view = self.rooms.get(out.args.get("room", ""))
            recipients = len(view.members) if view is not None else 1
        elif out.cmd == "msg":
            recipients = len(set(out.args.get("to") or ()))
        elif out.cmd == "broadcast":
            recipients = self._users_seen - 1
        else:
            recipients = 1
        return len(text) * max(recipients, 1)

    def _wire(self, out: _Outgoing) -> None:
        message = {"id": out.rid, "cmd": out.cmd,
                   **{k: v for k, v in out.args.items() if v is not None}}
        if out.retry:
            message["retry"] = True
        try:
            self.dealer.send(pack(message), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the broker is gone and our queue is full; liveness will say so
        self._last_sent = self.clock()

    def _emit(self, kind: str, _re: int | None = None, **data: Any) -> None:
        self._events.append(Event(kind, data, _re))

    # -- what arrives over the DEALER -----------------------------------------------------

    def _heard(self) -> None:
        self._last_heard = self.clock()
        if self.lost:
            self.lost = False
            self._emit("restored", server=self.server)

    def _from_broker(self, message: dict[str, Any]) -> None:
        if "re" in message:
            for key in ("events", "history"):  # history pages are charged once read
                if isinstance(message.get(key), list):
                    self.pacer.owe(sum(P.text_weight(e) for e in message[key]
                                       if isinstance(e, dict)))
            if isinstance(message.get("users"), list):
                self._users_seen = max(len(message["users"]), self._users_seen)
            if message["re"] == 0 and self._ping_sent is not None:
                self._round_trip = self._last_heard - self._ping_sent
                self._ping_sent = None
            if message.get("code") == "no_session":
                self._resume()  # the broker does not know us: restarted, or we expired
                waiting = self._pending.get(message["re"])
                if waiting is not None and waiting.purpose == "resume":
                    del self._pending[message["re"]]  # asked again after the next hello
                if waiting is not None:
                    return  # the user's requests are kept, and sent again on resuming
            pending = self._pending.pop(message["re"], None) if message["re"] else None
            if pending is not None:
                self._reply(pending, message, message["re"])
        elif isinstance(message.get("ev"), str):
            self._direct(message)

    def _reply(self, pending: _Pending, reply: dict[str, Any], rid: int) -> None:
        ok = bool(reply.get("ok"))
        if pending.purpose == "resume":
            self._resumed(pending, reply if ok else None, reply)
            return
        if pending.purpose == "catch-up":
            if not ok and reply.get("code") in ("not_a_member", "no_such_room"):
                # The broker no longer counts us in: stop following rather than ask forever.
                self._forget_room(pending.args["room"])
                self._emit("ejected", room=pending.args["room"], reason=reply.get("error"))
                return
            self._caught_up(pending.args["room"], reply if ok else None)
            return
        if not ok:
            self._emit("error", rid, cmd=pending.cmd, code=reply.get("code"),
                       text=reply.get("error"))
            return
        if pending.purpose == "scrollback":
            self._scrolled_back(reply, rid)
            return
        if pending.purpose == "members":
            self._more_members(reply)
            return
        # The request's own fields (the text of a /msg, say) help UIs tell the outcome.
        data = {**{k: v for k, v in pending.args.items() if k != "password"},
                **{k: v for k, v in reply.items() if k not in ("re", "ok", "topic", "history")}}
        replay: list[dict[str, Any]] = []
        if pending.cmd == "login":
            self.name = reply["name"]
            self._password = pending.args.get("password")
        elif pending.cmd == "logout":
            for room in list(self.rooms):
                self._forget_room(room)
            self.name = None
        elif pending.cmd in ("create", "join"):
            replay = self._entered(reply)
            if isinstance(pending.args.get("key"), str) and reply["room"] in self.rooms:
                self.rooms[reply["room"]].key = pending.args["key"]
        elif pending.cmd == "leave":
            self._forget_room(reply["room"])
        elif pending.cmd == "who" and reply.get("room") in self.rooms:
            self.rooms[reply["room"]].members = _str_list(reply.get("members"))
        self._emit("reply", rid, cmd=pending.cmd, **data)
        for event in replay:
            self._emit(event["ev"], replay=True, **_fields(event))

    def _entered(self, reply: dict[str, Any]) -> list[dict[str, Any]]:
        """Follow a room we entered; return its recent history to show (once)."""
        name = reply["room"]
        self.name = reply["name"]  # the broker may have given us one (NAME, or a guest)
        self.current = name
        if name in self.rooms:
            return []  # already following it: it just became current
        history = [e for e in reply.get("history", ()) if isinstance(e, dict)]
        view = RoomView(name, reply["topic"], seq=reply["seq"],
                        oldest=history[0]["seq"] if history else reply["seq"] + 1,
                        heard=self.clock(), members=_str_list(reply.get("members")))
        self.rooms[name] = view
        self.sub.setsockopt(zmq.SUBSCRIBE, view.topic)
        if reply.get("more") and view.members:  # a crowded room: the rest, page by page
            self.request("who", "members", room=name, after=view.members[-1])
        return history

    def _more_members(self, reply: dict[str, Any]) -> None:
        view = self.rooms.get(reply.get("room", ""))
        if view is None:
            return
        known = set(view.members)
        page = [n for n in _str_list(reply.get("members")) if n not in known]
        view.members += page
        if reply.get("more") and page:
            self.request("who", "members", room=view.name, after=page[-1])

    def _scrolled_back(self, reply: dict[str, Any], rid: int | None = None) -> None:
        view = self.rooms.get(reply.get("room", ""))
        events = [e for e in reply.get("events", ()) if isinstance(e, dict)]
        if view is not None and events:
            view.oldest = min(view.oldest, events[0]["seq"])
        self._emit("history", rid, room=reply.get("room"), events=[
            {"kind": e["ev"], **_fields(e)} for e in events])

    def _direct(self, message: dict[str, Any]) -> None:
        ev = message["ev"]
        if ev == "ejected":
            self._forget_room(message.get("room", ""))
        elif ev == "rekey":
            self._rekey(message)
            return
        self._emit(ev, **_fields(message))

    # -- rooms: in order, without gaps or repeats -----------------------------------------

    def _from_room(self, event: dict[str, Any]) -> None:
        view = self.rooms.get(event.get("room"))  # type: ignore[arg-type]
        seq = event.get("seq")
        if view is None or type(seq) is not int:
            return
        view.heard = self.clock()
        if event.get("ev") == P.ROOM_TICK:
            if seq > view.seq:
                self._catch_up(view)
            return
        if seq <= view.seq:
            return  # seen already
        if seq == view.seq + 1:
            self._deliver(view, event)
            self._release_held(view)
        else:
            if len(view.held) < HELD_BACK_MAX:
                view.held[seq] = event
            self._catch_up(view)

    def _deliver(self, view: RoomView, event: dict[str, Any]) -> None:
        view.seq = event["seq"]
        name = event.get("name")
        if event["ev"] == "join" and isinstance(name, str) and name not in view.members:
            view.members.append(name)
        elif event["ev"] == "leave" and name in view.members:
            view.members.remove(name)
        elif event["ev"] == "nick" and event.get("old") in view.members \
                and isinstance(name, str):
            view.members[view.members.index(event["old"])] = name  # renamed, in place
        self._emit(event["ev"], **_fields(event))

    def _release_held(self, view: RoomView) -> None:
        while (event := view.held.pop(view.seq + 1, None)) is not None:
            self._deliver(view, event)
        for seq in [s for s in view.held if s <= view.seq]:
            del view.held[seq]

    def _catch_up(self, view: RoomView) -> None:
        if view.catching_up is None:
            view.catching_up = self.request("history", "catch-up", room=view.name,
                                            after=view.seq, limit=CATCH_UP_PAGE)

    def _caught_up(self, room: str, reply: dict[str, Any] | None) -> None:
        view = self.rooms.get(room)
        if view is None:
            return
        view.catching_up = None
        if reply is None:
            return
        for event in reply.get("events", ()):
            if isinstance(event, dict) and event.get("seq") == view.seq + 1:
                self._deliver(view, event)
        self._release_held(view)
        if reply.get("seq", 0) > view.seq:
            self._catch_up(view)

    def _rekey(self, message: dict[str, Any]) -> None:
        """Someone left and the room's topic was replaced: follow it."""
        view = self.rooms.get(message.get("room", ""))
        topic = message.get("topic")
        if view is None or not isinstance(topic, bytes):
            return
        self.sub.setsockopt(zmq.UNSUBSCRIBE, view.topic)
        view.topic = topic
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        view.heard = self.clock()
        left = message.get("left")  # told here when the store could not take a leave event
        if isinstance(left, str) and left in view.members:
            view.members.remove(left)
            self._emit("leave", room=view.name, name=left, reason="left")
        if isinstance(message.get("seq"), int) and message["seq"] > view.seq:
            self._catch_up(view)  # the leave event went out on the old topic

    def _forget_room(self, room: str) -> None:
        view = self.rooms.pop(room, None)
        if view is not None and not self.closed:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, view.topic)
        if self.current == room:
            self.current = next(reversed(self.rooms), None) if self.rooms else None

    # -- resuming after the broker lost our session ----------------------------------------

    def _resume(self) -> None:
        """Open a new session and put back what we had: nickname, rooms, unanswered
        requests. All of it goes in order on the one DEALER, paced like everything else;
        the hello first, and nothing else until it is answered."""
        if self.closed or (self.resuming and
                           self.clock() - self._resume_sent < self.timeout):
            return  # a hello is on its way; one lost on the way is asked again later
        for rid in [r for r, p in self._pending.items() if p.purpose == "resume"]:
            del self._pending[rid]
        self._outbox = deque(out for out in self._outbox if out.rid in self._pending)
        if not self.resuming:
            self._emit("reconnecting", server=self.server)
        self.resuming = True
        self._resume_sent = self.clock()
        self._resume_rid = self._next_id
        rid = self._send("hello", self._hello_fields(), first=True)
        self._pending[rid] = _Pending("hello", {}, "resume")

    def _resumed(self, pending: _Pending, reply: dict[str, Any] | None,
                 raw: dict[str, Any]) -> None:
        if pending.cmd == "hello":
            self.resuming, self._resume_rid = False, None
            if reply is None:
                self._emit("error", cmd="hello", code=raw.get("code"), text=raw.get("error"))
                return
            self._session_opened(reply)
            # Everything still queued goes again below, after the login and joins that
            # must come first; the queue keeps the order of the ids.
            self._outbox.clear()
            if self.name is not None:
                args = {"name": self.name, "password": self._password}
                self._pending[self._send("login", args)] = _Pending("login", args, "resume")
            for room, view in self.rooms.items():
                args = {"room": room, "name": self.name, "key": view.key}
                self._pending[self._send("join", args)] = _Pending("join", args, "resume")
            for rid, waiting in sorted(self._pending.items()):
                if waiting.purpose in ("user", "scrollback"):
                    self._send(waiting.cmd, waiting.args, rid=rid, retry=True)
                elif waiting.purpose == "catch-up":
                    del self._pending[rid]  # asked of the old session; asked again below
                    for view in self.rooms.values():
                        if view.catching_up == rid:
                            view.catching_up = None
            self._emit("resumed", server=self.server, inc=self.incarnation,
                       name=self.name, rooms=list(self.rooms))
        elif pending.cmd == "login" and reply is None:
            self._emit("error", cmd="login", code=raw.get("code"),
                       text=f"Could not take back the nickname {self.name}: {raw.get('error')}")
            self.name = None
        elif pending.cmd == "join":
            room = pending.args["room"]
            view = self.rooms.get(room)
            if view is None:
                return
            if reply is None:
                self._forget_room(room)
                self._emit("ejected", room=room, reason=str(raw.get("error")))
                return
            if reply["seq"] < view.seq:
                view.seq = reply["seq"]  # killed and made anew while we were away
            since = reply.get("since")
            if isinstance(since, int) and since - 1 > view.seq:
                view.seq = since - 1  # the room shows joiners only what follows their join
            view.members = _str_list(reply.get("members"))
            if reply["topic"] != view.topic:
                self.sub.setsockopt(zmq.UNSUBSCRIBE, view.topic)
                view.topic = reply["topic"]
                self.sub.setsockopt(zmq.SUBSCRIBE, view.topic)
            view.heard = self.clock()
            self._catch_up(view)

    # -- liveness -------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        self._flush()  # tokens came back, or the broker did
        now = self.clock()
        if now - self._last_sent >= self.heartbeat:
            self._send_ping()
        if not self.lost and now - self._last_heard > self.timeout:
            self.lost = True
            self._emit("lost", server=self.server, silent=round(now - self._last_heard, 1))
            self._move_on()
        elif self.lost and now - max(self._last_heard, self._moved) > MOVE_TIMEOUT:
            self._move_on()  # the address we moved to does not answer either
        for view in self.rooms.values():
            if now - view.heard > SILENT_ROOM:
                # Our subscription may have been refused or lost: ask again, catch up.
                self.sub.setsockopt(zmq.UNSUBSCRIBE, view.topic)
                self.sub.setsockopt(zmq.SUBSCRIBE, view.topic)
                view.heard = now
                self._catch_up(view)

    def _move_on(self) -> None:
        """With several addresses, leave the lost one for the next (round the list), and
        resume there as after a broker restart: hello, nickname, rooms, catch-up, then
        the unanswered requests again. Room seqs continue: the brokers share a store."""
        if len(self.servers) < 2:
            return  # the one broker is waited for: libzmq redials it
        self.dealer.disconnect(self.server)  # what was queued for it is dropped...
        self.server = self.servers[(self.servers.index(self.server) + 1) % len(self.servers)]
        self.dealer.connect(self.server)
        self._moved = self.clock()
        self.resuming = False  # ...the hello in flight too: ask the new one at once
        self._resume()

    def _send_ping(self) -> None:
        # Pings carry id 0: their replies prove the broker alive and time the round trip.
        try:
            self.dealer.send(pack({"id": 0, "cmd": "ping"}), zmq.NOBLOCK)
        except zmq.Again:
            pass
        self._last_sent = self.clock()
        if self._ping_sent is None:
            self._ping_sent = self._last_sent

    def lag(self) -> float | None:
        """The broker's round trip in seconds, from the pings sent while idle: the last
        one measured, or how long the ping in flight has waited if that is longer."""
        waited = self.clock() - self._ping_sent if self._ping_sent is not None else None
        if self._round_trip is None:
            return waited
        return max(self._round_trip, waited or 0.0)


def _fields(event: dict[str, Any]) -> dict[str, Any]:
    """An event's fields for the user: everything but the wire's bookkeeping."""
    return {k: v for k, v in event.items() if k not in ("ev", "inc", "topic")}


def _str_list(value: Any) -> list[str]:
    return [n for n in value if isinstance(n, str)] if isinstance(value, list) else []
