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
