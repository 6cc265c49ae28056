"""An edge's loop: it holds client connections for a core and does the per-client work.

Sockets, as a broker's towards clients (the same options, the same guard):

* ``router`` (ROUTER, CURVE with the chat's key): client requests in, frames out.
* ``publisher`` (XPUB, manual, in the publisher thread of ``broker/publisher.py``): room
  frames out to the clients on this edge; subscriptions granted only to live room topics,
  as the core tells them (schema/edge.py, TOPICS), with the same junk guard.
* ``core`` (DEALER, CURVE with this edge's own key, to the core's edge socket; connected
  to every core address given: only the active core binds, and ``IMMEDIATE`` sends only
  to a connection that is up).

Each turn: read the clients' requests (answering pings, malformed frames and floods here,
``clients.py``), hand the rest to the core in one link message, then pass on what the
core sent: frames to clients, room frames to the publisher. Sends never block: a client
that cannot take a frame is cut and the core told it is gone.
"""

from __future__ import annotations

import errno
import logging
import math
import time

import zmq

from broker.auth import CHAT, ZAP_ENDPOINT, answer
from broker.guard import Connections, raise_fd_limit
from broker.publisher import Publisher
from broker.server import MANY_FRAMES, PUBLISHER_QUEUE, ROUTER_QUEUE, STALL, Queued, tune
from schema import ProtocolError, decode, error, keys, pack
from schema import edge as E
from schema import protocol as P

from .clients import Answer, Clients, Relay

log = logging.getLogger("zchat.edge")

_MORE, _NOW, _SRCFD = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK), int(zmq.SRCFD)
BATCH = 512  # requests taken from clients per turn (also the link message's bound)
CORE_BATCH = 256  # link messages taken from the core per turn
EXPIRY_CHECK = 0.5


class Edge:
    def __init__(self, ctx: zmq.Context, *, core: list[str], bind: str, pub_bind: str,
                 secret_key: bytes | None, own_key: keys.KeyPair | None,
                 core_key: bytes | None):
        """``secret_key``: the chat's secret key (clients pin its public half), None for
        plaintext; ``own_key``: this edge's pair, admitted by the core; ``core_key``: the
        core's public key."""
        self.secure = secret_key is not None
        self.route_check = keys.RouteCheck(secret_key) if secret_key is not None else None
        self.clients = Clients()
        self.zap = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.SNDHWM, ROUTER_QUEUE)
        tune(self.router, P.FRAME_MAX, CHAT, secret_key)
        publisher = ctx.socket(zmq.XPUB)
        publisher.setsockopt(zmq.XPUB_MANUAL, 1)
        publisher.setsockopt(zmq.SNDHWM, PUBLISHER_QUEUE)
        tune(publisher, P.SUBSCRIPTION_FRAME_MAX, CHAT, secret_key)
        limit = raise_fd_limit()
        self.conns = Connections(limit=limit)
        self.conns.watch(self.router, "router")
        publisher_conns = Connections(limit=limit)
        publisher_conns.watch(publisher, "publisher")
        self._fd_of: dict[bytes, tuple[int, object]] = {}
        self._queued = Queued(self.conns.acked)
        self.core = ctx.socket(zmq.DEALER)
        self.core.setsockopt(zmq.LINGER, 0)
        self.core.setsockopt(zmq.IMMEDIATE, 1)
        self.core.setsockopt(zmq.SNDHWM, E.LINK_QUEUE)
        self.core.setsockopt(zmq.RCVHWM, E.LINK_QUEUE)
        self.core.setsockopt(zmq.RECONNECT_IVL, 100)
        self.core.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if core_key is not None:
            keys.curve_client(self.core, core_key, own_key)
        self.router.bind(bind)
        publisher.bind(pub_bind)
        for address in core:
            self.core.connect(address)
        self.endpoints = {"router": self.router.getsockopt_string(zmq.LAST_ENDPOINT),
                          "pub": publisher.getsockopt_string(zmq.LAST_ENDPOINT),
                          "core": ",".join(core)}
        self.live: set[bytes] = set()  # room topics the core says are live
        self.pub = Publisher(ctx, publisher, publisher_conns, self.live.__contains__)
        self.core_heard = -math.inf
        self.incarnation = ""
        self.stopping = False
        self._batch: list[bytes] = []  # this turn's requests for the core
        self._gone: list[bytes] = []  # and the clients lost

    def stop(self, *_: object) -> None:
        self.stopping = True

    def core_alive(self, now: float) -> bool:
        return now - self.core_heard < E.TIMEOUT

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        poller = zmq.Poller()
        for sock in (self.zap, self.router, self.core, *self.conns.monitors):
            poller.register(sock, zmq.POLLIN)
        self.pub.start()
        log.info("zchat edge ready: router=%s pub=%s core=%s", self.endpoints["router"],
                 self.endpoints["pub"], self.endpoints["core"])
        now = time.monotonic()
        next_hello = next_expiry = now
        mark = now
        while not self.stopping:
            wait = max(0.0, min(next_hello - now, next_expiry - now, self.conns.due()))
            try:
                ready = dict(poller.poll(math.ceil(wait * 1000)))
            except zmq.ZMQError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            now = time.monotonic()
            if now - mark - wait > STALL:  # the edge itself was away: pardon its clients
                self.clients.pardon(now - mark - wait)
            self.conns.drain()
            self.conns.check()
            if self.zap in ready:
                self._answer_zap()
            if self.router in ready:
                self._drain_clients(now)
            if self.core in ready:
                self._drain_core(now)
            if now >= next_expiry:
                for client in self.clients.silent(now):
                    self._lost(client, "timed out")
                if not self.pub.is_alive():
                    log.critical("The publisher thread is gone: stopping")
                    self.stopping = True
                next_expiry = now + EXPIRY_CHECK
            if now >= next_hello:
                self._to_core([E.HELLO, pack({"pub": self.endpoints["pub"]})])
                next_hello = now + E.HEARTBEAT
            self._flush()
            mark = now = time.monotonic()
        self._farewell()

    def _answer_zap(self) -> None:
        for _ in range(BATCH):
            verdict = answer(self.zap, secure=self.secure, operators=frozenset(),
                             crowded=self.conns.crowded())
            if verdict is None:
                return
            if not verdict.allowed:
                log.warning("Refused a connection: %s", verdict.reason)

    # -- clients --------------------------------------------------------------------------

    def _drain_clients(self, now: float) -> None:
        recv = self.router.recv
        alive = self.core_alive(now)
        for _ in range(BATCH):
            try:
                client = recv(_NOW)
            except zmq.Again:
                break
            body = recv(_NOW, copy=False)
            fd = body.get(_SRCFD)
            self.conns.seen(fd)
            self._fd_of[client] = (fd, self.conns.get(fd))
            if body.more:  # a request is one frame; more is no mistake but an attack
                frames = 1
                while self.router.get(zmq.RCVMORE):
                    recv(_NOW)
                    frames += 1
                if frames > MANY_FRAMES:
                    self.conns.cut(fd, f"a request of {frames} frames")
                self._answer(client, self.clients.request(client, b"\xc0", now, alive))
                continue
            frame = body.bytes
            verdict = self.clients.request(client, frame, now, alive)
            if not isinstance(verdict, Relay):
                self._answer(client, verdict)
                continue
            identity = (body.get("User-Id") or "") if self.secure else ""
            address = ""
            if verdict.hello:
                if self.route_check is not None and not self.route_check(client, identity):
                    self.clients.known[client].hello = None
                    self._answer(client, Answer(_bad_route(frame)))
                    continue
                address = body.get("Peer-Address") or ""
            self._batch += (client, identity.encode(), address.encode(), frame)
            if len(self._batch) >= 4 * E.REQUESTS_PER_MESSAGE:
                self._flush()

    def _answer(self, client: bytes, verdict: Answer | Relay | None) -> None:
        if isinstance(verdict, Answer):
            self._to_client(client, verdict.frame)

    def _to_client(self, client: bytes, frame: bytes) -> None:
        try:
            self.router.send(client, _MORE)
            self.router.send(frame, _NOW)
            reason = self._queued.sent(client, self._fd(client), len(frame))
        except zmq.ZMQError as exc:
            reason = "unreachable" if exc.errno == errno.EHOSTUNREACH else "not reading"
        if reason is not None:
            if reason != "unreachable":
                self.conns.cut(self._fd(client), reason)
            self._lost(client, reason)

    def _fd(self, client: bytes) -> int:
        fd, conn = self._fd_of.get(client, (-1, None))
        return fd if conn is not None and self.conns.get(fd) is conn else -1

    def _lost(self, client: bytes, reason: str) -> None:
        """The client is gone: forget it, and tell the core (its session ends)."""
        self.clients.forget(client)
        self._queued.forget(client)
        self._fd_of.pop(client, None)
        self._gone += (client, reason.encode())

    # -- the core -------------------------------------------------------------------------

    def _drain_core(self, now: float) -> None:
        for _ in range(CORE_BATCH):
            try:
                message = self.core.recv_multipart(_NOW)
            except zmq.Again:
                return
            kind, rest = message[0], message[1:]
            self.core_heard = now
            if kind == E.SEND:
                reply, pub = self.clients.reply, self.endpoints["pub"]
                for k in range(0, len(rest) - 1, 2):
                    client = rest[k]
                    if client in self.clients.known:
                        self._to_client(client, reply(client, rest[k + 1], pub))
            elif kind == E.ROOM and len(rest) == 2:
                self.pub.publish(rest[0], rest[1])
            elif kind == E.TOPICS and rest:
                if rest[0] == E.ALL:
                    self.live.clear()
                for k in range(1, len(rest) - 1, 2):
                    if rest[k + 1] == E.LIVE:
                        self.live.add(rest[k])
                    else:
                        self.live.discard(rest[k])
            elif kind == E.ALIVE and rest:
                incarnation = rest[0].decode(errors="replace")
                if incarnation != self.incarnation:
                    log.info("Core incarnation %s", incarnation)
                    self.incarnation = incarnation

    def _to_core(self, message: list[bytes]) -> bool:
        try:
            self.core.send_multipart(message, _NOW)
            return True
        except zmq.Again:  # no core connected, or it stopped reading: clients move on
            return False

    def _flush(self) -> None:
        if self._batch:
            if not self._to_core([E.REQUEST, *self._batch]):
                log.debug("No core: %d requests dropped", len(self._batch) // 4)
            self._batch = []
        if self._gone:
            self._to_core([E.GONE, *self._gone])  # (lost with no core: it forgot them)
            self._gone = []

    def _farewell(self) -> None:
        log.info("Shutting down")
        for client in list(self.clients.known):
            self._lost(client, "its edge shut down")
        self._flush()
        self.pub.stop()
        self.conns.close()
        for sock in (self.router, self.zap, self.core):
            sock.close()


def _bad_route(frame: bytes) -> bytes:
    return pack([error(decode(frame).id, ProtocolError(
        "bad_route", "Your routing id must be derived from your key (PROTOCOL.md, "
                     "routing ids)"))])
