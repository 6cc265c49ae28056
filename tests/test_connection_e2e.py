"""The client library on its own, against a real broker: what UIs read from it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from client import Connection
from schema import keys


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
    assert connection.rooms["hall"].members == ["bob", "alice"]
