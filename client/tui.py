"""``--tui``: the full-screen mode, on Textual.

    alice │ lounge │ rooms: dev(2) lounge │ connected · lag 1 ms
    ┌ Rooms ──────┐┌ lounge ───────────────────────────┐┌ Members (2) ┐
    │ 1 dev     2 ││ [12:01] bob joined                ││ alice       │
    │ 2 lounge    ││ [12:02] bob: hi alice             ││ bob         │
    └─────────────┘└───────────────────────────────────┘└─────────────┘
    > type here; /help lists the commands
     ^n Next room  ^p Previous room  ^q Quit

Everything goes through the same pieces as the line mode: typed lines are written to the
``Runner``'s pipe (so ``/join``, ``/msg`` and a plain chat line mean exactly what they mean
there), events are drawn with ``terminal.styled``, and ``terminal.ChatState`` keeps unread
counts and members. Switching rooms is ``/join ROOM``, which the library reads as "make
it current"; its confirmation is not printed when the switch came from a key or a click.

The Runner owns the sockets on a thread of its own; its ``show`` posts each event, with a
snapshot of the status taken at that moment, to the app (``post_message`` is thread-safe).
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import zmq
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import ContentSwitcher, Footer, Input, OptionList, RichLog, Static
from textual.widgets.option_list import Option

from .connection import Connection, Event
from .render import clean
from .runner import Runner
from .terminal import (
    ChatState,
    Line,
    Status,
    completions,
    nick_colour,
    status_fragments,
    status_of,
    styled,
)

# The style names of terminal.styled and terminal.status_fragments, for Rich. Colours are
# given exactly: Textual would otherwise map ANSI names through its theme, differently in
# the message pane and in the lists, and a nickname must look the same in both.
NICK_COLOURS = {
    "green": "#5fd75f", "yellow": "#d7af5f", "blue": "#5f87ff", "magenta": "#d75fd7",
    "cyan": "#5fd7d7", "bright_green": "#87ff87", "bright_yellow": "#ffff87",
    "bright_blue": "#87afff", "bright_magenta": "#ff87ff", "bright_cyan": "#87ffff",
}
RICH_STYLE = {
    "time": "dim", "dim": "dim", "bold": "bold", "private": "#d787d7", "error": "#ff5f5f",
    "alert": "bold #ff5f5f", "warn": "#ffd75f", "good": "#87d787", "bad": "bold #ff5f5f",
    "self": "bold", "name": "bold", "room": "bold #5fd7ff", "unread": "bold #ffd75f",
    "sep": "dim", "lag": "dim", "current": "underline", **NICK_COLOURS,
}

ROOM_EVENTS = ("msg", "join", "leave", "history")
SCROLLBACK = 5000  # lines kept per pane


def to_rich(line: Line) -> Text:
    """A styled line as Rich text. The text is appended, never parsed as markup."""
    out = Text(no_wrap=False)
    for style, text in line:
        out.append(text, style=" ".join(RICH_STYLE.get(s, s) for s in style.split()))
    return out


class Incoming(Message):
    """An event from the network thread, with the status as it was when it happened."""

    def __init__(self, event: Event, status: Status) -> None:
        super().__init__()
        self.event = event
        self.status = status


class Finished(Message):
    """The Runner returned: /quit, end of input, or the broker ended the session."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code


class SideList(OptionList, can_focus=False):
    """Rooms or members: clicked, never focused (typing always goes to the input)."""


class ChatInput(Input):
    """The input line, with Up/Down through the lines sent before, and Tab.

    Keys that act on what is typed are bound here or, not as priority bindings, on the
    app: either way they are taken in turn with the keys typed before them (a priority
    binding would jump ahead of characters still queued for the input)."""

    BINDINGS = [Binding("up", "older", show=False), Binding("down", "newer", show=False),
                Binding("tab", "app.complete", show=False),
                Binding("pageup", "app.scroll(-1)", "Scroll back"),
                Binding("pagedown", "app.scroll(1)", show=False)]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history: list[str] = []
        self._back = 0  # how far back Up has gone; 0 is the line being typed
        self._draft = ""

    def remember(self, line: str) -> None:
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
        self._back = 0

    def action_older(self) -> None:
        if self._back < len(self.history):
            if self._back == 0:
                self._draft = self.value
            self._back += 1
            self._recall()

    def action_newer(self) -> None:
        if self._back > 0:
            self._back -= 1
            self._recall()

    def _recall(self) -> None:
        self.value = self.history[-self._back] if self._back else self._draft
        self.cursor_position = len(self.value)


class ChatApp(App[int]):
    TITLE = "zchat"
    ENABLE_COMMAND_PALETTE = False  # its Ctrl+P is the previous room here
    CSS = """
    #status { height: 1; width: 100%; background: $panel; }
    #main { height: 1fr; }
    SideList { width: 24; height: 100%; border: round $primary-darken-2; }
    SideList > .option-list--option-highlighted { text-style: bold; }
    #panes { width: 1fr; }
    RichLog { border: round $primary; padding: 0 1; overflow-y: auto;
              scrollbar-size-vertical: 1; }
    ChatInput { dock: bottom; }
    """
    BINDINGS = [
        Binding("ctrl+n", "switch(1)", "Next room"),
        Binding("ctrl+p", "switch(-1)", "Previous room"),
        *[Binding(f"alt+{n}", f"goto({n})", show=False) for n in range(1, 10)],
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, conn: Connection, server: str) -> None:
        super().__init__()
        self.conn = conn
        self.server = server
        self.state = ChatState(conn.rooms)
        self.status = status_of(self.conn, self.state)
        self.panes: dict[str | None, RichLog] = {}  # None: the lobby, before any room
        self._pane_ids = itertools.count(1)
        self._quiet_joins: set[str] = set()  # switches by key or click: no confirmation
        self._read_fd, self._write_fd = os.pipe()
        self._thread: threading.Thread | None = None
        self._quitting = False
        self._tab: tuple[str, int, list[str], int] | None = None  # (value made, start, ...)
        self._shown_rooms: list[Any] = []
        self._shown_members: list[Any] = []

    # -- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="main"):
            yield SideList(id="rooms")
            with ContentSwitcher(id="panes", initial="pane-lobby"):
                yield self._new_pane(None)
            yield SideList(id="members")
        yield ChatInput(id="input", placeholder="Type a message or a command; /help lists "
                                                "them, Tab completes")
        yield Footer()

    def _new_pane(self, room: str | None) -> RichLog:
        log = RichLog(id="pane-lobby" if room is None else f"pane-{next(self._pane_ids)}",
                      wrap=True, markup=False, highlight=False, max_lines=SCROLLBACK)
        log.border_title = clean(room) if room is not None else "lobby"
        self.panes[room] = log
        return log

    def on_mount(self) -> None:
        self.query_one("#rooms", SideList).border_title = "Rooms"
        self.query_one("#members", SideList).border_title = "Members"
        self.panes[None].write(Text(f"Connected to {clean(self.server)}. Type /help for "
                                    "commands; Ctrl+N/Ctrl+P or Alt+1..9 switch rooms."))
        self.query_one(ChatInput).focus()
        self._refresh_sides()
        self.set_interval(1.0, self._refresh_sides)  # the lag moves without events
        self._thread = threading.Thread(target=self._network, name="zchat-network",
                                        daemon=True)
        self._thread.start()

    # -- the network thread -----------------------------------------------------------------

    def _network(self) -> None:
        code = 0
        try:
            code = Runner(self.conn, self._show, self._read_fd).run()
        except zmq.ZMQError:
            if not self.conn.closed:
                raise
        finally:
            self.post_message(Finished(code))

    def _show(self, event: Event) -> None:  # on the network thread
        self.state.observe(event, self.conn.current, self.conn.rooms)
        self.post_message(Incoming(event, status_of(self.conn, self.state)))

    def send_line(self, line: str) -> None:
        """Hand a typed line to the Runner, exactly as the line mode does."""
        if self._write_fd >= 0:
            os.write(self._write_fd, line.replace("\n", " ").encode() + b"\n")

    def stop_network(self, timeout: float = 5.0) -> None:
        """End the Runner (end of input: it says bye) and wait for it."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                os.close(self._read_fd)
                self._thread = None

    # -- events -----------------------------------------------------------------------------

    def on_incoming(self, message: Incoming) -> None:
        event, status = message.event, message.status
        self.status = status
        for room in status.rooms:
            if room not in self.panes:
                self.query_one("#panes", ContentSwitcher).mount(self._new_pane(room))
        d = event.data
        room = d.get("room") if d.get("room") in status.rooms else None
        quiet = False
        if event.kind == "reply" and d.get("cmd") in ("join", "create") and room:
            # A switch by key or click: the room on show says it, no need for a line.
            quiet = d.get("cmd") == "join" and room in self._quiet_joins
            self._quiet_joins.discard(room)
        elif event.kind == "error" and d.get("cmd") == "join":
            self._quiet_joins.clear()
        entered = event.kind == "reply" and d.get("cmd") in ("join", "create")
        pane = room if room and (event.kind in ROOM_EVENTS or entered) else status.current
        log = self.panes.get(pane, self.panes[None])
        if not quiet:
            for line in styled(event, status.name, room_shown=pane):
                log.write(to_rich(line))
        for gone in [r for r in self.panes if r is not None and r not in status.rooms]:
            self.panes.pop(gone).remove()
        self._show_pane(status.current)
        self._refresh_sides()

    def on_finished(self, message: Finished) -> None:
        self.exit(message.code)

    def _show_pane(self, room: str | None) -> None:
        switcher = self.query_one("#panes", ContentSwitcher)
        log = self.panes.get(room, self.panes[None])
        if switcher.current != log.id:
            switcher.current = log.id

    # -- side lists and status --------------------------------------------------------------

    def _refresh_status(self) -> None:
        self.status = status_of(self.conn, self.state)
        self.query_one("#status", Static).update(to_rich(status_fragments(self.status)))

    def _refresh_sides(self) -> None:
        self._refresh_status()
        s = self.status
        rooms = self.query_one("#rooms", SideList)
        entries = [(i, r, s.unread.get(r, 0), r == s.current) for i, r in enumerate(s.rooms, 1)]
        if entries != self._shown_rooms:
            self._shown_rooms = entries
            rooms.set_options(Option(self._room_label(*e), id=f"room-{e[0]}") for e in entries)
            current = [e[3] for e in entries]
            rooms.highlighted = current.index(True) if True in current else None
        members = self.query_one("#members", SideList)
        names = self.state.members_of(s.current)
        if names != self._shown_members:
            self._shown_members = names
            members.set_options(Option(self._member_label(n, s.name)) for n in names)
            members.highlighted = None  # a highlight would hide the names' colours
        members.border_title = f"Members ({len(names)})" if s.current else "Members"

    @staticmethod
    def _room_label(index: int, room: str, unread: int, current: bool) -> Text:
        label = Text(f"{index} " if index < 10 else "  ", style="dim")
        label.append(clean(room), style="bold" if current else "")
        if unread:
            label.append(f" ({unread})", style=RICH_STYLE["unread"])
        return label

    @staticmethod
    def _member_label(name: str, me: str | None) -> Text:
        return Text(clean(name), style=("bold " if name == me else "")
                    + NICK_COLOURS[nick_colour(name)])

    # -- what the person does ---------------------------------------------------------------

    @on(Input.Submitted, "#input")
    def _submitted(self, message: Input.Submitted) -> None:
        box = self.query_one(ChatInput)
        box.remember(message.value)
        box.value = ""
        self._tab = None
        self.send_line(message.value)

    @on(OptionList.OptionSelected, "#rooms")
    def _room_clicked(self, message: OptionList.OptionSelected) -> None:
        self.switch_to(self._shown_rooms[message.option_index][1])
        self.query_one(ChatInput).focus()

    @on(OptionList.OptionSelected, "#members")
    def _member_clicked(self, message: OptionList.OptionSelected) -> None:
        box = self.query_one(ChatInput)
        box.value = f"/msg {self._shown_members[message.option_index]} "
        box.cursor_position = len(box.value)
        box.focus()

    def switch_to(self, room: str) -> None:
        if room != self.status.current and room in self.status.rooms:
            self._quiet_joins.add(room)
            self.send_line(f"/join {room}")

    def action_switch(self, step: int) -> None:
        rooms = self.status.rooms
        if rooms:
            at = rooms.index(self.status.current) if self.status.current in rooms else -step
            self.switch_to(rooms[(at + step) % len(rooms)])

    def action_goto(self, number: int) -> None:
        if 0 < number <= len(self.status.rooms):
            self.switch_to(self.status.rooms[number - 1])

    def action_scroll(self, pages: int) -> None:
        log = self.panes.get(self.status.current, self.panes[None])
        (log.scroll_page_down if pages > 0 else log.scroll_page_up)(animate=False)

    def action_complete(self) -> None:
        """Tab: the first candidate; Tab again (nothing typed since) the next one."""
        box = self.query_one(ChatInput)
        value, cursor = box.value, box.cursor_position
        if self._tab is not None and self._tab[0] == value:
            _, start, found, index = self._tab
            rest = value[start + len(found[index]):]
            index = (index + 1) % len(found)
        else:
            rooms, nicks, members = self.state.names(self.status.current)
            start, candidates = completions(value[:cursor], self.status.current, rooms,
                                            nicks, members, self.status.name)
            if not candidates:
                self.bell()
                return
            if len(candidates) > 1:
                self.notify("  ".join(c.display for c in candidates), timeout=4)
            found, index, rest = [c.text for c in candidates], 0, value[cursor:]
        box.value = value[:start] + found[index] + rest
        box.cursor_position = start + len(found[index])
        self._tab = (box.value, start, found, index)

    async def action_quit(self) -> None:
        """Say goodbye through the Runner; leave anyway if the broker does not answer."""
        if self._quitting:
            self.exit(0)
            return
        self._quitting = True
        self.send_line("/quit")
        self.set_timer(3.0, lambda: self.exit(0))


def run(conn: Connection, server: str) -> int:
    app = ChatApp(conn, server)
    code = app.run()
    app.stop_network()
    return code or 0
