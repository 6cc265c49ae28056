"""``python -m broker``: start the broker."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys

import zmq

from schema import keys
from schema import protocol as P

from .chat import Chat
from .server import Broker
from .store import DISK_RESERVE, LOCK_TIMEOUT, Fenced, SqliteStore, Store, StoreError

log = logging.getLogger("zchat.broker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m broker", description="The zchat broker.")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="ROUTER address clients connect to (default %(default)s)")
    p.add_argument("--pub-bind", default="tcp://127.0.0.1:5556",
                   help="publisher address for room events (default %(default)s)")
    p.add_argument("--control-bind", default="tcp://127.0.0.1:5557",
                   help="admin control address (default %(default)s)")
    p.add_argument("--edge-bind", metavar="ADDRESS",
                   help="where edges connect (python -m edge): off unless given; only "
                        "edge keys (edge.key, edges/*.key in --keys) are let in")
    p.add_argument("--db", default=os.path.join("data", "zchat.db"),
                   help="SQLite file holding rooms and history, or :memory: "
                        "(default %(default)s)")
    p.add_argument("--store", metavar="DSN", default=os.environ.get("ZCHAT_STORE") or None,
                   help="postgresql://USER@HOST/DB: keep rooms and history in PostgreSQL "
                        "instead of --db, shared by any number of cores of which one is "
                        "active (default $ZCHAT_STORE; docs/deploy.md)")
    p.add_argument("--lock-timeout", type=float, default=LOCK_TIMEOUT, metavar="SECONDS",
                   help="with --store: how long a frozen or vanished active core keeps "
                        "the lock before a standby takes over (default %(default)g)")
    p.add_argument("--durability", choices=("normal", "full"), default="normal",
                   help="SQLite: normal survives a broker crash; full also a power cut, "
                        "slower")
    p.add_argument("--disk-reserve", type=int, default=DISK_RESERVE, metavar="BYTES",
                   help="SQLite: refuse writes while the store's disk has less free "
                        "(default %(default)s)")
    p.add_argument("--keys", metavar="DIR",
                   help="CURVE key directory, created if missing (default $ZCHAT_KEYS, "
                        "else 'keys' beside the --db file)")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext: no encryption, no identities (never on a network)")
    p.add_argument("--rate", type=float, default=P.RATE_DEFAULT, metavar="N",
                   help="requests a second each client may make, steady "
                        "(default %(default)s; 0 = unlimited)")
    p.add_argument("--burst", type=int, default=P.BURST_DEFAULT, metavar="N",
                   help="requests each client may make at once (default %(default)s)")
    p.add_argument("--delivery-rate", type=float, default=P.DELIVERY_RATE_DEFAULT,
                   metavar="N", help="characters each client may have delivered a second, "
                   "counted once per recipient (default %(default)g)")
    p.add_argument("--delivery-burst", type=float, default=P.DELIVERY_BURST_DEFAULT,
                   metavar="N", help="characters each client may have delivered at once "
                   "(default %(default)g)")
    p.add_argument("--max-clients", type=int, default=None, metavar="N",
                   help="refuse clients beyond N connected sessions")
    p.add_argument("--history", type=int, default=P.JOIN_HISTORY_DEFAULT, metavar="N",
                   help=f"events replayed to a joiner (default %(default)s, "
                        f"at most {P.HISTORY_PAGE_MAX})")
    p.add_argument("--room-lifetime", type=float, default=P.EMPTY_ROOM_LIFETIME,
                   metavar="SECONDS", help="how long a room may stay empty before it is "
                   "removed with its history (default %(default)g: a week)")
    p.add_argument("--owned-room-lifetime", type=float, default=P.OWNED_ROOM_LIFETIME,
                   metavar="SECONDS", help="the same for a room a registered nickname "
                   "owns (default %(default)g: a year)")
    p.add_argument("--room-quota", type=int, default=P.ROOM_HISTORY_MAX, metavar="CHARS",
                   help="characters of history a room may keep (default %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    args = p.parse_args(argv)
    if args.store and not args.store.startswith(("postgresql://", "postgres://")):
        p.error(f"--store: not a PostgreSQL DSN: {args.store!r} (expected "
                "postgresql://USER@HOST/DB)")
    if args.lock_timeout < 1:
        p.error("--lock-timeout: at least 1 second (the loop commits every 0.5 s)")
    return args


def open_store(args: argparse.Namespace) -> Store:
    """The one place the store is chosen: SQLite (--db) unless a PostgreSQL DSN is given
    (--store, $ZCHAT_STORE). A PostgreSQL store returns once this process holds its lock:
    until then it waits, a standby."""
    if args.store is None:
        if args.db != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
        return SqliteStore(args.db, durable=args.durability == "full",
                           reserve=args.disk_reserve)
    from .postgres import PostgresStore  # psycopg is loaded only for PostgreSQL

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _leave_standing_by)  # a standby has nothing to finish
    return PostgresStore(args.store, lock_timeout=args.lock_timeout)


def _store_name(args: argparse.Namespace) -> str:
    if args.store is None:
        return args.db
    from .postgres import describe

    return describe(args.store)


def _beside(db: str, name: str) -> str:
    """A path next to the store file (``data/keys`` for ``data/zchat.db``)."""
    if db == ":memory:":
        return os.path.join("data", name)
    return os.path.join(os.path.dirname(os.path.abspath(db)), name)


def _tune_garbage_collector() -> None:
    """Chat data is freed by reference counting; the cycle collector only costs time.

    What exists at start (modules, restored rooms) lives as long as the broker: frozen,
    no full collection walks it again. And young collections wait for 20,000 new objects
    rather than 700. Under the dm benchmark the collector went from 13% of the loop
    thread (18 full collections of 88 ms each in 12 s) to under 1%.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    secret, operators, edges = _keys(args)
    # Each pass is one incarnation. With SQLite there is one; with PostgreSQL a core that
    # was fenced (it lost its session, and so the lock) waits as a standby and serves
    # again as a new incarnation once it holds the lock anew.
    while True:
        try:
            store = open_store(args)
        except StoreError as exc:
            log.error("Cannot open the store: %s", exc)
            return 1
        code = _serve(args, store, secret, operators, edges)
        if code is not None:
            return code
        log.warning("This core is a standby now: it waits for the store's lock, then "
                    "serves as a new incarnation")


def _keys(args: argparse.Namespace
          ) -> tuple[bytes | None, frozenset[bytes], frozenset[bytes]]:
    """The broker's secret key, the operators' and the edges' public keys (None:
    plaintext)."""
    if args.insecure:
        log.warning("Plaintext mode (--insecure): traffic is readable, identities unchecked")
        return None, frozenset(), frozenset()
    directory = keys.key_dir(args.keys or os.environ.get("ZCHAT_KEYS")
                             or _beside(args.db, "keys"))
    for name in keys.ensure(directory):
        log.info("Created %s key pair in %s", name, directory)
    pair = keys.load(directory / "broker.key_secret")
    operators = frozenset(keys.operator_keys(directory))
    edges = frozenset(keys.edge_keys(directory)) if args.edge_bind else frozenset()
    log.info("Encrypted (CURVE). Broker public key: %s (%s); %d operator key(s)%s",
             pair.public.decode(), directory / "broker.key", len(operators),
             f", {len(edges)} edge key(s)" if args.edge_bind else "")
    return pair.secret, operators, edges


def _serve(args: argparse.Namespace, store: Store, secret: bytes | None,
           operators: frozenset[bytes], edges: frozenset[bytes]) -> int | None:
    """Serve one incarnation on ``store``: an exit code, or None if it was fenced."""
    try:
        chat = Chat(store, max_clients=args.max_clients, join_history=args.history,
                    rate=args.rate, burst=args.burst, delivery_rate=args.delivery_rate,
                    delivery_burst=args.delivery_burst, room_lifetime=args.room_lifetime,
                    owned_room_lifetime=args.owned_room_lifetime,
                    room_quota=args.room_quota,
                    route_check=keys.RouteCheck(secret) if secret is not None else None)
    except Fenced as exc:  # the session went as soon as the lock was taken
        log.critical("FENCED: %s", exc)
        store.close()
        return None
    ctx = zmq.Context()
    try:
        broker = Broker(chat, ctx, bind=args.bind, pub_bind=args.pub_bind,
                        control_bind=args.control_bind, secret_key=secret,
                        operators=operators, edge_bind=args.edge_bind, edge_keys=edges)
    except zmq.ZMQError as exc:
        log.error("Cannot bind: %s", exc)
        store.close()
        ctx.destroy(linger=0)
        return 1
    signal.signal(signal.SIGTERM, broker.stop)
    signal.signal(signal.SIGINT, broker.stop)
    log.info("Store: %s (%d rooms), incarnation %s", _store_name(args), len(chat.rooms),
             chat.incarnation)
    _tune_garbage_collector()
    broker.serve()
    ctx.term()
    return 0 if broker.fenced is None else None


def _leave_standing_by(*_: object) -> None:
    raise SystemExit(0)
