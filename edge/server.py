"""An edge's loop: it holds client connections for a core and does the per-client work.

Sockets, as a broker's towards clients (the same options, the same guard):

* ``router`` (ROUTER, CURVE with the chat's key): client requests in, frames out.
* ``publisher`` (XPUB, manual, in the publisher thread of ``broker/publisher.py``): room
  frames out to the clients on this edge; subscriptions granted only to live room topics,
  as the core tells them (schema/edge.py, TOPICS), with the same junk guard.
* ``cores`` (a DEALER per core address given, CURVE with this edge's own key, to the
  cores' edge sockets): requests go to the core that greeted this edge last, hellos to
  all (only the active core binds; a frozen one keeps its connections open, and must get
  nothing). The client sockets are bound only once a core has greeted the edge.

Each turn: read the clients' requests (answering pings, malformed frames and floods here,
``clients.py``), hand the rest to the core in one link message, then pass on what the
core sent: frames to clients, room frames to the publisher. Sends never block: a client
that cannot take a frame is cut and the core told it is gone.

What waits on the link for the core is bounded in bytes (``LINK_BYTES``): the core shows
what it has read by answering each HELLO, which goes behind the requests relayed before
it. A core that stops reading (stopped, or far behind) fills that, and then, as when no
core is connected at all, requests are not relayed: the session of their client is
ended (the core told, the client answered ``no_session`` at its next ping), so that it
resumes and sends again what went unanswered, rather than waits for an answer that never
comes. Pings are still answered here while the core is heard.
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
from broker.server import PUBLISHER_QUEUE, ROUTER_QUEUE, STALL, Queued, tune
from schema import ProtocolError, decode, error, keys, pack
from schema import edge as E
from schema import protocol as P

from .clients import Answer, Clients, Relay
from .link import Link

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
        self._queued = Queued(self.conns.acked)  # (-1, no connection known: None)
        # One DEALER per core address. Only the active core binds, but a frozen one keeps
        # its connection open: one DEALER for all would share requests between them.
        # Requests go to the core that greeted this edge last (TOPICS all: a core that
        # did not know it), hellos to every one, to be greeted by a new one at once.
        self.cores: list[zmq.Socket] = []
        for _ in core:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, E.LINK_QUEUE)
            sock.setsockopt(zmq.RCVHWM, E.LINK_QUEUE)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if core_key is not None:
                keys.curve_client(sock, core_key, own_key)
            self.cores.append(sock)
        self.core = self.cores[0]  # the one in use
        # A connection to a core that drops loses what was on it, both ways, though
        # libzmq dials again under the same routing id and the core takes it for the
        # same edge. So a drop is watched for, and told: the next hellos carry a new
        # ``reset`` number, and the core ends the sessions it held through this edge
        # and greets it anew; the clients, told no_session at their next ping, resume.
        self._drops = {sock.get_monitor_socket(zmq.EVENT_DISCONNECTED): sock
                       for sock in self.cores}
        self._reset = 0
        for address, sock in zip(core, self.cores, strict=True):
            sock.connect(address)
        self._binds = (bind, pub_bind)
        self._publisher = publisher
        self.endpoints = {"router": "", "pub": "", "core": ",".join(core)}
        self.live: set[bytes] = set()  # room topics the core says are live
        self.pub = Publisher(ctx, publisher, publisher_conns, self.live.__contains__)
        self.core_heard = -math.inf
        self.incarnation = ""
        self.stopping = False
        self._batch: list[bytes] = []  # this turn's requests for the core
        self._batch_bytes = 0
        self._gone: list[bytes] = []  # and the clients lost
        self.link = Link()  # the bytes relayed to the core, and what it has read of them

    def stop(self, *_: object) -> None:
        self.stopping = True

    def core_alive(self, now: float) -> bool:
        return now - self.core_heard < E.TIMEOUT

    def relaying(self) -> bool:
        """Requests go to the core while it has read all but LINK_BYTES of the link."""
        return self.link.relaying(self._batch_bytes)

    # -- the loop -------------------------------------------------------------------------

    def wait_for_core(self) -> bool:
        """Until a core greets this edge (False if stopped first). Clients cannot connect
        before: an edge that cannot relay a hello is no edge to them (they try the next
        address), rather than one that answers nothing."""
        log.info("Waiting for a core at %s", self.endpoints["core"])
        poller = zmq.Poller()
        for sock in self.cores:
            poller.register(sock, zmq.POLLIN)
        hello = [E.HELLO, pack({"pub": ""})]
        while not self.stopping and self.core_heard == -math.inf:
            for sock in self.cores:
                _send(sock, hello)
            for sock in dict(poller.poll(100)):
                self._drain_core(sock, time.monotonic())
        return not self.stopping

    def open(self) -> None:
        """Bind the clients' sockets (ZMQError if an address is taken)."""
        bind, pub_bind = self._binds
        self.router.bind(bind)
        self._publisher.bind(pub_bind)
        self.endpoints["router"] = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.endpoints["pub"] = self._publisher.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self) -> None:
        poller = zmq.Poller()
        for sock in (self.zap, self.router, *self.cores, *self.conns.monitors,
                     *self._drops):
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
            for client in self.conns.stalled_peers():
                self._lost(client, "not reading")
            self._flush()  # (their ends go before any new hello read below: never after)
            if self.zap in ready:
                self._answer_zap()
            if self.router in ready:
                self._drain_clients(now)
            for sock in self.cores:
                if sock in ready:
                    self._drain_core(sock, now)
            for monitor, sock in self._drops.items():
                if monitor in ready:
                    self._dropped(monitor, sock)
            if now >= next_expiry:
                for client in self.clients.silent(now):
                    self._lost(client, "timed out")
                if not self.pub.is_alive():
                    log.critical("The publisher thread is gone: stopping")
                    self.stopping = True
                next_expiry = now + EXPIRY_CHECK
            self._flush()
            # A HELLO each heartbeat, and after each eighth of LINK_BYTES relayed: its
            # answer tells how much of what waits on the link the core has read.
            if now >= next_hello or self.link.hello_due():
                hello = [E.HELLO, pack({"pub": self.endpoints["pub"], "reset": self._reset,
                                        "mark": self.link.relayed})]
                for sock in self.cores:  # a core in waiting greets us once it serves
                    if sock is not self.core:
                        _send(sock, hello)
                if self._to_core(hello):
                    self.link.hello_sent()
                    next_hello = now + E.HEARTBEAT
                else:  # no core connected yet: as soon as one is
                    next_hello = now + 0.1
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
            self.conns.came_from(client, fd)
            if body.more:  # a request is one frame
                self.conns.drop_rest(self.router, fd)
                self._answer(client, self.clients.refuse(client, ProtocolError(
                    "malformed", "A request is exactly one frame"), now))
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
                    rid = decode(frame).id  # (it decoded: it was relayed)
                    self.clients.hello_refused(client, rid)
                    self._answer(client, Answer(_bad_route(rid)))
                    continue
                address = body.get("Peer-Address") or ""
            if not self.relaying():  # the core is not reading: it ends here
                self._unrelayed(client)
                continue
            self._batch += (client, identity.encode(), address.encode(), frame)
            self._batch_bytes += len(frame) + len(client) + 64
            if len(self._batch) >= 4 * E.REQUESTS_PER_MESSAGE:
                self._flush()

    def _answer(self, client: bytes, verdict: Answer | Relay | None) -> None:
        if isinstance(verdict, Answer):
            self._to_client(client, verdict.frame)

    def _to_client(self, client: bytes, frame: bytes) -> None:
        try:
            self.router.send(client, _MORE)
            self.router.send(frame, _NOW)
            reason = self._queued.sent(client, self.conns.fd_of(client), len(frame))
        except zmq.ZMQError as exc:
            reason = "unreachable" if exc.errno == errno.EHOSTUNREACH else "not reading"
        if reason is not None:
            if reason != "unreachable":
                self.conns.cut(self.conns.fd_of(client), reason)
            self._lost(client, reason)

    def _lost(self, client: bytes, reason: str) -> None:
        """The client is gone: forget it, and tell the core (its session ends)."""
        self.clients.forget(client)
        self._queued.forget(client)
        self.conns.forget_peer(client)
        self._gone += (client, reason.encode())

    def _unrelayed(self, client: bytes) -> None:
        """A request of this client cannot go to the core: its session ends (see above)."""
        if self.clients.unrelayed(client):
            self._gone += (client, UNRELAYED)

    # -- the core -------------------------------------------------------------------------

    def _drain_core(self, sock: zmq.Socket, now: float) -> None:
        for _ in range(CORE_BATCH):
            try:
                message = sock.recv_multipart(_NOW)
            except zmq.Again:
                return
            kind, rest = message[0], message[1:]
            if sock is not self.core:
                if kind != E.TOPICS or not rest or rest[0] != E.ALL:
                    continue  # (a core this edge left: nothing it says counts)
                log.info("Core at %s greets this edge: it serves now",
                         sock.getsockopt_string(zmq.LAST_ENDPOINT))
                self.core = sock
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
                pairs = [(rest[k], rest[k + 1] == E.LIVE) for k in range(1, len(rest) - 1, 2)]
                if rest[0] == E.ALL:
                    # The core knew nothing of this edge: a new core, or it lost this
                    # edge and ended the sessions it held. The set changes in place (the
                    # publisher thread reads it): no live topic is ever missing from it.
                    self.live.intersection_update(t for t, live in pairs if live)
                    self.clients.sessions_ended()
                    # What went to a core before it knew this edge is not waited for
                    # (a killed core's is gone): count from here.
                    self.link.forget()
                for topic, live in pairs:
                    if live:
                        self.live.add(topic)
                    else:
                        self.live.discard(topic)
            elif kind == E.ENDED:
                for client in rest:
                    self.clients.session_ended(client)
            elif kind == E.ALIVE and rest:
                self.link.alive(rest[1] if len(rest) > 1 else None)
                incarnation = rest[0].decode(errors="replace")
                if incarnation != self.incarnation:
                    log.info("Core incarnation %s", incarnation)
                    self.incarnation = incarnation

    def _dropped(self, monitor: zmq.Socket, sock: zmq.Socket) -> None:
        while monitor.poll(0):
            monitor.recv_multipart()  # (EVENT_DISCONNECTED: which one does not matter)
            if sock is self.core:
                log.warning("The link to the core dropped: its clients' sessions end")
                self.clients.sessions_ended()
                self.link.forget()
                self._reset += 1

    def _to_core(self, message: list[bytes]) -> bool:
        return _send(self.core, message)

    def _flush(self) -> None:
        if self._batch:
            if self._to_core([E.REQUEST, *self._batch]):
                self.link.sent(self._batch_bytes)
            else:  # their clients are told their sessions ended, and send them again
                log.debug("No core: %d requests dropped", len(self._batch) // 4)
                for k in range(0, len(self._batch), 4):
                    self._unrelayed(self._batch[k])
            self._batch, self._batch_bytes = [], 0
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
        for sock in self.cores:
            sock.disable_monitor()
        for sock in (self.router, self.zap, *self.cores, *self._drops):
            sock.close()


UNRELAYED = b"its edge could not reach the core"


def _send(sock: zmq.Socket, message: list[bytes]) -> bool:
    try:
        sock.send_multipart(message, _NOW)
        return True
    except zmq.Again:  # no core connected there, or it stopped reading: clients move on
        return False


def _bad_route(rid: int | None) -> bytes:
    return pack([error(rid, ProtocolError(
        "bad_route", "Your routing id must be derived from your key (PROTOCOL.md, "
                     "routing ids)"))])
