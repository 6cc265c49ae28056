"""A client given several addresses (a core and its standbys): it uses the first that
answers, and moves to the next once the one in use is lost, resuming there.

The brokers here are bare ROUTERs answering as each test dictates (the scripted broker of
tests/test_connection_e2e.py); tests/test_failover_e2e.py does the same with real cores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq

from client import Connection
from client import connection as C
from client.connection import Unreachable, parse_servers
from schema import pack, unpack

from .harness import free_tcp_address
from .test_connection_e2e import ScriptedBroker, pump_until


def test_several_addresses_are_given_comma_separated():
    assert parse_servers("127.0.0.1:5555, tcp://10.0.0.2:6555") == [
        "tcp://127.0.0.1:5555", "tcp://10.0.0.2:6555"]
    assert parse_servers("h:1") == ["tcp://h:1"]
    for bad in ("h:1,", "h:1,,h:2", "h:1,nowhere"):
        with pytest.raises(ValueError, match="not a broker address"):
            parse_servers(bad)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@contextmanager
def answering_hello(ctx: zmq.Context) -> Iterator[str]:
    """A broker's address whose ROUTER, in a thread of its own, answers one hello."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    address = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"

    def serve() -> None:
        if sock.poll(5000):
            peer, frame = sock.recv_multipart()
            sock.send_multipart([peer, pack([{"re": unpack(frame)["id"], "ok": True,
                                              "inc": "i1", "pub": "tcp://127.0.0.1:9"}])])

    helper = threading.Thread(target=serve)
    helper.start()
    try:
        yield address
    finally:
        helper.join(6)
        sock.close()


def test_hello_goes_to_the_first_address_that_answers(ctx):
    standby = free_tcp_address()  # nobody there: a standby binds nothing
    with answering_hello(ctx) as active:
        conn = Connection([standby, active], ctx=ctx)
        try:
            conn.hello(timeout=0.5)  # the first address has its half second
            assert conn.server == active and conn.incarnation == "i1"
        finally:
            conn.close()


def test_no_answer_at_any_address_names_them_all(ctx):
    first, second = free_tcp_address(), free_tcp_address()
    conn = Connection([first, second], ctx=ctx)
    try:
        with pytest.raises(Unreachable, match=f"{first}, {second} within 0.3 s each"):
            conn.hello(timeout=0.3)
    finally:
        conn.close()


@pytest.fixture
def in_rooms(ctx, monkeypatch):
    """A client in room r as alice, on the first of three addresses: the first and
    the third scripted brokers, and nobody in between."""
    monkeypatch.setattr(C, "MOVE_TIMEOUT", 0.5)
    first, third = ScriptedBroker(ctx), ScriptedBroker(ctx)
    nobody = free_tcp_address()
    conn = Connection([first.address, nobody, third.address], ctx=ctx)
    conn.dealer.connect(first.address)  # hello()'s two halves, the script answering
    conn._send("hello", conn._hello_fields())
    first.welcome(first.take(conn, "hello"))
    conn._session_opened({"inc": "i1", "pub": "tcp://127.0.0.1:9", "heartbeat": 0.1,
                          "timeout": 0.5})
    conn.request("login", name="alice")
    first.welcome(first.take(conn, "login"))
    conn.request("join", room="r")
    first.welcome(first.take(conn, "join"))
    pump_until(conn, lambda: list(conn.rooms) == ["r"])
    yield first, third, conn
    conn.close()
    first.sock.close()
    third.sock.close()


def test_a_lost_broker_is_left_for_the_next_address_that_answers(in_rooms):
    first, third, conn = in_rooms
    events = []
    # The first falls silent; the second address has nobody; the third answers.
    deadline = time.monotonic() + 5
    while conn.server != third.address:
        assert time.monotonic() < deadline, "never moved on to the third address"
        conn.dealer.poll(50)
        events += conn.pump()
    hello = third.take(conn, "hello")
    assert hello["client"] == conn.client_id  # the same client, resuming
    third.welcome(hello)
    login = third.take(conn, "login")
    assert login["name"] == "alice"
    third.welcome(login)
    third.welcome(third.take(conn, "join"))
    pump_until(conn, lambda: third.events.extend(conn.pump()) or not conn.resuming
               and "resumed" in [e.kind for e in third.events])
    events += third.events
    kinds = [(e.kind, e.data.get("server")) for e in events
             if e.kind in ("lost", "reconnecting", "restored", "resumed")]
    assert kinds[0] == ("lost", first.address)
    assert ("reconnecting", third.address) in kinds
    assert kinds[-1] == ("resumed", third.address)
    assert conn.name == "alice" and list(conn.rooms) == ["r"]


def test_unanswered_requests_go_again_to_the_next_address_as_retries(in_rooms):
    first, third, conn = in_rooms
    first.take(conn, "ping")  # the first is still there...
    rid = conn.request("say", room="r", text="hello?")
    said = first.take(conn, "say")  # ...takes the say, and falls silent
    assert said["id"] == rid
    deadline = time.monotonic() + 5
    while conn.server != third.address:
        assert time.monotonic() < deadline
        conn.dealer.poll(50)
        conn.pump()
    for cmd in ("hello", "login", "join"):
        third.welcome(third.take(conn, cmd))
    again = third.take(conn, "say")
    assert (again["id"], again["text"], again.get("retry")) == (rid, "hello?", True)
