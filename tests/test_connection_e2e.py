"""The client library on its own, against a real broker: what UIs read from it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import zmq

from client import Connection
from schema import keys, pack, unpack


@pytest.fixture
def connection(broker):
    conn = Connection(broker.router,
                      server_key=keys.load(Path(broker.keys_dir) / "broker.key").public)
    conn.hello()
    yield conn
    conn.close()


def pump_until(conn: Connection, done, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached in time"
        conn.dealer.poll(max(1, conn.next_wakeup() * 1000))
        conn.pump()


def test_lag_is_the_round_trip_of_the_idle_pings(connection):
    assert connection.lag() is None  # nothing measured before the first ping
    pump_until(connection, lambda: connection.lag() is not None and
               connection._ping_sent is None)
    assert 0 < connection.lag() < 0.5


def test_lag_grows_while_the_broker_does_not_answer(broker, connection):
    pump_until(connection, lambda: connection._round_trip is not None)
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        pump_until(connection, lambda: (connection.lag() or 0) > 1.5)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    pump_until(connection, lambda: connection.lag() < 0.5)


def test_members_follow_joins_and_leaves_in_order(broker, clients, connection):
    connection.request("create", room="hall", name="alice")
    pump_until(connection, lambda: "hall" in connection.rooms)
    assert connection.rooms["hall"].members == ["alice"]
    bob = clients()
    bob.send("join hall bob")
    pump_until(connection, lambda: connection.rooms["hall"].members == ["alice", "bob"])
    bob.send("/leave")
    pump_until(connection, lambda: connection.rooms["hall"].members == ["alice"])


def test_history_replayed_on_join_does_not_change_the_members(broker, clients, connection):
    bob = clients()
    bob.send("login bob", "create hall")
    bob.event("reply", cmd="create")
    carol = clients()
    carol.send("join hall carol", "/leave")
    carol.event("reply", cmd="leave")
    connection.request("join", room="hall", name="alice")
    pump_until(connection, lambda: "hall" in connection.rooms)
    # carol's join and leave are in the replayed history; she is not a member.
    assert sorted(connection.rooms["hall"].members) == ["alice", "bob"]


# --- resuming, against a scripted broker that loses things on purpose -----------------------


class ScriptedBroker:
    """A bare ROUTER standing in for the broker, answering as each test dictates."""

    def __init__(self, ctx: zmq.Context):
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.peer = b""
        self.events = []

    def take(self, conn: Connection, cmd: str, timeout: float = 5.0) -> dict:
        """Pump the client until a request ``cmd`` reaches us; pings get ``no_session``
        meanwhile when ``self.amnesia`` is set, an empty ok otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.events += conn.pump()
            if not self.sock.poll(20):
                continue
            self.peer, frame = self.sock.recv_multipart()
            message = unpack(frame)
            if message["cmd"] == cmd:
                return message
            if message["cmd"] == "ping":
                self.answer(message, **({"code": "no_session"} if self.amnesia else {}))
        raise AssertionError(f"no {cmd} request within {timeout} s")

    amnesia = False
    events: list  # what the client emitted while we waited on it


    def answer(self, message: dict, code: str | None = None, **fields) -> None:
        body = ({"re": message["id"], "ok": False, "code": code, "error": code} if code
                else {"re": message["id"], "ok": True, **fields})
        self.sock.send_multipart([self.peer, pack([body])])  # a frame holds an array

    def welcome(self, message: dict) -> None:
        if message["cmd"] == "hello":
            self.answer(message, inc="i1", pub="tcp://127.0.0.1:9", heartbeat=0.1,
                        timeout=0.5)
        elif message["cmd"] == "login":
            self.answer(message, name=message["name"])
        else:  # join
            name = message.get("name", "alice")
            self.answer(message, room=message["room"], name=name, topic=b"t", seq=1,
                        inc="i1", members=[name], history=[])


@pytest.fixture
def scripted():
    ctx = zmq.Context()
    broker = ScriptedBroker(ctx)
    conn = Connection(broker.address, ctx=ctx)
    conn.dealer.connect(broker.address)
    # hello() itself waits for the answer; here the script answers, so do its two halves.
    conn._send("hello", conn._hello_fields())
    broker.welcome(broker.take(conn, "hello"))
    conn._session_opened({"inc": "i1", "pub": "tcp://127.0.0.1:9", "heartbeat": 0.1,
                          "timeout": 0.5})
    conn.request("login", name="alice")
    broker.welcome(broker.take(conn, "login"))
    conn.request("join", room="r")
    broker.welcome(broker.take(conn, "join"))
    pump_until(conn, lambda: list(conn.rooms) == ["r"])
    assert conn.name == "alice"
    yield broker, conn
    conn.close()
    broker.sock.close()
    ctx.term()


def test_a_resume_hello_that_gets_no_answer_is_asked_again(scripted):
    broker, conn = scripted
    broker.amnesia = True  # the broker restarted: it does not know us
    broker.take(conn, "hello")  # ...and this hello is lost
    second = broker.take(conn, "hello", timeout=3)
    broker.amnesia = False
    broker.welcome(second)
    broker.welcome(broker.take(conn, "login"))
    broker.welcome(broker.take(conn, "join"))
    deadline = time.monotonic() + 3
    while conn.resuming and time.monotonic() < deadline:
        conn.pump()
    assert not conn.resuming and conn.name == "alice" and list(conn.rooms) == ["r"]


def test_a_second_restart_while_resuming_keeps_the_nickname_and_rooms(scripted):
    broker, conn = scripted
    broker.amnesia = True
    broker.welcome(broker.take(conn, "hello"))
    # It restarts again before our login and join are read: both get no_session.
    broker.answer(broker.take(conn, "login"), code="no_session")
    broker.answer(broker.take(conn, "join"), code="no_session")
    broker.welcome(broker.take(conn, "hello", timeout=3))
    broker.amnesia = False
    login = broker.take(conn, "login")
    assert login["name"] == "alice"
    broker.welcome(login)
    broker.welcome(broker.take(conn, "join"))
    pump_until(conn, lambda: broker.events.extend(conn.pump()) or not any(
        p.purpose == "resume" for p in conn._pending.values()))
    assert conn.name == "alice" and list(conn.rooms) == ["r"]
    kinds = [e.kind for e in broker.events]
    assert "resumed" in kinds and "ejected" not in kinds and "error" not in kinds


def test_a_crowded_rooms_members_are_learnt_page_by_page(broker, connection):
    from .test_hardening_e2e import Bare
    ctx = zmq.Context()
    try:
        crowd = [Bare(ctx, broker) for _ in range(130)]  # more than a welcome names
        for k, peer in enumerate(crowd):
            peer.ok("login", name=f"m{k:03}")
            if k == 0:
                peer.ok("create", room="hall")
            else:
                peer.send("join", room="hall")
        for peer in crowd[1:]:
            assert peer.reply(peer.rid)["ok"]
        connection.request("join", room="hall", name="late")
        want = sorted([f"m{k:03}" for k in range(130)] + ["late"])
        pump_until(connection, lambda: sorted(connection.rooms["hall"].members) == want
                   if "hall" in connection.rooms else False)
    finally:
        ctx.destroy(linger=0)
