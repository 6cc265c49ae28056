"""Fuzzing, bounded so it runs in CI: the schema decoder, the chat core, a live broker.

* The decoder, fed arbitrary bytes and arbitrary msgpack structures (including maps that
  look like real requests), never raises anything but ProtocolError, and what it accepts
  is exactly what the schema allows.
* The chat core, driven by several peers sending random requests (valid and not) in
  random order, with time passing, peers vanishing and the operator killing and kicking,
  keeps its invariants after every step; above all, nobody who is not a member of a room
  has ever been told that room's live topic.
* A real broker, sent a few hundred random frames on a bare CURVE socket, answers every
  one and goes on serving a normal client.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import string
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import broker.chat
from broker.chat import Chat, Publish, Send
from broker.store import SqliteStore
from schema import ProtocolError, Request, decode, decode_admin, messages, pack, parse, unpack
from schema import protocol as P
from schema.codec import REQUEST_ID_MAX, request_id
from schema.keys import curve_client, load
from schema.names import fold

from .harness import raw_socket

ALL_KINDS = {**P.CLIENT_REQUESTS, **P.ADMIN_REQUESTS}
FIELD_NAMES = sorted({f.name for kind in ALL_KINDS.values() for f in kind.fields})


# === (a) The schema decoder ==============================================================

INT64 = st.integers(-(1 << 63), (1 << 64) - 1)  # what msgpack can carry
scalars = st.one_of(
    st.none(), st.booleans(), INT64, st.floats(allow_nan=True), st.text(max_size=40),
    st.binary(max_size=40),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.builds(msgpack.Timestamp, st.integers(0, (1 << 32) - 1), st.integers(0, 999_999_999)),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8) | st.binary(max_size=8), inner, max_size=4),
    max_leaves=16,
)


def plausible(field: P.Field) -> st.SearchStrategy[Any]:
    """Values of the field's wire type, often valid, often just outside the rule."""
    if field.kind is str:
        return st.sampled_from(["alice", "lounge", "password1", "", " ", "a,b", "/x",
                                "\x1b[2J", "n" * 20, "n" * 21, "r" * 33, "é" * 8]) | st.text()
    if field.kind is int:
        return st.sampled_from([0, 1, -1, 200, 201, (1 << 63) - 1, 1 << 63]) | INT64
    if field.kind is bool:
        return st.booleans()
    if field.kind is list:
        return st.lists(st.sampled_from(["alice", "bob", "", "x" * 21]) | st.text(max_size=5)
                        | INT64, max_size=22)
    return values


@st.composite
def request_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """A map shaped like a request: a real kind (usually), an id, its fields (valid, of
    the wrong type, or missing) and extra fields."""
    cmd = draw(st.sampled_from(sorted(ALL_KINDS)) | st.text(max_size=10) | values)
    message: dict[Any, Any] = {}
    if draw(st.integers(0, 9)):
        message["cmd"] = cmd
    if draw(st.integers(0, 9)):
        message["id"] = draw(st.integers(0, 1000) | INT64 | values)
    kind = ALL_KINDS.get(cmd) if isinstance(cmd, str) else None
    for field in kind.fields if kind else ():
        choice = draw(st.integers(0, 5))
        if choice < 4:
            message[field.name] = draw(plausible(field))
        elif choice == 4:
            message[field.name] = draw(values)
    if draw(st.booleans()):
        message["retry"] = draw(st.booleans() | values)
    extra = draw(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), values,
                                 max_size=3))
    return {**extra, **message}


def check_accepted(req: Request, kinds: dict[str, P.Kind]) -> None:
    """What the decoder lets through is exactly what the schema allows."""
    assert 0 <= req.id <= REQUEST_ID_MAX and type(req.id) is int
    assert req.cmd in kinds
    kind = kinds[req.cmd]
    assert set(req.args) == {f.name for f in kind.fields}
    for field in kind.fields:
        value = req.args[field.name]
        if value is None:
            assert not field.required
            continue
        assert type(value) is field.kind
        assert field.rule is None or field.rule(value)
    assert type(req.retry) is bool


def decodes_or_refuses(frame: bytes) -> None:
    for decoder, kinds in ((decode, P.CLIENT_REQUESTS), (decode_admin, P.ADMIN_REQUESTS)):
        try:
            req = decoder(frame)
        except ProtocolError as err:
            assert err.code in P.ERRORS and err.text
        else:
            check_accepted(req, kinds)


FUZZ = settings(deadline=None, max_examples=400,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.binary(max_size=600))
@example(b"\x91" * 5000 + b"\xd6\xff\0\0\0\0")  # nested past msgpack's stack
@example(b"\x81\xa2id" + b"\x91" * 990 + b"\xd6\xff\0\0\0\0")  # a deep timestamp
@example(b"\xdd\xff\xff\xff\xff")  # an array declaring 4 G elements
@example(b"\xc6\xff\xff\xff\xff")  # a bin declaring 4 GiB
def test_decoding_arbitrary_bytes_only_ever_refuses(frame):
    decodes_or_refuses(frame)


@FUZZ
@given(st.binary(max_size=60), st.binary(max_size=60))
def test_decoding_bytes_spliced_into_a_real_request_only_ever_refuses(head, tail):
    decodes_or_refuses(head + pack({"id": 1, "cmd": "say", "room": "r", "text": "t"}) + tail)


@FUZZ
@given(values)
def test_decoding_arbitrary_msgpack_values_only_ever_refuses(value):
    decodes_or_refuses(pack(value))


@FUZZ
@given(request_maps())
def test_decoding_request_shaped_maps_only_ever_refuses_or_accepts_what_is_valid(message):
    decodes_or_refuses(pack(message))


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, P.Kind]]:
    kinds = draw(st.sampled_from([P.CLIENT_REQUESTS, P.ADMIN_REQUESTS]))
    kind = kinds[draw(st.sampled_from(sorted(kinds)))]
    message: dict[str, Any] = {"id": draw(st.integers(0, REQUEST_ID_MAX)), "cmd": kind.cmd}
    for field in kind.fields:
        if field.required or draw(st.booleans()):
            message[field.name] = draw(plausible(field).filter(
                lambda v, f=field: type(v) is f.kind and (f.rule is None or f.rule(v))))
    return message, kinds


@FUZZ
@given(valid_requests())
def test_every_request_valid_by_the_schema_decodes_to_itself(case):
    message, kinds = case
    req = (decode if kinds is P.CLIENT_REQUESTS else decode_admin)(pack(message))
    assert (req.id, req.cmd) == (message["id"], message["cmd"])
    assert {k: v for k, v in req.args.items() if v is not None} == {
        k: v for k, v in message.items() if k not in ("id", "cmd")}


# === (b) The chat core, stateful =========================================================

PEERS = [b"peer-0", b"peer-1", b"peer-2", b"peer-3"]
KEYS = [None, "key-a", "key-b"]
NAMES = ["alice", "bob", "carol", "dave", "Guest1", "n" * 21, "bad name"]
ROOMS = ["r1", "r2", "r3", "bad room", "r" * 33]
GOOD_NAMES, GOOD_ROOMS = NAMES[:5], ROOMS[:3]
PASSWORDS = ["password1", "password2", "short"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def chat_request(cmd: str) -> st.SearchStrategy[dict[str, Any]]:
    """A request of this kind with fields from small pools, so peers collide on names
    and rooms; some fields invalid, now and then one of the wrong type."""
    name = st.sampled_from(GOOD_NAMES) | st.sampled_from(NAMES)
    room = st.sampled_from(GOOD_ROOMS) | st.sampled_from(ROOMS)
    text = st.sampled_from(["hi", "", "x" * 30])
    fields = {
        "hello": {"version": st.sampled_from([P.PROTOCOL_VERSION] * 3 + [P.PROTOCOL_VERSION + 1]),
                  "client": maybe(st.sampled_from(["c1", "c2", ""]))},
        "login": {"name": name, "password": maybe(st.sampled_from(PASSWORDS))},
        "register": {"password": maybe(st.sampled_from(PASSWORDS))},
        "create": {"room": room, "name": maybe(name)},
        "join": {"room": room, "name": maybe(name)},
        "leave": {"room": room}, "who": {"room": room},
        "say": {"room": room, "text": text, "me": maybe(st.booleans())},
        "whisper": {"room": room, "to": name, "text": text},
        "msg": {"to": st.lists(name, min_size=0, max_size=3), "text": text},
        "broadcast": {"text": text},
        "history": {"room": room, "before": maybe(st.integers(-1, 8)),
                    "after": maybe(st.integers(-1, 8)),
                    "limit": maybe(st.sampled_from([1, 5, 200, 201, 0]))},
    }.get(cmd, {})
    return st.fixed_dictionaries({"id": st.integers(0, 50), "cmd": st.just(cmd),
                                  **fields, "retry": maybe(st.booleans())})


# Room traffic more often than the rest, so rooms fill up and empty again.
any_chat_request = st.sampled_from(
    sorted(P.CLIENT_REQUESTS) + ["join", "join", "leave", "leave", "say", "login", "logout"]
).flatmap(chat_request)
junk_request = request_maps() | values


class ChatMachine(RuleBasedStateMachine):
    """Several peers and the operator against one Chat; after every step the chat's
    structures agree with each other and with the store, and the capability holds."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = SqliteStore(":memory:")
        counter = itertools.count(1)
        self.chat = Chat(self.store, pub_address="tcp://127.0.0.1:1", rate=0,
                         clock=self.clock, token=lambda: f"t{next(counter)}")
        self.keys = {peer: KEYS[i % len(KEYS)] for i, peer in enumerate(PEERS)}
        self.last_seq: dict[str, int] = {}  # room -> seq of its last published event
        self.told: dict[bytes, set[bytes]] = {}  # topic -> peers ever told it
        self.proved: set[tuple[Any, str]] = set()  # (session, name): knew its password

    def teardown(self) -> None:
        self.store.close()

    # -- one step, checked ---------------------------------------------------------------

    def snapshot(self) -> Any:
        chat, db = self.chat, self.store._db
        return (
            {p: (s.client_id, s.identity, s.name, tuple(s.rooms))
             for p, s in chat.sessions.items()},
            {n: s.peer for n, s in chat.users.items()},
            {n: (r.seq, r.topic, tuple(r.members), r.creator) for n, r in chat.rooms.items()},
            {t: r.name for t, r in chat.topics.items()},
            db.execute("SELECT * FROM accounts ORDER BY name").fetchall(),
            db.execute("SELECT room, COUNT(*), MAX(seq) FROM events GROUP BY room"
                       " ORDER BY room").fetchall(),
            db.execute("SELECT name FROM rooms ORDER BY name").fetchall(),
        )

    def step(self, action: Any, requester: bytes | None = None, rid: list | None = None
             ) -> list:
        before = self.snapshot()
        known_before = set(self.chat.sessions)
        out = action()
        self.store.commit()
        known = known_before | set(self.chat.sessions) | {requester}
        for item in out:
            if isinstance(item, Send):
                assert item.peer in known, f"a Send to a peer never known: {item}"
        if requester is not None:
            replies = [i for i in out if isinstance(i, Send) and "re" in i.body]
            assert len(replies) == 1, f"not exactly one reply: {out}"
            reply = replies[0]
            assert reply.peer == requester and out[0] is reply
            assert reply.body["re"] == rid[0]
            if not reply.body["ok"]:
                assert reply.body["code"] in P.ERRORS
                assert self.snapshot() == before, f"refused {reply.body} but changed state"
                assert len(out) == 1, "a refused request delivered something"
        self.check_deliveries(out)
        return out

    def check_deliveries(self, out: list) -> None:
        chat = self.chat
        for item in out:
            body = item.body
            if isinstance(item, Publish):
                room = body["room"]
                assert item.topic.startswith(room.encode() + b"\0")
                if body["ev"] == P.ROOM_TICK:
                    assert chat.rooms[room].topic == item.topic
                    assert body["seq"] == chat.rooms[room].seq
                    continue
                assert body["ev"] in P.ROOM_EVENTS
                # seq per room strictly increasing, one by one, as stored
                assert body["seq"] == self.last_seq.get(room, 0) + 1, (body, self.last_seq)
                self.last_seq[room] = body["seq"]
                stored = self.store.events(room, after=body["seq"] - 1, limit=1)
                assert stored == [body]
            elif "topic" in body:  # a join/create reply or a rekey: the capability
                self.told.setdefault(body["topic"], set()).add(item.peer)

    # -- rules ---------------------------------------------------------------------------

    def from_peer(self, peer: bytes, message: Any) -> None:
        """As the broker loop does it: decode, validate, hand in; any refusal on the way
        is an error to the sender."""
        frame = pack(message)
        rids: list[int | None] = [None]

        def act() -> list:
            try:
                decoded = unpack(frame)
                rids[0] = request_id(decoded)
                return self.chat.handle(peer, parse(decoded), self.keys[peer])
            except ProtocolError as err:
                return self.chat.refuse(peer, rids[0], err)
        out = self.step(act, requester=peer, rid=rids)
        session = self.chat.sessions.get(peer)
        if out[0].body["ok"] and session is not None and isinstance(message, dict):
            if message.get("cmd") == "register" or (
                    message.get("cmd") == "login" and message.get("password") is not None):
                self.proved.add((session, fold(session.name)))

    @rule(peer=st.sampled_from(PEERS), message=any_chat_request)
    def request(self, peer: bytes, message: dict[str, Any]) -> None:
        self.from_peer(peer, {k: v for k, v in message.items() if v is not None})

    @rule(peer=st.sampled_from(PEERS), message=junk_request)
    def junk(self, peer: bytes, message: Any) -> None:
        self.from_peer(peer, message)

    @rule(peer=st.sampled_from(PEERS))
    def hello(self, peer: bytes) -> None:
        self.from_peer(peer, {"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION,
                              "client": peer.hex()})

    @initialize()
    def everyone_says_hello(self) -> None:
        for peer in PEERS:
            self.hello(peer)

    @rule(peer=st.sampled_from(PEERS), room=st.sampled_from(GOOD_ROOMS),
          name=maybe(st.sampled_from(GOOD_NAMES)))
    def enter(self, peer: bytes, room: str, name: str | None) -> None:
        cmd = "join" if room in self.chat.rooms else "create"
        self.from_peer(peer, {"id": 2, "cmd": cmd, "room": room,
                              **({"name": name} if name else {})})

    @rule(peer=st.sampled_from(PEERS), room=st.sampled_from(GOOD_ROOMS))
    def enter_as_before(self, peer: bytes, room: str) -> None:
        self.enter(peer, room, None)

    @rule(peer=st.sampled_from(PEERS), name=st.sampled_from(GOOD_NAMES),
          password=maybe(st.sampled_from(PASSWORDS[:2])))
    def login(self, peer: bytes, name: str, password: str | None) -> None:
        self.from_peer(peer, {"id": 5, "cmd": "login", "name": name,
                              **({"password": password} if password else {})})

    @rule(peer=st.sampled_from(PEERS), password=maybe(st.sampled_from(PASSWORDS[:2])))
    def register(self, peer: bytes, password: str | None) -> None:
        self.from_peer(peer, {"id": 6, "cmd": "register",
                              **({"password": password} if password else {})})

    @rule(peer=st.sampled_from(PEERS), cmd=st.sampled_from(["logout", "bye"]))
    def give_up_name(self, peer: bytes, cmd: str) -> None:
        self.from_peer(peer, {"id": 7, "cmd": cmd})

    @rule(peer=st.sampled_from(PEERS), room=st.sampled_from(GOOD_ROOMS))
    def leave(self, peer: bytes, room: str) -> None:
        self.from_peer(peer, {"id": 4, "cmd": "leave", "room": room})

    @rule(peer=st.sampled_from(PEERS), room=st.sampled_from(GOOD_ROOMS))
    def say(self, peer: bytes, room: str) -> None:
        self.from_peer(peer, {"id": 3, "cmd": "say", "room": room, "text": "hello"})

    @rule(peer=st.sampled_from(PEERS), key=st.sampled_from(KEYS))
    def reconnect_with_key(self, peer: bytes, key: str | None) -> None:
        self.keys[peer] = key  # the same routing id, another CURVE key from now on

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.0, 2.0, 5.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def expire(self) -> None:
        self.step(self.chat.expire)

    @rule()
    def ticks(self) -> None:
        self.step(self.chat.ticks)

    @rule(peer=st.sampled_from(PEERS))
    def gone(self, peer: bytes) -> None:
        self.step(lambda: self.chat.gone(peer, "unreachable"))

    @rule(cmd=st.sampled_from(sorted(P.ADMIN_REQUESTS)), room=st.sampled_from(ROOMS),
          name=st.sampled_from(GOOD_NAMES), reason=maybe(st.sampled_from(["spam", "\x1b[2J",
                                                                      "r" * 201])))
    def operator(self, cmd: str, room: str, name: str, reason: str | None) -> None:
        self.admin(cmd, room, name, reason)

    @rule(room=st.sampled_from(GOOD_ROOMS))
    def kill(self, room: str) -> None:
        self.admin("kill", room, "alice", None)

    @rule(name=st.sampled_from(GOOD_NAMES))
    def kick(self, name: str) -> None:
        self.admin("kick", "r1", name, "be nice")

    def admin(self, cmd: str, room: str, name: str, reason: str | None) -> None:
        message = {"id": 9, "cmd": cmd, "room": room, "name": name}
        if reason is not None:
            message["reason"] = reason
        try:
            req = parse(message, P.ADMIN_REQUESTS)
        except ProtocolError:
            return  # refused before the chat sees it, as the broker loop does
        replies: list = []

        def act() -> list:
            reply, out = self.chat.admin(req)
            replies.append(reply)
            return out
        before = self.snapshot()
        self.step(act)
        if not replies[0]["ok"]:
            assert self.snapshot() == before
        elif cmd == "kill":
            self.last_seq.pop(room, None)  # a room made anew starts again at 1

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def users_and_sessions_agree(self) -> None:
        chat = self.chat
        for key, session in chat.users.items():  # keyed by the fold of the name
            assert chat.sessions.get(session.peer) is session and fold(session.name) == key
        assert sorted(s.name for s in chat.users.values()) == list(chat._user_names)
        for peer, session in chat.sessions.items():
            assert session.peer == peer
            if session.name is not None:
                assert chat.users[fold(session.name)] is session
            else:
                assert not session.rooms

    @invariant()
    def registered_names_are_held_only_by_their_owners(self) -> None:
        for key, session in self.chat.users.items():
            account = self.store.account(key)
            if account is not None:
                assert ((account.key is not None and account.key == session.identity)
                        or (session, key) in self.proved), f"{key} held by a stranger"

    @invariant()
    def memberships_agree_both_ways(self) -> None:
        chat = self.chat
        for session in chat.sessions.values():
            assert len(session.rooms) <= P.ROOMS_PER_MEMBER_MAX
            for key, room in session.rooms.items():
                assert chat.rooms.get(key) is room
                assert room.members.get(fold(session.name)) is session
        for key, room in chat.rooms.items():
            assert fold(room.name) == key
            assert sorted(m.name for m in room.members.values()) == list(room.names)
            for nick, member in room.members.items():
                assert chat.users.get(nick) is member
                assert member.rooms.get(key) is room

    @invariant()
    def topics_map_rooms_one_to_one(self) -> None:
        chat = self.chat
        assert len(chat.topics) == len(chat.rooms)
        for topic, room in chat.topics.items():
            assert chat.rooms.get(fold(room.name)) is room and room.topic == topic
            assert chat.grants(topic)
        for room in chat.rooms.values():
            assert chat.topics.get(room.topic) is room

    @invariant()
    def only_members_were_ever_told_a_live_topic(self) -> None:
        for topic in self.told:
            assert self.chat.grants(topic) == (topic in self.chat.topics)
        for topic, room in self.chat.topics.items():
            members = {s.peer for s in room.members.values()}
            assert self.told.get(topic, set()) <= members, (
                f"{room.name}: live topic told to non-members "
                f"{self.told.get(topic, set()) - members}")

    @invariant()
    def seq_matches_the_store(self) -> None:
        db = self.store._db
        for name, room in self.chat.rooms.items():
            count, low, high = db.execute(
                "SELECT COUNT(*), MIN(seq), MAX(seq) FROM events WHERE room = ?",
                (name,)).fetchone()
            assert (count, high or 0) == (room.seq, room.seq) and low in (None, 1)
        stored = {n for (n,) in db.execute("SELECT name FROM rooms")}
        assert stored == set(self.chat.rooms)


def test_a_refused_hello_under_another_key_leaves_the_old_session_alone():
    store = SqliteStore(":memory:")
    chat = Chat(store, rate=0, clock=Clock())
    chat.handle(b"p", parse({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION}), "key-a")
    chat.handle(b"p", parse({"id": 2, "cmd": "create", "room": "r1", "name": "alice"}),
                "key-a")
    out = chat.handle(b"p", parse({"id": 3, "cmd": "hello", "version": P.PROTOCOL_VERSION + 1}),
                      "key-b")
    assert [d.body.get("code") for d in out if isinstance(d, Send)] == ["version"]
    # Refused, so nothing changed: alice is still there, in her room, nobody told.
    assert chat.users["alice"].rooms == {"r1": chat.rooms["r1"]}
    assert len(out) == 1, out
    store.close()


def _fast_hash(password: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + password.encode()).digest()


def test_the_chat_keeps_its_invariants_whatever_peers_send(monkeypatch):
    monkeypatch.setattr(broker.chat, "_hash_password", _fast_hash)  # scrypt is slow on purpose
    run_state_machine_as_test(ChatMachine, settings=settings(
        max_examples=150, stateful_step_count=60, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much]))


# === (c) A live broker ===================================================================


def random_frames(rnd: random.Random, count: int) -> list[list[bytes]]:
    """Messages a stranger might send: raw bytes, msgpack of anything, request-shaped
    maps with random fields, and now and then more than one frame."""
    def text(n: int) -> str:
        return "".join(rnd.choice(string.printable + "é\x1b\x00") for _ in range(n))

    def value(depth: int = 0) -> Any:
        makers = [
            lambda: None, lambda: rnd.random() < 0.5,
            lambda: rnd.randrange(-(1 << 63), 1 << 63), lambda: rnd.random() * 1e9,
            lambda: text(rnd.randrange(30)), lambda: rnd.randbytes(rnd.randrange(30)),
            lambda: [value(depth + 1) for _ in range(rnd.randrange(4))],
            lambda: {text(5): value(depth + 1) for _ in range(rnd.randrange(4))},
            lambda: {"cmd": rnd.choice(sorted(ALL_KINDS)), "id": rnd.randrange(1 << 20),
                     **{rnd.choice(FIELD_NAMES): value(depth + 1)
                        for _ in range(rnd.randrange(5))}},
        ]
        return rnd.choice(makers if depth < 2 else makers[:6])()

    frames = []
    for _ in range(count):
        roll = rnd.random()
        if roll < 0.25:
            message = [rnd.randbytes(rnd.randrange(200))]
        elif roll < 0.85:
            message = [pack(value())]
        elif roll < 0.95:
            kind = rnd.choice(sorted(P.CLIENT_REQUESTS))
            fields = {f.name: value(1) if rnd.random() < 0.5 else text(rnd.randrange(40))
                      for f in P.CLIENT_REQUESTS[kind].fields if rnd.random() < 0.8}
            message = [pack({"id": rnd.randrange(1000), "cmd": kind, **fields})]
        else:
            message = [pack(value()) for _ in range(rnd.randrange(2, 4))]
        frames.append(message)
    return frames


@pytest.mark.timeout(30)
def test_a_live_broker_answers_random_frames_and_goes_on_serving(broker, clients):
    ctx = zmq.Context()
    try:
        rnd = random.Random(20240611)
        stranger = raw_socket(ctx, zmq.DEALER, broker)
        # Some of what follows hits a session.
        stranger.send(pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION}))
        sent = 1
        for message in random_frames(rnd, 300):
            stranger.send_multipart(message)
            sent += 1
        # Every message is answered, each exactly once: nothing crashed or stalled the loop.
        answered = 0
        deadline = time.monotonic() + 15
        while answered < sent:
            left = deadline - time.monotonic()
            assert left > 0 and stranger.poll(left * 1000), f"{answered}/{sent} answered"
            answered += sum("re" in reply for reply in messages(stranger.recv()))
        assert not stranger.poll(300) or all("re" not in m for m in messages(stranger.recv()))
        # Junk on the publisher and, with the operator's key, on the control socket too.
        junk_sub = raw_socket(ctx, zmq.XSUB, broker, broker.pub)
        for message in random_frames(rnd, 50):
            junk_sub.send_multipart(message)
        operator = ctx.socket(zmq.DEALER)
        operator.setsockopt(zmq.LINGER, 0)
        keys_dir = Path(broker.keys_dir)
        curve_client(operator, load(keys_dir / "broker.key").public,
                     load(keys_dir / "admin.key_secret"))
        operator.connect(broker.control)
        for message in random_frames(rnd, 50):
            operator.send_multipart([b"", *message])
        operator.send_multipart([b"", pack({"id": 77, "cmd": "stats"})])
        while True:  # REQ-shaped messages are answered; the rest are dropped
            assert operator.poll(10_000), "the control socket stopped answering"
            reply = unpack(operator.recv_multipart()[-1])
            if reply.get("re") == 77:
                break
        assert reply["ok"] and reply["messages_in"] >= sent
        assert broker.proc.poll() is None
        # And a normal client is served.
        alice, bob = clients(), clients()
        alice.send("login alice", "create after_fuzz")
        alice.event("reply", cmd="create")
        bob.send("join after_fuzz bob", "still here")
        alice.event("msg", **{"from": "bob", "text": "still here"})
    finally:
        ctx.destroy(linger=0)
