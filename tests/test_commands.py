"""What a typed line means: client.commands.parse, a pure function of the line and the room."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.commands import COMMANDS, Local, Refused, Send, find, help_text, parse
from schema import ProtocolError, request
from schema import parse as validate
from schema import protocol as P

LOBBY = None
ROOM = "lounge"
LONG_TEXT = "x" * P.TEXT_MAX
TOO_LONG_TEXT = "x" * (P.TEXT_MAX + 1)


def sends(cmd: str, **fields) -> Send:
    return Send(((cmd, fields),))


def refused_text(line: str, room: str | None = LOBBY) -> str:
    got = parse(line, room)
    assert isinstance(got, Refused), got
    return got.text


# --- slash optional in the lobby, plain text said in a room ---------------------------------


@pytest.mark.parametrize("line", ["login bob", "/login bob", "  /login   bob  ", "LOGIN bob"])
def test_in_the_lobby_the_slash_is_optional(line):
    assert parse(line, LOBBY) == sends("login", name="bob")


@pytest.mark.parametrize("line", ["login bob", "hello everyone", "quit", "exit"])
def test_in_a_room_plain_text_is_said_to_the_current_room(line):
    assert parse(line, ROOM) == sends("say", room=ROOM, text=line)


def test_said_text_is_trimmed_but_keeps_its_inner_spacing():
    assert parse("  a   b  ", ROOM) == sends("say", room=ROOM, text="a   b")


def test_in_a_room_slash_commands_still_work():
    assert parse("/login bob", ROOM) == sends("login", name="bob")
    assert parse("/msg bob hi", ROOM) == sends("msg", to=["bob"], text="hi")


def test_a_double_slash_in_a_room_says_a_line_starting_with_a_slash():
    assert parse("//help me", ROOM) == sends("say", room=ROOM, text="/help me")


@pytest.mark.parametrize("line", ["", "   ", "\t"])
def test_a_blank_line_means_nothing(line):
    assert parse(line, LOBBY) is None
    assert parse(line, ROOM) is None


@pytest.mark.parametrize("line", ["hello", "/nosuch", "frobnicate now"])
def test_an_unknown_command_in_the_lobby_is_invalid(line):
    assert refused_text(line, LOBBY) == "Invalid command"


def test_an_unknown_slash_command_in_a_room_is_invalid_not_said():
    assert refused_text("/nosuch thing", ROOM) == "Invalid command"


def test_text_over_65535_characters_in_a_room_is_a_bad_message():
    assert refused_text(TOO_LONG_TEXT, ROOM) == "Bad message"
    assert parse(LONG_TEXT, ROOM) == sends("say", room=ROOM, text=LONG_TEXT)


# --- login / logout / lists ------------------------------------------------------------------


@pytest.mark.parametrize("line", ["/login", "/login   ", "/login a b", "/login " + "x" * 21,
                                  "/login a,b", "/login /bob"])
def test_a_bad_login_prints_exactly_bad_username(line):
    assert refused_text(line) == "Bad username"


def test_login_accepts_twenty_characters():
    assert parse("/login " + "x" * 20, LOBBY) == sends("login", name="x" * 20)


@pytest.mark.parametrize(("line", "expected"), [
    ("/logout", sends("logout")),
    ("users", sends("users")),
    ("/rooms", sends("rooms")),
    ("ls", sends("rooms")),
    ("/ls", sends("rooms")),
    ("list", Send((("users", {}), ("rooms", {})))),
    ("/list", Send((("users", {}), ("rooms", {})))),
])
def test_commands_without_arguments(line, expected):
    assert parse(line, LOBBY) == expected


@pytest.mark.parametrize("line", ["/logout now", "/users all", "/rooms x", "/ls x",
                                  "/list x", "/quit now", "/exit 1"])
def test_extra_arguments_are_an_invalid_command(line):
    assert refused_text(line) == "Invalid command"


# --- create / join ---------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["create", "join"])
def test_create_and_join_take_a_room_and_an_optional_name(cmd):
    assert parse(f"{cmd} lounge", LOBBY) == sends(cmd, room="lounge")
    assert parse(f"/{cmd} lounge bob", ROOM) == sends(cmd, room="lounge", name="bob")


@pytest.mark.parametrize("cmd", ["create", "join"])
@pytest.mark.parametrize(("rest", "text"), [
    ("", "Invalid command"),
    ("a b c", "Invalid command"),
    ("x" * 33, "Bad room name"),
    ("a,b", "Bad room name"),
    ("lounge " + "x" * 21, "Bad username"),
    ("lounge a,b", "Bad username"),
])
def test_create_and_join_refusals(cmd, rest, text):
    assert refused_text(f"/{cmd} {rest}") == text


# --- leave / who -----------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["leave", "who"])
def test_leave_and_who_default_to_the_current_room(cmd):
    assert parse(f"/{cmd}", ROOM) == sends(cmd, room=ROOM)
    assert parse(f"/{cmd} den", ROOM) == sends(cmd, room="den")
    assert parse(f"{cmd} den", LOBBY) == sends(cmd, room="den")


@pytest.mark.parametrize("cmd", ["leave", "who"])
def test_leave_and_who_in_the_lobby_need_a_room(cmd):
    got = parse(f"/{cmd}", LOBBY)
    assert isinstance(got, Refused) and got.code == "not_a_member"
    assert refused_text(f"/{cmd} a b", ROOM) == "Invalid command"
    assert refused_text(f"/{cmd} {'x' * 33}", ROOM) == "Bad room name"


# --- whisper ---------------------------------------------------------------------------------


def test_whisper_goes_to_a_member_of_the_current_room():
    assert parse("/whisper bob meet  me later", ROOM) == sends(
        "whisper", room=ROOM, to="bob", text="meet  me later")


@pytest.mark.parametrize(("line", "text"), [
    ("/whisper", "Invalid command"),
    ("/whisper bob", "Invalid command"),
    ("/whisper bob   ", "Invalid command"),
    ("/whisper " + "x" * 21 + " hi", "Bad username"),
    ("/whisper a,b hi", "Bad username"),
    ("/whisper bob " + TOO_LONG_TEXT, "Bad message"),
])
def test_whisper_refusals(line, text):
    assert refused_text(line, ROOM) == text


def test_whisper_in_the_lobby_needs_a_room():
    got = parse("whisper bob hi", LOBBY)
    assert isinstance(got, Refused) and got.code == "not_a_member"


# --- msg / sendto ----------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["/msg bob hi  there", "msg bob hi  there",
                                  "sendto bob hi  there", "/sendto bob hi  there"])
def test_msg_and_its_alias_sendto(line):
    assert parse(line, LOBBY) == sends("msg", to=["bob"], text="hi  there")


def test_msg_to_several_names_separated_by_commas():
    assert parse("/msg bob,carol,dave hi", ROOM) == sends(
        "msg", to=["bob", "carol", "dave"], text="hi")


def test_msg_to_twenty_names_and_the_longest_text_is_accepted():
    names = [f"u{i}" for i in range(P.RECIPIENTS_MAX)]
    got = parse(f"/msg {','.join(names)} {LONG_TEXT}", LOBBY)
    assert got == sends("msg", to=names, text=LONG_TEXT)


@pytest.mark.parametrize("line", [
    "/msg",
    "/msg bob",
    "/msg bob   ",
    "/msg " + "x" * 21 + " hi",
    "/msg bob," + "x" * 21 + " hi",
    "/msg bob,,carol hi",
    "/msg bob, hi",
    "/msg " + ",".join(f"u{i}" for i in range(P.RECIPIENTS_MAX + 1)) + " hi",
    "sendto",
], ids=["missing-both", "missing-text", "blank-text", "long-name", "long-second-name",
        "empty-name", "trailing-comma", "21-names", "sendto-alone"])
def test_a_bad_msg_prints_exactly_bad_username(line):
    assert refused_text(line) == "Bad username"


def test_msg_text_over_65535_characters_prints_exactly_bad_message():
    assert refused_text("/msg bob " + TOO_LONG_TEXT) == "Bad message"


# --- broadcast / me --------------------------------------------------------------------------


def test_broadcast_takes_the_rest_of_the_line():
    assert parse("/broadcast hello  all", ROOM) == sends("broadcast", text="hello  all")
    assert parse("broadcast hi", LOBBY) == sends("broadcast", text="hi")


def test_broadcast_refusals():
    assert refused_text("/broadcast") == "Invalid command"
    assert refused_text("/broadcast " + TOO_LONG_TEXT) == "Bad message"


def test_me_is_an_action_in_the_current_room():
    assert parse("/me waves", ROOM) == sends("say", room=ROOM, text="waves", me=True)
    assert refused_text("/me", ROOM) == "Invalid command"
    got = parse("/me waves", LOBBY)
    assert isinstance(got, Refused) and got.code == "not_a_member"


# --- history ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "n"), [("/history", 20), ("/history 1", 1),
                                         ("/history 5", 5), ("/history 200", 200)])
def test_history_pages_back_n_messages_of_the_current_room(line, n):
    assert parse(line, ROOM) == Local("history", n)


@pytest.mark.parametrize("arg", ["0", "201", "-1", "abc", "1 2", "2.5", "+3"])
def test_history_with_a_bad_count_is_invalid(arg):
    assert refused_text(f"/history {arg}", ROOM) == "Invalid command"


def test_history_with_a_non_decimal_digit_is_invalid_not_a_crash():
    assert refused_text("/history ²", ROOM) == "Invalid command"


def test_history_in_the_lobby_needs_a_room():
    got = parse("/history", LOBBY)
    assert isinstance(got, Refused) and got.code == "not_a_member"


# --- help / quit -----------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ("/help", Local("help", None)),
    ("help", Local("help", None)),
    ("commands", Local("help", None)),
    ("/commands", Local("help", None)),
    ("/help msg", Local("help", "msg")),
    ("/help /msg", Local("help", "msg")),
])
def test_help_and_its_alias(line, expected):
    assert parse(line, LOBBY) == expected


def test_help_lists_every_command_usage():
    lines = help_text()
    assert "slash is optional" in lines[0]
    for spec in COMMANDS:
        assert any(spec.usage in line and spec.doc in line for line in lines[1:]), spec.usage
    assert len(lines) == 1 + len(COMMANDS)


def test_help_for_one_command_shows_its_usage_and_aliases():
    assert help_text("msg") == [
        "/msg NAME[,NAME...] TEXT  private message to a user, or to several (also /sendto)"]
    assert help_text("sendto") == help_text("msg")
    assert help_text("login") == ["/login NAME  take a nickname (1-20 characters, no spaces)"]


def test_help_for_an_unknown_command_says_so():
    assert help_text("frob") == ["No such command: frob"]


@pytest.mark.parametrize("line", ["/quit", "/exit", "quit", "exit", "/QUIT"])
def test_quit_and_its_aliases(line):
    assert parse(line, LOBBY) == Local("quit")


@pytest.mark.parametrize("line", ["/quit", "/exit"])
def test_quit_in_a_room_needs_the_slash(line):
    assert parse(line, ROOM) == Local("quit")


# --- the command table -----------------------------------------------------------------------


def test_every_command_name_and_alias_is_found_case_insensitively():
    names = [n for spec in COMMANDS for n in spec.names]
    assert len(names) == len(set(names))
    for spec in COMMANDS:
        for name in spec.names:
            assert find(name) is spec
            assert find(name.upper()) is spec
    assert find("nosuch") is None


def test_the_table_has_the_commands_of_the_spec():
    names = {n for spec in COMMANDS for n in spec.names}
    assert {"login", "logout", "users", "rooms", "ls", "list", "create", "join", "leave",
            "who", "whisper", "msg", "sendto", "broadcast", "history", "help", "commands",
            "quit", "exit"} <= names


def test_refusal_texts_come_from_the_schema():
    assert Refused("bad_username").text == "Bad username"
    assert Refused("invalid_command", "custom").text == "custom"


# --- property: a line is never a crash, and what is sent passes the broker's schema ---------

_words = st.sampled_from(sorted({n for spec in COMMANDS for n in spec.names}) + ["nosuch"])
_arg = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=25)
_lines = st.builds(lambda slash, word, args: f"{slash}{word} {' '.join(args)}",
                   st.sampled_from(["", "/", "//"]), _words, st.lists(_arg, max_size=4)) | _arg


@settings(max_examples=300, deadline=None)
@given(_lines, st.sampled_from([LOBBY, ROOM]))
def test_any_line_is_a_command_and_every_request_sent_passes_the_schema(line, room):
    got = parse(line, room)
    assert got is None or isinstance(got, Send | Local | Refused)
    if isinstance(got, Refused):
        assert got.text
    if isinstance(got, Send):
        for cmd, fields in got.requests:
            try:
                validate(request(1, cmd, **fields))
            except ProtocolError as err:  # pragma: no cover - the failure message
                pytest.fail(f"{line!r} sent {cmd} {fields} which the broker refuses: {err}")
