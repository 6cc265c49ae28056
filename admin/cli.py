"""``python -m admin``: list and kill rooms, list and kick users, read the stats.

One request per run over a REQ socket to the broker's control address; no answer within
the timeout (2 s by default) is an error and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import zmq

from client.commands import parse_duration
from client.connection import parse_address
from schema import cli_keys, keys, pack, request, unpack

EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2


def _duration(text: str) -> int:
    seconds = parse_duration(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (30m, 2h, 7d...)")
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m admin", description="Operate a zchat broker.")
    p.add_argument("--control", default="tcp://127.0.0.1:5557", metavar="HOST:PORT",
                   help="the broker's control address, HOST:PORT or tcp://HOST:PORT "
                        "(default %(default)s)")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to wait for the broker (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the raw reply as JSON")
    cli_keys.add_key_options(p, reads="broker.key and our admin.key_secret", own_key=(
        "--identity", "operator key pair to use instead of DIR/admin.key_secret"))
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("ls", help="rooms with member counts and members")
    sub.add_parser("users", help="users online and their rooms")
    kill = sub.add_parser("kill", help="destroy a room, ejecting its members")
    kill.add_argument("room")
    kill.add_argument("--reason", help="told to the ejected members")
    kick = sub.add_parser("kick", help="disconnect a user's session")
    kick.add_argument("name")
    kick.add_argument("--reason", help="told to the user")
    sub.add_parser("stats", help="uptime, clients, rooms, messages in and out")
    release = sub.add_parser("release", help="forget a registered nickname (a squatted "
                                             "one, say), so anyone may take it")
    release.add_argument("name")
    # Operators override any owner of a room.
    role = sub.add_parser("role", help="give or take a role in a room, over any owner")
    role.add_argument("room")
    role.add_argument("name")
    role.add_argument("role", choices=("owner", "moderator", "member"),
                      help="member takes the role away")
    mode = sub.add_parser("mode", help="show or change a room's settings")
    mode.add_argument("room")
    mode.add_argument("--invite", choices=("on", "off"), help="invite-only")
    mode.add_argument("--key", help="the key needed to join; 'off' removes it")
    mode.add_argument("--secret", choices=("on", "off"), help="left out of room listings")
    mode.add_argument("--topic", choices=("moderators", "anyone"), dest="subject_by",
                      help="who may set the topic")
    mode.add_argument("--history", choices=("shared", "joined"),
                      help="whether joiners see history from before they joined")
    eject = sub.add_parser("eject", help="remove a member from a room, over any owner")
    eject.add_argument("room")
    eject.add_argument("name")
    eject.add_argument("--reason", help="told to the member and the room")
    ban = sub.add_parser("ban", help="ban a nickname from a room, over any owner")
    ban.add_argument("room")
    ban.add_argument("name")
    ban.add_argument("--reason", help="told to them, and kept with the ban")
    ban.add_argument("--key", action="store_true",
                     help="ban their key too (they must be online)")
    ban.add_argument("--for", dest="duration", type=_duration, metavar="DURATION",
                     help="30m, 2h, 7d...; absent: until unbanned")
    invites = sub.add_parser("invites", help="list who is invited into a room")
    invites.add_argument("room")
    uninvite = sub.add_parser("uninvite", help="withdraw an invitation into a room")
    uninvite.add_argument("room")
    uninvite.add_argument("name")
    unban = sub.add_parser("unban", help="lift the bans on a nickname in a room")
    unban.add_argument("room")
    unban.add_argument("name")
    bans = sub.add_parser("bans", help="list a room's bans")
    bans.add_argument("room")
    keygen = sub.add_parser("keygen", help="create key pairs (no broker needed): the "
                                           "broker's and the operator's if missing")
    keygen.add_argument("--client", metavar="NAME",
                        help="also a client key pair DIR/clients/NAME.key_secret")
    keygen.add_argument("--operator", metavar="NAME",
                        help="also a further operator's pair, admitted once the broker "
                             "restarts: DIR/admins/NAME.key (+ secret)")
    return p.parse_args(argv)


def ask(control: str, message: dict[str, Any], timeout: float,
        credentials: tuple[bytes, keys.KeyPair] | None = None) -> dict[str, Any] | None:
    """One request, one reply; None if no broker answered in time. ``credentials``:
    the broker's public key and our operator key pair (None for plaintext)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if credentials is not None:
        keys.curve_client(sock, *credentials)
    try:
        with keys.handshake_watch(sock) as monitor:
            sock.connect(control)
            sock.send(pack(message))
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            ready = dict(poller.poll(timeout * 1000))
            if monitor in ready:
                raise keys.handshake_failure(monitor, control)
            if sock not in ready:
                return None
            return unpack(sock.recv())
    finally:
        sock.close(0)


def _credentials(args: argparse.Namespace) -> tuple[bytes, keys.KeyPair] | None:
    ours = cli_keys.key_pair_from(args, args.identity, "admin.key_secret")
    server_key = cli_keys.server_key_from(args)
    return None if server_key is None or ours is None else (server_key, ours)


def keygen(args: argparse.Namespace) -> int:
    directory = cli_keys.key_dir_from(args)
    for name in keys.ensure(directory):
        print(f"Created {directory / (name + '.key_secret')}")
    if args.client:
        print(f"Created {keys.new_pair(directory / 'clients', args.client)}")
    if args.operator:
        print(f"Created {keys.new_pair(directory / 'admins', args.operator)}")
    print(f"Broker public key (give it to remote clients as --server-key): "
          f"{keys.load(directory / 'broker.key').public.decode()}")
    return EXIT_OK


# Listings come a page at a time (the broker never lists more in one reply); the tool
# asks for the pages in turn and shows them as one.
_PAGED = {"ls": "rooms", "users": "users"}
_KEY = {"rooms": "room", "users": "name"}


def _ask_all(args: argparse.Namespace, fields: dict[str, Any],
             credentials: tuple[bytes, keys.KeyPair] | None) -> dict[str, Any] | None:
    reply = ask(args.control, request(1, args.cmd, **fields), args.timeout, credentials)
    listed = _PAGED.get(args.cmd)
    while listed and reply and reply.get("ok") and reply.get("more"):
        after = reply[listed][-1][_KEY[listed]]
        page = ask(args.control, request(1, args.cmd, after=after), args.timeout,
                   credentials)
        if page is None or not page.get("ok"):
            return page
        reply = {**page, listed: reply[listed] + page[listed]}
    return reply


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(ts))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _shown(value: Any) -> str:
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) \
        else str(value)


def _room_modes(r: dict[str, Any]) -> str:
    """ls: a room's settings that differ from an open room's, and its owners."""
    modes = r.get("modes") or {}
    flags = [name for name, on in (("invite-only", modes.get("invite")),
                                   ("key", modes.get("key")),
                                   ("secret", modes.get("secret")),
                                   ("topic by anyone", modes.get("subject_by") == "anyone"),
                                   ("history from join", modes.get("history") == "joined"))
             if on]
    owners = r.get("owners") or []
    return ((f"  [{', '.join(flags)}]" if flags else "")
            + (f"  owners: {', '.join(owners)}" if owners else ""))


def show(cmd: str, reply: dict[str, Any]) -> list[str]:
    if cmd == "ls":
        rooms = reply["rooms"]
        if not rooms:
            return ["No rooms"]
        return [f"{r['room']}  {_plural(r['count'], 'member')}"
                + (f": {', '.join(r['members'])}" if r["members"] else "")
                + (", ..." if len(r["members"]) < r["count"] else "")
                + _room_modes(r) for r in rooms]
    if cmd == "users":
        lines = [f"{u['name']}  in {', '.join(u['rooms']) or '(lobby)'}"
                 for u in reply["users"]] or ["No users logged in"]
        if reply.get("anonymous"):
            lines.append(f"(and {_plural(reply['anonymous'], 'client')} not logged in)")
        return lines
    if cmd == "kill":
        ejected = reply.get("ejected") or []
        return [f"Killed room {reply['room']}; ejected {_plural(len(ejected), 'member')}"
                + (f": {', '.join(ejected)}" if ejected else "")]
    if cmd == "kick":
        return [f"Kicked {reply['name']}"]
    if cmd == "release":
        return [f"Released {reply['name']}: anyone may take it now"]
    if cmd == "role":
        return [f"{reply['name']} is now {reply['role']} of {reply['room']}"]
    if cmd == "mode":
        modes = reply.get("modes", {})
        return [f"{reply['room']}: " + ", ".join(f"{k} {_shown(v)}" for k, v in modes.items())]
    if cmd == "eject":
        return [f"Removed {reply['name']} from {reply['room']}"]
    if cmd == "ban":
        return [f"Banned {b['name']} ({b['kind']}) from {reply['room']}"
                + (f" until {_when(b['until'])}" if b.get("until") else "")
                for b in reply.get("bans", [])]
    if cmd == "invites":
        return [", ".join(reply["invites"]) if reply.get("invites")
                else f"Nobody is invited into {reply['room']}"]
    if cmd == "uninvite":
        return [f"Withdrew the invitation of {reply['name']} into {reply['room']}"]
    if cmd == "unban":
        return [f"Lifted {_plural(reply.get('lifted', 0), 'ban')} on {reply['name']} in "
                f"{reply['room']}"]
    if cmd == "bans":
        return [f"{b['name']}  {b['kind']} ban by {b['by']}"
                + (f" until {_when(b['until'])}" if b.get("until") else "")
                + (f": {b['reason']}" if b.get("reason") else "")
                for b in reply.get("bans", [])] or [f"Nobody is banned from {reply['room']}"]
    if cmd == "stats":
        return [f"uptime        {reply['uptime']:.1f} s",
                f"clients       {reply['clients']} ({reply['users']} logged in)",
                f"rooms         {reply['rooms']}",
                f"messages in   {reply['messages_in']}",
                f"messages out  {reply['messages_out']}",
                f"room messages {reply['room_messages']}"]
    return [json.dumps(reply)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "keygen":
        return keygen(args)
    try:
        args.control = parse_address(args.control)
    except ValueError as exc:
        print(f"Error: --control: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        credentials = _credentials(args)
    except (OSError, ValueError) as exc:
        print(f"Error: cannot read the keys: {exc} (see --keys, or --insecure)",
              file=sys.stderr)
        return EXIT_ERROR
    fields = {k: getattr(args, k, None) for k in ("room", "name", "reason", "role",
                                                  "subject_by", "history", "duration")}
    for switch in ("invite", "secret"):
        if getattr(args, switch, None) is not None:
            fields[switch] = args.__dict__[switch] == "on"
    if args.cmd == "ban":
        fields["key"] = args.key or None  # a switch here: their key too
    elif getattr(args, "key", None) is not None:  # mode: the room key, or off
        fields["key"] = "" if args.key == "off" else args.key
    try:
        reply = _ask_all(args, fields, credentials)
    except keys.HandshakeRefused as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if reply is None:
        print(f"Error: no broker answered at {args.control} within {args.timeout:g} s",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(reply, default=repr))
    if not reply.get("ok"):
        print(f"Error: {reply.get('error')}", file=sys.stderr)
        return EXIT_ERROR
    if not args.json:
        print("\n".join(show(args.cmd, reply)))
    return EXIT_OK
