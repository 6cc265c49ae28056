"""The client's one loop: input lines in, events out, over a Connection.

Line mode reads stdin here directly; the interactive terminal feeds the same loop
through a pipe, so both behave identically. Lines are carried out one at a time, each
once the broker has answered the one before: a script's ``join r`` is settled before
its next line is read as a message to ``r``, exactly as for a person at the keyboard.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

import zmq

from . import commands
from .commands import Local, Refused, Send
from .connection import Connection, Event

EXIT_OK, EXIT_LOST, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_ENDED = 0, 1, 2, 3, 4
# At end of input, how long to wait for a silent broker to come back and answer.
GIVE_UP_AFTER = 10.0


class Runner:
    def __init__(self, conn: Connection, show: Callable[[Event], None], input_fd: int):
        self.conn = conn
        self.show = show
        self.input_fd = input_fd
        self._lines: deque[str] = deque()
        self._partial = b""
        self._eof = False
        self._leaving = False  # /quit or end of input: a bye is on its way

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self.conn.dealer, zmq.POLLIN)
        poller.register(self.conn.sub, zmq.POLLIN)
        poller.register(self.input_fd, zmq.POLLIN)
        while True:
            for event in self.conn.pump():
                self.show(event)
                if event.kind == "kicked":
                    return EXIT_ENDED
            while self._lines and not self.conn.busy and not self._leaving:
                self._execute(self._lines.popleft())
            if self._eof and not self._lines and not self.conn.busy and not self._leaving:
                self._leave()
            if self._leaving and (not self.conn.busy or self.conn.lost):
                return EXIT_OK  # a broker that is away forgets us by itself
            if self._eof and self.conn.silent_for() > GIVE_UP_AFTER:
                return EXIT_LOST  # nobody will answer what we are waiting for
            ready = dict(poller.poll(self.conn.next_wakeup() * 1000))
            if self.input_fd in ready and not self._eof:
                self._read_input(poller)

    def interrupted(self, grace: float = 1.0) -> int:
        """Ctrl-C: say goodbye, so others see us leave at once, and stop."""
        self._leave()
        deadline = time.monotonic() + grace
        while self.conn.busy and not self.conn.lost and time.monotonic() < deadline:
            self.conn.dealer.poll(50)
            self.conn.pump()
        return EXIT_OK

    def _read_input(self, poller: zmq.Poller) -> None:
        data = os.read(self.input_fd, 1 << 16)
        if not data:
            self._eof = True
            poller.unregister(self.input_fd)
            data, self._partial = self._partial + b"\n", b""
            if data == b"\n":
                return
        *complete, self._partial = (self._partial + data).split(b"\n")
        self._lines.extend(line.decode("utf-8", "replace").rstrip("\r") for line in complete)

    def _execute(self, line: str) -> None:
        command = commands.parse(line, self.conn.current)
        if command is None:
            return
        if isinstance(command, Refused):
            self.show(Event("error", {"cmd": None, "code": command.code, "text": command.text}))
        elif isinstance(command, Send):
            for cmd, fields in command.requests:
                self.conn.request(cmd, **fields)
        elif isinstance(command, Local):
            self._local(command)

    def _local(self, command: Local) -> None:
        if command.action == "help":
            for text in commands.help_text(command.arg):
                self.show(Event("info", {"text": text}))
        elif command.action == "quit":
            self._leave()
        elif command.action == "history":
            self.conn.scroll_back(command.arg)

    def _leave(self) -> None:
        self.conn.request("bye")
        self._leaving = True
