"""What a typed line means: client.commands.parse, a pure function of the line and the room."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.commands import (
    COMMANDS,
    Local,
    Refused,
    Send,
    as_name,
    find,
    help_text,
    parse,
    reports_outcome,
)
from schema import ProtocolError, request
from schema import parse as validate
from schema import protocol as P

LOBBY = None
ROOM = "lounge"
LONG_TEXT = "x" * P.TEXT_MAX
NO_ROOM_TEXT = "You are not in a room: /join ROOM first"
TOO_LONG_TEXT = "x" * (P.TEXT_MAX + 1)


def sends(cmd: str, **fields) -> Send:
    return Send(((cmd, fields),))


def refused_text(line: str, room: str | None = LOBBY) -> str:
    got = parse(line, room)
    assert isinstance(got, Refused), got
    return got.text


def usage_of(name: str) -> str:
    """The refusal of a malformed command: it names the command and shows its usage."""
    spec = find(name)
    assert spec is not None
    return f"Usage: {spec.usage} - {spec.doc}"


# --- slash optional in the lobby, plain text said in a room ---------------------------------


@pytest.mark.parametrize("line", ["login bob", "/login bob", "  /login   bob  ", "LOGIN bob"])
def test_in_the_lobby_the_slash_is_optional(line):
    assert parse(line, LOBBY) == sends("login", name="bob")


@pytest.mark.parametrize("line", ["login bob", "hello everyone", "exit", "leave now",
                                  "join the club", "list all", "Quit", "create"])
def test_in_a_room_plain_text_is_said_to_the_current_room(line):
    assert parse(line, ROOM) == sends("say", room=ROOM, text=line)


@pytest.mark.parametrize(("line", "expected"), [
    ("list", Send((("users", {}), ("rooms", {})))),
    ("leave", sends("leave", room=ROOM)),
    ("quit", Local("quit")),
    ("commands", Local("help", None)),
    ("join den", sends("join", room="den")),
    ("create den", sends("create", room="den")),
    ("create   den ", sends("create", room="den")),
])
def test_the_lobby_program_s_words_alone_on_a_line_are_commands_in_a_room_too(line,
                                                                              expected):
    assert parse(line, ROOM) == expected


@pytest.mark.parametrize("word", ["list", "leave", "quit", "commands", "join den"])
def test_a_leading_space_or_say_says_a_command_word(word):
    assert parse(" " + word, ROOM) == sends("say", room=ROOM, text=word)
    assert parse("/say " + word, ROOM) == sends("say", room=ROOM, text=word)


def test_say_needs_a_room_and_a_text():
    assert refused_text("/say", ROOM) == usage_of("say")
    assert parse("/say hi", LOBBY) == Refused("not_a_member", NO_ROOM_TEXT)


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


@pytest.mark.parametrize("line", ["hello", "frobnicate now"])
def test_a_bare_unknown_line_in_the_lobby_is_exactly_invalid_command(line):
    assert refused_text(line, LOBBY) == "Invalid command"  # the assignment's text


@pytest.mark.parametrize("room", [LOBBY, ROOM])
def test_an_unknown_slash_command_names_itself_and_is_not_said(room):
    got = parse("/nosuch thing", room)
    assert got == Refused("unknown_command", "Unknown command: /nosuch (/help lists them)")


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


@pytest.mark.parametrize(("line", "name"), [
    ("/logout now", "logout"), ("/users all", "users"), ("/rooms x", "rooms"),
    ("/ls x", "rooms"), ("/list x", "list"), ("/quit now", "quit"), ("/exit 1", "quit"),
    ("users all", "users"), ("list x", "list")])
def test_extra_arguments_name_the_command_and_show_its_usage(line, name):
    assert refused_text(line) == usage_of(name)


def test_the_assignment_s_bare_commands_keep_its_exact_texts():
    assert refused_text("logout now") == "Invalid command"
    assert refused_text("login a b") == "Bad username"
    assert refused_text("sendto bob") == "Bad username"


# --- create / join ---------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["create", "join"])
def test_create_and_join_take_a_room_and_an_optional_name(cmd):
    assert parse(f"{cmd} lounge", LOBBY) == sends(cmd, room="lounge")
    assert parse(f"/{cmd} lounge bob", ROOM) == sends(cmd, room="lounge", name="bob")


@pytest.mark.parametrize("cmd", ["create", "join"])
@pytest.mark.parametrize(("rest", "text"), [
    ("", "usage"),
    ("a b c", "usage"),
    ("x" * 33, "Bad room name"),
    ("a,b", "Bad room name"),
    ("lounge " + "x" * 21, "Bad username"),
    ("lounge a,b", "Bad username"),
])
def test_create_and_join_refusals(cmd, rest, text):
    assert refused_text(f"/{cmd} {rest}") == (usage_of(cmd) if text == "usage" else text)


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
    assert refused_text(f"/{cmd} a b", ROOM) == usage_of(cmd)
    assert refused_text(f"/{cmd} {'x' * 33}", ROOM) == "Bad room name"


# --- whisper ---------------------------------------------------------------------------------


def test_whisper_goes_to_a_member_of_the_current_room():
    assert parse("/whisper bob meet  me later", ROOM) == sends(
        "whisper", room=ROOM, to="bob", text="meet  me later")


@pytest.mark.parametrize(("line", "text"), [
    ("/whisper", usage_of("whisper")),
    ("/whisper bob", usage_of("whisper")),
    ("/whisper bob   ", usage_of("whisper")),
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


@pytest.mark.parametrize("names", ["bob, carol", "bob ,carol", "bob , carol", "bob,  carol"])
def test_msg_recipients_may_be_separated_by_a_comma_and_spaces(names):
    """The peer-list program writes ``bob, carol``."""
    assert parse(f"/msg {names} hi  there", ROOM) == sends(
        "msg", to=["bob", "carol"], text="hi  there")


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
    assert refused_text("/broadcast") == usage_of("broadcast")
    assert refused_text("/broadcast " + TOO_LONG_TEXT) == "Bad message"


def test_me_is_an_action_in_the_current_room():
    assert parse("/me waves", ROOM) == sends("say", room=ROOM, text="waves", me=True)
    assert refused_text("/me", ROOM) == usage_of("me")
    got = parse("/me waves", LOBBY)
    assert isinstance(got, Refused) and got.code == "not_a_member"


# --- history ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "n"), [("/history", 20), ("/history 1", 1),
                                         ("/history 5", 5), ("/history 200", 200)])
def test_history_pages_back_n_messages_of_the_current_room(line, n):
    assert parse(line, ROOM) == Local("history", n)


@pytest.mark.parametrize("arg", ["0", "201", "-1", "abc", "1 2", "2.5", "+3"])
def test_history_with_a_bad_count_is_invalid(arg):
    assert refused_text(f"/history {arg}", ROOM) == usage_of("history")


def test_history_with_a_non_decimal_digit_is_invalid_not_a_crash():
    assert refused_text("/history ²", ROOM) == usage_of("history")


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


@pytest.mark.parametrize("line", ["/quit", "/exit", "quit"])
def test_quit_in_a_room(line):
    assert parse(line, ROOM) == Local("quit")


# --- nick, away, window, query, aliases --------------------------------------------------


def test_nick_takes_a_new_name_in_a_room_too():
    assert parse("/nick bob2", ROOM) == sends("login", name="bob2")
    assert parse("nick bob2", LOBBY) == sends("login", name="bob2")
    assert refused_text("/nick", ROOM) == "Bad username"
    assert refused_text("/nick a b", ROOM) == "Bad username"


def test_away_with_a_reason_and_back_without_one():
    assert parse("/away gone  fishing ", ROOM) == sends("away", text="gone  fishing")
    assert parse("/away", ROOM) == sends("away")
    assert parse("/away " + "x" * P.AWAY_MAX, ROOM) == sends("away", text="x" * P.AWAY_MAX)
    assert refused_text("/away " + "x" * (P.AWAY_MAX + 1), ROOM) == "Bad message"
    assert refused_text("/away gone\x1b", ROOM) == "Bad message"


@pytest.mark.parametrize(("line", "n"), [("/window 1", 1), ("/window 12", 12),
                                         ("window 3", 3)])
def test_window_switches_to_a_room_by_number(line, n):
    assert parse(line, LOBBY) == Local("window", n)


@pytest.mark.parametrize("arg", ["", "0", "-1", "x", "1 2", "²"])
def test_window_needs_one_positive_number(arg):
    assert refused_text(f"/window {arg}", ROOM) == usage_of("window")


def test_query_opens_and_closes_a_private_conversation():
    assert parse("/query bob", ROOM) == Local("query", "bob")
    assert parse("/q bob", LOBBY) == Local("query", "bob")
    assert parse("/query", ROOM) == Local("query", None)
    assert refused_text("/query a,b", ROOM) == "Bad username"
    assert refused_text("/query bob carol", ROOM) == usage_of("query")


@pytest.mark.parametrize("room", [LOBBY, ROOM])
def test_in_a_query_plain_text_goes_to_that_person(room):
    assert parse("hi  there", room, "bob") == sends("msg", to=["bob"], text="hi  there")
    assert parse("//help", room, "bob") == sends("msg", to=["bob"], text="/help")
    assert parse(" quit", room, "bob") == sends("msg", to=["bob"], text="quit")
    assert parse("quit", room, "bob") == Local("quit")
    assert parse("/me waves", ROOM, "bob") == sends("say", room=ROOM, text="waves", me=True)
    assert parse(TOO_LONG_TEXT, room, "bob") == Refused("bad_message")


@pytest.mark.parametrize(("alias", "name"), [("j", "join"), ("part", "leave"),
                                             ("names", "who"), ("w", "who"),
                                             ("q", "query"), ("query", "query")])
def test_the_usual_aliases(alias, name):
    assert find(alias) is find(name)


def test_aliases_parse_as_their_command():
    assert parse("/j den", ROOM) == sends("join", room="den")
    assert parse("/part", ROOM) == sends("leave", room=ROOM)
    assert parse("/names", ROOM) == sends("who", room=ROOM)
    assert parse("/w den", ROOM) == sends("who", room="den")


# --- the arrival question, and the assignment's Success/Failure ----------------------------


@pytest.mark.parametrize(("line", "name"), [
    ("alice", "alice"), ("  Dave ", "Dave"), ("login alice", None), ("list", None),
    ("quit", None), ("/alice", None), ("two words", None), ("a,b", None), ("", None),
    ("x" * 21, None)])
def test_a_single_word_that_is_no_command_answers_the_name_question(line, name):
    assert as_name(line) == name


@pytest.mark.parametrize(("line", "room", "reports"), [
    ("login bob", LOBBY, True), ("sendto bob hi", LOBBY, True), ("logout", LOBBY, True),
    ("LOGIN bob", LOBBY, True), ("/login bob", LOBBY, False), ("/msg bob hi", LOBBY, False),
    ("msg bob hi", LOBBY, False), ("users", LOBBY, False), ("/logout", ROOM, False)])
def test_success_or_failure_is_reported_for_the_assignment_s_bare_commands(line, room,
                                                                          reports):
    assert reports_outcome(line, room) is reports


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
            "quit", "exit", "nick", "away", "window", "query", "q", "say", "j", "part",
            "names", "w"} <= names


def test_refusal_texts_come_from_the_schema():
    assert Refused("bad_username").text == "Bad username"
    assert Refused("invalid_command", "custom").text == "custom"


# --- property: a line is never a crash, and what is sent passes the broker's schema ---------

_words = st.sampled_from(sorted({n for spec in COMMANDS for n in spec.names}) + ["nosuch"])
_arg = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=25)
_lines = st.builds(lambda slash, word, args: f"{slash}{word} {' '.join(args)}",
                   st.sampled_from(["", "/", "//"]), _words, st.lists(_arg, max_size=4)) | _arg


@settings(max_examples=300, deadline=None)
@given(_lines, st.sampled_from([LOBBY, ROOM]), st.sampled_from([None, "bob"]))
def test_any_line_is_a_command_and_every_request_sent_passes_the_schema(line, room, query):
    got = parse(line, room, query)
    assert got is None or isinstance(got, Send | Local | Refused)
    if isinstance(got, Refused):
        assert got.text
    if isinstance(got, Send):
        for cmd, fields in got.requests:
            try:
                validate(request(1, cmd, **fields))
            except ProtocolError as err:  # pragma: no cover - the failure message
                pytest.fail(f"{line!r} sent {cmd} {fields} which the broker refuses: {err}")
