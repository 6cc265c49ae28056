"""The windows of the full-screen mode, as a model with no UI in it.

    1 lobby   2 lounge   3 dev (4)   4 bob

Window 1 is the server window (the lobby: replies, errors and connection notices); rooms
and private conversations follow, numbered in the order they were opened. Each window
counts its lines and what arrived while it was not on show (unread messages, and an
``Activity`` level: a mention of your nickname or a private message outranks a message,
which outranks a join), and remembers where you left it, for the "new since you last
looked" line. ``route`` says which windows an event is drawn in, opening conversations
as they start; ``Outbox`` keeps the lines typed but not yet acknowledged, so they can be
shown as pending. ``tui`` draws all this; the tests drive it without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from . import commands
from .commands import Local, Send
from .connection import Event
from .render import clean

SERVER, ROOM, QUERY = "server", "room", "query"
# Events about the link to the broker: told in the server window and where you are.
NOTICES = ("lost", "restored", "reconnecting", "resumed", "shutdown", "kicked")
# Requests whose text is shown as pending until the broker answers them.
TEXT_CMDS = ("say", "msg", "whisper", "broadcast")


class Activity(IntEnum):
    """What happened in a window while it was not on show, least to most pressing."""

    NONE = 0
    EVENTS = 1  # joins, leaves, notices
    MESSAGES = 2  # someone said something
    HIGHLIGHT = 3  # your nickname was said, or a private message


@dataclass(eq=False)
class Window:
    kind: str  # SERVER, ROOM or QUERY
    name: str  # the room; the others in a conversation ("bob", "bob,carol"); "" for SERVER
    lines: int = 0  # lines drawn in it so far
    seen: int | None = None  # how many lines it had when you last left it
    unread: int = 0  # messages from others since you last looked
    activity: Activity = Activity.NONE

    @property
    def title(self) -> str:
        return "lobby" if self.kind == SERVER else self.name

    @property
    def people(self) -> list[str]:
        """The others in a conversation."""
        return self.name.split(",") if self.kind == QUERY else []

    @property
    def marker(self) -> int | None:
        """Where "new since you last looked" goes (before this line), if anything came
        after the point where you left the window."""
        return self.seen if self.seen is not None and self.seen < self.lines else None


def conversation(names: Iterable[Any], me: str | None) -> str:
    """The window name of a private conversation: everybody in it but me, sorted, so that
    a message from bob and one to bob land in one window. A note to oneself is ``me``."""
    others = sorted({n for n in names if isinstance(n, str) and n and n != me}, key=str.lower)
    return ",".join(others) if others else (me or "")


def mentions(text: Any, nick: str | None) -> bool:
    """Is ``nick`` in ``text`` as a word of its own (any case)? "bob" is in "hi Bob!" but
    not in "bobcat"; nicknames may hold punctuation, so only letters and digits (and _)
    next to it make it part of a longer word."""
    if not isinstance(text, str) or not nick:
        return False
    low, word = text.lower(), nick.lower()
    at = low.find(word)
    while at >= 0:
        before = low[at - 1] if at else " "
        after = low[at + len(word)] if at + len(word) < len(low) else " "
        if not (before.isalnum() or before == "_" or after.isalnum() or after == "_"):
            return True
        at = low.find(word, at + 1)
    return False


def activity_of(event: Event, me: str | None) -> tuple[Activity, bool]:
    """How pressing an event is for the window it lands in, and whether it counts as an
    unread message. History replayed on joining is neither."""
    d, kind = event.data, event.kind
    if d.get("replay") or kind in ("reply", "error", "info", "history"):
        return Activity.NONE, False
    if kind in ("msg", "dm", "whisper", "broadcast"):
        if d.get("from") == me:
            return Activity.NONE, False
        if kind in ("dm", "whisper") or mentions(d.get("text"), me):
            return Activity.HIGHLIGHT, True
        return Activity.MESSAGES, True
    return Activity.EVENTS, False


def highlighted(event: Event, me: str | None) -> bool:
    """Does this line call for your attention (drawn highlighted)?"""
    return activity_of(event, me)[0] is Activity.HIGHLIGHT


class Windows:
    def __init__(self) -> None:
        self.server = Window(SERVER, "")
        self.all: list[Window] = [self.server]
        self.current = self.server

    def find(self, kind: str, name: str) -> Window | None:
        return next((w for w in self.all if w.kind == kind and w.name == name), None)

    def open(self, kind: str, name: str) -> Window:
        """The window of this room or conversation, made (last in the list) if need be."""
        window = self.find(kind, name)
        if window is None:
            window = Window(kind, name)
            self.all.append(window)
        return window

    def close(self, window: Window, then: Window | None = None) -> None:
        """Close a window; if it was on show, show ``then`` (or the one before it)."""
        if window is self.server or window not in self.all:
            return
        at = self.all.index(window)
        self.all.remove(window)
        if window is self.current:
            self._enter(then if then in self.all else self.all[at - 1])

    def number(self, window: Window) -> int:
        return self.all.index(window) + 1

    def at(self, number: int) -> Window | None:
        return self.all[number - 1] if 0 < number <= len(self.all) else None

    def step(self, by: int) -> Window:
        """The window ``by`` places after the current one, wrapping around."""
        return self.all[(self.all.index(self.current) + by) % len(self.all)]

    def show(self, window: Window) -> None:
        """Put ``window`` on show. The one left is marked as read up to its last line."""
        if window is not self.current:
            self.current.seen = self.current.lines
            self._enter(window)

    def _enter(self, window: Window) -> None:
        self.current = window
        window.unread, window.activity = 0, Activity.NONE

    def added(self, window: Window, count: int, event: Event, me: str | None) -> None:
        """``count`` lines of ``event`` were drawn in ``window``."""
        window.lines += count
        if window is not self.current and count:
            level, unread = activity_of(event, me)
            window.activity = max(window.activity, level)
            window.unread += unread

    def sync_rooms(self, joined: Iterable[str], current_room: str | None) -> list[Window]:
        """Open a window for each room joined; close those of rooms left. A closed window
        that was on show gives way to the library's current room, or the server window.
        Returns the windows closed."""
        joined = list(joined)
        for room in joined:
            self.open(ROOM, room)
        gone = [w for w in self.all if w.kind == ROOM and w.name not in joined]
        for window in gone:
            self.close(window, self.find(ROOM, current_room or "") or self.server)
        return gone

    def route(self, event: Event, me: str | None, current_room: str | None
              ) -> list[tuple[Window, Event]]:
        """The windows an event is drawn in, and the event to draw in each (our own
        private message is drawn in its conversation as a line from us). Conversations
        and rooms just entered get their window here. ``current_room``: the library's
        current room after the event."""
        d, kind = event.data, event.kind
        room = d.get("room") if isinstance(d.get("room"), str) else None
        if kind == "dm":
            to = d.get("to") if isinstance(d.get("to"), list) else []
            return [(self.open(QUERY, conversation([d.get("from"), *to], me)), event)]
        if kind == "reply" and d.get("cmd") == "msg" and isinstance(d.get("to"), list):
            window = self.open(QUERY, conversation(d["to"], me))
            return [(window, Event("dm", {**d, "from": me}))]
        if kind == "reply" and d.get("cmd") in ("create", "join") and room:
            return [(self.open(ROOM, room), event)]
        if (kind == "reply" and d.get("cmd") == "leave") or kind == "ejected":
            # The room's window is about to close: say it in the server window and where
            # you will be (where you are, or the room the library goes on with).
            gone = self.find(ROOM, room or "")
            after = self.current if self.current is not gone else self.find(
                ROOM, current_room or "")
            return [(w, event) for w in dict.fromkeys([self.server, after]) if w]
        if kind in NOTICES:
            return [(w, event) for w in dict.fromkeys([self.server, self.current])]
        # Whatever happens in a room goes to its window; answers and errors go where you
        # are (you asked from there), but for what is said or whispered in a room.
        if room and (kind not in ("reply", "error", "info")
                     or d.get("cmd") in ("whisper", "say")):
            window = self.find(ROOM, room)
            if window is not None:
                return [(window, event)]
        return [(self.current, event)]


# --- what a typed line means in a window -------------------------------------------------


def outgoing(line: str, window: Window, pasted: bool = False) -> str | None:
    """The line to hand to the Runner for ``line`` typed in ``window``, or None for
    nothing. In a conversation, text is a private message to the others in it; in the
    server window there is nobody to talk to, so a line is a command (the slash is
    optional, as in the lobby) and text is None. Pasted lines are text, never commands,
    except in the server window."""
    stripped = line.strip()
    if not stripped:
        return None
    command = stripped.startswith("/") and not stripped.startswith("//")
    if window.kind == QUERY and (pasted or not command):
        text = stripped[1:] if stripped.startswith("//") and not pasted else stripped
        return f"/msg {window.name} {text}"
    if window.kind == ROOM and pasted and stripped.startswith("/"):
        return "/" + stripped  # "//text" says "/text"
    if window.kind == SERVER:
        # "//text" would be said in the library's current room, which is not on show.
        return None if stripped.startswith("//") else "/" + stripped.lstrip("/")
    return stripped


def ui_command(line: str, room: str | None) -> tuple[str, Any] | None:
    """``/window N`` or ``/query [NAME]``: what the full-screen mode does itself (rather
    than the Runner), as ``(action, arg)``; None for any other line."""
    command = commands.parse(line, room)
    if isinstance(command, Local) and command.action in ("window", "query"):
        return command.action, command.arg
    return None


@dataclass(eq=False)
class Pending:
    window: Window
    cmd: str
    text: str


@dataclass
class Outbox:
    """Lines typed but not yet answered by the broker, oldest first. The Runner carries
    out one line at a time, in order, so answers come back in the order lines were sent;
    a reply names its text, an error only its command."""

    waiting: list[Pending] = field(default_factory=list)

    def sent(self, window: Window, line: str, room: str | None) -> Pending | None:
        """``line`` was handed to the Runner from ``window``: keep it if it carries text
        for someone (``room`` is the room it will be said in)."""
        command = commands.parse(line, room)
        if isinstance(command, Send) and len(command.requests) == 1:
            cmd, fields = command.requests[0]
            if cmd in TEXT_CMDS:
                pending = Pending(window, cmd, fields["text"])
                self.waiting.append(pending)
                return pending
        return None

    def settle(self, event: Event) -> Pending | None:
        """The pending line this answer is for, taken out; None if it is for none."""
        d = event.data
        if event.kind not in ("reply", "error") or d.get("cmd") not in TEXT_CMDS:
            return None
        for pending in self.waiting:
            if pending.cmd == d["cmd"] and (event.kind == "error"
                                            or pending.text == d.get("text")):
                self.waiting.remove(pending)
                return pending
        return None

    def of(self, window: Window) -> list[Pending]:
        return [p for p in self.waiting if p.window is window]


# --- the status line ---------------------------------------------------------------------


ACTIVITY_STYLE = {Activity.NONE: "", Activity.EVENTS: "active",
                  Activity.MESSAGES: "unread", Activity.HIGHLIGHT: "highlight"}


def window_label(number: int, window: Window) -> list[tuple[str, str]]:
    """``3 dev (4)`` as (style, text) fragments; names are cleaned, never markup."""
    style = ACTIVITY_STYLE[window.activity]
    out = [("dim", f"{number} "),
           (style or ("private" if window.kind == QUERY else ""), clean(window.title))]
    if window.unread:
        out.append((style, f" ({window.unread})"))
    return out


def activity_list(windows: Windows) -> list[tuple[str, str]]:
    """``act: 3,4`` (weechat's hotlist): the numbers of the windows with something new,
    each in the style of its activity; nothing if there is none."""
    out: list[tuple[str, str]] = []
    for number, window in enumerate(windows.all, 1):
        if window.activity is not Activity.NONE:
            out += [("", ",") if out else ("", "act: "),
                    (ACTIVITY_STYLE[window.activity], str(number))]
    return out
