"""The floor of this design: a relay that moves the benchmark's traffic and nothing more.

``python -m bench WORKLOAD --floor`` runs the workload against this instead of the broker.
It has the broker's sockets, CURVE, framing (one array frame per client and per room per
loop turn) and enough of the protocol for the load processes: hello, login, create, join,
say, msg, ping, ticks and (empty) history. It has none of the broker's guarantees: no
validation, no store, no sessions by key, no retries remembered, no rate limits, no
subscription checks.

What it costs per message is what any Python broker on pyzmq pays before it checks or
keeps anything, so a target below that figure is out of reach for this design however
the chat logic is written. It is an experiment, never a server: it trusts every peer.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import time

import msgpack
import zmq

from schema import keys
from schema import protocol as P

log = logging.getLogger("zchat.floor")
_MORE, _NOW = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)


class Relay:
    def __init__(self, ctx: zmq.Context, args: argparse.Namespace, secret: bytes | None):
        self.router = ctx.socket(zmq.ROUTER)
        self.publisher = ctx.socket(zmq.XPUB)
        for sock in (self.router, self.publisher):
            sock.setsockopt(zmq.LINGER, 0)
            if secret is not None:
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.router.bind(args.bind)
        self.publisher.bind(args.pub_bind)
        self.pub = self.publisher.getsockopt_string(zmq.LAST_ENDPOINT)
        self.inc = secrets.token_hex(8)
        self.peers: dict[str, bytes] = {}  # name -> routing id
        self.names: dict[bytes, str] = {}
        self.rooms: dict[str, list] = {}  # room -> [topic, seq]
        self.stopping = False

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.publisher, zmq.POLLIN)
        next_tick = time.monotonic() + P.ROOM_TICK_INTERVAL
        while not self.stopping:
            try:
                ready = dict(poller.poll(100))
            except zmq.ZMQError:
                continue
            replies: dict[bytes, list] = {}
            events: dict[bytes, list] = {}
            if self.publisher in ready:
                while True:  # plain XPUB: libzmq applies subscriptions; just empty the queue
                    try:
                        self.publisher.recv(_NOW)
                    except zmq.Again:
                        break
            if self.router in ready:
                for _ in range(512):
                    try:
                        peer = self.router.recv(_NOW)
                    except zmq.Again:
                        break
                    self.handle(peer, msgpack.unpackb(self.router.recv(_NOW)), replies, events)
            if time.monotonic() >= next_tick:
                next_tick += P.ROOM_TICK_INTERVAL
                for name, (topic, seq) in self.rooms.items():
                    events.setdefault(topic, []).append(
                        {"ev": "tick", "room": name, "seq": seq, "inc": self.inc})
            for topic, batch in events.items():
                self.publisher.send(topic, _MORE)
                self.publisher.send(msgpack.packb(batch), _NOW)
            for peer, batch in replies.items():
                self.router.send(peer, _MORE)
                self.router.send(msgpack.packb(batch), _NOW)

    def handle(self, peer: bytes, m: dict, replies: dict, events: dict) -> None:
        cmd, reply = m["cmd"], {"re": m["id"], "ok": True}
        if cmd == "say":
            room = self.rooms[m["room"]]
            room[1] += 1
            events.setdefault(room[0], []).append(
                {"ev": "msg", "room": m["room"], "seq": room[1], "ts": time.time(),
                 "inc": self.inc, "from": self.names[peer], "text": m["text"]})
            reply.update(room=m["room"], seq=room[1])
        elif cmd == "msg":
            event = {"ev": "dm", "from": self.names[peer], "to": m["to"], "text": m["text"],
                     "ts": time.time()}
            for name in m["to"]:
                replies.setdefault(self.peers[name], []).append(event)
            reply.update(to=m["to"])
        elif cmd == "hello":
            reply.update(inc=self.inc, pub=self.pub, heartbeat=P.HEARTBEAT_INTERVAL,
                         timeout=P.PEER_TIMEOUT)
        elif cmd == "login":
            self.peers[m["name"]], self.names[peer] = peer, m["name"]
            reply.update(name=m["name"])
        elif cmd in ("create", "join"):
            room = self.rooms.setdefault(m["room"], [f"{m['room']}\0".encode(), 0])
            room[1] += 1
            name = self.names[peer]
            events.setdefault(room[0], []).append(
                {"ev": "join", "room": m["room"], "seq": room[1], "ts": time.time(),
                 "inc": self.inc, "name": name})
            reply.update(room=m["room"], name=name, topic=room[0], seq=room[1], inc=self.inc,
                         members=[], history=[])
        elif cmd == "history":  # joins published before a member subscribed: not kept
            reply.update(room=m["room"], events=[])
        elif cmd != "ping":
            reply = {"re": m["id"], "ok": False, "code": "unknown_command", "error": cmd}
        replies.setdefault(peer, []).append(reply)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bind", required=True)
    p.add_argument("--pub-bind", required=True)
    p.add_argument("--keys")
    p.add_argument("--insecure", action="store_true")
    args, _ = p.parse_known_args()  # the broker's other options mean nothing here
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    secret = None
    if not args.insecure:
        directory = keys.key_dir(args.keys)
        keys.ensure(directory)
        secret = keys.load(directory / "broker.key_secret").secret
    ctx = zmq.Context()
    relay = Relay(ctx, args, secret)
    signal.signal(signal.SIGTERM, lambda *_: setattr(relay, "stopping", True))
    router = relay.router.getsockopt_string(zmq.LAST_ENDPOINT)
    log.info("zchat broker ready: router=%s pub=%s control=%s (floor relay, not a broker)",
             router, relay.pub, router)
    relay.serve()
    relay.router.close()
    relay.publisher.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
