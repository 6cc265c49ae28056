"""``python -m gateway``: IRC clients in, zchat out.

    python -m gateway --server 127.0.0.1:5555 [--listen 127.0.0.1:6667]
                      [--tls-cert FILE --tls-key FILE]

It listens on loopback unless told otherwise, and refuses to listen elsewhere in the
clear: IRC has no CURVE, so passwords (PASS, SASL) and messages would cross the network
readable by anyone on the way. docs/irc.md says what each side protects.
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys

from client.connection import Connection, Refused, Unreachable, parse_servers
from schema import cli_keys

from .server import DESCRIPTORS_PER_CLIENT, SENDQ, Gateway, is_loopback, tls_context

log = logging.getLogger("zchat.gateway")

EXIT_OK, EXIT_USAGE, EXIT_REFUSED = 0, 2, 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gateway",
                                description="An IRC gateway to a zchat broker.")
    p.add_argument("--server", default="tcp://127.0.0.1:5555", metavar="HOST:PORT[,...]",
                   help="the zchat broker's address, or a core's and its standbys' "
                        "(each IRC user moves to the next when one is lost; "
                        "default %(default)s)")
    p.add_argument("--listen", default="127.0.0.1:6667", metavar="HOST:PORT",
                   help="where IRC clients connect (default %(default)s; port 0: any free)")
    p.add_argument("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="listen beyond loopback without TLS (passwords in the clear)")
    cli_keys.add_key_options(p)
    p.add_argument("--max-clients", type=int, default=256,
                   help="IRC connections at once (default %(default)s)")
    p.add_argument("--sendq", type=int, default=SENDQ,
                   help="bytes waiting for a client that does not read before it is "
                        "dropped (default %(default)s)")
    p.add_argument("--ping-interval", type=float, default=90.0,
                   help="seconds of silence before a client is pinged, and again before "
                        "it is dropped (default %(default)s)")
    p.add_argument("--register-timeout", type=float, default=15.0,
                   help="seconds a client has to register (default %(default)s)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"not a listening address: {text!r} (expected HOST:PORT, "
                         "for example 127.0.0.1:6667)")
    return host, int(port)


def _probe(server: list[str], server_key: bytes | None) -> None:
    """One hello at start: a wrong broker key is fatal now, not a mystery per client."""
    conn = Connection(server, server_key=server_key)
    try:
        conn.hello(timeout=2.0)
        conn.request("bye")
        conn.dealer.poll(500)
    except Unreachable as exc:
        log.warning("%s; IRC clients are told so until it answers", exc)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        server = parse_servers(args.server)
        listen = _listen_address(args.listen)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if bool(args.tls_cert) != bool(args.tls_key):
        print("Error: --tls-cert and --tls-key go together", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if not args.tls_cert and not args.allow_plaintext and not is_loopback(listen[0]):
        print(f"Error: {listen[0]} is not loopback: give --tls-cert and --tls-key (or "
              "--allow-plaintext, and passwords cross the network in the clear)",
              file=sys.stderr, flush=True)
        return EXIT_USAGE
    try:
        tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        server_key = cli_keys.server_key_from(args)
    except (OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    try:
        _probe(server, server_key)
    except Refused as exc:
        print(f"Error: the broker refused us: {exc.text}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    # Each IRC client costs a descriptor here and two zchat connections in libzmq.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    # About six descriptors a client (its socket, and libzmq's for two connections and
    # their mailboxes), and some for the gateway itself: no more clients than that.
    fits = max(1, (soft - 64) // DESCRIPTORS_PER_CLIENT) if soft != resource.RLIM_INFINITY \
        else args.max_clients
    if args.max_clients > fits:
        log.warning("--max-clients %d lowered to %d: the limit of open files is %d",
                    args.max_clients, fits, soft)
        args.max_clients = fits
    try:
        gateway = Gateway(listen, server, server_key=server_key, tls=tls,
                          max_clients=args.max_clients, sendq=args.sendq,
                          ping_interval=args.ping_interval,
                          register_timeout=args.register_timeout)
    except OSError as exc:
        print(f"Error: cannot listen on {args.listen}: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, gateway.stop)
    signal.signal(signal.SIGINT, gateway.stop)
    host, port = gateway.address
    log.info("zchat IRC gateway ready: listen=%s:%d tls=%s broker=%s", host, port,
             "on" if tls else "off", ",".join(server))
    gateway.run()
    return EXIT_OK

