"""Security on real sockets: every test plays the attacker against a real broker process.

The broker runs as it does by default: CURVE on every socket (start_broker). The attackers
are what anyone can write: bare pyzmq sockets with a fresh key (``raw_socket``), plaintext
sockets, raw TCP, and a hand-written client (``Peer``) that does exactly what the test
says and ignores every notice the broker sends it.

Nothing sleeps to synchronise. To show that something does *not* arrive, a test first waits
for a later event that would have come after it (a member hearing a later message, the
broker closing a connection, a monitor reporting a failed handshake), then looks.
"""

from __future__ import annotations

import itertools
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
import zmq.utils.monitor

from broker.chat import Chat
from broker.cli import parse_args as broker_args
from broker.publisher import Publisher
from broker.server import Broker as BrokerLoop
from broker.store import SqliteStore
from schema import keys, messages, pack, unpack
from schema import protocol as P

from .harness import (
    DEFAULT_WAIT,
    Broker,
    Client,
    admin,
    admin_json,
    host_port,
    raw_socket,
    rss_mib,
)

FAILED = keys.HANDSHAKE_FAILED
SUCCEEDED = zmq.EVENT_HANDSHAKE_SUCCEEDED
RSS_GROWTH_LIMIT_MIB = 100  # generous: the point is "bounded", not "small"


# --- tools of the trade ------------------------------------------------------------------


def event_name(event: int) -> str:
    try:
        return zmq.Event(event).name
    except ValueError:
        return str(event)


watched = keys.watch  # every monitor event, drained and disabled after the block


def next_event(monitor: zmq.Socket, wanted: int, timeout: float = DEFAULT_WAIT) -> int:
    """Read monitor events until one in ``wanted`` (a mask) arrives, and return it."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        if not monitor.poll(left * 1000):
            break
        event = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
        seen.append(event_name(event))
        if event & wanted:
            return event
    raise AssertionError(f"no {event_name(wanted)} within {timeout} s; monitor saw {seen}")


def handshake_outcome(monitor: zmq.Socket, timeout: float = DEFAULT_WAIT) -> int:
    """The first handshake verdict the monitor reports: SUCCEEDED or a HANDSHAKE_FAILED_*."""
    return next_event(monitor, SUCCEEDED | FAILED, timeout)


def curve_socket(ctx: zmq.Context, kind: int, server_key: bytes | None,
                 pair: keys.KeyPair | None = None) -> zmq.Socket:
    """An unconnected socket: CURVE client of ``server_key`` (fresh key unless ``pair``),
    or plaintext when ``server_key`` is None."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        keys.curve_client(sock, server_key, pair)
    return sock


def broker_key(broker: Any) -> bytes:
    return keys.load(Path(broker.keys_dir) / "broker.key").public


def drain(sock: zmq.Socket, quiet: float = 0.3) -> list[list[bytes]]:
    """Messages that arrive until ``sock`` has been quiet for ``quiet`` s. Only used after
    a positive wait, to assert that something did not come."""
    out = []
    while sock.poll(quiet * 1000):
        out.append(sock.recv_multipart())
    return out


def stats(broker: Broker) -> dict[str, Any]:
    reply = admin_json(broker.control, "stats")
    assert reply["ok"], reply
    return reply


class Peer:
    """A hand-written client on bare sockets: a CURVE DEALER for requests and a SUB for
    room events. It does only what the test says: notices the broker sends (rekey,
    ejected, kicked) are recorded and never acted on, as a hostile client would."""

    def __init__(self, ctx: zmq.Context, broker: Any, name: str | None = None):
        self.dealer = raw_socket(ctx, zmq.DEALER, broker)
        self.sub = raw_socket(ctx, zmq.SUB, broker, broker.pub)
        self.notices: list[dict[str, Any]] = []  # direct events, in arrival order
        self.heard: list[tuple[bytes, dict[str, Any]]] = []  # all the SUB ever received
        self._unread: deque[tuple[bytes, dict[str, Any]]] = deque()
        self._rid = 0
        self.ok("hello", version=P.PROTOCOL_VERSION)
        if name is not None:
            self.ok("login", name=name)

    def ask(self, cmd: str, timeout: float = DEFAULT_WAIT, **fields: Any) -> dict[str, Any]:
        self._rid += 1
        self.dealer.send(pack({"id": self._rid, "cmd": cmd, **fields}))
        reply = None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.dealer.poll(left * 1000):
                break
            for message in messages(self.dealer.recv()):
                if message.get("re") == self._rid:
                    reply = message  # what came with it waits for the next ask
                elif "ev" in message:
                    self.notices.append(message)
            if reply is not None:
                return reply
        raise AssertionError(f"no reply to {cmd} within {timeout} s")

    def ok(self, cmd: str, **fields: Any) -> dict[str, Any]:
        reply = self.ask(cmd, **fields)
        assert reply["ok"], reply
        return reply

    def refused(self, cmd: str, **fields: Any) -> str:
        """The error code of a request that must be refused."""
        reply = self.ask(cmd, **fields)
        assert not reply["ok"], f"{cmd} {fields} was accepted: {reply}"
        return reply["code"]

    def notice(self, ev: str, timeout: float = DEFAULT_WAIT) -> dict[str, Any]:
        """Wait for a direct event of this kind on the DEALER."""
        deadline = time.monotonic() + timeout
        while True:
            for n in self.notices:
                if n["ev"] == ev:
                    self.notices.remove(n)
                    return n
            left = deadline - time.monotonic()
            if left <= 0 or not self.dealer.poll(left * 1000):
                raise AssertionError(f"no {ev} notice within {timeout} s")
            self.notices += [m for m in messages(self.dealer.recv()) if "ev" in m]

    def subscribe(self, topic: bytes) -> None:
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)

    def _take(self, timeout: float) -> dict[str, Any] | None:
        """The next room event from the SUB (a frame may carry several), or None."""
        if not self._unread:
            if not self.sub.poll(timeout * 1000):
                return None
            topic, body = self.sub.recv_multipart()
            self._unread.extend((topic, e) for e in messages(body))
        topic, event = self._unread.popleft()
        self.heard.append((topic, event))
        return event

    def hear(self, match: Callable[[dict[str, Any]], bool], timeout: float = DEFAULT_WAIT
             ) -> dict[str, Any]:
        """Read room events until one matches; AssertionError past the deadline."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            event = self._take(left)
            if event is None:
                break
            if match(event):
                return event
        raise AssertionError(f"nothing matching heard within {timeout} s")

    def quiet(self, quiet: float = 0.3) -> list[dict[str, Any]]:
        """Room events arriving until the SUB is quiet (after a positive wait only)."""
        out = []
        while (event := self._take(quiet)) is not None:
            out.append(event)
        return out


def text_is(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event.get("ev") == "msg" and event.get("text") == text


def say_until_heard(speaker: Peer, room: str, *listeners: Peer, label: str = "probe",
                    timeout: float = DEFAULT_WAIT) -> list[str]:
    """Say numbered lines in ``room`` until every listener's SUB has heard one: proves
    their subscriptions are granted and the publisher reaches them. The lines said."""
    said: list[str] = []
    waiting = list(listeners)
    deadline = time.monotonic() + timeout
    while waiting:
        assert time.monotonic() < deadline, f"{label}: the publisher never reached them"
        text = f"{label} {len(said)}"
        speaker.ok("say", room=room, text=text)
        said.append(text)
        for listener in list(waiting):
            try:
                listener.hear(lambda e: e.get("ev") == "msg" and e.get("text") in said, 0.25)
            except AssertionError:
                continue
            waiting.remove(listener)
    return said


def serve_check(clients: Callable[..., Client], tag: str) -> None:
    """A normal client is served: logs in, creates a room, chats, quits cleanly."""
    c = clients()
    c.send(f"login user_{tag}", f"create room_{tag}", f"hello from {tag}")
    c.event("msg", room=f"room_{tag}", text=f"hello from {tag}", timeout=10)
    c.send("/quit")
    assert c.wait(10) == 0


# === Encryption ==========================================================================


@pytest.mark.via_edge
def test_plaintext_sockets_get_nothing_from_any_broker_socket(broker, zctx):
    # A member keeps a room busy, so there is something to read.
    alice = Peer(zctx, broker, "alice")
    alice.subscribe(alice.ok("create", room="vault")["topic"])
    say_until_heard(alice, "vault", alice)
    for kind, address in ((zmq.DEALER, broker.router), (zmq.SUB, broker.pub),
                          (zmq.REQ, broker.control)):
        plain = curve_socket(zctx, kind, None)
        with watched(plain) as monitor:
            plain.connect(address)
            if kind == zmq.SUB:
                plain.setsockopt(zmq.SUBSCRIBE, b"")
            elif kind == zmq.DEALER:
                plain.send(pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION}))
            else:
                plain.send(pack({"id": 1, "cmd": "users"}))
            outcome = handshake_outcome(monitor)
            assert outcome & FAILED, f"plaintext {kind} to {address}: {event_name(outcome)}"
            alice.ok("say", room="vault", text=f"secret for {kind}")
            alice.hear(text_is(f"secret for {kind}"))
            assert drain(plain) == [], f"plaintext {kind} got something"
        plain.close(0)
    # Not one of them became a session.
    assert stats(broker)["clients"] == 1


def test_a_client_with_the_wrong_broker_key_fails_clearly_and_fast(broker, clients):
    wrong = zmq.curve_keypair()[0].decode()
    started = time.monotonic()
    c = clients("--server-key", wrong)
    code = c.wait(5)
    elapsed = time.monotonic() - started
    assert code != 0
    assert elapsed < 3, f"took {elapsed:.1f} s"
    errors = " ".join(c.err.drain(0.2))
    assert errors.startswith("Error:") and "key" in errors, errors
    assert stats(broker)["clients"] == 0


def test_control_socket_refuses_a_chat_users_key_and_admits_the_operator(broker, clients,
                                                                          zctx):
    victim = clients()
    victim.send("login victim")
    victim.event("reply", cmd="login")
    made = admin(broker.control, "--keys", broker.keys_dir, "keygen", "--client", "x")
    assert made.returncode == 0, made.stderr
    user_key = str(Path(broker.keys_dir) / "clients" / "x.key_secret")
    for command in (["ls"], ["kick", "victim"]):
        started = time.monotonic()
        done = admin(broker.control, "--identity", user_key, *command)
        assert done.returncode != 0
        assert time.monotonic() - started < 3
        assert "Error:" in done.stderr and "refused our key" in done.stderr, done.stderr
    broker.log.wait_for("Not an operator key")
    # A stranger's fresh key on a bare REQ fares no better: refused in the handshake.
    stranger = curve_socket(zctx, zmq.REQ, broker_key(broker))
    with watched(stranger) as monitor:
        stranger.connect(broker.control)
        stranger.send(pack({"id": 1, "cmd": "kick", "name": "victim"}))
        assert handshake_outcome(monitor) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    assert not stranger.poll(0)
    # The operator key is admitted, and nobody was kicked.
    done = admin(broker.control, "users")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["victim  in (lobby)"]


def test_the_control_socket_binds_to_loopback_by_default():
    assert broker_args([]).control_bind.startswith("tcp://127.0.0.1:")


# === Failing closed ======================================================================


def _handshake_without_authenticator(server_kind: int, client_kind: int, enforce: bool
                                     ) -> int:
    """A CURVE server with a ZAP domain in a context where no ZAP handler was ever bound;
    the verdict a CURVE client with a valid server key gets."""
    ctx = zmq.Context()
    try:
        public, secret = zmq.curve_keypair()
        server = ctx.socket(server_kind)
        server.setsockopt(zmq.LINGER, 0)
        server.setsockopt(zmq.CURVE_SERVER, 1)
        server.setsockopt(zmq.CURVE_SECRETKEY, secret)
        server.setsockopt(zmq.ZAP_DOMAIN, b"chat")
        if enforce:
            server.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client = curve_socket(ctx, client_kind, public)
        with watched(client) as monitor:
            client.connect(f"tcp://127.0.0.1:{port}")
            outcome = handshake_outcome(monitor)
        client.close(0)
        server.close(0)
        return outcome
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("server_kind,client_kind", [(zmq.ROUTER, zmq.DEALER),
                                                     (zmq.XPUB, zmq.SUB)],
                         ids=["router", "xpub"])
def test_enforce_domain_with_no_zap_handler_admits_nobody(server_kind, client_kind):
    assert _handshake_without_authenticator(server_kind, client_kind, True) & FAILED
    # The trap it closes: without ZAP_ENFORCE_DOMAIN a missing handler lets any key in.
    assert _handshake_without_authenticator(server_kind, client_kind, False) == SUCCEEDED


def test_the_broker_fails_closed_when_its_authenticator_is_not_running(tmp_path):
    ctx = zmq.Context()
    directory = tmp_path / "keys"
    keys.ensure(directory)
    server = keys.load(directory / "broker.key_secret")
    operator = keys.load(directory / "admin.key_secret")
    loop = BrokerLoop(Chat(SqliteStore(":memory:")), ctx, bind="tcp://127.0.0.1:*",
                      pub_bind="tcp://127.0.0.1:*", control_bind="tcp://127.0.0.1:*",
                      secret_key=server.secret, operators={operator.public})
    try:
        for sock, domain in ((loop.router, b"chat"), (loop.publisher, b"chat"),
                             (loop.control, b"control")):
            assert sock.getsockopt(zmq.ZAP_ENFORCE_DOMAIN) == 1
            assert sock.getsockopt(zmq.ZAP_DOMAIN) == domain
        loop.zap.close(0)  # the authenticator is gone
        # Even the right keys (the operator's, on the control socket) get nowhere. A
        # refusal may show as a failed handshake or, when the server hangs up first, as
        # nothing but retries: either way no handshake may ever succeed. (Waiting for the
        # failure event alone made this test fail on a loaded machine.)
        for kind, name in ((zmq.DEALER, "router"), (zmq.SUB, "pub"), (zmq.REQ, "control")):
            sock = curve_socket(ctx, kind, server.public, operator)
            with watched(sock) as monitor:
                sock.connect(loop.endpoints[name])
                try:
                    outcome = handshake_outcome(monitor)
                except AssertionError:  # no verdict within the wait: not admitted either
                    outcome = FAILED
            sock.close(0)
            assert outcome != SUCCEEDED and outcome & FAILED, f"{name}: {event_name(outcome)}"
    finally:
        for sock in (loop.router, loop.publisher, loop.control):
            sock.close(0)
        loop.chat.store.close()
        ctx.destroy(linger=0)


def test_the_running_broker_answers_its_authenticator_so_valid_keys_get_in(broker, zctx):
    server = broker_key(broker)
    operator = keys.load(Path(broker.keys_dir) / "admin.key_secret")
    for kind, address, pair in ((zmq.DEALER, broker.router, None),
                                (zmq.SUB, broker.pub, None),
                                (zmq.REQ, broker.control, operator)):
        sock = curve_socket(zctx, kind, server, pair)
        with watched(sock) as monitor:
            sock.connect(address)
            assert handshake_outcome(monitor) == SUCCEEDED
        if kind != zmq.SUB:
            sock.send(pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION}
                           if kind == zmq.DEALER else {"id": 1, "cmd": "stats"}))
            assert sock.poll(5000)
            reply = unpack(sock.recv())  # a list of messages from the router; a map from control
            assert (reply[0] if kind == zmq.DEALER else reply)["ok"] is True
        sock.close(0)


# === Identity ============================================================================


def test_a_password_registered_nickname_needs_its_password(broker, clients, zctx):
    alice = clients()
    alice.send("login alice", "/register hunter2-pass")
    alice.event("reply", cmd="register", name="alice", by="password")
    alice.send("/quit")
    assert alice.wait() == 0
    mallory = clients()
    mallory.send("login alice")
    error = mallory.event("error", cmd="login")
    assert error["code"] == "name_reserved" and "registered" in error["text"]
    mallory.send("/identify alice wrong-password")
    assert mallory.event("error", cmd="login")["code"] == "bad_password"
    # Bare sockets skip the client's checks and fare no better.
    Peer(zctx, broker, "host").ok("create", room="den")
    raw = Peer(zctx, broker)
    assert raw.refused("login", name="alice") == "name_reserved"
    assert raw.refused("login", name="alice", password="wrong-password") == "bad_password"
    assert raw.refused("join", room="den", name="alice") == "name_reserved"
    assert raw.refused("create", room="elsewhere", name="alice") == "name_reserved"
    mallory.send("/identify alice hunter2-pass")  # who knows the password is alice
    mallory.event("reply", cmd="login", name="alice")
    users = admin_json(broker.control, "users")["users"]
    assert [(u["name"], u["rooms"]) for u in users] == [("alice", []), ("host", ["den"])]


def _client_key(broker: Broker, name: str) -> str:
    done = admin(broker.control, "--keys", broker.keys_dir, "keygen", "--client", name)
    assert done.returncode == 0, done.stderr
    return str(Path(broker.keys_dir) / "clients" / f"{name}.key_secret")


@pytest.mark.via_edge
def test_a_key_registered_nickname_goes_to_its_key_only(broker, clients):
    carol_key, other_key = _client_key(broker, "carol"), _client_key(broker, "other")
    carol = clients("--identity", carol_key)
    carol.send("login carol", "/register")
    carol.event("reply", cmd="register", name="carol", by="key")
    carol.send("/quit")
    assert carol.wait() == 0
    for extra in ((), ("--identity", other_key)):
        impostor = clients(*extra)
        impostor.send("login carol")
        assert impostor.event("error", cmd="login")["code"] == "name_reserved"
        impostor.send("/identify carol any-password")
        assert impostor.event("error", cmd="login")["code"] == "name_reserved"
        impostor.send("/quit")
        assert impostor.wait() == 0
    again = clients("--identity", carol_key)
    again.send("login carol")  # the same key, no password
    again.event("reply", cmd="login", name="carol")


def test_reservations_survive_a_broker_restart(broker, brokers, clients):
    carol_key = _client_key(broker, "carol")
    alice, carol = clients(), clients("--identity", carol_key)
    alice.send("login alice", "/register hunter2-pass", "/quit")
    alice.event("reply", cmd="register", by="password")
    carol.send("login carol", "/register", "/quit")
    carol.event("reply", cmd="register", by="key")
    assert alice.wait() == 0 and carol.wait() == 0
    assert broker.stop() == 0
    again = brokers(db=broker.db)
    stranger = clients(server=again.router)
    for name in ("alice", "carol"):
        stranger.send(f"login {name}")
        assert stranger.event("error", cmd="login")["code"] == "name_reserved"
    stranger.send("/identify alice hunter2-pass")
    stranger.event("reply", cmd="login", name="alice")
    owner = clients("--identity", carol_key, server=again.router)
    owner.send("login carol")
    owner.event("reply", cmd="login", name="carol")


# === Room privacy ========================================================================


@pytest.mark.via_edge
def test_no_subscription_a_stranger_can_make_reads_a_room(broker, zctx):
    alice = Peer(zctx, broker, "alice")
    alice.ok("create", room="vault")
    server = broker_key(broker)
    strangers: list[tuple[str, zmq.Socket]] = []
    for prefix in (b"", b"vault", b"vault\0"):
        sub = curve_socket(zctx, zmq.SUB, server)
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
        strangers.append((f"SUB {prefix!r}", sub))
    xsub = curve_socket(zctx, zmq.XSUB, server)
    strangers.append(("XSUB sending its own subscriptions", xsub))
    for name, sock in strangers:
        with watched(sock) as monitor:
            sock.connect(broker.pub)
            assert handshake_outcome(monitor) == SUCCEEDED, name
    for frame in (b"\x01vault", b"\x01", b"\x01vault\x00", b"\x01vault\x00\x00"):
        xsub.send(frame)
    # A logged-in user who is not a member tries the same from a session of its own.
    eve = Peer(zctx, broker, "eve")
    for prefix in (b"", b"vault", b"vault\0"):
        eve.subscribe(prefix)
    # A member subscribes after all of them, and hears the room: their requests were
    # in before the room got busy.
    bob = Peer(zctx, broker, "bob")
    bob.subscribe(bob.ok("join", room="vault")["topic"])
    say_until_heard(alice, "vault", bob)
    for i in range(20):  # a busy room
        alice.ok("say", room="vault", text=f"secret {i}")
    bob.hear(text_is("secret 19"))
    for name, sock in strangers:
        assert drain(sock, 0.1) == [], f"{name} read the room"
    assert eve.quiet(0.1) == []
    assert bob.notices == [] and eve.notices == []


class JunkFlood(threading.Thread):
    """An attacker's XSUB on the publisher. While flooding it sends, as fast as it can,
    junk (multi-frame messages, frames not starting with 0 or 1, empty frames) each
    followed by a run of subscriptions of its own; all along it records every message
    the publisher sends it. In XPUB manual mode each junk message read shifts "the last
    pipe" by one, so an unguarded grant for a member's subscription read after it lands
    on the pipe of the attacker's subscription queued behind."""

    JUNK = ([b"zz", b"junk"], [b"\x02not a subscription"], [b""], [b"\x01x", b"tail"],
            [b"\xff" * 40])

    def __init__(self, make_socket: Callable[[], zmq.Socket], room: bytes):
        super().__init__(daemon=True)
        self.make_socket = make_socket
        self.room = room
        self.flooding = threading.Event()
        self.flooding.set()
        self.started_flooding = threading.Event()
        self.done = threading.Event()
        self.received: list[list[bytes]] = []
        self.sent = 0

    def run(self) -> None:
        sock = self.make_socket()
        junk = itertools.cycle(self.JUNK)
        subscriptions = itertools.cycle([b"\x01", b"\x01" + self.room,
                                         b"\x01" + self.room + b"\0"])
        try:
            while not self.done.is_set():
                if self.flooding.is_set():
                    for _ in range(50):
                        sock.send_multipart(next(junk))
                        for _ in range(10):
                            sock.send(next(subscriptions))
                        self.sent += 11
                    self.started_flooding.set()
                while sock.poll(0 if self.flooding.is_set() else 5):
                    self.received.append(sock.recv_multipart())
            while sock.poll(300):  # stopped: whatever was still on its way
                self.received.append(sock.recv_multipart())
        finally:
            sock.close(0)

    def stop(self) -> None:
        self.done.set()
        if self.ident is not None:  # started
            self.join(5)
            assert not self.is_alive()


def _resubscribe(peer: Peer, topic: bytes) -> None:
    peer.sub.setsockopt(zmq.UNSUBSCRIBE, topic)
    peer.subscribe(topic)


def hear_resubscribing(speaker: Peer, room: str, listener: Peer, topic: bytes, label: str,
                       timeout: float = 8.0) -> None:
    """Say lines until the listener's SUB hears one, subscribing it again whenever the
    room has been silent for it a while, as a client does."""
    deadline = time.monotonic() + timeout
    said: list[str] = []
    asked = time.monotonic()
    while True:
        assert time.monotonic() < deadline, f"{label}: the member was never granted its topic"
        said.append(f"{label} {len(said)}")
        speaker.ok("say", room=room, text=said[-1])
        try:
            listener.hear(lambda e: e.get("text") in said, 0.3)
            return
        except AssertionError:
            if time.monotonic() - asked > 1.2:
                _resubscribe(listener, topic)
                asked = time.monotonic()


@pytest.mark.via_edge
def test_junk_frames_cannot_steer_a_members_grant_to_the_attacker(broker, zctx, clients):
    alice = Peer(zctx, broker, "alice")
    alice.ok("create", room="vault")
    flood = JunkFlood(lambda: raw_socket(zctx, zmq.XSUB, broker, broker.pub), b"vault")
    flood.start()
    try:
        assert flood.started_flooding.wait(5)
        # A real client joins in the middle of the flood. Its hello may wait longer than
        # the default 2 s here: the flood thread, the edge's two threads and the other
        # test worker share two cores (a CI run missed 2 s once). A cut connection would
        # still fail it: its hello would be lost, never answered.
        bob = clients("--timeout", "10")
        bob.send("join vault bob")
        carol = Peer(zctx, broker, "carol")  # ...and a bare one, subscribing again and again
        topic = carol.ok("join", room="vault")["topic"]
        bob.event("reply", cmd="join", timeout=10)
        for i in range(25):
            _resubscribe(carol, topic)
            alice.ok("say", room="vault", text=f"during the flood {i}")
        flood.flooding.clear()  # the attacker stops sending junk, and keeps listening
        assert flood.sent > 1000, "the flood hardly happened"
        # The members end up receiving: a subscription refused while junk was queued is
        # granted when asked again (a client asks when its room falls silent).
        hear_resubscribing(alice, "vault", carol, topic, label="after the flood")
        alice.ok("say", room="vault", text="last word")
        bob.event("msg", text="last word", timeout=8)
    finally:
        flood.stop()
    assert flood.received == [], f"the attacker read the room: {flood.received[:3]}"


class UnguardedPublisher(Publisher):
    """The publisher thread without its guard against junk (nor its cuts)."""

    def _drain_subscriptions(self) -> None:
        for _ in range(512):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            frame = frames[0]
            if len(frames) != 1 or not frame or frame[0] not in (0, 1):
                continue
            if frame[0] == 1 and self.grants(frame[1:]):
                self.sock.setsockopt(zmq.SUBSCRIBE, frame[1:])
            elif frame[0] == 0:
                self.sock.setsockopt(zmq.UNSUBSCRIBE, frame[1:])


class UnguardedLoop(BrokerLoop):
    """The broker loop with that publisher."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pub.__class__ = UnguardedPublisher  # not started yet: serve() starts it


@pytest.mark.timeout(30)
def test_the_junk_flood_does_steal_grants_from_an_unguarded_publisher(tmp_path):
    """The control for the test above: the same attack on a loop without the guard
    reads the room, so the attack is real and the guard is what stops it."""
    ctx = zmq.Context()
    directory = tmp_path / "keys"
    keys.ensure(directory)
    loop = UnguardedLoop(Chat(SqliteStore(":memory:"), rate=0), ctx,
                         bind="tcp://127.0.0.1:*", pub_bind="tcp://127.0.0.1:*",
                         control_bind="tcp://127.0.0.1:*",
                         secret_key=keys.load(directory / "broker.key_secret").secret)
    serving = threading.Thread(target=loop.serve, daemon=True)
    serving.start()
    where = SimpleNamespace(keys_dir=str(directory), router=loop.endpoints["router"],
                            pub=loop.endpoints["pub"])
    flood = JunkFlood(lambda: raw_socket(ctx, zmq.XSUB, where, where.pub), b"vault")
    try:
        alice, carol = Peer(ctx, where, "alice"), Peer(ctx, where, "carol")
        alice.ok("create", room="vault")
        topic = carol.ok("join", room="vault")["topic"]
        flood.start()
        assert flood.started_flooding.wait(5)
        deadline = time.monotonic() + 20
        n = 0
        while not flood.received:
            assert time.monotonic() < deadline, "the attack never worked on the unguarded loop"
            _resubscribe(carol, topic)
            alice.ok("say", room="vault", text=f"secret {n}")
            n += 1
        assert flood.received[0][0] == topic  # the attacker reads the member's topic
    finally:
        flood.stop()
        loop.stop()
        serving.join(5)
        ctx.destroy(linger=0)


@pytest.mark.via_edge
@pytest.mark.parametrize("removal", ["leave", "kick", "kill"])
def test_a_removed_member_stops_receiving_at_once_even_ignoring_the_notice(
        broker, zctx, removal):
    alice, mallory = Peer(zctx, broker, "alice"), Peer(zctx, broker, "mallory")
    alice.subscribe(alice.ok("create", room="vault")["topic"])
    old = mallory.ok("join", room="vault")["topic"]
    mallory.subscribe(old)
    # Positive control: while a member, mallory's bare SUB hears the room through the
    # publisher (not only through catch-up over the DEALER).
    before = say_until_heard(alice, "vault", alice, mallory, label="before")
    alice.ok("say", room="vault", text="while a member")
    last_seq = mallory.hear(text_is("while a member"))["seq"]
    heard_before = len(mallory.heard)

    if removal == "leave":
        mallory.ok("leave", room="vault")
    else:
        target = ["kick", "mallory"] if removal == "kick" else ["kill", "vault"]
        done = admin(broker.control, *target)
        assert done.returncode == 0, done.stderr
    # mallory ignores every notice, keeps its SUB, asks for its old topic again and for
    # the room's prefix; a fresh SUB tries the old topic too.
    _resubscribe(mallory, old)
    mallory.subscribe(b"vault\0")
    lurker = raw_socket(zctx, zmq.SUB, broker, broker.pub)
    lurker.setsockopt(zmq.SUBSCRIBE, old)

    if removal == "kill":  # everyone was ejected; the room is made anew
        alice.notice("ejected")
        new = alice.ok("create", room="vault")["topic"]
    else:
        new = alice.notice("rekey")["topic"]
    assert new != old
    alice.subscribe(new)
    # The room goes on; alice hearing a line proves the later ones went out.
    said = say_until_heard(alice, "vault", alice, label="after")
    mallory.quiet()

    def published_before_removal(e: dict[str, Any]) -> bool:  # still in mallory's queue
        return ((e["ev"] == "msg" and e["text"] in [*before, "while a member"])
                or (e["ev"] == "tick" and e["seq"] <= last_seq)
                or (e["ev"] == "leave" and e["name"] == "mallory"))  # its own, last one
    leaked = [e for _, e in mallory.heard[heard_before:] if not published_before_removal(e)]
    assert leaked == [], f"mallory heard {leaked} after its removal ({len(said)} lines said)"
    assert drain(lurker, 0.1) == [], "the old topic was granted to a fresh subscriber"


# === Bad peers ===========================================================================


def tcp_until_closed(address: str, payload: bytes, timeout: float = DEFAULT_WAIT) -> None:
    """Send raw bytes; wait for the broker to close the connection (the positive event
    that it refused them)."""
    with socket.create_connection(host_port(address), timeout=timeout) as s:
        try:
            s.sendall(payload)
            while s.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            raise AssertionError(f"the broker kept {payload[:20]!r}... open") from None


def legacy_frames(body: bytes) -> bytes:
    """ZMTP/1.0: an (empty) identity frame, then one message frame: length, flags, body."""
    assert len(body) < 255
    return b"\x01\x00" + bytes([len(body) + 1, 0]) + body


ZMTP3_CURVE_GREETING = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00"
                        + b"CURVE".ljust(20, b"\0") + b"\x00" + b"\0" * 31)


def bytes_taken_after_huge_frame_header(address: str, declared: int, budget: int) -> int:
    """Greet as a ZMTP 3 CURVE peer, declare a frame of ``declared`` bytes and stream its
    body; how much the peer took before cutting us off (``budget`` if it never did)."""
    chunk = b"\0" * (1 << 20)
    sent = 0
    with socket.create_connection(host_port(address), timeout=DEFAULT_WAIT) as s:
        try:
            s.sendall(ZMTP3_CURVE_GREETING)
            s.sendall(b"\x06" + struct.pack(">Q", declared))  # command frame, 8-byte size
            while sent < budget:
                s.sendall(chunk)
                sent += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return sent
    return sent


def test_legacy_zmtp_frames_are_a_real_way_in_to_a_plain_router():
    """The control for the legacy-frame attack below: the bytes are a valid hello."""
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        hello = pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION})
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(legacy_frames(hello))
            assert router.poll(5000)
            assert router.recv_multipart()[1] == hello
        router.close(0)
    finally:
        ctx.destroy(linger=0)


@pytest.mark.via_edge
def test_garbage_http_and_legacy_frames_are_never_processed(broker, clients):
    serve_check(clients, "before")
    before, rss_before = stats(broker), rss_mib(broker.proc.pid)
    rnd = random.Random(4)
    hello = pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION})
    payloads = {
        "garbage": bytes(rnd.randrange(256) for _ in range(8192)),
        "garbage after a signature byte": b"\xff" + bytes(rnd.randrange(256)
                                                          for _ in range(8192)),
        "http": b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n",
        "legacy ZMTP/1.0 hello": legacy_frames(hello),
        "legacy ZMTP/1.0 admin ls": legacy_frames(pack({"id": 1, "cmd": "ls"})),
        "plaintext ZMTP 3 greeting then a hello": (
            b"\xff" + b"\0" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
            + b"\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER"
            + b"\x00" + bytes([len(hello)]) + hello),
    }
    for address in (broker.router, broker.pub, broker.control):
        for name, payload in payloads.items():
            try:
                tcp_until_closed(address, payload)
            except AssertionError as exc:
                raise AssertionError(f"{name} on {address}: {exc}") from None
    assert broker.proc.poll() is None
    after = stats(broker)
    assert (after["clients"], after["messages_in"]) == (before["clients"],
                                                        before["messages_in"])
    assert rss_mib(broker.proc.pid) < rss_before + RSS_GROWTH_LIMIT_MIB
    serve_check(clients, "after")


def test_a_declared_multi_gib_frame_is_cut_off_at_once(broker, clients):
    rss_before = rss_mib(broker.proc.pid)
    budget = 16 << 20
    for address in (broker.router, broker.pub, broker.control):
        taken = bytes_taken_after_huge_frame_header(address, 5 << 30, budget)
        assert taken < budget, f"{address} took {taken >> 20} MiB of a 5 GiB frame"
    assert broker.proc.poll() is None
    assert rss_mib(broker.proc.pid) < rss_before + RSS_GROWTH_LIMIT_MIB
    assert stats(broker)["messages_in"] == 0
    serve_check(clients, "after")


def test_a_curve_peer_without_a_size_limit_would_take_the_huge_frame():
    """The control for the test above: without MAXMSGSIZE the same bytes are swallowed."""
    ctx = zmq.Context()
    try:
        public, secret = zmq.curve_keypair()
        server = ctx.socket(zmq.ROUTER)
        server.setsockopt(zmq.LINGER, 0)
        server.setsockopt(zmq.CURVE_SERVER, 1)
        server.setsockopt(zmq.CURVE_SECRETKEY, secret)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        budget = 8 << 20
        taken = bytes_taken_after_huge_frame_header(f"tcp://127.0.0.1:{port}", 64 << 20,
                                                    budget)
        assert taken == budget
        server.close(0)
    finally:
        ctx.destroy(linger=0)


@pytest.mark.via_edge
def test_a_message_over_the_size_limit_drops_its_peer_unprocessed(broker, clients, zctx):
    before = stats(broker)
    big = curve_socket(zctx, zmq.DEALER, broker_key(broker))
    with watched(big) as monitor:
        big.connect(broker.router)
        assert handshake_outcome(monitor) == SUCCEEDED
        big.send(pack({"id": 1, "cmd": "hello", "version": P.PROTOCOL_VERSION,
                       "pad": "x" * (P.FRAME_MAX + 1)}))
        next_event(monitor, zmq.EVENT_DISCONNECTED)  # the broker hung up
    assert not big.poll(0)
    after = stats(broker)
    assert (after["clients"], after["messages_in"]) == (before["clients"],
                                                        before["messages_in"])
    # Dropped, not broken: the peer reconnects by itself and a sane request is served.
    big.send(pack({"id": 2, "cmd": "hello", "version": P.PROTOCOL_VERSION}))
    assert big.poll(5000)
    assert messages(big.recv())[0]["re"] == 2
    assert broker.proc.poll() is None
    serve_check(clients, "after")


@pytest.mark.timeout(60)
def test_a_flood_of_held_open_connections_does_not_stop_service(broker, clients):
    rss_before = rss_mib(broker.proc.pid)
    before = stats(broker)
    held: list[socket.socket] = []
    try:
        for i in range(500):
            address = (broker.router, broker.pub, broker.control)[i % 3]
            s = socket.create_connection(host_port(address), timeout=DEFAULT_WAIT)
            if i % 2:
                s.sendall(ZMTP3_CURVE_GREETING)  # half of them start a handshake, stall
            held.append(s)
        # While all of them hang on, normal service goes on.
        serve_check(clients, "during")
        during = stats(broker)
        assert during["clients"] == before["clients"]
        assert broker.proc.poll() is None
        assert rss_mib(broker.proc.pid) < rss_before + RSS_GROWTH_LIMIT_MIB
    finally:
        for s in held:
            s.close()
    serve_check(clients, "after")


# === Abuse limits ========================================================================


@pytest.mark.via_edge
def test_a_flooder_is_rate_limited_while_others_chat_on(broker, zctx, clients):
    # The real client paces itself to the announced limits: a flooder is a bare client.
    flooder = Peer(zctx, broker, "flooder")
    flooder.ok("create", room="hall")
    bob, watcher = clients(), clients()
    for c, name in ((bob, "bob"), (watcher, "watcher")):
        c.send(f"join hall {name}")
        c.event("reply", cmd="join")
    first = flooder._rid + 1
    for i in range(200):
        flooder.dealer.send(pack({"id": first + i, "cmd": "say", "room": "hall",
                                  "text": f"spam {i}"}))
    answers: dict[int, dict] = {}
    deadline = time.monotonic() + 10
    while len(answers) < 200 and flooder.dealer.poll((deadline - time.monotonic()) * 1000):
        for m in messages(flooder.dealer.recv()):
            if m.get("re") is not None and m["re"] >= first:
                answers[m["re"]] = m
    assert len(answers) == 200, "every request is answered"
    refusals = [a for a in answers.values() if not a["ok"]]
    assert {a["code"] for a in refusals} == {"rate_limited"}
    assert refusals[0]["error"] == f"Slow down: at most {P.RATE_DEFAULT:g} requests a second"
    accepted = 200 - len(refusals)
    # A burst at once (less the hello, login and create), then the steady rate.
    assert P.BURST_DEFAULT - 3 <= accepted < 200, accepted
    # The others are not slowed down: each line acknowledged and delivered.
    for i in range(5):
        bob.send(f"calm {i}")
        bob.event("reply", cmd="say", timeout=5)
        watcher.event("msg", **{"from": "bob", "text": f"calm {i}"})
    assert not [line for line in bob.out.seen if "rate_limited" in line]
    # Tokens come back: after a pause, the flooder may speak again.
    deadline = time.monotonic() + 5
    while not flooder.ask("say", room="hall", text="sorry")["ok"]:
        assert time.monotonic() < deadline, "the flooder's tokens never came back"
    watcher.event("msg", **{"from": "flooder", "text": "sorry"}, timeout=10)


@pytest.mark.broker_args("--rate", "0")
def test_names_sizes_and_counts_are_limited_by_the_broker_itself(broker, zctx):
    peer = Peer(zctx, broker)  # bare sockets: the client's own checks are skipped
    bad_names = ["n" * (P.NICK_MAX + 1), "", "two words", "comma,name", "/slash",
                 "esc\x1b[2J", "bell\x07", "tab\tname", "new\nline", "csi\x9b31m", "del\x7f"]
    for name in bad_names:
        assert peer.refused("login", name=name) == "bad_username", repr(name)
    assert peer.ok("login", name="n" * P.NICK_MAX)["name"] == "n" * P.NICK_MAX
    bad_rooms = ["r" * (P.ROOM_MAX + 1), "", "two words", "esc\x1b[31mred", "bell\x07",
                 "osc\x1b]0;title\x07", "nul\x00", "cr\r", "csi\x9b2J", "\u202eevil"]
    for room in bad_rooms:
        assert peer.refused("create", room=room) == "bad_room_name", repr(room)
        assert peer.refused("join", room=room) == "bad_room_name", repr(room)
    room = "r" * P.ROOM_MAX
    peer.ok("create", room=room)
    assert peer.refused("say", room=room, text="x" * (P.TEXT_MAX + 1)) == "bad_message"
    assert peer.refused("say", room=room, text="") == "bad_message"
    peer.ok("say", room=room, text="x" * P.TEXT_MAX)
    assert peer.refused("history", room=room, limit=P.HISTORY_PAGE_MAX + 1) == (
        "invalid_command")
    assert peer.ok("history", room=room, limit=P.HISTORY_PAGE_MAX)["room"] == room
    assert peer.refused("msg", to=[f"u{i}" for i in range(P.RECIPIENTS_MAX + 1)],
                        text="hi") == "bad_username"
    assert peer.refused("register", password="short") == "bad_password"
    assert peer.refused("register", password="p" * (P.PASSWORD_MAX + 1)) == "bad_password"
    for i in range(P.ROOMS_PER_MEMBER_MAX - 1):
        peer.ok("create", room=f"room{i}")
    assert peer.refused("create", room="one_too_many") == "too_many_rooms"
    Peer(zctx, broker, "host").ok("create", room="elsewhere")
    assert peer.refused("join", room="elsewhere", name="other") == "too_many_rooms"
    done = admin(broker.control, "kill", room, "--reason", "r" * (P.REASON_MAX + 1))
    assert done.returncode != 0 and "Bad reason" in done.stderr
    done = admin(broker.control, "kill", room, "--reason", "no\x1b[2Jescapes")
    assert done.returncode != 0 and "Bad reason" in done.stderr
    names = [r["room"] for r in admin_json(broker.control, "ls")["rooms"]]
    assert len(names) == P.ROOMS_PER_MEMBER_MAX + 1 and room in names  # with "elsewhere"


def test_escape_sequences_are_delivered_but_shown_neutralised(broker, clients, zctx):
    nasty = "look \x1b[2J\x07\x1b]0;pwned\x07\x1b[31m red \x9b1;1H done"
    alice = Peer(zctx, broker, "alice")  # bare sockets: no client-side cleaning at all
    alice.ok("create", room="den")
    reader, archivist = clients(json_mode=False), clients()
    reader.send("join den reader")
    reader.line("[den] reader joined")
    archivist.send("join den archivist")
    archivist.event("reply", cmd="join")
    alice.ok("say", room="den", text=nasty)
    alice.ok("msg", to=["reader"], text=nasty)
    # Delivered intact to a program that asked for the raw text...
    assert archivist.event("msg", **{"from": "alice"})["text"] == nasty
    # ...and shown to a person with every control character made visible.
    reader.line(lambda line: line.startswith("[den] alice: look"))
    reader.out.drain(0.3)  # the private one may come before or after; all are in .seen
    said = [line for line in reader.out.seen if line.startswith("[den] alice: look")]
    private = [line for line in reader.out.seen if line.startswith("alice: look")]
    assert len(said) == 1 and len(private) == 1, reader.out.seen
    for line in said + private:
        assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line, repr(line)
        assert "^[[2J^G^[]0;pwned^G^[[31m red <U+009B>1;1H done" in line, repr(line)
    assert not [line for line in reader.out.seen if "\x1b" in line or "\x07" in line]


# === Found by these tests: known bugs (strict xfail until fixed) =========================


def test_a_client_that_asks_for_history_and_never_reads_cannot_grow_broker_memory(
        broker, zctx):
    writers = [Peer(zctx, broker, f"writer{i}") for i in range(5)]
    writers[0].ok("create", room="big")
    for w in writers[1:]:
        w.ok("join", room="big")
    for w in writers:  # 200 messages of ~64 KiB: a full history page is ~13 MB
        for _ in range(40):
            w.ok("say", room="big", text="x" * 65000)
    hog = Peer(zctx, broker, "hog")
    hog.ok("join", room="big")
    rss_before = rss_mib(broker.proc.pid)
    counted = stats(broker)["messages_in"]
    requests = 12  # well within the default burst: the rate limit does not stop this
    for i in range(requests):  # ...and it never reads a reply
        hog.dealer.send(pack({"id": 1000 + i, "cmd": "history", "room": "big",
                              "limit": P.HISTORY_PAGE_MAX}))
    deadline = time.monotonic() + 10
    while stats(broker)["messages_in"] < counted + requests:  # all taken in and answered
        assert time.monotonic() < deadline, "the broker never took the requests in"
    growth = rss_mib(broker.proc.pid) - rss_before
    assert growth < RSS_GROWTH_LIMIT_MIB, f"broker grew by {growth:.0f} MiB"


@pytest.mark.via_edge
def test_refused_subscriptions_cannot_grow_broker_memory(broker, zctx):
    # libzmq's manual XPUB keeps every subscription a peer asks for, refused or not, until
    # the peer leaves: so the broker cuts a connection past a few refused topics.
    alice, mallory = Peer(zctx, broker, "alice"), Peer(zctx, broker, "mallory")
    alice.ok("create", room="vault")
    topic = mallory.ok("join", room="vault")["topic"]
    rss_before = rss_mib(broker.proc.pid)
    rnd = random.Random(7)
    xsub = curve_socket(zctx, zmq.XSUB, broker_key(broker))
    with watched(xsub) as monitor:
        xsub.connect(broker.pub)
        for _ in range(6000):  # ~3 MB of traffic, each one refused
            xsub.send(b"\x01" + rnd.randbytes(P.SUBSCRIPTION_FRAME_MAX - 64))
        xsub.send(b"\x01" + topic)  # behind them on the same pipe: a live topic
        # Processed once mallory's XSUB hears the room (or once the broker hangs up on it).
        deadline = time.monotonic() + 15
        n = 0
        while not xsub.poll(250):
            assert time.monotonic() < deadline, "the broker never got to the subscriptions"
            if monitor.poll(0) and zmq.utils.monitor.recv_monitor_message(monitor)[
                    "event"] == zmq.EVENT_DISCONNECTED:
                break
            alice.ok("say", room="vault", text=f"line {n}")
            n += 1
    # What libzmq freed with the cut connection goes back to the system when the guard
    # trims, in the second after a cut (broker/guard.py): on a busy machine that second
    # may come a little after the disconnect. Memory still held past it fails the test.
    deadline = time.monotonic() + 2.0
    while (growth := rss_mib(broker.proc.pid) - rss_before) >= RSS_GROWTH_LIMIT_MIB \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert growth < RSS_GROWTH_LIMIT_MIB, f"broker grew by {growth:.0f} MiB"


def test_registered_guest_names_do_not_stop_anonymous_users_from_joining(broker, zctx,
                                                                          clients):
    owner = Peer(zctx, broker, "owner")
    owner.ok("create", room="lounge")
    squatter = Peer(zctx, broker)
    for n in range(1, 4):  # the next guest names, reserved to the squatter's key
        squatter.ok("login", name=f"Guest{n}")
        squatter.ok("register")
        squatter.ok("logout")
    newcomer = clients()
    newcomer.send("join lounge")
    answer = newcomer.event(timeout=5)  # the first thing it prints, whatever it is
    assert (answer["event"], answer.get("cmd")) == ("reply", "join"), answer
    assert answer["name"].startswith("Guest")
