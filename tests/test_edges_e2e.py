"""Edges (issue 12): processes that hold clients for a core, tested as real processes.

A core started with ``--edge-bind``, edges (``python -m edge``) on loopback, real clients
on different edges and on the core itself in the same rooms. The security suite's
subscription and identity attacks run against an edge too (``@pytest.mark.via_edge`` in
tests/test_security_e2e.py); here: what is new with edges. The link's own messages are
played by a bare DEALER holding an edge key (``FakeEdge``), to see exactly what the core
sends an edge.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from schema import edge as E
from schema import keys, messages, pack
from schema import protocol as P

from .harness import (
    DEFAULT_WAIT,
    Broker,
    Client,
    Edge,
    admin,
    admin_json,
    edge_address,
    free_tcp_address,
    host_port,
    start_broker,
    start_edge,
    stored_events,
)
from .test_failover_e2e import acknowledged, assert_view_is_the_stored_history
from .test_security_e2e import FAILED, SUCCEEDED, Peer, handshake_outcome, watched

pytestmark = pytest.mark.timeout(60)


def share_room(owner: Client, *members: Client, room: str = "den") -> None:
    """``owner`` creates the room and every member joins it, each answered."""
    owner.send(f"/create {room}")
    owner.event("reply", cmd="create", timeout=10)
    for member in members:
        member.send(f"/join {room}")
        member.event("reply", cmd="join", timeout=10)


@pytest.fixture
def edges(core) -> Iterator[list[Edge]]:
    started: list[Edge] = []
    try:  # (the first is stopped too if the second does not start)
        for _ in range(2):
            started.append(start_edge(edge_address(core), core.keys_dir))
        yield started
    finally:
        for edge in started:
            edge.stop()


def heard(client: Client, text: str) -> None:
    """The client showed this message (already, or within the wait)."""
    if not any(f'"text": {json.dumps(text)}' in line for line in client.out.seen):
        client.event("msg", text=text, timeout=10)


def test_clients_on_two_edges_and_on_the_core_share_rooms_messages_and_history(
        core, edges):
    e1, e2 = edges
    alice = Client(e1.router, "--name", "alice")
    bob = Client(e2.router, "--name", "bob")
    carol = Client(core.router, "--name", "carol")
    try:
        for c in (alice, bob, carol):
            c.event("reply", cmd="login", timeout=10)
        share_room(alice, bob, carol)
        for who, c in (("alice", alice), ("bob", bob), ("carol", carol)):
            c.send(f"hello from {who}")
        for c in (alice, bob, carol):
            for who in ("alice", "bob", "carol"):
                heard(c, f"hello from {who}")
        bob.send("/msg carol psst")  # a DM from an edge to the core's own client...
        carol.event("dm", text="psst")
        carol.send("/msg alice back")  # ...and from the core to an edge
        alice.event("dm", text="back")
        alice.send("/whisper bob only you")  # a whisper between two edges
        assert bob.event("whisper", text="only you")["room"] == "den"
        alice.send("/me waves")
        for c in (alice, bob, carol):
            heard(c, "waves")
        stored = stored_events(core.db, "den")
        for c in (alice, bob, carol):
            assert_view_is_the_stored_history(c, "den", stored)
        stats = admin_json(core.control, "stats")  # one chat, whatever the way in
        assert stats["ok"] and (stats["clients"], stats["users"]) == (3, 3), stats
    finally:
        for c in (alice, bob, carol):
            c.kill()


class FakeEdge:
    """A bare DEALER with the edge key on the core's edge socket: it speaks the link
    (schema/edge.py) itself, for clients that exist only in the test."""

    def __init__(self, ctx: zmq.Context, core: Broker):
        directory = Path(core.keys_dir)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        keys.curve_client(self.sock, keys.load(directory / "broker.key").public,
                          keys.load(directory / "edge.key_secret"))
        self.sock.connect(edge_address(core))
        self.unread: list[list[bytes]] = []
        self.send(E.HELLO, pack({"pub": "tcp://127.0.0.1:1", "mark": 4242}))
        first = self.next()
        assert first[:2] == [E.TOPICS, E.ALL], first  # the topics come before anything
        alive = self.next()  # and the answer echoes the hello's mark: read up to there
        assert alive[0] == E.ALIVE and alive[2:] == [b"4242"], alive

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def next(self, timeout: float = DEFAULT_WAIT) -> list[bytes]:
        if self.unread:
            return self.unread.pop(0)
        assert self.sock.poll(timeout * 1000), "the core sent the edge nothing"
        return self.sock.recv_multipart()

    def ask(self, client: bytes, cmd: str, rid: int, **fields: object) -> dict:
        """One request of one fake client; its reply (other link messages are kept)."""
        body = pack({"id": rid, "cmd": cmd, **fields})
        self.send(E.REQUEST, client, b"", b"127.0.0.1" if cmd == "hello" else b"", body)
        deadline = time.monotonic() + DEFAULT_WAIT
        kept = []
        while time.monotonic() < deadline:
            message = self.next(deadline - time.monotonic())
            if message[0] == E.SEND:
                for k in range(1, len(message), 2):
                    for reply in messages(message[k + 1]):
                        if message[k] == client and reply.get("re") == rid:
                            self.unread = kept + self.unread
                            return reply
            kept.append(message)
        raise AssertionError(f"no reply to {cmd}")

    def quiet(self, quiet: float = 0.3) -> list[list[bytes]]:
        out, self.unread = self.unread, []
        while self.sock.poll(quiet * 1000):
            out.append(self.sock.recv_multipart())
        return out


def test_the_core_sends_a_room_frame_once_per_edge_not_once_per_member(core, zctx):
    alice = Peer(zctx, core, "alice")  # on the core itself
    den = alice.ok("create", room="den")["topic"]
    alice.ok("create", room="elsewhere")
    edge = FakeEdge(zctx, core)
    members = [f"c{i}".encode() for i in range(5)]
    topics = set()
    for i, client in enumerate(members):
        assert edge.ask(client, "hello", 1, version=P.PROTOCOL_VERSION)["ok"]
        assert edge.ask(client, "login", 2, name=f"member{i}")["ok"]
        joined = edge.ask(client, "join", 3, room="den")
        assert joined["ok"], joined
        topics.add(joined["topic"])
    assert topics == {den}  # (no one left: the topic stayed)
    edge.quiet()
    alice.ok("say", room="den", text="to five members on one edge")
    alice.ok("say", room="elsewhere", text="to nobody on the edge")
    alice.ok("say", room="den", text="after")  # (a later turn: the first is all in)
    frames = []
    while not any(e.get("text") == "after" for m in frames for e in messages(m[2])):
        frames += [m for m in [edge.next()] if m[0] == E.ROOM]
    said = [(m[1], e["text"]) for m in frames for e in messages(m[2]) if e["ev"] == "msg"]
    # One frame for the room to the edge, not one per member; none for the other room.
    assert said == [(den, "to five members on one edge"), (den, "after")], said


def test_only_edge_keys_get_onto_the_cores_edge_socket(core, zctx):
    directory = Path(core.keys_dir)
    server = keys.load(directory / "broker.key").public
    candidates = {"a fresh key": None,
                  "the operator's key": keys.load(directory / "admin.key_secret"),
                  "the edge key": keys.load(directory / "edge.key_secret")}
    outcomes = {}
    for name, pair in candidates.items():
        sock = zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        keys.curve_client(sock, server, pair)
        with watched(sock) as monitor:
            sock.connect(edge_address(core))
            outcomes[name] = handshake_outcome(monitor)
        sock.close(0)
    assert outcomes["the edge key"] == SUCCEEDED
    assert outcomes["a fresh key"] & FAILED and outcomes["the operator's key"] & FAILED
    # And the edge key is no way onto the chat's or the operator's sockets' privileges:
    # on the control socket it is refused like any chat key.
    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    keys.curve_client(sock, server, candidates["the edge key"])
    with watched(sock) as monitor:
        sock.connect(core.control)
        assert handshake_outcome(monitor) & FAILED
    sock.close(0)


def test_a_client_that_vanishes_behind_an_edge_is_timed_out_by_the_edge(core, edges):
    e1, _ = edges
    alice = Client(e1.router, "--name", "alice")
    ghost = Client(e1.router, "--name", "ghost")
    try:
        share_room(alice, ghost)
        alice.event("join", name="ghost")
        ghost.proc.kill()  # no bye: only its silence tells
        left = alice.event("leave", name="ghost", timeout=P.PEER_TIMEOUT + 6)
        assert left["reason"] == "timed out", left
    finally:
        alice.kill()
        ghost.kill()


def test_kill_9_of_an_edge_its_clients_move_to_another_and_catch_up_gap_free(
        core, edges):
    e1, e2 = edges
    # Movers start on e1 and know e2; stayers are on e2 and the core.
    movers = [Client(f"{e1.router},{e2.router}", "--name", f"mover{i}") for i in range(2)]
    stayers = [Client(e2.router, "--name", "stayer"), Client(core.router, "--name", "local")]
    everyone = movers + stayers
    said: dict[Client, list[str]] = {c: [] for c in everyone}

    def say(count: int, start: int) -> None:
        for n in range(start, start + count):
            client = everyone[n % len(everyone)]
            said[client].append(f"line {n}")
            client.send(f"line {n}")

    try:
        share_room(*everyone)
        say(40, 0)
        everyone[0].event("reply", cmd="say", timeout=10)  # killed mid-stream
        e1.proc.kill()
        say(40, 40)  # typed before the movers notice
        for mover in movers:
            mover.event("resumed", timeout=15)
        for c, lines in said.items():
            c.event("reply", cmd="say", text=lines[-1], timeout=15)
        everyone[0].send("last word")
        for c in everyone:
            c.event("msg", text="last word", timeout=15)
        stored = stored_events(core.db, "den")
        texts = [e.get("text") for e in stored if e["ev"] == "msg"]
        by_seq = {e["seq"]: e for e in stored}
        for c in everyone:
            for text in said[c]:
                assert texts.count(text) == 1, f"{text!r} stored {texts.count(text)} times"
            for seq, text in acknowledged(c):
                assert by_seq.get(seq, {}).get("text") == text, f"ack {seq} {text!r} lost"
            assert_view_is_the_stored_history(c, "den", stored)
    finally:
        for c in everyone:
            c.kill()


@pytest.mark.via_edge
def test_a_session_the_core_ends_is_told_to_the_client_at_its_next_ping(broker, zctx):
    """Kicked by the operator, its session is gone: the next ping says so, behind an edge
    (which answers pings itself, told by the core) as on the core."""
    mallory = Peer(zctx, broker, "mallory")
    assert mallory.ask("ping")["ok"]
    done = admin(broker.control, "kick", "mallory", "--reason", "enough")
    assert done.returncode == 0, done.stderr
    mallory.notice("kicked")
    assert mallory.ask("ping")["code"] == "no_session"


def test_an_edge_takes_clients_only_once_a_core_has_greeted_it(tmp_path):
    """Started before its core, an edge binds nothing for clients (a client would get no
    answer to its hello): it waits, and opens once the core greets it."""
    key_dir = tmp_path / "keys"
    keys.ensure(key_dir)
    link = free_tcp_address()
    started: list[Edge] = []
    waiter = threading.Thread(target=lambda: started.append(
        start_edge(link, str(key_dir), timeout=30)), daemon=True)
    waiter.start()
    waiter.join(1.0)  # (the edge is up and waiting by now, or soon: it has no core)
    assert not started, "the edge opened with no core to relay to"
    core = start_broker(str(tmp_path / "zchat.db"), "--edge-bind", link, "--keys",
                        str(key_dir))
    try:
        waiter.join(20)
        [edge] = started
        assert any("Waiting for a core" in line for line in edge.log.seen)
        alice = Client(edge.router, "--keys", str(key_dir), "--name", "alice")
        try:
            alice.event("reply", cmd="login", timeout=10)
        finally:
            alice.kill()
        edge.stop()
    finally:
        core.stop()


class LinkProxy:
    """A TCP relay between an edge and its core that the test can break: drop what the
    core sends (a reply on its way is lost), then cut the connection (a blip: the edge
    dials again at once, under the same routing id)."""

    def __init__(self, target: str):
        self.target = host_port(target)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.dropping = threading.Event()
        self.dropped = threading.Event()  # something from the core was dropped
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                edge, _ = self.listener.accept()
            except OSError:
                return
            core = socket.create_connection(self.target)
            self.conns += [edge, core]
            threading.Thread(target=self._pump, args=(edge, core, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(core, edge, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_core: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_core and self.dropping.is_set():
                    self.dropped.set()
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def blip(self) -> None:
        conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.dropping.clear()

    def close(self) -> None:
        self.listener.close()
        self.blip()


def test_a_dropped_link_between_edge_and_core_loses_nothing_acknowledged(core):
    """What was on the link when it dropped is lost both ways; the edge tells the core at
    its next hello, the core ends the sessions it held through it, and the clients resume:
    the line typed meanwhile is answered (once), never left waiting."""
    proxy = LinkProxy(edge_address(core))
    edge = start_edge(proxy.address, core.keys_dir)
    alice = Client(edge.router, "--name", "alice")
    bob = Client(core.router, "--name", "bob")
    try:
        share_room(alice, bob)
        alice.send("before")
        alice.event("reply", cmd="say", text="before", timeout=10)
        proxy.dropping.set()
        alice.send("during")  # its answer (and its room frame) go nowhere
        assert proxy.dropped.wait(10)
        bob.event("msg", text="during", timeout=10)  # it was stored and published
        proxy.blip()
        alice.event("resumed", timeout=15)
        alice.event("reply", cmd="say", text="during", timeout=15)  # answered, as a retry
        alice.send("after")
        bob.event("msg", text="after", timeout=10)
        texts = [e.get("text") for e in stored_events(core.db, "den")]
        assert texts.count("during") == 1 and texts.count("after") == 1
    finally:
        alice.kill()
        bob.kill()
        edge.stop()
        proxy.close()
