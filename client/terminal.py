"""The interactive line mode: the chat scrolls above a prompt that is never garbled.

The pieces below the line mode itself are shared with the full-screen mode (``tui``):

* ``ChatState``: what a person wants to see beyond the library's own state, learnt from
  events: unread counts, the members of each room, the room and nicknames seen (for Tab).
* ``styled``: ``render.render``'s lines with a timestamp and a colour per nickname, as
  ``(style, text)`` fragments; ``to_ansi`` (here) and ``tui.to_rich`` draw them.
* ``completions``: Tab, from the command table, the rooms and the names seen.
* ``status_fragments``: the toolbar (nickname, room, unread counts, connection, lag).
* ``wrap``: a line cut to the screen's width, each continuation marked, so that no
  message can make a screen line of its own that looks like the start of another.

Threads: the ``Runner`` owns the sockets on its own thread and calls ``show``; the prompt
runs on the main thread. ``show`` prints through prompt_toolkit's ``patch_stdout`` proxy
and asks for a repaint with ``invalidate``, both thread-safe; typed lines go to the Runner
through a pipe. ``ChatState`` is shared by both threads and guards itself with a lock.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schema import protocol as P

from . import commands
from .connection import Connection, Event, RoomView
from .render import clean, render
from .runner import BACKLOG_NOTICE, Runner

Fragment = tuple[str, str]  # (style, text); styles are the names in STYLES below
Line = list[Fragment]

# Nicknames are coloured from this palette by a stable hash (crc32, not ``hash``, which
# changes from run to run). Red is left out: it means an error.
PALETTE = ("green", "yellow", "blue", "magenta", "cyan", "bright_green", "bright_yellow",
           "bright_blue", "bright_magenta", "bright_cyan")

# How each event kind's lines look as a whole; the nickname in them gets its own colour.
LINE_STYLE = {
    "join": "dim", "leave": "dim", "history": "dim",
    "dm": "private", "whisper": "private", "broadcast": "bold",
    "error": "error", "kicked": "alert", "ejected": "alert",
    "lost": "warn", "reconnecting": "warn", "shutdown": "warn",
    "restored": "good", "resumed": "good",
}

# Style name -> SGR parameters for the line mode (the TUI maps the same names to Rich).
_SGR = {
    "time": "2", "dim": "2", "bold": "1", "private": "35", "error": "31", "alert": "1;31",
    "warn": "33", "good": "32", "self": "1",
    "green": "32", "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36",
    "bright_green": "92", "bright_yellow": "93", "bright_blue": "94",
    "bright_magenta": "95", "bright_cyan": "96",
}


def nick_colour(name: str) -> str:
    """The same colour for the same name, in every run and on every machine."""
    return PALETTE[zlib.crc32(name.encode("utf-8", "backslashreplace")) % len(PALETTE)]


def timestamp(ts: Any, now: Callable[[], float] = time.time) -> str:
    """``[HH:MM]`` in local time, from an event's ``ts`` (seconds since the epoch)."""
    when = ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else now()
    return time.strftime("[%H:%M]", time.localtime(when))


# --- one event as styled lines ---------------------------------------------------------


def _per_line(event: Event, count: int) -> list[tuple[Any, Any]]:
    """(ts, nickname) for each of the ``count`` lines ``render`` made of ``event``."""
    d = event.data
    if event.kind == "history":
        nested = [e for e in d.get("events") or () if isinstance(e, dict)]
        if count == len(nested) + 2:  # a header, one line per event, a footer
            return [(None, None)] + [(e.get("ts"), e.get("from", e.get("name")))
                                     for e in nested] + [(None, None)]
        return [(None, None)] * count
    nick = d.get("from") if event.kind in ("msg", "dm", "whisper", "broadcast") else (
        d.get("name") if event.kind in ("join", "leave") else None)
    return [(d.get("ts"), nick)] * count


def _nick_span(text: str, nick: str, start: int) -> tuple[int, int] | None:
    """Where the speaker's (cleaned) name is in a rendered line: the earliest of the
    places render puts a name (``NAME: ``, ``* NAME ``, ``NAME joined``, ``NAME left``)."""
    spots = []
    for pattern, skip in ((f"{nick}: ", 0), (f"* {nick} ", 2), (f"{nick} joined", 0),
                          (f"{nick} left", 0)):
        at = text.find(pattern, start)
        if at >= 0:
            spots.append(at + skip)
    if not spots:
        return None
    at = min(spots)
    return at, at + len(nick)


def styled(event: Event, me: str | None = None, *, room_shown: str | None = None,
           stamp: bool = True, now: Callable[[], float] = time.time) -> list[Line]:
    """``render(event)`` with a timestamp and colours. ``room_shown``: the room whose pane
    this goes to; its ``[room]`` prefix is left out (the full-screen mode)."""
    lines = render(event)
    base = LINE_STYLE.get(event.kind, "")
    prefix = f"[{clean(room_shown)}] " if room_shown is not None else None
    out = []
    for text, (ts, nick) in zip(lines, _per_line(event, len(lines)), strict=True):
        if prefix and text.startswith(prefix):
            text = text[len(prefix):]
        line: Line = [("time", timestamp(ts, now) + " ")] if stamp else []
        span = _nick_span(text, clean(nick), 0) if isinstance(nick, str) and nick else None
        if span is None:
            line.append((base, text))
        else:
            colour = nick_colour(nick)  # type: ignore[arg-type]
            style = f"self {colour}" if nick == me else colour
            line += [(base, text[:span[0]]), (style, text[span[0]:span[1]]),
                     (base, text[span[1]:])]
        out.append([(s, t) for s, t in line if t])
    return out


# --- screen lines ----------------------------------------------------------------------

# Starts every screen line after the first of a long line. The terminal's own wrapping
# would start a screen line with whatever the text holds there: a message padded with
# spaces to the width could then show "[12:00] [lounge] alice: ..." as a line of its own.
CONTINUATION = "  ↳ "


def _cells(ch: str) -> int:
    from wcwidth import wcwidth  # a dependency of prompt_toolkit

    return max(0, wcwidth(ch))


def wrap(line: Line, width: int) -> list[Line]:
    """``line`` as screen lines of fewer than ``width`` cells (one spare, for terminals
    that disagree about a character's width), continuations marked. Characters are
    counted one by one, so an emoji sequence counts wider than shown: safe, not tight."""
    limit = width - 1
    if limit <= len(CONTINUATION) + 1:
        return [line]
    out: list[Line] = [[]]
    used = 0
    for style, text in line:
        for ch in text:
            cells = _cells(ch)
            if used + cells > limit:
                out.append([("dim", CONTINUATION)])
                used = len(CONTINUATION)
            current = out[-1]
            if current and current[-1][0] == style:
                current[-1] = (style, current[-1][1] + ch)
            else:
                current.append((style, ch))
            used += cells
    return out


def wrap_text(text: str, width: int) -> list[str]:
    return [plain(line) for line in wrap([("", text)], width)]


def to_ansi(line: Line, colour: bool = True) -> str:
    """One styled line for a terminal. Only our own SGR codes are added: the text was
    cleaned by ``render``, so nothing in it can move the cursor or change the screen."""
    if not colour:
        return "".join(text for _, text in line)
    out = []
    for style, text in line:
        codes = ";".join(_SGR[s] for s in style.split() if s in _SGR)
        out.append(f"\x1b[{codes}m{text}\x1b[0m" if codes else text)
    return "".join(out)


def plain(line: Line) -> str:
    return "".join(text for _, text in line)


# --- what the UI learns from events ----------------------------------------------------


class ChatState:
    """Unread counts and the names seen, from the stream of events; members of each room
    come from the library (``RoomView.members``), which applies joins and leaves in order.

    ``observe`` is told, with each event, the current room and the rooms joined as the
    library saw them when it emitted the event. Thread-safe: the network thread observes,
    the UI thread reads.
    """

    def __init__(self, rooms: Mapping[str, RoomView] | None = None) -> None:
        self._lock = threading.Lock()
        self._rooms = rooms if rooms is not None else {}
        self.unread: dict[str, int] = {}
        self.rooms_seen: set[str] = set()
        self.nicks_seen: set[str] = set()
        self.subjects: dict[str, str] = {}  # room -> its topic, as last told

    def observe(self, event: Event, current: str | None, joined: Iterable[str]) -> None:
        d, kind = event.data, event.kind
        joined = list(joined)
        with self._lock:
            if kind == "reply" and d.get("cmd") == "users":
                self._nicks(d.get("users") or ())
            elif kind == "reply" and d.get("cmd") == "rooms":
                self._rooms_named(r.get("room") for r in d.get("rooms") or ()
                                  if isinstance(r, dict))
            self._subject(kind, d)
            if kind == "msg" and not d.get("replay") and d.get("room") != current \
                    and d.get("room") in joined:
                self.unread[d["room"]] = self.unread.get(d["room"], 0) + 1
            to = d.get("to")
            self._nicks([d.get("from"), d.get("name"), *(to if isinstance(to, list) else [to]),
                         *(d.get("members") or ())])
            self._rooms_named([d.get("room")])
            for room in [r for r in self.unread if r not in joined or r == current]:
                del self.unread[room]
            self.rooms_seen.update(joined)

    def _subject(self, kind: str, d: dict[str, Any]) -> None:
        """A room's topic: told on entering it (the welcome) and by each change."""
        room = d.get("room")
        if not isinstance(room, str):
            return
        entered = kind == "reply" and d.get("cmd") in ("join", "create")
        if entered or kind == "subject":
            text = d.get("subject" if entered else "text")
            self.subjects[room] = text if isinstance(text, str) else ""

    def subject_of(self, room: str | None) -> str:
        with self._lock:
            return self.subjects.get(room or "", "")

    def _nicks(self, names: Iterable[Any]) -> None:
        self.nicks_seen.update(n for n in names if isinstance(n, str) and P.is_nickname(n))

    def _rooms_named(self, names: Iterable[Any]) -> None:
        self.rooms_seen.update(n for n in names if isinstance(n, str) and P.is_room_name(n))

    def unread_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.unread)

    def members_of(self, room: str | None) -> list[str]:
        view = self._rooms.get(room or "")
        # list() of a list is one step under the GIL: a safe copy from the network thread.
        return sorted(list(view.members), key=str.lower) if view is not None else []

    def names(self, current: str | None) -> tuple[list[str], list[str], list[str]]:
        """(rooms seen, nicknames seen, members of ``current``), for completion."""
        members = self.members_of(current)
        with self._lock:
            return sorted(self.rooms_seen), sorted(self.nicks_seen | set(members)), members


# --- the status line -------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    name: str | None
    current: str | None
    rooms: tuple[str, ...]
    unread: Mapping[str, int]
    link: str  # "connected", "reconnecting" or "lost"
    lag: float | None


def link_state(conn: Any) -> str:
    return "lost" if conn.lost else "reconnecting" if conn.resuming else "connected"


def status_of(conn: Any, state: ChatState) -> Status:
    lag = conn.lag()
    return Status(conn.name, conn.current, tuple(list(conn.rooms)), state.unread_counts(),
                  link_state(conn), lag)


def format_lag(lag: float) -> str:
    return f"{lag * 1000:.0f} ms" if lag < 1 else f"{lag:.1f} s"


def status_fragments(s: Status) -> Line:
    """`` alice │ lounge │ rooms: dev(3) lounge │ connected · lag 2 ms ``."""
    sep = ("sep", " │ ")
    out: Line = [("", " "), ("name", clean(s.name) if s.name else "(no nickname)"), sep,
                 ("room", clean(s.current) if s.current else "lobby")]
    if s.rooms:
        out += [sep, ("", "rooms:")]
        for room in s.rooms:
            n = s.unread.get(room, 0)
            out += [("", " "), ("unread", f"{clean(room)}({n})") if n else
                    ("current" if room == s.current else "", clean(room))]
    link_style = {"connected": "good", "reconnecting": "warn", "lost": "bad"}[s.link]
    out += [sep, (link_style, s.link)]
    if s.lag is not None and s.link == "connected":
        out += [("", " · "), ("lag", f"lag {format_lag(s.lag)}")]
    return out + [("", " ")]


# --- Tab -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    text: str  # replaces the word being completed
    display: str
    meta: str = ""


def _command_names() -> list[tuple[str, commands.Spec]]:
    return [(name, spec) for spec in commands.COMMANDS for name in spec.names]


def _placeholder(spec: commands.Spec, index: int) -> str:
    words = [w.strip("[]") for w in spec.usage.split()[1:]]
    return words[index] if index < len(words) else ""


def _matching(word: str, names: Iterable[str]) -> list[str]:
    low = word.lower()
    seen: dict[str, None] = {}
    for name in names:
        if name.lower().startswith(low):
            seen.setdefault(name)
    return list(seen)


def completions(before: str, current: str | None, rooms: Iterable[str],
                nicks: Iterable[str], members: Iterable[str] = (),
                me: str | None = None) -> tuple[int, list[Candidate]]:
    """Tab: what may replace the word before the cursor, and where that word starts.

    The first word of a command line completes command names (bare in the lobby, where
    the slash is optional); a command's arguments complete by its usage in the command
    table (ROOM: rooms, NAME: nicknames, COMMAND: commands); words of a chat line
    complete nicknames, members of the current room first, ``NAME: `` at the start.
    """
    start = before.rfind(" ") + 1
    word, head = before[start:], before[:start].split()
    stripped = before.lstrip()
    slash = stripped.startswith("/") and not stripped.startswith("//")
    command_line = slash or (current is None and bool(stripped))
    people = [n for n in [*sorted(members, key=str.lower), *sorted(nicks, key=str.lower)]
              if n != me]
    if not head:
        if command_line:
            lead = "/" if word.startswith("/") else ""
            return start, [
                Candidate(f"{lead}{name}" + (" " if len(spec.usage.split()) > 1 else ""),
                          f"{lead}{name}", spec.doc)
                for name, spec in _command_names() if name.startswith(word[len(lead):].lower())]
        return start, [Candidate(f"{n}: ", clean(n)) for n in _matching(word, people)]
    if not command_line:
        return start, [Candidate(n, clean(n)) for n in _matching(word, people)]
    spec = commands.find(head[0].lstrip("/"))
    kind = _placeholder(spec, len(head) - 1) if spec else ""
    if kind == "ROOM":
        return start, [Candidate(r, clean(r), "room") for r in _matching(word, sorted(rooms))]
    if kind.startswith("NAME"):
        if kind.startswith("NAME[,"):  # a list of names: complete the last one
            start += word.rfind(",") + 1
            word = word[word.rfind(",") + 1:]
        return start, [Candidate(n, clean(n), "nickname") for n in _matching(word, people)]
    if kind == "COMMAND":
        return start, [Candidate(name, name, spec.doc) for name, spec in _command_names()
                       if name.startswith(word.lower())]
    return start, []


# --- the line mode ---------------------------------------------------------------------


PROMPT_STYLE = {
    "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    "bottom-toolbar.name": "bold #ffffff",
    "bottom-toolbar.room": "bold #5fd7ff",
    "bottom-toolbar.current": "underline",
    "bottom-toolbar.unread": "bold #ffd75f",
    "bottom-toolbar.sep": "#808080",
    "bottom-toolbar.good": "#87d787",
    "bottom-toolbar.warn": "bold #ffd75f",
    "bottom-toolbar.bad": "bold #ff5f5f",
    "bottom-toolbar.lag": "#a8a8a8",
    "prompt.room": "bold #5fd7ff",
    "pending": "#a8a8a8 italic",
}


def prompt_text(conn: Any, query: str | None = None) -> str:
    if query:
        return f"[query {clean(query)}] "
    return f"[{clean(conn.current)}] " if conn.current else f"{clean(conn.name or 'lobby')}> "


# A bracketed paste of more lines than this asks first, as weechat does.
PASTE_CONFIRM_OVER = 3
PENDING_SHOWN = 3  # lines not yet acknowledged shown above the prompt; then a count
PENDING_AFTER = 0.5  # a line answered sooner than this is never shown as pending


def pending_text(pending: list[str], backlog: int, width: int) -> list[str]:
    """The lines above the prompt: what was typed and not yet acknowledged (while the
    broker is away, or a paste is being paced out), then how many still wait."""
    room = max(10, width - 12)
    out = []
    for line in pending[:PENDING_SHOWN]:
        text = clean(line.strip())
        out.append("(pending) " + (text if len(text) <= room else text[:room - 1] + "…"))
    if len(pending) > PENDING_SHOWN:
        out.append(f"(pending) … and {len(pending) - PENDING_SHOWN} more")
    if backlog >= BACKLOG_NOTICE:
        out.append(f"sending {backlog} queued lines…")
    return out


def paste_lines(before: str, data: str, after: str) -> list[str]:
    """What a bracketed paste into a line (around the cursor) sends: one message per
    line, in order; blank lines mean nothing, as when typed."""
    text = (before + data + after).replace("\r\n", "\n").replace("\r", "\n")
    return [line for line in text.split("\n") if line.strip()]


def run(conn: Connection, server: str, ask_name: bool = False) -> int:
    """Chat at a prompt until /quit, Ctrl-D on an empty line, end of input, or the broker
    ends the session. Ctrl-C clears the line being typed, as in a shell."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion
    from prompt_toolkit.document import Document
    from prompt_toolkit.formatted_text import FormattedText
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
    from prompt_toolkit.keys import Keys
    from prompt_toolkit.patch_stdout import patch_stdout
    from prompt_toolkit.styles import Style

    state = ChatState(conn.rooms)
    colour = "NO_COLOR" not in os.environ
    read_end, write_end = os.pipe()
    done = threading.Event()
    outcome: dict[str, int] = {}
    pastes: list[list[str]] = []  # a multi-line bracketed paste, for the loop to send

    def send_line(line: str) -> None:
        os.write(write_end, line.replace("\n", " ").encode() + b"\n")

    class ChatCompleter(Completer):
        def get_completions(self, document: Document, complete_event: CompleteEvent
                            ) -> Iterable[Completion]:
            before = document.text_before_cursor
            rooms, nicks, members = state.names(conn.current)
            start, found = completions(before, conn.current, rooms, nicks, members,
                                       conn.name)
            for c in found:
                yield Completion(c.text, start_position=start - len(before),
                                 display=c.display, display_meta=c.meta)

    def toolbar() -> FormattedText:
        frags = status_fragments(status_of(conn, state))
        return FormattedText([(f"class:bottom-toolbar.{s}" if s else "", t) for s, t in frags])

    keys = KeyBindings()

    @keys.add(Keys.BracketedPaste)
    def _paste(event: KeyPressEvent) -> None:
        data = event.data.replace("\r\n", "\n").replace("\r", "\n")
        buffer = event.current_buffer
        if "\n" not in data.rstrip("\n"):  # one line: into the line being typed
            buffer.insert_text(data.rstrip("\n"))
            return
        doc = buffer.document
        pastes.append(paste_lines(doc.text_before_cursor, data, doc.text_after_cursor))
        event.app.exit(result="")

    for digit in "123456789":  # Alt+digit: /window N, keeping the line being typed
        @keys.add("escape", digit)
        def _window(event: KeyPressEvent, n: str = digit) -> None:
            send_line(f"/window {n}")

    session: Any = PromptSession(
        completer=ChatCompleter(), complete_while_typing=False, bottom_toolbar=toolbar,
        erase_when_done=True, refresh_interval=0.5, style=Style.from_dict(PROMPT_STYLE),
        key_bindings=keys)
    confirm: Any = PromptSession(erase_when_done=True)

    def show(event: Event) -> None:  # on the network thread
        state.observe(event, conn.current, conn.rooms)
        width = _columns()
        for line in styled(event, conn.name, stamp=event.kind != "outcome"):
            for part in wrap(line, width):
                print(to_ansi(part, colour), flush=True)
        session.app.invalidate()

    runner = Runner(conn, show, read_end, outcomes=True,
                    ask_name="terminal" if ask_name else None)

    def _columns() -> int:
        # The session's own output, from any thread (get_app() would find no app on the
        # network thread, and a dummy 80 columns).
        try:
            return session.app.output.get_size().columns
        except (OSError, ValueError):
            return 80

    def prompt() -> FormattedText:
        above = pending_text(runner.pending_lines(PENDING_AFTER), runner.backlog(),
                             _columns())
        return FormattedText([("class:pending", line + "\n") for line in above]
                             + [("class:prompt.room", prompt_text(conn, runner.query))])

    def network(loop: asyncio.AbstractEventLoop) -> None:
        try:
            outcome["code"] = runner.run()
        finally:
            done.set()
            loop.call_soon_threadsafe(stop_prompt)

    def stop_prompt() -> None:
        if done.is_set() and session.app.is_running:
            session.app.exit(exception=EOFError())

    async def send_paste(lines: list[str]) -> None:
        if len(lines) > PASTE_CONFIRM_OVER:
            try:
                answer = await confirm.prompt_async(
                    f"Send the {len(lines)} pasted lines as {len(lines)} messages? [y/N] ")
            except (EOFError, KeyboardInterrupt):
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print(f"Paste of {len(lines)} lines not sent")
                return
        for line in lines:
            send_line(line)

    async def chat() -> None:
        print(f"Connected to {clean(server)}. Type /help for commands, Tab completes.")
        thread = threading.Thread(target=network, args=(asyncio.get_running_loop(),),
                                  name="zchat-network", daemon=True)
        thread.start()
        while not done.is_set():
            try:
                line = await session.prompt_async(prompt, pre_run=stop_prompt)
            except KeyboardInterrupt:
                continue  # Ctrl-C: the line is cleared, nothing is sent
            except EOFError:
                line = "/quit"  # Ctrl-D on an empty line, or the Runner ended
            if done.is_set():
                break
            if pastes:
                await send_paste(pastes.pop())
                continue
            send_line(line)
            if commands.parse(line, conn.current, runner.query) == commands.Local("quit"):
                break
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)

    with patch_stdout(raw=True):
        asyncio.run(chat())
    os.close(write_end)
    os.close(read_end)
    return outcome.get("code", 0)
