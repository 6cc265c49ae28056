"""What a typed line means: a pure function from text (and the current room) to a command.

No sockets, no state beyond what is passed in, so every corner is unit-tested directly.
The command table below is also what ``/help`` prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schema import ERRORS
from schema import protocol as P


@dataclass(frozen=True)
class Send:
    """Requests for the broker (``list`` is two), carried out in order."""

    requests: tuple[tuple[str, dict[str, Any]], ...]


@dataclass(frozen=True)
class Local:
    """Something the client does by itself: ``help`` (arg: a command or None), ``quit``,
    ``history`` (arg: how many), ``window`` (arg: the room's number, from 1, in the order
    joined) and ``query`` (arg: the nickname plain text now goes to, or None to stop)."""

    action: str
    arg: Any = None


@dataclass(frozen=True)
class Refused:
    """The line is wrong; ``text`` is what to print (exact texts come from the schema)."""

    code: str
    text: str = ""

    def __post_init__(self) -> None:
        if not self.text:
            object.__setattr__(self, "text", ERRORS[self.code])


Command = Send | Local | Refused


def send(cmd: str, **fields: Any) -> Send:
    return Send(((cmd, {k: v for k, v in fields.items() if v is not None}),))


INVALID = Refused("invalid_command")
BAD_USERNAME = Refused("bad_username")
BAD_MESSAGE = Refused("bad_message")
BAD_ROOM = Refused("bad_room_name")
BAD_PASSWORD = Refused("bad_password", f"Bad password: {P.PASSWORD_MIN} to "
                                       f"{P.PASSWORD_MAX} characters, no spaces")
NO_ROOM = Refused("not_a_member", "You are not in a room: /join ROOM first")


@dataclass(frozen=True)
class Spec:
    names: tuple[str, ...]
    usage: str
    doc: str
    parse: Callable[[str, str | None], Command] = field(repr=False)
    details: str = ""  # more for /help COMMAND


def _words(rest: str) -> list[str]:
    return rest.split()


def _split_text(rest: str) -> tuple[str, str]:
    """``NAME TEXT...`` -> (NAME, TEXT); the text keeps its inner spacing."""
    head, _, text = rest.strip().partition(" ")
    return head, text.strip()


def _no_args(cmd: str) -> Callable[[str, str | None], Command]:
    return lambda rest, room: send(cmd) if not rest.strip() else INVALID


def _login(rest: str, room: str | None) -> Command:
    words = _words(rest)
    if len(words) != 1 or not P.is_nickname(words[0]):
        return BAD_USERNAME
    return send("login", name=words[0])


def _register(rest: str, room: str | None) -> Command:
    words = _words(rest)
    if len(words) > 1:
        return INVALID
    if words and not P.is_password(words[0]):
        return BAD_PASSWORD
    return send("register", password=words[0] if words else None)


def _identify(rest: str, room: str | None) -> Command:
    words = _words(rest)
    if len(words) != 2:
        return INVALID
    if not P.is_nickname(words[0]):
        return BAD_USERNAME
    if not P.is_password(words[1]):
        return BAD_PASSWORD
    return send("login", name=words[0], password=words[1])


def _enter(cmd: str) -> Callable[[str, str | None], Command]:
    def parse(rest: str, room: str | None) -> Command:
        words = _words(rest)
        key = None
        if cmd == "join" and len(words) >= 2 and words[-1].startswith("key="):
            key = words.pop()[4:]  # a keyed room: /join ROOM [NAME] key=KEY
            if not P.is_room_key(key):
                return Refused("invalid_command", f"A room key is 1 to {P.ROOM_KEY_MAX} "
                                                  f"characters, no spaces")
        if not 1 <= len(words) <= 2:
            return INVALID
        if not P.is_room_name(words[0]):
            return BAD_ROOM
        if len(words) == 2 and not P.is_nickname(words[1]):
            return BAD_USERNAME
        return send(cmd, room=words[0], name=words[1] if len(words) == 2 else None, key=key)
    return parse


def _room_or_current(cmd: str) -> Callable[[str, str | None], Command]:
    def parse(rest: str, room: str | None) -> Command:
        words = _words(rest)
        if len(words) > 1:
            return INVALID
        target = words[0] if words else room
        if target is None:
            return NO_ROOM
        if not P.is_room_name(target):
            return BAD_ROOM
        return send(cmd, room=target)
    return parse


def _list(rest: str, room: str | None) -> Command:
    if rest.strip():
        return INVALID
    return Send((("users", {}), ("rooms", {})))


def _whisper(rest: str, room: str | None) -> Command:
    name, text = _split_text(rest)
    if not name or not text:
        return INVALID
    if not P.is_nickname(name):
        return BAD_USERNAME
    if len(text) > P.TEXT_MAX:
        return BAD_MESSAGE
    if room is None:
        return NO_ROOM
    return send("whisper", room=room, to=name, text=text)


# ``bob,carol TEXT`` or ``bob, carol TEXT`` (the peer-list program's separator): names
# joined by commas, with or without spaces around them, then the text.
_RECIPIENTS = re.compile(r"\s*([^\s,]+(?:\s*,\s*[^\s,]+)*)(?:\s+(.*))?", re.DOTALL)


def _msg(rest: str, room: str | None) -> Command:
    found = _RECIPIENTS.fullmatch(rest)
    to = [n.strip() for n in found[1].split(",")] if found else []
    text = (found[2] or "").strip() if found else ""
    if not to or not text or len(to) > P.RECIPIENTS_MAX:
        return BAD_USERNAME
    if not all(P.is_nickname(n) for n in to):
        return BAD_USERNAME
    if len(text) > P.TEXT_MAX:
        return BAD_MESSAGE
    return send("msg", to=to, text=text)


def _nick(rest: str, room: str | None) -> Command:
    """A new nickname, in a room too: the broker renames us everywhere at once."""
    return _login(rest, room)


def _away(rest: str, room: str | None) -> Command:
    text = rest.strip()
    if len(text) > P.AWAY_MAX or not text.isprintable():
        return BAD_MESSAGE
    return send("away", text=text or None)  # no text: back


def _window(rest: str, room: str | None) -> Command:
    words = _words(rest)
    if len(words) != 1 or not (words[0].isascii() and words[0].isdigit()) \
            or int(words[0]) < 1:
        return INVALID
    return Local("window", int(words[0]))


def _query(rest: str, room: str | None) -> Command:
    words = _words(rest)
    if len(words) > 1:
        return INVALID
    if words and not P.is_nickname(words[0]):
        return BAD_USERNAME
    return Local("query", words[0] if words else None)


def _broadcast(rest: str, room: str | None) -> Command:
    text = rest.strip()
    if not text:
        return INVALID
    if len(text) > P.TEXT_MAX:
        return BAD_MESSAGE
    return send("broadcast", text=text)


def _say(text: str, room: str | None, me: bool = False) -> Command:
    if room is None:
        return NO_ROOM
    if not text:
        return INVALID
    if len(text) > P.TEXT_MAX:
        return BAD_MESSAGE
    return send("say", room=room, text=text, me=True if me else None)


def _me(rest: str, room: str | None) -> Command:
    return _say(rest.strip(), room, me=True)


def _dm(text: str, to: str) -> Command:
    if len(text) > P.TEXT_MAX:
        return BAD_MESSAGE
    return send("msg", to=[to], text=text)


def _say_command(rest: str, room: str | None) -> Command:
    return _say(rest.strip(), room)


def _history(rest: str, room: str | None) -> Command:
    words = _words(rest)
    if len(words) > 1 or (words and not (words[0].isascii() and words[0].isdigit()
                                          and 0 < int(words[0]) <= P.HISTORY_PAGE_MAX)):
        return INVALID
    if room is None:
        return NO_ROOM
    return Local("history", int(words[0]) if words else 20)


# --- looking after a room (its moderators' commands, in the current room) ---------------


def _in_room(parse: Callable[[str, str], Command]) -> Callable[[str, str | None], Command]:
    def checked(rest: str, room: str | None) -> Command:
        return NO_ROOM if room is None else parse(rest, room)
    return checked


def _topic(rest: str, room: str) -> Command:
    text = rest.strip()
    if text == "--clear":
        return send("subject", room=room, text="")
    if not P.is_subject(text):
        return Refused("bad_message", f"A topic is at most {P.SUBJECT_MAX} printable "
                                      f"characters")
    return send("subject", room=room, text=text or None)  # alone: show it


_SWITCH = {"on": True, "off": False}
# /mode SETTING VALUE: each setting, the field it sets, and its values.
_MODES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "invite": ("invite", _SWITCH.get),
    "secret": ("secret", _SWITCH.get),
    "key": ("key", lambda v: "" if v == "off" else v if P.is_room_key(v) else None),
    "topic": ("subject_by", lambda v: v if v in P.SUBJECT_SETTERS else None),
    "history": ("history", lambda v: v if v in P.HISTORY_VISIBILITY else None),
}


def _mode(rest: str, room: str) -> Command:
    words = _words(rest)
    if not words:
        return send("mode", room=room)  # show the room's settings
    if len(words) != 2 or words[0].lower() not in _MODES:
        return INVALID
    field_name, value_of = _MODES[words[0].lower()]
    value = value_of(words[1])
    if value is None:
        return INVALID
    return send("mode", room=room, **{field_name: value})


def _target(cmd: str, **fields: Any) -> Callable[[str, str], Command]:
    def parse(rest: str, room: str) -> Command:
        words = _words(rest)
        if len(words) != 1:
            return INVALID
        if not P.is_nickname(words[0]):
            return BAD_USERNAME
        return send(cmd, room=room, name=words[0], **fields)
    return parse


_DURATION = re.compile(r"(\d{1,6})([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int | None:
    """``30m``, ``2h``, ``7d``... -> seconds; None if it is not a duration a ban may last."""
    found = _DURATION.fullmatch(text)
    if not found:
        return None
    seconds = int(found[1]) * _SECONDS[found[2]]
    return seconds if 0 < seconds <= P.BAN_DURATION_MAX else None


def _kick(rest: str, room: str) -> Command:
    name, reason = _split_text(rest)
    if not name:
        return INVALID
    if not P.is_nickname(name):
        return BAD_USERNAME
    if not P.is_reason(reason):
        return Refused("bad_reason")
    return send("kick", room=room, name=name, reason=reason or None)


def _ban(rest: str, room: str) -> Command:
    """``/ban NAME [DURATION] [REASON]``: the nickname, and its key if they are online."""
    name, reason = _split_text(rest)
    if not name:
        return INVALID
    if not P.is_nickname(name):
        return BAD_USERNAME
    first, _, more = reason.partition(" ")
    duration = None
    if _DURATION.fullmatch(first):
        duration = parse_duration(first)
        reason = more.strip()
        if duration is None:
            return INVALID
    if not P.is_reason(reason):
        return Refused("bad_reason")
    return send("ban", room=room, name=name, reason=reason or None, key=True,
                duration=duration)


def _local(action: str) -> Callable[[str, str | None], Command]:
    def parse(rest: str, room: str | None) -> Command:
        if action == "help":
            topic = rest.strip().lstrip("/")
            return Local("help", topic or None)
        return Local(action) if not rest.strip() else INVALID
    return parse


COMMANDS: tuple[Spec, ...] = (
    Spec(("login",), "/login NAME", "take a nickname (1-20 characters, no spaces)", _login),
    Spec(("nick",), "/nick NAME", "change your nickname, in your rooms too", _nick),
    Spec(("identify",), "/identify NAME PASSWORD", "log in with a registered nickname",
         _identify),
    Spec(("register",), "/register [PASSWORD]",
         "reserve your nickname to your key (--identity), or to a password", _register),
    Spec(("logout",), "/logout", "give up your nickname and leave every room",
         _no_args("logout")),
    Spec(("users",), "/users", "who is logged in", _no_args("users")),
    Spec(("rooms", "ls"), "/rooms", "rooms and their member counts", _no_args("rooms")),
    Spec(("list",), "/list", "users and rooms", _list),
    Spec(("create",), "/create ROOM [NAME]", "create a room and enter it", _enter("create")),
    Spec(("join", "j"), "/join ROOM [NAME] [key=KEY]",
         "enter a room (or make it current); key=KEY if it needs one",
         _enter("join")),
    Spec(("leave", "part"), "/leave [ROOM]", "leave the current or named room",
         _room_or_current("leave")),
    Spec(("window",), "/window N", "make your N-th room current (1 is the first joined)",
         _window),
    Spec(("who", "names", "w"), "/who [ROOM]", "members of the current or named room",
         _room_or_current("who")),
    Spec(("say",), "/say TEXT", "say TEXT as it is, even a word that is a command",
         _say_command),
    Spec(("whisper",), "/whisper NAME TEXT", "a private word to a member of this room",
         _whisper),
    Spec(("msg", "sendto"), "/msg NAME[,NAME...] TEXT",
         "private message to a user, or to several", _msg),
    Spec(("query", "q"), "/query [NAME]",
         "talk privately: plain text goes to NAME until /query alone or a room", _query),
    Spec(("away",), "/away [TEXT]", "say you are away (TEXT: why); alone: you are back",
         _away),
    Spec(("broadcast",), "/broadcast TEXT", "message every logged-in user", _broadcast),
    Spec(("me",), "/me ACTION", "describe what you do, in the current room", _me),
    Spec(("history",), "/history [N]", "the last N messages of this room, oldest first",
         _history),
    Spec(("topic",), "/topic [TEXT]",
         "set this room's topic (alone: show it; --clear: remove it)", _in_room(_topic)),
    Spec(("mode",), "/mode [SETTING VALUE]",
         "show or change this room's settings (/help mode)",
         _in_room(_mode),
         "settings: invite on|off, key KEY|off, secret on|off, topic moderators|anyone, "
         "history shared|joined"),
    Spec(("invite",), "/invite NAME", "let NAME into this room (invite-only or keyed)",
         _in_room(_target("invite"))),
    Spec(("invites",), "/invites", "who is invited into this room",
         _in_room(lambda rest, room: send("invites", room=room) if not rest.strip()
                  else INVALID)),
    Spec(("uninvite",), "/uninvite NAME", "withdraw NAME's invitation into this room",
         _in_room(_target("uninvite"))),
    Spec(("kick",), "/kick NAME [REASON]", "remove NAME from this room (moderators)",
         _in_room(_kick)),
    Spec(("ban",), "/ban NAME [DURATION] [REASON]",
         "keep NAME and their key out, for 30m, 2h, 7d... or for good", _in_room(_ban)),
    Spec(("unban",), "/unban NAME", "let NAME back into this room", _in_room(_target("unban"))),
    Spec(("bans",), "/bans", "who is banned from this room",
         _in_room(lambda rest, room: send("bans", room=room) if not rest.strip()
                  else INVALID)),
    Spec(("op",), "/op NAME", "make NAME a moderator of this room (owners)",
         _in_room(_target("role", role="moderator"))),
    Spec(("deop",), "/deop NAME", "take NAME's role in this room away (owners)",
         _in_room(_target("role", role="member"))),
    Spec(("owner",), "/owner NAME", "make NAME an owner of this room too (owners)",
         _in_room(_target("role", role="owner"))),
    Spec(("help", "commands"), "/help [COMMAND]", "this list, or one command's usage",
         _local("help")),
    Spec(("quit", "exit"), "/quit", "leave the chat", _local("quit")),
)

_BY_NAME = {name: spec for spec in COMMANDS for name in spec.names}


def find(name: str) -> Spec | None:
    return _BY_NAME.get(name.lower())


# The lobby program's commands, which are bare words there inside a room too. A line that
# is exactly one of them is that command; to say it, start the line with a space or /say.
_ROOM_WORDS = ("list", "leave", "quit", "commands")
_ROOM_VERBS = ("join", "create")  # with exactly one room name after them

# The chatroom assignment's commands, typed bare in the lobby: its exact texts are kept
# ("Invalid command" and not our usage line), and its client's Success/Failure line.
ASSIGNMENT = ("login", "sendto", "logout")


def _room_word(line: str) -> bool:
    words = line.split()
    return (len(words) == 1 and words[0] in _ROOM_WORDS) or (
        len(words) == 2 and words[0] in _ROOM_VERBS and P.is_room_name(words[1]))


def _chat(text: str, room: str | None, query: str | None) -> Command:
    """Plain text: to the private conversation if there is one, else to the room."""
    return _dm(text, query) if query is not None else _say(text, room)


def usage(spec: Spec) -> Refused:
    return Refused("invalid_command", f"Usage: {spec.usage} - {spec.doc}")


def parse(line: str, room: str | None, query: str | None = None) -> Command | None:
    """Interpret one typed line. ``room`` is the current room (None in the lobby);
    ``query``, the nickname of the private conversation plain text goes to, if any.

    Slash commands work everywhere; in the lobby the slash is optional. In a room (or a
    query), the lobby's own words (``list``, ``leave``, ``quit``, ``commands``, ``join
    ROOM``, ``create ROOM``) alone on a line are commands too; anything else, or a line
    starting with a space, is said (``//text`` or ``/say`` says a line starting with a
    slash or a command word). Returns None for a blank line.
    """
    stripped = line.strip()
    if not stripped:
        return None
    chatting = room is not None or query is not None
    if stripped.startswith("//") and chatting:
        return _chat(stripped[1:], room, query)
    slash = stripped.startswith("/")
    if not slash and chatting and (line[:1].isspace() or not _room_word(stripped)):
        return _chat(stripped, room, query)
    word, _, rest = stripped.lstrip("/").partition(" ")
    spec = find(word)
    if spec is None:
        if not slash:
            return INVALID  # the assignment's exact text for a line that is no command
        shown = word[:40]
        return Refused("unknown_command", f"Unknown command: /{shown} (/help lists them)")
    got = spec.parse(rest, room)
    if got == INVALID and (slash or word.lower() not in ASSIGNMENT):
        return usage(spec)  # name the command and show how it is used
    return got


def reports_outcome(line: str, room: str | None, query: str | None = None) -> bool:
    """Is this one of the assignment's commands typed as there (bare, in the lobby), whose
    answer its client announced with a line ``Success`` or ``Failure``?"""
    stripped = line.strip()
    return (room is None and query is None and not stripped.startswith("/")
            and stripped.partition(" ")[0].lower() in ASSIGNMENT)


def as_name(line: str) -> str | None:
    """The answer to "your name?" asked on arrival: a single word that is a valid
    nickname and no command (``login alice``, ``list`` or ``/help`` stay commands)."""
    words = line.split()
    if len(words) != 1 or words[0].startswith("/") or find(words[0]) is not None:
        return None
    return words[0] if P.is_nickname(words[0]) else None


def help_text(topic: str | None = None) -> list[str]:
    if topic:
        spec = find(topic)
        if spec is None:
            return [f"No such command: {topic}"]
        aliases = ", ".join("/" + n for n in spec.names[1:])
        return [f"{spec.usage}  {spec.doc}" + (f" (also {aliases})" if aliases else "")] \
            + ([f"  {spec.details}"] if spec.details else [])
    width = max(len(s.usage) for s in COMMANDS)
    return (["Commands (in the lobby the slash is optional; in a room, plain text is said "
             "to the room, except a lobby command alone, such as leave: /say says it):"]
            + [f"  {s.usage.ljust(width)}  {s.doc}" for s in COMMANDS])
