"""How events look to a person, and that nobody can drive your terminal by chatting."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.connection import Event
from client.render import RENDERERS, clean, render


def show(kind: str, **data: Any) -> list[str]:
    return render(Event(kind, data))


# --- room events -----------------------------------------------------------------------------


def test_a_room_message():
    assert show("msg", room="lounge", seq=3, **{"from": "alice"}, text="hi") == [
        "[lounge] alice: hi"]


def test_a_room_action():
    assert show("msg", room="lounge", seq=3, **{"from": "alice"}, text="waves", me=True) == [
        "[lounge] * alice waves"]


def test_a_join():
    assert show("join", room="lounge", seq=4, name="bob") == ["[lounge] bob joined"]


@pytest.mark.parametrize(("reason", "line"), [
    (None, "[lounge] bob left"),
    ("left", "[lounge] bob left"),
    ("timed out", "[lounge] bob left (timed out)"),
    ("logged out", "[lounge] bob left (logged out)"),
])
def test_a_leave_shows_why_unless_the_member_just_left(reason, line):
    data = {"room": "lounge", "seq": 5, "name": "bob"}
    if reason is not None:
        data["reason"] = reason
    assert render(Event("leave", data)) == [line]


# --- private traffic -------------------------------------------------------------------------


def test_a_whisper_reads_whisper_sender_text():
    assert show("whisper", room="lounge", **{"from": "alice"}, text="hi") == [
        "(whisper) alice: hi"]


def test_a_private_message_reads_sender_text():
    assert show("dm", **{"from": "alice"}, to=["bob"], text="hi") == ["alice: hi"]


def test_a_group_message_is_marked_with_its_recipients():
    assert show("dm", **{"from": "alice"}, to=["bob", "carol"], text="hi") == [
        "(group bob, carol) alice: hi"]


def test_a_broadcast():
    assert show("broadcast", **{"from": "alice"}, text="hello all") == [
        "(broadcast) alice: hello all"]


# --- from the operator and the connection ----------------------------------------------------


@pytest.mark.parametrize(("kind", "data", "line"), [
    ("ejected", {"room": "lounge", "reason": "spam"}, "You were removed from lounge: spam"),
    ("kicked", {"reason": "flooding"}, "You were disconnected by the operator: flooding"),
    ("lost", {"server": "tcp://h:5555", "silent": 4.2},
     "Lost contact with the broker at tcp://h:5555 (silent for 4.2 s)"),
    ("restored", {"server": "tcp://h:5555"}, "Contact with the broker restored at tcp://h:5555"),
    ("reconnecting", {"server": "tcp://h:5555"}, "Reconnecting to tcp://h:5555..."),
    ("resumed", {"name": "alice", "rooms": ["lounge", "den"]},
     "Reconnected as alice in lounge, den"),
    ("resumed", {"name": None, "rooms": []}, "Reconnected as (no nickname)"),
    ("error", {"cmd": "login", "code": "bad_username", "text": "Bad username"}, "Bad username"),
    ("info", {"text": "/quit  leave the chat"}, "/quit  leave the chat"),
    ("outcome", {"ok": True}, "Success"),
    ("outcome", {"ok": False}, "Failure"),
    ("nick", {"room": "lounge", "name": "al", "old": "alice"},
     "[lounge] alice is now known as al"),
])
def test_notices(kind, data, line):
    assert render(Event(kind, data)) == [line]


def test_a_shutdown_names_the_reason():
    [line] = show("shutdown", reason="maintenance")
    assert line.startswith("The broker is shutting down (maintenance)")


def test_an_unknown_event_kind_shows_nothing():
    assert show("no-such-kind", text="x") == []


# --- replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "line"), [
    ({"cmd": "login", "name": "alice"}, "Logged in as alice"),
    ({"cmd": "logout", "name": "alice"}, "Logged out (alice)"),
    ({"cmd": "users", "users": ["alice", "bob"]}, "Users (2): alice, bob"),
    ({"cmd": "users", "users": []}, "No users logged in"),
    ({"cmd": "rooms", "rooms": [{"room": "den", "count": 1}, {"room": "lounge", "count": 3}]},
     "Rooms (2): den (1 member), lounge (3 members)"),
    ({"cmd": "rooms", "rooms": [{"room": "attic", "count": 0}]}, "Rooms (1): attic (0 members)"),
    ({"cmd": "rooms", "rooms": []}, "No rooms"),
    ({"cmd": "create", "room": "lounge", "name": "alice", "members": ["alice"]},
     "Created and joined lounge as alice (members: alice)"),
    ({"cmd": "join", "room": "lounge", "name": "Guest1", "members": ["alice", "Guest1"]},
     "Joined lounge as Guest1 (members: alice, Guest1)"),
    ({"cmd": "leave", "room": "lounge"}, "Left lounge"),
    ({"cmd": "who", "room": "lounge", "members": ["alice", "bob"]},
     "Members of lounge (2): alice, bob"),
    ({"cmd": "whisper", "to": "bob", "room": "lounge", "text": "psst"},
     "(whisper to bob) psst"),
    ({"cmd": "msg", "to": ["bob", "carol"], "text": "hi"}, "(to bob, carol) hi"),
    ({"cmd": "broadcast", "count": 1, "text": "hi"}, "(broadcast to 1 user) hi"),
    ({"cmd": "broadcast", "count": 4, "text": "hi"}, "(broadcast to 4 users) hi"),
    ({"cmd": "away", "text": "lunch"}, "You are marked away: lunch"),
    ({"cmd": "away"}, "You are back"),
], ids=lambda v: v["cmd"] if isinstance(v, dict) else None)
def test_replies(data, line):
    assert render(Event("reply", data)) == [line]


@pytest.mark.parametrize("cmd", ["say", "ping", "bye", "hello"])
def test_replies_that_need_no_confirmation_show_nothing(cmd):
    assert show("reply", cmd=cmd) == []


# --- scroll-back -----------------------------------------------------------------------------


def test_a_history_page_is_framed_and_shows_each_event():
    lines = show("history", room="lounge", events=[
        {"kind": "join", "room": "lounge", "seq": 1, "name": "alice"},
        {"kind": "msg", "room": "lounge", "seq": 2, "from": "alice", "text": "hi"},
        {"kind": "leave", "room": "lounge", "seq": 3, "name": "alice", "reason": "left"},
    ])
    assert lines == ["--- older messages of lounge ---",
                     "[lounge] alice joined",
                     "[lounge] alice: hi",
                     "[lounge] alice left",
                     "--- end of older messages ---"]


def test_an_empty_history_page_says_there_is_nothing_older():
    assert show("history", room="lounge", events=[]) == ["No older messages in lounge"]


# --- clean: shown, never obeyed --------------------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[2J", "^[[2J"),  # clear screen
    ("\x1b]0;pwned\x07", "^[]0;pwned^G"),  # retitle the terminal
    ("\x07", "^G"),  # bell
    ("a\rb", "a^Mb"),  # carriage return: overwrite the line
    ("a\nb", "a^Jb"),  # a second line
    ("\x00", "^@"),
    ("\x7f", "^?"),
    ("\x9b2J", "<U+009B>2J"),  # the C1 CSI
    ("\x85", "<U+0085>"),  # C1 next line
    ("\u202egnp.exe", "<U+202E>gnp.exe"),  # right-to-left override
])
def test_clean_shows_control_characters_instead_of_obeying_them(raw, shown):
    assert clean(raw) == shown


@pytest.mark.parametrize("text", ["plain", "Zoë 😀 日本語", "tab-free, comma, and: colon", ""])
def test_clean_leaves_printable_text_alone(text):
    assert clean(text) == text


@pytest.mark.parametrize("text", ["👩\u200d💻", "👨\u200d👩\u200d👧", "می\u200cخواهم",
                                  "क्\u200dष"])
def test_clean_keeps_the_joiners_that_emoji_and_scripts_are_written_with(text):
    assert clean(text) == text
    assert render(Event("msg", {"room": "r", "from": "sara", "text": text})) == [
        f"[r] sara: {text}"]


@pytest.mark.parametrize(("raw", "shown"), [
    ("\u2066x\u2069", "<U+2066>x<U+2069>"),  # bidi isolates
    ("\u200fx", "<U+200F>x"),  # right-to-left mark
    ("a\u200bb", "a<U+200B>b"),  # zero-width space: hides where a word breaks
    ("\u00adx", "<U+00AD>x"),  # soft hyphen
])
def test_clean_still_shows_the_other_invisible_format_characters(raw, shown):
    assert clean(raw) == shown


BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(sorted(BIDI) + ["a", "\u200d", "\u200c", " "])))
def test_clean_never_lets_a_bidi_control_through(text):
    assert not BIDI & set(clean(text))


def _forbidden(text: str) -> list[str]:
    return [ch for ch in text if ord(ch) < 32 or ord(ch) == 127 or 0x80 <= ord(ch) <= 0x9F]


HOSTILE = "\x1b[31mev\x07il\r\x00\x9b1m\x85\x7f\n"


def _events(h: str) -> list[Event]:
    """Every event kind, with the hostile text in every field another user chooses."""
    return [
        Event("msg", {"room": h, "seq": 1, "from": h, "text": h}),
        Event("msg", {"room": h, "seq": 1, "from": h, "text": h, "me": True}),
        Event("join", {"room": h, "seq": 1, "name": h}),
        Event("leave", {"room": h, "seq": 1, "name": h, "reason": h}),
        Event("nick", {"room": h, "seq": 1, "name": h, "old": h}),
        Event("dm", {"from": h, "to": [h], "text": h}),
        Event("dm", {"from": h, "to": [h, h], "text": h}),
        Event("whisper", {"from": h, "room": h, "text": h}),
        Event("broadcast", {"from": h, "text": h}),
        Event("ejected", {"room": h, "reason": h}),
        Event("kicked", {"reason": h}),
        Event("shutdown", {"reason": h}),
        Event("lost", {"server": h, "silent": 4.0}),
        Event("restored", {"server": h}),
        Event("reconnecting", {"server": h}),
        Event("resumed", {"name": h, "rooms": [h, h]}),
        Event("error", {"cmd": "x", "code": "x", "text": h}),
        Event("history", {"room": h, "events": [
            {"kind": "msg", "room": h, "from": h, "text": h},
            {"kind": "join", "room": h, "name": h},
            {"kind": "leave", "room": h, "name": h, "reason": h}]}),
        Event("history", {"room": h, "events": []}),
        Event("reply", {"cmd": "login", "name": h}),
        Event("reply", {"cmd": "logout", "name": h}),
        Event("reply", {"cmd": "users", "users": [h, h]}),
        Event("reply", {"cmd": "rooms", "rooms": [{"room": h, "count": 2}]}),
        Event("reply", {"cmd": "create", "room": h, "name": h, "members": [h]}),
        Event("reply", {"cmd": "join", "room": h, "name": h, "members": [h, h]}),
        Event("reply", {"cmd": "leave", "room": h}),
        Event("reply", {"cmd": "who", "room": h, "members": [h]}),
        Event("reply", {"cmd": "whisper", "to": h, "room": h, "text": h}),
        Event("reply", {"cmd": "msg", "to": [h], "text": h}),
        Event("reply", {"cmd": "broadcast", "count": 2, "text": h}),
        Event("reply", {"cmd": "away", "text": h}),
        Event("subject", {"room": h, "seq": 1, "name": h, "text": h}),
        Event("mode", {"room": h, "seq": 1, "name": h, "invite": True, "subject_by": h}),
        Event("role", {"room": h, "seq": 1, "name": h, "role": h, "by": h}),
        Event("invited", {"room": h, "by": h}),
        Event("reply", {"cmd": "rooms", "rooms": [{"room": h, "closed": True},
                                                  {"room": h, "count": 1, "subject": h}]}),
        Event("reply", {"cmd": "join", "room": h, "name": h, "members": [h],
                        "subject": h, "role": "owner"}),
        Event("reply", {"cmd": "subject", "room": h, "text": h, "by": h}),
        Event("reply", {"cmd": "bans", "room": h, "bans": [
            {"name": h, "by": h, "kind": "key", "reason": h, "until": 2e9}]}),
        Event("reply", {"cmd": "ban", "room": h, "bans": [
            {"name": h, "by": h, "kind": "name", "reason": h}]}),
        Event("reply", {"cmd": "kick", "room": h, "name": h}),
        Event("reply", {"cmd": "invite", "room": h, "name": h}),
        Event("reply", {"cmd": "unban", "room": h, "name": h}),
    ]


def test_every_kind_a_peer_can_cause_is_covered_above():
    # "info" is the client's own text (help), "outcome" its Success/Failure: never a peer's.
    assert {e.kind for e in _events("x")} == set(RENDERERS) - {"info", "outcome"}


@pytest.mark.parametrize("event", _events(HOSTILE), ids=lambda e: e.kind)
def test_no_control_character_from_a_peer_reaches_the_terminal(event):
    lines = render(event)
    assert lines, "every kind above shows something"
    for line in lines:
        assert _forbidden(line) == [], line
    assert any("^[[31m" in line for line in lines), "the hostile text is shown, not dropped"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_clean_never_lets_a_control_character_through(text):
    assert _forbidden(clean(text)) == []


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_rendered_events_never_carry_control_characters(text):
    for event in _events(text):
        for line in render(event):
            assert _forbidden(line) == []
