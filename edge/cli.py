"""``python -m edge`` (or ``python -m broker edge``): hold clients for a core.

    python -m edge --core tcp://core1:5558[,tcp://core2:5558] \\
                   [--bind tcp://127.0.0.1:6555] [--pub-bind tcp://127.0.0.1:6556]

Clients connect to an edge as to a broker (``python -m client --server edge1,edge2``),
with the same broker key. The edge needs the key directory's ``broker.key_secret`` (it
speaks for the chat to its clients) and ``edge.key_secret`` (or ``--edge-key``: its own
pair, whose public half the core must list in ``edge.key`` or ``edges/``).
docs/deploy.md says what runs where.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import zmq

from client.connection import parse_servers
from schema import cli_keys, keys

from .server import Edge

log = logging.getLogger("zchat.edge")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge",
                                description="A zchat edge: holds clients for a core.")
    p.add_argument("--core", required=True, metavar="ADDRESS[,...]",
                   help="the core's edge address (its --edge-bind), or every core's: only "
                        "the active one answers")
    p.add_argument("--bind", default="tcp://127.0.0.1:6555",
                   help="ROUTER address clients connect to (default %(default)s)")
    p.add_argument("--pub-bind", default="tcp://127.0.0.1:6556",
                   help="publisher address for room events (default %(default)s)")
    cli_keys.add_key_options(p, reads="broker.key_secret and edge.key_secret", peer="core",
                             server_key=False, own_key=(
        "--edge-key", "this edge's own key pair (default edge.key_secret in --keys)"))
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    secret = own = core_key = None
    if not args.insecure:
        try:
            chat = keys.load(cli_keys.key_dir_from(args) / "broker.key_secret")
            own = cli_keys.key_pair_from(args, args.edge_key, "edge.key_secret")
        except OSError as exc:
            print(f"edge: cannot read a key: {exc} (copy the core's key directory, or "
                  "give --keys)", file=sys.stderr)
            return 2
        secret, core_key = chat.secret, chat.public
        log.info("Encrypted (CURVE). Clients pin %s; this edge's key: %s",
                 chat.public.decode(), own.public.decode())
    ctx = zmq.Context()
    edge = Edge(ctx, core=parse_servers(args.core), bind=args.bind,
                pub_bind=args.pub_bind, secret_key=secret, own_key=own,
                core_key=core_key)
    signal.signal(signal.SIGTERM, edge.stop)
    signal.signal(signal.SIGINT, edge.stop)
    if not edge.wait_for_core():
        ctx.destroy(linger=0)
        return 0
    try:
        edge.open()
    except zmq.ZMQError as exc:
        print(f"edge: cannot bind: {exc}", file=sys.stderr)
        ctx.destroy(linger=0)
        return 1
    edge.serve()
    ctx.term()
    return 0
