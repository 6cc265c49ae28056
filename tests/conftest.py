from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .harness import Broker, Client, start_broker


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    """A real broker process on free loopback ports with its own SQLite file."""
    b = start_broker(str(tmp_path / "zchat.db"))
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
