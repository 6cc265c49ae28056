"""The load process speaking plain IRC, for ``--against ngircd``.

The same worker as bench/loadgen.py (the same plans, phases, pacing, closed-loop windows,
bitmaps, histograms and report) with only the wire changed: each simulated client is one
TCP connection that registers (``NICK``/``USER``), enters its rooms as channels (``JOIN
#room``, done when the server ends the names list, 366), sends ``PRIVMSG #room :TEXT`` or
``PRIVMSG nick :TEXT`` and reads lines. The text is the zchat load's, ``b1 SID N T_NS
[padding]``, so latency (receive time minus the send time in the text), lost and
duplicated (by the number in the text) are counted exactly as for zchat.

Differences IRC imposes, and how they are counted:

* An IRC server does not send a channel message back to its sender, so a room message
  has one receiver fewer than under zchat (49 in fanout's room of 50); the runner's
  expected receivers leave the sender out (``Plan.receivers_of(sid, echo=False)``). CPU is
  reported per delivery that happened, so the figures stay comparable.
* IRC acknowledges nothing, so the closed loop's window is end to end only (messages a
  sender has out that some receiver has not got yet), which zchat's load applies as well.
* IRC has no history: nothing can be caught up, a message not heard is lost.
* Senders become IRC operators and set user mode ``+F`` (relaxed flood protection) after
  registering, so ngIRCd does not throttle them (see bench/ngircd.py).
* ngIRCd does not set TCP_NODELAY, so its small writes to a receiver wait (Nagle) for
  the ACK of the previous one, which a receiver that sends nothing delays (up to 40 ms on
  Linux). Real clients do not work around that, so neither does this load by default;
  ``--irc-quickack`` makes receivers ACK at once (TCP_QUICKACK after every read), to show
  what that stall costs in latency and closed-loop throughput.
* Clients answer the server's PING; they send none of their own (the server's ping
  timeout is set far beyond a run).
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

import zmq

from .loadgen import Client, View, Worker
from .ngircd import OPER_NAME, OPER_PASSWORD

CONNECTS_AT_ONCE = 4  # registrations in progress per load process (ngIRCd's backlog is 10)
RECV_BYTES = 1 << 18
READS_PER_TURN = 4  # recv() calls on one readable connection in one turn


class Line:
    """One client's TCP connection."""

    __slots__ = ("client", "sock", "fd", "inbuf", "outbuf", "welcomed", "flood_ok")

    def __init__(self, client: Client, sock: socket.socket):
        self.client, self.sock, self.fd = client, sock, sock.fileno()
        self.inbuf = b""
        self.outbuf = bytearray()
        self.welcomed = False  # end of the MOTD (registration done)
        self.flood_ok = client.spec.sid is None  # senders wait for their mode +F


class IrcWorker(Worker):
    ECHO = False

    def __init__(self, index: int, specs: list, cfg: Any, pipe: Any, sent: Any, prog: Any,
                 totals: Any):
        super().__init__(index, specs, cfg, pipe, sent, prog, totals)
        host, _, port = cfg.server.rpartition(":")
        self.address = (host, int(port))
        self.lines: dict[int, Line] = {}  # fd -> connection
        self.line_of: dict[Client, Line] = {}
        self.dirty: set[Line] = set()
        self.quickack = cfg.irc_quickack
        if self.idle:
            raise ValueError("idle clients (crowd) are not simulated over IRC")

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.quit:
                self.turn()
                if self.dirty:
                    self.flush()
        finally:
            for line in self.lines.values():
                line.sock.close()
            self.ctx.term()

    def command(self, msg: tuple) -> None:
        what = msg[0]
        if what in ("create", "join"):
            self.phase = what
            for c in self.active:
                for room in (c.spec.creates if what == "create" else c.spec.joins):
                    self.write(c, f"JOIN #{room}\r\n")
            if what == "join":
                self.prepare_flow_control()
        else:
            super().command(msg)

    # -- connections ----------------------------------------------------------------------

    def start_clients(self) -> None:
        while self.to_start and len(self.handshakes) < CONNECTS_AT_ONCE:
            c = self.to_start.popleft()
            sock = socket.create_connection(self.address, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as libzmq does
            sock.setblocking(False)
            line = Line(c, sock)
            self.lines[line.fd] = line
            self.line_of[c] = line
            self.poller.register(line.fd, zmq.POLLIN)
            self.handshakes[c] = time.monotonic_ns()
            self.write(c, f"NICK {c.name}\r\nUSER {c.name} 0 * :zchat bench\r\n")
            if c.spec.sid is not None:
                self.write(c, f"OPER {OPER_NAME} {OPER_PASSWORD}\r\nMODE {c.name} +F\r\n")
            self.flush()

    def read_handshakes(self, now: int) -> None:
        for c in list(self.handshakes):
            if c.logged_in:
                del self.handshakes[c]

    def heartbeats(self, now: int) -> None:
        pass  # the server pings; we answer (see on_line)

    def post(self, c: Client, stream: str, target: str | None, text: str) -> None:
        """One benchmark message; the turn's messages of a client leave in one send()."""
        if target is None:
            self.write(c, f"PRIVMSG #{c.spec.room} :{text}\r\n")
        else:
            self.write(c, f"PRIVMSG {target} :{text}\r\n")

    def write(self, c: Client, text: str) -> None:
        line = self.line_of[c]
        line.outbuf += text.encode()
        self.dirty.add(line)

    def flush(self) -> None:
        for line in list(self.dirty):
            try:
                n = line.sock.send(line.outbuf)
            except BlockingIOError:
                self.send_blocked += 1
                continue
            except OSError as exc:
                self.closed(line, f"send: {exc}")
                continue
            del line.outbuf[:n]
            if not line.outbuf:
                self.dirty.discard(line)

    def closed(self, line: Line, why: str) -> None:
        self.dirty.discard(line)
        if self.lines.pop(line.fd, None) is None:
            return
        self.poller.unregister(line.fd)
        line.sock.close()
        self.error(line.client, "closed", why)
        if self.phase != "stopped":
            line.client.lost_session = True
            self.expired += 1

    def error(self, c: Client, code: str, text: str) -> None:
        self.error_codes[code] = self.error_codes.get(code, 0) + 1
        self.errors += 1
        if self.errors <= 5:
            print(f"bench irc load {self.index}: {c.name}: {code} {text}", file=sys.stderr)

    # -- what arrives ---------------------------------------------------------------------

    def readable(self, fd: Any) -> None:
        line = self.lines.get(fd)
        if line is None:
            return
        for _ in range(READS_PER_TURN):
            try:
                data = line.sock.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                self.closed(line, f"recv: {exc}")
                return
            if self.quickack:  # --irc-quickack: ACK now, so ngIRCd's Nagle need not wait
                line.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            if not data:
                self.closed(line, "the server closed the connection: "
                            + line.inbuf.decode("utf-8", "replace")[-200:])
                return
            parts = (line.inbuf + data).split(b"\r\n")
            line.inbuf = parts.pop()
            c = line.client
            for raw in parts:
                # the hot path: ":nick!user@host PRIVMSG target :b1 SID N T_NS ..."
                i = raw.find(b" PRIVMSG ")
                if i > 0 and raw[0] == 58:  # ':'
                    j = raw.find(b" :", i + 9)
                    if j > 0:
                        self.benchmark_text(c, raw[j + 2:].decode("ascii", "replace"), True)
                        continue
                self.on_line(line, raw)
            if len(data) < RECV_BYTES:
                return

    def on_line(self, line: Line, raw: bytes) -> None:
        c = line.client
        text = raw.decode("utf-8", "replace")
        prefix = ""
        if text.startswith(":"):
            prefix, _, text = text.partition(" ")
        cmd, _, rest = text.partition(" ")
        if cmd == "PING":
            self.write(c, f"PONG {rest}\r\n")
        elif cmd in ("376", "422"):  # end of MOTD, or none: registered
            line.welcomed = True
        elif cmd == "MODE" and rest.startswith(c.name + " ") and "F" in rest.split(" ", 1)[1]:
            line.flood_ok = True
        elif cmd == "366":  # end of the names list: in the channel
            room = rest.split(" ")[1].lstrip("#")
            view = View(room, b"", 0)
            view.heard = True  # one TCP stream: what follows the 366 reaches us
            c.views[room] = view
        elif cmd == "ERROR":
            self.error(c, "ERROR", rest)
        elif len(cmd) == 3 and cmd.isdigit() and cmd[0] in "45":
            self.error(c, cmd, rest)
        if not c.logged_in and line.welcomed and line.flood_ok:
            c.logged_in = True
            self.logged_in += 1

