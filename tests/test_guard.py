"""broker.guard on real libzmq sockets on loopback: a bare ROUTER or XPUB (not the broker),
watched by ``Connections``, against attackers that speak ZMTP by hand over raw TCP.

The attackers run in this process as plain sockets writing from one prebuilt buffer, so
what this process's resident memory gains is what libzmq buffered on the server side.
Rules that depend on time run on a fake clock the test advances; everything else waits on
a condition with a deadline (a monitor event, a byte count, EOF), never on a bare sleep.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from broker import guard
from broker.guard import Connections

WAIT = 5.0
MiB = 1 << 20


# -- a ZMTP 3.0 NULL peer by hand -----------------------------------------------------------

GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)


def ready(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return bytes([0x04, len(body)]) + body


def frame(body: bytes, more: bool = False) -> bytes:
    if len(body) < 256:
        return bytes([int(more), len(body)]) + body
    return bytes([2 | int(more)]) + struct.pack(">Q", len(body)) + body


class RawPeer:
    """A TCP connection that says exactly what the test tells it to."""

    def __init__(self, endpoint: str, socket_type: bytes | None = b"DEALER"):
        host, port = endpoint.rsplit("/", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT)
        if socket_type is not None:
            # Like libzmq, send messages only after the server's READY: a message that
            # arrives before the server has sent its READY fails the handshake.
            self.sock.sendall(GREETING + ready(socket_type))
            greeting = self.read(len(GREETING))
            assert greeting[10] == 3, greeting
            flags, size = self.read(2)
            assert flags == 0x04 and self.read(size).startswith(b"\x05READY")

    def read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self.sock.recv(n - len(data))
            assert more, "closed by the server"
            data += more
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed_by_server(self, timeout: float = WAIT) -> bool:
        """True once the server ends the connection (EOF or reset), reading what it sent."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(1 << 16):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


# -- fixtures and waiting -------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ctx(zctx: zmq.Context) -> zmq.Context:
    return zctx  # conftest's, under the name these tests use


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def made() -> Iterator[Callable[..., Connections]]:
    started: list[Connections] = []

    def make(**kwargs) -> Connections:
        conns = Connections(**kwargs)
        started.append(conns)
        return conns

    yield make
    for conns in started:  # monitors off before the context goes
        conns.close()


def bound(ctx: zmq.Context, conns: Connections, kind: int = zmq.ROUTER, label: str = "router",
          curve_secret: bytes | None = None) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_secret is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_secret)
    conns.watch(sock, label)
    sock.bind("tcp://127.0.0.1:0")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def until(conns: Connections, condition: Callable[[], object], timeout: float = WAIT,
          check: bool = False, clock: Clock | None = None) -> None:
    """Run a broker loop's turns until ``condition`` holds: poll the watched sockets (which
    lets them process libzmq's commands, such as tearing a pipe down) and their monitors,
    drain the monitors, and if asked run the check (advancing ``clock`` by an interval)."""
    poller = zmq.Poller()
    for monitor in conns.monitors:
        poller.register(monitor, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        poller.poll(10)
        for sock, _label in conns._monitors.values():
            sock.getsockopt(zmq.EVENTS)  # as the broker's poll would
        conns.drain()
        if clock is not None:
            clock.now += guard.INTERVAL
        if check:
            conns.check()


def fd_of(sock: zmq.Socket) -> tuple[list[bytes], int]:
    """Receive one message (waiting) and return it with the descriptor it came from."""
    assert sock.poll(WAIT * 1000), "no message"
    frames = sock.recv_multipart(copy=False)
    return [f.bytes for f in frames], frames[-1].get(zmq.SRCFD)


def zero_window(fd: int) -> bool:
    """The peer's receive window is full and our kernel holds bytes it cannot send."""
    info = guard._tcp_info(fd)
    assert info is not None and len(info) >= 232
    notsent, = struct.unpack_from("I", info, 144)
    snd_wnd, = struct.unpack_from("I", info, 228)
    return snd_wnd == 0 and notsent > 0


def baseline() -> int:
    """Resident memory, after giving back what earlier tests freed (or it would be reused
    without growing the process, and growth would not show)."""
    guard.trim()
    return guard.rss()


def mib(n: int) -> str:
    return f"{n / MiB:+.0f} MiB"


# -- bookkeeping ----------------------------------------------------------------------------

def test_monitor_sees_accepts_handshakes_and_disconnects(ctx, made):
    conns = made()
    router, endpoint = bound(ctx, conns)
    dealers = []
    for i in range(3):  # one at a time: each HANDSHAKE_SUCCEEDED names the only pending one
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(endpoint)
        dealers.append(d)
        until(conns, lambda n=i + 1: len(conns) == n and conns.pending() == 0)
    # The descriptors the monitor reported are those the messages come from.
    for d in dealers:
        d.send(b"hi")
        _, fd = fd_of(router)
        assert fd in conns and conns.get(fd).accepted and conns.get(fd).proven
        conns.seen(fd)
        assert conns.get(fd).messages == 1
    for d in dealers:
        d.close()
    until(conns, lambda: len(conns) == 0)


def test_a_connection_is_pending_until_proven(ctx, made):
    """A raw connection that sent 5 bytes stays pending. A plaintext peer that completes its
    handshake meanwhile is not attributed by the monitor (two were pending), until a
    message from it is seen."""
    conns = made()
    router, endpoint = bound(ctx, conns)
    raw = RawPeer(endpoint, socket_type=None)
    raw.send(b"\xff\0\0\0\0")
    until(conns, lambda: len(conns) == 1)
    [raw_fd] = list(conns._conns)
    honest = RawPeer(endpoint)
    honest.send(frame(b"hello"))
    until(conns, lambda: len(conns) == 2)
    assert conns.pending() == 2
    frames, fd = fd_of(router)
    assert frames[-1] == b"hello" and fd != raw_fd
    conns.seen(fd)
    assert conns.pending() == 1 and conns.get(fd).proven and not conns.get(raw_fd).proven


def test_an_unread_monitor_does_not_freeze_the_context(ctx, made):
    """libzmq sends monitor events with a blocking send: with the default HWM, 667
    connections froze everything here. ``watch`` makes its monitor unbounded."""
    conns = made()
    router, endpoint = bound(ctx, conns)
    for i in range(1500):  # three events each, never read until the end
        peer = RawPeer(endpoint, socket_type=None)
        peer.send(GREETING[:10])
        assert peer.sock.recv(10), f"the server stopped answering at connection {i}"
        peer.close()
    until(conns, lambda: conns.drain() == 0 and len(conns) == 0)


def test_raise_fd_limit_and_crowding(made):
    import resource
    limit = guard.raise_fd_limit()
    assert limit == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit
    conns = made(limit=10, reserve=3)
    assert not conns.crowded()
    conns._conns.update({fd: object() for fd in range(7)})  # 7 = limit - reserve
    assert not conns.crowded()
    conns._conns[7] = object()
    assert conns.crowded()
    conns._conns.clear()


# -- cut ------------------------------------------------------------------------------------

def test_cut_ends_the_connection_and_refuses_a_reused_number(made):
    conns = made()
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname(), timeout=WAIT)
        a_server, _ = server.accept()
        number = a_server.fileno()
        conns.seen(number)
        assert conns.get(number).peer == "{}:{}".format(*a.getsockname())
        # libzmq closes A and the number is reused for B:
        b = socket.create_connection(server.getsockname(), timeout=WAIT)
        b_server, _ = server.accept()
        a_server.close()
        os.dup2(b_server.fileno(), number)
        b_server.close()
        assert not conns.cut(number, "test")
        assert number not in conns and conns.cuts["test"] == 0
        os.write(number, b"B is alive")  # B was not shut down
        assert b.recv(100) == b"B is alive"
        # The same number, learned again, is cut.
        conns.seen(number)
        assert conns.cut(number, "test") and conns.cuts["test"] == 1
        assert b.recv(100) == b""  # EOF
        assert not conns.cut(12345, "test")  # never seen
        with open(__file__, "rb") as f:
            conns.seen(f.fileno())  # not a socket: not learned
            assert f.fileno() not in conns and not conns.cut(f.fileno(), "test")
        os.close(number)
        a.close()
        b.close()


def test_byte_counters(ctx, made):
    conns = made()
    router, endpoint = bound(ctx, conns)
    peer = RawPeer(endpoint)
    peer.send(frame(b"x" * 1000))
    _, fd = fd_of(router)
    assert conns.received(fd) == len(GREETING) + len(ready(b"DEALER")) + 1000 + 9
    until(conns, lambda: conns.acked(fd) > 64)  # the server's greeting and READY
    r, w = os.pipe()
    assert conns.received(r) is None and conns.acked(w) is None
    os.close(r)
    os.close(w)


# -- the periodic check ---------------------------------------------------------------------

def flood(peer: RawPeer, chunk: bytes, limit: int, stop: threading.Event) -> threading.Thread:
    """Send ``chunk`` over and over (at most ``limit`` bytes) until told or cut."""
    def run() -> None:
        sent = 0
        try:
            while sent < limit and not stop.is_set():
                peer.send(chunk)
                sent += len(chunk)
        except OSError:
            pass  # cut

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind, peer_type", [(zmq.ROUTER, b"DEALER"), (zmq.XPUB, b"XSUB")],
                         ids=["router", "xpub"])
def test_endless_multipart_is_cut_and_memory_comes_back(ctx, made, kind, peer_type):
    """Frames of 512 bytes, never a last one: libzmq buffers ~1.8 bytes per byte received,
    and nothing reaches the application. The check cuts the connection and memory returns."""
    conns = made()
    router, endpoint = bound(ctx, conns, kind)
    if kind == zmq.XPUB:
        router.setsockopt(zmq.XPUB_MANUAL, 1)
        router.setsockopt(zmq.MAXMSGSIZE, 512)  # as the broker's publisher
    peer = RawPeer(endpoint, peer_type)
    until(conns, lambda: conns.pending() == 0 and len(conns) == 1)
    [fd] = list(conns._conns)
    base = baseline()
    stop = threading.Event()
    thread = flood(peer, frame(b"m" * 512, more=True) * 2048, 2048 * MiB, stop)
    peak = 0

    def cut() -> bool:
        nonlocal peak
        peak = max(peak, guard.rss())
        return conns.cuts["unfinished message"] == 1

    # Without a check the flood would run on: give memory time to grow before checking.
    until(conns, lambda: guard.rss() > base + 32 * MiB)
    until(conns, cut, check=True)
    assert peer.closed_by_server()
    stop.set()
    with contextlib.suppress(OSError):  # the kernel may keep a blocked sendall waiting
        peer.sock.shutdown(socket.SHUT_RDWR)
    thread.join(WAIT)
    until(conns, lambda: guard.rss() < base + 8 * MiB, check=True)
    print(f"endless multipart ({peer_type.decode()}): {mib(peak - base)} at the cut, "
          f"{mib(guard.rss() - base)} after it")
    assert router.poll(0) == 0  # nothing ever reached the application
    until(conns, lambda: len(conns) == 0)


def test_honest_traffic_is_not_cut(ctx, made, clock):
    """Complete messages, read and seen, below the allowance: nothing is cut."""
    conns = made(clock=clock)
    router, endpoint = bound(ctx, conns)
    peer = RawPeer(endpoint)
    message = frame(b"m" * (64 << 10))
    for _ in range(10):
        for _ in range(16):  # 1 MiB a second, in complete messages
            peer.send(message)
            _, fd = fd_of(router)
            conns.seen(fd)
        clock.now += guard.WINDOW
        conns.drain()
        assert conns.check() == 0
    assert not conns.cuts and not peer.closed_by_server(0.05)


def test_flood_of_complete_messages_is_cut(ctx, made, clock):
    conns = made(clock=clock)
    router, endpoint = bound(ctx, conns)
    peer = RawPeer(endpoint)
    message = frame(b"m" * (64 << 10))
    for _ in range(160):  # 10 MiB within one window, every message read and seen
        peer.send(message)
        _, fd = fd_of(router)
        conns.seen(fd)
    clock.now += guard.INTERVAL
    conns.drain()
    assert conns.check() == 1 and conns.cuts["flood"] == 1
    assert peer.closed_by_server()


def test_peer_that_stops_reading_is_cut_and_its_queue_freed(ctx, made, clock):
    """An XPUB subscriber that never reads: libzmq keeps its queue (SNDHWM frames) while the
    connection lasts and never tells the application. The stall rule cuts it."""
    conns = made(clock=clock)
    xpub, endpoint = bound(ctx, conns, zmq.XPUB, "pub")
    xpub.setsockopt(zmq.SNDHWM, 1000)
    peer = RawPeer(endpoint, b"SUB")
    peer.send(frame(b"\x01room"))
    assert xpub.recv() == b"\x01room"  # subscribed
    until(conns, lambda: len(conns) == 1)
    [fd] = list(conns._conns)
    base = baseline()
    payload = b"p" * (64 << 10)
    for _ in range(3000):  # far more than the peer's kernel buffers and the queue hold
        xpub.send_multipart([b"room", payload])
    until(conns, lambda: guard.rss() > base + 32 * MiB)
    queued = guard.rss() - base
    # Acknowledged bytes stop growing once the peer advertises a zero window.
    until(conns, lambda: zero_window(fd))
    clock.now += guard.INTERVAL
    assert conns.check() == 0  # stalled, but not for long yet
    clock.now += guard.STALL - 1
    assert conns.check() == 0
    clock.now += 1.5
    assert conns.check() == 1 and conns.cuts["not reading"] == 1
    assert peer.closed_by_server()
    until(conns, lambda: guard.rss() < base + 8 * MiB, check=True, clock=clock)
    print(f"stopped reader: {mib(queued)} queued, {mib(guard.rss() - base)} after the cut")


def test_cut_frees_what_a_router_queued_for_a_peer_not_reading(ctx, made):
    conns = made()
    router, endpoint = bound(ctx, conns)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    peer = RawPeer(endpoint)
    peer.send(frame(b"hello"))
    (routing_id, _), fd = fd_of(router)
    conns.seen(fd)
    base = baseline()
    payload = b"p" * (64 << 10)
    with pytest.raises(zmq.Again):  # what the broker sees: "not reading"
        for _ in range(10_000):
            router.send_multipart([routing_id, payload], zmq.NOBLOCK)
    queued = guard.rss() - base
    assert queued > 32 * MiB
    assert conns.cut(fd, "not reading")
    assert peer.closed_by_server()
    until(conns, lambda: guard.rss() < base + 8 * MiB, check=True)
    print(f"router queue: {mib(queued)} queued, {mib(guard.rss() - base)} after the cut")
    with pytest.raises(zmq.ZMQError) as gone:
        router.send_multipart([routing_id, b"x"], zmq.NOBLOCK)
    assert gone.value.errno == errno.EHOSTUNREACH


def test_handshake_deadline_cuts_raw_connections_when_crowded(ctx, made, clock):
    """Raw TCP that sent 5 bytes holds a descriptor for libzmq's 30 s handshake timeout.
    While descriptors run short, those past the deadline are cut; an authenticated client
    that connected among them (so its HANDSHAKE_SUCCEEDED names nobody) stays."""
    server_public, server_secret = zmq.curve_keypair()
    conns = made(clock=clock, limit=1000, reserve=1000 - 20)  # crowded above 20
    router, endpoint = bound(ctx, conns, curve_secret=server_secret)

    def raw_peers(n: int) -> list[RawPeer]:
        peers = [RawPeer(endpoint, socket_type=None) for _ in range(n)]
        for peer in peers:
            peer.send(b"\xff\0\0\0\0")
        return peers

    old = raw_peers(10)
    until(conns, lambda: len(conns) == 10)
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.curve_serverkey = server_public
    client.curve_publickey, client.curve_secretkey = zmq.curve_keypair()
    client_monitor = client.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    client.connect(endpoint)
    until(conns, lambda: len(conns) == 11 and client_monitor.poll(0))
    until(conns, lambda: any(conns.acked(fd) > guard.CURVE_HANDSHAKE_SENT for fd in conns._conns))
    assert conns.pending() == 11  # the monitor event could not say which one succeeded
    for _ in range(round(guard.WINDOW / guard.INTERVAL)):  # each sampled once a window
        clock.now += guard.INTERVAL
        assert conns.check() == 0  # not crowded
    assert conns.pending() == 10  # the sample proved the client by its bytes
    clock.now += guard.DEADLINE + 0.5
    assert conns.check() == 0  # past the deadline, but not crowded
    young = raw_peers(10)
    until(conns, lambda: len(conns) == 21)
    assert conns.crowded()
    clock.now += guard.INTERVAL
    assert conns.check() == 10 and conns.cuts["handshake"] == 10  # the old ten only
    assert all(peer.closed_by_server() for peer in old)
    until(conns, lambda: len(conns) == 11)
    clock.now += guard.DEADLINE
    assert conns.check() == 0  # not crowded any more: the young ten are left alone
    assert not any(peer.closed_by_server(0.01) for peer in young)
    client.send(b"still here")
    frames, _ = fd_of(router)
    assert frames[-1] == b"still here"
    client.disable_monitor()
    client_monitor.close()
    client.close()
    for peer in old + young:
        peer.close()


# --- the sampling policy: every connection when memory grows, else the active and a share ---


def _count_samples(conns, monkeypatch):
    """The descriptors the checks sample from now on, in order."""
    seen: list[int] = []
    real = conns._counters
    def counting(fd):
        seen.append(fd)
        return real(fd)
    monkeypatch.setattr(conns, "_counters", counting)
    return seen


def test_quiet_connections_are_sampled_once_a_window_and_active_ones_every_check(
        ctx, made, clock, monkeypatch):
    conns = made(clock=clock)
    router, endpoint = bound(ctx, conns)
    peers = [RawPeer(endpoint) for _ in range(40)]
    until(conns, lambda: len(conns) == 40)
    seen = _count_samples(conns, monkeypatch)
    conns._rss_looked = guard.rss() + (1 << 30)  # memory holds still, whatever it does here
    clock.now += guard.INTERVAL
    conns.check()
    assert len(seen) == 2  # ceil(40 x 0.05 / 1): the round robin's share
    peers[7].send(frame(b"hello"))
    _, fd = fd_of(router)
    conns.seen(fd)
    seen.clear()
    clock.now += guard.INTERVAL
    conns.check()
    assert fd in seen and len(seen) <= 3  # the one a message came from, and the share
    seen.clear()
    for _ in range(20):  # a window: every connection came round at least once
        clock.now += guard.INTERVAL
        conns.check()
    assert set(seen) == set(conns._conns) and len(seen) == 40


def test_growing_memory_samples_every_connection_every_check(ctx, made, clock, monkeypatch):
    conns = made(clock=clock)
    router, endpoint = bound(ctx, conns)
    peers = [RawPeer(endpoint) for _ in range(40)]  # noqa: F841
    until(conns, lambda: len(conns) == 40)
    seen = _count_samples(conns, monkeypatch)
    conns._rss_looked = guard.rss() - 2 * guard.GROWTH  # it grew since the last look
    clock.now += guard.INTERVAL
    conns.check()
    assert sorted(seen) == sorted(conns._conns)  # all 40, each once


def test_an_unfinished_message_among_quiet_connections_is_cut_as_memory_grows(ctx, made):
    conns = made()
    router, endpoint = bound(ctx, conns)
    quiet = [RawPeer(endpoint) for _ in range(40)]  # noqa: F841
    attacker = RawPeer(endpoint)
    until(conns, lambda: len(conns) == 41)
    chunk = frame(b"x" * 512, more=True) * 64
    try:
        for _ in range(10_000):  # 330 MB if nothing stopped it
            attacker.send(chunk)
            conns.drain()
            conns.check()
    except OSError:
        pass
    until(conns, lambda: conns.cuts["unfinished message"] == 1, check=True)
    assert attacker.closed_by_server()


def test_no_descriptor_known_is_no_tcp_connection_not_an_error():
    """-1 is what the loops pass for "no connection known for sure" (a peer that dialled
    again since): asking about it must answer None, never raise (it once raised
    ValueError, and a reconnecting client could end the edge's loop with it)."""
    from broker import guard

    assert guard.acked(-1) is None and guard.received(-1) is None
