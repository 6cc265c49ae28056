"""The core's side of its edges: one ROUTER that edges connect to (schema/edge.py).

An edge holds clients and relays their requests here; the chat handles them as any
client's, under the peer ``(edge, client)``. What the chat sends to such a peer goes back
through its edge, one link message per edge per turn, and a room's frame goes once to
each edge that has members in the room (``Room.edges``), which publishes it to its own
subscribers. Before any of a turn's frames, each edge is told the room topics that
became live or dead: it grants its clients' subscriptions from that set, as the core's
publisher grants from the chat's.

An edge silent for ``TIMEOUT`` (it answers its clients' pings itself, so the chat cannot
time them out) is lost: the sessions it held end, and its clients resume on another.

Nothing goes to an edge before the turn's commit, not even the answer to its hello: a
core that lost the store's lock (frozen, then thawed) must tell no edge that it is alive,
nor which topics are live (fencing, as for clients: broker/postgres.py).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import zmq

from schema import ProtocolError, decode, unpack
from schema import edge as E

from . import guard
from .chat import Chat, Delivery

log = logging.getLogger("zchat.broker")

_MORE, _NOW, _SRCFD = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK), int(zmq.SRCFD)
BATCH = 256  # link messages taken per turn (each up to REQUESTS_PER_MESSAGE requests)


class Edges:
    def __init__(self, sock: zmq.Socket, chat: Chat, *, secure: bool,
                 clock: Callable[[], float] = time.monotonic):
        """``sock``: the bound edge ROUTER."""
        self.sock, self.chat, self.secure, self.clock = sock, chat, secure, clock
        self.heard: dict[bytes, float] = {}  # edge -> when it was last heard
        self.frames_in = 0
        self._new: list[bytes] = []  # edges first heard this turn: told every live topic
        self._hellos: dict[bytes, int] = {}  # edges whose hello this turn answers: its mark
        self._resets: dict[bytes, int] = {}  # edge -> the link drops it has told of
        self._backlog: dict[bytes, Backlog] = {}  # edge -> what it has not read
        self._behind: list[bytes] = []  # edges that could not take a room frame this turn

    def __bool__(self) -> bool:
        return bool(self.heard)

    # -- in -------------------------------------------------------------------------------

    def drain(self) -> list[Delivery]:
        """What the edges sent since the last turn, handled: the deliveries it made."""
        out: list[Delivery] = []
        taken = 0  # requests and losses, from all edges: at most REQUESTS_PER_TURN
        for _ in range(BATCH):
            if taken >= E.REQUESTS_PER_TURN:
                break
            try:
                parts = self.sock.recv_multipart(_NOW, copy=False)
            except zmq.Again:
                break
            frames = [part.bytes for part in parts]
            edge, kind, rest = frames[0], frames[1] if len(frames) > 1 else b"", frames[2:]
            if edge not in self.heard:
                log.info("Edge %s connected (%d edges)", edge.hex(), len(self.heard) + 1)
                self._new.append(edge)
            self.heard[edge] = self.clock()
            self._connection(edge, parts[-1])
            if kind == E.REQUEST and len(rest) % 4 == 0 and \
                    len(rest) <= 4 * E.REQUESTS_PER_MESSAGE:
                out += self._requests(edge, rest)
                taken += len(rest) // 4
            elif kind == E.GONE and len(rest) % 2 == 0:
                taken += len(rest) // 2
                for k in range(0, len(rest), 2):
                    out += self.chat.gone((edge, rest[k]), rest[k + 1].decode(errors="replace"))
            elif kind == E.HELLO:
                info = _hello_info(rest)
                out += self._reset(edge, info.get("reset", 0))
                out += self._reading(edge)
                mark = info.get("mark", 0)
                self._hellos[edge] = mark if isinstance(mark, int) else 0
            else:
                log.warning("Edge %s: dropped a link message of kind %r", edge.hex(), kind)
        return out

    def _requests(self, edge: bytes, rest: Sequence[bytes]) -> list[Delivery]:
        out: list[Delivery] = []
        handle, refuse = self.chat.handle, self.chat.refuse
        for k in range(0, len(rest), 4):
            client, key, address, body = rest[k:k + 4]
            peer = (edge, client)
            self.frames_in += 1
            try:
                identity = key.decode() or None if self.secure else None
                out += handle(peer, decode(body), identity, address.decode())
            except ProtocolError as err:
                out += refuse(peer, err.rid, err)
            except UnicodeDecodeError:
                out += refuse(peer, None, ProtocolError("malformed", "Not UTF-8"))
        return out

    def _reset(self, edge: bytes, reset: object) -> list[Delivery]:
        """A hello telling of a new drop of the edge's link: what was on the link is
        lost, so the sessions through it end and the edge is greeted anew."""
        if not isinstance(reset, int) or reset <= self._resets.get(edge, 0):
            return []
        self._resets[edge] = reset
        if edge in self._new:  # (new this turn: greeted anyway)
            return []
        out = self.lose(edge, "its edge's link to the core dropped")
        self.heard[edge] = self.clock()
        self._new.append(edge)
        return out

    def _connection(self, edge: bytes, frame: zmq.Frame) -> None:
        """Its messages come on the connection that ``frame`` came on: what it is handed
        is counted from there (from its first message, hello or not). Not over ipc or
        inproc, which have no such connection (libzmq's message bound is all there is)."""
        try:
            fd = frame.get(_SRCFD)
        except zmq.ZMQError:
            return
        if fd < 0:
            return
        backlog = self._backlog.get(edge)
        if backlog is None or backlog.fd != fd:
            self._backlog[edge] = Backlog.of(fd, self.clock())

    def _reading(self, edge: bytes) -> list[Delivery]:
        """At each hello: has the edge read what it was handed?"""
        backlog = self._backlog.get(edge)
        if backlog is None or self._keeping_up(edge, backlog):
            return []
        return self.lose(edge, "its edge is not reading")

    def _keeping_up(self, edge: bytes, backlog: Backlog) -> bool:
        """Unless the edge's kernel acknowledged all but EDGE_QUEUE_BYTES of what the edge
        was handed, or all but four times that while it acknowledged something in the
        last TIMEOUT (a slow reader, or one handed much at once), its connection is cut
        (which frees what libzmq held for it) and it is to be lost: False."""
        now = self.clock()
        backlog.looked = now
        if guard.identity(backlog.fd) != backlog.identity:  # it came back on a new one
            self._backlog[edge] = Backlog.of(backlog.fd, now)
            return True
        acked = guard.acked(backlog.fd)
        if acked is None:  # not TCP (ipc): libzmq's message bound is all there is
            backlog.handed = 0
            return True
        if acked > backlog.base:
            backlog.progressed = now
        unread = backlog.handed - (acked - backlog.base)
        if unread <= E.EDGE_QUEUE_BYTES or (unread <= 4 * E.EDGE_QUEUE_BYTES and
                                            now - backlog.progressed < E.TIMEOUT):
            backlog.handed, backlog.base = max(0, unread), acked
            return True
        log.warning("Edge %s is not reading (%d MiB unread): cut", edge.hex(), unread >> 20)
        self._cut(edge)
        return False

    def _cut(self, edge: bytes) -> None:
        """Shut its connection down, if it is still the one counted (never another that
        got the number)."""
        backlog = self._backlog.pop(edge, None)
        if backlog is not None and guard.identity(backlog.fd) == backlog.identity:
            guard.shut_down(backlog.fd)

    def expire(self) -> list[Delivery]:
        """Edges silent too long are lost, and the sessions they held end."""
        out: list[Delivery] = []
        deadline = self.clock() - E.TIMEOUT
        for edge in [e for e, at in self.heard.items() if at < deadline]:
            out += self.lose(edge, "its edge was lost")
        return out

    def pardon(self, seconds: float) -> None:
        """The core itself was away: no edge's silence then counts against it."""
        for edge in self.heard:
            self.heard[edge] += seconds

    def lose(self, edge: bytes, reason: str, *, cut: bool = False) -> list[Delivery]:
        """The edge's sessions end; ``cut``: its connection too (it stopped reading: what
        libzmq holds for it is freed, and the edge, told by the drop, starts again)."""
        if cut:
            self._cut(edge)
        self.heard.pop(edge, None)
        self._backlog.pop(edge, None)
        log.warning("Edge %s lost: %s", edge.hex(), reason)
        return self.chat.edge_lost(edge, reason)

    # -- out ------------------------------------------------------------------------------

    def before_frames(self, changes: Iterable[tuple[bytes, bool]],
                      ended: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
        """Once the turn is committed, before its frames: every live topic to the edges
        new this turn, the topics made live or dead to the others, the sessions ended,
        and the answers to the hellos. Returns the edges that could not take it: they
        grant from a set that is not the chat's any more, and must be lost."""
        failed: list[bytes] = []
        new, self._new = [e for e in self._new if e in self.heard], []
        if new:
            snapshot = [E.TOPICS, E.ALL, *_flat((t, E.LIVE) for t in self.chat.topics)]
            for edge in new:
                if not self._send(edge, snapshot):
                    failed.append(edge)
        message = [E.TOPICS, b"", *_flat((t, E.LIVE if live else E.DEAD)
                                         for t, live in changes)]
        if len(message) > 2:
            for edge in [e for e in self.heard if e not in new]:
                if not self._send(edge, message):
                    failed.append(edge)
        by_edge: dict[bytes, list[bytes]] = {}
        for edge, client in ended:
            by_edge.setdefault(edge, []).append(client)
        for edge, clients in by_edge.items():
            if edge in self.heard and not self._send(edge, [E.ENDED, *clients]):
                failed.append(edge)
        hellos, self._hellos = self._hellos, {}
        incarnation = self.chat.incarnation.encode()
        for edge, mark in hellos.items():
            if edge in self.heard and not self._send(edge, [E.ALIVE, incarnation,
                                                            b"%d" % mark]):
                failed.append(edge)
        return failed

    def room(self, edges: Iterable[bytes], topic: bytes, frame: bytes) -> int:
        """A room frame to each of these edges; how many took it (those that could not
        are ``behind``)."""
        sent = 0
        for edge in edges:
            if edge in self.heard:
                if self._send(edge, [E.ROOM, topic, frame]):
                    sent += 1
                elif edge not in self._behind:
                    self._behind.append(edge)
        return sent

    def behind(self) -> list[bytes]:
        """The edges that could not take a room frame since the last call: their members
        would miss events, so they are to be lost (their clients resume elsewhere)."""
        behind, self._behind = self._behind, []
        return [e for e in behind if e in self.heard]

    def send(self, edge: bytes, frames: list[bytes]) -> bool:
        """A turn's frames for clients on one edge: ``[client, frame, client, frame...]``.
        False if the edge cannot take them (gone, or its queue full: not reading)."""
        return edge in self.heard and self._send(edge, [E.SEND, *frames])

    def _send(self, edge: bytes, message: list[bytes]) -> bool:
        try:
            self.sock.send(edge, _MORE)
            self.sock.send_multipart(message, _NOW)
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                raise
            return False
        backlog = self._backlog.get(edge)
        if backlog is not None:
            backlog.handed += sum(map(len, message))
            # Past the bound: looked at once a heartbeat as frames go (as at its hellos,
            # which a frozen or faulty edge does not send), at once past four times it.
            if backlog.handed > E.EDGE_QUEUE_BYTES and (
                    backlog.handed > 4 * E.EDGE_QUEUE_BYTES
                    or self.clock() - backlog.looked >= E.HEARTBEAT):
                return self._keeping_up(edge, backlog)
        return True


@dataclass(slots=True)
class Backlog:
    """What the core handed an edge's connection and its kernel has not acknowledged
    (TCP_INFO), bounded by EDGE_QUEUE_BYTES: looked at with each of the edge's hellos,
    and as frames go to it once past the bound."""

    fd: int
    identity: object  # of the connection behind fd (guard.identity): never another's
    base: int  # the kernel's acknowledged count when ``handed`` was last rebased
    progressed: float  # when it last acknowledged something (or was first seen)
    handed: int = 0  # bytes handed since the base
    looked: float = 0.0

    @classmethod
    def of(cls, fd: int, now: float) -> Backlog:
        """Counting from now, on the connection behind ``fd``."""
        return cls(fd, guard.identity(fd), guard.acked(fd) or 0, now)


def _hello_info(rest: Sequence[bytes]) -> dict:
    """A hello's info map; empty if it has none or it is not one (an edge's word is
    trusted, its bytes are still checked)."""
    try:
        info = unpack(rest[0]) if rest else {}
    except ProtocolError:
        return {}
    return info if isinstance(info, dict) else {}


def _flat(pairs: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    return [part for pair in pairs for part in pair]

