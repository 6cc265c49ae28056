"""The chat core, driven directly: requests in, deliveries out, no sockets.

Every request goes through schema.parse, so the tests see exactly what the broker's
handlers see. Time is a clock the test advances, and topic tokens are a counter, so every
run is the same.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest

from broker.chat import Chat, Publish, Send
from broker.store import SqliteStore, StoreError
from schema import ProtocolError, parse, request
from schema import protocol as P

A, B, C, D, E = b"peer-a", b"peer-b", b"peer-c", b"peer-d", b"peer-e"
PUB = "tcp://127.0.0.1:5556"


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tokens(prefix: str = "t") -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


_ids = itertools.count(1)


def req(cmd: str, **fields: Any):
    """A request as the broker loop would hand it in: built, then validated."""
    return parse(request(next(_ids), cmd, **fields))


def admin_req(cmd: str, **fields: Any):
    return parse(request(next(_ids), cmd, **fields), P.ADMIN_REQUESTS)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store():
    s = SqliteStore(":memory:")
    yield s
    s.close()


# A per-client request rate, where the broker has one, is an abuse control and not what
# these tests are about: it is switched off so that a test may send a burst at one instant.
UNLIMITED = {"rate": 0} if "rate" in inspect.signature(Chat).parameters else {}


@pytest.fixture
def make_chat(store, clock) -> Callable[..., Chat]:
    def make(**options: Any) -> Chat:
        options = {**UNLIMITED, **options}
        options.setdefault("pub_address", PUB)
        options.setdefault("clock", clock)
        options.setdefault("token", tokens())
        return Chat(options.pop("store", store), **options)
    return make


@pytest.fixture
def chat(make_chat) -> Chat:
    return make_chat()


# --- Helpers: one request, its reply, the rest of what it caused -----------------------------


def call(chat: Chat, peer: bytes, cmd: str, **fields: Any) -> tuple[dict[str, Any], list]:
    out = chat.handle(peer, req(cmd, **fields))
    first = out[0]
    assert isinstance(first, Send) and first.peer == peer, out
    return first.body, out[1:]


def ok(chat: Chat, peer: bytes, cmd: str, **fields: Any) -> dict[str, Any]:
    reply, _ = call(chat, peer, cmd, **fields)
    assert reply["ok"], reply
    return reply


def refused(chat: Chat, peer: bytes, cmd: str, **fields: Any) -> dict[str, Any]:
    reply, rest = call(chat, peer, cmd, **fields)
    assert reply["ok"] is False, reply
    assert rest == [], "a refused request delivers nothing but its error"
    return reply


def connect(chat: Chat, peer: bytes, name: str | None = None) -> None:
    ok(chat, peer, "hello", version=P.PROTOCOL_VERSION)
    if name is not None:
        ok(chat, peer, "login", name=name)


def sent_to(out: list, peer: bytes) -> list[dict[str, Any]]:
    return [d.body for d in out if isinstance(d, Send) and d.peer == peer]


def published(out: list) -> list[Publish]:
    return [d for d in out if isinstance(d, Publish)]


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


@pytest.fixture
def lounge(chat) -> Chat:
    """alice (A) created lounge, bob (B) and carol (C) joined it."""
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    connect(chat, C, "carol")
    ok(chat, A, "create", room="lounge")
    ok(chat, B, "join", room="lounge")
    ok(chat, C, "join", room="lounge")
    return chat


# --- hello -----------------------------------------------------------------------------------


def test_hello_opens_a_session_and_tells_the_publisher_address_and_limits(chat):
    reply = ok(chat, A, "hello", version=P.PROTOCOL_VERSION, client="abc")
    assert reply["pub"] == PUB
    assert reply["inc"] == chat.incarnation
    assert reply["limits"]["nick"] == P.NICK_MAX
    assert reply["limits"]["text"] == P.TEXT_MAX
    assert chat.sessions[A].client_id == "abc"
    assert chat.sessions[A].name is None


def test_hello_with_another_protocol_version_is_refused_without_a_session(chat):
    reply = refused(chat, A, "hello", version=P.PROTOCOL_VERSION + 1)
    assert reply["code"] == "version"
    assert A not in chat.sessions


def test_hello_beyond_max_clients_is_refused_as_server_full(make_chat):
    chat = make_chat(max_clients=2)
    connect(chat, A)
    connect(chat, B)
    reply = refused(chat, C, "hello", version=P.PROTOCOL_VERSION)
    assert reply["code"] == "server_full"
    assert "Server full" in reply["error"]
    assert set(chat.sessions) == {A, B}


def test_a_freed_place_can_be_taken_under_max_clients(make_chat):
    chat = make_chat(max_clients=1)
    connect(chat, A)
    chat.gone(A)
    connect(chat, B)
    assert set(chat.sessions) == {B}


def test_repeated_hello_keeps_the_session_and_its_name_even_when_full(make_chat):
    chat = make_chat(max_clients=1)
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    session = chat.sessions[A]
    ok(chat, A, "hello", version=P.PROTOCOL_VERSION)
    assert chat.sessions[A] is session
    assert session.name == "alice"
    assert list(session.rooms) == ["lounge"]


@pytest.mark.parametrize(("cmd", "fields"), [
    ("ping", {}), ("login", {"name": "alice"}), ("users", {}), ("rooms", {}),
    ("create", {"room": "r"}), ("join", {"room": "r"}), ("say", {"room": "r", "text": "hi"}),
    ("msg", {"to": ["bob"], "text": "hi"}), ("bye", {}),
])
def test_requests_before_hello_are_refused_with_no_session(chat, cmd, fields):
    assert refused(chat, A, cmd, **fields)["code"] == "no_session"
    assert chat.sessions == {}
    assert chat.users == {}
    assert chat.rooms == {}


def test_a_repeated_hello_is_a_sign_of_life(chat, clock):
    connect(chat, A)
    clock.advance(P.PEER_TIMEOUT - 1)
    ok(chat, A, "hello", version=P.PROTOCOL_VERSION)
    clock.advance(2)  # silent 2 s since the hello, 5 s since the first one
    chat.expire()
    assert A in chat.sessions


def test_a_refused_request_is_still_a_sign_of_life(chat, clock):
    connect(chat, A)
    clock.advance(P.PEER_TIMEOUT - 1)
    refused(chat, A, "say", room="nowhere", text="hi")
    clock.advance(2)
    chat.expire()
    assert A in chat.sessions


def test_ping_is_answered_with_an_empty_ok(chat):
    connect(chat, A)
    reply, rest = call(chat, A, "ping")
    assert reply == {"re": reply["re"], "ok": True}
    assert rest == []


def test_every_reply_echoes_the_request_id(chat):
    r = req("hello", version=P.PROTOCOL_VERSION)
    assert chat.handle(A, r)[0].body["re"] == r.id


# --- login / logout --------------------------------------------------------------------------


def test_login_takes_the_nickname(chat):
    connect(chat, A)
    assert ok(chat, A, "login", name="alice")["name"] == "alice"
    assert ok(chat, A, "users")["users"] == ["alice"]
    assert chat.users["alice"] is chat.sessions[A]


def test_login_with_a_taken_name_is_refused_naming_it(chat):
    connect(chat, A, "alice")
    connect(chat, B)
    reply = refused(chat, B, "login", name="alice")
    assert reply["code"] == "name_taken"
    assert "alice" in reply["error"]
    assert chat.sessions[B].name is None


def test_names_are_one_whatever_their_case_or_look_alike_letters(chat):
    connect(chat, A, "bob")
    connect(chat, B)
    for alike in ("Bob", "BOB", "ｂｏｂ"):
        assert refused(chat, B, "login", name=alike)["code"] == "name_taken", alike
    ok(chat, A, "create", room="Lounge")
    assert refused(chat, B, "create", room="lounge")["code"] == "room_exists"
    ok(chat, B, "login", name="carol")
    reply = ok(chat, B, "join", room="LOUNGE")
    assert reply["room"] == "Lounge"  # shown as its creator typed it
    assert ok(chat, A, "users")["users"] == ["bob", "carol"]
    assert ok(chat, B, "msg", to=["BOB"], text="hi")["to"] == ["bob"]


def test_a_registered_name_is_protected_in_every_spelling(chat):
    connect(chat, A, "alice")
    ok(chat, A, "register", password="correct horse")
    ok(chat, A, "logout")
    connect(chat, B)
    for alike in ("Alice", "ALICE", "\u0430\u04cf\u0456\u0441\u0435"):  # the last: Cyrillic
        assert refused(chat, B, "login", name=alike)["code"] == "name_reserved", alike


def test_login_again_with_ones_own_name_is_ok_even_in_a_room(chat):
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    assert ok(chat, A, "login", name="alice")["name"] == "alice"


def test_rename_while_in_no_rooms_frees_the_old_name(chat):
    connect(chat, A, "alice")
    ok(chat, A, "login", name="alicia")
    assert set(chat.users) == {"alicia"}
    connect(chat, B, "alice")
    assert chat.users["alice"] is chat.sessions[B]


def test_rename_while_in_rooms_is_told_in_each_room_in_sequence(chat):
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    ok(chat, A, "create", room="lounge")
    ok(chat, A, "create", room="den")
    ok(chat, B, "join", room="lounge")
    seq = chat.rooms["lounge"].seq
    reply, rest = call(chat, A, "login", name="alicia")
    assert reply["ok"] and reply["name"] == "alicia"
    events = {d.body["room"]: d.body for d in rest if isinstance(d, Publish)}
    assert events["lounge"] == {**events["lounge"], "ev": "nick", "name": "alicia",
                                "old": "alice", "seq": seq + 1}
    assert events["den"]["ev"] == "nick"
    assert set(chat.users) == {"alicia", "bob"}
    assert set(chat.rooms["lounge"].members) == {"alicia", "bob"}
    assert ok(chat, B, "who", room="lounge")["members"] == ["alicia", "bob"]
    # The old name is free at once, and the rename is history like any event.
    connect(chat, C, "alice")
    assert [e["ev"] for e in chat.store.events("lounge", limit=10)][-1] == "nick"


def test_logout_leaves_every_room_frees_the_name_and_keeps_the_session(lounge):
    chat = lounge
    ok(chat, A, "create", room="den")
    lounge_topic, den_topic = chat.rooms["lounge"].topic, chat.rooms["den"].topic
    reply, rest = call(chat, A, "logout")
    assert reply["ok"] and reply["name"] == "alice"
    leaves = [(p.topic, p.body["room"], p.body["name"], p.body["reason"])
              for p in published(rest)]
    assert leaves == [(lounge_topic, "lounge", "alice", "logged out"),
                      (den_topic, "den", "alice", "logged out")]
    assert [e["ev"] for e in sent_to(rest, B)] == ["rekey"]
    assert sent_to(rest, A) == []
    assert "alice" not in chat.users
    assert list(chat.rooms["lounge"].members) == ["bob", "carol"]
    assert chat.rooms["den"].members == {}
    assert chat.sessions[A].name is None and chat.sessions[A].rooms == {}
    # still connected: the lobby commands work, and the name is free for anyone
    assert ok(chat, A, "users")["users"] == ["bob", "carol"]
    connect(chat, D, "alice")


def test_logout_without_a_name_is_refused_as_not_logged_in(chat):
    connect(chat, A)
    assert refused(chat, A, "logout")["code"] == "not_logged_in"


# --- create ----------------------------------------------------------------------------------


def test_create_makes_a_room_enters_it_and_logs_new_room_created(chat, caplog):
    connect(chat, A, "alice")
    with caplog.at_level(logging.INFO, logger="zchat.broker"):
        reply, rest = call(chat, A, "create", room="lounge")
    assert "New room lounge created" in caplog.messages
    room = chat.rooms["lounge"]
    assert reply["ok"]
    assert (reply["room"], reply["name"], reply["members"]) == ("lounge", "alice", ["alice"])
    assert reply["topic"] == room.topic and chat.grants(room.topic)
    assert reply["topic"].startswith(b"lounge\0")
    assert reply["seq"] == 1 == room.seq
    assert [(e["ev"], e["name"]) for e in reply["history"]] == [("join", "alice")]
    [join] = published(rest)
    assert join.topic == room.topic
    assert (join.body["ev"], join.body["name"], join.body["seq"]) == ("join", "alice", 1)
    assert [r.name for r in chat.store.rooms()] == ["lounge"]
    assert room.creator == "alice"


def test_create_with_a_name_logs_in_with_that_name(chat):
    connect(chat, A)
    assert ok(chat, A, "create", room="lounge", name="alice")["name"] == "alice"
    assert chat.users["alice"] is chat.sessions[A]


def test_create_of_an_existing_room_is_refused_and_the_room_is_unchanged(lounge):
    chat = lounge
    room = chat.rooms["lounge"]
    before = (list(room.members), room.topic, room.seq, room.creator)
    events = chat.store.events("lounge", limit=200)
    connect(chat, D, "dave")
    connect(chat, E)
    for peer, fields in ((A, {}), (D, {}), (E, {"name": "eve"})):
        reply = refused(chat, peer, "create", room="lounge", **fields)
        assert reply["code"] == "room_exists"
        assert "lounge" in reply["error"]
    assert chat.rooms["lounge"] is room
    assert (list(room.members), room.topic, room.seq, room.creator) == before
    assert chat.store.events("lounge", limit=200) == events
    assert chat.sessions[D].rooms == {}
    assert "eve" not in chat.users


def test_one_session_may_be_in_many_rooms_up_to_the_limit(chat):
    connect(chat, A, "alice")
    for i in range(P.ROOMS_PER_MEMBER_MAX):
        ok(chat, A, "create", room=f"r{i}")
    assert refused(chat, A, "create", room="one-more")["code"] == "too_many_rooms"
    assert "one-more" not in chat.rooms
    connect(chat, B, "bob")
    ok(chat, B, "create", room="elsewhere")
    assert refused(chat, A, "join", room="elsewhere")["code"] == "too_many_rooms"
    assert list(chat.rooms["elsewhere"].members) == ["bob"]


# --- join ------------------------------------------------------------------------------------


def test_join_announces_the_joiner_and_replays_the_rooms_history(chat):
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    ok(chat, A, "say", room="lounge", text="anyone here?")
    connect(chat, B)
    reply, rest = call(chat, B, "join", room="lounge", name="bob")
    assert reply["ok"]
    assert (reply["name"], reply["members"], reply["seq"]) == ("bob", ["alice", "bob"], 3)
    assert [(e["ev"], e["seq"]) for e in reply["history"]] == [("join", 1), ("msg", 2),
                                                                ("join", 3)]
    assert reply["history"][1]["text"] == "anyone here?"
    [join] = published(rest)
    assert join.topic == chat.rooms["lounge"].topic == reply["topic"]
    assert (join.body["ev"], join.body["name"], join.body["seq"]) == ("join", "bob", 3)
    assert chat.users["bob"] is chat.sessions[B]


def test_join_history_is_bounded_to_the_newest_events(make_chat):
    chat = make_chat(join_history=3)
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    for i in range(10):
        ok(chat, A, "say", room="lounge", text=f"m{i}")
    connect(chat, B)
    reply = ok(chat, B, "join", room="lounge")
    assert seqs(reply["history"]) == [10, 11, 12]


def test_join_history_can_never_exceed_a_page(make_chat):
    assert make_chat(join_history=10_000).join_history == P.HISTORY_PAGE_MAX


def test_guests_without_a_name_get_unique_names(chat):
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    connect(chat, B)
    connect(chat, C)
    assert ok(chat, B, "join", room="lounge")["name"] == "Guest1"
    assert ok(chat, C, "join", room="lounge")["name"] == "Guest2"
    assert list(chat.rooms["lounge"].names) == ["Guest1", "Guest2", "alice"]


def test_guest_names_skip_nicknames_already_taken(chat):
    connect(chat, A, "Guest1")
    connect(chat, B, "Guest2")
    ok(chat, A, "create", room="lounge")
    connect(chat, C)
    assert ok(chat, C, "join", room="lounge")["name"] == "Guest3"


def test_a_logged_in_user_joins_under_their_own_name(chat):
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    connect(chat, B, "bob")
    assert ok(chat, B, "join", room="lounge")["name"] == "bob"


def test_join_of_a_room_you_are_in_returns_the_welcome_without_a_join_event(lounge):
    chat = lounge
    room = chat.rooms["lounge"]
    seq, topic = room.seq, room.topic
    events = chat.store.events("lounge", limit=200)
    for fields in ({}, {"name": "bob"}):
        reply, rest = call(chat, B, "join", room="lounge", **fields)
        assert reply["ok"]
        assert (reply["room"], reply["topic"], reply["seq"]) == ("lounge", topic, seq)
        assert reply["members"] == ["alice", "bob", "carol"]
        assert rest == []
    assert room.seq == seq
    assert chat.store.events("lounge", limit=200) == events


def test_join_of_an_unknown_room_is_refused_as_no_such_room(chat):
    connect(chat, A)
    reply = refused(chat, A, "join", room="nowhere", name="alice")
    assert reply["code"] == "no_such_room"
    assert "nowhere" in reply["error"]
    assert chat.users == {}


def test_join_with_another_name_while_in_a_room_renames_everywhere(lounge):
    chat = lounge
    ok(chat, A, "create", room="den")
    assert ok(chat, B, "join", room="den", name="robert")["name"] == "robert"
    assert chat.sessions[B].name == "robert"
    assert set(chat.rooms["lounge"].members) >= {"robert"}
    assert "bob" not in chat.rooms["lounge"].members and "bob" not in chat.users


def test_join_with_a_taken_name_is_refused(lounge):
    chat = lounge
    connect(chat, D)
    assert refused(chat, D, "join", room="lounge", name="alice")["code"] == "name_taken"
    assert list(chat.rooms["lounge"].members) == ["alice", "bob", "carol"]


# --- leave / who -----------------------------------------------------------------------------


def test_leave_is_announced_on_the_old_topic_then_the_topic_is_replaced(lounge):
    chat = lounge
    room = chat.rooms["lounge"]
    old = room.topic
    reply, rest = call(chat, B, "leave", room="lounge")
    assert reply["ok"] and reply["room"] == "lounge"
    [leave] = published(rest)
    assert leave.topic == old
    assert (leave.body["ev"], leave.body["name"], leave.body["seq"]) == ("leave", "bob", 4)
    assert rest.index(leave) == 0, "the leave goes out before anyone is told the new topic"
    assert room.topic != old
    assert not chat.grants(old)
    assert chat.grants(room.topic)
    assert list(room.members) == ["alice", "carol"]
    assert chat.sessions[B].rooms == {}


def test_leave_rekeys_the_remaining_members_only(lounge):
    chat = lounge
    _, rest = call(chat, B, "leave", room="lounge")
    room = chat.rooms["lounge"]
    rekey = {"ev": "rekey", "room": "lounge", "topic": room.topic, "seq": room.seq}
    assert sent_to(rest, A) == [rekey]
    assert sent_to(rest, C) == [rekey]
    assert sent_to(rest, B) == []


def test_a_room_outlives_its_last_member(chat):
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    ok(chat, A, "leave", room="lounge")
    assert ok(chat, A, "rooms")["rooms"] == [{"room": "lounge", "count": 0}]


def test_leave_of_a_room_you_are_not_in_is_refused(lounge):
    chat = lounge
    connect(chat, D, "dave")
    assert refused(chat, D, "leave", room="lounge")["code"] == "not_a_member"
    assert refused(chat, D, "leave", room="nowhere")["code"] == "no_such_room"


def test_who_lists_the_members_in_order_of_arrival(lounge):
    chat = lounge
    connect(chat, D)
    assert ok(chat, D, "who", room="lounge")["members"] == ["alice", "bob", "carol"]
    assert refused(chat, D, "who", room="nowhere")["code"] == "no_such_room"


def test_rooms_lists_every_room_with_its_member_count(lounge):
    chat = lounge
    connect(chat, D, "dave")
    ok(chat, D, "create", room="attic")
    assert ok(chat, D, "rooms")["rooms"] == [{"room": "attic", "count": 1},
                                             {"room": "lounge", "count": 3}]


# --- say -------------------------------------------------------------------------------------


def test_say_publishes_on_the_room_topic_with_the_next_seq_and_stores_it(lounge):
    chat = lounge
    room = chat.rooms["lounge"]
    seq = room.seq
    reply, rest = call(chat, B, "say", room="lounge", text="hello all")
    assert reply["ok"] and (reply["room"], reply["seq"]) == ("lounge", seq + 1)
    assert room.seq == seq + 1
    [msg] = published(rest)
    assert msg.topic == room.topic
    assert {k: msg.body[k] for k in ("ev", "room", "seq", "from", "text")} == {
        "ev": "msg", "room": "lounge", "seq": seq + 1, "from": "bob", "text": "hello all"}
    assert "me" not in msg.body
    assert [d for d in rest if isinstance(d, Send)] == [], "room messages go to the publisher"
    assert chat.store.events("lounge", limit=1) == [msg.body]
    assert chat.counters.room_messages == 1


def test_say_with_me_is_an_action(lounge):
    chat = lounge
    _, rest = call(chat, A, "say", room="lounge", text="waves", me=True)
    assert published(rest)[0].body["me"] is True


def test_say_requires_membership(lounge):
    chat = lounge
    connect(chat, D, "dave")
    connect(chat, E)
    for peer in (D, E):
        reply = refused(chat, peer, "say", room="lounge", text="hi")
        assert reply["code"] == "not_a_member"
    assert refused(chat, A, "say", room="nowhere", text="hi")["code"] == "no_such_room"
    assert chat.counters.room_messages == 0


# --- whisper ---------------------------------------------------------------------------------


def test_whisper_reaches_only_its_target(lounge, clock):
    chat = lounge
    seq = chat.rooms["lounge"].seq
    reply, rest = call(chat, A, "whisper", room="lounge", to="bob", text="psst")
    assert reply["ok"] and (reply["to"], reply["room"]) == ("bob", "lounge")
    assert rest == [Send(B, {"ev": "whisper", "from": "alice", "room": "lounge",
                             "text": "psst", "ts": clock.now})]
    assert chat.rooms["lounge"].seq == seq, "a whisper is not part of the room's stream"


def test_whisper_to_someone_outside_the_room_is_refused_as_not_in_room(lounge):
    chat = lounge
    connect(chat, D, "dave")
    for to in ("dave", "nobody"):
        reply = refused(chat, A, "whisper", room="lounge", to=to, text="psst")
        assert reply["code"] == "not_in_room"
        assert to in reply["error"]


def test_whisper_to_oneself_is_refused(lounge):
    assert refused(lounge, A, "whisper", room="lounge", to="alice", text="x")["code"] == (
        "self_message")


def test_whisper_from_outside_the_room_is_refused(lounge):
    chat = lounge
    connect(chat, D, "dave")
    assert refused(chat, D, "whisper", room="lounge", to="bob", text="x")["code"] == (
        "not_a_member")


# --- msg -------------------------------------------------------------------------------------


def test_msg_to_one_user_reaches_only_that_user_wherever_they_are(chat, clock):
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    connect(chat, C, "carol")
    ok(chat, B, "create", room="den")
    reply, rest = call(chat, A, "msg", to=["bob"], text="hi")
    assert reply["ok"] and reply["to"] == ["bob"]
    assert rest == [Send(B, {"ev": "dm", "from": "alice", "to": ["bob"], "text": "hi",
                             "ts": clock.now})]


def test_msg_to_several_users_reaches_each_once(chat):
    for peer, name in ((A, "alice"), (B, "bob"), (C, "carol"), (D, "dave")):
        connect(chat, peer, name)
    reply, rest = call(chat, A, "msg", to=["bob", "carol", "bob"], text="meeting")
    assert reply["to"] == ["bob", "carol"]
    assert [d.peer for d in rest] == [B, C]
    assert all(d.body["to"] == ["bob", "carol"] and d.body["text"] == "meeting" for d in rest)


def test_msg_to_unknown_users_is_refused_naming_them(chat):
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    reply = refused(chat, A, "msg", to=["bob", "zed", "yan"], text="hi")
    assert reply["code"] == "no_such_user"
    assert "zed" in reply["error"] and "yan" in reply["error"]
    assert "bob" not in reply["error"]


@pytest.mark.parametrize("to", [["alice"], ["bob", "alice"]])
def test_msg_to_oneself_is_refused(chat, to):
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    assert refused(chat, A, "msg", to=to, text="hi")["code"] == "self_message"


def test_msg_before_login_is_refused(chat):
    connect(chat, A)
    connect(chat, B, "bob")
    assert refused(chat, A, "msg", to=["bob"], text="hi")["code"] == "not_logged_in"


# --- broadcast -------------------------------------------------------------------------------


def test_broadcast_reaches_every_logged_in_user_but_the_sender(chat):
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    connect(chat, C, "carol")
    connect(chat, D)  # anonymous: not a user
    reply, rest = call(chat, A, "broadcast", text="hello world")
    assert reply["ok"] and reply["count"] == 2
    assert sorted(d.peer for d in rest) == sorted([B, C])
    assert {d.body["ev"] for d in rest} == {"broadcast"}
    assert {(d.body["from"], d.body["text"]) for d in rest} == {("alice", "hello world")}


def test_broadcast_before_login_is_refused(chat):
    connect(chat, A)
    connect(chat, B, "bob")
    assert refused(chat, A, "broadcast", text="hi")["code"] == "not_logged_in"


# --- history ---------------------------------------------------------------------------------


@pytest.fixture
def talkative(chat) -> Chat:
    """lounge with seq 1 (alice joins) and messages m2..m11 (seq 2..11)."""
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    for i in range(2, 12):
        ok(chat, A, "say", room="lounge", text=f"m{i}")
    return chat


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, list(range(1, 12))),
    ({"limit": 3}, [9, 10, 11]),
    ({"before": 6, "limit": 2}, [4, 5]),
    ({"before": 3}, [1, 2]),
    ({"after": 8}, [9, 10, 11]),
    ({"after": 2, "limit": 2}, [3, 4]),
    ({"after": 2, "before": 6}, [3, 4, 5]),
    ({"after": 11}, []),
    ({"before": 1}, []),
])
def test_history_pages_through_the_rooms_events(talkative, fields, expected):
    reply = ok(talkative, A, "history", room="lounge", **fields)
    assert seqs(reply["events"]) == expected
    assert reply["seq"] == 11
    assert reply["inc"] == talkative.incarnation


def test_history_default_page_is_the_join_history_size(make_chat):
    chat = make_chat(join_history=4)
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    for i in range(6):
        ok(chat, A, "say", room="lounge", text=f"m{i}")
    assert seqs(ok(chat, A, "history", room="lounge")["events"]) == [4, 5, 6, 7]


def test_history_requires_membership(talkative):
    chat = talkative
    connect(chat, B, "bob")
    assert refused(chat, B, "history", room="lounge")["code"] == "not_a_member"
    assert refused(chat, A, "history", room="nowhere")["code"] == "no_such_room"


# --- liveness: expire, gone, bye -------------------------------------------------------------


def test_expire_ends_silent_sessions_and_their_members_leave(lounge, clock):
    chat = lounge
    clock.advance(3)
    ok(chat, B, "ping")
    ok(chat, C, "ping")
    clock.advance(2)  # alice silent 5 s, bob and carol 2 s; the timeout is 4 s
    old = chat.rooms["lounge"].topic
    out = chat.expire()
    assert set(chat.sessions) == {B, C}
    assert "alice" not in chat.users
    assert list(chat.rooms["lounge"].members) == ["bob", "carol"]
    [leave] = published(out)
    assert leave.topic == old
    assert (leave.body["name"], leave.body["reason"]) == ("alice", "timed out")
    assert [e["ev"] for e in sent_to(out, B)] == ["rekey"]
    assert sent_to(out, A) == []


def test_expire_keeps_sessions_that_spoke_within_the_timeout(lounge, clock):
    chat = lounge
    clock.advance(P.PEER_TIMEOUT - 0.5)
    assert chat.expire() == []
    assert set(chat.sessions) == {A, B, C}


def test_expire_ends_anonymous_sessions_too(chat, clock):
    connect(chat, A)
    clock.advance(P.PEER_TIMEOUT + 1)
    assert chat.expire() == []
    assert chat.sessions == {}


def test_gone_ends_the_peers_session(lounge):
    chat = lounge
    out = chat.gone(B)
    assert B not in chat.sessions and "bob" not in chat.users
    assert [(p.body["name"], p.body["reason"]) for p in published(out)] == [
        ("bob", "disconnected")]
    assert chat.gone(b"stranger") == []


def test_bye_ends_the_session_and_is_answered(lounge):
    chat = lounge
    reply, rest = call(chat, B, "bye")
    assert reply["ok"]
    assert B not in chat.sessions and "bob" not in chat.users
    assert [p.body["reason"] for p in published(rest)] == ["quit"]
    assert refused(chat, B, "ping")["code"] == "no_session"


def test_shutdown_tells_every_session(lounge):
    chat = lounge
    connect(chat, D)
    out = lounge.shutdown("maintenance")
    assert sorted(d.peer for d in out) == sorted([A, B, C, D])
    assert all(d.body == {"ev": "shutdown", "reason": "maintenance"} for d in out)


# --- ticks -----------------------------------------------------------------------------------


def test_ticks_are_published_for_occupied_rooms_only(lounge):
    chat = lounge
    connect(chat, D, "dave")
    ok(chat, D, "create", room="empty")
    ok(chat, D, "leave", room="empty")
    room = chat.rooms["lounge"]
    assert chat.ticks() == [Publish(room.topic, {"ev": "tick", "room": "lounge",
                                                 "seq": room.seq, "inc": chat.incarnation})]


# --- the operator ----------------------------------------------------------------------------


def admin(chat: Chat, cmd: str, **fields: Any) -> tuple[dict[str, Any], list]:
    return chat.admin(admin_req(cmd, **fields))


def test_admin_ls_lists_rooms_with_counts_members_seq_and_creator(lounge):
    chat = lounge
    connect(chat, D, "dave")
    ok(chat, D, "create", room="attic")
    reply, out = admin(chat, "ls")
    assert out == []
    assert reply["ok"]
    open_room = {"modes": {"invite": False, "key": False, "secret": False,
                           "subject_by": "moderators", "history": "shared"},
                 "moderators": [], "subject": ""}
    assert reply["rooms"] == [
        {"room": "attic", "count": 1, "members": ["dave"], "seq": 1, "creator": "dave",
         "owners": ["dave"], **open_room},  # unregistered: owned for the session
        {"room": "lounge", "count": 3, "members": ["alice", "bob", "carol"], "seq": 3,
         "creator": "alice", "owners": ["alice"], **open_room},
    ]


def test_admin_users_lists_users_with_their_rooms_and_counts_anonymous(lounge):
    chat = lounge
    ok(chat, A, "create", room="den")
    connect(chat, D, "dave")
    connect(chat, E)
    reply, _ = admin(chat, "users")
    assert reply["users"] == [{"name": "alice", "rooms": ["lounge", "den"]},
                              {"name": "bob", "rooms": ["lounge"]},
                              {"name": "carol", "rooms": ["lounge"]},
                              {"name": "dave", "rooms": []}]
    assert reply["anonymous"] == 1


def test_admin_kill_ejects_the_members_and_destroys_the_room(lounge, caplog):
    chat = lounge
    ok(chat, A, "create", room="den")
    topic = chat.rooms["lounge"].topic
    with caplog.at_level(logging.INFO, logger="zchat.broker"):
        reply, out = admin(chat, "kill", room="lounge", reason="spam")
    assert reply["ok"] and reply["ejected"] == ["alice", "bob", "carol"]
    for peer in (A, B, C):
        assert sent_to(out, peer) == [{"ev": "ejected", "room": "lounge", "reason": "spam"}]
    assert published(out) == []
    assert "lounge" not in chat.rooms
    assert not chat.grants(topic)
    assert topic not in chat.topics
    assert [r.name for r in chat.store.rooms()] == ["den"]
    assert chat.store.events("lounge", limit=200) == []
    assert list(chat.sessions[A].rooms) == ["den"]
    assert chat.sessions[B].rooms == {}
    assert any("lounge killed" in m for m in caplog.messages)
    # the ejected are back in the lobby with their names, and the name is free for a new room
    assert chat.sessions[B].name == "bob"
    assert ok(chat, B, "create", room="lounge")["seq"] == 1


def test_admin_kill_without_a_reason_gives_a_default_one(lounge):
    _, out = admin(lounge, "kill", room="lounge")
    assert {d.body["reason"] for d in out} == {"killed by the operator"}


def test_admin_kill_of_an_unknown_room_is_refused(lounge):
    reply, out = admin(lounge, "kill", room="nowhere")
    assert (reply["ok"], reply["code"], out) == (False, "no_such_room", [])


def test_admin_kick_tells_the_user_and_ends_the_session(lounge):
    chat = lounge
    reply, out = admin(chat, "kick", name="bob", reason="flooding")
    assert reply["ok"] and reply["name"] == "bob"
    assert sent_to(out, B) == [{"ev": "kicked", "reason": "flooding"}]
    assert B not in chat.sessions and "bob" not in chat.users
    assert list(chat.rooms["lounge"].members) == ["alice", "carol"]
    assert [(p.body["ev"], p.body["name"]) for p in published(out)] == [("leave", "bob")]
    assert refused(chat, B, "ping")["code"] == "no_session"


def test_admin_kick_of_an_unknown_user_is_refused(lounge):
    reply, out = admin(lounge, "kick", name="zed")
    assert (reply["ok"], reply["code"], out) == (False, "no_such_user", [])
    assert "zed" in reply["error"]


def test_admin_stats_counts_clients_users_rooms_and_messages(lounge, clock):
    chat = lounge
    connect(chat, D)
    ok(chat, A, "say", room="lounge", text="one")
    ok(chat, B, "say", room="lounge", text="two")
    chat.counters.frames_in += 7
    chat.counters.frames_out += 9
    clock.advance(12.5)
    reply, _ = admin(chat, "stats")
    assert {k: reply[k] for k in ("uptime", "clients", "users", "rooms", "messages_in",
                                  "messages_out", "room_messages", "incarnation")} == {
        "uptime": 12.5, "clients": 4, "users": 3, "rooms": 1, "messages_in": 7,
        "messages_out": 9, "room_messages": 2, "incarnation": chat.incarnation}


# --- persistence -----------------------------------------------------------------------------


def test_rooms_and_history_survive_a_restart_and_seq_continues(tmp_path, make_chat):
    path = str(tmp_path / "chat.db")
    first_store = SqliteStore(path)
    first = make_chat(store=first_store, token=tokens("first"))
    connect(first, A, "alice")
    ok(first, A, "create", room="lounge")
    ok(first, A, "say", room="lounge", text="before the restart")
    ok(first, A, "create", room="doomed")
    first.admin(admin_req("kill", room="doomed"))
    old_topic = first.rooms["lounge"].topic
    first_store.close()

    store = SqliteStore(path)
    try:
        chat = make_chat(store=store, token=tokens("second"))
        assert list(chat.rooms) == ["lounge"]
        room = chat.rooms["lounge"]
        assert (room.seq, room.creator, room.members) == (2, "alice", {})
        assert room.topic != old_topic and not chat.grants(old_topic)
        assert chat.incarnation != first.incarnation
        connect(chat, B)
        reply = ok(chat, B, "join", room="lounge", name="bob")
        assert reply["seq"] == 3
        assert [(e["ev"], e["seq"]) for e in reply["history"]] == [
            ("join", 1), ("msg", 2), ("join", 3)]
        assert reply["history"][1]["text"] == "before the restart"
        assert ok(chat, B, "say", room="lounge", text="after")["seq"] == 4
    finally:
        store.close()


# --- retried requests (a client resuming after a reconnect) ---------------------------------


def resend(chat: Chat, peer: bytes, rid: int, cmd: str, retry: bool = True,
           **fields: Any) -> list:
    """A request with a chosen id, as a resuming client re-sends it."""
    return chat.handle(peer, parse(request(rid, cmd, retry=retry or None, **fields)))


@pytest.fixture
def resumable(chat) -> Chat:
    """alice (A, client id 'cafe') and bob (B) in lounge."""
    ok(chat, A, "hello", version=P.PROTOCOL_VERSION, client="cafe")
    ok(chat, A, "login", name="alice")
    ok(chat, A, "create", room="lounge")
    connect(chat, B, "bob")
    ok(chat, B, "join", room="lounge")
    return chat


def test_a_retried_say_is_answered_again_without_a_second_message(resumable):
    chat = resumable
    [first, published_once] = resend(chat, A, 500, "say", retry=False, room="lounge", text="hi")
    seq = chat.rooms["lounge"].seq
    again = resend(chat, A, 500, "say", room="lounge", text="hi")
    assert again == [first]
    assert isinstance(published_once, Publish)
    assert chat.rooms["lounge"].seq == seq
    assert [e["text"] for e in chat.store.events("lounge", limit=50) if e["ev"] == "msg"] == [
        "hi"]


def test_a_retried_msg_is_not_delivered_twice(resumable):
    chat = resumable
    first = resend(chat, A, 501, "msg", retry=False, to=["bob"], text="once")
    assert [d.peer for d in first] == [A, B]
    assert resend(chat, A, 501, "msg", to=["bob"], text="once") == first[:1]


def test_a_retried_refusal_is_answered_with_the_same_refusal(resumable):
    chat = resumable
    [first] = resend(chat, A, 502, "msg", retry=False, to=["zed"], text="x")
    connect(chat, D, "zed")
    assert resend(chat, A, 502, "msg", to=["zed"], text="x") == [first]


def test_a_retried_say_is_recognised_in_the_store_after_a_restart(tmp_path, make_chat):
    path = str(tmp_path / "chat.db")
    first_store = SqliteStore(path)
    first = make_chat(store=first_store, token=tokens("first"))
    ok(first, A, "hello", version=P.PROTOCOL_VERSION, client="cafe")
    ok(first, A, "login", name="alice")
    ok(first, A, "create", room="lounge")
    [reply, _] = resend(first, A, 77, "say", retry=False, room="lounge", text="kept")
    first_store.close()

    store = SqliteStore(path)
    try:
        chat = make_chat(store=store, token=tokens("second"))
        ok(chat, A, "hello", version=P.PROTOCOL_VERSION, client="cafe")
        ok(chat, A, "join", room="lounge", name="alice")
        seq = chat.rooms["lounge"].seq
        [again] = resend(chat, A, 77, "say", room="lounge", text="kept")
        assert again.body == {"re": 77, "ok": True, "room": "lounge",
                              "seq": reply.body["seq"]}
        assert chat.rooms["lounge"].seq == seq
    finally:
        store.close()


def test_the_same_id_without_the_retry_mark_is_carried_out_again(resumable):
    chat = resumable
    resend(chat, A, 503, "say", retry=False, room="lounge", text="one")
    out = resend(chat, A, 503, "say", retry=False, room="lounge", text="two")
    assert [p.body["text"] for p in published(out)] == ["two"]


def test_a_retry_from_another_client_id_is_carried_out(resumable):
    chat = resumable
    ok(chat, C, "hello", version=P.PROTOCOL_VERSION, client="beef")
    ok(chat, C, "join", room="lounge", name="carol")
    resend(chat, A, 504, "say", retry=False, room="lounge", text="alice's")
    out = resend(chat, C, 504, "say", room="lounge", text="carol's")
    assert [p.body["text"] for p in published(out)] == ["carol's"]


def test_without_a_client_id_a_retry_is_refused_not_carried_out_twice(resumable):
    chat = resumable  # bob said hello without a client id
    resend(chat, B, 505, "say", retry=False, room="lounge", text="one")
    [refusal] = resend(chat, B, 505, "say", room="lounge", text="one")
    assert refusal.body["code"] == "retry_needs_client"
    assert [e.get("text") for e in chat.store.events("lounge", limit=50)].count("one") == 1


def test_reads_are_answered_afresh_on_retry(resumable):
    chat = resumable
    resend(chat, A, 506, "users", retry=False)
    connect(chat, D, "dave")
    [again] = resend(chat, A, 506, "users")
    assert again.body["users"] == ["alice", "bob", "dave"]


def test_only_the_newest_answers_are_remembered(resumable, monkeypatch):
    monkeypatch.setattr(P, "ANSWERS_REMEMBERED", 2)
    chat = resumable
    for rid in (601, 602, 603):
        resend(chat, A, rid, "msg", retry=False, to=["bob"], text=f"m{rid}")
    assert [d.peer for d in resend(chat, A, 603, "msg", to=["bob"], text="m603")] == [A]
    assert [d.peer for d in resend(chat, A, 601, "msg", to=["bob"], text="m601")] == [A, B]


# --- the central rule: a refused request changes nothing -------------------------------------


def snapshot(chat: Chat) -> dict[str, Any]:
    """Everything a request could change (but liveness: any request proves the peer alive)."""
    return {
        "sessions": {peer: (s.name, s.client_id, list(s.rooms))
                     for peer, s in chat.sessions.items()},
        "users": {name: s.peer for name, s in chat.users.items()},
        "rooms": {name: (r.seq, r.topic, r.creator, r.created, list(r.members))
                  for name, r in chat.rooms.items()},
        "topics": {topic: room.name for topic, room in chat.topics.items()},
        "stored_rooms": chat.store.rooms(),
        "events": {name: chat.store.events(name, limit=P.HISTORY_PAGE_MAX)
                   for name in chat.rooms},
        "room_messages": chat.counters.room_messages,
    }


BAD_REQUESTS = [
    (E, "ping", {}, "no_session"),
    (E, "login", {"name": "eve"}, "no_session"),
    (E, "create", {"room": "attic", "name": "eve"}, "no_session"),
    (E, "hello", {"version": P.PROTOCOL_VERSION + 1}, "version"),
    (E, "hello", {"version": P.PROTOCOL_VERSION}, "server_full"),
    (B, "hello", {"version": P.PROTOCOL_VERSION + 1}, "version"),
    (B, "login", {"name": "alice"}, "name_taken"),
    (D, "logout", {}, "not_logged_in"),
    (C, "create", {"room": "lounge"}, "room_exists"),
    (D, "create", {"room": "lounge", "name": "dave"}, "room_exists"),
    (D, "create", {"room": "attic", "name": "bob"}, "name_taken"),
    (C, "join", {"room": "nowhere"}, "no_such_room"),
    (D, "join", {"room": "nowhere", "name": "dave"}, "no_such_room"),
    (B, "join", {"room": "den", "name": "alice"}, "name_taken"),
    (D, "join", {"room": "den", "name": "bob"}, "name_taken"),
    (C, "leave", {"room": "lounge"}, "not_a_member"),
    (D, "leave", {"room": "lounge"}, "not_a_member"),
    (C, "leave", {"room": "nowhere"}, "no_such_room"),
    (C, "who", {"room": "nowhere"}, "no_such_room"),
    (C, "say", {"room": "lounge", "text": "x"}, "not_a_member"),
    (D, "say", {"room": "lounge", "text": "x"}, "not_a_member"),
    (A, "say", {"room": "nowhere", "text": "x"}, "no_such_room"),
    (A, "whisper", {"room": "lounge", "to": "carol", "text": "x"}, "not_in_room"),
    (A, "whisper", {"room": "lounge", "to": "alice", "text": "x"}, "self_message"),
    (C, "whisper", {"room": "lounge", "to": "alice", "text": "x"}, "not_a_member"),
    (A, "msg", {"to": ["bob", "zed"], "text": "x"}, "no_such_user"),
    (A, "msg", {"to": ["bob", "alice"], "text": "x"}, "self_message"),
    (D, "msg", {"to": ["bob"], "text": "x"}, "not_logged_in"),
    (D, "broadcast", {"text": "x"}, "not_logged_in"),
    (C, "history", {"room": "lounge"}, "not_a_member"),
    (A, "history", {"room": "nowhere"}, "no_such_room"),
]


@pytest.fixture
def busy(make_chat) -> Chat:
    """alice (A) in lounge and den, bob (B) in lounge, carol (C) in no room, D anonymous,
    E never said hello; the broker is full."""
    chat = make_chat(max_clients=4)
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    connect(chat, C, "carol")
    connect(chat, D)
    ok(chat, A, "create", room="lounge")
    ok(chat, A, "create", room="den")
    ok(chat, B, "join", room="lounge")
    ok(chat, A, "say", room="lounge", text="hi")
    return chat


@pytest.mark.parametrize(("peer", "cmd", "fields", "code"), BAD_REQUESTS,
                         ids=[f"{cmd}-{code}-{i}"
                              for i, (_, cmd, _, code) in enumerate(BAD_REQUESTS)])
def test_a_refused_request_changes_nothing(busy, peer, cmd, fields, code):
    before = snapshot(busy)
    reply = refused(busy, peer, cmd, **fields)
    assert reply["code"] == code
    assert snapshot(busy) == before


def test_refused_requests_in_a_row_change_nothing(busy):
    before = snapshot(busy)
    for peer, cmd, fields, code in BAD_REQUESTS:
        assert refused(busy, peer, cmd, **fields)["code"] == code
    assert snapshot(busy) == before


@pytest.mark.parametrize(("cmd", "fields", "code"), [
    ("kill", {"room": "nowhere"}, "no_such_room"),
    ("kick", {"name": "zed"}, "no_such_user"),
])
def test_a_refused_admin_request_changes_nothing(busy, cmd, fields, code):
    before = snapshot(busy)
    reply, out = admin(busy, cmd, **fields)
    assert (reply["code"], out) == (code, [])
    assert snapshot(busy) == before


def test_too_many_rooms_changes_nothing(chat):
    connect(chat, A, "alice")
    for i in range(P.ROOMS_PER_MEMBER_MAX):
        ok(chat, A, "create", room=f"r{i}")
    connect(chat, B, "bob")
    ok(chat, B, "create", room="elsewhere")
    before = snapshot(chat)
    assert refused(chat, A, "create", room="one-more")["code"] == "too_many_rooms"
    assert refused(chat, A, "join", room="elsewhere")["code"] == "too_many_rooms"
    assert snapshot(chat) == before


def test_refuse_answers_a_request_that_failed_validation_and_nothing_else(busy):
    before = snapshot(busy)
    out = busy.refuse(A, 17, ProtocolError("malformed"))
    assert out == [Send(A, {"re": 17, "ok": False, "code": "malformed",
                            "error": "Malformed request"})]
    assert snapshot(busy) == before


# --- Found in review: retries across sessions, rate limits, password budgets ----------------


def test_a_retried_leave_from_a_new_session_is_carried_out_not_replayed(resumable):
    chat = resumable
    ok(chat, A, "leave", room="lounge")  # answered, but say the answer was lost...
    chat.gone(A)  # ...as the session ended
    ok(chat, A, "hello", version=P.PROTOCOL_VERSION, client="cafe")  # the client resumes
    ok(chat, A, "join", room="lounge", name="alice")
    [reply] = [d for d in resend(chat, A, 3, "leave", room="lounge") if isinstance(d, Send)
               and d.peer == A][:1]
    assert reply.body["ok"]  # carried out now: alice really left, as the client thinks
    assert "alice" not in chat.rooms["lounge"].members


def test_ending_a_session_does_not_refill_its_rate_bucket(make_chat, clock):
    chat = make_chat(rate=20.0, burst=10)
    codes = []
    for _ in range(5):  # hello, say..., bye, over and over, at one instant
        codes.append(chat.handle(A, req("hello", version=P.PROTOCOL_VERSION))[0].body.get("code"))
        for _ in range(3):
            codes.append(chat.handle(A, req("login", name="alice"))[0].body.get("code"))
        codes.append(chat.handle(A, req("bye"))[0].body.get("code"))
    assert codes.count(None) == 1 + 10  # the first hello, then the burst once, not per session
    assert set(codes) == {None, "rate_limited"}
    clock.advance(1.0)  # the bucket refills with time, as ever
    assert chat.handle(A, req("hello", version=P.PROTOCOL_VERSION))[0].body["ok"]


def test_one_guesser_cannot_use_up_the_password_checks_of_others(make_chat, clock):
    chat = make_chat()
    connect(chat, A, "alice")
    ok(chat, A, "register", password="correct horse")
    ok(chat, A, "logout")
    connect(chat, B)
    codes = [refused(chat, B, "login", name="alice", password=f"guess-number-{i}")["code"]
             for i in range(P.PASSWORD_CHECKS_PER_MINUTE + 2)]
    assert codes[:P.PASSWORD_CHECKS_PER_MINUTE] == ["bad_password"] * \
        P.PASSWORD_CHECKS_PER_MINUTE
    assert codes[-1] == "rate_limited"  # the guesser is slowed down...
    assert ok(chat, A, "login", name="alice", password="correct horse")  # ...not alice


def test_a_room_keeps_at_most_its_quota_of_history(make_chat):
    chat = make_chat(room_quota=1000)
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    ok(chat, A, "say", room="lounge", text="x" * 600)
    assert refused(chat, A, "say", room="lounge", text="y" * 600)["code"] == "quota_exceeded"
    ok(chat, A, "say", room="lounge", text="short")  # what fits still goes in


def test_one_source_cannot_fill_the_disk_however_many_sessions_it_opens(make_chat):
    chat = make_chat(rate=P.RATE_DEFAULT)  # limits on, as in service
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    stored, text = 0, "z" * P.TEXT_MAX
    while stored + len(text) <= P.STORE_BURST:
        ok(chat, A, "say", room="lounge", text=text)
        stored += len(text)
    assert refused(chat, A, "say", room="lounge", text=text)["code"] == "quota_exceeded"
    ok(chat, A, "bye")
    connect(chat, A, "alice")  # a new session from the same source: still spent
    ok(chat, A, "join", room="lounge")
    assert refused(chat, A, "say", room="lounge", text=text)["code"] == "quota_exceeded"


def test_a_new_session_refills_no_bucket_of_the_same_key(make_chat):
    chat = make_chat(rate=P.RATE_DEFAULT, delivery_burst=1000, delivery_rate=1)
    chat.handle(A, req("hello", version=P.PROTOCOL_VERSION), "key-a")
    chat.handle(A, req("login", name="alice"), "key-a")
    chat.handle(B, req("hello", version=P.PROTOCOL_VERSION))
    chat.handle(B, req("login", name="bob"))
    assert chat.handle(A, req("msg", to=["bob"], text="x" * 900), "key-a")[0].body["ok"]
    chat.handle(A, req("bye"), "key-a")
    chat.handle(C, req("hello", version=P.PROTOCOL_VERSION), "key-a")  # same key, anew
    chat.handle(C, req("login", name="alice"), "key-a")
    again = chat.handle(C, req("msg", to=["bob"], text="x" * 900), "key-a")[0].body
    assert again["code"] == "rate_limited"


def test_a_refused_create_spends_none_of_the_hourly_room_budget(make_chat, monkeypatch):
    monkeypatch.setattr(P, "ROOMS_CREATED_PER_HOUR", 2)
    chat = make_chat()
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    for _ in range(5):
        assert refused(chat, A, "create", room="x", name="bob")["code"] == "name_taken"
    ok(chat, A, "create", room="one")
    ok(chat, A, "create", room="two")
    assert refused(chat, A, "create", room="three")["code"] == "rate_limited"


def test_a_history_page_cut_by_the_text_cap_says_so(chat):
    connect(chat, A, "alice")
    ok(chat, A, "create", room="lounge")
    for _ in range(3):
        ok(chat, A, "say", room="lounge", text="t" * 30_000)
    page = ok(chat, A, "history", room="lounge", limit=50)
    assert page["cut"] is True and len(page["events"]) == 2
    assert [e["seq"] for e in page["events"]] == [3, 4]  # the newest end is kept
    assert "cut" not in ok(chat, A, "history", room="lounge", limit=1)


def test_a_room_empty_past_its_lifetime_goes_with_its_history(make_chat, clock):
    chat = make_chat(room_lifetime=3600)
    connect(chat, A, "alice")
    ok(chat, A, "create", room="Lounge")
    ok(chat, A, "say", room="Lounge", text="hello")
    ok(chat, A, "leave", room="Lounge")
    clock.advance(3599)
    chat.expire()
    assert "lounge" in chat.rooms
    clock.advance(2)
    chat.expire()
    assert chat.rooms == {} and chat.store.rooms() == []
    assert chat.store.events("Lounge", limit=10) == []


def test_while_the_store_cannot_write_a_leave_is_told_in_the_rekey(chat, monkeypatch):
    connect(chat, A, "alice")
    connect(chat, B, "bob")
    ok(chat, A, "create", room="lounge")
    ok(chat, B, "join", room="lounge")
    seq = chat.rooms["lounge"].seq
    monkeypatch.setattr(chat.store, "problem", lambda: "the disk is full")
    assert refused(chat, A, "say", room="lounge", text="hi")["code"] == "store_unavailable"
    reply, rest = call(chat, B, "leave", room="lounge")
    assert reply["ok"] and not [d for d in rest if isinstance(d, Publish)]
    [rekey] = sent_to(rest, A)
    assert rekey["ev"] == "rekey" and rekey["left"] == "bob" and rekey["seq"] == seq


def test_renames_and_joins_count_against_the_share_of_the_disk(make_chat, monkeypatch):
    monkeypatch.setattr(P, "STORE_BURST", 9 * P.text_weight({}))
    monkeypatch.setattr(P, "STORE_RATE", 0.0)
    chat = make_chat(rate=1000.0, burst=1000)
    connect(chat, A, "alice")
    for i in range(5):
        ok(chat, A, "create", room=f"r{i}")  # 5 joins: 5 of the 9 events' share
    assert refused(chat, A, "login", name="alicia")["code"] == "quota_exceeded"  # 5 more
    assert chat.sessions[A].name == "alice"


def test_a_leave_whose_turn_fails_to_commit_is_told_in_the_rekey_with_the_stored_seq(lounge):
    """The rekey must not name a seq the store never kept: that seq is used again by the
    next event, which the remaining members would then take for one they had (a gap)."""
    chat = lounge
    chat.store.commit()
    chat.committed()
    seq = chat.rooms["lounge"].seq
    out = chat.handle(B, req("leave", room="lounge"))
    assert [d.body["ev"] for d in out if isinstance(d, Publish)] == ["leave"]
    chat.store._doomed = StoreError("the disk is full")  # as a failed write dooms the turn
    with pytest.raises(StoreError):
        chat.store.commit()
    sent = chat.commit_failed(out, "the disk is full")
    assert not [d for d in sent if isinstance(d, Publish)]
    for peer in (A, C):
        [rekey] = sent_to(sent, peer)
        assert (rekey["ev"], rekey["seq"], rekey["left"]) == ("rekey", seq, "bob")
        assert rekey["topic"] == chat.rooms["lounge"].topic
    assert chat.rooms["lounge"].seq == seq
    said = ok(chat, A, "say", room="lounge", text="next")
    assert said["seq"] == seq + 1


def test_joining_and_leaving_a_crowded_room_in_a_loop_is_charged_per_member_told(make_chat,
                                                                                clock):
    """Each leave sends every remaining member a rekey: a loop of them in a crowded room
    would flood the loop for free. Charged, but one may always leave, however crowded."""
    cycle = (P.text_weight({}) + P.REKEY_WEIGHT) * 31  # 31 told of each join and leave
    chat = make_chat(rate=1000.0, burst=1000, delivery_rate=1.0,
                     delivery_burst=2.5 * cycle)
    connect(chat, A, "alice")
    ok(chat, A, "create", room="hall")
    crowd = [bytes([0xF0, i]) for i in range(30)]
    for i, peer in enumerate(crowd):
        connect(chat, peer, f"m{i}")
        ok(chat, peer, "join", room="hall")
    connect(chat, B, "bob")
    for _ in range(2):
        ok(chat, B, "join", room="hall")
        ok(chat, B, "leave", room="hall")
    ok(chat, B, "join", room="hall")
    assert refused(chat, B, "leave", room="hall")["code"] == "rate_limited"
    assert "bob" in chat.rooms["hall"].members

    small = make_chat(rate=1000.0, burst=1000, delivery_rate=1.0,
                      delivery_burst=10 * P.REKEY_WEIGHT, store=SqliteStore(":memory:"))
    connect(small, A, "alice")
    ok(small, A, "create", room="hall")
    for i, peer in enumerate(crowd):
        connect(small, peer, f"m{i}")
        ok(small, peer, "join", room="hall")
    clock.now += 100  # alice's own join spent a little of the burst: it comes back
    ok(small, A, "leave", room="hall")  # 30 to tell, past the burst: never too_large


def test_a_room_holds_a_bounded_number_of_invites_and_lists_them_without_a_scan(
        chat, monkeypatch):
    """Invites are listed in one reply, so a room holds at most INVITES_MAX of them, kept
    and held together; the held ones are found from the room, not by a walk over every
    user online."""
    monkeypatch.setattr(P, "INVITES_MAX", 3)
    connect(chat, A, "alice")
    ok(chat, A, "create", room="den")
    ok(chat, A, "mode", room="den", invite=True)
    guests = [(b"g%d" % i, f"guest{i}") for i in range(4)]
    for peer, name in guests:
        connect(chat, peer, name)
    for _, name in guests[:3]:
        ok(chat, A, "invite", room="den", name=name)
    ok(chat, A, "invite", room="den", name="guest0")  # again: not a new one
    assert refused(chat, A, "invite", room="den", name="guest3")["code"] == "too_many_invites"
    assert ok(chat, A, "invites", room="den")["invites"] == ["guest0", "guest1", "guest2"]
    chat.gone(b"g1")  # a held invite goes with its session, and makes room for another
    ok(chat, A, "invite", room="den", name="guest3")
    assert ok(chat, A, "invites", room="den")["invites"] == ["guest0", "guest2", "guest3"]
    assert chat.rooms["den"].invited == {chat.sessions[b"g0"], chat.sessions[b"g2"],
                                         chat.sessions[b"g3"]}
