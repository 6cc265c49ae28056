"""``--tui``: the full-screen mode, on Textual.

    alice │ 2:lounge │ act: 3,4 │ connected · lag 1 ms
    ┌ Windows ──┐┌ 2 lounge ──────────────────────────┐┌ Members (2) ┐
    │ 1 lobby   ││ [12:01] bob joined                 ││ alice       │
    │ 2 lounge  ││ ── new since you last looked ───── ││ bob         │
    │ 3 dev (2) ││ [12:02] bob: hi alice              ││             │
    │ 4 bob     ││ ⧗ alice: on its way                ││             │
    └───────────┘└────────────────────────────────────┘└─────────────┘
    > type here; /help lists the commands
     ^n Next window  ^p Previous window  ^q Quit

Windows (``windows``): 1 is the lobby, then a window per room and per private
conversation (``/query NAME``), switched with Ctrl+N/Ctrl+P, Alt+digit, ``/window N`` or a
click. Typed lines go through the same pieces as the line mode: they are written to the
``Runner``'s pipe (so ``/join``, ``/msg`` and a chat line mean what they mean there), and
events are drawn with ``terminal.styled``. A room window on show is the library's current
room: switching to one is a ``/join ROOM``, whose confirmation is not printed. Text typed
in a conversation window becomes ``/msg NAME text``.

Everything another user chose is drawn as text, never parsed as markup: lines, labels,
titles and toasts are built as Rich ``Text`` or Textual ``Content``, and ``notify`` is
called with ``markup=False``.

The Runner owns the sockets on a thread of its own; its ``show`` posts each event, with a
snapshot of the status taken at that moment, to the app (``post_message`` is thread-safe).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import zmq
from rich.text import Text
from textual import on
from textual._ansi_sequences import ANSI_SEQUENCES_KEYS
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.events import Key, Paste, Resize
from textual.geometry import Size
from textual.message import Message
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import ContentSwitcher, Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from schema import protocol as P

from .connection import Connection, Event
from .render import clean
from .runner import Runner
from .terminal import (
    ChatState,
    Line,
    Status,
    completions,
    format_lag,
    nick_colour,
    status_of,
    styled,
)
from .windows import (
    QUERY,
    ROOM,
    Outbox,
    Window,
    Windows,
    activity_list,
    conversation,
    highlighted,
    outgoing,
    ui_command,
    window_label,
)

# The style names of terminal.styled and windows, for Rich. Colours are given exactly:
# Textual would otherwise map ANSI names through its theme, differently in the message
# pane and in the lists, and a nickname must look the same in both.
NICK_COLOURS = {
    "green": "#5fd75f", "yellow": "#d7af5f", "blue": "#5f87ff", "magenta": "#d75fd7",
    "cyan": "#5fd7d7", "bright_green": "#87ff87", "bright_yellow": "#ffff87",
    "bright_blue": "#87afff", "bright_magenta": "#ff87ff", "bright_cyan": "#87ffff",
}
RICH_STYLE = {
    "time": "dim", "dim": "dim", "bold": "bold", "private": "#d787d7", "error": "#ff5f5f",
    "alert": "bold #ff5f5f", "warn": "#ffd75f", "good": "#87d787", "bad": "bold #ff5f5f",
    "self": "bold", "name": "bold", "room": "bold #5fd7ff", "unread": "bold #ffd75f",
    "highlight": "bold #ff87d7", "active": "#87afd7", "pending": "dim italic",
    "sep": "dim", "lag": "dim", "current": "underline", **NICK_COLOURS,
}
HIGHLIGHT_LINE = "on #5f005f"  # the background of a line that mentions you
MARKER_STYLE = "bold #ff5f5f"

SCROLLBACK = 5000  # lines kept per window
PASTE_ASK_ABOVE = 5  # a paste of more lines asks first (irssi's paste_verify_line_count)
PENDING_SHOWN = 3  # pending lines listed under the pane; more are counted


def _alt_digits_switch_windows() -> None:
    """Alt+digit, as tmux and most terminals send it (ESC then the digit), is alt+N.

    Textual maps ESC+digit to the characters macOS's Option+digit types (``¡™£¢∞§¶•ªº``,
    for WezTerm on macOS), so under tmux Alt+1..9 typed those instead of switching
    windows. The same characters typed as themselves (a UK keyboard's £) still arrive
    as characters: only the two-byte ESC sequences are remapped. The parser reads each
    value's ``.value`` as the key's name."""
    for digit in "0123456789":
        ANSI_SEQUENCES_KEYS[f"\x1b{digit}"] = (SimpleNamespace(value=f"alt+{digit}"),)


_alt_digits_switch_windows()


def to_rich(line: Line, style: str = "") -> Text:
    """A styled line as Rich text. The text is appended, never parsed as markup; a word
    too long for the pane is folded onto the next line rather than cut off."""
    out = Text(style=style, overflow="fold", no_wrap=False)
    for names, text in line:
        out.append(text, style=" ".join(RICH_STYLE.get(s, s) for s in names.split()))
    return out


def plain_content(text: str) -> Content:
    """A title as Textual content: shown as it is, never read as markup."""
    return Content(text)


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
    """Windows or members: clicked, never focused (typing always goes to the input)."""


class ChatLog(ScrollView, can_focus=False):
    """A window's lines, wrapped to the pane's width, and wrapped again whenever that
    width changes (RichLog wraps each line once, at the width it has when written). It
    stays at the bottom as lines arrive unless you scrolled back. The "new since you last
    looked" rule goes before line number ``seen`` of the window, if there is one."""

    DEFAULT_CSS = "ChatLog { overflow-x: hidden; overflow-y: scroll; }"

    def __init__(self, window: Window, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = window
        self.items: deque[Text] = deque()
        self._first = 0  # the window's line number of items[0]; older ones are dropped
        self._width = 0  # what the lines are wrapped at; 0 until the pane has a width
        self._wrapped: deque[list[Strip]] = deque()  # items, wrapped at _width
        self.lines: list[Strip] = []  # what scrolls: the wrapped items and the rule
        self._seen: int | None = window.seen
        self._follow = True  # at the bottom, so new lines scroll into view

    def add(self, text: Text) -> None:
        dropped = len(self.items) == SCROLLBACK
        if dropped:
            self.items.popleft()
            self._first += 1
        self.items.append(text)
        if not self._width:
            return  # wrapped when the pane first gets a width
        strips = self._wrap(text)
        self._wrapped.append(strips)
        if dropped:
            self._wrapped.popleft()
            self._rebuild()
            return
        if self._seen == self._first + len(self.items) - 1:
            self.lines += self._rule()
        self.lines += strips
        self._update()

    def set_seen(self, seen: int | None) -> None:
        if seen != self._seen:
            self._seen = seen
            self._rebuild()

    def on_resize(self, event: Resize) -> None:
        width = self.scrollable_content_region.width
        if width > 0 and width != self._width:
            self._width = width
            self._wrapped = deque(self._wrap(text) for text in self.items)
            self._rebuild()

    def _wrap(self, text: Text) -> list[Strip]:
        console = self.app.console
        lines = console.render_lines(text, console.options.update_width(self._width),
                                     pad=False)
        return [Strip(line) for line in lines]

    def _rule(self) -> list[Strip]:
        label = "── new since you last looked "
        text = Text((label + "─" * self._width)[:self._width], style=MARKER_STYLE)
        return self._wrap(text)

    def _rebuild(self) -> None:
        if not self._width:
            return
        self.lines = []
        for index, strips in enumerate(self._wrapped, self._first):
            if index == self._seen:
                self.lines += self._rule()
            self.lines += strips
        self._update()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        # Scrolled by the person (or clamped by a resize): follow the end only if that
        # is where the view is. Decided here, not when lines arrive, since a resize
        # moves the end before the lines are wrapped again.
        if self._width and self.virtual_size.height == len(self.lines):
            self._follow = new >= self.max_scroll_y

    def _update(self) -> None:
        self.virtual_size = Size(self._width, len(self.lines))
        if self._follow:
            self.scroll_end(animate=False, immediate=False, x_axis=False)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        index = self.scroll_offset.y + y
        if index >= len(self.lines):
            return Strip.blank(width, self.rich_style)
        return self.lines[index].crop_extend(0, width, self.rich_style).apply_style(
            self.rich_style)


class ChatInput(Input):
    """The input line, with Up/Down through the lines sent before.

    Keys that act on what is typed, or on where it goes (Enter, Tab, Up, Down, and the
    window switches in ``keys``), are taken here, in the input's own turn with the
    characters around them, and the app is called at once. A binding would run only
    once the key had bubbled up to the app, and by then the characters typed after it
    could be in the box already: lines typed or pasted at speed were merged, cut or sent
    twice, and a Ctrl+N between two lines could land before the first. Enter hands the
    line to ``on_line`` and empties the box; a paste of several lines goes to
    ``on_paste``, one entry per line."""

    BINDINGS = [Binding("pageup", "app.scroll(-1)", "Scroll back"),
                Binding("pagedown", "app.scroll(1)", show=False)]

    def __init__(self, on_line: Callable[[str], None], on_paste: Callable[[list[str]], None],
                 keys: dict[str, Callable[[], None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_line, self.on_paste = on_line, on_paste
        self.keys = {"enter": self._take_line, "up": self.action_older,
                     "down": self.action_newer, **keys}
        self.history: list[str] = []
        self._back = 0  # how far back Up has gone; 0 is the line being typed
        self._draft = ""

    async def _on_key(self, event: Key) -> None:
        act = self.keys.get(event.key)
        if act is not None:
            event.stop()
            event.prevent_default()  # neither Input's own handler nor any binding
            act()

    def _take_line(self) -> None:
        value, self.value = self.value, ""
        self.remember(value)
        self.on_line(value)

    def _on_paste(self, event: Paste) -> None:
        event.stop()
        event.prevent_default()
        text = event.text.replace("\r\n", "\n").replace("\r", "\n")
        text = text[:-1] if text.endswith("\n") else text  # one line and its newline
        if "\n" not in text:
            if self.selection.is_empty:
                self.insert_text_at_cursor(text)
            else:
                self.replace(text, *self.selection)
            return
        # What was typed around the cursor joins the first and last lines of the paste.
        at = self.cursor_position
        lines = (self.value[:at] + text + self.value[at:]).split("\n")
        self.value = ""
        self.on_paste(lines)

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


class PasteConfirm(ModalScreen[bool]):
    """"Send 200 pasted lines to lounge?", asked before a paste of many lines goes out."""

    DEFAULT_CSS = """
    PasteConfirm { align: center middle; }
    PasteConfirm > Static { width: 90%; max-width: 72; height: auto;
                            border: round $warning; padding: 0 1; }
    """
    BINDINGS = [Binding("y,enter", "answer(True)", "Send"),
                Binding("n,escape", "answer(False)", "Cancel")]

    def __init__(self, count: int, where: str) -> None:
        super().__init__()
        self.question = Text(f"Send {count} pasted lines to ")
        self.question.append(clean(where), style="bold")
        self.question.append(", one message each?\n")
        self.question.append("y", style="bold")
        self.question.append(" / Enter: send    ")
        self.question.append("n", style="bold")
        self.question.append(" / Esc: cancel")

    def compose(self) -> ComposeResult:
        yield Static(self.question, id="question")

    def action_answer(self, send: bool) -> None:
        self.dismiss(send)


class ChatApp(App[int]):
    TITLE = "zchat"
    ENABLE_COMMAND_PALETTE = False  # its Ctrl+P is the previous window here
    # Side panes narrow, then fold away, as the terminal does: below 80 columns the
    # members go (the window's title says where you are), below 50 the window list too
    # (the status line numbers the windows with something new).
    HORIZONTAL_BREAKPOINTS = [(0, "-tiny"), (50, "-narrow"), (80, "-normal"),
                              (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (16, "-tall")]
    CSS = """
    #status { height: 1; width: 100%; background: $panel; }
    #main { height: 1fr; }
    SideList { width: 16; height: 100%; border: round $primary-darken-2; }
    SideList > .option-list--option-highlighted { text-style: bold; }
    Screen.-wide SideList { width: 24; }
    Screen.-narrow #windows { width: 14; }
    Screen.-narrow #members, Screen.-tiny SideList { display: none; }
    Screen.-short Footer { display: none; }
    #middle { width: 1fr; }
    #panes { height: 1fr; }
    ChatLog { height: 100%; border: round $primary; padding: 0 1;
              scrollbar-size-vertical: 1; }
    #pending { height: auto; padding: 0 1; display: none; }
    ChatInput { dock: bottom; }
    """
    BINDINGS = [
        Binding("ctrl+n", "switch(1)", "Next window"),
        Binding("ctrl+p", "switch(-1)", "Previous window"),
        *[Binding(f"alt+{n % 10}", f"goto({n})", show=False) for n in range(1, 11)],
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, conn: Connection, server: str) -> None:
        super().__init__()
        self.conn = conn
        self.server = server
        self.state = ChatState(conn.rooms)
        self.status = status_of(self.conn, self.state)
        self.windows = Windows()
        self.outbox = Outbox()
        self.logs: dict[Window, ChatLog] = {}
        self._log_ids = itertools.count(1)
        self._quiet_joins: list[str] = []  # switches by key or click: no confirmation
        self._read_fd, self._write_fd = os.pipe()
        self._thread: threading.Thread | None = None
        self._quitting = False
        self._tab: tuple[str, int, list[str], int] | None = None  # (value made, start, ...)
        self._shown_windows: list[Any] = []
        self._shown_members: list[str] = []

    # -- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="main"):
            yield SideList(id="windows")
            with Vertical(id="middle"):
                with ContentSwitcher(id="panes", initial="log-0"):
                    yield self._new_log(self.windows.server)
                yield Static(id="pending")
            yield SideList(id="members")
        keys = {"tab": self.action_complete, "ctrl+n": lambda: self.action_switch(1),
                "ctrl+p": lambda: self.action_switch(-1),
                **{f"alt+{n % 10}": partial(self.action_goto, n) for n in range(1, 11)}}
        yield ChatInput(self.type_line, self.paste_lines, keys, id="input",
                        placeholder="Type a message or a command; /help lists them, "
                                    "Tab completes")
        yield Footer()

    def _new_log(self, window: Window) -> ChatLog:
        log = ChatLog(window, id="log-0" if window is self.windows.server
                      else f"log-{next(self._log_ids)}")
        self.logs[window] = log
        return log

    def log_of(self, window: Window) -> ChatLog:
        """The window's pane, made and mounted the first time it is needed."""
        if window not in self.logs:
            log = self._new_log(window)
            log.display = False  # until the switcher shows it
            self.query_one("#panes", ContentSwitcher).mount(log)
        return self.logs[window]

    def on_mount(self) -> None:
        self.query_one("#windows", SideList).border_title = "Windows"
        self.note(f"Connected to {clean(self.server)}. Type /help for commands. Windows: "
                  "Ctrl+N/Ctrl+P, Alt+1..9 or /window N; /query NAME talks to NAME "
                  "in a window of its own.", self.windows.server)
        self.query_one(ChatInput).focus()
        self._refresh()
        self.set_interval(1.0, self._refresh)  # the lag moves without events
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
        """Hand a line to the Runner, exactly as the line mode does."""
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
        if not self.query("#status"):  # closing: the widgets are gone, but the network
            return  # thread's last events may still be on their way
        event, status = message.event, message.status
        self.status = status
        me, d = status.name, event.data
        quiet = entered = False
        if event.kind == "reply" and d.get("cmd") in ("join", "create") and d.get("room"):
            quiet = d["cmd"] == "join" and d["room"] in self._quiet_joins
            if quiet:
                self._quiet_joins.remove(d["room"])
            entered = not quiet
        elif event.kind == "error" and d.get("cmd") == "join":
            self._quiet_joins.clear()
        self.outbox.settle(event)
        for window, shown in self.windows.route(event, me, status.current):
            lines = [] if quiet else styled(
                shown, me, room_shown=window.name if window.kind == ROOM else None)
            mention = highlighted(shown, me)
            log = self.log_of(window)
            for line in lines:
                log.add(to_rich(line, HIGHLIGHT_LINE if mention else ""))
            self.windows.added(window, len(lines), shown, me)
            if mention and lines and window is not self.windows.current:
                self.notify(f"{window.title}: {''.join(t for _, t in lines[0][1:])}",
                            title="Private message" if window.kind == QUERY
                            else "You were mentioned", markup=False, timeout=5)
        if entered:
            self.show_window(self.windows.open(ROOM, d["room"]), join=False)
        for gone in self.windows.sync_rooms(status.rooms, status.current):
            self.logs.pop(gone).remove()
        self._refresh()

    def on_finished(self, message: Finished) -> None:
        self.exit(message.code)

    def note(self, text: str, window: Window | None = None) -> None:
        """A line of our own (a hint, a usage) in a window, the current one by default."""
        window = window or self.windows.current
        event = Event("info", {"text": text})
        for line in styled(event):
            self.log_of(window).add(to_rich(line))
        self.windows.added(window, 1, event, None)

    # -- windows ----------------------------------------------------------------------------

    def show_window(self, window: Window, join: bool = True) -> None:
        """Put a window on show; a room's becomes the library's current room too (a
        quiet ``/join``), unless it already is and no other switch is on its way."""
        left = self.windows.current
        self.windows.show(window)
        if left is not window and left in self.logs:
            self.logs[left].set_seen(left.seen)  # the old rule goes; a new one may come
        if join and window.kind == ROOM and (window.name != self.status.current
                                             or self._quiet_joins):
            self._quiet_joins.append(window.name)
            self.send_line(f"/join {window.name}")
        self._refresh()

    def action_switch(self, step: int) -> None:
        self.show_window(self.windows.step(step))

    def action_goto(self, number: int) -> None:
        window = self.windows.at(number)
        if window is not None:
            self.show_window(window)

    def action_scroll(self, pages: int) -> None:
        log = self.logs[self.windows.current]
        (log.scroll_page_down if pages > 0 else log.scroll_page_up)(animate=False)

    def _ui(self, action: str, arg: Any) -> None:
        """``/window N`` and ``/query [NAME]``, carried out here."""
        if action == "window":
            window = self.windows.at(arg) if isinstance(arg, int) else None
            if window is None:
                self.note(f"No such window: there are {len(self.windows.all)} "
                          "(/window N switches to window N)")
            else:
                self.show_window(window)
        elif arg:
            names = str(arg).split(",")
            if not all(P.is_nickname(n) for n in names):
                self.note(f"Bad nickname: {clean(arg)}")
            else:
                self.show_window(self.windows.open(QUERY, conversation(names,
                                                                       self.status.name)))
        elif self.windows.current.kind == QUERY:  # /query alone closes the conversation
            gone = self.windows.current
            self.windows.close(gone)
            self.logs.pop(gone).remove()
            self._refresh()
        else:
            self.note("Usage: /query NAME opens a conversation with NAME; /query alone, "
                      "in a conversation window, closes it")

    # -- side lists and status --------------------------------------------------------------

    def _refresh(self) -> None:
        if not self.query("#status"):  # closing (the interval may still fire once)
            return
        self.status = status_of(self.conn, self.state)
        windows, current = self.windows, self.windows.current
        self.query_one("#status", Static).update(self._status_line())
        entries = [(n, w.title, w.kind, w.unread, w.activity)
                   for n, w in enumerate(windows.all, 1)]
        listing = self.query_one("#windows", SideList)
        if entries != self._shown_windows:
            self._shown_windows = entries
            listing.set_options(Option(to_rich(window_label(n, w)))
                                for n, w in enumerate(windows.all, 1))
        listing.highlighted = windows.all.index(current)
        switcher = self.query_one("#panes", ContentSwitcher)
        log = self.log_of(current)
        if switcher.current != log.id:
            switcher.current = log.id
        title = f"{windows.number(current)} {clean(current.title)}"
        subject = self.state.subject_of(current.name) if current.kind == ROOM else ""
        if subject:  # the room's topic (Textual cuts the border to fit; /topic shows it all)
            title += " ─ " + clean(subject)
        log.border_title = plain_content(title + (" (private)" if current.kind == QUERY
                                                  else ""))
        self._refresh_members(current)
        self._refresh_pending(current)

    def _refresh_members(self, window: Window) -> None:
        me = self.status.name
        names = (self.state.members_of(window.name) if window.kind == ROOM else
                 sorted({*window.people, me} - {None}, key=str.lower)
                 if window.kind == QUERY else [])
        members = self.query_one("#members", SideList)
        if names != self._shown_members:
            self._shown_members = names
            members.set_options(Option(self._member_label(n, me)) for n in names)
            members.highlighted = None  # a highlight would hide the names' colours
        members.border_title = f"Members ({len(names)})" if names else "Members"

    def _refresh_pending(self, window: Window) -> None:
        waiting = self.outbox.of(window)
        box = self.query_one("#pending", Static)
        box.display = bool(waiting)
        if not waiting:
            return
        shown = Text()
        for pending in waiting[:PENDING_SHOWN]:
            shown.append(f"⧗ {clean(self.status.name or '')}: ", style=RICH_STYLE["pending"])
            shown.append(clean(pending.text) + "\n", style=RICH_STYLE["pending"])
        more = len(waiting) - PENDING_SHOWN
        shown.append(f"⧗ {more} more waiting to be sent" if more > 0 else
                     "⧗ waiting to be sent", style="dim")
        box.update(shown)

    def _status_line(self) -> Text:
        """`` alice │ 2:lounge │ act: 3,4 │ connected · lag 2 ms │ 5 queued ``"""
        s, windows = self.status, self.windows
        current = windows.current
        out: Line = [("", " "), ("name", clean(s.name) if s.name else "(no nickname)"),
                     ("sep", " │ "), ("dim", f"{windows.number(current)}:"),
                     ("private" if current.kind == QUERY else "room", clean(current.title))]
        act = activity_list(windows)
        if act:
            out += [("sep", " │ "), *act]
        link = {"connected": "good", "reconnecting": "warn", "lost": "bad"}[s.link]
        out += [("sep", " │ "), (link, s.link)]
        if s.lag is not None and s.link == "connected":
            out += [("", " · "), ("lag", f"lag {format_lag(s.lag)}")]
        queued = getattr(self.conn, "queued", None)  # the library's pacing, when it has it
        queued = queued() if callable(queued) else queued
        if isinstance(queued, int) and queued:
            out += [("sep", " │ "), ("warn", f"{queued} queued")]
        return to_rich(out)

    @staticmethod
    def _member_label(name: str, me: str | None) -> Text:
        return Text(clean(name), style=("bold " if name == me else "")
                    + NICK_COLOURS[nick_colour(name)])

    # -- what the person does ---------------------------------------------------------------

    def type_line(self, line: str, pasted: bool = False) -> None:
        """A line typed (or pasted) in the window on show."""
        self._tab = None
        window = self.windows.current
        out = outgoing(line, window, pasted)
        if out is None:
            if line.strip():
                self.note("Nothing is said in the lobby window: switch to a room "
                          "(Ctrl+N, /window N) or talk to someone with /query NAME")
            return
        if command := ui_command(out, self.status.current):
            self._ui(*command)
            return
        room = window.name if window.kind == ROOM else self.status.current
        if self.outbox.sent(window, out, room):
            self._refresh_pending(window)
        self.send_line(out)

    def paste_lines(self, pasted: list[str]) -> None:
        """A paste of several lines: one message each, in the window on show; above a
        few lines, once the person said yes."""
        lines = [line for line in pasted if line.strip()]
        window = self.windows.current

        def send(confirmed: bool | None) -> None:
            if not confirmed:
                self.note(f"Paste of {len(lines)} lines not sent", window)
                return
            if window in self.windows.all and window is self.windows.current:
                for line in lines:
                    self.type_line(line, pasted=True)

        if len(lines) > PASTE_ASK_ABOVE:
            self.push_screen(PasteConfirm(len(lines), window.title), send)
        else:
            send(True)

    @on(OptionList.OptionSelected, "#windows")
    def _window_clicked(self, message: OptionList.OptionSelected) -> None:
        window = self.windows.at(message.option_index + 1)
        if window is not None:
            self.show_window(window)
        self.query_one(ChatInput).focus()

    @on(OptionList.OptionSelected, "#members")
    def _member_clicked(self, message: OptionList.OptionSelected) -> None:
        name = self._shown_members[message.option_index]
        if name != self.status.name:
            self._ui("query", name)
        self.query_one(ChatInput).focus()

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
                self.notify("  ".join(c.display for c in candidates), timeout=4,
                            markup=False)
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
