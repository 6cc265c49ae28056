"""The broker's ZeroMQ loop: receive, decode, ask the chat, commit, deliver.

One loop thread, three sockets:

* ``router`` (ROUTER): client requests in; replies, private messages and notices out.
* ``publisher`` (XPUB, manual): room events out; subscriptions in, each granted only if
  it names a live room topic. It lives in a thread of its own (``publisher.py``), since
  libzmq's cost of a subscriber leaving must never stall this loop.
* ``control`` (ROUTER, answering the admin tool's REQ): operator commands.
* ``edges`` (ROUTER, optional): edges that hold clients for this core (``edges.py``).

Beside them, the guard (``guard.py``) knows the TCP connection behind each message and
cuts those that would pin memory or descriptors before anything reaches this loop.

Each turn drains what is ready, commits the store once, then sends: one frame per room
and one per client (an array of that turn's messages), since CURVE, TCP and waking a
peer cost per frame, not per message. Sends never block: a peer that cannot take a
frame is ended, never waited for.

The commit comes first even in a turn that wrote nothing: a store several cores share
(PostgreSQL) answers it with a round trip proving this core still holds it, or raises
Fenced, and then nothing more leaves this process (fencing; see broker/postgres.py).
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable, Container, Iterable, Iterator, Set

import zmq

from schema import ProtocolError, decode, decode_admin, error, pack
from schema import edge as E
from schema import protocol as P

from .auth import CHAT, CONTROL, EDGE, ZAP_ENDPOINT, answer
from .chat import Chat, Delivery, Peer, Publish, Room
from .edges import Edges
from .guard import Connections, raise_fd_limit
from .publisher import Publisher
from .store import Fenced, StoreError

log = logging.getLogger("zchat.broker")

BATCH = 512  # messages taken from one socket per turn, so no socket starves the others
FRAME_MESSAGES = 100  # messages in one frame at most...
FRAME_BYTES = 128 << 10  # ...and bytes, unless it is a single message (a history page)
# Frames queued for one peer that is not reading. What a subscriber misses it catches up
# by seq, so its queue can be short; a client's replies and private messages cannot be
# refetched, and a client whose queue is full is ended ("not reading").
ROUTER_QUEUE, PUBLISHER_QUEUE = 1000, 1000
PEER_QUEUE_BYTES = 8 << 20  # bytes queued for a client that reads nothing (see Queued)...
PEER_QUEUE_MAX = 64 << 20  # ...or for one that reads, but slower than it is sent to
ALL_QUEUES_BYTES = 512 << 20  # ...and for all of them
# pyzmq's flag enums cost more to combine than the send itself: plain ints.
_MORE, _NOW = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)
_SRCFD = int(zmq.SRCFD)
EXPIRY_CHECK = 0.5  # seconds between scans for silent clients (and looks at the store)
# The loop away longer than this (the process stopped, or one long turn) is the broker's
# own silence: clients' silence during it is pardoned.
STALL = 0.25


def tune(sock: zmq.Socket, max_frame: int, domain: bytes, secret_key: bytes | None) -> None:
    sock.setsockopt(zmq.LINGER, 500)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
    # Liveness is the clients' pings (a silent session ends after PEER_TIMEOUT), not ZMTP
    # heartbeats: with thousands of clients those cost the I/O thread more than the chat.
    # The kernel's keepalive reaps the connections of hosts that vanished without a FIN.
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    # Every connection is put to our ZAP handler, and refused if it does not answer.
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    if secret_key is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret_key)


class Broker:
    def __init__(self, chat: Chat, ctx: zmq.Context, *, bind: str, pub_bind: str,
                 control_bind: str, secret_key: bytes | None = None,
                 operators: Set[bytes] = frozenset(), edge_bind: str | None = None,
                 edge_keys: Set[bytes] = frozenset()):
        """``secret_key`` (z85) turns on CURVE on every socket; None means plaintext.
        ``edge_bind``: where edges connect (only ``edge_keys`` are let in)."""
        self.chat = chat
        self.secure = secret_key is not None
        self.operators = operators
        self.edge_keys = edge_keys
        # The authenticator must be listening before any socket can take a connection.
        self.zap = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown peer: an error, not silence
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client takes over
        self.router.setsockopt(zmq.SNDHWM, ROUTER_QUEUE)
        tune(self.router, P.FRAME_MAX, CHAT, secret_key)
        self.publisher = ctx.socket(zmq.XPUB)
        self.publisher.setsockopt(zmq.XPUB_MANUAL, 1)
        self.publisher.setsockopt(zmq.SNDHWM, PUBLISHER_QUEUE)
        tune(self.publisher, P.SUBSCRIPTION_FRAME_MAX, CHAT, secret_key)
        self.control = ctx.socket(zmq.ROUTER)
        tune(self.control, P.CONTROL_FRAME_MAX, CONTROL, secret_key)
        self.edge_sock: zmq.Socket | None = None
        if edge_bind is not None:
            self.edge_sock = ctx.socket(zmq.ROUTER)
            self.edge_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.edge_sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # an edge that reconnects
            for option in (zmq.SNDHWM, zmq.RCVHWM):
                self.edge_sock.setsockopt(option, E.LINK_QUEUE)
            # A link message is a turn's requests: each frame is at most a client's.
            tune(self.edge_sock, P.FRAME_MAX, EDGE, secret_key)
        # The connections behind the sockets, which libzmq hides: watched from before the
        # first one arrives, so that any can be cut (see guard.py).
        limit = raise_fd_limit()
        self.conns = Connections(limit=limit)
        self.conns.watch(self.router, "router")
        self._queued = Queued(self.conns.acked)
        publisher_conns = Connections(limit=limit)  # the publisher thread's own
        publisher_conns.watch(self.publisher, "publisher")
        self.router.bind(bind)
        self.publisher.bind(pub_bind)
        self.control.bind(control_bind)
        named = [("router", self.router), ("pub", self.publisher), ("control", self.control)]
        if self.edge_sock is not None:
            self.edge_sock.bind(edge_bind)
            named.append(("edges", self.edge_sock))
        self.endpoints = {name: sock.getsockopt_string(zmq.LAST_ENDPOINT)
                          for name, sock in named}
        self.edges = Edges(self.edge_sock, chat, secure=self.secure) \
            if self.edge_sock is not None else None
        chat.pub_address = self.endpoints["pub"]
        self.pub = Publisher(ctx, self.publisher, publisher_conns, chat.grants)
        self.stopping = False
        self.fenced: str | None = None  # why this core stopped sending, if it was fenced

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until stopped, then tell the clients. Or until the store turns out to be
        held by another core (Fenced): then stop without sending anything more, and say
        why in ``fenced``."""
        try:
            self._loop()
        except Fenced as exc:
            self._fence(exc)
        self._farewell()

    def _fence(self, exc: Fenced) -> None:
        self.fenced = str(exc)
        log.critical("FENCED: %s. This core sends nothing more.", exc)

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in (self.zap, self.router, self.control, *self.conns.monitors):
            poller.register(sock, zmq.POLLIN)
        if self.edge_sock is not None:
            poller.register(self.edge_sock, zmq.POLLIN)
        self.pub.start()
        now = time.monotonic()
        next_tick, next_expiry = now + P.ROOM_TICK_INTERVAL, now + EXPIRY_CHECK
        edges = f" edges={self.endpoints['edges']}" if self.edges is not None else ""
        log.info("zchat broker ready: router=%s pub=%s control=%s%s", self.endpoints["router"],
                 self.endpoints["pub"], self.endpoints["control"], edges)
        turn_ended = self._mark = time.monotonic()
        while not self.stopping:
            # Bounded by the guard's next look: an endless message wakes nothing here.
            wait = max(0.0, min(next_tick - turn_ended, next_expiry - turn_ended,
                                self.conns.due()))
            try:
                # Rounded up: pyzmq truncates a fraction of a millisecond to 0, a busy spin.
                ready = dict(poller.poll(math.ceil(wait * 1000)))
            except zmq.ZMQError as exc:
                if exc.errno == errno.EINTR:  # a signal; the handler set self.stopping
                    continue
                raise
            self._unavailable(allowed=wait)
            out: list[Delivery] = []
            control_replies: list[tuple[list[bytes], dict]] = []
            self.conns.drain()
            self.conns.check()
            for peer in self.conns.stalled_peers():
                self._queued.forget(peer)
                out += self.chat.gone(peer, "not reading")
            if self.zap in ready:
                self._answer_zap()
            if self.router in ready:
                out += self._drain_requests()
            if self.edges is not None and self.edge_sock in ready:
                out += self.edges.drain()
            if self.control in ready:
                control_replies = self._drain_control(out)
            now = time.monotonic()
            if now >= next_expiry:
                self._unavailable()  # a stall of this turn must not count against anyone
                if not self.pub.is_alive():
                    log.critical("The publisher thread is gone: stopping")
                    self.stopping = True
                self.chat.store.check()
                out += self.chat.expire()
                if self.edges is not None:
                    out += self.edges.expire()
                self._forget_gone()
                next_expiry = now + EXPIRY_CHECK
            if now >= next_tick:
                out += self.chat.ticks()
                next_tick = now + P.ROOM_TICK_INTERVAL
            # Accepted means stored: nothing leaves before the turn's writes are committed.
            out = self._commit(out, control_replies)
            self._deliver(out)
            for envelope, reply in control_replies:
                self.control.send_multipart(envelope + [pack(reply)], zmq.NOBLOCK)
            self._unavailable()
            turn_ended = self._mark

    def _forget_gone(self) -> None:
        """What was kept about peers that are gone."""
        self.conns.keep_peers(self.chat.sessions, 2 * len(self.chat.sessions) + 1000)
        self._queued.keep(self.chat.sessions)

    def _unavailable(self, allowed: float = 0.0) -> None:
        """Pardon clients for the time since the last mark that the loop was away (past
        ``allowed``: the poll's own wait): a stopped process, a long turn."""
        now = time.monotonic()
        away = now - self._mark - allowed
        self._mark = now
        if away > STALL:
            log.warning("The broker was away %.1f s; clients' silence then is pardoned",
                        away)
            self.chat.pardon(away)
            if self.edges is not None:
                self.edges.pardon(away)

    def _commit(self, out: list[Delivery], control: list[tuple[list[bytes], dict]]
                ) -> list[Delivery]:
        """Commit the turn; if the store refuses it, send only what did not depend on it.
        A turn that wrote nothing commits too: for a store shared by several cores, that
        is the round trip proving this one still holds it (broker/postgres.py)."""
        try:
            self.chat.store.commit()
        except Fenced:
            raise  # nothing of the turn goes out, nor of any turn after it
        except StoreError as exc:
            log.critical("STORE: a commit failed, the turn's writes are lost and were "
                         "never acknowledged: %s", exc)
            for k, (envelope, reply) in enumerate(control):
                if reply.pop("wrote", False):
                    control[k] = (envelope, error(reply["re"], ProtocolError(
                        "store_unavailable", f"History cannot be written now ({exc})")))
            return self.chat.commit_failed(out, str(exc))
        self.chat.committed()
        for _, reply in control:
            reply.pop("wrote", None)
        return out

    def stop(self, *_: object) -> None:
        self.stopping = True

    # -- receiving ------------------------------------------------------------------------

    def _crowded(self) -> bool:
        """So few descriptors are left (the publisher's connections count too) that only
        operators are let in. Connections that hold one without a handshake are cut long
        before (the guard, past ``reserve``); these are peers that did finish theirs, so
        they are refused only for the last quarter of the reserve."""
        c = self.conns
        return len(c) + len(self.pub.conns) > c.limit - c.reserve // 4

    def _answer_zap(self) -> None:
        for _ in range(BATCH):
            # Near the descriptor limit, chat peers wait and operators still get in.
            verdict = answer(self.zap, secure=self.secure, operators=self.operators,
                             edges=self.edge_keys, crowded=self._crowded())
            if verdict is None:
                return
            if not verdict.allowed:
                log.warning("Refused a connection: %s", verdict.reason)

    def _drain_requests(self) -> list[Delivery]:
        out: list[Delivery] = []
        recv = self.router.recv  # frame by frame: recv_multipart costs twice as much
        for _ in range(BATCH):
            try:
                peer = recv(_NOW)
            except zmq.Again:
                break
            # A message comes whole, so the request frame is there: the ROUTER put the
            # routing id in front of at least one frame.
            body = recv(_NOW, copy=False)
            fd = body.get(_SRCFD)
            self.conns.seen(fd)
            self.conns.came_from(peer, fd)
            self.chat.counters.frames_in += 1
            try:
                if body.more:
                    self.conns.drop_rest(self.router, fd)
                    raise ProtocolError("malformed", "A request is exactly one frame")
                # Who sent it is what CURVE proved at connect time, never the routing id.
                identity = body.get("User-Id") or None if self.secure else None
                address = "" if peer in self.chat.sessions else body.get("Peer-Address")
                out += self.chat.handle(peer, decode(body.bytes), identity, address)
            except ProtocolError as err:
                out += self.chat.refuse(peer, err.rid, err)
        return out

    def _drain_control(self, out: list[Delivery]) -> list[tuple[list[bytes], dict]]:
        """Operator requests; their replies go out after the turn's commit (one that
        wrote to the store is marked, to become an error if the commit fails)."""
        replies = []
        for _ in range(BATCH):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            # A REQ peer sends [routing id, empty delimiter, body]; anything else is no REQ.
            if len(frames) != 3 or frames[1]:
                log.warning("Control socket: dropped a message that is not a REQ request")
                continue
            envelope, body = frames[:2], frames[2]
            try:
                request = decode_admin(body)
            except ProtocolError as err:
                reply = error(err.rid, err)
            else:
                log.info("Operator: %s %s", request.cmd,
                         " ".join(f"{k}={v}" for k, v in request.args.items() if v))
                writes = self.chat.store.writes
                reply, deliveries = self.chat.admin(request)
                reply["wrote"] = self.chat.store.writes != writes
                out += deliveries
            replies.append((envelope, reply))
        return replies

    # -- sending --------------------------------------------------------------------------

    def _deliver(self, deliveries: Iterable[Delivery]) -> None:
        """Send a turn's deliveries: each room's events in one frame, each client's
        replies and private messages in one frame (more only past the frame bounds),
        in the order they were made. Sends never block."""
        pending = list(deliveries)
        edges = self.edges
        while True:
            if edges is not None:  # what they grant changes before any frame names it
                for edge in edges.before_frames(self.chat.topic_changes,
                                                self.chat.ended_behind_edges):
                    pending += self._edge_behind(edge)
            self.chat.topic_changes.clear()
            self.chat.ended_behind_edges.clear()
            if not pending:
                return
            rooms: dict[bytes, tuple[Room | None, list[Delivery]]] = {}
            clients: dict[Peer, list[Delivery]] = {}
            for item in pending:
                if isinstance(item, Publish):
                    # (setdefault would build a tuple and a list for every event)
                    entry = rooms.get(item.topic)
                    if entry is None:
                        entry = rooms[item.topic] = (item.room, [])
                    entry[1].append(item)
                else:
                    clients.setdefault(item.peer, []).append(item)
            pending = []
            for topic, (room, events) in rooms.items():
                # A room whose members are all behind edges has no subscriber here (only
                # members are told its topic): its frames go to the edges alone.
                via_edges = edges is not None and room is not None and bool(room.edges)
                here = not via_edges or len(room.members) > sum(room.edges.values())
                for frame in _frames(_encoded(events)):
                    if here:
                        self.chat.counters.frames_out += self.pub.publish(topic, frame)
                    if via_edges:
                        self.chat.counters.frames_out += edges.room(room.edges, topic, frame)
            by_edge: dict[bytes, list[bytes]] = {}
            for peer, messages in clients.items():
                if type(peer) is tuple:  # behind an edge: one link message per edge
                    frames = by_edge.setdefault(peer[0], [])
                    for frame in _frames(_encoded(messages)):
                        frames += (peer[1], frame)
                    continue
                for frame in _frames(_encoded(messages)):
                    try:
                        self.router.send(peer, _MORE)
                        self.router.send(frame, _NOW)
                        self.chat.counters.frames_out += 1
                        reason = self._queued.sent(peer, self.conns.fd_of(peer), len(frame))
                    except zmq.ZMQError as exc:
                        # EHOSTUNREACH: the peer is gone. EAGAIN: its queue is full because
                        # it stopped reading; waiting would stall every other client: end it.
                        reason = ("unreachable" if exc.errno == errno.EHOSTUNREACH
                                  else "not reading")
                    if reason is not None:
                        if reason != "unreachable":  # what is queued goes with it
                            self.conns.cut(self.conns.fd_of(peer), reason)
                        self._queued.forget(peer)
                        if peer in self.chat.sessions:
                            pending += self._commit(self.chat.gone(peer, reason), [])
                        break
            for edge, frames in by_edge.items():
                assert edges is not None
                if edges.send(edge, frames):
                    self.chat.counters.frames_out += len(frames) // 2
                else:  # gone, or so far behind that its queue is full: its clients resume
                    pending += self._edge_behind(edge)
            for edge in edges.behind() if edges is not None else ():
                pending += self._edge_behind(edge)

    def _edge_behind(self, edge: bytes) -> list[Delivery]:
        """An edge that cannot take what it is sent (its queue full, or unread past its
        bound): lost, and its connection cut; what that ends, committed."""
        assert self.edges is not None
        return self._commit(self.edges.lose(edge, "its edge is not reading", cut=True), [])

    def _farewell(self) -> None:
        if self.fenced is None:
            log.info("Shutting down")
            notices = self.chat.shutdown("the broker is shutting down")
            try:  # sent as any turn's deliveries are: once the store says we still hold it
                self._deliver(self._commit(notices, []))
            except Fenced as exc:
                self._fence(exc)
        self.chat.store.close()
        self.pub.stop()  # it closes the publisher socket
        self.conns.close()
        for sock in (self.router, self.control, self.zap, self.edge_sock):
            if sock is not None:
                sock.close()


def _encoded(deliveries: list[Delivery]) -> Iterator[bytes]:
    """Each delivery's body as it was packed, or packed now: as its frame is made, so a
    turn's big history pages are not all packed at once beside their maps."""
    return (d.packed or pack(d.body) for d in deliveries)


def _frames(messages: Iterable[bytes]) -> Iterator[bytes]:
    """One peer's (or room's) packed messages of a turn in frames within the bounds, so a
    peer that stops reading is ended before its queue holds much more than histories.

    A frame is a msgpack array, whose encoding is its length's header followed by its
    items' own: a frame is made of the messages as each was packed, once."""
    part: list[bytes] = []
    size = 0
    for message in messages:
        if part and (len(part) == FRAME_MESSAGES or size + len(message) > _FRAME_ITEMS_BYTES):
            yield _array(part)
            part, size = [], 0
        part.append(message)
        size += len(message)
    if part:
        yield _array(part)


_FRAME_ITEMS_BYTES = FRAME_BYTES - 3  # an array header of up to 65,535 items is 3 bytes
assert FRAME_MESSAGES < 1 << 16  # what _array's headers (fixarray, array 16) can count


def _array(items: list[bytes]) -> bytes:
    n = len(items)
    header = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return header + b"".join(items)


class Queued:
    """Bytes queued for each client, bounded in bytes and not only in frames.

    libzmq counts a peer's queue in frames (SNDHWM), and a frame can be a history page
    of a quarter of a megabyte. So the loop counts the bytes it hands each peer and, past
    PEER_QUEUE_BYTES since it last looked, asks the kernel how much that peer has
    acknowledged (TCP_INFO, a few µs: done only that rarely). What is not acknowledged
    is still queued, in libzmq or the kernel. A peer over the bound that acknowledged
    nothing since the last look is not reading; one that reads, slowly (a laptop on a
    slow link, sent much at once by others), may hold up to PEER_QUEUE_MAX. Past that it
    is ended and its connection cut, which frees what it held. All peers together are
    bounded the same way by ALL_QUEUES_BYTES.
    """

    def __init__(self, acked: Callable[[int], int | None]):
        self._acked = acked
        self._peers: dict[bytes, list[int]] = {}  # peer -> [since base, acked at base, fd]
        self._total = 0  # of the bytes since base: at least what is queued in all

    def sent(self, peer: bytes, fd: int, size: int) -> str | None:
        """Count a frame sent; the reason to end the peer, if it must go."""
        track = self._peers.get(peer)
        if track is None or track[2] != fd:  # a new connection: count from its start
            self.forget(peer)
            track = self._peers[peer] = [0, self._acked(fd) or 0, fd]
        track[0] += size
        self._total += size
        if track[0] > PEER_QUEUE_BYTES:
            before = track[1]
            queued = self._rebase(track)
            if queued > PEER_QUEUE_MAX or (queued > PEER_QUEUE_BYTES and track[1] == before):
                return "not reading (its queue is full)"
        if self._total > ALL_QUEUES_BYTES:
            for other in self._peers.values():  # rare: look at what all really hold
                self._rebase(other)
            if self._total > ALL_QUEUES_BYTES and track[0] > PEER_QUEUE_BYTES // 4:
                return "not reading (the broker's queues are full)"
        return None

    def _rebase(self, track: list[int]) -> int:
        """What is still queued for this peer, as the kernel tells; it becomes the base."""
        acked = self._acked(track[2])
        if acked is None:  # not TCP (ipc): nothing to ask, trust libzmq's frame bound
            acked = track[1] + track[0]
        queued = max(0, track[0] - (acked - track[1]))
        self._total -= track[0] - queued
        track[0], track[1] = queued, acked
        return queued

    def forget(self, peer: bytes) -> None:
        track = self._peers.pop(peer, None)
        if track is not None:
            self._total -= track[0]

    def keep(self, peers: Container[bytes]) -> None:
        for peer in [p for p in self._peers if p not in peers]:
            self.forget(peer)
