"""``python -m client``: chat from a terminal, or drive the chat from a script.

* stdin a terminal: the line mode of ``terminal``: incoming messages appear above the line
  being typed, a toolbar shows who and where you are, Tab completes.
* ``--tui``: the full-screen mode of ``tui``: rooms, messages and members side by side.
* stdin not a terminal: one command per input line, one output line per event, flushed.
* ``--json``: every event as one JSON object per line, for bots and tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable

from schema import cli_keys, keys

from . import terminal
from .connection import Connection, Event, Refused, Unreachable, parse_servers
from .render import render
from .runner import EXIT_REFUSED, EXIT_UNREACHABLE, NAME_QUESTION, Runner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m client", description="The zchat client.")
    p.add_argument("--server", default="tcp://127.0.0.1:5555", metavar="HOST:PORT",
                   help="the broker's address, HOST:PORT or tcp://HOST:PORT "
                        "(default %(default)s); several, comma-separated, for a core and "
                        "its standbys: the first that answers is used, the next once it "
                        "is lost")
    p.add_argument("--name", help="log in with this nickname at once")
    p.add_argument("--json", action="store_true",
                   help="print every event as one JSON object per line")
    p.add_argument("--tui", action="store_true",
                   help="full-screen mode: rooms, messages and members side by side")
    cli_keys.add_key_options(p, own_key=(
        "--identity", "our key pair (a .key_secret file, see 'python -m admin keygen "
                      "--client NAME'): keeps a nickname registered to this key"))
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to wait for the broker at start (default %(default)s)")
    return p.parse_args(argv)


def _line_printer(as_json: bool) -> Callable[[Event], None]:
    # Printed to a terminal, long lines are cut with a marker on each continuation, so
    # no message can start a screen line that looks like another message (see terminal).
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 0

    def show(event: Event) -> None:
        if as_json:
            print(json.dumps({"event": event.kind, **event.data}, default=repr), flush=True)
        else:
            for line in render(event):
                for part in terminal.wrap_text(line, width) if width else [line]:
                    print(part, flush=True)
    return show


def _notice(text: str) -> None:
    """Progress for a person watching a script run; stdout stays one line per event."""
    print(text, file=sys.stderr, flush=True)


def _credentials(args: argparse.Namespace) -> tuple[bytes | None, keys.KeyPair | None]:
    """The broker key to pin and our own key pair, from the flags and key directory."""
    identity = cli_keys.key_pair_from(args, args.identity)  # None with --insecure
    return cli_keys.server_key_from(args), identity


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        servers = parse_servers(args.server)
    except ValueError as exc:
        print(f"Error: --server: {exc}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    if args.tui and (args.json or not (sys.stdin.isatty() and sys.stdout.isatty())):
        print("Error: --tui needs a terminal (and no --json)", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    show = _line_printer(args.json)
    try:
        server_key, identity = _credentials(args)
    except (OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    conn = Connection(servers, server_key=server_key, identity=identity)
    try:
        conn.hello(timeout=args.timeout)
    except Unreachable as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        conn.close()
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"Error: the broker refused us: {exc.text}", file=sys.stderr, flush=True)
        conn.close()
        return EXIT_REFUSED
    if args.name:
        conn.request("login", name=args.name)
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    try:
        if args.tui:
            from . import tui
            return tui.run(conn, conn.server)  # the address that answered
        if interactive:
            return terminal.run(conn, conn.server, ask_name=not args.name)
        if not args.json:  # one line, so "Connected to" still starts the greeting
            question = "" if args.name else f". {NAME_QUESTION}"
            show(Event("info", {"text": f"Connected to {conn.server}{question}"}))
        runner = Runner(conn, show, sys.stdin.fileno(), outcomes=not args.json,
                        ask_name=None if args.name else "script",
                        notice=None if args.json else _notice)
        try:
            return runner.run()
        except KeyboardInterrupt:
            return runner.interrupted()
    finally:
        conn.close()

