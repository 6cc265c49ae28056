"""The zchat wire protocol: every message kind, field, limit and error code.

This module is the single source of truth. The broker validates with it, the client
builds requests from it, the admin tool speaks it, and PROTOCOL.md documents it.
Nothing here touches a socket.

Shape of the conversation (details in PROTOCOL.md):

* client DEALER -> broker ROUTER: one frame, a msgpack map ``{"id": int, "cmd": str, ...}``
* broker ROUTER -> client: one frame, a msgpack array of that loop turn's messages for the
  client, each a reply ``{"re": id, "ok": true, ...}`` or
  ``{"re": id, "ok": false, "code": str, "error": str}``, or an event ``{"ev": str, ...}``
* broker PUB -> client SUB: two frames, ``[topic, msgpack array of events]`` where the
  topic is the room's capability topic ``room name + NUL + secret token``
* admin REQ -> broker control ROUTER: the same request/reply maps as clients, one map
  per frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .names import is_name_text as _names_rule

# 2: every frame the broker sends a client is an array of messages (1 sent single maps).
PROTOCOL_VERSION = 2

# --- Limits ------------------------------------------------------------------------------
# Every bound the broker enforces lives here so clients can check before sending.

NICK_MAX = 20  # characters
ROOM_MAX = 32  # characters
TEXT_MAX = 65535  # characters of one chat message
REASON_MAX = 200  # characters of a kill/kick reason
RECIPIENTS_MAX = 20  # names in one group message
HISTORY_PAGE_MAX = 200  # events in one history reply...
HISTORY_TEXT_MAX = 64 * 1024  # ...and characters of text in it (one event at least)
JOIN_HISTORY_DEFAULT = 50  # events replayed to a joiner
ROOMS_PER_MEMBER_MAX = 50
LIST_PAGE_DEFAULT = 100  # names in one page of rooms, users or members...
LIST_PAGE_MAX = 200  # ...at most, whatever the broker holds (ask again with "after")
AWAY_MAX = 200  # characters of an away message
CLIENT_ID_MAX = 64  # characters of the client's self-chosen id (recognises retries)
PASSWORD_MIN, PASSWORD_MAX = 8, 128  # characters of a nickname's password
FRAME_MAX = 1 << 20  # bytes of one frame; larger frames are dropped by libzmq (MAXMSGSIZE)
CONTROL_FRAME_MAX = 64 << 10
# A request is a small flat map; a frame larger than PLAIN_DECODE_MAX bytes is walked
# header by header, so that no frame costs the broker more than a few dozen items to read.
REQUEST_FIELDS_MAX = 16  # fields in one request map
PLAIN_DECODE_MAX = 512  # bytes: below this a frame cannot hold items enough to matter
# Bounds subscriptions and also CURVE handshake commands (INITIATE is ~300 bytes). libzmq
# keeps every subscription a peer *requests* of a manual XPUB until that peer leaves, at
# ~75 bytes per topic byte: the tighter this, the less a refused subscriber can cost.
SUBSCRIPTION_FRAME_MAX = 512

ANSWERS_REMEMBERED = 100_000  # replies kept to answer retried requests without redoing them

# Abuse limits: each client's requests pass a token bucket (a burst, then a steady rate);
# password checks are costly on purpose, so the whole broker does only a few a second.
RATE_DEFAULT = 20.0  # requests a second, steady
BURST_DEFAULT = 100  # requests at once: more than a client re-joining all its rooms sends
# What a request costs to deliver is charged too, in characters times recipients: one
# broadcast of 262,000 characters to 40 people is 10 million, not one request. History
# pages and welcomes are charged by the text they return.
DELIVERY_RATE_DEFAULT = 4_000_000  # characters delivered a second, steady
DELIVERY_BURST_DEFAULT = 16_000_000  # characters at once
# A join is published to every member, at an event's weight (text_weight); a leave also
# sends each remaining member its room's new topic (a rekey), one message each from the
# loop: it counts this many characters per member told.
REKEY_WEIGHT = 1024
PASSWORD_CHECKS_PER_SECOND = 10  # broker-wide
PASSWORD_CHECKS_PER_MINUTE = 5  # per key and per address, across sessions
FAILURES_PER_NAME = 20  # wrong passwords for one nickname, from sources never let in...
FAILURES_WINDOW = 600.0  # ...in this many seconds; then only those let in before may try
REGISTRATIONS_PER_KEY = 3  # nicknames one key may hold
REGISTRATIONS_PER_HOUR = 10  # nicknames registered per key and per address
ROOMS_CREATED_PER_HOUR = 120  # per key and per address
EMPTY_ROOM_LIFETIME = 7 * 24 * 3600.0  # seconds a room may stay empty before it goes
OWNED_ROOM_LIFETIME = 365 * 24 * 3600.0  # ...if a registered nickname owns it
# Disk one source may fill: characters of history it stores, a burst then a steady rate
# (a person typing fast all day stores a few megabytes), and characters one room keeps.
STORE_BURST = 4_000_000
STORE_RATE = 200.0  # characters a second: 17 million a day
ROOM_HISTORY_MAX = 256 << 20  # characters of a room's stored history
MEMBERS_SHOWN = 20  # members named per room in the operator's ls
# Rooms people own and protect (broker/rooms.py has the rules).
SUBJECT_MAX = 300  # characters of a room's topic as people read it (wire: "subject")
ROOM_KEY_MAX = 64  # characters of a room key, needed to join a keyed room
BAN_DURATION_MAX = 10 * 365 * 24 * 3600  # seconds a ban may last; none given: for good
BANS_MAX = 500  # bans one room may hold (bans lists them in one reply)
INVITES_MAX = 500  # invites one room may hold, kept and held (invites lists them at once)
ROLES = ("owner", "moderator", "member")  # a member has no role: "member" takes it away
HISTORY_VISIBILITY = ("shared", "joined")  # joiners see earlier history, or from their join
SUBJECT_SETTERS = ("moderators", "anyone")  # who may set the room's subject

HEARTBEAT_INTERVAL = 1.0  # seconds between client pings
PEER_TIMEOUT = 4.0  # a client silent this long is gone; a broker silent this long is dead
ROOM_TICK_INTERVAL = 1.0  # seconds between a room's "latest seq" ticks on the publisher

# --- Error codes -------------------------------------------------------------------------
# code -> the text a client shows. Texts named by the product spec are exact.

ERRORS: dict[str, str] = {
    "malformed": "Malformed request",
    "unknown_command": "Unknown command",
    "invalid_command": "Invalid command",
    "bad_username": "Bad username",
    "bad_message": "Bad message",
    "bad_room_name": "Bad room name",
    "bad_reason": "Bad reason",
    "name_taken": "Nickname is taken",
    "already_logged_in": "Already logged in",
    "not_logged_in": "Log in first",
    "no_such_user": "No such user",
    "no_such_room": "No such room",
    "room_exists": "Room already exists",
    "not_a_member": "You are not in that room",
    "not_in_room": "That user is not in the room",
    "self_message": "You cannot message yourself",
    "too_many_rooms": "Too many rooms",
    "server_full": "Server full",
    "no_session": "Say hello first",
    "version": "Unsupported protocol version",
    "name_reserved": "Nickname is registered",
    "bad_password": "Bad password",
    "credentials_needed": "Give a password",
    "rate_limited": "Slow down",
    "too_large": "Too large to deliver",
    "retry_needs_client": "A retry needs a client id",
    "bad_route": "Routing id not bound to your key",
    "store_unavailable": "History cannot be written now",
    "too_many_registrations": "Too many registrations",
    "not_registered": "Nickname is not registered",
    "quota_exceeded": "Storage quota exceeded",
    "not_permitted": "You may not do that in this room",
    "outranked": "They rank as high as you in this room",
    "last_owner": "A room needs an owner",
    "invite_only": "That room is invite-only",
    "key_needed": "That room needs a key",
    "banned": "You are banned from that room",
    "not_banned": "Nobody by that name is banned",
    "not_invited": "Nobody by that name is invited",
    "too_many_bans": "Too many bans",
    "too_many_invites": "Too many invites",
}


class ProtocolError(Exception):
    """A request the broker refuses; carries the code and the text for the peer, and the
    request's id when it had a usable one (so the refusal can be matched to it)."""

    def __init__(self, code: str, text: str | None = None):
        assert code in ERRORS, code  # our own bug, never a peer's: codes are constants
        self.code = code
        self.text = text or ERRORS[code]
        self.rid: int | None = None
        super().__init__(self.text)


# --- Value rules -------------------------------------------------------------------------


def _is_name(value: str, limit: int) -> bool:
    """A nickname or room name: 1..limit characters, printable, no space, no comma (lists
    of names use commas), not starting with "/" or "#!"; and, so that nobody can pass for
    someone else, in NFC, with nothing invisible (no default-ignorable code points), only
    letters, digits and marks of well-known scripts plus ASCII punctuation, and no mixing
    of scripts but the Japanese and Korean mixes. The rule and its reasons: schema/names.py,
    whose ``fold`` gives the key under which names are unique.
    """
    return _names_rule(value, limit)


def is_nickname(value: str) -> bool:
    return _is_name(value, NICK_MAX)


def is_room_name(value: str) -> bool:
    return _is_name(value, ROOM_MAX)


def is_text(value: str) -> bool:
    return 0 < len(value) <= TEXT_MAX


def is_password(value: str) -> bool:
    return PASSWORD_MIN <= len(value) <= PASSWORD_MAX


def text_weight(event: dict) -> int:
    """What an event counts against a history page's text budget."""
    text = event.get("text")
    return (len(text) if isinstance(text, str) else 0) + 64


def is_reason(value: str) -> bool:
    return len(value) <= REASON_MAX and value.isprintable()


def is_subject(value: str) -> bool:
    """A room's topic as people read it; the empty string clears it."""
    return len(value) <= SUBJECT_MAX and value.isprintable()


def is_room_key(value: str) -> bool:
    """A room key: 1..64 printable characters, no spaces (typed after ``key=``)."""
    return 0 < len(value) <= ROOM_KEY_MAX and value.isprintable() and " " not in value


# --- Fields and kinds --------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field of a request: its wire type, whether it may be absent, its rule.

    ``error`` is the code sent when the value breaks the rule; a value of the wrong wire
    type or a missing required field is ``invalid_command``.
    """

    name: str
    kind: type
    required: bool = True
    rule: Callable[[Any], bool] | None = None
    error: str = "invalid_command"
    doc: str = ""


def _names(value: list) -> bool:
    if not 0 < len(value) <= RECIPIENTS_MAX:
        return False
    for name in value:  # a loop, not all(...): this runs for every private message
        if type(name) is not str or not is_nickname(name):
            return False
    return True


def _page(value: int) -> bool:
    return 0 < value <= HISTORY_PAGE_MAX


def _list_page(value: int) -> bool:
    return 0 < value <= LIST_PAGE_MAX


def _seq(value: int) -> bool:
    return 0 <= value < 1 << 63


NICK = Field("name", str, rule=is_nickname, error="bad_username", doc="a nickname")
OPT_NICK = Field("name", str, required=False, rule=is_nickname, error="bad_username",
                 doc="nickname to take first (optional)")
ROOM = Field("room", str, rule=is_room_name, error="bad_room_name", doc="a room name")
TEXT = Field("text", str, rule=is_text, error="bad_message", doc="1..65535 characters")
PASSWORD = Field("password", str, required=False, rule=is_password, error="bad_password",
                 doc=f"{PASSWORD_MIN}..{PASSWORD_MAX} characters (optional)")
REASON = Field("reason", str, required=False, rule=is_reason, error="bad_reason",
               doc="why (optional, shown to those affected)")
ROOM_KEY = Field("key", str, required=False, rule=is_room_key,
                 doc=f"the room's key, 1..{ROOM_KEY_MAX} characters, no spaces (optional)")
TARGET = Field("name", str, rule=is_nickname, error="bad_username",
               doc="the nickname acted on")


def _duration(value: int) -> bool:
    return 0 < value <= BAN_DURATION_MAX


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in choices


# The settings of a room (mode): each optional; a mode request without any reads them.
MODE_FIELDS = (
    Field("invite", bool, required=False, doc="invite-only: only the invited may join"),
    Field("key", str, required=False, rule=lambda v: v == "" or is_room_key(v),
          doc="a key needed to join; the empty string removes it"),
    Field("secret", bool, required=False, doc="left out of rooms listings for non-members"),
    Field("subject_by", str, required=False, rule=_one_of(SUBJECT_SETTERS),
          doc="who may set the subject: moderators or anyone in the room"),
    Field("history", str, required=False, rule=_one_of(HISTORY_VISIBILITY),
          doc="shared: joiners see earlier history; joined: only from their join"),
)
ROLE = Field("role", str, rule=_one_of(ROLES), doc="owner, moderator, or member (no role)")
# Paging of listings: names sort as strings; a page holds those after "after".
AFTER = Field("after", str, required=False, rule=lambda v: len(v) <= ROOM_MAX,
              doc="list only names sorting after this one (the last of the previous page)")
LIMIT = Field("limit", int, required=False, rule=_list_page,
              doc=f"names in the page, 1..{LIST_PAGE_MAX}, default {LIST_PAGE_DEFAULT}")


@dataclass(frozen=True)
class Kind:
    """A request kind: its fields and a one-line description."""

    cmd: str
    fields: tuple[Field, ...]
    doc: str


BAN_FIELDS = (ROOM, TARGET, REASON,
              Field("key", bool, required=False, doc="ban their key too (they must be online)"),
              Field("duration", int, required=False, rule=_duration,
                    doc="seconds the ban lasts; absent: until unbanned"))


def _kinds(*kinds: Kind) -> dict[str, Kind]:
    return {k.cmd: k for k in kinds}


# Requests a chat client sends to the broker's ROUTER.
CLIENT_REQUESTS = _kinds(
    Kind("hello", (
        Field("version", int, doc=f"protocol version, {PROTOCOL_VERSION}"),
        Field("client", str, required=False, rule=lambda v: 0 < len(v) <= CLIENT_ID_MAX,
              doc="the client's stable random id"),
    ), "open a session; the reply carries the publisher address and limits"),
    Kind("ping", (), "liveness; answered with an empty ok"),
    Kind("login", (NICK, PASSWORD),
         "take a nickname; a registered one needs its password or its key"),
    Kind("register", (PASSWORD,),
         "reserve your nickname to your key, or to a password if one is given"),
    Kind("logout", (), "give up the nickname and leave every room"),
    Kind("users", (AFTER, LIMIT), "list logged-in users, a page at a time"),
    Kind("rooms", (AFTER, LIMIT), "list rooms with their member counts, a page at a time"),
    Kind("create", (ROOM, OPT_NICK), "create a room and enter it"),
    Kind("join", (ROOM, OPT_NICK, ROOM_KEY),
         "enter a room; the reply carries its topic and history"),
    Kind("leave", (ROOM,), "leave a room"),
    Kind("who", (ROOM, AFTER, LIMIT), "list a room's members, a page at a time"),
    Kind("say", (ROOM, TEXT, Field("me", bool, required=False, doc="an action (/me)")),
         "send a message to a room you are in"),
    Kind("whisper", (ROOM, Field("to", str, rule=is_nickname, error="bad_username"), TEXT),
         "send a message to one member of a room you are in"),
    Kind("msg", (Field("to", list, rule=_names, error="bad_username",
                       doc="1..20 nicknames"), TEXT),
         "private message to one user, or a group message to several"),
    Kind("broadcast", (TEXT,), "message every logged-in user"),
    Kind("history", (
        ROOM,
        Field("before", int, required=False, rule=_seq, doc="only events with seq < before"),
        Field("after", int, required=False, rule=_seq, doc="only events with seq > after"),
        Field("limit", int, required=False, rule=_page, doc="1..200, default 50"),
    ), "page through a room's stored events"),
    Kind("subject", (ROOM, Field("text", str, required=False, rule=is_subject,
                                 error="bad_message",
                                 doc=f"0..{SUBJECT_MAX} printable characters; empty "
                                     f"clears it; absent: only read it")),
         "read or set a room's topic (its subject on the wire)"),
    Kind("mode", (ROOM, *MODE_FIELDS), "read or change a room's settings"),
    Kind("role", (ROOM, TARGET, ROLE), "make someone an owner or moderator, or neither"),
    Kind("invite", (ROOM, TARGET), "let one person into an invite-only or keyed room"),
    Kind("invites", (ROOM,), "list who is invited into a room"),
    Kind("uninvite", (ROOM, TARGET), "withdraw an invitation"),
    Kind("kick", (ROOM, TARGET, REASON), "remove a member from a room"),
    Kind("ban", BAN_FIELDS,
         "ban a nickname (and its key) from a room, removing them if in it"),
    Kind("unban", (ROOM, TARGET), "lift the bans on a nickname (and on keys banned with it)"),
    Kind("bans", (ROOM,), "list a room's bans"),
    Kind("away", (Field("text", str, required=False,
                        rule=lambda v: 0 < len(v) <= AWAY_MAX and v.isprintable(),
                        error="bad_message", doc="why you are away; absent: you are back"),),
         "set or clear your away message, told to those who message you"),
    Kind("bye", (), "end the session (logout and forget this client)"),
)

# Requests the admin tool sends to the broker's control socket.
ADMIN_REQUESTS = _kinds(
    Kind("ls", (AFTER, LIMIT), "rooms with member counts and members, a page at a time"),
    Kind("users", (AFTER, LIMIT), "users online and their rooms, a page at a time"),
    Kind("kill", (ROOM, REASON), "destroy a room, ejecting its members"),
    Kind("kick", (NICK, REASON), "disconnect a user's session"),
    Kind("stats", (), "uptime, clients, rooms, messages in and out"),
    Kind("release", (NICK,), "forget a registered nickname, so anyone may take it"),
    # Operators override any owner: the same rules, with a rank above every owner.
    Kind("role", (ROOM, TARGET, ROLE), "give or take a role in a room"),
    Kind("mode", (ROOM, *MODE_FIELDS), "read or change a room's settings"),
    Kind("eject", (ROOM, TARGET, REASON), "remove a member from a room"),
    Kind("ban", BAN_FIELDS, "ban a nickname (and its key) from a room"),
    Kind("unban", (ROOM, TARGET), "lift the bans on a nickname in a room"),
    Kind("bans", (ROOM,), "list a room's bans"),
    Kind("invites", (ROOM,), "list who is invited into a room"),
    Kind("uninvite", (ROOM, TARGET), "withdraw an invitation"),
)

# Events the broker sends without being asked (ROUTER, to one client).
DIRECT_EVENTS = {
    "dm": "a private or group message: from, to (list), text, ts",
    "whisper": "a whisper in a shared room: from, room, text, ts",
    "broadcast": "a message to everyone: from, text, ts",
    "ejected": "you were removed from a room: room, reason",
    "rekey": "a room's topic changed (someone left): room, topic, seq",
    "kicked": "the operator ended your session: reason",
    "invited": "a moderator invited you into a room: room, by",
    "shutdown": "the broker is stopping: reason",
}

# Events of a room's sequenced stream (publisher, and history replies).
ROOM_EVENTS = {
    "msg": "a chat message: room, seq, from, text, ts, me (optional)",
    "join": "a member entered: room, seq, name, ts",
    "nick": "a member changed nickname: room, seq, name (the new one), old, ts",
    "leave": "a member left: room, seq, name, ts, reason (optional)",
    "subject": "the room's topic was set: room, seq, name (who set it), text, ts",
    "mode": "the room's settings changed: room, seq, name (who), ts, and each setting "
            "changed (invite, key (true/false: never the key itself), secret, subject_by, "
            "history)",
    "role": "a role was given or taken: room, seq, name, role, by, ts",
}
# Published but not sequenced: tells subscribers the room's latest seq.
ROOM_TICK = "tick"
