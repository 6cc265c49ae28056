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
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schema import ProtocolError, Request, error, ok, pack, unpack
from schema import protocol as P

from .store import Account, Store

log = logging.getLogger("zchat.broker")


# --- Deliveries --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """One message to one client, through the ROUTER."""

    peer: bytes
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Publish:
    """One event to everyone subscribed to a room topic, through the publisher."""

    topic: bytes
    body: dict[str, Any]


Delivery = Send | Publish

# Requests whose replies are remembered, so a retry is answered without redoing it: the
# deliveries, which must not reach anyone twice. Those that change the session (login,
# create, leave...) are carried out again: a retry may come from a new session after a
# reconnect, and an old answer would tell it something about a session that is gone.
_REMEMBERED = frozenset({"say", "whisper", "msg", "broadcast"})


# --- State -------------------------------------------------------------------------------


@dataclass
class Bucket:
    """A token bucket: how many requests may still be made at once, as of when."""

    tokens: float
    refilled: float

    def take(self, now: float, rate: float, burst: int) -> bool:
        """Spend one token if there is one: ``burst`` at once, then ``rate`` a second."""
        self.tokens = min(burst, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(eq=False)
class Session:
    """One connected client, known by its routing id; a user once it has a nickname."""

    peer: bytes
    client_id: str | None
    last_seen: float
    identity: str | None = None  # the CURVE key it authenticated with (z85), if any
    name: str | None = None
    rooms: dict[str, Room] = field(default_factory=dict)  # insertion-ordered set
    bucket: Bucket = field(default_factory=lambda: Bucket(0.0, 0.0))  # its rate limit
    password_checks: list[float] = field(default_factory=list)  # when, in the last minute


@dataclass(eq=False)
class Room:
    name: str
    created: float
    creator: str
    seq: int  # seq of the newest event in the room's stream
    topic: bytes = b""
    members: dict[str, Session] = field(default_factory=dict)  # nickname -> session


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
        clock: Callable[[], float] = time.time,
        token: Callable[[], str] = lambda: secrets.token_hex(8),
    ):
        self.store = store
        self.pub_address = pub_address
        self.max_clients = max_clients
        self.join_history = min(join_history, P.HISTORY_PAGE_MAX)
        self.peer_timeout = peer_timeout
        self.rate, self.burst = rate, burst
        self.clock = clock
        self._token = token
        self.incarnation = token()
        self.counters = Counters(started=clock())
        self.sessions: dict[bytes, Session] = {}
        self.users: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {}
        self.topics: dict[bytes, Room] = {}
        self._guests = 0
        self._out: list[Delivery] = []
        # Packed: 100,000 replies as dicts are 200,000 objects for every full garbage
        # collection to walk (88 ms each under the dm benchmark); as bytes, none.
        self._answers: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._request_key: tuple[str, int] | None = None  # (client id, request id) at hand
        self._password_checks: deque[float] = deque()  # when the last few were made
        # The rate buckets of ended sessions, by routing id: a new hello does not refill.
        self._spent: OrderedDict[bytes, Bucket] = OrderedDict()
        for stored in store.rooms():
            room = Room(stored.name, stored.created, stored.creator, stored.last_seq)
            self._add_room(room)

    # -- entry points used by the broker loop ---------------------------------------------

    def handle(self, peer: bytes, request: Request, identity: str | None = None
               ) -> list[Delivery]:
        """Carry out one validated client request; return what must be delivered.

        ``identity`` is the CURVE key the request was authenticated with (None in
        plaintext mode).
        """
        self._out = out = []
        try:
            session = self._admit(peer, request, identity)
        except ProtocolError as err:
            return out + [Send(peer, error(request.id, err))]
        key = (session.client_id, request.id) if session and session.client_id else None
        if key and request.retry:
            answer = self._answer_again(key, request)
            if answer is not None:
                return [Send(peer, answer)]
        self._request_key = key
        try:
            if request.cmd == "hello":  # the only request _admit lets in without a session
                result = self._hello(peer, session, identity, **request.args)
            else:
                result = getattr(self, "_" + request.cmd)(session, **request.args)
            reply = ok(request.id, **result)
        except ProtocolError as err:
            reply = error(request.id, err)
        if key and request.cmd in _REMEMBERED:
            self._answers[key] = pack(reply)
            if len(self._answers) > P.ANSWERS_REMEMBERED:
                self._answers.popitem(last=False)
        out.insert(0, Send(peer, reply))
        return out

    def _admit(self, peer: bytes, request: Request, identity: str | None) -> Session | None:
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
            if not self._within_rate(self._spent.get(peer)):
                raise self._too_fast()
            return None
        session.last_seen = self.clock()
        if request.cmd != "ping" and not self._within_rate(session.bucket):
            raise self._too_fast()
        return session

    def _too_fast(self) -> ProtocolError:
        return ProtocolError("rate_limited",
                             f"Slow down: at most {self.rate:g} requests a second")

    def _answer_again(self, key: tuple[str, int], request: Request) -> dict[str, Any] | None:
        """The reply already given to a retried request, so it is not carried out twice.
        A message survives a broker restart in the store, and is recognised there."""
        answer = self._answers.get(key)
        if answer is not None:
            return unpack(answer)
        if request.cmd == "say":
            room = request.args["room"]
            seq = self.store.seq_of(room, _origin(key))
            if seq is not None:
                return ok(request.id, room=room, seq=seq)
        return None

    def refuse(self, peer: bytes, rid: int | None, err: ProtocolError) -> list[Delivery]:
        """A request that failed validation: an error to its sender, nothing else."""
        return [Send(peer, error(rid, err))]

    def gone(self, peer: bytes, reason: str = "disconnected") -> list[Delivery]:
        """The peer cannot be reached any more: end its session."""
        self._out = []
        session = self.sessions.get(peer)
        if session is not None:
            self._end_session(session, reason)
        return self._out

    def expire(self) -> list[Delivery]:
        """End the sessions of clients silent for longer than the peer timeout."""
        self._out = []
        deadline = self.clock() - self.peer_timeout
        for session in [s for s in self.sessions.values() if s.last_seen < deadline]:
            self._end_session(session, "timed out")
        return self._out

    def ticks(self) -> list[Delivery]:
        """A tick per occupied room: lets subscribers notice missed trailing events."""
        return [
            Publish(room.topic, {"ev": P.ROOM_TICK, "room": room.name, "seq": room.seq,
                                 "inc": self.incarnation})
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

    def _admin_ls(self) -> dict[str, Any]:
        return {"rooms": [{"room": r.name, "count": len(r.members), "members": list(r.members),
                           "seq": r.seq, "creator": r.creator}
                          for r in sorted(self.rooms.values(), key=lambda r: r.name)]}

    def _admin_users(self) -> dict[str, Any]:
        return {"users": [{"name": name, "rooms": list(s.rooms)}
                          for name, s in sorted(self.users.items())],
                "anonymous": len(self.sessions) - len(self.users)}

    def _admin_kill(self, room: str, reason: str | None) -> dict[str, Any]:
        target = self._room(room)
        why = reason or "killed by the operator"
        members = list(target.members.values())
        for member in members:
            del member.rooms[target.name]
            self._send(member, {"ev": "ejected", "room": target.name, "reason": why})
        self._remove_room(target)
        self.store.drop_room(target.name)
        log.info("Room %s killed (%s); %d members ejected", target.name, why, len(members))
        return {"room": target.name, "ejected": [m.name for m in members]}

    def _admin_kick(self, name: str, reason: str | None) -> dict[str, Any]:
        session = self.users.get(name)
        if session is None:
            raise ProtocolError("no_such_user", f"No such user: {name}")
        why = reason or "kicked by the operator"
        self._send(session, {"ev": "kicked", "reason": why})
        self._end_session(session, f"kicked: {why}")
        return {"name": name}

    def _admin_stats(self) -> dict[str, Any]:
        c = self.counters
        return {"uptime": round(self.clock() - c.started, 3), "clients": len(self.sessions),
                "users": len(self.users), "rooms": len(self.rooms),
                "messages_in": c.frames_in, "messages_out": c.frames_out,
                "room_messages": c.room_messages, "incarnation": self.incarnation}

    # -- client commands ------------------------------------------------------------------
    # Each takes the session and the request's fields and returns the reply's fields,
    # or raises ProtocolError before changing anything.

    def _hello(self, peer: bytes, session: Session | None, identity: str | None,
               version: int, client: str | None) -> dict[str, Any]:
        if version != P.PROTOCOL_VERSION:
            raise ProtocolError("version", f"Unsupported protocol version {version}; "
                                           f"this broker speaks {P.PROTOCOL_VERSION}")
        if session is None:
            replaced = self.sessions.get(peer)  # this routing id, under another key
            if self.max_clients is not None and \
                    len(self.sessions) - (replaced is not None) >= self.max_clients:
                raise ProtocolError("server_full",
                                    f"Server full ({self.max_clients} clients); try later")
            if replaced is not None:
                self._end_session(replaced, "replaced")
            bucket = self._spent.pop(peer, None) or Bucket(self.burst, self.clock())
            self.sessions[peer] = Session(peer, client, self.clock(), identity,
                                          bucket=bucket)
            log.info("Client connected (%d online)", len(self.sessions))
        return {"inc": self.incarnation, "pub": self.pub_address,
                "heartbeat": P.HEARTBEAT_INTERVAL, "timeout": self.peer_timeout,
                "limits": {"nick": P.NICK_MAX, "room": P.ROOM_MAX, "text": P.TEXT_MAX,
                           "history": P.HISTORY_PAGE_MAX, "frame": P.FRAME_MAX,
                           # A client that keeps within these is never refused as too fast.
                           "rate": self.rate, "burst": self.burst}}

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
        salt = pwhash = None
        if password is not None:
            self._spend_password_check(session)
            salt = secrets.token_bytes(16)
            pwhash = _hash_password(password, salt)
        self.store.save_account(Account(name, session.identity, salt, pwhash))
        log.info("%s registered (%s)", name, "password" if password else "key")
        return {"name": name, "by": "password" if password else "key"}

    def _logout(self, session: Session) -> dict[str, Any]:
        name = self._require_name(session)
        self._leave_all(session, "logged out")
        del self.users[name]
        session.name = None
        log.info("%s logged out", name)
        return {"name": name}

    def _bye(self, session: Session) -> dict[str, Any]:
        self._end_session(session, "quit")
        return {}

    def _users(self, session: Session) -> dict[str, Any]:
        return {"users": sorted(self.users)}

    def _rooms(self, session: Session) -> dict[str, Any]:
        return {"rooms": [{"room": r.name, "count": len(r.members)}
                          for r in sorted(self.rooms.values(), key=lambda r: r.name)]}

    def _create(self, session: Session, room: str, name: str | None) -> dict[str, Any]:
        if room in self.rooms:
            raise ProtocolError("room_exists", f"Room {room} already exists")
        name = self._name_for_entry(session, name)
        now = self.clock()
        self.store.add_room(room, now, name)
        new = Room(room, now, name, seq=0)
        self._add_room(new)
        log.info("New room %s created", room)
        return self._enter(session, new)

    def _join(self, session: Session, room: str, name: str | None) -> dict[str, Any]:
        target = self._room(room)
        if session.name is not None and room in session.rooms and name in (None, session.name):
            return self._welcome(session, target)  # already a member: it becomes current
        self._name_for_entry(session, name)
        return self._enter(session, target)

    def _leave(self, session: Session, room: str) -> dict[str, Any]:
        target = self._membership(session, room)
        self._remove_member(target, session, "left")
        return {"room": room}

    def _who(self, session: Session, room: str) -> dict[str, Any]:
        return {"room": room, "members": list(self._room(room).members)}

    def _say(self, session: Session, room: str, text: str, me: bool | None) -> dict[str, Any]:
        target = self._membership(session, room)
        fields: dict[str, Any] = {"from": session.name, "text": text}
        if me:
            fields["me"] = True
        self.counters.room_messages += 1
        return {"room": room, "seq": self._room_event(target, "msg", **fields)}

    def _whisper(self, session: Session, room: str, to: str, text: str) -> dict[str, Any]:
        target = self._membership(session, room)
        if to == session.name:
            raise ProtocolError("self_message")
        recipient = target.members.get(to)
        if recipient is None:
            raise ProtocolError("not_in_room", f"{to} is not in {room}")
        self._send(recipient, {"ev": "whisper", "from": session.name, "room": room,
                               "text": text, "ts": self.clock()})
        return {"to": to, "room": room}

    def _msg(self, session: Session, to: list[str], text: str) -> dict[str, Any]:
        sender = self._require_name(session)
        names = list(dict.fromkeys(to))  # drop repeats, keep order
        if sender in names:
            raise ProtocolError("self_message")
        unknown = [n for n in names if n not in self.users]
        if unknown:
            raise ProtocolError("no_such_user", f"No such user: {', '.join(unknown)}")
        event = {"ev": "dm", "from": sender, "to": names, "text": text, "ts": self.clock()}
        for n in names:
            self._send(self.users[n], event)
        return {"to": names}

    def _broadcast(self, session: Session, text: str) -> dict[str, Any]:
        sender = self._require_name(session)
        event = {"ev": "broadcast", "from": sender, "text": text, "ts": self.clock()}
        recipients = [s for s in self.users.values() if s is not session]
        for s in recipients:
            self._send(s, event)
        return {"count": len(recipients)}

    def _history(self, session: Session, room: str, before: int | None, after: int | None,
                 limit: int | None) -> dict[str, Any]:
        target = self._membership(session, room)
        events = self.store.events(room, before=before, after=after,
                                   limit=limit or self.join_history)
        return {"room": room, "events": _bounded(events, keep_newest=after is None),
                "seq": target.seq, "inc": self.incarnation}

    # -- the rules behind the commands ----------------------------------------------------

    def _require_name(self, session: Session) -> str:
        if session.name is None:
            raise ProtocolError("not_logged_in", "Log in first: /login NAME")
        return session.name

    def _check_name(self, session: Session, name: str, password: str | None = None) -> None:
        """May this session take this nickname now?"""
        holder = self.users.get(name)
        if holder is not None and holder is not session:
            raise ProtocolError("name_taken", f"Nickname {name} is taken")
        if session.name != name:
            self._check_owner(session, name, password)
        if session.name not in (None, name) and session.rooms:
            raise ProtocolError("already_logged_in",
                                f"Already logged in as {session.name}; "
                                f"leave your rooms or /logout to change nickname")

    def _check_owner(self, session: Session, name: str, password: str | None) -> None:
        """A registered nickname goes only to its key, or to whoever knows its password."""
        account = self.store.account(name)
        if account is None:
            return
        if account.key is not None and account.key == session.identity:
            return
        if password is not None and account.pwhash is not None:
            self._spend_password_check(session)
            if hmac.compare_digest(_hash_password(password, account.salt or b""),
                                   account.pwhash):
                return
            raise ProtocolError("bad_password", f"Wrong password for {name}")
        raise ProtocolError("name_reserved",
                            f"Nickname {name} is registered: /identify {name} PASSWORD")

    def _spend_password_check(self, session: Session) -> None:
        """Password hashing is slow on purpose. Each session gets a few checks a minute, so
        guessing is slow and one guesser cannot use up everyone's; the broker as a whole
        does a bounded number a second, so many guessers cannot stall the loop."""
        now = self.clock()
        while self._password_checks and self._password_checks[0] < now - 1.0:
            self._password_checks.popleft()
        session.password_checks = [t for t in session.password_checks if t > now - 60.0]
        if len(session.password_checks) >= P.PASSWORD_CHECKS_PER_MINUTE:
            raise ProtocolError("rate_limited", "Too many password attempts; try again "
                                                "in a minute")
        if len(self._password_checks) >= P.PASSWORD_CHECKS_PER_SECOND:
            raise ProtocolError("rate_limited", "Too many password attempts; try again")
        session.password_checks.append(now)
        self._password_checks.append(now)

    def _within_rate(self, bucket: Bucket | None) -> bool:
        return self.rate <= 0 or bucket is None or bucket.take(self.clock(), self.rate,
                                                               self.burst)

    def _take_name(self, session: Session, name: str) -> None:
        if session.name == name:
            return
        if session.name is not None:
            del self.users[session.name]
        session.name = name
        self.users[name] = session
        log.info("%s logged in", name)

    def _name_for_entry(self, session: Session, name: str | None) -> str:
        """Check, then settle, the nickname a session enters a room with."""
        if len(session.rooms) >= P.ROOMS_PER_MEMBER_MAX:
            raise ProtocolError("too_many_rooms",
                                f"You are in {P.ROOMS_PER_MEMBER_MAX} rooms already")
        if name is None:
            name = session.name or self._guest_name()
        self._check_name(session, name)
        self._take_name(session, name)
        return name

    def _guest_name(self) -> str:
        while True:
            self._guests += 1
            name = f"Guest{self._guests}"
            if name not in self.users and self.store.account(name) is None:
                return name

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            raise ProtocolError("no_such_room", f"No such room: {name}")
        return room

    def _membership(self, session: Session, name: str) -> Room:
        room = self._room(name)
        if session.name is None or session.rooms.get(name) is not room:
            raise ProtocolError("not_a_member", f"You are not in {name}")
        return room

    def _enter(self, session: Session, room: Room) -> dict[str, Any]:
        assert session.name is not None
        room.members[session.name] = session
        session.rooms[room.name] = room
        self._room_event(room, "join", name=session.name)
        return self._welcome(session, room)

    def _welcome(self, session: Session, room: Room) -> dict[str, Any]:
        """What a member needs to follow a room: its topic, members and recent history."""
        return {"room": room.name, "name": session.name, "topic": room.topic, "seq": room.seq,
                "inc": self.incarnation, "members": list(room.members),
                "history": _bounded(self.store.events(room.name, limit=self.join_history),
                                    keep_newest=True)}

    def _remove_member(self, room: Room, session: Session, reason: str) -> None:
        assert session.name is not None
        del room.members[session.name]
        del session.rooms[room.name]
        # Announced on the old topic, so the remaining members see it without a gap...
        self._room_event(room, "leave", name=session.name, reason=reason)
        # ...then the topic is replaced: what is published next never reaches the leaver.
        self._rotate_topic(room)
        for member in room.members.values():
            self._send(member, {"ev": "rekey", "room": room.name, "topic": room.topic,
                                "seq": room.seq})

    def _leave_all(self, session: Session, reason: str) -> None:
        for room in list(session.rooms.values()):
            self._remove_member(room, session, reason)

    def _end_session(self, session: Session, reason: str) -> None:
        self._leave_all(session, reason)
        if session.name is not None:
            del self.users[session.name]
        del self.sessions[session.peer]
        self._spent[session.peer] = session.bucket
        if len(self._spent) > P.ANSWERS_REMEMBERED:
            self._spent.popitem(last=False)
        log.info("Client %s ended: %s (%d online)", session.name or "(anonymous)", reason,
                 len(self.sessions))

    def _room_event(self, room: Room, ev: str, **fields: Any) -> int:
        room.seq += 1
        event = {"ev": ev, "room": room.name, "seq": room.seq, "ts": self.clock(),
                 "inc": self.incarnation, **fields}
        # A message remembers the request that made it, to recognise a retry after a crash.
        origin = _origin(self._request_key) if ev == "msg" and self._request_key else None
        self.store.append(room.name, room.seq, event, origin)
        self._out.append(Publish(room.topic, event))
        return room.seq

    def _add_room(self, room: Room) -> None:
        self.rooms[room.name] = room
        self._rotate_topic(room)

    def _remove_room(self, room: Room) -> None:
        del self.rooms[room.name]
        del self.topics[room.topic]

    def _rotate_topic(self, room: Room) -> None:
        self.topics.pop(room.topic, None)
        room.topic = room.name.encode() + b"\0" + self._token().encode()
        self.topics[room.topic] = room

    def _send(self, session: Session, body: dict[str, Any]) -> None:
        self._out.append(Send(session.peer, body))


def _origin(key: tuple[str, int]) -> str:
    """How the store names the request that made a message: "client id:request id"."""
    return f"{key[0]}:{key[1]}"


def _bounded(events: list[dict[str, Any]], *, keep_newest: bool) -> list[dict[str, Any]]:
    """A page of history within HISTORY_TEXT_MAX characters of text (one event at least):
    a client that asks and never reads cannot make the broker queue megabytes a reply.
    Clients page on by seq, so a shorter page loses nothing."""
    budget, kept = P.HISTORY_TEXT_MAX, []
    for event in reversed(events) if keep_newest else events:
        budget -= P.text_weight(event)
        if kept and budget < 0:
            break
        kept.append(event)
    return kept[::-1] if keep_newest else kept


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << 13, r=8, p=1)
