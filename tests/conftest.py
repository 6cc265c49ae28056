from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest
import zmq

from .harness import Broker, Client, EdgedBroker, start_broker, start_edged
from .pgcluster import Cluster, MissingPostgres


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store", choices=("sqlite", "postgresql"), default="sqlite",
        help="the store of the brokers the end-to-end tests' fixtures start (postgresql: "
             "each test gets a new database of one throwaway cluster; tests marked "
             "sqlite_only are skipped)")


def on_postgres(config: pytest.Config) -> bool:
    return config.getoption("--store") == "postgresql"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if on_postgres(config):
        skip = pytest.mark.skip(reason="what only SQLite has, or a single broker on it "
                                       "(--store postgresql)")
        for item in items:
            if item.get_closest_marker("sqlite_only"):
                item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "broker_args(*args): extra command-line arguments for the broker fixture")
    config.addinivalue_line("markers", "sqlite_only: a test of what only SQLite has")
    config.addinivalue_line("markers", "postgres_only: a test of what only PostgreSQL has")
    config.addinivalue_line(
        "markers", "via_edge: run the test against the broker and again against an edge "
                   "of it (the broker fixture is then the edge, for clients)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("via_edge") and \
            "broker" in metafunc.fixturenames:
        metafunc.parametrize("broker", ["direct", "edge"], indirect=True)


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
    extra = marker.args if marker else ()
    db = str(tmp_path / "zchat.db")
    if on_postgres(request.config):
        db = request.getfixturevalue("pg_dsn")
    if getattr(request, "param", "direct") == "edge":
        b: Broker | EdgedBroker = start_edged(db, *extra)
    else:
        b = start_broker(db, *extra)
    yield b
    b.stop()


@pytest.fixture
def core(tmp_path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A broker that takes edges (``--edge-bind``): the core of the edge tests."""
    db = request.getfixturevalue("pg_dsn") if on_postgres(request.config) else \
        str(tmp_path / "zchat.db")
    b = start_broker(db, "--edge-bind", "tcp://127.0.0.1:*")
    yield b
    b.proc.send_signal(signal.SIGCONT)  # (if a test stopped it)
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
def brokers(tmp_path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Broker]]:
    """Start more brokers (e.g. a restart on the same ``db``); all stopped at the end."""
    started: list[Broker] = []

    def start(*extra: str, db: str | None = None) -> Broker:
        if db is None and on_postgres(request.config):
            db = request.getfixturevalue("pg_cluster").create_database()
        b = start_broker(db or str(tmp_path / f"zchat-{len(started)}.db"), *extra)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


# --- PostgreSQL: one throwaway cluster per test session, a database per test -----------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A real PostgreSQL server of our own (tests/pgcluster.py), started on first use.
    Without PostgreSQL's server installed, the tests that need it fail, saying so."""
    try:
        cluster = Cluster()
    except MissingPostgres as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: Cluster) -> str:
    """The DSN of a new, empty database of the session's cluster."""
    return pg_cluster.create_database()
