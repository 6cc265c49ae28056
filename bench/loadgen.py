"""A load process: many zchat clients in one OS process, one poller over all their sockets.

Each simulated client speaks the real protocol with the project's own code (``schema.pack``
and ``messages``, the request and reply shapes of ``schema.protocol``, CURVE through
``schema.keys.curve_client``) and follows the room rules of ``client.connection``: subscribe
to the topic the join reply gives, keep each room's ``seq``, fetch a gap with
``history(after=..., before=...)``, follow a ``rekey``, ping when it has sent nothing for
a heartbeat interval. What it leaves out is what a benchmark need not show: terminal
events, resuming after a broker restart (the ``--stuck`` members use the real
``Connection`` for that).

Every benchmark message says who sent it, its number in that sender's stream and when it
left: ``b1 SID N T_NS [padding]``. A stream is one sender's room messages, or one
sender's private messages to one recipient. Each receiver marks every number it gets in a
bitmap, so a repeat is a duplicate and a number never marked is lost; a message counts
as *delivered* only if it came live (publisher, or a private message on the DEALER), and
as *caught up* if the receiver had to fetch it from history after noticing a gap.

The runner drives a load process through a pipe, phase by phase: ``connect`` (hello and
login), ``create`` (rooms), ``join`` (enter and hear the room's publisher), ``go``
(send until told to stop), ``stop``, ``report``, ``quit``.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from client import connection
from schema import PROTOCOL_VERSION, keys, messages, pack
from schema import protocol as P

from .plan import ClientSpec
from .stats import bucket

HEARTBEAT_NS = int(P.HEARTBEAT_INTERVAL * 1e9)
# Clients of one process connecting at once, per listener (the broker, or each edge): its
# listen backlog is 100, and a connection beyond it waits for a SYN retransmission (1 s,
# 3 s, 7 s...). Behind K edges the connections spread over K listeners: K times as many.
HANDSHAKES_AT_ONCE = 20
IDLE_TICK_MS = 10.0
HELLO_RETRY_NS = 5_000_000_000  # no answer to hello+login this long: ask again
SEND_BURST = 64  # messages one sender may send in one turn
SKIP_AFTER_NS = 1_000_000_000  # an open-loop sender this far behind skips ahead
TEXT_PREFIX = "b1"
NOBLOCK = zmq.NOBLOCK


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (the hard limit too, if we may)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Config:
    """What every load process is told at start."""

    server: str
    server_key: bytes | None  # None: a plaintext broker (--insecure experiments)
    n_workers: int
    n_senders: int
    rate_per_sender: float | None  # messages a second; None: closed loop
    window: int  # closed loop: messages a sender may have in flight
    size: int  # characters of each benchmark message
    dm_pool: list[str]  # private messages: who they go to (empty: room senders)
    room_senders: dict[str, list[int]]  # room -> ids of its senders
    idle_sub: bool = False  # idle clients (in no room) connect a SUB too
    seed: int = 0
    protocol: str = "zchat"  # "irc": the same load, speaking plain IRC (bench/ircload.py)
    irc_quickack: bool = False  # irc: receivers ACK at once (TCP_QUICKACK after each read)


class View:
    """A room as one client follows it."""

    __slots__ = ("name", "topic", "seq", "heard", "missing", "fetching")

    def __init__(self, name: str, topic: bytes, seq: int):
        self.name, self.topic, self.seq = name, topic, seq
        self.heard = False  # something arrived on the publisher: the subscription holds
        self.missing: set[int] = set()  # seqs noticed missing, not fetched yet
        self.fetching = 0  # history requests out


class Client:
    __slots__ = ("spec", "name", "dealer", "sub", "next_id", "pending", "views", "got",
                 "count", "max_n", "last_sent", "session", "logged_in", "started",
                 "unacked", "n", "pair_n", "next_due", "idle", "client_id", "lost_session")

    def __init__(self, spec: ClientSpec):
        self.spec = spec
        self.name = spec.name
        self.dealer: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None
        self.next_id = 1
        self.pending: dict[int, tuple] = {}
        self.views: dict[str, View] = {}
        self.got: dict[int, bytearray] = {}  # sender id -> bitmap of numbers received
        self.count: dict[int, int] = {}  # sender id -> distinct numbers received
        self.max_n: dict[int, int] = {}  # sender id -> highest number heard live
        self.last_sent = 0
        self.session = False
        self.logged_in = False
        self.started = False
        self.unacked = 0
        self.n = 0  # next number of this sender's room stream
        self.pair_n: dict[str, int] = {}  # private messages: next number per recipient
        self.next_due = 0
        self.idle = spec.idle
        self.client_id = os.urandom(8).hex()
        self.lost_session = False


class Worker:
    ECHO = True  # a room sender hears its own messages (IRC's do not)

    def __init__(self, index: int, specs: list[ClientSpec], cfg: Config, pipe: Any,
                 sent: Any, prog: Any, totals: Any):
        self.index, self.cfg, self.pipe = index, cfg, pipe
        self.sent, self.prog, self.totals = sent, prog, totals
        self.clients = [Client(s) for s in specs]
        self.active = [c for c in self.clients if not c.idle]
        self.idle = [c for c in self.clients if c.idle]
        self.senders = [c for c in self.active if c.spec.sid is not None]
        self.by_name = {c.name: c for c in self.clients}
        raise_fd_limit(4 * len(self.clients) + 1024)
        if self.idle and not self.active:
            # Idle clients only need to ping within the broker's timeout; the busy room's
            # receivers, whose latency is measured, go first when the cores are short.
            os.nice(10)
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, 2 * len(self.clients) + 64)
        self.poller = zmq.Poller()
        self.pipe_fd = pipe.fileno()
        self.poller.register(self.pipe_fd, zmq.POLLIN)
        self.route: dict[zmq.Socket, tuple[Client, bool]] = {}
        self.rng = random.Random(cfg.seed * 1000 + index)
        self.phase = "idle"
        self.sending = False
        self.quit = False
        self.w0 = self.w1 = 0  # measured window (monotonic ns)
        self.s0 = self.s1 = 0  # while the --stuck members are frozen (monotonic ns)
        self.stuck_hist: dict[int, int] = {}
        self.stuck_deliveries = 0
        self.to_start: deque[Client] = deque()
        self.handshakes: dict[Client, int] = {}  # not logged in yet -> when last asked
        self.handshakes_at_once = HANDSHAKES_AT_ONCE * len(cfg.server.split(","))
        self.idle_ring: deque[Client] = deque()
        self.next_active_check = 0
        # local receivers of each room sender, for closed-loop flow control
        self.local_receivers: dict[int, list[Client]] = {}
        self.next_progress = 0
        # figures
        self.hist: dict[int, int] = {}
        self.lag: dict[int, int] = {}
        self.delivered = self.caught_up = self.duplicated = self.reordered = 0
        self.stale = self.foreign = self.errors = self.expired = 0
        self.win_deliveries = self.win_inbound = self.send_blocked = self.skipped = 0
        self.acked = 0
        self.hello_retries = 0
        self.logged_in = 0
        self.error_codes: dict[str, int] = {}
        self.refused: dict[str, int] = {}  # stream -> messages the broker refused
        self.leaves: list[tuple[str, str, int]] = []  # (room, name, monotonic ns seen)
        self.fetches = 0

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.quit:
                self.turn()
        finally:
            for c in self.clients:
                for sock in (c.dealer, c.sub):
                    if sock is not None:
                        sock.close(0)
            self.ctx.term()

    def turn(self) -> None:
        now = time.monotonic_ns()
        timeout = 50.0
        if self.sending:
            timeout = 1.0 if self.cfg.rate_per_sender else 2.0
        if self.to_start or self.handshakes:
            timeout = min(timeout, 10.0)
        if self.idle_ring:  # pings go out in batches, every IDLE_TICK_MS at most
            timeout = min(timeout, max(IDLE_TICK_MS, (self.idle_ring[0].last_sent
                                                      + HEARTBEAT_NS - now) / 1e6))
        for sock, _ in self.poller.poll(timeout):
            if sock == self.pipe_fd:
                self.command(self.pipe.recv())
            else:
                self.readable(sock)
        now = time.monotonic_ns()
        if self.to_start:
            self.start_clients()
        if self.handshakes:
            self.read_handshakes(now)
        if self.sending:
            self.send_due(now)
        self.heartbeats(now)
        if now >= self.next_progress:
            self.publish_progress()
            self.next_progress = now + 1_000_000
        self.check_phase()

    def command(self, msg: tuple) -> None:
        what = msg[0]
        if what == "connect":
            self.phase = "connect"
            self.to_start.extend(self.clients)
        elif what == "create":
            self.phase = "create"
            for c in self.active:
                for room in c.spec.creates:
                    self.request(c, "create", room=room)
        elif what == "join":
            self.phase = "join"
            for c in self.active:
                for room in c.spec.joins:
                    self.request(c, "join", room=room)
            self.prepare_flow_control()
        elif what == "go":
            self.w0, self.w1, self.s0, self.s1 = msg[1:5]
            now = time.monotonic_ns()
            for c in self.senders:
                # spread the first sends over one interval, so senders do not beat together
                c.next_due = now + int(self.rng.random() * self.interval_ns())
            self.sending = True
            self.phase = "go"
        elif what == "stop":
            self.sending = False
            self.phase = "stopped"
        elif what == "report":
            self.pipe.send(("report", self.report()))
        elif what == "quit":
            self.quit = True

    def check_phase(self) -> None:
        done = False
        if self.phase == "connect":
            done = not self.to_start and all(c.logged_in and not c.lost_session
                                             for c in self.clients)
        elif self.phase == "create":
            done = all(r in c.views for c in self.active for r in c.spec.creates)
        elif self.phase == "join":
            done = all(r in c.views and c.views[r].heard for c in self.active
                       for r in c.spec.rooms)
        if done:
            self.pipe.send(("ok", self.phase))
            self.phase = "idle"

    # -- sockets --------------------------------------------------------------------------

    def start_clients(self) -> None:
        while self.to_start and len(self.handshakes) < self.handshakes_at_once:
            c = self.to_start.popleft()
            self.open(c)
            self.handshakes[c] = time.monotonic_ns()
            self.hello(c)

    def open(self, c: Client) -> None:
        """Sockets set up as client.connection.Connection sets them up, then hello+login."""
        pair = keys.KeyPair(*zmq.curve_keypair())
        c.dealer = self.ctx.socket(zmq.DEALER)
        c.dealer.setsockopt(zmq.ROUTING_ID, b"c" + os.urandom(15))
        if not c.idle or self.cfg.idle_sub:
            c.sub = self.ctx.socket(zmq.SUB)
        for sock in (c.dealer, c.sub):
            if sock is None:
                continue
            if self.cfg.server_key is not None:
                keys.curve_client(sock, self.cfg.server_key, pair)
            connection.tune(sock)
        c.dealer.setsockopt(zmq.RECONNECT_IVL, 100)
        c.dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        # Not the real client's: when thousands connect at once, a connection the broker's
        # full accept queue dropped is retried now rather than after TCP's backoff.
        c.dealer.setsockopt(zmq.CONNECT_TIMEOUT, 2000)
        c.dealer.setsockopt(zmq.HANDSHAKE_IVL, 3000)
        servers = self.cfg.server.split(",")  # edges: each client takes one, by its name
        c.dealer.connect(servers[zlib.crc32(c.name.encode()) % len(servers)])
        if not c.idle:
            self.route[c.dealer] = (c, False)
            self.route[c.sub] = (c, True)
            self.poller.register(c.dealer, zmq.POLLIN)
            self.poller.register(c.sub, zmq.POLLIN)

    def hello(self, c: Client) -> None:
        """Open the session (again, if the first try got lost: the broker answers a
        repeated hello and login of the same session as the first)."""
        self.request(c, "hello", version=PROTOCOL_VERSION, client=c.client_id)
        self.request(c, "login", name=c.name)

    def request(self, c: Client, cmd: str, info: tuple = (), **fields: Any) -> int:
        rid = c.next_id
        c.next_id += 1
        c.pending[rid] = (cmd, *info) if info else (cmd,)
        self.send(c, {"id": rid, "cmd": cmd, **fields})
        return rid

    def send(self, c: Client, message: dict[str, Any]) -> None:
        assert c.dealer is not None
        try:
            c.dealer.send(pack(message), zmq.NOBLOCK)
        except zmq.Again:
            self.send_blocked += 1
        c.last_sent = time.monotonic_ns()

    def readable(self, sock: zmq.Socket) -> None:
        c, is_sub = self.route[sock]
        recv, again = sock.recv, zmq.Again
        for _ in range(256):
            try:
                frame = recv(NOBLOCK)
            except again:
                return
            if is_sub:
                # [topic, event]: the frames of one message arrive together. (Cheaper than
                # recv_multipart, whose RCVMORE check costs as much as the rest here.)
                for event in messages(recv(NOBLOCK)):  # a room's events of one turn
                    self.room_event(c, event)
            else:
                for message in messages(frame):  # our replies and direct events of one turn
                    self.from_broker(c, message)

    def drain(self, c: Client) -> None:
        """Read what waits on a client that is not in the poller."""
        assert c.dealer is not None
        recv = c.dealer.recv
        while True:
            try:
                frame = recv(NOBLOCK)
            except zmq.Again:
                return
            for message in messages(frame):
                self.from_broker(c, message)

    def read_handshakes(self, now: int) -> None:
        """Idle clients are not in the poller (thousands would slow every poll): while
        they log in they are read every turn, and asked again if no answer came."""
        for c, asked in list(self.handshakes.items()):
            if c.idle:
                self.drain(c)
            if c.logged_in:
                del self.handshakes[c]
            elif now - asked > HELLO_RETRY_NS:
                self.handshakes[c] = now
                self.hello_retries += 1
                self.hello(c)

    # -- what arrives ---------------------------------------------------------------------

    def from_broker(self, c: Client, message: dict[str, Any]) -> None:
        if "re" in message:
            rid = message["re"]
            if rid == 0:  # a ping's answer
                if not message.get("ok"):
                    self.lost(c, message)
                return
            pending = c.pending.pop(rid, None)
            if pending is None:
                return
            if message.get("ok"):
                self.reply(c, pending, message)
            else:
                self.refusal(c, pending, message)
        elif message.get("ev") == "dm":
            self.benchmark_text(c, message.get("text", ""), True)
        elif message.get("ev") == "rekey":
            self.rekey(c, message)

    def reply(self, c: Client, pending: tuple, reply: dict[str, Any]) -> None:
        cmd = pending[0]
        if cmd in ("say", "msg"):
            c.unacked -= 1
            self.acked += 1
        elif cmd == "history":
            self.history(c, pending[1], reply)
        elif cmd == "hello" and not c.session:
            c.session = True
            if c.sub is not None:
                c.sub.connect(reply["pub"])
        elif cmd == "login":
            if not c.logged_in:
                c.logged_in = True
                self.logged_in += 1
                if c.idle:
                    self.idle_ring.append(c)
        elif cmd in ("create", "join"):
            view = View(reply["room"], reply["topic"], reply["seq"])
            c.views[view.name] = view
            assert c.sub is not None
            c.sub.setsockopt(zmq.SUBSCRIBE, view.topic)

    def refusal(self, c: Client, pending: tuple, reply: dict[str, Any]) -> None:
        code = str(reply.get("code"))
        self.error_codes[code] = self.error_codes.get(code, 0) + 1
        self.errors += 1
        if self.errors <= 5:
            print(f"bench load {self.index}: {c.name} {pending[0]} refused: "
                  f"{code} {reply.get('error')}", file=sys.stderr)
        if code == "no_session":
            self.lost(c, reply)
        if pending[0] in ("say", "msg"):
            c.unacked -= 1
            stream = pending[1]
            self.refused[stream] = self.refused.get(stream, 0) + 1
        elif pending[0] == "history":
            view = c.views.get(pending[1])
            if view is not None:
                view.fetching -= 1

    def lost(self, c: Client, reply: dict[str, Any]) -> None:
        if not c.lost_session:
            c.lost_session = True
            self.expired += 1
            if c.logged_in:  # the count is of sessions held now, not of logins ever
                self.logged_in -= 1

    def room_event(self, c: Client, ev: dict[str, Any]) -> None:
        view = c.views.get(ev.get("room"))  # type: ignore[arg-type]
        if view is None:
            return
        seq = ev.get("seq")
        if type(seq) is not int:
            return
        view.heard = True
        kind = ev.get("ev")
        if kind == P.ROOM_TICK:
            if seq > view.seq:  # the room's last events never reached us
                self.gap(c, view, view.seq + 1, seq + 1)
                view.seq = seq
            return
        if seq <= view.seq:
            self.stale += 1  # fetched already (or seen): a real client drops it too
            return
        if seq != view.seq + 1:
            self.gap(c, view, view.seq + 1, seq)
        view.seq = seq
        if kind == "msg":
            self.benchmark_text(c, ev.get("text", ""), True)
        elif kind == "leave":
            self.leaves.append((view.name, str(ev.get("name")), time.monotonic_ns()))

    def rekey(self, c: Client, message: dict[str, Any]) -> None:
        """Someone left and the topic changed: follow it, fetch what the switch hid."""
        view = c.views.get(message.get("room", ""))
        topic = message.get("topic")
        if view is None or not isinstance(topic, bytes) or c.sub is None:
            return
        c.sub.setsockopt(zmq.UNSUBSCRIBE, view.topic)
        view.topic = topic
        c.sub.setsockopt(zmq.SUBSCRIBE, topic)
        seq = message.get("seq")
        if isinstance(seq, int) and seq > view.seq:
            self.gap(c, view, view.seq + 1, seq + 1)
            view.seq = seq

    def gap(self, c: Client, view: View, first: int, end: int) -> None:
        """Seqs first..end-1 were not heard live: fetch them over the DEALER."""
        view.missing.update(range(first, end))
        self.fetch(c, view, first - 1, end)

    def fetch(self, c: Client, view: View, after: int, before: int) -> None:
        view.fetching += 1
        self.fetches += 1
        self.request(c, "history", (view.name,), room=view.name, after=after,
                     before=before, limit=P.HISTORY_PAGE_MAX)

    def history(self, c: Client, room: str, reply: dict[str, Any]) -> None:
        view = c.views.get(room)
        if view is None:
            return
        view.fetching -= 1
        last = None
        for ev in reply.get("events", ()):
            if not isinstance(ev, dict):
                continue
            seq = ev.get("seq")
            last = seq
            if seq in view.missing:
                view.missing.discard(seq)
                if ev.get("ev") == "msg":
                    self.benchmark_text(c, ev.get("text", ""), False)
        # A full page may mean more: fetch on from the last one received.
        rest = [s for s in view.missing if last is None or s > last]
        if rest and last is not None and len(reply.get("events", ())) >= P.HISTORY_PAGE_MAX:
            self.fetch(c, view, last, max(rest) + 1)

    def benchmark_text(self, c: Client, text: Any, live: bool) -> None:
        parts = text.split(" ", 4) if isinstance(text, str) else ()
        if len(parts) < 4 or parts[0] != TEXT_PREFIX:
            self.foreign += 1
            return
        sid, n, t = int(parts[1]), int(parts[2]), int(parts[3])
        bits = c.got.get(sid)
        if bits is None:
            bits = c.got[sid] = bytearray(1024)
        if n >= len(bits):
            bits.extend(bytes(max(n + 1 - len(bits), len(bits))))
        if bits[n]:
            self.duplicated += 1
            return
        bits[n] = 1 if live else 2
        c.count[sid] = c.count.get(sid, 0) + 1
        if not live:
            self.caught_up += 1
            return
        self.delivered += 1
        if n < c.max_n.get(sid, -1):
            self.reordered += 1
        else:
            c.max_n[sid] = n
        now = time.monotonic_ns()
        if self.w0 <= now < self.w1:
            self.win_deliveries += 1
        if self.w0 <= t < self.w1:
            v = bucket((now - t) // 1000)
            self.hist[v] = self.hist.get(v, 0) + 1
            if self.s0 <= t < self.s1:
                self.stuck_hist[v] = self.stuck_hist.get(v, 0) + 1
        if self.s0 <= now < self.s1:
            self.stuck_deliveries += 1

    # -- sending --------------------------------------------------------------------------

    def interval_ns(self) -> int:
        rate = self.cfg.rate_per_sender
        return int(1e9 / rate) if rate else 1_000_000

    def prepare_flow_control(self) -> None:
        """Which of our clients receive which room sender (for closed-loop windows)."""
        for c in self.active:
            for room in c.spec.rooms:
                for sid in self.cfg.room_senders.get(room, ()):
                    if self.ECHO or c.spec.sid != sid:
                        self.local_receivers.setdefault(sid, []).append(c)
        big = (1 << 62)
        base = self.index * self.cfg.n_senders
        for sid in range(self.cfg.n_senders):
            self.prog[base + sid] = 0 if sid in self.local_receivers else big

    def publish_progress(self) -> None:
        base = self.index * self.cfg.n_senders
        for sid, receivers in self.local_receivers.items():
            self.prog[base + sid] = min(c.count.get(sid, 0) for c in receivers)
        t = self.index * 4
        self.totals[t] = self.delivered + self.caught_up
        self.totals[t + 1] = self.acked
        self.totals[t + 2] = self.errors
        self.totals[t + 3] = self.logged_in

    def in_flight_room(self, sid: int, n: int) -> int:
        """Messages of this sender some receiver has not got yet."""
        prog, step = self.prog, self.cfg.n_senders
        return n - min(prog[w * step + sid] for w in range(self.cfg.n_workers))

    def in_flight_dm(self) -> int:
        sent = sum(self.sent[i] for i in range(self.cfg.n_senders))
        got = sum(self.totals[w * 4] for w in range(self.cfg.n_workers))
        return sent - got

    def send_due(self, now: int) -> None:
        rate = self.cfg.rate_per_sender
        window = self.cfg.window
        if rate:
            interval = self.interval_ns()
            for c in self.senders:
                burst = 0
                while c.next_due <= now and burst < SEND_BURST:
                    if now - c.next_due > SKIP_AFTER_NS:
                        behind = (now - c.next_due) // interval
                        self.skipped += behind
                        c.next_due += behind * interval
                        continue
                    v = bucket((now - c.next_due) // 1000)
                    self.lag[v] = self.lag.get(v, 0) + 1
                    self.send_one(c, now)
                    c.next_due += interval
                    burst += 1
            return
        dm_budget = None
        if self.cfg.dm_pool:
            dm_budget = window * self.cfg.n_senders - self.in_flight_dm()
        for c in self.senders:
            burst = 0
            while c.unacked < window and burst < SEND_BURST:
                if dm_budget is not None:
                    if dm_budget <= 0:
                        break
                    dm_budget -= 1
                elif self.in_flight_room(c.spec.sid or 0, c.n) >= window:
                    break
                self.send_one(c, time.monotonic_ns())
                burst += 1

    def send_one(self, c: Client, now: int) -> None:
        sid = c.spec.sid
        assert sid is not None
        if c.spec.room is not None:
            n = c.n
            c.n += 1
            stream = str(sid)
        else:
            target = c.name
            while target == c.name:
                target = self.rng.choice(self.cfg.dm_pool)
            n = c.pair_n.get(target, 0)
            c.pair_n[target] = n + 1
            stream = f"{sid}>{target}"
        t = time.monotonic_ns()
        text = f"{TEXT_PREFIX} {sid} {n} {t}"
        if len(text) < self.cfg.size:
            text = f"{text} {'x' * (self.cfg.size - len(text) - 1)}"
        self.sent[sid] += 1
        if self.w0 <= t < self.w1:
            self.win_inbound += 1
        self.post(c, stream, None if c.spec.room is not None else target, text)

    def post(self, c: Client, stream: str, target: str | None, text: str) -> None:
        """Send one benchmark message: to the sender's room, or privately to ``target``."""
        c.unacked += 1
        if target is None:
            self.request(c, "say", (stream,), room=c.spec.room, text=text)
        else:
            self.request(c, "msg", (stream,), to=[target], text=text)

    def heartbeats(self, now: int) -> None:
        """Ping whoever has sent nothing for a heartbeat interval, as the real client."""
        if now >= self.next_active_check:
            self.next_active_check = now + 100_000_000
            for c in self.active:
                if c.logged_in and now - c.last_sent >= HEARTBEAT_NS:
                    self.send(c, {"id": 0, "cmd": "ping"})
        ring = self.idle_ring  # idle clients only ping, so it stays in last_sent order
        while ring and now - ring[0].last_sent >= HEARTBEAT_NS:
            c = ring.popleft()
            self.drain(c)  # the last ping's answer (once a second: cheaper than polling)
            self.send(c, {"id": 0, "cmd": "ping"})
            ring.append(c)

    # -- the end --------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        sent: dict[str, int] = {}
        for c in self.senders:
            if c.spec.room is not None:
                sent[str(c.spec.sid)] = c.n
            else:
                for target, n in c.pair_n.items():
                    sent[f"{c.spec.sid}>{target}"] = n
        received = {c.name: {str(sid): k for sid, k in c.count.items()}
                    for c in self.active}
        return {
            "worker": self.index, "sent": sent, "refused": self.refused,
            "received": received, "hist": self.hist, "lag": self.lag,
            "stuck_hist": self.stuck_hist, "stuck_deliveries": self.stuck_deliveries,
            "delivered": self.delivered, "caught_up": self.caught_up,
            "duplicated": self.duplicated, "reordered": self.reordered,
            "stale": self.stale, "foreign": self.foreign, "errors": self.errors,
            "error_codes": self.error_codes, "expired": self.expired,
            "win_deliveries": self.win_deliveries, "win_inbound": self.win_inbound,
            "send_blocked": self.send_blocked, "skipped": self.skipped,
            "unacked": sum(c.unacked for c in self.senders), "fetches": self.fetches,
            "missing": sum(len(v.missing) for c in self.active for v in c.views.values()),
            "leaves": self.leaves, "clients": len(self.clients),
            "hello_retries": self.hello_retries,
        }


def main(index: int, specs: list[ClientSpec], cfg: Config, pipe: Any, sent: Any, prog: Any,
         totals: Any) -> None:
    """Entry point of a load process (multiprocessing target)."""
    try:
        if cfg.protocol == "irc":
            from .ircload import IrcWorker

            worker: Worker = IrcWorker(index, specs, cfg, pipe, sent, prog, totals)
        else:
            worker = Worker(index, specs, cfg, pipe, sent, prog, totals)
        profile_dir = os.environ.get("ZCHAT_BENCH_PROFILE_LOAD")
        if profile_dir:  # a developer's knob: where does a load process spend its time?
            import cProfile

            cProfile.runctx("worker.run()", globals(), {"worker": worker},
                            os.path.join(profile_dir, f"load-{index}.prof"))
        else:
            worker.run()
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # tell the runner, which is waiting on this pipe
        import traceback

        traceback.print_exc()
        try:
            pipe.send(("error", f"load process {index}: {exc!r}"))
        except OSError:
            pass
