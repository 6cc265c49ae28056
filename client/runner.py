"""The client's one loop: input lines in, events out, over a Connection.

Line mode reads stdin here directly; the interactive terminal feeds the same loop
through a pipe, so both behave identically. Lines are carried out one at a time, each
once the broker has answered the one before: a script's ``join r`` is settled before
its next line is read as a message to ``r``, exactly as for a person at the keyboard.
Nothing read is ever dropped: lines wait here, in order, and the Connection paces what
it sends to the broker's rate limit, so a 300-line pipe or paste is delivered whole.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

import zmq

from . import commands
from .commands import Local, Refused, Send
from .connection import Connection, Event
from .render import clean

EXIT_OK, EXIT_LOST, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_ENDED = 0, 1, 2, 3, 4
# At end of input, how long to wait for a silent broker to come back and answer.
GIVE_UP_AFTER = 10.0
# From this many lines waiting, say so ("sending 150 queued lines…"), at most this often.
BACKLOG_NOTICE = 10
NOTICE_EVERY = 2.0

NAME_QUESTION = "Your name? (or a command: /help lists them)"


class Runner:
    def __init__(self, conn: Connection, show: Callable[[Event], None], input_fd: int, *,
                 outcomes: bool = False, ask_name: str | None = None,
                 notice: Callable[[str], None] | None = None):
        """``outcomes``: print the chatroom assignment's ``Success``/``Failure`` line for
        its bare commands. ``ask_name``: "terminal" or "script" when no --name was given,
        to take the first line as the name, as the lobby program does (in the terminal
        an empty answer means "a guest name later"). ``notice``: told "sending N queued
        lines…" while lines wait for the rate limit (the line mode shows the backlog
        itself, from ``backlog`` and ``pending_lines``)."""
        self.conn = conn
        self.show = show
        self.input_fd = input_fd
        self.outcomes = outcomes
        self.notice = notice
        self.query: str | None = None  # /query NAME: plain text goes to NAME
        self._name_mode = ask_name
        self._awaiting_name = ask_name is not None
        self._lines: deque[str] = deque()
        self._in_flight: tuple[str, tuple[int, ...]] | None = None  # the line carried out
        self._in_flight_since = 0.0
        self._lock = threading.Lock()  # _lines and _in_flight, read by the UI thread
        self._outcome_for: set[int] = set()  # requests whose answer gets Success/Failure
        self._help_after: int | None = None  # the login of the name given on arrival
        self._partial = b""
        self._eof = False
        self._leaving = False  # /quit or end of input: a bye is on its way
        self._noticed = 0.0
        self._queued = 0  # the Connection's queue length, as of the last turn of the loop

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self.conn.dealer, zmq.POLLIN)
        poller.register(self.conn.sub, zmq.POLLIN)
        poller.register(self.input_fd, zmq.POLLIN)
        if self._name_mode == "terminal":
            self._info(NAME_QUESTION)
        while True:
            for event in self.conn.pump():
                self._shown(event)
                if event.kind == "kicked":
                    return EXIT_ENDED
            self._settle()
            while self._lines and not self.conn.busy and not self._leaving:
                with self._lock:
                    line = self._lines.popleft()
                self._execute(line)
                self._settle()
            if self._eof and not self._lines and not self.conn.busy and not self._leaving:
                self._leave()
            if self._leaving and (not self.conn.busy or self.conn.lost):
                return EXIT_OK  # a broker that is away forgets us by itself
            if self._eof and self.conn.silent_for() > GIVE_UP_AFTER:
                return EXIT_LOST  # nobody will answer what we are waiting for
            self._tell_backlog()
            ready = dict(poller.poll(self.conn.next_wakeup() * 1000))
            if self.input_fd in ready and not self._eof:
                self._read_input(poller)

    def interrupted(self, grace: float = 1.0) -> int:
        """Ctrl-C in a script: say goodbye, so others see us leave at once, and stop."""
        self._leave()
        deadline = time.monotonic() + grace
        while self.conn.busy and not self.conn.lost and time.monotonic() < deadline:
            self.conn.dealer.poll(50)
            self.conn.pump()
        return EXIT_OK

    # -- what the UI shows of lines not yet answered -----------------------------------------

    def pending_lines(self, older_than: float = 0.0) -> list[str]:
        """Lines read but not yet acknowledged by the broker, oldest first: the one being
        carried out (if it was sent ``older_than`` seconds ago or more), then those
        waiting their turn. Safe from another thread."""
        with self._lock:
            first = [self._in_flight[0]] if self._in_flight and \
                time.monotonic() - self._in_flight_since >= older_than else []
            return first + list(self._lines)

    def backlog(self) -> int:
        """How many lines wait to be sent (here, or in the Connection's paced queue).
        Safe from another thread: the Connection's count is taken on the loop's own."""
        with self._lock:
            return len(self._lines) + self._queued

    def _flying(self, line: str, rids: tuple[int, ...]) -> None:
        with self._lock:
            self._in_flight, self._in_flight_since = (line, rids), time.monotonic()

    def _settle(self) -> None:
        """Forget the line carried out once all its requests are answered."""
        with self._lock:
            if self._in_flight and all(self.conn.answered(r) for r in self._in_flight[1]):
                self._in_flight = None

    def _tell_backlog(self) -> None:
        queued = self.conn.queued
        with self._lock:
            self._queued = queued
        if self.notice is None:
            return
        waiting = self.backlog()
        now = time.monotonic()
        if waiting >= BACKLOG_NOTICE and now - self._noticed >= NOTICE_EVERY:
            self._noticed = now
            self.notice(f"sending {waiting} queued lines…")

    # -- input ----------------------------------------------------------------------------

    def _read_input(self, poller: zmq.Poller) -> None:
        data = os.read(self.input_fd, 1 << 16)
        if not data:
            self._eof = True
            poller.unregister(self.input_fd)
            data, self._partial = self._partial + b"\n", b""
            if data == b"\n":
                return
        *complete, self._partial = (self._partial + data).split(b"\n")
        with self._lock:
            self._lines.extend(line.decode("utf-8", "replace").rstrip("\r")
                               for line in complete)

    def _execute(self, line: str) -> None:
        if self._awaiting_name and (line.strip() or self._name_mode == "terminal") \
                and self._answer_name(line):
            return
        room = self.conn.current
        command = commands.parse(line, room, self.query)
        if command is None:
            return
        if isinstance(command, Refused):
            self.show(Event("error", {"cmd": None, "code": command.code, "text": command.text}))
        elif isinstance(command, Send):
            wants_outcome = self.outcomes and commands.reports_outcome(line, room, self.query)
            rids = []
            for cmd, fields in command.requests:
                rids.append(self.conn.request(cmd, **fields))
                if cmd in ("join", "create"):
                    self.query = None  # entering a room makes it the target again
            if wants_outcome:
                self._outcome_for.update(rids)
            self._flying(line, tuple(rids))
        elif isinstance(command, Local):
            self._local(command)

    def _answer_name(self, line: str) -> bool:
        """The first line, when nobody gave --name: is it the name asked for?"""
        self._awaiting_name = False
        name = commands.as_name(line)
        if name is not None:
            self._help_after = self.conn.request("login", name=name)
            self._flying(line, (self._help_after,))
            return True
        if self._name_mode == "terminal" and not line.strip():
            self._info("No name for now: you will be given a guest name when you join "
                       "a room.")
            self._show_help()
            return True
        return False  # a command: carried out as usual

    def _shown(self, event: Event) -> None:
        """Show an event, with what this loop adds: the Success/Failure line of the
        assignment's commands, and the command list once the name asked for is taken."""
        if event.re is not None and event.re in self._outcome_for \
                and event.kind in ("reply", "error"):
            self._outcome_for.discard(event.re)
            self.show(Event("outcome", {"ok": event.kind == "reply"}))
        self.show(event)
        if event.re is not None and event.re == self._help_after:
            self._help_after = None
            if event.kind == "reply":
                self._show_help()
            elif self._name_mode == "terminal":  # taken, say: a person may try another
                self._awaiting_name = True
                self._info(NAME_QUESTION)

    def _info(self, text: str) -> None:
        self.show(Event("info", {"text": text}))

    def _show_help(self, topic: str | None = None) -> None:
        for text in commands.help_text(topic):
            self._info(text)

    def _local(self, command: Local) -> None:
        if command.action == "help":
            self._show_help(command.arg)
        elif command.action == "quit":
            self._leave()
        elif command.action == "history":
            # The newest N messages up to now, oldest first: one block in time order,
            # under which only newer lines can appear (paging back further in a
            # scrolling terminal would print older pages below newer ones).
            room = self.conn.current
            if room is not None:
                self.conn.request("history", "scrollback", room=room, limit=command.arg)
        elif command.action == "window":
            self._window(command.arg)
        elif command.action == "query":
            self.query = command.arg
            self._info(f"Talking privately with {clean(command.arg)}: plain text goes "
                       "to them; /query alone to stop" if command.arg else
                       f"Back to {clean(self.conn.current)}" if self.conn.current else
                       "Private conversation ended")

    def _window(self, number: int) -> None:
        rooms = list(self.conn.rooms)
        if not 1 <= number <= len(rooms):
            self.show(Event("error", {"cmd": None, "code": "invalid_command", "text":
                                      f"No window {number}: you are in "
                                      f"{len(rooms)} room{'' if len(rooms) == 1 else 's'}"
                                      + (f" ({', '.join(rooms)})" if rooms else "")}))
            return
        self.conn.current = rooms[number - 1]
        self.query = None
        self._info(f"Now in {clean(rooms[number - 1])} (window {number})")

    def _leave(self) -> None:
        self.conn.request("bye")
        self._leaving = True
