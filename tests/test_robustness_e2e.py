"""Broken and hostile peers against a real broker: garbage on every socket, raw TCP,
vanished and killed clients, too many clients, no broker at all, topic prefix tricks.

Whatever arrives, the broker answers what deserves an answer, changes nothing it should
not, keeps running and keeps serving ordinary clients.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from schema import messages
from schema import protocol as P

from .harness import (
    Broker,
    admin_json,
    free_tcp_address,
    host_port,
    operator_socket,
    raw_socket,
    silent_listener,
)

# The tool's own deadline is 2 s, and it says so ("... within 2 s", checked below). The
# wall clock around the whole process (its start, imports, exit) only catches a hang: on
# two busy cores it took 4.5 s once, so the bound leaves room for that.
UNREACHABLE_LIMIT = 8.0
GONE_LIMIT = 6.0  # a killed client is noticed by the peer timeout (~4-5 s)


def pack(message: Any) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def answer(sock: zmq.Socket, *frames: bytes, timeout: float = 3.0) -> dict[str, Any] | None:
    """Send one message on a DEALER; the next reply to come back (events skipped), or
    None if none comes within ``timeout``."""
    sock.send_multipart(list(frames))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not sock.poll(left * 1000):
            break
        for message in messages(sock.recv()):
            if "re" in message:
                return message
    return None


def ask_control(sock: zmq.Socket, frame: bytes, timeout: float = 3.0) -> dict | None:
    """One request on a REQ to the control socket; its reply, or None."""
    sock.send(frame)
    if not sock.poll(timeout * 1000):
        return None
    return msgpack.unpackb(sock.recv(), raw=False)


def hello(sock: zmq.Socket) -> dict[str, Any]:
    reply = answer(sock, pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION}))
    assert reply is not None and reply["ok"], reply
    return reply



def assert_serves_normal_clients(broker: Broker, clients: Any) -> None:
    """The broker process is alive and two ordinary clients can log in, create a room
    and chat in it."""
    assert broker.proc.poll() is None, "the broker died"
    alice, bob = clients(), clients()
    alice.send("login alice")
    alice.event("reply", cmd="login", name="alice")
    alice.enter("/create after-storm")
    bob.enter("/join after-storm bob")
    bob.send("still standing")
    assert alice.event("msg", room="after-storm", text="still standing")["from"] == "bob"


def zmtp10(*frames: bytes) -> bytes:
    """One message in the legacy ZMTP/1.0 framing: length, flags (1 = more), body."""
    out = b""
    for i, body in enumerate(frames):
        n = len(body) + 1
        out += bytes([n]) if n < 255 else b"\xff" + n.to_bytes(8, "big")
        out += (b"\x01" if i < len(frames) - 1 else b"\x00") + body
    return out


def raw_tcp(address: str, payload: bytes) -> bytes:
    """Connect with a plain TCP socket, send ``payload``, return what comes back before
    the broker goes quiet or hangs up."""
    got = b""
    with socket.create_connection(host_port(address), timeout=2) as s:
        try:
            s.sendall(payload)
            s.settimeout(0.3)
            while chunk := s.recv(4096):
                got += chunk
        except (TimeoutError, ConnectionError):  # quiet, or hung up on us: both fine
            pass
    return got


# --- the router: every bad request gets an error with a code -----------------------------

TEXT_MAX = 65535
ROUTER_GARBAGE: list[tuple[str, list[bytes], str, int | None]] = [
    # what, frames, code, the id the error must echo
    ("not msgpack", [b"\xc1\xc1"], "malformed", None),
    ("an HTTP request line", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], "malformed", None),
    ("an empty frame", [b""], "malformed", None),
    ("a msgpack integer", [pack(104)], "malformed", None),
    ("a msgpack string", [pack("hello")], "malformed", None),
    ("a msgpack list", [pack(["hello", 1])], "malformed", None),
    ("an ext type", [msgpack.packb(msgpack.ExtType(1, b"x"))], "malformed", None),
    ("a map with integer keys", [pack({1: 2})], "malformed", None),
    ("invalid utf-8", [b"\xa2\xff\xfe"], "malformed", None),
    ("a nesting bomb", [b"\x91" * 100_000 + b"\x00"], "malformed", None),
    ("a 4-billion-element array header", [b"\xdd\xff\xff\xff\xff"], "malformed", None),
    ("no id", [pack({"cmd": "users"})], "malformed", None),
    ("a string id", [pack({"id": "7", "cmd": "users"})], "malformed", None),
    ("a boolean id", [pack({"id": True, "cmd": "users"})], "malformed", None),
    ("a negative id", [pack({"id": -1, "cmd": "users"})], "malformed", None),
    ("no cmd", [pack({"id": 10})], "malformed", 10),
    ("a cmd that is no string", [pack({"id": 11, "cmd": 5})], "malformed", 11),
    ("two frames", [pack({"id": 12, "cmd": "users"}), b"more"], "malformed", None),
    ("three empty frames", [b"", b"", b""], "malformed", None),
    ("an unknown command", [pack({"id": 20, "cmd": "frobnicate"})], "unknown_command", 20),
    ("an operator command", [pack({"id": 21, "cmd": "kill", "room": "x"})],
     "unknown_command", 21),
    ("a missing field", [pack({"id": 30, "cmd": "login"})], "invalid_command", 30),
    ("a nil field", [pack({"id": 31, "cmd": "login", "name": None})], "invalid_command", 31),
    ("an int for a string", [pack({"id": 32, "cmd": "login", "name": 5})],
     "invalid_command", 32),
    ("bytes for a string", [pack({"id": 33, "cmd": "login", "name": b"bob"})],
     "invalid_command", 33),
    ("a string for a list", [pack({"id": 34, "cmd": "msg", "to": "bob", "text": "x"})],
     "invalid_command", 34),
    ("a bool for an int", [pack({"id": 35, "cmd": "history", "room": "r", "limit": True})],
     "invalid_command", 35),
    ("a page size out of range",
     [pack({"id": 36, "cmd": "history", "room": "r", "limit": 10**9})], "invalid_command", 36),
    ("a huge nickname", [pack({"id": 40, "cmd": "login", "name": "x" * 100_000})],
     "bad_username", 40),
    ("a nickname with a space", [pack({"id": 41, "cmd": "login", "name": "a b"})],
     "bad_username", 41),
    ("a recipient over 20 characters", [pack({"id": 42, "cmd": "msg", "to": ["x" * 21],
                                              "text": "hi"})], "bad_username", 42),
    ("no recipients", [pack({"id": 43, "cmd": "msg", "to": [], "text": "hi"})],
     "bad_username", 43),
    ("a text over the limit", [pack({"id": 50, "cmd": "say", "room": "r",
                                     "text": "x" * (TEXT_MAX + 1)})], "bad_message", 50),
    ("an empty text", [pack({"id": 51, "cmd": "say", "room": "r", "text": ""})],
     "bad_message", 51),
    ("a broadcast over the limit", [pack({"id": 52, "cmd": "broadcast",
                                          "text": "y" * (TEXT_MAX + 1)})], "bad_message", 52),
    ("a room name with a NUL", [pack({"id": 60, "cmd": "create", "room": "a\0b"})],
     "bad_room_name", 60),
    ("a huge room name", [pack({"id": 61, "cmd": "join", "room": "r" * 10_000})],
     "bad_room_name", 61),
    ("a bad nickname with a good room", [pack({"id": 62, "cmd": "create", "room": "ok",
                                               "name": "bad name"})], "bad_username", 62),
]


def test_router_answers_every_bad_request_with_an_error_code_and_changes_nothing(
        broker, ctx):
    dealer = raw_socket(ctx, zmq.DEALER, broker)
    hello(dealer)  # a session, so refusals come from validation, not from "hello first"
    got = []
    for what, frames, _, _ in ROUTER_GARBAGE:
        reply = answer(dealer, *frames)
        assert reply is not None, f"no answer to {what}"
        assert reply["ok"] is False and reply["error"], what
        got.append((what, reply["code"], reply["re"]))
    assert got == [(what, code, rid) for what, _, code, rid in ROUTER_GARBAGE]
    # Nothing of it stuck: no user, no room, the session still works.
    assert admin_json(broker.control, "ls")["rooms"] == []
    assert admin_json(broker.control, "users")["users"] == []
    reply = answer(dealer, pack({"id": 99, "cmd": "users"}))
    assert reply == {"re": 99, "ok": True, "users": [], "more": False}
    assert broker.proc.poll() is None


def test_control_socket_answers_every_bad_request_with_an_error_code(broker, ctx):
    req = operator_socket(ctx, zmq.REQ, broker)
    cases = [
        (b"\xc1", "malformed", None),
        (pack(["ls"]), "malformed", None),
        (pack({"cmd": "ls"}), "malformed", None),
        (pack({"id": 1, "cmd": "frobnicate"}), "unknown_command", 1),
        (pack({"id": 2, "cmd": "login", "name": "x"}), "unknown_command", 2),
        (pack({"id": 3, "cmd": "kill"}), "invalid_command", 3),
        (pack({"id": 4, "cmd": "kill", "room": 7}), "invalid_command", 4),
        (pack({"id": 5, "cmd": "kill", "room": "x" * 100}), "bad_room_name", 5),
        (pack({"id": 6, "cmd": "kick", "name": "a b"}), "bad_username", 6),
        (pack({"id": 7, "cmd": "kill", "room": "r", "reason": "x" * 500}), "bad_reason", 7),
        (pack({"id": 8, "cmd": "kill", "room": "nowhere"}), "no_such_room", 8),
    ]
    got = []
    for frame, _, _ in cases:
        reply = ask_control(req, frame)
        assert reply is not None and reply["ok"] is False, frame[:40]
        got.append((reply["code"], reply["re"]))
    assert got == [(code, rid) for _, code, rid in cases]
    assert ask_control(req, pack({"id": 9, "cmd": "ls"})) == {"re": 9, "ok": True,
                                                              "more": False, "total": 0,
                                                              "rooms": []}


# --- garbage everywhere, then business as usual ------------------------------------------


def test_garbage_on_every_socket_leaves_the_broker_alive_and_serving(broker, clients, ctx):
    # The router: a REQ (wrong envelope), oversized and multi-frame messages.
    req = raw_socket(ctx, zmq.REQ, broker)
    req.send(pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION}))
    big = raw_socket(ctx, zmq.DEALER, broker)
    big.send(b"x" * (2 << 20))  # over the frame limit: dropped, that peer cut off
    multi = raw_socket(ctx, zmq.DEALER, broker)
    assert answer(multi, b"a", b"b", b"c", b"d")["code"] == "malformed"
    # The publisher: an XSUB sending things that are no subscriptions, or too big ones,
    # and a SUB asking for everything.
    xsub = raw_socket(ctx, zmq.XSUB, broker, broker.pub)
    for frames in ([b"junk"], [b"\x02abc"], [b"\x01x", b"y"], [b""], [b"\x01"],
                   [b"\x00never subscribed"], [b"\x01" + b"t" * 10_000], [b"\xff" * 64]):
        xsub.send_multipart(frames)
    greedy = raw_socket(ctx, zmq.SUB, broker, broker.pub)
    greedy.setsockopt(zmq.SUBSCRIBE, b"")
    # The control socket: a DEALER without the REQ envelope, with it but garbage inside,
    # an oversized request, and a stranger's key.
    dealer = operator_socket(ctx, zmq.DEALER, broker)
    dealer.send(b"no envelope")
    dealer.send_multipart([b"", b"x", b"y"])
    dealer.send_multipart([b"", b"\xc1"])
    assert dealer.poll(3000), "no answer to garbage in a REQ envelope"
    assert msgpack.unpackb(dealer.recv_multipart()[-1])["code"] == "malformed"
    huge = operator_socket(ctx, zmq.REQ, broker)
    huge.send(b"x" * (1 << 20))
    stranger = raw_socket(ctx, zmq.REQ, broker, broker.control)
    stranger.send(pack({"id": 1, "cmd": "ls"}))
    # Raw TCP to every socket: an HTTP request, random bytes, an old-protocol greeting.
    for address in (broker.router, broker.pub, broker.control):
        for payload in (b"GET / HTTP/1.1\r\nHost: zchat\r\n\r\n", os.urandom(512),
                        b"\x01\x00" + zmtp10(b"\xc1")):
            raw_tcp(address, payload)
    # None of that got an answer it should not have...
    assert not req.poll(300), "a REQ on the router got a reply"
    assert not big.poll(0) and not huge.poll(0), "an oversized message was answered"
    assert not stranger.poll(0), "the control socket answered a non-operator key"
    # ...the broker is fine and serves as before...
    assert_serves_normal_clients(broker, clients)
    assert admin_json(broker.control, "stats")["rooms"] == 1
    # ...and the SUB that asked for everything got nothing of the room.
    assert not greedy.poll(500), "an empty-prefix subscription was granted"


@pytest.mark.parametrize("mode", [
    "encrypted", pytest.param("plaintext", marks=pytest.mark.broker_args("--insecure"))])
def test_raw_tcp_cannot_slip_a_request_past_the_handshake(broker, clients, ctx, mode):
    flags = ("--insecure",) if mode == "plaintext" else ()
    login = zmtp10(pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION})) + zmtp10(
        pack({"id": 2, "cmd": "login", "name": "intruder"}))
    # The same bytes do get a message into an unprotected ROUTER: the attack is real.
    plain = ctx.socket(zmq.ROUTER)
    plain.setsockopt(zmq.LINGER, 0)
    port = plain.bind_to_random_port("tcp://127.0.0.1")
    raw_tcp(f"tcp://127.0.0.1:{port}", b"\x01\x00" + login)
    assert plain.poll(2000) and plain.recv_multipart()[-1] == pack(
        {"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION})
    # The broker's sockets refuse it.
    alice = clients(*flags)
    alice.enter("/create lounge alice")
    raw_tcp(broker.router, b"\x01\x00" + login)
    raw_tcp(broker.control, b"\x01\x00" + zmtp10(
        b"", pack({"id": 1, "cmd": "kill", "room": "lounge"})))
    raw_tcp(broker.pub, b"\x01\x00" + zmtp10(b"\x01"))
    users = admin_json(broker.control, *flags, "users")["users"]
    assert [u["name"] for u in users] == ["alice"]
    assert [r["room"] for r in admin_json(broker.control, *flags, "ls")["rooms"]] == [
        "lounge"]
    assert admin_json(broker.control, *flags, "stats")["clients"] == 1


# --- limits and absences -----------------------------------------------------------------


@pytest.mark.broker_args("--max-clients", "2")
def test_max_clients_refuses_the_client_over_the_limit_with_a_clear_error(broker, clients):
    first, second = clients(), clients()
    for client, name in ((first, "alice"), (second, "bob")):
        client.send(f"login {name}")
        client.event("reply", cmd="login")
    third = clients()
    assert third.wait() != 0
    assert "full" in third.err.wait_for("full").lower()
    assert admin_json(broker.control, "stats")["clients"] == 2
    second.send("/quit")  # a place frees up when someone leaves
    assert second.wait() == 0
    fourth = clients()
    fourth.send("login dave")
    fourth.event("reply", cmd="login", name="dave")


def test_client_with_no_broker_listening_fails_clearly_within_two_seconds(broker, clients):
    started = time.monotonic()
    client = clients(server=free_tcp_address())
    code = client.wait(UNREACHABLE_LIMIT + 2)
    elapsed = time.monotonic() - started
    assert code != 0
    assert "within 2 s" in client.err.wait_for("No broker answered")
    assert elapsed < UNREACHABLE_LIMIT


def test_client_facing_a_silent_listener_fails_clearly_within_two_seconds(broker, clients):
    with silent_listener() as address:  # accepts TCP, never speaks: a frozen broker
        started = time.monotonic()
        client = clients(server=address, json_mode=False)
        code = client.wait(UNREACHABLE_LIMIT + 2)
        elapsed = time.monotonic() - started
    assert code != 0
    assert "within 2 s" in client.err.wait_for("No broker answered")
    assert elapsed < UNREACHABLE_LIMIT


# --- clients that die or vanish ----------------------------------------------------------


def test_a_client_killed_with_sigkill_is_removed_from_its_room_within_seconds(
        broker, clients):
    alice, bob = clients(), clients()
    alice.enter("/create lounge alice")
    bob.enter("/join lounge bob")
    bob.proc.send_signal(signal.SIGKILL)
    bob.proc.wait(5)
    killed = time.monotonic()
    alice.event("leave", room="lounge", name="bob", timeout=GONE_LIMIT + 2)
    assert time.monotonic() - killed < GONE_LIMIT
    assert admin_json(broker.control, "ls")["rooms"][0]["members"] == ["alice"]
    assert [u["name"] for u in admin_json(broker.control, "users")["users"]] == ["alice"]
    carol = clients()  # the broker carries on, and bob's name is free again
    carol.enter("/join lounge bob")
    carol.send("I am the new bob")
    alice.event("msg", text="I am the new bob")


def test_a_peer_that_vanishes_with_traffic_pending_does_not_crash_the_broker(
        broker, clients, ctx):
    alice = clients()
    alice.enter("/create lounge alice")
    ghost = raw_socket(ctx, zmq.DEALER, broker)
    hello(ghost)
    assert answer(ghost, pack({"id": 2, "cmd": "join", "room": "lounge", "name": "ghost"}))[
        "ok"]
    alice.event("join", name="ghost")
    for i in range(20):  # requests whose answers will find nobody
        ghost.send(pack({"id": 10 + i, "cmd": "who", "room": "lounge"}))
    ghost.close(0)
    alice.send("/msg ghost are you there?", "/whisper ghost hello?")
    alice.event("leave", room="lounge", name="ghost", timeout=GONE_LIMIT + 2)
    assert broker.proc.poll() is None
    alice.send("/msg ghost still there?")
    assert alice.event("error", cmd="msg", code="no_such_user")
    assert admin_json(broker.control, "stats")["clients"] == 1


# --- a room's traffic reaches its members only -------------------------------------------


def test_a_subscriber_to_room_a_never_receives_room_ab(broker, clients, ctx):
    """Topic subscriptions are prefix matches: room 'a' must not be a prefix of 'ab'."""
    spy = raw_socket(ctx, zmq.DEALER, broker)
    hello(spy)
    topic = answer(spy, pack({"id": 2, "cmd": "create", "room": "a", "name": "spy"}))["topic"]
    member = raw_socket(ctx, zmq.SUB, broker, broker.pub)
    member.setsockopt(zmq.SUBSCRIBE, topic)
    guesser = raw_socket(ctx, zmq.SUB, broker, broker.pub)
    for prefix in (b"", b"a", b"a\0", b"ab"):
        guesser.setsockopt(zmq.SUBSCRIBE, prefix)
    # The member's subscription is granted: room a's once-a-second tick arrives.
    assert member.poll(3000), "no tick for a granted room topic"
    assert member.recv_multipart()[0] == topic
    bob = clients()
    bob.enter("/create ab bob")
    bob.send("for ab only")
    bob.event("reply", cmd="say")
    assert answer(spy, pack({"id": 3, "cmd": "say", "room": "a", "text": "for a"}))["ok"]
    seen = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and member.poll(max(0, deadline - time.monotonic())
                                                      * 1000):
        frames = member.recv_multipart()
        # A publisher frame holds the room's events of one broker turn.
        seen += [(frames[0], e) for e in msgpack.unpackb(frames[1], raw=False)]
        if seen[-1][1].get("text") == "for a":
            break
    assert seen and seen[-1][1].get("text") == "for a", seen
    assert {t for t, _ in seen} == {topic} and {e["room"] for _, e in seen} == {"a"}
    assert not guesser.poll(300), "a guessed prefix was granted"


def test_a_member_who_left_stops_receiving_even_if_it_keeps_its_subscription(
        broker, clients, ctx):
    alice = clients()
    alice.enter("/create lounge alice")
    leaver = raw_socket(ctx, zmq.DEALER, broker)
    hello(leaver)
    topic = answer(leaver, pack({"id": 2, "cmd": "join", "room": "lounge", "name": "x"}))[
        "topic"]
    sub = raw_socket(ctx, zmq.SUB, broker, broker.pub)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    assert sub.poll(3000), "no tick for a granted room topic"
    assert answer(leaver, pack({"id": 3, "cmd": "leave", "room": "lounge"}))["ok"]
    alice.event("leave", name="x")
    while sub.poll(300):  # what was published before the leave may still come
        sub.recv_multipart()
    alice.send("after x left")
    alice.event("msg", text="after x left")
    assert not sub.poll(500), "a former member still receives the room"


def test_clients_in_rooms_a_and_ab_each_see_only_their_own_room(broker, clients):
    alice, bob, carol = clients(), clients(), clients()
    alice.enter("/create a alice")
    bob.enter("/create ab bob")
    carol.enter("/join a carol")
    bob.send("for ab only")
    bob.event("reply", cmd="say")
    carol.send("for a")
    alice.event("msg", room="a", text="for a")
    assert not [line for line in alice.out.seen if "for ab only" in line]
    assert not [line for line in bob.out.seen if '"for a"' in line]
