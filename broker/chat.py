"""The chat itself: sessions, users, rooms, membership, permissions and history.

Everything that decides what happens in the chat lives here, and nothing here knows about
sockets. The broker loop hands in validated requests (and the passing of time) and gets
back the deliveries to make: ``Send`` one frame to one client, ``Publish`` one event to a
room's subscribers. Tests drive this object directly, in microseconds.

Rules kept throughout:

* A handler checks everything before it changes anything, so a refused request leaves
  the chat exactly as it was.
* A room's events (messages, joins, leaves) form one stream numbered by ``seq``; each is
  handed to the store as it is made, and the loop commits the store before it sends a
  single delivery, so nothing is acknowledged or published that a crash could lose.
* Room topics are capabilities: ``name NUL token``. Only current members are told a
  topic, the publisher grants subscriptions only to live topics, and a room's topic is
  replaced whenever someone leaves, so a removed member stops receiving at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from schema import ProtocolError, Request, error, ok, pack, unpack
from schema import protocol as P
from schema.codec import ok_with
from schema.names import fold

from . import rooms as R
from .budgets import Budgets
from .listing import Names
from .store import Account, Store

log = logging.getLogger("zchat.broker")


# --- Deliveries --------------------------------------------------------------------------


# A client is known by its routing id on the broker's ROUTER, or, behind an edge, by the
# edge's and its own routing id on the edge's: (edge, client). A tuple is never a routing
# id, so no client can pass itself off as one behind an edge.
Peer = bytes | tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Send:
    """One message to one client, through the ROUTER (or the client's edge)."""

    peer: Peer
    body: dict[str, Any]
    # The body packed, where it already was (a remembered reply, a message to several):
    # a frame is made of its messages' own encodings, so nothing is packed twice.
    packed: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Publish:
    """One event to everyone subscribed to a room topic, through the publisher (and the
    edges that have members in the room)."""

    topic: bytes
    body: dict[str, Any]
    room: Room | None = field(default=None, compare=False, repr=False)  # for the edges
    packed: bytes | None = field(default=None, compare=False, repr=False)  # as stored


Delivery = Send | Publish

# Requests whose replies are remembered, so a retry is answered without redoing it: the
# deliveries, which must not reach anyone twice. Those that change the session (login,
# create, leave...) are carried out again: a retry may come from a new session after a
# reconnect, and an old answer would tell it something about a session that is gone.
_REMEMBERED = frozenset({"say", "whisper", "msg", "broadcast"})
# The handler of each client command, named once rather than per request.
_HANDLERS = {cmd: "_" + cmd for cmd in P.CLIENT_REQUESTS}
# What an event other than its text counts against a history page or a disk share.
_EVENT_WEIGHT = P.text_weight({})


# --- State -------------------------------------------------------------------------------


@dataclass
class Bucket:
    """A token bucket: what may still be spent at once, as of when."""

    tokens: float
    refilled: float

    def take(self, now: float, rate: float, burst: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are as many: ``burst`` at once, then ``rate`` a
        second."""
        self.tokens = min(burst, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def spend(self, now: float, rate: float, burst: float, cost: float) -> None:
        """Spend what was already used (a history page read), into debt if need be: the
        next requests wait until it is paid back."""
        self.tokens = min(burst, self.tokens + (now - self.refilled) * rate) - cost
        self.refilled = now


@dataclass(eq=False)
class Session:
    """One connected client, known by its routing id; a user once it has a nickname."""

    peer: Peer
    client_id: str | None
    last_seen: float
    identity: str | None = None  # the CURVE key it authenticated with (z85), if any
    address: str = ""  # the peer's IP address, for limits that outlive sessions
    name: str | None = None
    away: str | None = None  # its away message, told to whoever messages it
    rooms: dict[str, Room] = field(default_factory=dict)  # insertion-ordered set
    joined: dict[str, int] = field(default_factory=dict)  # room (fold) -> seq of its join
    # Held for this session only (its nickname is not registered): the owner role of a
    # room it created, and invites; keyed by the room itself, so a room made anew under
    # the same name owes it nothing.
    held: dict[Room, str] = field(default_factory=dict)
    invites: set[Room] = field(default_factory=set)
    bucket: Bucket = field(default_factory=lambda: Bucket(0.0, 0.0))  # its rate limit
    delivery: Bucket = field(default_factory=lambda: Bucket(0.0, 0.0))  # characters out

    @property
    def edge(self) -> bytes | None:
        """The edge it is connected through, if any (its liveness is that edge's)."""
        return self.peer[0] if isinstance(self.peer, tuple) else None


@dataclass(eq=False)
class Room:
    name: str
    created: float
    creator: str
    seq: int  # seq of the newest event in the room's stream
    topic: bytes = b""
    members: dict[str, Session] = field(default_factory=dict)  # nickname -> session
    names: Names = field(default_factory=Names)  # the members' nicknames, for paging
    stored: int | None = None  # characters of history on disk, once learnt
    access: R.Access = field(default_factory=R.Access)  # settings, roles, invites, bans
    edges: dict[bytes, int] = field(default_factory=dict)  # edge -> its members here
    invited: set[Session] = field(default_factory=set)  # sessions holding an invite here


@dataclass
class Counters:
    """Traffic figures for the operator's ``stats``; the loop counts frames."""

    started: float
    frames_in: int = 0
    frames_out: int = 0
    room_messages: int = 0


# --- The chat ----------------------------------------------------------------------------


class Chat:
    def __init__(
        self,
        store: Store,
        *,
        pub_address: str = "",
        max_clients: int | None = None,
        join_history: int = P.JOIN_HISTORY_DEFAULT,
        peer_timeout: float = P.PEER_TIMEOUT,
        rate: float = P.RATE_DEFAULT,
        burst: int = P.BURST_DEFAULT,
        delivery_rate: float = P.DELIVERY_RATE_DEFAULT,
        delivery_burst: float = P.DELIVERY_BURST_DEFAULT,
        room_lifetime: float = P.EMPTY_ROOM_LIFETIME,
        owned_room_lifetime: float = P.OWNED_ROOM_LIFETIME,
        room_quota: int = P.ROOM_HISTORY_MAX,
        route_check: Callable[[bytes, str], bool] | None = None,
        clock: Callable[[], float] = time.time,
        token: Callable[[], str] = lambda: secrets.token_hex(8),
    ):
        """``rate`` 0 turns every per-client limit off (the benchmark's load is no abuse).
        ``route_check(routing id, key)`` says whether a routing id is the one bound to a
        key (see schema.keys.routing_id); None accepts any (plaintext mode)."""
        self.store = store
        self.pub_address = pub_address
        self.max_clients = max_clients
        self.join_history = min(join_history, P.HISTORY_PAGE_MAX)
        self.peer_timeout = peer_timeout
        self.rate, self.burst = rate, burst
        self.delivery_rate, self.delivery_burst = delivery_rate, delivery_burst
        self.room_lifetime = room_lifetime
        self.owned_room_lifetime = owned_room_lifetime
        self.room_quota = room_quota
        self.route_check = route_check
        self.clock = clock
        self._token = token
        self.incarnation = token()
        self.counters = Counters(started=clock())
        self.sessions: dict[Peer, Session] = {}
        # Users, rooms, members and accounts are keyed by the fold of their names (see
        # schema.names): "Alice" and a Cyrillic look-alike are alice. Names are shown as
        # they were first typed.
        self.users: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {}
        self.topics: dict[bytes, Room] = {}
        # Topics made live and dead since the loop last looked (it tells the edges, which
        # grant subscriptions as the publisher does): (topic, live), in order.
        self.topic_changes: list[tuple[bytes, bool]] = []
        # (key, client id) -> its session: a client that comes back through another edge
        # before the first one is known to be lost takes its session's place.
        self._by_client: dict[tuple[str, str], Session] = {}
        # Sessions behind edges ended since the loop last looked: it tells their edges,
        # which answer those clients' pings themselves.
        self.ended_behind_edges: list[tuple[bytes, bytes]] = []
        self._user_names = Names()  # the users' names, sorted for paging
        self._room_names = Names()  # the rooms' names, likewise
        # Rooms nobody is in, oldest emptied first: removed once empty for room_lifetime.
        self._empty: OrderedDict[str, float] = OrderedDict()
        # Those of them a registered nickname owns, once past room_lifetime: they stay
        # until empty for owned_room_lifetime.
        self._owned_empty: OrderedDict[str, float] = OrderedDict()
        self.budgets = Budgets(clock)  # password guesses, registrations: per name, address
        self._guests = 0
        self._out: list[Delivery] = []
        # Packed: 100,000 replies as dicts are 200,000 objects for every full garbage
        # collection to walk (88 ms each under the dm benchmark); as bytes, none.
        self._answers: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._request_key: tuple[str, str, int] | None = None  # (key, client id, request id)
        # (peer, remembered-reply key, request id) of each request of this turn that wrote
        self._turn_writers: list[tuple[Peer, tuple[str, str, int] | None, int]] = []
        # The rate buckets of ended sessions, by routing id: a new hello does not refill.
        # By key (or routing id, lacking one), both buckets: a new session refills neither.
        self._spent: OrderedDict[object, tuple[Bucket, Bucket]] = OrderedDict()
        now = clock()
        for stored in store.rooms():
            room = Room(stored.name, stored.created, stored.creator, stored.last_seq,
                        access=self._stored_access(stored.name))
            self._add_room(room)
            self._empty[fold(room.name)] = now  # empty until someone comes back

    # -- entry points used by the broker loop ---------------------------------------------

    def handle(self, peer: Peer, request: Request, identity: str | None = None,
               address: str = "") -> list[Delivery]:
        """Carry out one validated client request; return what must be delivered.

        ``identity`` is the CURVE key the request was authenticated with (None in
        plaintext mode); ``address`` the peer's IP address.
        """
        out: list[Delivery] = []
        self._out = out
        rid, cmd = request.id, request.cmd
        try:
            session = self._admit(peer, request, identity)
        except ProtocolError as err:
            return out + [Send(peer, error(rid, err))]
        if request.retry and (session is None or session.client_id is None):
            return [Send(peer, error(rid, ProtocolError(
                "retry_needs_client", "A retry needs a client id: send hello with client")))]
        # Remembered replies belong to the key as well as the client id: another key that
        # claims the same client id is somebody else, and learns nothing of them.
        key = ((session.identity or "", session.client_id, rid)
               if session is not None and session.client_id else None)
        if key and request.retry:
            answer = self._answer_again(key, request)
            if answer is not None:
                return [Send(peer, answer)]
        self._request_key = key
        writes = self.store.writes
        try:
            if cmd == "hello":  # the only request _admit lets in without a session
                result = self._hello(peer, session, identity, address, **request.args)
            else:
                result = getattr(self, _HANDLERS.get(cmd) or "_" + cmd)(session,
                                                                         **request.args)
            reply = ok_with(rid, result)
        except ProtocolError as err:
            reply = error(rid, err)
        packed = None
        if key and cmd in _REMEMBERED:
            self._answers[key] = packed = pack(reply)
            if len(self._answers) > P.ANSWERS_REMEMBERED:
                self._answers.popitem(last=False)
        if self.store.writes != writes:
            self._turn_writers.append((peer, key, rid))
        out.insert(0, Send(peer, reply, packed))
        return out

    def committed(self) -> None:
        """The loop committed the turn's writes: what was said of them holds."""
        self._turn_writers.clear()

    def commit_failed(self, deliveries: list[Delivery], reason: str) -> list[Delivery]:
        """The loop could not commit the turn: none of its writes are stored. Return what
        may still be sent, and put the chat back in line with the store.

        Nothing that acknowledged or published a write may go out: room events are
        dropped, the requests that wrote are answered with an error instead, and the
        sessions that made them are ended (what they did in memory was never stored;
        their clients reconnect and resume, and are refused writes while the store cannot
        take them). Room seqs go back to what is stored: no seq is used for two events.
        """
        writers = {peer for peer, _, _ in self._turn_writers}
        refusal = ProtocolError("store_unavailable",
                                f"History cannot be written now ({reason}); nothing of "
                                f"this request was kept")
        errors: list[Delivery] = [Send(peer, error(rid, refusal))
                                  for peer, _, rid in self._turn_writers]
        for _, key, _ in self._turn_writers:
            if key is not None:
                self._answers.pop(key, None)  # a retry must not be told "ok" for a lost write
        self._turn_writers.clear()
        self._out = []
        for peer in writers:
            session = self.sessions.get(peer)
            if session is not None:
                self._end_session(session, f"the store failed: {reason}")
        stored = {r.name: r.last_seq for r in self.store.rooms()}
        for room in list(self.rooms.values()):
            if room.name not in stored:
                for member in list(room.members.values()):
                    self._end_session(member, f"the store failed: {reason}")
                self._remove_room(room)
            else:
                room.seq = stored[room.name]
                room.access = self._stored_access(room.name)
        kept = [_unsequenced(d, stored, deliveries) for d in deliveries
                if isinstance(d, Send) and d.peer not in writers]
        return errors + kept + [d for d in self._out if isinstance(d, Send)]

    def _admit(self, peer: Peer, request: Request, identity: str | None) -> Session | None:
        """The session a request belongs to; None for a hello that will open one.

        A session belongs to the key that opened it: the same routing id under another
        key is a stranger. Every admitted request proves its client alive and spends one
        token of its rate limit (pings excepted).
        """
        session = self.sessions.get(peer)
        if session is not None and session.identity != identity:
            if request.cmd != "hello":
                raise ProtocolError("no_session")
            return None  # a new session replaces it, if the hello is accepted
        if session is None:
            if request.cmd != "hello":
                raise ProtocolError("no_session")
            spent = self._spent.get(identity or peer)
            if not self._within_rate(spent[0] if spent else None):
                raise self._too_fast()
            return None
        session.last_seen = self.clock()
        if request.cmd != "ping" and not self._within_rate(session.bucket):
            raise self._too_fast()
        return session

    def _too_fast(self) -> ProtocolError:
        return ProtocolError("rate_limited",
                             f"Slow down: at most {self.rate:g} requests a second")

    def _answer_again(self, key: tuple[str, str, int], request: Request
                      ) -> dict[str, Any] | None:
        """The reply already given to a retried request, so it is not carried out twice.
        A message survives a broker restart in the store, and is recognised there."""
        answer = self._answers.get(key)
        if answer is not None:
            return unpack(answer)
        if request.cmd == "say":
            room = request.args["room"]
            target = self.rooms.get(fold(room))
            seq = self.store.seq_of(target.name, _origin(key)) if target else None
            if seq is not None:
                return ok(request.id, room=room, seq=seq)
        return None

    def refuse(self, peer: Peer, rid: int | None, err: ProtocolError) -> list[Delivery]:
        """A request that failed validation: an error to its sender, nothing else. It is
        charged like any request, so garbage cannot be sent faster than requests: past
        the limit, the answer is that it came too fast."""
        session = self.sessions.get(peer)
        bucket = session.bucket if session is not None else self._spent.setdefault(
            peer, (Bucket(self.burst, self.clock()), Bucket(self.delivery_burst, 0.0)))[0]
        if len(self._spent) > P.ANSWERS_REMEMBERED:
            self._spent.popitem(last=False)
        if not self._within_rate(bucket):
            err = self._too_fast()
        return [Send(peer, error(rid, err))]

    def pardon(self, seconds: float) -> None:
        """The broker itself was away for ``seconds`` (stopped, or one long turn): that
        silence is no evidence against anyone, so nobody's clock counts it."""
        for session in self.sessions.values():
            session.last_seen += seconds

    def gone(self, peer: Peer, reason: str = "disconnected") -> list[Delivery]:
        """The peer cannot be reached any more: end its session."""
        self._out = []
        session = self.sessions.get(peer)
        if session is not None:
            self._end_session(session, reason)
        return self._out

    def expire(self) -> list[Delivery]:
        """End the sessions of clients silent for longer than the peer timeout (those
        behind an edge are the edge's to time out: it answers their pings)."""
        self._out = []
        now = self.clock()
        deadline = now - self.peer_timeout
        for session in [s for s in self.sessions.values()
                        if s.last_seen < deadline and s.edge is None]:
            self._end_session(session, "timed out")
        # Rooms nobody has been in for room_lifetime go, with their history (documented).
        while self._empty and self.store.problem() is None:
            name, since = next(iter(self._empty.items()))
            if since > now - self.room_lifetime:
                break
            room = self.rooms[name]  # (name is a fold here)
            if self._kept(room):  # a registered owner keeps it longer (documented)
                del self._empty[name]
                self._owned_empty[name] = since
                continue
            self._remove_room(room)
            self.store.drop_room(room.name)
            log.info("Room %s removed: empty for %.0f s", room.name, now - since)
        while self._owned_empty and self.store.problem() is None:
            name, since = next(iter(self._owned_empty.items()))
            if since > now - self.owned_room_lifetime:
                break
            room = self.rooms[name]
            self._remove_room(room)
            self.store.drop_room(room.name)
            log.info("Room %s removed: empty for %.0f s", room.name, now - since)
        return self._out

    def edge_lost(self, edge: bytes, reason: str) -> list[Delivery]:
        """An edge went silent: end the sessions of the clients it held."""
        self._out = []
        for session in [s for s in self.sessions.values() if s.edge == edge]:
            self._end_session(session, reason)
        return self._out

    def ticks(self) -> list[Delivery]:
        """A tick per occupied room: lets subscribers notice missed trailing events."""
        return [
            Publish(room.topic, {"ev": P.ROOM_TICK, "room": room.name, "seq": room.seq,
                                 "inc": self.incarnation}, room)
            for room in self.rooms.values() if room.members
        ]

    def grants(self, topic: bytes) -> bool:
        """May a subscription to this topic be applied? Only live room topics."""
        return topic in self.topics

    def shutdown(self, reason: str) -> list[Delivery]:
        return [Send(s.peer, {"ev": "shutdown", "reason": reason})
                for s in self.sessions.values()]

    # -- operator commands (control socket) ---------------------------------------------

    def admin(self, request: Request) -> tuple[dict[str, Any], list[Delivery]]:
        """Carry out one operator request: its reply, and the deliveries it causes."""
        self._out = []
        try:
            reply = ok(request.id, **getattr(self, "_admin_" + request.cmd)(**request.args))
        except ProtocolError as err:
            reply = error(request.id, err)
        return reply, self._out

    def _admin_ls(self, after: str | None, limit: int | None) -> dict[str, Any]:
        names, more = self._room_names.page(after, limit or P.LIST_PAGE_DEFAULT)
        rooms = [self.rooms[fold(n)] for n in names]
        return {"rooms": [{"room": r.name, "count": len(r.members), "seq": r.seq,
                           "members": r.names.page(None, P.MEMBERS_SHOWN)[0],
                           "creator": r.creator, "modes": r.access.settings.modes(),
                           "owners": self._owners(r),
                           "moderators": r.access.moderators(),
                           "subject": r.access.settings.subject} for r in rooms],
                "more": more, "total": len(self.rooms)}

    def _admin_users(self, after: str | None, limit: int | None) -> dict[str, Any]:
        names, more = self._user_names.page(after, limit or P.LIST_PAGE_DEFAULT)
        return {"users": [{"name": n, "rooms": [r.name for r in self.users[fold(n)].rooms.values()]}
                          for n in names],
                "anonymous": len(self.sessions) - len(self.users), "more": more}

    def _admin_release(self, name: str) -> dict[str, Any]:
        if self.store.account(fold(name)) is None:
            raise ProtocolError("not_registered", f"{name} is not registered")
        self._writing()
        self.store.drop_account(fold(name))
        # Its roles and invites go with it: whoever takes the name next gets none of them.
        self.store.revoke_everywhere(("role", "invite"), fold(name))
        for room in self.rooms.values():
            room.access.roles.pop(fold(name), None)
            room.access.invites.pop(fold(name), None)
            self._settle_lifetime(room)
        log.info("Operator released the nickname %s", name)
        return {"name": name}

    def _admin_kill(self, room: str, reason: str | None) -> dict[str, Any]:
        target = self._room(room)
        self._writing()
        why = reason or "killed by the operator"
        members = list(target.members.values())
        for member in members:
            del member.rooms[fold(target.name)]
            member.joined.pop(fold(target.name), None)
            self._send(member, {"ev": "ejected", "room": target.name, "reason": why})
        self._remove_room(target)
        self.store.drop_room(target.name)
        log.info("Room %s killed (%s); %d members ejected", target.name, why, len(members))
        return {"room": target.name, "ejected": [m.name for m in members]}

    def _admin_kick(self, name: str, reason: str | None) -> dict[str, Any]:
        session = self.users.get(fold(name))
        if session is None:
            raise ProtocolError("no_such_user", f"No such user: {name}")
        why = reason or "kicked by the operator"
        self._send(session, {"ev": "kicked", "reason": why})
        self._end_session(session, f"kicked: {why}")
        return {"name": name}

    # Operators override any owner: the rooms' own requests, ranked above every owner.

    def _admin_role(self, room: str, name: str, role: str) -> dict[str, Any]:
        return self._set_role(self._room(room), R.OPERATOR, "the operator", None, name, role)

    def _admin_mode(self, room: str, **changes: Any) -> dict[str, Any]:
        return self._change_modes(self._room(room), R.OPERATOR, "the operator", changes)

    def _admin_unban(self, room: str, name: str) -> dict[str, Any]:
        return self._lift_bans(self._room(room), name)

    def _admin_bans(self, room: str) -> dict[str, Any]:
        target = self._room(room)
        return {"room": target.name,
                "bans": [b.shown() for b in target.access.live_bans(self.clock())]}

    def _admin_eject(self, room: str, name: str, reason: str | None) -> dict[str, Any]:
        return self._kick_from(self._room(room), R.OPERATOR, "the operator", None, name,
                               reason)

    def _admin_ban(self, room: str, name: str, reason: str | None, key: bool | None,
                   duration: int | None) -> dict[str, Any]:
        return self._ban_from(self._room(room), R.OPERATOR, "the operator", None, name,
                              reason, key, duration)

    def _admin_invites(self, room: str) -> dict[str, Any]:
        return self._invites_of(self._room(room))

    def _admin_uninvite(self, room: str, name: str) -> dict[str, Any]:
        return self._withdraw(self._room(room), name)

    def _admin_stats(self) -> dict[str, Any]:
        c = self.counters
        return {"uptime": round(self.clock() - c.started, 3), "clients": len(self.sessions),
                "users": len(self.users), "rooms": len(self.rooms),
                "messages_in": c.frames_in, "messages_out": c.frames_out,
                "room_messages": c.room_messages, "incarnation": self.incarnation}

    # -- client commands ------------------------------------------------------------------
    # Each takes the session and the request's fields and returns the reply's fields,
    # or raises ProtocolError before changing anything.

    def _hello(self, peer: Peer, session: Session | None, identity: str | None,
               address: str, version: int, client: str | None) -> dict[str, Any]:
        if version != P.PROTOCOL_VERSION:
            raise ProtocolError("version", f"Unsupported protocol version {version}; "
                                           f"this broker speaks {P.PROTOCOL_VERSION}")
        if session is None:
            # (Behind an edge, the edge checked it: it holds the key the id is bound to.)
            if identity is not None and self.route_check is not None \
                    and isinstance(peer, bytes) and not self.route_check(peer, identity):
                # Deliveries go by routing id: one that anybody could present would let
                # them take somebody else's. Only the holder of the key can derive it.
                raise ProtocolError("bad_route", "Your routing id must be derived from "
                                                 "your key (PROTOCOL.md, routing ids)")
            replaced = self.sessions.get(peer)  # this routing id, under another key
            if self.max_clients is not None and \
                    len(self.sessions) - (replaced is not None) >= self.max_clients:
                raise ProtocolError("server_full",
                                    f"Server full ({self.max_clients} clients); try later")
            if replaced is not None:
                self._end_session(replaced, "replaced")
            # The same client (its key and client id) on another connection: it moved to
            # another edge, or reconnected, before the old one was known to be lost.
            moved = self._by_client.get((identity or "", client)) if client else None
            if moved is not None:
                self._end_session(moved, "reconnected")
            spent: tuple[Bucket, Bucket] | None = self._spent.pop(identity or peer, None)
            bucket, delivery = spent or (
                Bucket(self.burst, self.clock()), Bucket(self.delivery_burst, self.clock()))
            self.sessions[peer] = Session(peer, client, self.clock(), identity, address,
                                          bucket=bucket, delivery=delivery)
            if client:
                self._by_client[(identity or "", client)] = self.sessions[peer]
            log.info("Client connected (%d online)", len(self.sessions))
        return {"inc": self.incarnation, "pub": self.pub_address,
                "heartbeat": P.HEARTBEAT_INTERVAL, "timeout": self.peer_timeout,
                "limits": {"nick": P.NICK_MAX, "room": P.ROOM_MAX, "text": P.TEXT_MAX,
                           "history": P.HISTORY_PAGE_MAX, "frame": P.FRAME_MAX,
                           "page": P.LIST_PAGE_MAX,
                           # A client that keeps within these is never refused as too fast.
                           "rate": self.rate, "burst": self.burst,
                           "delivery_rate": self.delivery_rate,
                           "delivery_burst": self.delivery_burst}}

    def _ping(self, session: Session) -> dict[str, Any]:
        return {}

    def _login(self, session: Session, name: str, password: str | None) -> dict[str, Any]:
        self._check_name(session, name, password)
        self._take_name(session, name)
        return {"name": name}

    def _register(self, session: Session, password: str | None) -> dict[str, Any]:
        name = self._require_name(session)
        if password is None and session.identity is None:
            raise ProtocolError("credentials_needed",
                                "Give a password: /register PASSWORD (you have no key)")
        self._writing()
        renewal = self.store.account(fold(name)) is not None  # its owner, changing how
        if not renewal:
            self.budgets.register(_sources(session), self.store.accounts_of(session.identity)
                                  if session.identity else 0)
        salt = pwhash = None
        if password is not None:
            self.budgets.password_check(fold(name), _sources(session))
            salt = secrets.token_bytes(16)
            pwhash = _hash_password(password, salt)
        self.store.save_account(Account(fold(name), session.identity, salt, pwhash))
        self.budgets.signed_in(fold(name), _sources(session))
        # What the session held for itself is now the nickname's, and kept.
        for room, role in session.held.items():
            if self.rooms.get(fold(room.name)) is room:
                self._store_role(room, fold(name), name, role)
        for room in session.invites:
            room.invited.discard(session)
            if self.rooms.get(fold(room.name)) is room:
                self._store_invite(room, fold(name), name, "")
        session.held.clear()
        session.invites.clear()
        log.info("%s registered (%s)", name, "password" if password else "key")
        return {"name": name, "by": "password" if password else "key"}

    def _logout(self, session: Session) -> dict[str, Any]:
        name = self._require_name(session)
        self._leave_all(session, "logged out")
        del self.users[fold(name)]
        self._user_names.remove(name)
        session.name = None
        log.info("%s logged out", name)
        return {"name": name}

    def _bye(self, session: Session) -> dict[str, Any]:
        self._end_session(session, "quit")
        return {}

    def _users(self, session: Session, after: str | None, limit: int | None
               ) -> dict[str, Any]:
        names, more = self._user_names.page(after, limit or P.LIST_PAGE_DEFAULT)
        return {"users": names, "more": more}

    def _rooms(self, session: Session, after: str | None, limit: int | None
               ) -> dict[str, Any]:
        # Secret rooms are left out for non-members; closed ones are only named.
        wanted, more = limit or P.LIST_PAGE_DEFAULT, True
        listed: list[dict[str, Any]] = []
        while more and len(listed) < wanted:
            names, more = self._room_names.page(after, wanted - len(listed))
            for n in names:
                room = self.rooms[fold(n)]
                member = session.rooms.get(fold(n)) is room
                settings = room.access.settings
                if settings.secret and not member:
                    continue
                if not member and (settings.closed or self._banned(session, room)):
                    listed.append({"room": n, "closed": True})
                    continue
                entry: dict[str, Any] = {"room": n, "count": len(room.members)}
                if settings.subject:
                    entry["subject"] = settings.subject
                listed.append(entry)
            after = names[-1] if names else after
        return {"rooms": listed, "more": more}

    def _create(self, session: Session, room: str, name: str | None) -> dict[str, Any]:
        if fold(room) in self.rooms:
            raise ProtocolError("room_exists", f"Room {room} already exists")
        self._writing()
        self._store_events(session, 1)  # the join event
        name = self._name_for_entry(session, name, budget=self.budgets.create_room)
        now = self.clock()
        self.store.add_room(room, now, name)
        new = Room(room, now, name, seq=0)
        self._add_room(new)
        # The creator owns it: kept if the nickname is registered, else for this session.
        if self.store.account(fold(name)) is not None:
            self._store_role(new, fold(name), name, "owner")
        else:
            session.held[new] = "owner"
        log.info("New room %s created", room)
        return self._enter(session, new)

    def _join(self, session: Session, room: str, name: str | None, key: str | None
              ) -> dict[str, Any]:
        target = self._room(room)
        member = session.name is not None and fold(target.name) in session.rooms
        if member and name in (None, session.name):
            return self._welcome(session, target)  # already a member: it becomes current
        self._writing()
        if not member:
            self._charge_event(session, P.text_weight({}), len(target.members))
            self._store_events(session, 1)
        self._name_for_entry(  # renames everywhere
            session, name, entering=not member,
            admit=None if member else lambda n: self._may_enter(session, target, n, key))
        return self._welcome(session, target) if member else self._enter(session, target)

    def _leave(self, session: Session, room: str) -> dict[str, Any]:
        target = self._membership(session, room)
        # Joining and leaving a crowded room in a loop would be a flood of rekeys.
        self._charge_event(session, P.REKEY_WEIGHT, len(target.members) - 1)
        self._remove_member(target, session, "left")
        return {"room": target.name}

    def _who(self, session: Session, room: str, after: str | None, limit: int | None
             ) -> dict[str, Any]:
        target = self._room(room)
        settings = target.access.settings
        if session.rooms.get(fold(target.name)) is not target:
            if self._banned(session, target):
                raise ProtocolError("banned", f"You are banned from {target.name}")
            if settings.closed or settings.secret:  # its members told to members only
                raise ProtocolError("not_a_member", f"You are not in {room}")
        names, more = target.names.page(after, limit or P.LIST_PAGE_DEFAULT)
        return {"room": target.name, "members": names, "count": len(target.members),
                "more": more}

    def _away(self, session: Session, text: str | None) -> dict[str, Any]:
        self._require_name(session)
        session.away = text
        return {"away": text}

    def _say(self, session: Session, room: str, text: str, me: bool | None) -> dict[str, Any]:
        target = self._membership(session, room)
        self._writing()
        self._charge(session, len(text), len(target.members))
        self._store_quota(session, target, len(text))
        fields: dict[str, Any] = {"from": session.name, "text": text}
        if me:
            fields["me"] = True
        self.counters.room_messages += 1
        return {"room": target.name, "seq": self._stream(target, "msg", fields)}

    def _whisper(self, session: Session, room: str, to: str, text: str) -> dict[str, Any]:
        target = self._membership(session, room)
        if fold(to) == fold(session.name or ""):
            raise ProtocolError("self_message")
        recipient = target.members.get(fold(to))
        if recipient is None:
            raise ProtocolError("not_in_room", f"{to} is not in {room}")
        self._charge(session, len(text), 1)
        self._send(recipient, {"ev": "whisper", "from": session.name, "room": target.name,
                               "text": text, "ts": self.clock()})
        return {"to": recipient.name, "room": target.name, **_away_of([recipient])}

    def _msg(self, session: Session, to: list[str], text: str) -> dict[str, Any]:
        sender = self._require_name(session)
        keys = list(dict.fromkeys(map(fold, to)))  # drop repeats, keep order
        if fold(sender) in keys:
            raise ProtocolError("self_message")
        # Looked up once: a name that is nobody leaves a None (Sessions compare by
        # identity, so only a None is None), and only then are the unknown named.
        looked_up = [self.users.get(k) for k in keys]
        if None in looked_up:
            unknown = [n for n in to if fold(n) not in self.users]
            raise ProtocolError("no_such_user", f"No such user: {', '.join(unknown)}")
        recipients = cast("list[Session]", looked_up)
        self._charge(session, len(text), len(keys))
        names = [r.name for r in recipients]
        event = {"ev": "dm", "from": sender, "to": names, "text": text, "ts": self.clock()}
        packed = pack(event)
        for recipient in recipients:
            self._send(recipient, event, packed)
        return {"to": names, **_away_of(recipients)}

    def _broadcast(self, session: Session, text: str) -> dict[str, Any]:
        sender = self._require_name(session)
        self._charge(session, len(text), len(self.users) - 1)
        event = {"ev": "broadcast", "from": sender, "text": text, "ts": self.clock()}
        recipients = [s for s in self.users.values() if s is not session]
        packed = pack(event)
        for s in recipients:
            self._send(s, event, packed)
        return {"count": len(recipients)}

    def _history(self, session: Session, room: str, before: int | None, after: int | None,
                 limit: int | None) -> dict[str, Any]:
        target = self._membership(session, room)
        self._charge(session, 0, 0)  # in debt from earlier pages: wait
        since = self._since(session, target)
        if after is not None and since:
            after = max(after, since - 1)
        events, cut = _bounded(self._visible(self.store.events(
            target.name, before=before, after=after, limit=limit or self.join_history),
            since), keep_newest=after is None)
        self._charged_after(session, events)
        reply = {"room": target.name, "events": events, "seq": target.seq,
                 "inc": self.incarnation}
        if cut:
            reply["cut"] = True  # shortened by the text cap, not the end of history
        return reply

    # -- looking after a room: topic, settings, roles, invites, kicks, bans ---------------
    # Who may do what is broker/rooms.py's table; the order of checks is the same for all:
    # the room, your membership, your rank, what the request names, then the store.

    def _subject(self, session: Session, room: str, text: str | None) -> dict[str, Any]:
        target = self._membership(session, room)
        settings = target.access.settings
        if text is None:  # only read it
            return {"room": target.name, "text": settings.subject,
                    "by": settings.subject_set_by}
        R.check("subject", target.name, self._rank(session, target), settings)
        self._writing()
        settings.subject, settings.subject_set_by = text, session.name or ""
        self.store.save_room_settings(target.name, settings.dump())
        seq = self._room_event(target, "subject", name=session.name, text=text)
        return {"room": target.name, "text": text, "by": session.name, "seq": seq}

    def _mode(self, session: Session, room: str, **changes: Any) -> dict[str, Any]:
        target = self._membership(session, room)
        return self._change_modes(target, self._rank(session, target), session.name or "",
                                  changes)

    def _role(self, session: Session, room: str, name: str, role: str) -> dict[str, Any]:
        target = self._membership(session, room)
        return self._set_role(target, self._rank(session, target), session.name or "",
                              fold(session.name or ""), name, role)

    def _invite(self, session: Session, room: str, name: str) -> dict[str, Any]:
        target = self._membership(session, room)
        R.check("invite", target.name, self._rank(session, target), target.access.settings)
        invitee = self.users.get(fold(name))
        registered = self.store.account(fold(name)) is not None
        if invitee is None and not registered:
            # An invite is the nickname's if it is registered, else its session's.
            raise ProtocolError("no_such_user", f"No such user: {name}")
        shown = invitee.name if invitee is not None and invitee.name else name
        already = fold(name) in target.access.invites or (
            invitee is not None and invitee in target.invited)
        if not already and \
                len(target.access.invites) + len(target.invited) >= P.INVITES_MAX:
            raise ProtocolError("too_many_invites", f"{target.name} holds {P.INVITES_MAX} "
                                                    "invites already: withdraw some first")
        if registered:
            self._writing()
            self._store_invite(target, fold(name), shown, session.name or "")
        else:
            assert invitee is not None
            invitee.invites.add(target)
            target.invited.add(invitee)
        if invitee is not None:
            self._send(invitee, {"ev": "invited", "room": target.name, "by": session.name})
        return {"room": target.name, "name": shown}

    def _kick(self, session: Session, room: str, name: str, reason: str | None
              ) -> dict[str, Any]:
        target = self._membership(session, room)
        return self._kick_from(target, self._rank(session, target), session.name or "",
                               session, name, reason)

    def _ban(self, session: Session, room: str, name: str, reason: str | None,
             key: bool | None, duration: int | None) -> dict[str, Any]:
        target = self._membership(session, room)
        return self._ban_from(target, self._rank(session, target), session.name or "",
                              fold(session.name or ""), name, reason, key, duration)

    def _invites(self, session: Session, room: str) -> dict[str, Any]:
        target = self._membership(session, room)
        R.check("invites", target.name, self._rank(session, target), target.access.settings)
        return self._invites_of(target)

    def _uninvite(self, session: Session, room: str, name: str) -> dict[str, Any]:
        target = self._membership(session, room)
        R.check("uninvite", target.name, self._rank(session, target),
                target.access.settings)
        return self._withdraw(target, name)

    def _unban(self, session: Session, room: str, name: str) -> dict[str, Any]:
        target = self._membership(session, room)
        R.check("unban", target.name, self._rank(session, target), target.access.settings)
        return self._lift_bans(target, name)

    def _bans(self, session: Session, room: str) -> dict[str, Any]:
        target = self._membership(session, room)
        R.check("bans", target.name, self._rank(session, target), target.access.settings)
        return {"room": target.name,
                "bans": [b.shown() for b in target.access.live_bans(self.clock())]}

    def _change_modes(self, target: Room, rank: int, by: str, changes: dict[str, Any]
                      ) -> dict[str, Any]:
        settings = target.access.settings
        changes = {k: v for k, v in changes.items() if v is not None
                   and getattr(settings, k) != v}
        if not changes:  # only read them (or nothing changes)
            return {"room": target.name, "modes": settings.modes()}
        R.check("mode", target.name, rank, settings)
        self._writing()
        for setting, value in changes.items():
            setattr(settings, setting, value)
        self.store.save_room_settings(target.name, settings.dump())
        told = {k: (bool(v) if k == "key" else v) for k, v in changes.items()}
        seq = self._room_event(target, "mode", name=by, **told)
        return {"room": target.name, "modes": settings.modes(), "seq": seq}

    def _set_role(self, target: Room, rank: int, by: str, actor: str | None, name: str,
                  role: str) -> dict[str, Any]:
        access = target.access
        R.check("role", target.name, rank, access.settings)
        holder = self.users.get(fold(name))
        shown = holder.name if holder is not None and holder.name else name
        if role != "member" and self.store.account(fold(name)) is None:
            raise ProtocolError("not_registered", f"{name} is not registered: only a "
                                                  f"registered nickname holds a role")
        R.check_over("role", target.name, rank, shown, self._rank_of(target, name),
                     fold(name) == actor)
        current = access.roles.get(fold(name), ("member", ""))[0]
        if current == "owner" and role != "owner" and rank < R.OPERATOR \
                and access.owners() == [access.roles[fold(name)][1]]:
            raise ProtocolError("last_owner", f"{target.name} needs an owner: make "
                                              f"someone else its owner first")
        if current == role and (holder is None or target not in holder.held):
            return {"room": target.name, "name": shown, "role": role}
        self._writing()
        if holder is not None:
            holder.held.pop(target, None)
        if role == "member":
            access.roles.pop(fold(name), None)
            self.store.revoke(target.name, "role", fold(name))
        else:
            self._store_role(target, fold(name), shown, role)
        self._settle_lifetime(target)
        seq = self._room_event(target, "role", name=shown, role=role, by=by)
        log.info("%s made %s %s of %s", by, shown, role, target.name)
        return {"room": target.name, "name": shown, "role": role, "seq": seq}

    def _lift_bans(self, target: Room, name: str) -> dict[str, Any]:
        access = target.access
        lifted = [b for b in access.bans.values()
                  if (b.kind == "name" and b.who == fold(name))
                  or (b.kind == "key" and fold(b.name) == fold(name))]
        if not [b for b in lifted if b in access.live_bans(self.clock())]:
            raise ProtocolError("not_banned", f"{name} is not banned from {target.name}")
        self._writing()
        for ban in lifted:
            del access.bans[(ban.kind, ban.who)]
            self.store.revoke(target.name, "ban:" + ban.kind, ban.who)
        return {"room": target.name, "name": name, "lifted": len(lifted)}

    def _kick_from(self, target: Room, rank: int, by: str, actor: Session | None,
                   name: str, reason: str | None) -> dict[str, Any]:
        R.check("kick", target.name, rank, target.access.settings)
        member = target.members.get(fold(name))
        if member is None or member.name is None:
            raise ProtocolError("not_in_room", f"{name} is not in {target.name}")
        R.check_over("kick", target.name, rank, member.name, self._rank(member, target),
                     member is actor)
        self._writing()
        why = f"kicked by {by}" + (f": {reason}" if reason else "")
        self._withdraw_invite(target, member)
        self._eject(target, member, why)
        log.info("%s kicked %s from %s", by, member.name, target.name)
        return {"room": target.name, "name": member.name}

    def _ban_from(self, target: Room, rank: int, by: str, actor: str | None, name: str,
                  reason: str | None, key: bool | None, duration: int | None
                  ) -> dict[str, Any]:
        access = target.access
        R.check("ban", target.name, rank, access.settings)
        holder = self.users.get(fold(name))
        shown = holder.name if holder is not None and holder.name else name
        R.check_over("ban", target.name, rank, shown, self._rank_of(target, name),
                     fold(name) == actor)
        if key and holder is None:
            raise ProtocolError("no_such_user", f"No such user: {name} (a key is banned "
                                                f"only while its user is online)")
        now = self.clock()
        new = [R.Ban("name", fold(name), shown, by, reason or "",
                     now + duration if duration else None)]
        if key and holder is not None and holder.identity is not None:
            new.append(R.Ban("key", holder.identity, shown, by, reason or "", new[0].until))
        live = access.live_bans(now)
        if len({(b.kind, b.who) for b in live} | {(b.kind, b.who) for b in new}) \
                > P.BANS_MAX:
            raise ProtocolError("too_many_bans", f"{target.name} holds {P.BANS_MAX} bans "
                                                 f"already: lift some first")
        self._writing()
        for stale in [b for b in access.bans.values() if b not in live]:  # expired
            del access.bans[(stale.kind, stale.who)]
            self.store.revoke(target.name, "ban:" + stale.kind, stale.who)
        for ban in new:
            access.bans[(ban.kind, ban.who)] = ban
            self.store.grant(target.name, "ban:" + ban.kind, ban.who, R.entry("ban", {
                "name": ban.name, "by": ban.by, "reason": ban.reason, "until": ban.until}))
        self.store.revoke(target.name, "invite", fold(name))
        access.invites.pop(fold(name), None)
        if holder is not None:
            holder.invites.discard(target)
            target.invited.discard(holder)
        why = f"banned by {by}" + (f": {reason}" if reason else "")
        # Out go the nickname and every session of a banned key, as a leave would.
        for member in list(target.members.values()):
            if access.ban_on(fold(member.name or ""), member.identity, now) is not None:
                self._withdraw_invite(target, member)
                self._eject(target, member, why)
        log.info("%s banned %s from %s", by, shown, target.name)
        return {"room": target.name, "name": shown, "bans": [b.shown() for b in new]}

    def _invites_of(self, target: Room) -> dict[str, Any]:
        """Who may come in by invitation: registered nicknames (kept), and sessions of
        unregistered ones online now (theirs until they go)."""
        kept = set(target.access.invites.values())
        held = {s.name for s in target.invited if s.name}
        return {"room": target.name, "invites": sorted(kept | held, key=fold)}

    def _withdraw(self, target: Room, name: str) -> dict[str, Any]:
        holder = self.users.get(fold(name))
        kept = fold(name) in target.access.invites
        if not kept and (holder is None or target not in holder.invites):
            raise ProtocolError("not_invited", f"{name} is not invited to {target.name}")
        if kept:
            self._writing()
            del target.access.invites[fold(name)]
            self.store.revoke(target.name, "invite", fold(name))
        if holder is not None:
            holder.invites.discard(target)
            target.invited.discard(holder)
        return {"room": target.name, "name": holder.name if holder and holder.name else name}

    def _may_enter(self, session: Session, room: Room, name: str, key: str | None) -> None:
        """Does the room let this session in under this nickname (already known to be
        the session's to take)?"""
        folded = fold(name)
        registered = self.store.account(folded) is not None
        rank = room.access.rank(folded, registered, session.held.get(room))
        invited = (registered and folded in room.access.invites) or room in session.invites
        R.check_entry(room.name, room.access, rank, folded, session.identity, invited, key,
                      self.clock())

    def _banned(self, session: Session, room: Room) -> bool:
        if not room.access.bans:
            return False
        return room.access.ban_on(fold(session.name) if session.name else None,
                                  session.identity, self.clock()) is not None

    def _rank(self, session: Session, room: Room) -> int:
        """The session's rank in a room: by its nickname's role, or what it holds."""
        if session.name is None:
            return R.MEMBER
        folded = fold(session.name)
        return room.access.rank(folded, self.store.account(folded) is not None,
                                session.held.get(room))

    def _rank_of(self, room: Room, name: str) -> int:
        holder = self.users.get(fold(name))
        if holder is not None:
            return self._rank(holder, room)
        return room.access.rank(fold(name), self.store.account(fold(name)) is not None)

    def _eject(self, room: Room, member: Session, reason: str) -> None:
        """Remove a member exactly as a leave does (the event, then a new topic told to
        the rest), and tell them, so their client stops following the room."""
        self._remove_member(room, member, reason)
        self._send(member, {"ev": "ejected", "room": room.name, "reason": reason})

    def _withdraw_invite(self, room: Room, member: Session) -> None:
        member.invites.discard(room)
        room.invited.discard(member)
        if member.name is not None and room.access.invites.pop(fold(member.name),
                                                                None) is not None:
            self.store.revoke(room.name, "invite", fold(member.name))

    def _store_role(self, room: Room, folded: str, shown: str, role: str) -> None:
        room.access.roles[folded] = (role, shown)
        self.store.grant(room.name, "role", folded, {"role": role, "name": shown})

    def _store_invite(self, room: Room, folded: str, shown: str, by: str) -> None:
        room.access.invites[folded] = shown
        self.store.grant(room.name, "invite", folded, R.entry("invite", {"name": shown,
                                                                           "by": by}))

    def _stored_access(self, room: str) -> R.Access:
        return R.Access.load(self.store.room_settings(room), self.store.room_access(room))

    def _owners(self, room: Room) -> list[str]:
        """Its registered owners, and those in it who own it for their session."""
        held = [m.name for m in room.members.values() if m.held.get(room) == "owner" and m.name]
        return sorted(set(room.access.owners()) | set(held))

    def _kept(self, room: Room) -> bool:
        """Is an empty room kept past room_lifetime (until owned_room_lifetime)? Yes while
        a registered nickname owns it (stored roles are only held by registered ones)."""
        return bool(room.access.owners())

    def _settle_lifetime(self, room: Room) -> None:
        """An empty room whose ownership changed: an owned one no more goes as any other
        (from when it emptied); a newly owned one is kept longer when its time comes."""
        name = fold(room.name)
        if room.members or name in self._empty:
            return
        since = self._owned_empty.pop(name, None)
        self._empty[name] = since if since is not None else self.clock()

    def _since(self, session: Session, room: Room) -> int:
        """The first seq of the room's history this member may read (0: all of it)."""
        if room.access.settings.history != "joined":
            return 0
        return session.joined.get(fold(room.name), room.seq + 1)

    @staticmethod
    def _visible(events: list[dict[str, Any]], since: int) -> list[dict[str, Any]]:
        return [e for e in events if e["seq"] >= since] if since else events

    # -- the rules behind the commands ----------------------------------------------------

    def _require_name(self, session: Session) -> str:
        if session.name is None:
            raise ProtocolError("not_logged_in", "Log in first: /login NAME")
        return session.name

    def _check_name(self, session: Session, name: str, password: str | None = None) -> None:
        """May this session take this nickname now?"""
        holder = self.users.get(fold(name))
        if holder is not None and holder is not session:
            raise ProtocolError("name_taken", f"Nickname {name} is taken")
        if session.name is None or fold(session.name) != fold(name):
            self._check_owner(session, name, password)
        if session.name not in (None, name) and session.rooms:
            self._writing()  # a rename is an event in each of its rooms...
            self._store_events(session, len(session.rooms))  # ...stored like any

    def _check_owner(self, session: Session, name: str, password: str | None) -> None:
        """A registered nickname goes only to its key, or to whoever knows its password."""
        account = self.store.account(fold(name))
        if account is None:
            return
        if account.key is not None and account.key == session.identity:
            return
        if password is not None and account.pwhash is not None:
            self.budgets.password_check(fold(name), _sources(session))
            if hmac.compare_digest(_hash_password(password, account.salt or b""),
                                   account.pwhash):
                self.budgets.signed_in(fold(name), _sources(session))
                return
            self.budgets.password_failed(fold(name), _sources(session))
            raise ProtocolError("bad_password", f"Wrong password for {name}")
        raise ProtocolError("name_reserved",
                            f"Nickname {name} is registered: /identify {name} PASSWORD")

    def _charge(self, session: Session, characters: int, recipients: int) -> None:
        """Charge what a request will cost to deliver, before it changes anything."""
        if self.rate <= 0:
            return
        cost = characters * max(recipients, 1)
        if cost > self.delivery_burst:
            raise ProtocolError("too_large", f"Too large to deliver: {characters} characters "
                                             f"to {recipients} people is over "
                                             f"{self.delivery_burst:,.0f}")
        if not session.delivery.take(self.clock(), self.delivery_rate, self.delivery_burst,
                                     cost):
            raise ProtocolError("rate_limited", f"Slow down: at most "
                                                f"{self.delivery_rate:,.0f} characters a "
                                                f"second (times recipients)")

    def _charge_event(self, session: Session, weight: int, told: int) -> None:
        """A join or a leave, charged like a message to those told of it, but never past
        the burst: however crowded the room, a join or leave is never too_large."""
        self._charge(session, weight, min(told, int(self.delivery_burst // weight)))

    def _charged_after(self, session: Session, events: list[dict[str, Any]]) -> None:
        """A history page's text is known once read: it is charged then, into debt."""
        if self.rate > 0:
            session.delivery.spend(self.clock(), self.delivery_rate, self.delivery_burst,
                                   sum(P.text_weight(e) for e in events))

    def _store_quota(self, session: Session, room: Room, characters: int) -> None:
        """Bound what one source and one room may put on disk, before the write."""
        if room.stored is None:  # learnt once, on the room's first message since start
            room.stored = self.store.room_size(room.name)
        if room.stored + characters > self.room_quota:
            raise ProtocolError("quota_exceeded", f"Room {room.name} is full: it keeps at "
                                                  f"most {self.room_quota:,} characters")
        if self.rate > 0:
            self.budgets.store(_sources(session), characters)
        room.stored += characters + _EVENT_WEIGHT

    def _store_events(self, session: Session, count: int) -> None:
        """Events other than messages (joins, renames) are stored too: they count against
        the source's share of the disk, at an event's weight each."""
        if self.rate > 0:
            self.budgets.store(_sources(session), count * _EVENT_WEIGHT)

    def _writing(self) -> None:
        """Refuse a request that must write, while the store cannot take writes."""
        problem = self.store.problem()
        if problem is not None:
            raise ProtocolError("store_unavailable",
                                f"History cannot be written now ({problem}); try later")

    def _within_rate(self, bucket: Bucket | None) -> bool:
        return self.rate <= 0 or bucket is None or bucket.take(self.clock(), self.rate,
                                                               self.burst)

    def _take_name(self, session: Session, name: str) -> None:
        old = session.name
        if old == name:
            return
        if old is not None:
            del self.users[fold(old)]
            self._user_names.remove(old)
        session.name = name
        self.users[fold(name)] = session
        self._user_names.add(name)
        if old is None:  # a first name: no room has this session yet
            return
        for room in session.rooms.values():  # a rename: told in each of its rooms
            del room.members[fold(old)]
            room.names.remove(old)
            room.members[fold(name)] = session
            room.names.add(name)
            self._room_event(room, "nick", name=name, old=old)
        log.info("%s logged in", name) if old is None else log.info("%s is now %s", old, name)

    def _name_for_entry(self, session: Session, name: str | None, entering: bool = True,
                        budget: Callable[[list[tuple[str, object]]], None] | None = None,
                        admit: Callable[[str], None] | None = None) -> str:
        """Check, then settle, the nickname a session enters a room with: ``admit``
        checks the room lets that nickname in (once it is known to be the session's);
        ``budget`` is spent last of the checks (a refused request spends none)."""
        if entering and len(session.rooms) >= P.ROOMS_PER_MEMBER_MAX:
            raise ProtocolError("too_many_rooms",
                                f"You are in {P.ROOMS_PER_MEMBER_MAX} rooms already")
        if name is None:
            name = session.name or self._guest_name()
        self._check_name(session, name)
        if admit is not None:
            admit(name)
        if budget is not None:
            budget(_sources(session))
        self._take_name(session, name)
        return name

    def _guest_name(self) -> str:
        while True:
            self._guests += 1
            name = f"Guest{self._guests}"
            if fold(name) not in self.users and self.store.account(fold(name)) is None:
                return name

    def _room(self, name: str) -> Room:
        room = self.rooms.get(fold(name))
        if room is None:
            raise ProtocolError("no_such_room", f"No such room: {name}")
        return room

    def _membership(self, session: Session, name: str) -> Room:
        key = fold(name)
        room = self.rooms.get(key)  # _room(), with the fold kept: rooms are keyed by it,
        if room is None:  # so it is fold(room.name) too, the key of session.rooms
            raise ProtocolError("no_such_room", f"No such room: {name}")
        if session.name is None or session.rooms.get(key) is not room:
            raise ProtocolError("not_a_member", f"You are not in {name}")
        return room

    def _enter(self, session: Session, room: Room) -> dict[str, Any]:
        assert session.name is not None
        room.members[fold(session.name)] = session
        room.names.add(session.name)
        session.rooms[fold(room.name)] = room
        if (edge := session.edge) is not None:
            room.edges[edge] = room.edges.get(edge, 0) + 1
        self._empty.pop(fold(room.name), None)
        self._owned_empty.pop(fold(room.name), None)
        session.joined[fold(room.name)] = self._room_event(room, "join", name=session.name)
        return self._welcome(session, room)

    def _welcome(self, session: Session, room: Room) -> dict[str, Any]:
        """What a member needs to follow a room: its topic, members and recent history."""
        since = self._since(session, room)
        history, cut = _bounded(self._visible(
            self.store.events(room.name, limit=self.join_history), since), keep_newest=True)
        self._charged_after(session, history)
        members, more = room.names.page(None, P.LIST_PAGE_DEFAULT)
        welcome = {"room": room.name, "name": session.name, "topic": room.topic,
                   "seq": room.seq, "inc": self.incarnation, "members": members,
                   "count": len(room.members), "history": history}
        settings = room.access.settings
        if settings.subject:
            welcome["subject"] = settings.subject
        if since:
            welcome["since"] = since  # history before it is not yours to read
        rank = self._rank(session, room)
        if rank > R.MEMBER:
            welcome["role"] = R.ROLE_NAMES[rank]
        if more:
            welcome["more"] = True  # the rest of the members: page with who
        if cut:
            welcome["cut"] = True
        return welcome

    def _remove_member(self, room: Room, session: Session, reason: str) -> None:
        assert session.name is not None
        del room.members[fold(session.name)]
        room.names.remove(session.name)
        del session.rooms[fold(room.name)]
        if (edge := session.edge) is not None:
            if room.edges[edge] > 1:
                room.edges[edge] -= 1
            else:
                del room.edges[edge]
        session.joined.pop(fold(room.name), None)
        if not room.members:
            self._empty[fold(room.name)] = self.clock()
        rekey = {"ev": "rekey", "room": room.name, "topic": "", "seq": 0}
        if self.store.problem() is None:
            # Announced on the old topic, so the remaining members see it without a gap...
            self._room_event(room, "leave", name=session.name, reason=reason)
        else:  # no event can be stored: the leave is told in the rekey, out of sequence
            rekey["left"] = session.name
        # ...then the topic is replaced: what is published next never reaches the leaver.
        self._rotate_topic(room)
        rekey["topic"], rekey["seq"] = room.topic, room.seq
        for member in room.members.values():
            self._send(member, rekey)

    def _leave_all(self, session: Session, reason: str) -> None:
        for room in list(session.rooms.values()):
            self._remove_member(room, session, reason)

    def _end_session(self, session: Session, reason: str) -> None:
        self._leave_all(session, reason)
        for room in session.invites:  # a held invite is its session's: it goes with it
            room.invited.discard(session)
        if session.name is not None:
            del self.users[fold(session.name)]
            self._user_names.remove(session.name)
        del self.sessions[session.peer]
        if isinstance(session.peer, tuple):
            self.ended_behind_edges.append(session.peer)
        if session.client_id and \
                self._by_client.get((session.identity or "", session.client_id)) is session:
            del self._by_client[(session.identity or "", session.client_id)]
        self._spent[session.identity or session.peer] = (session.bucket, session.delivery)
        if len(self._spent) > P.ANSWERS_REMEMBERED:
            self._spent.popitem(last=False)
        log.info("Client %s ended: %s (%d online)", session.name or "(anonymous)", reason,
                 len(self.sessions))

    def _room_event(self, room: Room, ev: str, **fields: Any) -> int:
        return self._stream(room, ev, fields)

    def _stream(self, room: Room, ev: str, fields: dict[str, Any]) -> int:
        """Number the next event of a room's stream, hand it to the store, publish it;
        return its seq."""
        room.seq = seq = room.seq + 1
        event = {"ev": ev, "room": room.name, "seq": seq, "ts": self.clock(),
                 "inc": self.incarnation, **fields}
        # A message remembers the request that made it, to recognise a retry after a crash.
        origin = _origin(self._request_key) if ev == "msg" and self._request_key else None
        packed = pack(event)  # once: the store's row and the room's frame are made of it
        self.store.append(room.name, seq, packed, origin)
        self._out.append(Publish(room.topic, event, room, packed))
        return seq

    def _add_room(self, room: Room) -> None:
        if fold(room.name) in self.rooms:  # stored before names were folded
            log.warning("Room %s is hidden by %s: their names are alike", room.name,
                        self.rooms[fold(room.name)].name)
            return
        self.rooms[fold(room.name)] = room
        self._room_names.add(room.name)
        self._rotate_topic(room)

    def _remove_room(self, room: Room) -> None:
        del self.rooms[fold(room.name)]
        self._room_names.remove(room.name)
        self._empty.pop(fold(room.name), None)
        self._owned_empty.pop(fold(room.name), None)
        del self.topics[room.topic]
        self.topic_changes.append((room.topic, False))

    def _rotate_topic(self, room: Room) -> None:
        if self.topics.pop(room.topic, None) is not None:
            self.topic_changes.append((room.topic, False))
        room.topic = room.name.encode() + b"\0" + self._token().encode()
        self.topics[room.topic] = room
        self.topic_changes.append((room.topic, True))

    def _send(self, session: Session, body: dict[str, Any], packed: bytes | None = None
              ) -> None:
        self._out.append(Send(session.peer, body, packed))


def _origin(key: tuple[str, str, int]) -> str:
    """How the store names the request that made a message: "key:client id:request id"
    (the key shortened to a digest: it only has to tell keys apart)."""
    return f"{_owner(key[0])}:{key[1]}:{key[2]}"


@lru_cache(maxsize=4096)  # a digest per message is a digest per key, made again and again
def _owner(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest() if key else ""


def _sources(session: Session) -> list[tuple[str, object]]:
    """Who a session is, for limits that outlive it: its key and its address; a session
    with neither (plaintext, in tests) only stands for itself."""
    sources: list[tuple[str, object]] = []
    if session.identity is not None:
        sources.append(("key", session.identity))
    if session.address:
        sources.append(("address", session.address))
    return sources or [("peer", session.peer)]


def _away_of(recipients: list[Session]) -> dict[str, Any]:
    """The ``away`` field of a reply: who of the recipients is away, and why."""
    away = {s.name: s.away for s in recipients if s.away is not None}
    return {"away": away} if away else {}


def _bounded(events: list[dict[str, Any]], *, keep_newest: bool
             ) -> tuple[list[dict[str, Any]], bool]:
    """A page of history within HISTORY_TEXT_MAX characters of text (one event at least),
    and whether the cap cut it short: a client that asks and never reads cannot make the
    broker queue megabytes a reply. Clients page on by seq, so a shorter page loses
    nothing. The events kept are the newest of the page (scrolling back) or the oldest
    (catching up forward), so the page always joins what the client already has."""
    budget = P.HISTORY_TEXT_MAX
    kept: list[dict[str, Any]] = []
    for event in reversed(events) if keep_newest else events:
        budget -= P.text_weight(event)
        if kept and budget < 0:
            break
        kept.append(event)
    return (kept[::-1] if keep_newest else kept), len(kept) < len(events)


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << 13, r=8, p=1)


def _unsequenced(send: Send, stored: dict[str, int], turn: list[Delivery]) -> Send:
    """A rekey from a turn that was not stored names a seq that will be used again (by
    the next event), and a leave event that went nowhere: tell it with the seq the store
    holds, and the leave in it, as when the store refuses writes (``_remove_member``)."""
    body = send.body
    room: str = body.get("room", "")  # a rekey always names its room
    if body.get("ev") != "rekey" or body.get("seq", 0) <= stored.get(room, 0):
        return send
    left = next((d.body.get("name") for d in turn if isinstance(d, Publish)
                 and d.body.get("ev") == "leave" and d.body.get("room") == room
                 and d.body.get("seq") == body["seq"]), None)
    told = {**body, "seq": stored.get(room, 0)}
    if left is not None:
        told["left"] = left
    return Send(send.peer, told)
