"""The gateway's loop: one process, one poller over the IRC clients' TCP sockets and each
one's zchat Connection (its DEALER and SUB).

Each turn it accepts, reads what is ready (a bounded amount per client, so no client
starves another), hands lines to the client's Session and the Connection's events to it
too, and writes what the Session produced. Everything a client can make us hold is
bounded: its unfinished line (irc.LineReader), its unanswered requests (the Session's
PENDING_MAX: a flood), and what waits to be written to it (``sendq``: a client that
does not read is dropped past it). A bad client gets ``ERROR`` and is closed; nothing it
does reaches another client's state.

The one call that waits for the broker, ``Connection.hello``, runs in a short-lived
thread per new client (at most OPENING_MAX at once), which then hands the Connection
to the loop and never touches it again (ZeroMQ sockets may move between threads that
way). After that every Connection resumes and catches up by itself without blocking.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import queue
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from client.connection import Connection, Refused, Unreachable

from .irc import LineError, LineReader, Message, Penalty, format_line
from .session import Session

log = logging.getLogger("zchat.gateway")

READ_SIZE = 16384  # bytes read from one client per turn (one TLS record at most)
WRITE_SIZE = 65536
SENDQ = 1 << 20  # bytes waiting to be written to one client before it is dropped
OPENING_MAX = 16  # zchat sessions being opened at once
HOUSEKEEPING_SLACK = 0.05  # seconds a Connection's housekeeping may wait for company
LINES_PER_TURN = 20  # lines of one client carried out a turn; the rest waits its turn
EVENTS_PER_TURN = 256  # zchat events of one client handled a turn; the rest waits too
FLOOD_TIME = 10.0  # seconds a client may be held back by its flood budget before ERROR
DESCRIPTORS_PER_CLIENT = 6  # its socket, libzmq's for its two connections and mailboxes
ACCEPT_PAUSE = 0.5  # seconds the listener rests when we are out of descriptors
ACCEPT_LOG_EVERY = 10.0  # seconds between two log lines about it
UNREGISTERED_SHARE = 4  # at most max_clients / this connections not registered yet
IDLE_GRACE = 1.0  # seconds a new connection has to begin registering before it is "idle"
LINGER = 1.0  # seconds to flush an ERROR, or for zchat to answer a bye, before closing
SNDBUF = 256 << 10  # the kernel's share of what waits for a client, fixed (no autotuning)


@dataclass
class Link:
    """One IRC client: its socket, buffers, Session and (once open) Connection."""

    sock: socket.socket
    peer: str
    session: Session
    born: float
    heard: float
    tls: bool = False
    handshaking: bool = False
    reader: LineReader = field(default_factory=LineReader)
    out: bytearray = field(default_factory=bytearray)
    conn: Connection | None = None
    opening: bool = False
    pinged: float | None = None
    closing: float | None = None  # the deadline to flush what is left, once closing
    wants_write: bool = False  # TLS: a read or handshake needs the socket writable
    penalty: Penalty = field(default_factory=Penalty)
    held_since: float | None = None  # since when its flood budget holds its lines back
    events: deque[Any] = field(default_factory=deque)  # zchat events not yet handled
    want: int = zmq.POLLIN  # what its socket is polled for (changed only when it changes)
    conn_due: float = 0.0  # when its Connection's housekeeping is next due


class Gateway:
    def __init__(self, listen: tuple[str, int], server: list[str], *,
                 server_key: bytes | None, tls: ssl.SSLContext | None = None,
                 max_clients: int = 256,
                 sendq: int = SENDQ, ping_interval: float = 90.0,
                 register_timeout: float = 15.0, hello_timeout: float = 5.0):
        self.server = server
        self.server_key = server_key
        self.tls = tls
        self.max_clients = max_clients
        self.sendq = sendq
        self.ping_interval = ping_interval
        self.register_timeout = register_timeout
        self.hello_timeout = hello_timeout
        self.ctx = zmq.Context()
        # Two sockets a client, and a monitor while its hello is waited on.
        self.ctx.setsockopt(zmq.MAX_SOCKETS, 3 * max_clients + 64)
        self.listener = socket.create_server(listen, backlog=128)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()[:2]
        self.created = time.strftime("%Y-%m-%d %H:%M:%S")
        self.links: dict[int, Link] = {}  # by socket descriptor
        self._unregistered: dict[int, Link] = {}  # those not registered yet, oldest first
        self._accept_paused: float | None = None  # until when, out of descriptors
        self._accept_failures = 0
        self._accept_logged = -math.inf
        self._to_open: deque[Link] = deque()
        self._opening = 0
        self._opened: queue.SimpleQueue[tuple[Link, Connection | None, str]] = \
            queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._retiring: list[tuple[Connection, int | None, float]] = []
        self.poller = zmq.Poller()
        self.poller.register(self.listener, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        self.stopping = False

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping:
            self.turn()
        self._shutdown()

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def turn(self) -> None:
        now = time.monotonic()
        due = [1.0]
        for link in self.links.values():
            if link.conn is not None:
                wakeup = link.conn.next_wakeup()
                link.conn_due = now + wakeup
                # A little late, so that the Connections due about then share one turn.
                due.append(wakeup + HOUSEKEEPING_SLACK)
            if link.closing is not None:
                due.append(max(0.0, link.closing - now))
            elif link.events:
                due.append(0.0)
            elif link.reader.has_line() and len(link.out) < self.sendq // 2 \
                    and not _waits(link):
                due.append(link.penalty.wait(now))
        if self._retiring:
            due.append(0.05)
        if self._accept_paused is not None:
            if now >= self._accept_paused:
                self._accept_paused = None
                self.poller.modify(self.listener, zmq.POLLIN)
            else:
                due.append(self._accept_paused - now)
        try:
            # Rounded up: pyzmq truncates a fraction of a millisecond to 0, a busy spin.
            ready = dict(self.poller.poll(math.ceil(min(due) * 1000)))
        except zmq.ZMQError as exc:
            if exc.errno == errno.EINTR:
                return
            raise
        if self.listener.fileno() in ready or self.listener in ready:
            self._accept()
        if self._wake_r in ready or self._wake_r.fileno() in ready:
            self._take_opened()
        for fd, flags in ready.items():
            link = self.links.get(fd) if isinstance(fd, int) else None
            if link is None:
                continue
            if link.handshaking:
                self._handshake(link)
                continue
            if flags & zmq.POLLOUT:
                self._write(link)
            if flags & zmq.POLLIN and link.closing is None:
                self._read(link)
        for link in list(self.links.values()):
            now = time.monotonic()
            self._lines(link, now)
            conn = link.conn
            # An idle Connection is pumped only when its sockets have something or its
            # housekeeping is due: with many clients, not each of them every turn.
            if conn is not None and (conn.dealer in ready or conn.sub in ready
                                     or now >= link.conn_due):
                link.events.extend(conn.pump())
            if link.events:
                batch = [link.events.popleft()
                         for _ in range(min(EVENTS_PER_TURN, len(link.events)))]
                self._safely(link, self._events, link, batch)
            self._after(link, now)
        self._retire()

    @staticmethod
    def _events(link: Link, events: list[Any]) -> None:
        for ev in events:
            link.session.event(ev)
        link.session.settle()

    def _safely(self, link: Link, call: Any, *args: Any) -> None:
        """A bug met by one client's session ends that client, never the gateway."""
        try:
            call(*args)
        except Exception:  # noqa: BLE001 - logged, and the client told
            log.exception("%s (%s): internal error", link.peer, link.session.nick)
            link.session.fatal("Internal error")

    # -- accepting and opening ----------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, say: rest, then try again
                self._accept_failed(exc)
                return
            peer = f"{addr[0]}:{addr[1]}"
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._make_room()
            if len(self.links) >= self.max_clients:
                try:
                    sock.send(format_line(Message("ERROR", ["Closing Link: * (Server full)"])))
                except OSError:
                    pass
                sock.close()
                continue
            now = time.monotonic()
            session = Session(created=self.created)
            link = Link(sock, peer, session, born=now, heard=now)
            if self.tls is not None:
                link.sock = self.tls.wrap_socket(sock, server_side=True,
                                                 do_handshake_on_connect=False)
                link.tls = link.handshaking = True
            self.links[link.sock.fileno()] = link
            self._unregistered[link.sock.fileno()] = link
            self.poller.register(link.sock.fileno(), zmq.POLLIN)

    def _make_room(self) -> None:
        """Idle connections that never register cannot keep everyone out: past a share
        of the places (or when all are taken), the oldest of those that have had
        IDLE_GRACE to begin and are not logging in makes room for the next one."""
        now = time.monotonic()
        idle = [u for u in self._unregistered.values() if not u.opening
                and u.conn is None and not u.session.wants_broker]
        if len(idle) < max(1, self.max_clients // UNREGISTERED_SHARE) \
                and len(self.links) < self.max_clients:
            return
        # When every place is taken, the newcomer would be refused: a shorter grace.
        grace = IDLE_GRACE if len(self.links) < self.max_clients else IDLE_GRACE / 4
        oldest = next((u for u in idle if now - u.born >= grace), None)
        if oldest is None:
            return
        log.info("%s: dropped: too many connections not registered", oldest.peer)
        oldest.session.fatal("Too many connections not registered yet")
        for line in oldest.session.take():
            oldest.out += line
        self._write(oldest)
        self._drop(oldest)

    def _accept_failed(self, exc: OSError) -> None:
        now = time.monotonic()
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            # The connection stays in the backlog; polling the listener again at once
            # would only spin. Rest it a moment.
            self._accept_paused = now + ACCEPT_PAUSE
            self.poller.modify(self.listener, 0)
        self._accept_failures += 1
        if now - self._accept_logged >= ACCEPT_LOG_EVERY:
            log.warning("accept failed: %s (%d times since the last report)", exc,
                        self._accept_failures)
            self._accept_logged, self._accept_failures = now, 0

    def _handshake(self, link: Link) -> None:
        assert isinstance(link.sock, ssl.SSLSocket)
        try:
            link.sock.do_handshake()
        except ssl.SSLWantReadError:
            link.wants_write = False
            return
        except ssl.SSLWantWriteError:
            link.wants_write = True
            return
        except (ssl.SSLError, OSError) as exc:
            log.info("%s: TLS handshake failed: %s", link.peer, exc)
            self._drop(link)
            return
        link.handshaking = link.wants_write = False
        self._read(link)  # what came with the handshake is already past the kernel

    def _open(self, link: Link) -> None:
        link.opening = True
        if self._opening >= OPENING_MAX:
            self._to_open.append(link)
            return
        self._opening += 1
        threading.Thread(target=self._opener, args=(link,), daemon=True).start()

    def _opener(self, link: Link) -> None:
        """In a thread of its own: open the zchat session, then hand it to the loop."""
        conn = None
        try:
            conn = Connection(self.server, server_key=self.server_key, ctx=self.ctx)
            conn.hello(timeout=self.hello_timeout)
            self._opened.put((link, conn, ""))
        except (Unreachable, Refused) as exc:
            conn.close()  # type: ignore[union-attr]
            self._opened.put((link, None, str(exc)))
        except Exception as exc:  # noqa: BLE001 - out of sockets or descriptors, say
            if conn is not None:
                conn.close()
            self._opened.put((link, None, str(exc) or type(exc).__name__))
        self._wake_w.send(b"!")

    def _take_opened(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                link, conn, problem = self._opened.get_nowait()
            except queue.Empty:
                break
            self._opening -= 1
            if self._to_open:
                waiting = self._to_open.popleft()
                self._opening += 1
                threading.Thread(target=self._opener, args=(waiting,), daemon=True).start()
            link.opening = False
            if conn is None:
                link.session.broker_failed(problem)
                continue
            if link.closing is not None or self.links.get(link.sock.fileno()) is not link:
                self._retiring.append((conn, conn.request("bye"), time.monotonic() + LINGER))
                continue
            link.conn = conn
            self.poller.register(conn.dealer, zmq.POLLIN)
            self.poller.register(conn.sub, zmq.POLLIN)
            self._safely(link, link.session.attach,
                         lambda cmd, _c=conn, **f: _c.request(cmd, **f))

    # -- reading and writing ------------------------------------------------------------------

    def _read(self, link: Link) -> None:
        try:
            data = link.sock.recv(READ_SIZE)
            # TLS: bytes already decrypted are no longer the kernel's, so poll would not
            # tell of them; they are at most the rest of one record.
            while link.tls and data and (pending := link.sock.pending()):  # type: ignore
                data += link.sock.recv(pending)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except ssl.SSLWantWriteError:
            link.wants_write = True
            return
        except OSError:  # reset, or a TLS error
            self._drop(link)
            return
        if not data:  # the client closed its end
            self._drop(link)
            return
        link.heard = time.monotonic()
        link.pinged = None
        try:
            link.reader.push(data)
        except LineError as exc:
            link.session.fatal(str(exc))

    def _lines(self, link: Link, now: float) -> None:
        """Carry out what the client sent, within its share of the turn: at most
        LINES_PER_TURN lines, while its flood budget (Penalty) allows and while what it
        has to read is less than half its sendq. Past FLOOD_TIME held back: a flood."""
        session = link.session
        if link.closing is not None or session.closed is not None or _waits(link):
            return
        for _ in range(LINES_PER_TURN):
            if not link.reader.has_line() or len(link.out) >= self.sendq // 2:
                link.held_since = None
                return
            if not link.penalty.ready(now):
                break
            try:
                taken = link.reader.take(1)
            except LineError as exc:
                session.fatal(str(exc))
                return
            for line in taken:
                link.penalty.charge(line, now)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s <- %r", link.peer, _redacted(line))
                self._safely(link, session.receive, line)
            if session.closed is not None:
                return
        else:
            link.held_since = None
            return
        if link.held_since is None:
            link.held_since = now
        elif now - link.held_since > FLOOD_TIME:
            session.fatal("Excess Flood")

    def _write(self, link: Link) -> None:
        if link.wants_write and link.tls:
            link.wants_write = False
            if link.closing is None:
                self._read(link)  # the read that was waiting for the socket to be writable
        while link.out:
            try:
                sent = link.sock.send(link.out[:WRITE_SIZE])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                return
            except ssl.SSLWantReadError:
                return
            except OSError:
                self._drop(link)
                return
            del link.out[:sent]

    def _after(self, link: Link, now: float) -> None:
        """What a turn leaves to do for a client: its output, timers and closing."""
        if link.sock.fileno() < 0:
            return
        session = link.session
        if session.registered and link.sock.fileno() in self._unregistered:
            del self._unregistered[link.sock.fileno()]
        for line in session.take():
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s -> %r", link.peer, line)
            link.out += line
        if session.wants_broker and not link.opening and link.conn is None:
            self._open(link)
        if len(link.out) > self.sendq and not link.handshaking:
            self._write(link)  # what it reads promptly is not held against it
            if link.sock.fileno() < 0:
                return
        if len(link.out) > self.sendq and link.closing is None:
            log.info("%s (%s): SendQ exceeded", link.peer, session.nick)
            self._drop(link)  # it does not read: nothing it would read matters now
            return
        if session.closed is not None and link.closing is None:
            log.info("%s (%s): closed: %r", link.peer, session.nick, session.closed)
            link.closing = now + LINGER
        if link.closing is None:
            self._timers(link, now)
            self._safely(link, session.tick, now)
            for line in session.take():
                link.out += line
        if link.out and not link.handshaking:
            self._write(link)
            if link.sock.fileno() < 0:
                return
        if link.closing is not None and (not link.out or now >= link.closing):
            self._drop(link)
            return
        # A closing client is not read from any more: what it sends changes nothing.
        # Nor one whose last lines wait their turn: the kernel holds the rest. Nor one
        # whose zchat connection is lost or resuming: what it sends would only pile up
        # (and be a flood); it is not timed out for that silence.
        if _waits(link):
            link.heard, link.pinged = now, None
        # (TLS too: _read takes all a record decrypted, so the rest is the kernel's.)
        reading = link.closing is None and not link.reader.has_line() and not _waits(link)
        want = (zmq.POLLIN if reading else 0) | (
            zmq.POLLOUT if link.out or link.wants_write else 0)
        if want != link.want:
            link.want = want
            self.poller.modify(link.sock.fileno(), want)  # 0: unregistered until it changes

    def _timers(self, link: Link, now: float) -> None:
        session = link.session
        if not session.registered and now - link.born > self.register_timeout:
            session.fatal("Registration timed out")
        elif now - link.heard > self.ping_interval:
            if link.pinged is None:
                link.pinged = now
                link.out += format_line(Message("PING", [session.server]))
            elif now - link.pinged > self.ping_interval:
                session.fatal(f"Ping timeout: {round(now - link.heard)} seconds")

    def _drop(self, link: Link) -> None:
        """Close the client's socket now and end its zchat session (others see it quit)."""
        fd = link.sock.fileno()
        if fd >= 0:
            self.links.pop(fd, None)
            self._unregistered.pop(fd, None)
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass
            try:
                link.sock.close()
            except OSError:
                pass
        link.out.clear()
        if link.conn is not None:
            conn, link.conn = link.conn, None
            for sock in (conn.dealer, conn.sub):
                self.poller.unregister(sock)
            self._retiring.append((conn, conn.request("bye"), time.monotonic() + LINGER))

    def _retire(self) -> None:
        """Connections whose bye is on its way: closed once answered (or given up)."""
        if not self._retiring:
            return
        now, keep = time.monotonic(), []
        for conn, rid, deadline in self._retiring:
            conn.pump()
            if (rid is not None and conn.answered(rid)) or now >= deadline:
                conn.close()
            else:
                keep.append((conn, rid, deadline))
        self._retiring = keep

    def _shutdown(self) -> None:
        for link in list(self.links.values()):
            link.session.fatal("The gateway is shutting down")
            for line in link.session.take():
                link.out += line
            self._write(link)
            self._drop(link)
        deadline = time.monotonic() + LINGER
        while self._retiring and time.monotonic() < deadline:
            self._retiring[0][0].dealer.poll(10)  # until a bye's answer, or a moment
            self._retire()
        for conn, _, _ in self._retiring:
            conn.close()
        self.listener.close()
        self.ctx.destroy(linger=0)


def _waits(link: Link) -> bool:
    """Is the client's zchat connection lost, or resuming?"""
    return link.conn is not None and (link.conn.lost or link.conn.resuming)


def _redacted(line: bytes) -> bytes:
    """A line for the debug log: no password in it."""
    head = line.split(b" ", 1)[0].upper()
    return head + b" ***" if head in (b"PASS", b"AUTHENTICATE") else line


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)

