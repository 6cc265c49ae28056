"""What every part of a client's Session shares: its state, the limits, and how
lines are made (numerics, tags, zchat text cut into IRC lines). Pure: no sockets."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schema import protocol as P

from . import irc
from .irc import Message, neutralise
from .names import from_channel, from_nick, key, to_nick

SERVER = "zchat.gateway"
VERSION = "zchat-gateway-1"
HOST = "zchat"  # every user's host: zchat tells nobody where anyone connects from
# What we offer. sasl's value (its mechanisms) is told only to CAP LS 302 clients.
CAPS: dict[str, str | None] = {
    "batch": None,
    "draft/chathistory": None,
    "echo-message": None,
    "message-tags": None,
    "sasl": "PLAIN",
    "server-time": None,
}
SPLIT_MAX = 16  # IRC lines one zchat message may take; a longer one is cut, saying so
PENDING_MAX = 100  # requests unanswered at once: more is a flood (ERROR: Excess Flood)
HELD_MAX = 200  # lines waiting for an earlier one to be answered: more is a flood too
# Requests whose answer later lines may depend on (a JOIN before a PRIVMSG to it): lines
# after them wait. Messages are not waited on: zchat takes them in order anyway.
PIPELINED = frozenset({"say", "msg", "whisper"})
IMMEDIATE = frozenset({"PING", "PONG"})  # never wait behind anything: liveness
TARGETS_MAX = 4  # targets of one PRIVMSG or NOTICE (TARGMAX)
JOIN_MAX = 10  # channels in one JOIN
LIST_PAGES_MAX = 5  # pages of rooms one LIST reads (at most 1000 rooms)
WHO_PAGES_MAX = 10  # pages of members one NAMES or WHO of a room we are not in reads
SASL_MAX = 1200  # bytes of an AUTHENTICATE payload (base64 of name, password, NULs)
# After a broker restart nobody's session survives and no leave is told: members come
# back by themselves (joins we do not show again). Those not back this long after we
# are are shown leaving, so the channel's names are zchat's again.
RESYNC_AFTER = P.PEER_TIMEOUT + 1.0
CHANNEL_CONTEXT = "+draft/channel-context"
# zchat's budgets for password checks and room creations are kept by address, and every
# user of the gateway comes from its address: one IRC connection may spend only this
# much of them (docs/irc.md says so).
PASSWORD_TRIES = 3  # passwords one connection may have checked (PASS, SASL, IDENTIFY)
CREATIONS_MAX = 10  # rooms one connection may create within CREATIONS_WINDOW seconds
CREATIONS_WINDOW = 3600.0  # (zchat allows an address 120 an hour)
SERVICES = frozenset({"nickserv", "chanserv"})  # answered here, never a zchat user's

ISUPPORT = [
    f"AWAYLEN={P.AWAY_MAX}",
    # zchat folds names (schema/names.py) by NFKC, case and look-alike letters: more
    # than any CASEMAPPING says, and not always case-blind (Greek Η/η fold apart). ascii
    # is the one every client knows whose merges zchat always makes too, so a client
    # never takes two zchat users for one. (rfc1459 would merge [ and {, zchat does not.)
    "CASEMAPPING=ascii",
    f"CHANLIMIT=#:{P.ROOMS_PER_MEMBER_MAX}",
    "CHANMODES=b,k,,ist",
    f"CHANNELLEN={P.ROOM_MAX + 1}",
    "CHANTYPES=#",
    f"CHATHISTORY={P.HISTORY_PAGE_MAX}",
    f"KICKLEN={P.REASON_MAX}",
    "MODES=4",
    "MSGREFTYPES=msgid",
    "NETWORK=zchat",
    f"NICKLEN={P.NICK_MAX}",  # in characters, as every zchat length
    "PREFIX=(qo)~@",
    f"TARGMAX=PRIVMSG:{TARGETS_MAX},NOTICE:{TARGETS_MAX},JOIN:{JOIN_MAX},PART:,NAMES:1,"
    "WHOIS:1,KICK:1",
    f"TOPICLEN={P.SUBJECT_MAX}",
    "UTF8ONLY",
]
MOTD = [
    "This is zchat's IRC gateway: each zchat room is a #channel.",
    "JOIN #room enters it, and creates it if it is new.",
    "The room's recent history follows your JOIN.",
    "A whisper (to you alone, in a room) is a NOTICE naming the room.",
    "Claim a registered nickname with SASL PLAIN or PASS.",
]


@dataclass
class Channel:
    room: str  # the room's name as zchat shows it
    members: list[str] = field(default_factory=list)  # zchat names, in join order
    roles: dict[str, str] = field(default_factory=dict)  # key(name) -> owner / moderator
    subject: str = ""


def irc_time(ts: float) -> str:
    """A zchat time (seconds since the epoch) as server-time wants it."""
    ms = int(round(ts * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def msgid(room: str, seq: int) -> str:
    """A room event's id for IRC clients: its seq, and the room it is of (clients may
    keep ids across channels). CHATHISTORY references are read back from the seq."""
    return f"{seq}-{hashlib.sha256(key(room).encode()).hexdigest()[:10]}"


def just_before(name: str) -> str:
    """The greatest string that sorts before ``name`` and fits a listing's ``after``."""
    last = ord(name[-1])
    return name[:-1] + (chr(last - 1) + "\U0010ffff" if last > 1 else "")


def seq_of(reference: str) -> int | None:
    """``msgid=12-ab..`` -> 12."""
    value = reference.removeprefix("msgid=")
    head = value.split("-", 1)[0]
    return int(head) if head.isascii() and head.isdigit() and value != reference else None


_CHANNEL_ERRORS = {
    "no_such_room": "403", "bad_room_name": "403", "not_a_member": "442",
    "not_in_room": "441", "no_such_user": "401", "not_permitted": "482",
    "outranked": "482", "last_owner": "482", "invite_only": "473", "key_needed": "475",
    "banned": "474", "too_many_rooms": "405", "not_registered": "482",
}


class Core:
    """State and output of one IRC client's session (gateway/session.py)."""

    def __init__(self, *, server: str = SERVER, wall: Callable[[], float] = time.time,
                 created: str = ""):
        self.server = server
        self.wall = wall
        self.created = created or time.strftime("%Y-%m-%d %H:%M:%S")
        self._out: list[bytes] = []
        self._request: Callable[..., int] | None = None
        self._waiting: dict[int, tuple[Any, ...]] = {}
        self._barrier: set[int] = set()  # requests later lines wait on
        self._held: deque[Message] = deque()  # those lines, in order
        self.closed: str | None = None  # why, once ERROR was sent: close after sending
        self.wants_broker = False  # open the zchat session, then attach()
        self.caps: set[str] = set()
        self._cap_302 = False
        self._negotiating = False
        self.nick: str | None = None  # as the IRC client knows itself
        self.user = "zchat"
        self.realname = ""
        self._user_given = False
        self._password: str | None = None  # PASS
        self._password_tries = 0
        self._created: deque[float] = deque()  # when (wall clock) we created rooms
        self._sasl: str | None = None  # None, "plain" (reading), "checking", "done"
        self._sasl_data = ""
        self._sasl_login: tuple[str, str] | None = None
        self._registering: int | None = None  # the login that registration waits on
        self.name: str | None = None  # our zchat nickname, once logged in
        self._named_at = 0.0  # when (wall clock) we took our current nickname
        # Our room messages not yet acknowledged, by the key of the name they were sent
        # under, and the (room key, seq) of those acknowledged lately: what the room
        # tells of them is not shown again, even under a name we have given up since.
        self._saying: dict[str, int] = {}
        self._said: deque[tuple[str, int]] = deque(maxlen=64)
        self.registered = False
        self.channels: dict[str, Channel] = {}  # by key(room)
        self._replaying: dict[str, str | None] = {}  # rooms whose welcome is replayed
        self._batches = 0
        self._resync: bool | float = False  # True: due once timed; a float: when

    def fatal(self, text: str) -> None:
        if self.closed is None:
            self._send("ERROR", f"Closing Link: {self.nick or '*'} ({text})", source=None)
            self.closed = text

    def _send(self, command: str, *params: str, source: str | None = "",
              tags: dict[str, str] | None = None) -> None:
        src = self.server if source == "" else source
        self._out.append(irc.format_line(Message(command, list(params), tags or {}, src)))

    def _num(self, code: str, *params: str) -> None:
        self._send(code, self.nick or "*", *params)

    def _notice(self, text: str) -> None:
        self._send("NOTICE", self.nick or "*", text)

    @property
    def prefix(self) -> str:
        return f"{self.nick}!{self.user}@{HOST}"

    def _who_prefix(self, name: str) -> str:
        """A zchat user's IRC source. ``the operator`` (admin mode) is the server."""
        if name == "the operator" or not name:
            return self.server
        return f"{to_nick(name)}!zchat@{HOST}"

    def _tags(self, ts: Any = None, batch: str | None = None, mid: str | None = None,
              context: str | None = None) -> dict[str, str]:
        """The tags a line may carry, as far as the client asked for them."""
        tags: dict[str, str] = {}
        if "server-time" in self.caps and isinstance(ts, (int, float)):
            tags["time"] = irc_time(float(ts))
        if "batch" in self.caps and batch:
            tags["batch"] = batch
        if "message-tags" in self.caps:
            if mid:
                tags["msgid"] = mid
            if context:
                tags[CHANNEL_CONTEXT] = context
        return tags

    def _text(self, source: str, command: str, target: str, text: str, *, action: bool,
              tags: dict[str, str], prefix: str = "") -> None:
        """A zchat text as one or more IRC lines of at most 512 bytes each; ``prefix``
        (what kind of message it is, or when it was said) starts every one of them, so
        no continuation line reads as another kind."""
        overhead = len(f":{source} {command} {target} :{prefix}".encode()) + 2
        if action:
            overhead += len("\x01ACTION \x01")
        # No more of it is neutralised and cut than SPLIT_MAX lines can show: a long text
        # of invisible characters (each shown as <U+XXXX>) costs no more than a short one.
        shown = neutralise(text[:SPLIT_MAX * irc.LINE_MAX])
        pieces = irc.split_text(shown, irc.LINE_MAX - overhead, SPLIT_MAX)
        told = sum(len(p) for p in pieces)
        if told < len(shown) or len(text) > SPLIT_MAX * irc.LINE_MAX:
            rest = len(shown) - told + sum(len(p) for p in pieces[SPLIT_MAX - 1:]) \
                + max(0, len(text) - SPLIT_MAX * irc.LINE_MAX)
            pieces = pieces[:SPLIT_MAX - 1] + [
                f"[{rest} more characters: the whole message is in zchat]"]
        for piece in pieces:
            body = f"\x01ACTION {prefix}{piece}\x01" if action else prefix + piece
            self._send(command, target, body, source=source, tags=tags)

    def _ask(self, cmd: str, why: tuple[Any, ...], wait: bool = True, **fields: Any
             ) -> int | None:
        if self._request is None:
            return None
        if len(self._waiting) >= PENDING_MAX:
            self.fatal("Excess Flood")
            return None
        rid = self._request(cmd, **{k: v for k, v in fields.items() if v is not None})
        self._waiting[rid] = why
        if wait and cmd not in PIPELINED:
            self._barrier.add(rid)
        return rid

    def _me(self, name: Any) -> bool:
        """Is ``name`` ours now? Only the current one: a nickname we gave up is anyone's
        who takes it next, and what they say or suffer is theirs."""
        return isinstance(name, str) and self.name is not None and key(name) == key(
            self.name)

    def _ours(self, d: dict[str, Any]) -> bool:
        """Is this live room message one we sent (and echoed, or chose not to)?"""
        sender, room = d.get("from"), d.get("room")
        if self._me(sender):
            return True
        if not isinstance(sender, str) or not isinstance(room, str):
            return False
        return bool(self._saying.get(key(sender))) or (key(room), d.get("seq")) in self._said

    def _was_me(self, name: Any, ts: Any) -> bool:
        """Was a past line by ``name`` ours? Only if it is our name now and it was said
        since we took it; otherwise (a former nickname, or ours before we held it) we
        cannot tell, and it is shown as the other person's it may have been."""
        return self._me(name) and isinstance(ts, (int, float)) and ts >= self._named_at

    def _took_name(self, name: str) -> None:
        self.name = name
        self.nick = to_nick(name)
        self._named_at = self.wall() - 1.0  # zchat's clock and ours may differ a little

    def _channel(self, target: str) -> tuple[str, Channel] | None:
        room = from_channel(target)
        if room is None:
            return None
        ch = self.channels.get(key(room))
        return (key(room), ch) if ch is not None else None

    def _chan_error(self, target: str, code: Any, text: Any) -> None:
        numeric = _CHANNEL_ERRORS.get(str(code))
        if numeric is None:
            self._notice(f"{target}: {text}")
        else:
            self._num(numeric, target, str(text))

    def _try_register(self) -> None:
        if (self.registered or self.closed is not None or self._negotiating
                or self.nick is None or not self._user_given
                or self._sasl in ("plain", "checking")):
            return
        if self._request is None:
            self.wants_broker = True
            return
        if self.name is not None:  # SASL logged us in already
            self._welcome()
            return
        if self._registering is None:
            if self._password is not None and not self._may_try_password():
                return  # 464 said so: another nickname may be tried
            self._registering = self._ask("login", ("register", self.nick),
                                          name=from_nick(self.nick),
                                          password=self._password)

    def _may_try_password(self) -> bool:
        """One more password checked for this connection? Else 464, and no."""
        if self._password_tries >= PASSWORD_TRIES:
            self._send("464", self.nick if self.registered and self.nick else "*",
                       "Password incorrect: too many password attempts on this connection")
            return False
        self._password_tries += 1
        return True

    def _may_create(self) -> bool:
        now = self.wall()
        while self._created and now - self._created[0] > CREATIONS_WINDOW:
            self._created.popleft()
        if len(self._created) >= CREATIONS_MAX:
            return False
        self._created.append(now)
        return True

    def _welcome(self) -> None:
        self.registered = True
        self._num("001", f"Welcome to zchat through its IRC gateway, {self.prefix}")
        self._num("002", f"Your host is {self.server}, running version {VERSION}")
        self._num("003", f"This server was created {self.created}")
        self._num("004", self.server, VERSION, "i", "bikoqst", "bkoq")
        for start in range(0, len(ISUPPORT), 12):
            self._num("005", *ISUPPORT[start:start + 12], "are supported by this server")
        self._motd()

    def _motd(self) -> None:
        self._num("375", f"- {self.server} Message of the day -")
        for line in MOTD:
            self._num("372", f"- {line}")
        self._num("376", "End of /MOTD command.")

    def _nick_refused(self, nick: str, code: Any, text: Any) -> None:
        # Before registration no nick is ours yet: "*", as servers say.
        target = self.nick if self.registered and self.nick else "*"
        if code == "bad_username":
            line = ("432", nick, "Erroneous nickname: not a zchat nickname")
        elif code in ("bad_password", "rate_limited"):
            line = ("464", f"Password incorrect: {text}")
        elif code == "name_reserved":
            line = ("433", nick, "Nickname is registered: give its password with SASL "
                                 "PLAIN or PASS")
        elif code == "name_taken":
            line = ("433", nick, "Nickname is already in use")
        else:
            line = ("433", nick, str(text))
        self._send(line[0], target, *line[1:])

    def _open_batch(self, kind: str, target: str) -> str | None:
        if "batch" not in self.caps:
            return None
        self._batches += 1
        ref = f"z{self._batches}"
        self._send("BATCH", f"+{ref}", kind, target)
        return ref

    def _end_replay(self, k: str) -> None:
        ref = self._replaying.pop(k, None)
        if ref:
            self._send("BATCH", f"-{ref}")

    def _room_text(self, d: dict[str, Any], target: str, batch: str | None,
                   replayed: bool = False, past: bool = False) -> None:
        """A room message; ``past``: from history (a welcome's replay or CHATHISTORY),
        shown under the name it was said with, as ours only if it surely was."""
        sender = d.get("from")
        text = d.get("text")
        if not isinstance(sender, str) or not isinstance(text, str):
            return
        seq, ts = d.get("seq"), d.get("ts")
        mine = self._was_me(sender, ts) if past or replayed else self._me(sender)
        source = self.prefix if mine else self._who_prefix(sender)
        mid = msgid(d.get("room") or "", seq) if isinstance(seq, int) else None
        prefix = ""
        if replayed and "server-time" not in self.caps and isinstance(ts, (int, float)):
            prefix = time.strftime("[%H:%M] ", time.localtime(ts))
        self._text(source, "PRIVMSG", target, text, action=bool(d.get("me")),
                   tags=self._tags(ts, batch, mid), prefix=prefix)
