"""Guard: the TCP connections behind the broker's sockets, and cutting the bad ones.

libzmq hides connections from the application, and three kinds of peer can pin the
broker's memory or descriptors before anything reaches the application (measured here,
libzmq 4.3.5, loopback, one raw ZMTP peer; figures in ``tests/test_guard.py`` and below):

1. **An endless multipart message.** libzmq keeps every frame until the last one comes.
   Resident memory per byte received: x1.0 for 64 KiB frames, x1.8 for 512-byte frames,
   x6.4 for 8-byte frames, x32 for empty frames (a 64-byte ``msg_t`` per 2 wire bytes).
   One connection grew a ROUTER by 300-800 MiB/s, whatever the frame size.
2. **A peer that stops reading.** What was queued for it (up to SNDHWM frames) stays
   allocated while its TCP connection is open.
3. **Connections that never finish the handshake.** Five bytes (``\\xff\\0\\0\\0\\0``) hold
   a descriptor for ~30 s; at the descriptor limit the I/O thread spins and nobody gets in.

The cure: learn the descriptor behind each connection (monitor events, ``SRCFD`` of
received frames) and cut a bad one with ``shutdown(fd, SHUT_RDWR)``. libzmq owns the
descriptor, so it is never closed here: after the shutdown libzmq reads EOF, tears the
session down, drops the half-received message and frees the pipe, then closes the fd.
Before a cut the descriptor's socket inode is compared with the one seen first, so a
number that libzmq closed and reused for another connection is never cut by mistake.

``Connections.check()`` is meant to be called every loop turn (and the loop's poll timeout
bounded by ``due()``: an endless message wakes nothing in the application). When not due
it costs 0.3 µs; every ``interval`` (50 ms) it:

* reads ``/proc/self/statm`` (2 µs) and samples TCP_INFO (a getsockopt, 2-6 µs) of the next
  connections round robin, each about once a ``window`` (1 s) but at most ``slice`` (128)
  a call: measured 0.04 ms a check at 100 connections, 0.23 ms at 1,000, 0.72 ms at 10,000
  (1.4 % of a core; 10,000 connections are each sampled every 4 s). When resident memory
  grew by more than ``surge`` (32 MiB) since its lowest, every connection is sampled at
  once (4 ms at 1,000, 60 ms at 10,000), so a fast flood is found within one interval.
  The ``slice`` a call (with up to 128 connections: all of them, every interval) is taken
  only while resident memory grew by more than ``growth`` (1 MiB) since the last such
  look: a message piling up in libzmq pins at least its bytes there. While memory holds
  still, a check samples those a message came from since the previous check (where a
  flood would be; at most ``slice``) and the next ``share`` round robin, each connection
  about once a window: with 50 quiet subscribers, 3 samples a check instead of 50.
* **unfinished message**: cuts a connection that received more than ``unfinished`` bytes
  (1 MiB, the largest frame the broker accepts) since a message last came out of it
  (``seen``), or more than ``unfinished_surge`` (16 KiB) while memory surges. Measured: one
  raw peer sending an endless message of 8- or 512-byte frames next to 10,000 idle
  connections was cut within 250-290 ms, at +79 to +113 MiB; 1 MiB was left 0.1 s later
  (with one connection: cut within 100 ms at +34 to +57 MiB). Unguarded, it grew the process
  by 300-800 MiB/s until the connection closed. Worst case per connection that stays just
  under the rules: ``unfinished`` x the frame multiplier (32 MiB with empty frames), or
  ``unfinished_surge`` x 32 = 512 KiB each once memory has surged.
* **flood**: cuts a connection that received more than ``allowance`` (8 MiB) since a mark
  at most ``window`` old (or since its previous sample, if samples are further apart).
  Complete messages are read and freed by the broker, so this bounds bandwidth and work,
  not memory; an honest client sends well under 1 MiB/s (rate limited, a chat message is
  at most 256 KiB).
* **not reading**: cuts a connection whose kernel send queue holds unsent bytes while the
  peer acknowledged nothing for ``stall`` seconds (10 s; clients ping every second and
  treat a broker silent for 4 s as dead, so nothing honest stalls that long). The only way
  to free what an XPUB queued for a subscriber that stopped reading: libzmq drops its
  messages silently and tells the application nothing. Measured: 60 MiB queued (1,000
  frames of 64 KiB), +0 MiB once cut (the same for a ROUTER peer cut by the broker).
* **handshake**: only while ``crowded()`` (descriptors within ``reserve`` of the limit),
  cuts connections older than ``deadline`` (2 s) that have not finished their handshake,
  oldest first, at most ``slice`` a call (23-60 µs a cut), logged as one line a check.
* for a second after a cut gives freed memory back to the system (``malloc_trim``: glibc
  keeps the I/O thread's freed small blocks; 385 MiB stayed after an 8-byte-frame flood
  was closed, 1 MiB after a trim of 60 ms; a trim with nothing to free costs ~0.1 ms).

Finishing the handshake is known from: a message received from the connection
(``seen``); a ``HANDSHAKE_SUCCEEDED`` event while exactly one connection of that socket
is pending (the event names no connection; with one I/O thread it always follows the
connection's ``ACCEPTED``); or, for CURVE, TCP_INFO: the server sends its READY only on
success, so more than 64 (greeting) + 170 (WELCOME) bytes acknowledged by the peer
proves it. Plaintext (NULL) sends READY before the client's READY, so only the first two
apply there; plaintext is for local experiments.

Monitors: ``watch`` connects its own monitor PAIR with ``RCVHWM=0``. libzmq's I/O thread
sends monitor events with a blocking send; with the default HWM an unread monitor froze
the whole context after 667 connections here, with ``RCVHWM=0`` 3,000 went through (the
events wait in memory, ~100 bytes each). Still drain them every turn.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
import math
import os
import resource
import socket
import stat
import struct
import time
from collections import Counter
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass

import zmq

log = logging.getLogger("zchat.guard")

ALLOWANCE = 8 << 20  # bytes a connection may send within a window...
WINDOW = 1.0  # ...of this many seconds
UNFINISHED = 1 << 20  # bytes received without a message coming out (the largest frame)
UNFINISHED_SURGE = 16 << 10  # the same while resident memory surges
INTERVAL = 0.05  # seconds between checks that do anything
SLICE = 128  # connections sampled (or cut for their handshake) per check at most
SURGE = 32 << 20  # resident growth that makes a check sample every connection
# Resident growth since the last look at ``slice`` connections that makes a check look at
# that many again: what a message piling up in libzmq pins shows there (at least its bytes)
GROWTH = UNFINISHED
DEADLINE = 2.0  # seconds to finish a handshake, enforced only while crowded...
# ...and only this long once the table is nearly full: libzmq's I/O thread spins at 100 %
# on a full descriptor table (accept fails, the listener stays ready), so the wait must be
# short; an honest CURVE handshake takes a few round trips.
FULL_DEADLINE = 0.25
STALL = 10.0  # seconds a peer may leave our sent bytes unacknowledged
MANY_FRAMES = 16  # a request of more frames is no client's mistake but an attack
RESERVE = 256  # descriptors kept for operators and the process's own files
TRIM_PERIOD = 1.0  # seconds after a cut during which freed memory is given back
EVENT_BUDGET = 8192  # monitor events read per monitor per drain

# struct tcp_info (linux/tcp.h): offsets of the fields read here.
_TCP_INFO_SIZE = 256
_BYTES_ACKED, _BYTES_RECEIVED, _NOTSENT = 120, 128, 144
# The three a sample reads, in one unpack from _BYTES_ACKED (segs_out and segs_in between).
_SAMPLED = struct.Struct("=QQ8xI")
assert _BYTES_RECEIVED == _BYTES_ACKED + 8 and _NOTSENT == _BYTES_ACKED + 24
# CURVE server: greeting (64) + WELCOME (170) before the client's INITIATE; READY follows
# only if the handshake (and ZAP) succeeded.
CURVE_HANDSHAKE_SENT = 64 + 170

EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
          | zmq.EVENT_HANDSHAKE_SUCCEEDED)
_EVENT = struct.Struct("=HI")
_EVENTS, _POLLIN, _NOW = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


# -- descriptors and memory (no state) ------------------------------------------------------

def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit on macOS
            log.warning("Could not raise the descriptor limit from %d: %s", soft, exc)
    return soft


_PAGE = os.sysconf("SC_PAGE_SIZE")
_statm = os.open("/proc/self/statm", os.O_RDONLY)


def rss() -> int:
    """Resident bytes of this process (a pread of /proc/self/statm: about 2 µs)."""
    return int(os.pread(_statm, 64, 0).split()[1]) * _PAGE


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_malloc_trim: Callable[[int], int] | None = getattr(_libc, "malloc_trim", None)


def trim() -> None:
    """Give freed heap memory back to the system (glibc), if it can."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _tcp_info(fd: int) -> bytes | None:
    # An explicit family skips Python's detection (three syscalls); the kernel ignores it.
    # detach(): the descriptor stays libzmq's.
    if fd < 0:  # no connection known for sure (socket() would raise ValueError)
        return None
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    except OSError:  # not a socket (any more)
        return None
    try:
        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:  # not TCP (ipc)
        return None
    finally:
        s.detach()


class _TcpCounters:
    """(bytes acked, bytes received, bytes not sent) of a TCP descriptor, or None if it is
    no TCP socket (any more). getsockopt called through ctypes, into a buffer kept for
    the purpose: half the cost of ``_tcp_info`` (whose socket object first asks
    getsockname), for the guard's every sample. The buffer makes it one thread's: each
    ``Connections`` has its own. PyDLL keeps the GIL over the call, as it never blocks."""

    _getsockopt = getattr(ctypes.PyDLL(ctypes.util.find_library("c")), "getsockopt", None)

    def __init__(self) -> None:
        self._buf = ctypes.create_string_buffer(_TCP_INFO_SIZE)
        self._len = ctypes.c_uint32()
        self._len_ref = ctypes.byref(self._len)

    def __call__(self, fd: int) -> tuple[int, int, int] | None:
        if self._getsockopt is not None:
            self._len.value = _TCP_INFO_SIZE
            if self._getsockopt(fd, socket.IPPROTO_TCP, socket.TCP_INFO, self._buf,
                                self._len_ref) != 0:
                return None  # not a socket (any more), or not TCP
            if self._len.value >= _BYTES_ACKED + _SAMPLED.size:
                return _SAMPLED.unpack_from(self._buf, _BYTES_ACKED)
        info = _tcp_info(fd)  # no such libc function, or a short struct: the plain way
        return None if info is None else _SAMPLED.unpack_from(info, _BYTES_ACKED)


def received(fd: int) -> int | None:
    """Bytes the kernel received on this TCP connection; None if ``fd`` is not TCP."""
    info = _tcp_info(fd)
    return None if info is None else struct.unpack_from("Q", info, _BYTES_RECEIVED)[0]


def acked(fd: int) -> int | None:
    """Bytes sent on this TCP connection that the peer acknowledged; None if not TCP."""
    info = _tcp_info(fd)
    return None if info is None else struct.unpack_from("Q", info, _BYTES_ACKED)[0]


def shut_down(fd: int) -> OSError | None:
    """Shut down the TCP connection behind ``fd`` both ways (libzmq then closes it and
    frees what it held for it); the error if it could not (closed meanwhile, or the peer
    already gone). The descriptor stays libzmq's. Callers check ``identity`` first."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    except OSError as exc:
        return exc
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError as exc:  # ENOTCONN: the peer is already gone
        return exc
    finally:
        s.detach()
    return None


def identity(fd: int) -> tuple[int, str] | None:
    """(socket inode, peer address) of ``fd``, or None if it is not an open socket."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    try:
        s = socket.socket(fileno=fd)
    except OSError:  # closed meanwhile
        return None
    try:
        peer = s.getpeername()
    except OSError:
        peer = ""
    finally:
        s.detach()
    return st.st_ino, (f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer))


# -- the connections ------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class Connection:
    fd: int
    label: str  # the broker socket it came to ("router", "pub", ...), "?" if unknown
    inode: int
    peer: str
    born: float
    accepted: bool = False  # confirmed by this socket's ACCEPTED event
    proven: bool = False  # finished its handshake
    tcp: bool = True
    cut: bool = False
    mark_time: float = 0.0
    mark_received: int = 0
    messages: int = 0  # counted by seen()
    messages_sampled: int = 0
    base: int = 0  # bytes received when a message was last known to have come out
    acked: int = -1
    acked_time: float = 0.0
    handshake_sent: int | None = None  # see CURVE_HANDSHAKE_SENT
    sampled: int = -1  # the check that sampled it last (see Connections._checks)
    peered: bool = False  # a peer's message came on it (came_from): its cut ends a session


class Connections:
    """The connections of the sockets given to ``watch``, by descriptor."""

    def __init__(self, *, limit: int | None = None, reserve: int = RESERVE,
                 allowance: int = ALLOWANCE, window: float = WINDOW,
                 unfinished: int = UNFINISHED, unfinished_surge: int = UNFINISHED_SURGE,
                 interval: float = INTERVAL, slice: int = SLICE, surge: int = SURGE,
                 growth: int = GROWTH,
                 deadline: float = DEADLINE, stall: float = STALL,
                 clock: Callable[[], float] = time.monotonic):
        """``limit``: descriptors the process may hold (default: RLIMIT_NOFILE's soft
        limit, so call ``raise_fd_limit`` first)."""
        self.limit = limit if limit is not None else resource.getrlimit(
            resource.RLIMIT_NOFILE)[0]
        self.reserve, self.allowance, self.window = reserve, allowance, window
        self.unfinished, self.unfinished_surge = unfinished, unfinished_surge
        self.interval, self.slice, self.surge, self.growth = interval, slice, surge, growth
        self.deadline, self.stall, self.clock = deadline, stall, clock
        self.cuts: Counter[str] = Counter()  # reason -> connections cut
        self._conns: dict[int, Connection] = {}
        self._pending: dict[str, dict[int, Connection]] = {}  # label -> not yet proven
        self._monitors: dict[zmq.Socket, tuple[zmq.Socket, str]] = {}
        self._watched: dict[zmq.Socket, str] = {}  # the watched sockets, and their labels
        self._watchers = zmq.Poller()  # for what they have waiting to be read
        self._handshake_sent: dict[str, int | None] = {}
        self._attribute = True  # HANDSHAKE_SUCCEEDED attributable (one I/O thread)
        self._cycle: Iterator[Connection] = iter(())
        self._next_check = 0.0
        self._rss_seen = self._rss_looked = rss()
        self._active: dict[int, Connection] = {}  # a message came from it since the check
        self._checks = 0  # checks that did work, so far
        self._trim_until = 0.0
        self._counters = _TcpCounters()
        # routing id -> the connection (fd, and our record of it) it last came on: the
        # number alone may have gone to someone else since (a handover, a close)
        self._peers: dict[bytes, tuple[int, Connection | None]] = {}
        self._stalled: list[Connection] = []  # cut for not reading, not yet asked about

    # -- learning -----------------------------------------------------------------------

    def watch(self, sock: zmq.Socket, label: str) -> zmq.Socket:
        """Monitor ``sock`` (before it binds); return the monitor socket to poll."""
        address = f"inproc://zchat.guard.{label}.{id(sock):x}"
        sock.monitor(address, EVENTS)
        monitor = sock.context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.RCVHWM, 0)  # never make the I/O thread wait: see above
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(address)
        self._monitors[monitor] = (sock, label)
        self._watched[sock] = label
        self._watchers.register(sock, zmq.POLLIN)
        self._pending[label] = {}
        curve = sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        self._handshake_sent[label] = CURVE_HANDSHAKE_SENT if curve else None
        self._attribute = sock.context.get(zmq.IO_THREADS) == 1
        return monitor

    @property
    def monitors(self) -> list[zmq.Socket]:
        return list(self._monitors)

    def drain(self, monitor: zmq.Socket | None = None, budget: int = EVENT_BUDGET) -> int:
        """Read waiting monitor events (of one monitor, or all); return how many."""
        count = 0
        for mon in [monitor] if monitor is not None else list(self._monitors):
            label = self._monitors[mon][1]
            for _ in range(budget):
                # Asked first: most turns have no event, and a read that finds none costs
                # a raised zmq.Again (a few times the question). Only this thread reads
                # the monitor, so an event announced is still there to read.
                if not mon.getsockopt(_EVENTS) & _POLLIN:
                    break
                try:
                    head, _endpoint = mon.recv_multipart(_NOW)
                except zmq.Again:
                    break
                count += 1
                event, value = _EVENT.unpack(head)
                self._event(label, event, value)
        return count

    def _event(self, label: str, event: int, fd: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            conn = self._conns.get(fd)
            if conn is None or conn.accepted or identity(fd) != (conn.inode, conn.peer):
                conn = self._learn(fd, label)
            if conn is not None:
                conn.accepted, conn.label = True, label
                conn.handshake_sent = self._handshake_sent[label]
                if not conn.proven:
                    self._pending[label][fd] = conn
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            pending = self._pending[label]
            if self._attribute and len(pending) == 1:
                self._prove(next(iter(pending.values())))
        elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
            # Only the connection this socket accepted last on that number: a record
            # learned from a message may already be a newer connection reusing it.
            conn = self._conns.get(fd)
            if conn is not None and conn.accepted and conn.label == label:
                self._forget(conn)
                if conn.cut:  # its memory is being freed now: give it back after
                    self._trim_until = max(self._trim_until, self.clock() + TRIM_PERIOD)

    def seen(self, fd: int) -> None:
        """A message came from ``fd`` (``frame.get(zmq.SRCFD)``): its handshake is done."""
        conn = self._conns.get(fd)
        if conn is None:
            conn = self._learn(fd, "?")
            if conn is None:
                return
        conn.messages += 1
        self._active[fd] = conn
        if not conn.proven:
            self._prove(conn)

    def _learn(self, fd: int, label: str) -> Connection | None:
        old = self._conns.get(fd)
        if old is not None:
            self._forget(old)
        ident = identity(fd)
        if ident is None:
            return None
        now = self.clock()
        conn = Connection(fd, label, ident[0], ident[1], now, mark_time=now,
                          acked_time=now, handshake_sent=self._handshake_sent.get(label))
        info = _tcp_info(fd)
        if info is None:
            conn.tcp = False
        else:
            conn.mark_received = conn.base = struct.unpack_from("Q", info, _BYTES_RECEIVED)[0]
        self._conns[fd] = conn
        return conn

    def _prove(self, conn: Connection) -> None:
        conn.proven = True
        self._pending.get(conn.label, {}).pop(conn.fd, None)

    def _forget(self, conn: Connection) -> None:
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
        self._pending.get(conn.label, {}).pop(conn.fd, None)

    # -- questions ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, fd: int) -> bool:
        return fd in self._conns

    def get(self, fd: int) -> Connection | None:
        return self._conns.get(fd)

    # -- peers (routing ids) and the connections they came on ------------------------------

    def came_from(self, peer: bytes, fd: int) -> None:
        """A message of ``peer`` came out of the connection behind ``fd``."""
        conn = self._conns.get(fd)
        self._peers[peer] = (fd, conn)
        if conn is not None:
            conn.peered = True

    def fd_of(self, peer: bytes) -> int:
        """The descriptor of the connection a peer is on now, or -1 if that is not known
        for sure (its connection went, or another took the number): never someone else's."""
        fd, conn = self._peers.get(peer, (-1, None))
        return fd if conn is not None and self._conns.get(fd) is conn else -1

    def forget_peer(self, peer: bytes) -> None:
        self._peers.pop(peer, None)

    def stalled_peers(self) -> list[bytes]:
        """The peers on connections the check cut since the last call because they read
        nothing for ``stall`` seconds: their sessions end (``"not reading"``), as when
        their queue fills, rather than lingering until they fall silent, or for ever if
        they do not (their pings still come in)."""
        if not self._stalled:
            return []
        stalled, self._stalled = {id(c) for c in self._stalled}, []
        return [p for p, (_, conn) in self._peers.items() if id(conn) in stalled]

    def keep_peers(self, keep: Container[bytes], slack: int) -> None:
        """Forget the peers not in ``keep``, once more than ``slack`` are known past it."""
        if len(self._peers) > slack:
            self._peers = {p: c for p, c in self._peers.items() if p in keep}

    def drop_rest(self, sock: zmq.Socket, fd: int) -> int:
        """Read and drop the rest of a message of several frames (a request is one); cut
        its connection if it had many: no mistake but an attack (the guard cuts such a
        message long before it could be millions of frames). How many it had."""
        frames = 1
        while sock.get(zmq.RCVMORE):
            sock.recv(zmq.NOBLOCK)
            frames += 1
        if frames > MANY_FRAMES:
            self.cut(fd, f"a request of {frames} frames")
        return frames

    def pending(self) -> int:
        """Connections whose handshake is not known to be finished."""
        return sum(len(p) for p in self._pending.values())

    def crowded(self) -> bool:
        """Descriptors run short: refuse new chat connections, still admit operators."""
        return len(self._conns) > self.limit - self.reserve

    received = staticmethod(received)
    acked = staticmethod(acked)

    # -- cutting ------------------------------------------------------------------------

    def cut(self, fd: int, reason: str, *, quiet: bool = False) -> bool:
        """Shut the connection behind ``fd`` down (libzmq then closes it), if ``fd`` is
        still the connection learned; False if it is not, or is gone already. Logged
        unless ``quiet`` (the caller logs a summary)."""
        conn = self._conns.get(fd)
        if conn is None:
            log.info("Not cutting descriptor %d (%s): no connection known there", fd, reason)
            return False
        if conn.cut:  # already; libzmq has not reported it gone yet
            return True
        if identity(fd) != (conn.inode, conn.peer):
            log.info("Not cutting descriptor %d (%s): %s is gone, the number was reused",
                     fd, reason, conn.peer)
            self._forget(conn)
            return False
        failure = shut_down(fd)
        if failure is not None:
            log.info("Could not cut %s (%s): %s", conn.peer, reason, failure)
            return False
        if not quiet:
            log.warning("Cut the connection of %s to %s: %s", conn.peer, conn.label, reason)
        conn.cut = True
        self._pending.get(conn.label, {}).pop(fd, None)
        self.cuts[reason] += 1
        if reason != "handshake":
            self._trim_until = self.clock() + TRIM_PERIOD
        return True

    # -- the periodic check -------------------------------------------------------------

    def due(self) -> float:
        """Seconds until the next check does work: bound the loop's poll timeout by it,
        since an endless message wakes nothing in the application."""
        return max(0.0, self._next_check - self.clock())

    def check(self) -> int:
        """Cut flooding, stalled, and (when crowded) unauthenticated connections; cheap
        unless ``interval`` has passed. Return the number of connections cut."""
        now = self.clock()
        if now < self._next_check:
            return 0
        self._next_check = now + self.interval
        self._checks += 1
        cut = 0
        resident = rss()
        self._rss_seen = min(self._rss_seen, resident)
        self._rss_looked = min(self._rss_looked, resident)
        surge = resident > self._rss_seen + self.surge
        active, self._active = self._active, {}
        if surge:
            log.info("Resident memory grew by %d MiB: sampling all %d connections",
                     (resident - self._rss_seen) >> 20, len(self._conns))
            sample: Iterator[Connection] = iter(list(self._conns.values()))
            self._rss_seen = self._rss_looked = resident
        else:
            # Each connection about once a window at least (``share`` a call)...
            share = math.ceil(len(self._conns) * self.interval / self.window)
            # ...and ``slice`` a call (never more than there are: the round robin would
            # wrap into a fresh pass and sample some twice) while memory grows: with up to
            # ``slice`` connections, every one every interval, so that a message of many
            # tiny frames is cut within an interval, before it can complete.
            many = min(len(self._conns), max(self.slice, share))
            if resident > self._rss_looked + self.growth:
                sample = itertools.islice(self._slice(), many)
                self._rss_looked = resident
            else:
                # Memory holds still, so no message is piling up (one pins at least its
                # bytes): the connections a message came from since the last check (a
                # flood is among them, and their base moves on), and ``share`` more.
                sample = itertools.chain(itertools.islice(self._slice(), share),
                                         itertools.islice(active.values(), many - share))
        unfinished = self.unfinished_surge if surge else self.unfinished
        # A socket with messages waiting to be read is one the loop is behind on: the
        # bytes that came since its last message may be whole messages, not one that
        # never ends. Those connections get the flood's allowance instead (unless
        # memory surges), so a fast honest sender is not cut for the loop's lag.
        # Asked by a poll, not getsockopt(EVENTS): either makes libzmq process the socket's
        # pending commands, which for an XPUB that many subscribers just left is a walk of
        # its subscription trie for each, seconds of it; pyzmq's getsockopt holds the GIL
        # meanwhile (the loop thread stalls behind the publisher's), its poll does not.
        behind = set() if surge else {self._watched[sock] for sock, _ in
                                      self._watchers.poll(0)}
        for conn in sample:
            if conn.sampled != self._checks:  # an active one may come round in the robin
                conn.sampled = self._checks
                limit = self.allowance if conn.label in behind else unfinished
                cut += self._sample(conn, now, limit)
        if self.crowded():
            full = len(self._conns) > self.limit - self.reserve // 4
            cut += self._reap_handshakes(now, FULL_DEADLINE if full else self.deadline)
        if now <= self._trim_until:  # libzmq frees a cut connection's memory meanwhile
            trim()
        return cut

    def _slice(self) -> Iterator[Connection]:
        """The next connections, round robin over all (those gone since are skipped)."""
        for _ in range(2):
            for conn in self._cycle:
                if self._conns.get(conn.fd) is conn and conn.tcp and not conn.cut:
                    yield conn
            self._cycle = iter(list(self._conns.values()))

    def _sample(self, conn: Connection, now: float, unfinished: int) -> int:
        if self._conns.get(conn.fd) is not conn or not conn.tcp or conn.cut:
            return 0
        counters = self._counters(conn.fd)
        if counters is None:
            if identity(conn.fd) is None:  # closed without our seeing the event
                self._forget(conn)
            return 0
        acked_, got, notsent = counters
        if got < conn.mark_received or got < conn.base:  # a new connection has the number
            self._learn(conn.fd, conn.label)
            return 0
        if not conn.proven and conn.handshake_sent is not None and acked_ > conn.handshake_sent:
            self._prove(conn)
        if conn.messages != conn.messages_sampled:  # what came before is out of libzmq
            conn.messages_sampled, conn.base = conn.messages, got
        if got - conn.base > unfinished:
            return int(self.cut(conn.fd, "unfinished message"))
        if got - conn.mark_received > self.allowance:
            return int(self.cut(conn.fd, "flood"))
        if now - conn.mark_time >= self.window:
            conn.mark_time, conn.mark_received = now, got
        if notsent and acked_ == conn.acked:
            if now - conn.acked_time >= self.stall:
                if not self.cut(conn.fd, "not reading"):
                    return 0
                if conn.peered:  # (a publisher's connections have none: nobody asks)
                    self._stalled.append(conn)
                return 1
        else:
            conn.acked, conn.acked_time = acked_, now
        return 0

    def _reap_handshakes(self, now: float, deadline: float) -> int:
        cut = budget = 0
        for pending in self._pending.values():
            while pending and budget < self.slice:
                conn = next(iter(pending.values()))
                if now - conn.born < deadline:
                    break
                budget += 1
                del pending[conn.fd]
                sent = conn.handshake_sent
                acked_ = acked(conn.fd) if sent is not None else None
                if acked_ is not None and sent is not None and acked_ > sent:
                    conn.proven = True
                elif self._conns.get(conn.fd) is conn and self.cut(conn.fd, "handshake",
                                                                   quiet=True):
                    cut += 1
        if cut:
            log.warning("Descriptors run short (%d connections, limit %d): cut %d that had "
                        "not finished their handshake within %g s", len(self._conns),
                        self.limit, cut, deadline)
        return cut

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the monitors (before the sockets close) and close them."""
        for monitor, (sock, _label) in self._monitors.items():
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            monitor.close(0)
        self._monitors.clear()
        self._watched.clear()
        self._watchers = zmq.Poller()
