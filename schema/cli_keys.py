"""The command-line options that choose keys and encryption, shared by the programs that
talk to a broker (client, gateway, admin tool) or a core (edge).

    --server-key KEY|FILE  the broker's public key to pin (default DIR/broker.key)
    --keys DIR             the key directory (default $ZCHAT_KEYS, else data/keys)
    --identity FILE        our own key pair, under the name the program gives it
    --insecure             plaintext, no CURVE

Only argparse and ``schema.keys`` here: the gateway and the edge import this, and must
not pull in a user interface.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import keys


def add_key_options(parser: argparse.ArgumentParser, *, reads: str = "broker.key",
                    peer: str = "broker", server_key: bool = True,
                    own_key: tuple[str, str] | None = None) -> None:
    """Add ``--server-key`` (unless ``server_key`` is false), ``--keys``, our own key
    pair's option and ``--insecure`` to ``parser``, in that order.

    ``reads``: what the program reads from the key directory, for ``--keys``'s help;
    ``peer``: what it talks to (``broker``, ``core``), for ``--insecure``'s;
    ``own_key``: the flag and help of our own key pair's option (``--identity FILE``),
    read back with ``key_pair_from``.
    """
    if server_key:
        parser.add_argument("--server-key", metavar="KEY|FILE",
                            help="the broker's public key (z85, or its broker.key file); "
                                 "by default read from the key directory "
                                 "(DIR/broker.key), as on the broker's own machine")
    parser.add_argument("--keys", metavar="DIR",
                        help=f"key directory to find {reads} in (default $ZCHAT_KEYS, "
                             f"else {keys.DEFAULT_DIR})")
    if own_key is not None:
        flag, help_text = own_key
        parser.add_argument(flag, metavar="FILE", help=help_text)
    parser.add_argument("--insecure", action="store_true",
                        help=f"talk plaintext to a {peer} started with --insecure")


def key_dir_from(args: argparse.Namespace) -> Path:
    """The key directory: ``--keys``, else $ZCHAT_KEYS, else data/keys."""
    return keys.key_dir(args.keys)


def server_key_from(args: argparse.Namespace) -> bytes | None:
    """The broker public key to pin: ``--server-key``, else the key directory's
    broker.key; None with ``--insecure``. Raises OSError or ValueError (a line to show
    as it is, e.g. "no broker key: ... Give --server-key ... or --insecure")."""
    if args.insecure:
        return None
    return keys.broker_key(args.server_key, key_dir_from(args))


def key_pair_from(args: argparse.Namespace, given: str | None,
                  default: str | None = None) -> keys.KeyPair | None:
    """Our own key pair: the file ``given`` (the value of ``--identity``, say), else the
    key directory's file ``default``, else None; None with ``--insecure``. Raises
    OSError or ValueError when the file cannot be read."""
    if args.insecure:
        return None
    if given:
        return keys.load(Path(given))
    if default:
        return keys.load(key_dir_from(args) / default)
    return None
