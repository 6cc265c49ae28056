"""The room moderation commands as typed: what each line sends, and its refusals."""

from __future__ import annotations

import pytest

from client.commands import NO_ROOM, Refused, Send, help_text, parse


def sent(line: str, room: str | None = "lounge") -> tuple:
    command = parse(line, room)
    assert isinstance(command, Send), command
    return command.requests


@pytest.mark.parametrize(("line", "expected"), [
    ("/topic welcome all", ("subject", {"room": "lounge", "text": "welcome all"})),
    ("/topic", ("subject", {"room": "lounge"})),
    ("/topic --clear", ("subject", {"room": "lounge", "text": ""})),
    ("/mode", ("mode", {"room": "lounge"})),
    ("/mode invite on", ("mode", {"room": "lounge", "invite": True})),
    ("/mode secret off", ("mode", {"room": "lounge", "secret": False})),
    ("/mode key sesame", ("mode", {"room": "lounge", "key": "sesame"})),
    ("/mode key off", ("mode", {"room": "lounge", "key": ""})),
    ("/mode topic anyone", ("mode", {"room": "lounge", "subject_by": "anyone"})),
    ("/mode history joined", ("mode", {"room": "lounge", "history": "joined"})),
    ("/invite eve", ("invite", {"room": "lounge", "name": "eve"})),
    ("/kick eve", ("kick", {"room": "lounge", "name": "eve"})),
    ("/kick eve too loud", ("kick", {"room": "lounge", "name": "eve",
                                     "reason": "too loud"})),
    ("/ban eve", ("ban", {"room": "lounge", "name": "eve", "key": True})),
    ("/ban eve 2h spam", ("ban", {"room": "lounge", "name": "eve", "key": True,
                                  "duration": 7200, "reason": "spam"})),
    ("/ban eve spam again", ("ban", {"room": "lounge", "name": "eve", "key": True,
                                     "reason": "spam again"})),
    ("/unban eve", ("unban", {"room": "lounge", "name": "eve"})),
    ("/bans", ("bans", {"room": "lounge"})),
    ("/op bob", ("role", {"room": "lounge", "name": "bob", "role": "moderator"})),
    ("/deop bob", ("role", {"room": "lounge", "name": "bob", "role": "member"})),
    ("/owner bob", ("role", {"room": "lounge", "name": "bob", "role": "owner"})),
    ("/join vault key=sesame", ("join", {"room": "vault", "key": "sesame"})),
    ("/join vault bob key=sesame", ("join", {"room": "vault", "name": "bob",
                                             "key": "sesame"})),
])
def test_each_room_command_sends_its_request(line, expected):
    assert sent(line) == (expected,)


@pytest.mark.parametrize("line", ["/mode invite maybe", "/mode colour red", "/mode invite",
                                  "/op", "/op a b", "/kick", "/ban", "/bans now"])
def test_a_room_command_used_wrongly_shows_its_usage(line):
    command = parse(line, "lounge")
    assert isinstance(command, Refused) and command.text.startswith("Usage: /")


@pytest.mark.parametrize("line", ["/topic x", "/mode", "/invite eve", "/kick eve",
                                  "/ban eve", "/unban eve", "/bans", "/op bob"])
def test_room_commands_need_a_current_room(line):
    assert parse(line, None) == NO_ROOM


def test_help_lists_the_room_commands():
    text = "\n".join(help_text())
    for word in ("/topic", "/mode", "/invite", "/kick", "/ban", "/unban", "/bans", "/op",
                 "/deop", "/owner", "key=KEY"):
        assert word in text
    assert "history shared|joined" in "\n".join(help_text("mode"))
