"""The publisher socket, in a thread of its own: room frames out, subscriptions in.

Why a thread: libzmq's manual XPUB keeps, for every subscriber, each topic it asked for
(granted or not), and when a subscriber leaves it walks its whole subscription trie, all
subscribers' topics, to find that one's (measured: ~85 ns per topic byte held, for every
leaving subscriber; 2,000 subscribers leaving together cost seconds even with no attacker,
and minutes with refused topics). That walk runs inside whatever call touches the socket.
Here it stalls only publishing, never the broker loop: requests, replies and pings go on,
and subscribers catch up by seq once room frames flow again.

Grants: a subscription is applied only if it names a live room topic (``grants``, the chat
core's set, read from this thread: a dict lookup). XPUB_MANUAL applies a grant to the pipe
of the message read last, and a peer can send a message that is not a subscription, which
libzmq queues without its pipe: after one, nothing is granted nor revoked until the queue
has been seen empty (the junk guard); refused members subscribe again when their room's
ticks fail to arrive. What libzmq keeps of refused topics is bounded here by cutting the
connection (broker/guard.py) that sends junk, holds more than REFUSED_PER_CONNECTION, or
would take the refused topics of everyone past REFUSED_BYTES.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Callable

import zmq

from schema import protocol as P

from .guard import Connections

log = logging.getLogger("zchat.broker")

_MORE, _NOW, _SRCFD = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK), int(zmq.SRCFD)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
BATCH = 8192  # messages taken from a socket per turn of this thread
REFUSED_PER_CONNECTION = 4  # refused subscriptions outstanding: an honest client has 1-2
# Refused topic bytes held for all connections together, each distinct topic once (the
# members of a room that race its rekey hold the same stale topic: one cost, one trie path)
REFUSED_BYTES = 32 << 10
LINK_QUEUE = 1000  # frames waiting for this thread; past it the loop drops (seq catch-up)
# A subscriber that reconnects (after a broker restart, say) asks again for every topic it
# had, all dead now, before its client has joined anew and withdrawn them: in its first
# GRACE seconds a connection may hold as many refused topics as a member has rooms, if
# each has the shape of a room topic (name, NUL, 16 hex digits); past its grace, what it
# still holds is judged like the rest.
GRACE = 10.0
GRACE_REFUSED = P.ROOMS_PER_MEMBER_MAX + REFUSED_PER_CONNECTION
_TOKEN = 16  # hex digits of a room topic's token
_ids = itertools.count()


class Publisher(threading.Thread):
    def __init__(self, ctx: zmq.Context, sock: zmq.Socket, conns: Connections,
                 grants: Callable[[bytes], bool]):
        """``sock``: the bound XPUB (manual), watched by ``conns``; both are this thread's
        from ``start()`` on."""
        super().__init__(name="zchat-publisher", daemon=True)
        self.sock, self.conns, self.grants = sock, conns, grants
        address = f"inproc://zchat-publisher-{next(_ids)}"
        self._inbox = ctx.socket(zmq.PAIR)  # this thread's end
        self._inbox.setsockopt(zmq.RCVHWM, LINK_QUEUE)
        self._inbox.bind(address)
        self.link = ctx.socket(zmq.PAIR)  # the broker loop's end
        self.link.setsockopt(zmq.SNDHWM, LINK_QUEUE)
        self.link.setsockopt(zmq.LINGER, 0)
        self.link.connect(address)
        self.dropped = 0  # frames the loop could not hand over (this thread was stalled)
        self._suspect = False  # a non-subscription was read: grant nothing for now
        self._refused: dict[int, set[bytes]] = {}  # connection fd -> topics refused to it
        self._holders: dict[bytes, int] = {}  # refused topic -> connections holding it
        self._refused_bytes = 0  # of the distinct refused topics
        self.refused_budget = REFUSED_BYTES

    # -- the broker loop's side -----------------------------------------------------------

    def publish(self, topic: bytes, frame: bytes) -> bool:
        """Hand one room frame over; False (dropped) if this thread is that far behind."""
        try:
            self.link.send(topic, _MORE)
        except zmq.Again:
            self.dropped += 1
            return False
        self.link.send(frame, _NOW)  # the first part went: the rest of a message goes too
        return True

    def stop(self) -> None:
        self.link.send(b"")  # a single empty frame: the end
        self.join(5)
        self.link.close()

    # -- this thread ----------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        for s in (self._inbox, self.sock, *self.conns.monitors):
            poller.register(s, zmq.POLLIN)
        next_look = 0.0
        try:
            while True:
                ready = dict(poller.poll(math.ceil(self.conns.due() * 1000)))
                self.conns.drain()
                self.conns.check()
                if self.conns.clock() >= next_look:  # graces end with no traffic too
                    self._forget_gone()
                    next_look = self.conns.clock() + 1.0
                if self.sock in ready:
                    self._drain_subscriptions()
                if self._inbox in ready and not self._forward():
                    return
        except Exception:  # the broker loop sees the thread gone and stops
            log.exception("The publisher thread failed")
        finally:
            self.conns.close()
            self.sock.close()
            self._inbox.close()

    def _forward(self) -> bool:
        """Room frames from the loop to the subscribers; False at the end."""
        for _ in range(BATCH):
            # Asked first: a wake-up brings a frame or two, and the read that would find
            # none costs a raised zmq.Again (a few times the question). This thread alone
            # reads the inbox, so a message announced is there to read.
            if not self._inbox.getsockopt(_EVENTS) & _POLLIN:
                return True
            try:
                topic = self._inbox.recv(_NOW, copy=False)
            except zmq.Again:  # (never, as said; but never a reason to fail the thread)
                return True
            if not topic.more:
                return False
            self.sock.send(topic, _MORE, copy=False)
            self.sock.send(self._inbox.recv(_NOW, copy=False), _NOW, copy=False)
        return True

    def _drain_subscriptions(self) -> None:
        for _ in range(BATCH):
            try:
                first = self.sock.recv(_NOW, copy=False)
            except zmq.Again:
                self._suspect = False  # queue empty: the last-pipe bookkeeping holds again
                self._forget_gone()
                return
            try:  # libzmq's own unsubscriptions for a connection that went carry no fd
                fd = first.get(_SRCFD)
            except zmq.ZMQError:
                fd = -1
            else:
                self.conns.seen(fd)
            frame = first.bytes
            if first.more or not frame or frame[0] not in (0, 1):
                while self.sock.get(zmq.RCVMORE):
                    self.sock.recv(_NOW)
                self._suspect = True
                self._cut(fd, "junk on the publisher")  # nothing honest sends it
                continue
            topic = frame[1:]
            if frame[0] == 0:
                if fd >= 0:  # (libzmq's own: nothing to revoke, the pipe is gone)
                    refused = self._refused.get(fd)
                    if refused is not None and topic in refused:
                        refused.discard(topic)
                        self._release(topic)
                    elif not self._suspect:
                        self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)
                continue
            if self.grants(topic):
                if not self._suspect:  # else the member asks again when its room is quiet
                    self.sock.setsockopt(zmq.SUBSCRIBE, topic)
                continue
            # Refused: libzmq keeps it until the connection goes. One or two are a race
            # with a rekey; more, or many together, are an attack.
            refused = self._refused.setdefault(fd, set())
            if topic not in refused:
                refused.add(topic)
                self._holders[topic] = self._holders.get(topic, 0) + 1
                if self._holders[topic] == 1:
                    self._refused_bytes += len(topic)
            self._judge(fd)

    def _judge(self, fd: int) -> None:
        """Cut a connection that holds too many refused topics (see GRACE)."""
        refused = self._refused.get(fd, ())
        conn = self.conns.get(fd)
        if conn is not None and self.conns.clock() - conn.born < GRACE:
            if len(refused) > GRACE_REFUSED or not all(map(_room_shaped, refused)):
                self._cut(fd, "too many refused subscriptions")
        elif len(refused) > REFUSED_PER_CONNECTION:
            self._cut(fd, "too many refused subscriptions")
        elif self._refused_bytes > self.refused_budget and refused:
            self._cut(fd, "refused subscriptions past the broker's budget")

    def _release(self, topic: bytes) -> None:
        self._holders[topic] -= 1
        if not self._holders[topic]:
            del self._holders[topic]
            self._refused_bytes -= len(topic)

    def _cut(self, fd: int, reason: str) -> None:
        self.conns.cut(fd, reason)
        for topic in self._refused.pop(fd, ()):
            self._release(topic)

    def _forget_gone(self) -> None:
        """Refused topics of connections that went (libzmq forgot them with the pipe),
        and the judgement of those whose grace has ended meanwhile."""
        for fd in list(self._refused):
            if fd not in self.conns:
                for topic in self._refused.pop(fd):
                    self._release(topic)
            elif len(self._refused[fd]) > REFUSED_PER_CONNECTION or \
                    self._refused_bytes > self.refused_budget:
                self._judge(fd)


def _room_shaped(topic: bytes) -> bool:
    """Could this have been a room's topic (name, NUL, token)? Only such may wait."""
    return (_TOKEN + 2 <= len(topic) <= 4 * P.ROOM_MAX + 1 + _TOKEN
            and topic[-_TOKEN - 1] == 0)
