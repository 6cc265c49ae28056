"""Two cores on one PostgreSQL database, and clients that know both: failover, for real.

Real processes on loopback and a real PostgreSQL (tests/pgcluster.py). Mid-traffic, the
active core is killed (kill -9), or frozen (SIGSTOP) past the lock timeout and thawed,
or PostgreSQL itself is restarted (fast shutdown). Each time the standby, or a core that
got the lock back, serves on, and the invariants of tests/test_delivery_e2e.py hold:
every acknowledged message is stored exactly once, and every client's view of each room
is a gap-free, duplicate-free run of the stored history.

At the end, a representative part of the single-machine suite runs once against
PostgreSQL: the tests are imported, and this module's ``broker`` fixtures give them a
broker on a PostgreSQL store.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from schema import edge as E
from schema import keys, messages, pack
from schema import protocol as P

from .harness import (
    Broker,
    Client,
    Edge,
    free_tcp_address,
    raw_socket,
    serving,
    start_broker,
    start_core,
    start_edge,
    stored_events,
    wait_serving,
)
from .test_delivery_e2e import shown

# A representative part of the single-machine suite, collected here too: the broker
# fixtures at the end of this module give its tests brokers on a PostgreSQL store.
from .test_persistence_e2e import (  # noqa: F401
    test_a_killed_room_stays_gone_after_a_restart,
    test_acknowledged_messages_survive_a_sigkill_of_the_broker,
    test_history_replayed_to_a_joiner_is_bounded_at_50_by_default,
    test_rooms_and_history_survive_a_clean_restart_and_seq_continues,
)
from .test_rooms_e2e import (  # noqa: F401
    test_banned_and_uninvited_raw_clients_get_nothing_of_the_room,
)

LOCK_TIMEOUT = 2.0  # --lock-timeout of these cores: how long a frozen one keeps the lock
CORE_ARGS = ("--rate", "0", "--lock-timeout", str(LOCK_TIMEOUT))  # loss is tested, not abuse


@pytest.fixture
def keys_dir(tmp_path, monkeypatch) -> str:
    """The key directory every core shares (clients pin one broker key), made before any
    core starts so that two never make it at once; clients find it through $ZCHAT_KEYS."""
    directory = tmp_path / "keys"
    keys.ensure(directory)
    monkeypatch.setenv("ZCHAT_KEYS", str(directory))
    return str(directory)


@pytest.fixture
def cores(pg_dsn, keys_dir) -> Iterator[list[Broker]]:
    """Two cores on one database: the first active, the second a standby."""
    started: list[Broker] = []
    try:
        started.append(start_core(pg_dsn, keys_dir, *CORE_ARGS))
        assert serving(started[0])
        started.append(start_core(pg_dsn, keys_dir, *CORE_ARGS))
        assert not serving(started[1]), "two cores serve on one database"
        yield started
    finally:
        for core in started:
            if core.proc.poll() is None:
                core.proc.send_signal(signal.SIGCONT)
            core.stop()


class Rooms:
    """Four clients, each knowing both servers (cores, or edges), chatting in two rooms; what each
    said, and the checks of what the store and every client ended up with."""

    def __init__(self, cores: list[Broker] | list[Edge]):
        servers = ",".join(core.router for core in cores)
        self.people: list[tuple[Client, str]] = []
        self.said: dict[Client, list[str]] = {}
        self.sent = 0
        for i in range(4):
            room = ("red", "blue")[i % 2]
            client = Client(servers)
            first = i < 2
            client.send(f"login p{i}", f"create {room}" if first else f"join {room}")
            client.event("reply", cmd="create" if first else "join", timeout=10)
            self.people.append((client, room))
            self.said[client] = []

    @property
    def clients(self) -> list[Client]:
        return [client for client, _ in self.people]

    def say(self, count: int) -> None:
        """``count`` more lines, round the clients; each line says who and where."""
        for n in range(self.sent, self.sent + count):
            client, room = self.people[n % len(self.people)]
            text = f"m{n} from {room}"
            client.send(text)
            self.said[client].append(text)
        self.sent += count

    def wait_resumed(self, timeout: float) -> None:
        for client in self.clients:
            client.event("resumed", timeout=timeout)

    def settle(self, timeout: float = 15.0) -> None:
        """Every line acknowledged (a script's lines are answered in order, so its last
        one is enough), then a last word per room that every member sees."""
        for client, lines in self.said.items():
            if lines:
                client.event("reply", cmd="say", text=lines[-1], timeout=timeout)
        for room in ("red", "blue"):
            members = [c for c, r in self.people if r == room]
            members[0].send(f"end of {room}")
            for client in members:
                client.event("msg", room=room, text=f"end of {room}", timeout=timeout)

    def check(self, dsn: str) -> None:
        stored = {room: stored_events(dsn, room) for room in ("red", "blue")}
        for client, room in self.people:
            texts = [e.get("text") for e in stored[room] if e["ev"] == "msg"]
            for text in self.said[client]:
                assert texts.count(text) == 1, f"{text!r} stored {texts.count(text)} times"
            by_seq = {e["seq"]: e for e in stored[room]}
            for seq, text in acknowledged(client):
                assert by_seq.get(seq, {}).get("text") == text, f"ack {seq} {text!r} lost"
            assert_view_is_the_stored_history(client, room, stored[room])

    def close(self) -> None:
        for client in self.clients:
            client.kill()


@pytest.fixture
def rooms(cores) -> Iterator[Rooms]:
    chat = Rooms(cores)
    yield chat
    chat.close()


def acknowledged(client: Client) -> list[tuple[int, str]]:
    """(seq, text) of every ``say`` the broker acknowledged to this client."""
    replies = [json.loads(line) for line in client.out.seen
               if '"cmd": "say"' in line and '"event": "reply"' in line]
    return [(reply["seq"], reply["text"]) for reply in replies]


def assert_view_is_the_stored_history(client: Client, room: str, stored: list[dict]
                                      ) -> None:
    """What the client showed of the room is one gap-free, duplicate-free run of what is
    stored, event for event, up to the last stored one."""
    view = shown(client, room)
    seqs = [e["seq"] for e in view]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or repeat: {seqs}"
    assert seqs[-1] == stored[-1]["seq"], f"{seqs[-1]} shown, {stored[-1]['seq']} stored"
    truth = {e["seq"]: e for e in stored}
    for shown_event in view:
        kept = truth[shown_event["seq"]]
        assert (kept["ev"], kept.get("text"), kept.get("from")) == (
            shown_event["event"], shown_event.get("text"), shown_event.get("from"))


# --- (a) kill -9 of the active core ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_kill_9_of_the_active_core_the_standby_serves_within_5_seconds(cores, rooms,
                                                                        pg_dsn):
    kill_the_active_core(*cores, rooms, pg_dsn)


def kill_the_active_core(active: Broker, standby: Broker, rooms: Rooms, dsn: str) -> None:
    """kill -9 of the active core mid-stream: the standby serves within 5 s, and the
    clients resume with nothing lost (whether they know the cores, or edges of them)."""
    rooms.say(40)
    rooms.clients[0].event("reply", cmd="say", timeout=10)  # killed mid-stream
    killed = time.monotonic()
    active.proc.kill()
    wait_serving(standby, timeout=5)
    assert time.monotonic() - killed < 5, "the standby took over too late"
    rooms.say(40)  # typed while the clients have not noticed yet
    rooms.wait_resumed(timeout=20)
    rooms.settle()
    rooms.check(dsn)


# --- (b) SIGSTOP past the lock timeout, then SIGCONT ------------------------------------------


class Probe:
    """A bare session on one core (a DEALER, and a SUB on its room's topic), to see
    whether anything at all comes from that core."""

    def __init__(self, ctx: zmq.Context, core: Broker):
        self.dealer = raw_socket(ctx, zmq.DEALER, core)
        self.ask(1, "hello", version=P.PROTOCOL_VERSION)
        topic = self.ask(2, "create", room="probe", name="prober")["topic"]
        self.sub = raw_socket(ctx, zmq.SUB, core, core.pub)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)

    def ask(self, rid: int, cmd: str, **fields) -> dict:
        self.dealer.send(pack({"id": rid, "cmd": cmd, **fields}))
        deadline = time.monotonic() + 5
        while (left := deadline - time.monotonic()) > 0:
            if self.dealer.poll(left * 1000):
                for message in messages(self.dealer.recv()):
                    if message.get("re") == rid:
                        assert message["ok"], message
                        return message
        raise AssertionError(f"no answer to {cmd}")

    def wait_for_tick(self, timeout: float = 5.0) -> None:
        """Right after a tick, the core's next publish for this room is a second away."""
        assert self.sub.poll(timeout * 1000), "no tick"
        self.sub.recv_multipart()

    def heard(self, quiet: float) -> list[bytes]:
        """Whatever arrives on either socket until both were quiet for ``quiet`` s."""
        got: list[bytes] = []
        poller = zmq.Poller()
        for sock in (self.dealer, self.sub):
            poller.register(sock, zmq.POLLIN)
        while ready := dict(poller.poll(quiet * 1000)):
            for sock in ready:
                got.append(b"".join(sock.recv_multipart()))
        return got


@pytest.mark.timeout(60)
def test_a_core_frozen_past_the_lock_timeout_sends_nothing_once_thawed(cores, rooms,
                                                                       pg_dsn, zctx):
    active, standby = cores
    probe = Probe(zctx, active)
    rooms.say(30)
    rooms.clients[0].event("reply", cmd="say", timeout=10)  # frozen mid-stream
    probe.wait_for_tick()
    active.proc.send_signal(signal.SIGSTOP)
    wait_serving(standby, timeout=LOCK_TIMEOUT + 5)  # the server ended the frozen session
    rooms.wait_resumed(timeout=15)
    rooms.say(30)
    rooms.settle()
    probe.heard(quiet=0.2)  # only what comes after the thaw counts
    active.proc.send_signal(signal.SIGCONT)
    probe.dealer.send(pack({"id": 99, "cmd": "ping"}))  # answered only if it still serves
    active.log.wait_for("FENCED", timeout=5)
    active.log.wait_for("Standby:", timeout=5)  # it waits for the lock again
    assert probe.heard(quiet=0.5) == [], "the thawed core sent something"
    assert active.proc.poll() is None
    rooms.say(10)
    rooms.settle()
    rooms.check(pg_dsn)


@pytest.mark.timeout(30)
def test_a_thawed_core_is_silenced_even_by_a_turn_that_stores_and_reads_nothing(cores,
                                                                                zctx):
    """With clients about, the thawed core's first turn reads or writes the store (their
    lines, their catch-ups) and is fenced there. Here only a bare probe is about, asking
    a ping: nothing but the round trip of a commit of nothing stands between the thawed
    core and a reply, and a tick of the probe's room."""
    active, standby = cores
    probe = Probe(zctx, active)
    probe.wait_for_tick()
    active.proc.send_signal(signal.SIGSTOP)
    wait_serving(standby, timeout=LOCK_TIMEOUT + 5)
    active.proc.send_signal(signal.SIGCONT)
    probe.dealer.send(pack({"id": 99, "cmd": "ping"}))
    active.log.wait_for("FENCED", timeout=5)
    assert probe.heard(quiet=0.5) == [], "the thawed core sent something"


# --- (c) PostgreSQL restarted mid-traffic ----------------------------------------------------


@pytest.mark.timeout(60)
def test_a_postgresql_restart_mid_traffic_loses_nothing_and_service_resumes(cores, rooms,
                                                                           pg_dsn,
                                                                           pg_cluster):
    rooms.say(40)
    rooms.clients[0].event("reply", cmd="say", timeout=10)
    pg_cluster.restart("fast")  # every session ends, the lock with it
    rooms.say(40)
    rooms.wait_resumed(timeout=20)  # on whichever core took the lock again
    rooms.settle()
    rooms.check(pg_dsn)
    assert sum(core.proc.poll() is None for core in cores) == 2  # none gave up


@pytest.mark.timeout(60)
def test_a_lone_core_takes_the_store_back_after_a_postgresql_restart(pg_dsn, keys_dir,
                                                                    pg_cluster):
    """With no standby, the fenced core is its own: it waits for the server, takes the
    lock again and serves a new incarnation on the same addresses."""
    core = start_core(pg_dsn, keys_dir, *CORE_ARGS)
    alice = Client(core.router)
    try:
        alice.send("login alice", "create den", "before")
        alice.event("reply", cmd="say", text="before", timeout=10)
        pg_cluster.restart("fast")
        core.log.wait_for("FENCED", timeout=5)
        wait_serving(core, timeout=15)
        alice.event("resumed", timeout=15)
        alice.send("after")
        alice.event("reply", cmd="say", text="after", timeout=10)
        texts = [e.get("text") for e in stored_events(pg_dsn, "den")]
        assert texts.count("before") == 1 and texts.count("after") == 1
    finally:
        alice.kill()
        core.stop()


def test_a_standby_stops_at_once_when_asked(cores):
    active, standby = cores
    started = time.monotonic()
    assert standby.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 2
    assert active.proc.poll() is None


# --- (d) the same, with edges in front of the cores -------------------------------------------


@pytest.fixture
def edged_cores(pg_dsn, keys_dir) -> Iterator[tuple[list[Broker], list[Edge]]]:
    """Two cores on one database, each with a fixed edge address, and two edges that
    know both: only the active core binds, so the edges' links reach it alone."""
    links = [free_tcp_address(), free_tcp_address()]
    cores: list[Broker] = []
    edges: list[Edge] = []
    try:
        for link in links:
            cores.append(start_core(pg_dsn, keys_dir, *CORE_ARGS, "--edge-bind", link))
        assert serving(cores[0]) and not serving(cores[1])
        edges += [start_edge(",".join(links), keys_dir) for _ in range(2)]
        yield cores, edges
    finally:
        for edge in edges:
            edge.stop()
        for core in cores:
            core.stop()


@pytest.mark.timeout(60)
def test_kill_9_of_the_active_core_behind_edges_the_clients_resume_through_them(
        edged_cores, pg_dsn):
    cores, edges = edged_cores
    rooms = Rooms(edges)  # each client knows both edges, and starts on the first
    try:
        kill_the_active_core(*cores, rooms, pg_dsn)
        for edge in edges:  # the edges stayed up and found the new core by themselves
            assert edge.proc.poll() is None
    finally:
        rooms.close()


@pytest.mark.timeout(60)
def test_a_postgresql_restart_behind_edges_loses_nothing_and_service_resumes(
        edged_cores, pg_dsn, pg_cluster):
    cores, edges = edged_cores
    rooms = Rooms(edges)
    try:
        rooms.say(40)
        rooms.clients[0].event("reply", cmd="say", timeout=10)
        pg_cluster.restart("fast")  # every core is fenced; one takes the lock again
        rooms.say(40)
        rooms.wait_resumed(timeout=20)
        rooms.settle()
        rooms.check(pg_dsn)
        assert all(p.proc.poll() is None for p in [*cores, *edges])  # none gave up
    finally:
        rooms.close()


def incarnation(core: Broker) -> str:
    """The incarnation a core served last, from its log."""
    return [line.rsplit(" ", 1)[-1] for line in core.log.seen if "incarnation" in line
            and line.startswith(tuple("0123456789")) and "Store:" in line][-1]


@pytest.mark.timeout(60)
def test_a_core_frozen_behind_edges_sends_them_nothing_once_thawed(edged_cores, pg_dsn,
                                                                   keys_dir, zctx):
    """The edges are connected to both cores. The frozen one's link stays open; once the
    standby serves, the edges must use it alone, their clients resume at once, and the
    thawed core (fenced) sends the edges nothing."""
    (active, standby), edges = edged_cores
    rooms = Rooms(edges)
    # A bare edge of the test's own on the active core's link alone, to see whether
    # anything at all comes from that core once it is thawed.
    probe = zctx.socket(zmq.DEALER)
    probe.setsockopt(zmq.LINGER, 0)
    directory = Path(keys_dir)
    keys.curve_client(probe, keys.load(directory / "broker.key").public,
                      keys.load(directory / "edge.key_secret"))
    probe.connect(active.args[active.args.index("--edge-bind") + 1])
    probe.send_multipart([E.HELLO, pack({"pub": "tcp://127.0.0.1:1"})])
    assert probe.poll(5000) and probe.recv_multipart()[0] == E.TOPICS
    assert probe.poll(5000) and probe.recv_multipart()[0] == E.ALIVE
    try:
        rooms.say(30)
        rooms.clients[0].event("reply", cmd="say", timeout=10)  # frozen mid-stream
        active.proc.send_signal(signal.SIGSTOP)
        wait_serving(standby, timeout=LOCK_TIMEOUT + 5)
        rooms.say(30)
        rooms.wait_resumed(timeout=20)
        rooms.settle()
        while probe.poll(0):  # (what came before the freeze)
            probe.recv_multipart()
        active.proc.send_signal(signal.SIGCONT)
        probe.send_multipart([E.HELLO, pack({"pub": "tcp://127.0.0.1:1"})])
        active.log.wait_for("FENCED", timeout=5)
        assert not probe.poll(500), "the thawed core answered an edge"
        active.log.wait_for("Standby:", timeout=5)
        rooms.say(10)  # and the edges still reach the serving core alone
        rooms.settle()
        rooms.check(pg_dsn)
        # Each edge names the core incarnation it hears from: once the standby's, never
        # the thawed core's again.
        old, new = incarnation(active), incarnation(standby)
        for edge in edges:
            edge.log.drain(0.2)  # (what it logged since it started)
            heard = [line.rsplit(" ", 1)[-1] for line in edge.log.seen
                     if "Core incarnation" in line]
            assert new in heard and old not in heard[heard.index(new):], heard
    finally:
        rooms.close()
        probe.close(0)


# --- the single-machine suite, once against PostgreSQL (the tests imported above) -----------


def _on_postgres(tmp_path, dsn: str, name: str, *extra: str) -> Broker:
    """A broker like conftest's, but on a PostgreSQL store (its keys still beside a
    SQLite path that is never used); ``db`` is the DSN, so restarts reuse the store."""
    broker = start_broker(str(tmp_path / name), "--store", dsn, *extra)
    return dataclasses.replace(broker, db=dsn)


@pytest.fixture
def broker(tmp_path, pg_dsn, request: pytest.FixtureRequest) -> Iterator[Broker]:
    marker = request.node.get_closest_marker("broker_args")
    b = _on_postgres(tmp_path, pg_dsn, "zchat.db", *(marker.args if marker else ()))
    yield b
    b.stop()


@pytest.fixture
def brokers(tmp_path, pg_cluster) -> Iterator[Callable[..., Broker]]:
    """More brokers; ``db`` (a DSN) is the store to start on, a new database if None."""
    started: list[Broker] = []

    def start(*extra: str, db: str | None = None) -> Broker:
        b = _on_postgres(tmp_path, db or pg_cluster.create_database(), "zchat.db", *extra)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()
