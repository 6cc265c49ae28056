"""A hostile client, and a faulty core, against a real core and edge on loopback.

What one bad client (or a core that dies or stops reading) could still do to an edge, or
through it, and what holds now. Every test plays it on real processes
(``start_broker(..., "--edge-bind", ...)``, ``start_edge``) with bare sockets
(tests/test_security_e2e.py's ``Peer``) or the reference client, and waits on events,
never on a bare sleep. ``@pytest.mark.via_edge`` tests run against the core alone too:
an edge must answer as a core does.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import zmq

from schema import messages, pack
from schema import protocol as P

from .harness import (
    Broker,
    Client,
    Edge,
    edge_address,
    free_tcp_address,
    raw_socket,
    rss_mib,
    start_broker,
    start_edge,
)
from .test_security_e2e import (
    SUCCEEDED,
    Peer,
    broker_key,
    curve_socket,
    next_event,
    watched,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def edge(core) -> Iterator[Edge]:
    e = start_edge(edge_address(core), core.keys_dir)
    yield e
    e.stop()


def through(edge: Edge, core: Broker) -> SimpleNamespace:
    """The edge, as a broker for Peer and raw_socket: its addresses, the core's keys."""
    return SimpleNamespace(router=edge.router, pub=edge.pub, keys_dir=core.keys_dir)


def answer(sock: zmq.Socket, timeout: float = 5.0) -> dict:
    assert sock.poll(timeout * 1000), "no answer"
    [reply] = messages(sock.recv())
    return reply


# === Answering as the core does ============================================================


@pytest.mark.via_edge
def test_a_ping_before_hello_gets_no_session_as_from_the_core(broker, zctx):
    """Before: the edge answered every ping ok, a session or not."""
    peer = Peer(zctx, broker)  # (and so the edge hears its core)
    stranger = raw_socket(zctx, zmq.DEALER, broker)
    stranger.send(pack({"id": 0, "cmd": "ping"}))
    reply = answer(stranger)
    assert (reply["re"], reply["ok"], reply["code"]) == (0, False, "no_session"), reply
    # After its hello, pings are answered; after its bye, no_session again.
    assert peer.ask("ping") == {"re": peer._rid, "ok": True}
    peer.ok("bye")
    assert peer.refused("ping") == "no_session"


@pytest.mark.via_edge
def test_a_request_of_two_frames_is_told_so_as_by_the_core(broker, zctx):
    """Before: the edge answered 'A request must be a map'."""
    sloppy = raw_socket(zctx, zmq.DEALER, broker)
    sloppy.send_multipart([b"", pack({"id": 9, "cmd": "ping"})])
    reply = answer(sloppy)
    assert (reply["re"], reply["code"], reply["error"]) == (
        None, "malformed", "A request is exactly one frame"), reply


# === The core goes away and comes back =====================================================


def test_an_idle_client_behind_an_edge_resumes_when_the_core_restarts(tmp_path):
    """Before: the edge kept answering its pings ok from its own state, so a client in
    no room never learnt that the new core had no session of it: it stayed 'online' to
    itself, unreachable to everyone (no resume within 15 s, measured)."""
    db, link = str(tmp_path / "zchat.db"), free_tcp_address()
    core = start_broker(db, "--edge-bind", link)
    edge = start_edge(link, core.keys_dir)
    idle = Client(edge.router, "--name", "idle")
    friend = None
    try:
        idle.event("reply", cmd="login", timeout=10)
        core.proc.kill()  # kill -9: nothing said to anyone
        core.proc.wait(5)
        core = start_broker(db, "--edge-bind", link)
        resumed = idle.event("resumed", timeout=15)
        assert resumed["name"] == "idle", resumed
        friend = Client(core.router, "--name", "friend")
        friend.event("reply", cmd="login", timeout=10)
        friend.send("/msg idle are you there")
        assert idle.event("dm", timeout=10)["text"] == "are you there"
    finally:
        for c in (idle, friend):
            if c is not None:
                c.kill()
        edge.stop()
        core.stop()


# === A client that never reads ============================================================


def test_a_client_that_never_reads_is_cut_by_the_edge_and_its_session_ends(
        core, edge, zctx):
    """Pings are answered by the edge itself and free: a client that sends them and never
    reads fills only its own queue (1000 frames), then its connection is cut and the
    core ends its session, which its room sees. (Held before too: a regression guard.)"""
    ends = through(edge, core)
    alice = Peer(zctx, ends, "alice")
    alice.subscribe(alice.ok("create", room="den")["topic"])
    deaf = curve_socket(zctx, zmq.DEALER, broker_key(ends))
    deaf.setsockopt(zmq.RCVHWM, 1)
    deaf.setsockopt(zmq.RCVBUF, 1024)
    deaf.connect(edge.router)
    for rid, cmd, fields in ((1, "hello", {"version": P.PROTOCOL_VERSION}),
                             (2, "login", {"name": "deaf"}), (3, "join", {"room": "den"})):
        deaf.send(pack({"id": rid, "cmd": cmd, **fields}))
        assert answer(deaf)["ok"], cmd
    alice.hear(lambda e: e.get("ev") == "join" and e.get("name") == "deaf")
    ping = pack({"id": 0, "cmd": "ping"})
    left = None
    deadline = time.monotonic() + 20
    while left is None:  # the deaf one pings on, never reading; alice pings and listens
        assert time.monotonic() < deadline, f"never cut: {edge.log.drain(0.3)}"
        try:  # (never blocking: once cut, or while the edge is busy, sends would wait)
            for _ in range(20_000):  # ~0.5 MB: within the guard's allowance
                deaf.send(ping, zmq.NOBLOCK)
        except zmq.Again:
            pass
        assert alice.ask("ping")["ok"]
        try:
            left = alice.hear(lambda e: e.get("ev") == "leave" and e.get("name") == "deaf",
                              timeout=0.5)
        except AssertionError:
            pass
    assert left["reason"].startswith("not reading"), (left, edge.log.drain(0.3))
    assert alice.ask("ping") == {"re": alice._rid, "ok": True}
    assert edge.proc.poll() is None


# === A client that comes back on a new connection ==========================================


def test_a_reply_for_a_client_back_on_a_new_connection_does_not_crash_the_edge(
        core, edge, zctx):
    """A client's connection drops and it dials again at once, under the same routing id
    (a network blip; libzmq redials by itself), while the reply to its last request is
    still on its way from the core. Before: the edge counted that reply's bytes against
    descriptor -1 (the client's connection not known for sure yet), guard.acked raised
    ValueError for it, and the edge process died with every client on it."""
    ends = through(edge, core)
    honest = Peer(zctx, ends, "honest")
    hostile = curve_socket(zctx, zmq.DEALER, broker_key(ends))
    with watched(hostile, SUCCEEDED) as monitor:
        hostile.connect(edge.router)
        assert next_event(monitor, SUCCEEDED) == SUCCEEDED
        os.kill(core.proc.pid, signal.SIGSTOP)  # the reply waits: a slow core
        try:
            hostile.send(pack({"id": 5, "cmd": "users"}))  # relayed to the core
            hostile.send(pack({"id": 6, "cmd": "ping"}))  # answered by the edge, after
            assert answer(hostile)["re"] == 6  # so the edge has taken request 5
            hostile.disconnect(edge.router)
            hostile.connect(edge.router)
            assert next_event(monitor, SUCCEEDED) == SUCCEEDED  # back, same routing id
        finally:
            os.kill(core.proc.pid, signal.SIGCONT)
    # The core answers request 5 (no session: it said no hello); the edge passes it on.
    reply = answer(hostile, timeout=10)
    assert (reply["re"], reply["code"]) == (5, "no_session"), reply
    assert honest.ask("ping") == {"re": honest._rid, "ok": True}
    assert edge.proc.poll() is None


# === A core that stops reading =============================================================

HOSTILE_SOCKETS = 8
PER_SECOND = 6  # 1 MB requests per socket and second: under the guard's flood allowance
SECONDS = 5
E_TIMEOUT_MARGIN = 3.0  # seconds of a stopped core during which its edge still hears it


# On PostgreSQL a core stopped past the lock's timeout is fenced (test_failover_e2e).
@pytest.mark.sqlite_only
def test_a_stopped_core_leaves_the_edge_bounded_and_answering_pings(core, edge, zctx):
    """The core is SIGSTOPped while hostile clients send valid 1 MB requests (they cost
    the edge nothing to check, and each is within the rate): before, the edge queued every
    one for the core, 40 MB a second without end (345 MiB resident after 8 s, measured);
    now what waits for the core is bounded (LINK_BYTES, 64 MiB), and an honest client's
    pings are answered as fast as ever while the core is heard."""
    ends = through(edge, core)
    honest_ctx = zmq.Context()  # its own I/O thread: the attackers' bytes are not its wait
    try:
        honest = Peer(honest_ctx, ends, "honest")
        hostile = [raw_socket(zctx, zmq.DEALER, ends) for _ in range(HOSTILE_SOCKETS)]
        big = pack({"id": 1, "cmd": "users", "pad": "x" * 1_000_000})
        before = rss_mib(edge.proc.pid)
        os.kill(core.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        peak, pings = before, []
        for second in range(SECONDS):
            for sock in hostile:
                for _ in range(PER_SECOND):
                    sock.send(big)
            while time.monotonic() < stopped + second + 1:
                if time.monotonic() < stopped + E_TIMEOUT_MARGIN:  # the core still heard
                    sent = time.monotonic()
                    reply = honest.ask("ping", timeout=2)
                    assert reply["ok"], reply
                    pings.append(time.monotonic() - sent)
                peak = max(peak, rss_mib(edge.proc.pid))
                time.sleep(0.02)  # (pacing the probe, not synchronising)
        deadline = time.monotonic() + 2  # what is on its way lands
        while time.monotonic() < deadline:
            peak = max(peak, rss_mib(edge.proc.pid))
            time.sleep(0.05)
        sent_mib = HOSTILE_SOCKETS * PER_SECOND * SECONDS
        assert peak - before < 150, f"the edge grew {peak - before:.0f} MiB for {sent_mib}"
        assert statistics.median(pings) < 0.05, pings
        os.kill(core.proc.pid, signal.SIGCONT)
        # The honest client is served again, doing what the reference client does: a
        # request unanswered, it pings; told no_session, it resumes and asks again.
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "the honest client was never served again"
            try:
                if honest.ask("users", timeout=2)["ok"]:
                    break
            except AssertionError:  # not answered: see what its ping says
                pass
            try:
                if honest.ask("ping", timeout=2).get("code") == "no_session":
                    honest.ok("hello", version=P.PROTOCOL_VERSION)
                    honest.ok("login", name="honest")
            except AssertionError:  # the edge is silent: it waits for its core
                pass
    finally:
        os.kill(core.proc.pid, signal.SIGCONT)
        honest_ctx.destroy(linger=0)



@pytest.mark.parametrize("hellos", [True, False], ids=["saying-hello", "no-hellos"])
def test_an_edge_that_stops_reading_is_lost_and_cut_by_the_core(tmp_path, zctx, hellos):
    """A (faulty) edge that reads nothing: what the core hands it piles up in libzmq.
    Past EDGE_QUEUE_BYTES unacknowledged, with nothing acknowledged since the last look,
    the core loses it and cuts its connection (which frees that). The core looks at each
    of its hellos, and as it hands it frames (once a heartbeat past the bound), counting
    from the edge's first message: an edge that never says hello (faulty, or frozen after
    its last) is bounded too. (Before, without hellos: no look at all, the core's memory
    grew for as long as the edge was heard.)"""
    from pathlib import Path

    from schema import edge as E
    from schema import keys

    core = start_broker(str(tmp_path / "zchat.db"), "--edge-bind", "tcp://127.0.0.1:*",
                        "--rate", "0")  # the lines are big; the limits are not the point
    try:
        directory = Path(core.keys_dir)
        sock = zctx.socket(zmq.DEALER)
        for option, value in ((zmq.RCVHWM, 1), (zmq.RCVBUF, 4096), (zmq.LINGER, 0)):
            sock.setsockopt(option, value)
        keys.curve_client(sock, keys.load(directory / "broker.key").public,
                          keys.load(directory / "edge.key_secret"))
        sock.connect(edge_address(core))
        members = [b"c%03d" % i for i in range(20)]

        def requests(make) -> list[bytes]:
            frames = [E.REQUEST]
            for i, client in enumerate(members):
                frames += [client, b"", b"", pack(make(i))]
            return frames

        sock.send_multipart(requests(lambda i: {"id": 1, "cmd": "hello",
                                                "version": P.PROTOCOL_VERSION}))
        sock.send_multipart([E.REQUEST, members[0], b"", b"", pack(
            {"id": 2, "cmd": "create", "room": "r", "name": "n0"})])
        sock.send_multipart(requests(lambda i: {"id": 2, "cmd": "join", "room": "r",
                                                "name": f"n{i}"}))
        rss_before = rss_mib(core.proc.pid)
        text = "x" * 60_000
        deadline = time.monotonic() + 30
        rid = 10
        while time.monotonic() < deadline:
            if hellos:  # (without: never one, its requests alone keep it heard)
                sock.send_multipart([E.HELLO, pack({"pub": "", "reset": 0})])
            sock.send_multipart(requests(lambda i, rid=rid: {"id": rid, "cmd": "say", "room": "r",
                                                    "text": text}))
            rid += 1
            core.log.drain(0.05)
            if any("MiB unread): cut" in line for line in core.log.seen):
                break
        else:
            raise AssertionError("the core never cut the edge off")
        assert any("lost: its edge is not reading" in line for line in core.log.seen)
        assert rss_mib(core.proc.pid) - rss_before < 4 * (E.EDGE_QUEUE_BYTES >> 20)
        sock.close(0)
    finally:
        core.stop()
