"""Rooms people own and protect, driven on the chat core directly: owners, moderators,
topics (``subject`` on the wire), invite-only and keyed rooms, kicks, bans, history
visibility, and the operator's override. Who may do what, and in which order of checks.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.chat import Chat, Publish, Send
from broker.store import SqliteStore
from schema import protocol as P

from .test_chat import Clock, admin, req, snapshot, tokens

ALICE, BOB, CAROL, EVE = b"peer-a", b"peer-b", b"peer-c", b"peer-e"


class Person:
    """One client with a CURVE key (its identity), talking to the chat core."""

    def __init__(self, chat: Chat, peer: bytes, key: str, name: str | None = None,
                 register: bool = False):
        self.chat, self.peer, self.key = chat, peer, key
        self.ok("hello", version=P.PROTOCOL_VERSION)
        if name is not None:
            self.ok("login", name=name)
        if register:
            self.ok("register")

    def call(self, cmd: str, **fields: Any) -> tuple[dict[str, Any], list]:
        out = self.chat.handle(self.peer, req(cmd, **fields), identity=self.key)
        assert isinstance(out[0], Send) and out[0].peer == self.peer
        return out[0].body, out[1:]

    def ok(self, cmd: str, **fields: Any) -> dict[str, Any]:
        reply, _ = self.call(cmd, **fields)
        assert reply["ok"], reply
        return reply

    def code(self, cmd: str, **fields: Any) -> str:
        reply, rest = self.call(cmd, **fields)
        assert reply["ok"] is False, reply
        assert rest == [], "a refused request delivers nothing but its error"
        return reply["code"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(store: SqliteStore, clock: Clock, **options: Any) -> Chat:
    return Chat(store, rate=0, pub_address="tcp://127.0.0.1:5556", clock=clock,
                token=tokens(), **options)


@pytest.fixture
def store():
    s = SqliteStore(":memory:")
    yield s
    s.close()


@pytest.fixture
def chat(store, clock) -> Chat:
    return make(store, clock)


@pytest.fixture
def people(chat) -> dict[str, Person]:
    """alice (registered) created lounge; bob (registered) and carol (not) are in it; eve
    (registered, another key) is in no room."""
    folk = {
        "alice": Person(chat, ALICE, "key-a", "alice", register=True),
        "bob": Person(chat, BOB, "key-b", "bob", register=True),
        "carol": Person(chat, CAROL, "key-c", "carol"),
        "eve": Person(chat, EVE, "key-e", "eve", register=True),
    }
    folk["alice"].ok("create", room="lounge")
    folk["bob"].ok("join", room="lounge")
    folk["carol"].ok("join", room="lounge")
    return folk


def sent(out: list, peer: bytes) -> list[dict[str, Any]]:
    return [d.body for d in out if isinstance(d, Send) and d.peer == peer]


def events(out: list) -> list[tuple[bytes, dict[str, Any]]]:
    return [(d.topic, d.body) for d in out if isinstance(d, Publish)]


# --- owners and roles -------------------------------------------------------------------


def test_the_creator_owns_the_room_and_is_told_so_on_join(people):
    assert people["alice"].ok("join", room="lounge")["role"] == "owner"
    assert "role" not in people["bob"].ok("join", room="lounge")


def test_an_owner_makes_moderators_and_owners_and_it_is_told_in_the_room(people):
    alice = people["alice"]
    reply, out = alice.call("role", room="lounge", name="bob", role="moderator")
    assert reply["ok"] and reply["role"] == "moderator"
    [(_, event)] = events(out)
    assert (event["ev"], event["name"], event["role"], event["by"]) == \
        ("role", "bob", "moderator", "alice")
    assert people["bob"].ok("join", room="lounge")["role"] == "moderator"


def test_only_owners_give_roles_and_only_to_registered_nicknames(people):
    people["alice"].ok("role", room="lounge", name="bob", role="moderator")
    assert people["bob"].code("role", room="lounge", name="bob", role="owner") \
        == "not_permitted"
    assert people["carol"].code("role", room="lounge", name="carol", role="owner") \
        == "not_permitted"
    assert people["alice"].code("role", room="lounge", name="carol", role="moderator") \
        == "not_registered"


def test_ownership_is_passed_on_but_a_room_never_loses_its_last_owner(people):
    alice = people["alice"]
    assert alice.code("role", room="lounge", name="alice", role="member") == "last_owner"
    alice.ok("role", room="lounge", name="bob", role="owner")
    assert alice.ok("role", room="lounge", name="alice", role="member")["role"] == "member"
    assert "role" not in alice.ok("join", room="lounge")
    assert alice.code("role", room="lounge", name="alice", role="owner") == "not_permitted"
    people["bob"].ok("role", room="lounge", name="alice", role="owner")  # bob owns it now
    assert alice.ok("join", room="lounge")["role"] == "owner"


def test_the_order_of_checks_is_room_membership_rank_target_then_store(people, store,
                                                                       monkeypatch):
    eve, carol, alice = people["eve"], people["carol"], people["alice"]
    assert eve.code("kick", room="nowhere", name="bob") == "no_such_room"
    assert eve.code("kick", room="lounge", name="zed") == "not_a_member"
    assert carol.code("kick", room="lounge", name="zed") == "not_permitted"
    assert alice.code("kick", room="lounge", name="zed") == "not_in_room"
    monkeypatch.setattr(store, "problem", lambda: "the disk is full")
    assert alice.code("kick", room="lounge", name="bob") == "store_unavailable"


def test_a_moderator_cannot_act_on_an_owner_or_another_moderator(people, chat):
    alice = people["alice"]
    alice.ok("role", room="lounge", name="bob", role="moderator")
    people["eve"].ok("join", room="lounge")
    alice.ok("role", room="lounge", name="eve", role="moderator")
    bob = people["bob"]
    assert bob.code("kick", room="lounge", name="alice") == "outranked"
    assert bob.code("kick", room="lounge", name="eve") == "outranked"
    assert bob.code("ban", room="lounge", name="alice") == "outranked"
    assert bob.code("kick", room="lounge", name="bob") == "outranked"
    bob.ok("kick", room="lounge", name="carol")


def test_roles_and_settings_survive_a_restart(tmp_path, clock):
    path = str(tmp_path / "zchat.db")
    first = SqliteStore(path)
    chat = make(first, clock)
    alice = Person(chat, ALICE, "key-a", "alice", register=True)
    Person(chat, BOB, "key-b", "bob", register=True)
    alice.ok("create", room="den")
    alice.ok("role", room="den", name="bob", role="moderator")
    alice.ok("mode", room="den", invite=True, key="sesame", secret=True)
    alice.ok("subject", room="den", text="plans")
    alice.ok("ban", room="den", name="eve", reason="spam")
    first.commit()
    first.close()
    again = SqliteStore(path)
    chat = make(again, clock)
    bob = Person(chat, BOB, "key-b", "bob")
    eve = Person(chat, EVE, "key-e", "eve")
    welcome = bob.ok("join", room="den")  # a moderator needs no invite and no key
    assert (welcome["role"], welcome["subject"]) == ("moderator", "plans")
    assert eve.code("join", room="den", key="sesame") == "banned"
    alice = Person(chat, ALICE, "key-a", "alice")
    assert alice.ok("join", room="den")["role"] == "owner"
    again.close()


# --- topic --------------------------------------------------------------------------------


def test_moderators_set_the_topic_it_is_an_event_shown_on_join_and_in_rooms(people):
    alice, carol, eve = people["alice"], people["carol"], people["eve"]
    assert carol.code("subject", room="lounge", text="mine") == "not_permitted"
    reply, out = alice.call("subject", room="lounge", text="welcome all")
    assert reply["ok"]
    [(_, event)] = events(out)
    assert (event["ev"], event["name"], event["text"]) == ("subject", "alice", "welcome all")
    read = carol.ok("subject", room="lounge")
    assert (read["text"], read["by"]) == ("welcome all", "alice")
    assert eve.ok("join", room="lounge")["subject"] == "welcome all"
    assert eve.ok("rooms")["rooms"] == [{"room": "lounge", "count": 4,
                                         "subject": "welcome all"}]


def test_a_room_may_let_anyone_set_the_topic(people):
    people["alice"].ok("mode", room="lounge", subject_by="anyone")
    assert people["carol"].ok("subject", room="lounge", text="carol's")["text"] == "carol's"


# --- invite-only, keys, secret rooms --------------------------------------------------------


def test_a_non_member_of_an_invite_only_room_learns_nothing_but_its_name(people, chat):
    people["alice"].ok("mode", room="lounge", invite=True)
    people["alice"].ok("subject", room="lounge", text="private")
    eve = people["eve"]
    before = snapshot(chat)
    assert eve.code("join", room="lounge") == "invite_only"
    assert eve.code("who", room="lounge") == "not_a_member"
    assert eve.code("history", room="lounge") == "not_a_member"
    assert eve.code("subject", room="lounge") == "not_a_member"
    assert eve.code("mode", room="lounge") == "not_a_member"
    assert eve.ok("rooms")["rooms"] == [{"room": "lounge", "closed": True}]
    assert snapshot(chat) == before


def test_an_invite_lets_one_person_in_and_tells_them(people):
    alice, eve = people["alice"], people["eve"]
    alice.ok("mode", room="lounge", invite=True)
    reply, out = alice.call("invite", room="lounge", name="eve")
    assert reply["ok"]
    assert sent(out, EVE) == [{"ev": "invited", "room": "lounge", "by": "alice"}]
    assert eve.ok("join", room="lounge")["room"] == "lounge"


def test_an_unregistered_invitee_is_invited_for_its_session_only(chat, people):
    alice = people["alice"]
    alice.ok("mode", room="lounge", invite=True)
    dave = Person(chat, b"peer-d", "key-d", "dave")
    alice.ok("invite", room="lounge", name="dave")
    dave.ok("bye")
    dave = Person(chat, b"peer-d2", "key-x", "dave")  # somebody else, same nickname
    assert dave.code("join", room="lounge") == "invite_only"
    assert alice.code("invite", room="lounge", name="zed") == "no_such_user"


def test_a_keyed_room_needs_its_key_unless_invited(people):
    alice, eve = people["alice"], people["eve"]
    reply, out = alice.call("mode", room="lounge", key="sesame")
    assert reply["modes"]["key"] is True
    [(_, event)] = events(out)
    assert event["key"] is True, "the key itself is never told"
    assert eve.code("join", room="lounge") == "key_needed"
    assert eve.code("join", room="lounge", key="wrong") == "key_needed"
    assert eve.ok("join", room="lounge", key="sesame")["room"] == "lounge"


def test_a_secret_room_is_left_out_of_rooms_for_non_members(people):
    people["alice"].ok("mode", room="lounge", secret=True)
    assert people["eve"].ok("rooms")["rooms"] == []
    assert people["eve"].code("who", room="lounge") == "not_a_member"
    assert people["bob"].ok("rooms")["rooms"] == [{"room": "lounge", "count": 3}]


def test_rooms_pages_skip_secret_rooms_and_still_fill(chat, people):
    alice = people["alice"]
    for name in ("a1", "a2", "a3", "b1"):
        alice.ok("create", room=name)
        if name != "b1":
            alice.ok("mode", room=name, secret=True)
    page = people["eve"].ok("rooms", limit=1)
    assert [r["room"] for r in page["rooms"]] == ["b1"] and page["more"]


# --- kick and ban ---------------------------------------------------------------------------


def test_a_kick_removes_the_member_exactly_as_a_leave_does(people, chat):
    alice = people["alice"]
    old = chat.rooms["lounge"].topic
    reply, out = alice.call("kick", room="lounge", name="carol", reason="shouting")
    assert reply["ok"]
    [(topic, event)] = events(out)
    assert topic == old and event["ev"] == "leave"
    assert event["reason"] == "kicked by alice: shouting"
    new = chat.rooms["lounge"].topic
    assert new != old and old not in chat.topics
    assert [e["ev"] for e in sent(out, CAROL)] == ["ejected"]
    assert [e["topic"] for e in sent(out, BOB) if e["ev"] == "rekey"] == [new]
    assert "carol" not in chat.rooms["lounge"].members


def test_a_kicked_member_may_come_back_to_an_open_room_not_to_an_invite_only_one(people):
    alice, eve = people["alice"], people["eve"]
    alice.ok("kick", room="lounge", name="carol")
    people["carol"].ok("join", room="lounge")
    alice.ok("mode", room="lounge", invite=True)
    alice.ok("invite", room="lounge", name="eve")
    eve.ok("join", room="lounge")
    alice.ok("kick", room="lounge", name="eve")
    assert eve.code("join", room="lounge") == "invite_only"  # the invite went with it


def test_a_banned_user_cannot_rejoin_nor_read_the_room(people, chat):
    alice, carol = people["alice"], people["carol"]
    reply, out = alice.call("ban", room="lounge", name="carol", reason="spam")
    assert reply["ok"]
    assert [e["ev"] for e in sent(out, CAROL)] == ["ejected"]
    before = snapshot(chat)
    assert carol.code("join", room="lounge") == "banned"
    assert carol.code("history", room="lounge") == "not_a_member"
    assert carol.code("who", room="lounge") == "banned"
    assert carol.ok("rooms")["rooms"] == [{"room": "lounge", "closed": True}]
    assert snapshot(chat) == before
    assert alice.ok("bans", room="lounge")["bans"] == [
        {"name": "carol", "by": "alice", "kind": "name", "reason": "spam"}]


def test_a_key_ban_keeps_out_the_key_under_any_nickname(people, chat):
    alice = people["alice"]
    reply = alice.ok("ban", room="lounge", name="carol", key=True)
    assert [b["kind"] for b in reply["bans"]] == ["name", "key"]
    again = Person(chat, b"peer-c2", "key-c", "carla")  # carol's key, another nickname
    assert again.code("join", room="lounge") == "banned"
    assert alice.code("ban", room="lounge", name="zed", key=True) == "no_such_user"


def test_a_ban_with_a_duration_expires(people, clock):
    people["alice"].ok("ban", room="lounge", name="carol", duration=60)
    assert people["carol"].code("join", room="lounge") == "banned"
    clock.advance(61)
    assert people["carol"].ok("join", room="lounge")["room"] == "lounge"


def test_unban_lifts_name_and_key_bans_and_an_unknown_one_is_refused(people):
    alice, carol = people["alice"], people["carol"]
    alice.ok("ban", room="lounge", name="carol", key=True)
    assert alice.code("unban", room="lounge", name="zed") == "not_banned"
    assert alice.ok("unban", room="lounge", name="carol")["lifted"] == 2
    carol.ok("join", room="lounge")
    assert alice.ok("bans", room="lounge")["bans"] == []
    assert people["bob"].code("bans", room="lounge") == "not_permitted"


def test_a_ban_holds_against_an_invite(people):
    alice = people["alice"]
    alice.ok("mode", room="lounge", invite=True)
    alice.ok("ban", room="lounge", name="eve")
    alice.ok("invite", room="lounge", name="eve")
    assert people["eve"].code("join", room="lounge") == "banned"


# --- history visibility --------------------------------------------------------------------


def test_a_room_may_hide_from_joiners_what_came_before_they_joined(people):
    alice, eve = people["alice"], people["eve"]
    alice.ok("say", room="lounge", text="before eve")
    alice.ok("mode", room="lounge", history="joined")
    welcome = eve.ok("join", room="lounge")
    assert [e["ev"] for e in welcome["history"]] == ["join"]
    assert welcome["since"] == welcome["seq"]
    alice.ok("say", room="lounge", text="after eve")
    for fields in ({}, {"after": 0}, {"before": welcome["seq"] + 5}):
        texts = [e.get("text") for e in eve.ok("history", room="lounge", **fields)["events"]]
        assert "before eve" not in texts and "after eve" in texts
    assert "before eve" in [e.get("text") for e in
                            people["bob"].ok("history", room="lounge")["events"]]


# --- the operator, and empty rooms ----------------------------------------------------------


def test_the_operator_overrides_any_owner(people, chat):
    alice = people["alice"]
    alice.ok("mode", room="lounge", invite=True)
    alice.ok("ban", room="lounge", name="eve")
    reply, _ = admin(chat, "role", room="lounge", name="alice", role="member")
    assert reply["ok"]  # even the last owner
    reply, _ = admin(chat, "role", room="lounge", name="eve", role="owner")
    assert reply["ok"]
    reply, _ = admin(chat, "unban", room="lounge", name="eve")
    assert reply["ok"]
    reply, _ = admin(chat, "mode", room="lounge", invite=False)
    assert reply["ok"] and reply["modes"]["invite"] is False
    assert people["eve"].ok("join", room="lounge")["role"] == "owner"
    reply, _ = admin(chat, "ls")
    [room] = reply["rooms"]
    assert room["owners"] == ["eve"] and room["modes"]["invite"] is False


def test_the_operator_removes_and_bans_members_even_owners(people, chat, clock):
    alice, bob = people["alice"], people["bob"]
    reply, out = admin(chat, "eject", room="lounge", name="alice", reason="abuse")
    assert reply["ok"] and reply["name"] == "alice"
    assert sent(out, ALICE) == [{"ev": "ejected", "room": "lounge",
                                 "reason": "kicked by the operator: abuse"}]
    assert [e["ev"] for _, e in events(out)] == ["leave"]
    reply, out = admin(chat, "ban", room="lounge", name="bob", key=True, duration=60)
    assert reply["ok"]
    assert [(b["kind"], b["by"]) for b in reply["bans"]] == [("name", "the operator"),
                                                             ("key", "the operator")]
    assert [e["ev"] for e in sent(out, BOB)] == ["ejected"]
    assert bob.code("join", room="lounge") == "banned"
    assert alice.ok("join", room="lounge")["room"] == "lounge"  # ejected, not banned
    clock.now += 61
    assert bob.ok("join", room="lounge")["room"] == "lounge"
    reply, _ = admin(chat, "eject", room="lounge", name="eve")
    assert reply["ok"] is False and reply["code"] == "not_in_room"
    reply, _ = admin(chat, "ban", room="attic", name="eve")
    assert reply["ok"] is False and reply["code"] == "no_such_room"


def test_invites_are_listed_and_withdrawn_by_moderators_only(people, chat):
    alice, bob, carol, eve = people["alice"], people["bob"], people["carol"], people["eve"]
    alice.ok("mode", room="lounge", invite=True)
    dave = Person(chat, b"peer-d", "key-d", "dave")  # unregistered: invited for its session
    alice.ok("invite", room="lounge", name="eve")
    alice.ok("invite", room="lounge", name="dave")
    assert alice.ok("invites", room="lounge")["invites"] == ["dave", "eve"]
    assert carol.code("invites", room="lounge") == "not_permitted"
    assert carol.code("uninvite", room="lounge", name="eve") == "not_permitted"
    assert bob.code("uninvite", room="lounge", name="eve") == "not_permitted"
    assert alice.ok("uninvite", room="lounge", name="eve")["name"] == "eve"
    assert eve.code("join", room="lounge") == "invite_only"
    assert alice.code("uninvite", room="lounge", name="eve") == "not_invited"
    reply, _ = admin(chat, "invites", room="lounge")
    assert reply["invites"] == ["dave"]
    reply, _ = admin(chat, "uninvite", room="lounge", name="dave")
    assert reply["ok"]
    assert dave.code("join", room="lounge") == "invite_only"
    assert alice.ok("invites", room="lounge")["invites"] == []


def test_a_withdrawn_invite_is_gone_after_a_restart(tmp_path, clock):
    path = str(tmp_path / "rooms.db")
    store = SqliteStore(path)
    chat = make(store, clock)
    alice = Person(chat, ALICE, "key-a", "alice", register=True)
    Person(chat, EVE, "key-e", "eve", register=True)
    alice.ok("create", room="den")
    alice.ok("mode", room="den", invite=True)
    alice.ok("invite", room="den", name="eve")
    alice.ok("uninvite", room="den", name="eve")
    store.commit()
    store.close()
    store = SqliteStore(path)
    chat = make(store, clock)
    alice = Person(chat, ALICE, "key-a", "alice")
    alice.ok("join", room="den")
    assert alice.ok("invites", room="den")["invites"] == []
    eve = Person(chat, EVE, "key-e", "eve")
    assert eve.code("join", room="den") == "invite_only"
    store.close()


def test_an_owned_room_is_kept_empty_an_unowned_one_goes_after_its_lifetime(chat, clock,
                                                                              people):
    alice, carol = people["alice"], people["carol"]
    carol.ok("create", room="attic")  # carol is not registered: hers for the session
    for person in people.values():
        person.ok("bye")
    clock.advance(P.EMPTY_ROOM_LIFETIME + 1)
    chat.expire()
    assert "lounge" in chat.rooms and "attic" not in chat.rooms
    clock.advance(P.OWNED_ROOM_LIFETIME - P.EMPTY_ROOM_LIFETIME - 2)
    chat.expire()
    assert "lounge" in chat.rooms  # lounge's owner is registered: kept a year
    clock.advance(2)
    chat.expire()
    assert "lounge" not in chat.rooms
    assert alice


def test_a_released_owner_leaves_the_room_to_the_common_lifetime(chat, clock, people):
    for person in people.values():
        person.ok("bye")
    clock.advance(P.EMPTY_ROOM_LIFETIME + 1)
    chat.expire()
    assert "lounge" in chat.rooms
    admin(chat, "release", name="alice")
    chat.expire()
    assert "lounge" not in chat.rooms  # empty for longer than a week already


def test_registering_keeps_what_the_session_held(chat, tmp_path):
    dave = Person(chat, b"peer-d", "key-d", "dave")
    dave.ok("create", room="den")
    dave.ok("register")
    assert chat.rooms["den"].access.owners() == ["dave"]


def test_refused_room_requests_change_nothing(people, chat):
    people["alice"].ok("mode", room="lounge", invite=True)
    before = snapshot(chat)
    access = repr(chat.rooms["lounge"].access)
    for person, cmd, fields, code in [
        ("carol", "mode", {"room": "lounge", "secret": True}, "not_permitted"),
        ("carol", "subject", {"room": "lounge", "text": "x"}, "not_permitted"),
        ("carol", "invite", {"room": "lounge", "name": "eve"}, "not_permitted"),
        ("carol", "ban", {"room": "lounge", "name": "bob"}, "not_permitted"),
        ("carol", "unban", {"room": "lounge", "name": "bob"}, "not_permitted"),
        ("alice", "unban", {"room": "lounge", "name": "bob"}, "not_banned"),
        ("alice", "ban", {"room": "lounge", "name": "alice"}, "outranked"),
        ("eve", "join", {"room": "lounge"}, "invite_only"),
        ("eve", "ban", {"room": "lounge", "name": "bob"}, "not_a_member"),
    ]:
        assert people[person].code(cmd, **fields) == code, (cmd, fields)
    assert snapshot(chat) == before and repr(chat.rooms["lounge"].access) == access

