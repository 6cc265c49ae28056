from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import zmq

from .harness import Broker, Client, start_broker


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "broker_args(*args): extra command-line arguments for the broker fixture")


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    """A ZeroMQ context for bare sockets a test drives itself; destroyed after it."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def broker(tmp_path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A real broker process on free loopback ports with its own SQLite file.
    ``@pytest.mark.broker_args("--rate", "0")`` passes extra arguments to it."""
    marker = request.node.get_closest_marker("broker_args")
    b = start_broker(str(tmp_path / "zchat.db"), *(marker.args if marker else ()))
    yield b
    b.stop()


@pytest.fixture
def clients(broker: Broker) -> Iterator[Callable[..., Client]]:
    """Start clients against the broker; all are killed at the end of the test."""
    started: list[Client] = []

    def start(*extra: str, json_mode: bool = True, server: str | None = None) -> Client:
        c = Client(server or broker.router, *extra, json_mode=json_mode)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


@pytest.fixture
def brokers(tmp_path) -> Iterator[Callable[..., Broker]]:
    """Start more brokers (e.g. a restart on the same ``db``); all stopped at the end."""
    started: list[Broker] = []

    def start(*extra: str, db: str | None = None) -> Broker:
        b = start_broker(db or str(tmp_path / f"zchat-{len(started)}.db"), *extra)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()
