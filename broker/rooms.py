"""Rooms people own and protect: who may do what in a room, and what keeps others out.

Pure rules, no store and no sockets: the chat core (broker/chat.py) asks them before it
changes anything, and keeps what they hold (settings, roles, invites, bans) in the store.

Ranks, lowest first: a member (anyone in the room, or coming in), a moderator, an owner,
and the operator (the admin socket), who outranks every owner. Roles are held by
registered nicknames, so they survive reconnects and restarts; the creator of a room whose
nickname is not registered owns it for that session only (registering keeps it).

What each request needs is the table ``RULES`` below: the least rank, and whether the
person acted on must rank lower than the one acting. The order of checks for every room
request is: the room exists, you are in it, your rank (``not_permitted``), then what the
request is about (its target, its rank: ``outranked``), then the store may be written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from schema import ProtocolError

MEMBER, MODERATOR, OWNER, OPERATOR = 1, 2, 3, 4
RANKS = {"member": MEMBER, "moderator": MODERATOR, "owner": OWNER}
ROLE_NAMES = {MEMBER: "member", MODERATOR: "moderator", OWNER: "owner",
              OPERATOR: "operator"}


@dataclass(frozen=True)
class Rule:
    needs: int  # the least rank that may
    over: bool  # acts on someone, who must rank lower (but oneself, for ``role``)
    what: str  # for the refusal: "Only moderators of R may <what>"


RULES: dict[str, Rule] = {
    "subject": Rule(MODERATOR, False, "set its topic"),  # anyone, if the room says so
    "mode": Rule(MODERATOR, False, "change its settings"),
    "invite": Rule(MODERATOR, False, "invite people"),
    "invites": Rule(MODERATOR, False, "list its invites"),
    "uninvite": Rule(MODERATOR, False, "withdraw invites"),
    "kick": Rule(MODERATOR, True, "kick people"),
    "ban": Rule(MODERATOR, True, "ban people"),
    "unban": Rule(MODERATOR, False, "lift bans"),
    "bans": Rule(MODERATOR, False, "list its bans"),
    "role": Rule(OWNER, True, "give or take roles"),
}


@dataclass
class Settings:
    """A room's settings (its modes) and its subject: the topic people read."""

    invite: bool = False  # only the invited, and those with a role, may join
    key: str = ""  # if set, needed to join (unless invited, or with a role)
    secret: bool = False  # left out of rooms listings for non-members
    subject_by: str = "moderators"  # or "anyone" in the room
    history: str = "shared"  # or "joined": a joiner sees only what came after its join
    subject: str = ""
    subject_set_by: str = ""

    @classmethod
    def load(cls, stored: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})

    def dump(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def closed(self) -> bool:
        """A non-member learns nothing of a closed room but its name."""
        return self.invite or bool(self.key)

    def modes(self) -> dict[str, Any]:
        """The settings as shown: a key is told to be there, never what it is."""
        return {"invite": self.invite, "key": bool(self.key), "secret": self.secret,
                "subject_by": self.subject_by, "history": self.history}


@dataclass(frozen=True)
class Ban:
    kind: str  # "name" (a nickname's fold) or "key" (a CURVE key)
    who: str
    name: str  # the nickname as given (for a key: the one it was banned with)
    by: str
    reason: str
    until: float | None  # None: until lifted

    def shown(self) -> dict[str, Any]:
        ban: dict[str, Any] = {"name": self.name, "by": self.by, "kind": self.kind,
                               "reason": self.reason}
        if self.until is not None:
            ban["until"] = self.until
        return ban


@dataclass
class Access:
    """What a room's people set up: settings, roles, invites, bans (all kept in the store
    as ``(kind, who, body)`` entries; see ``entry``)."""

    settings: Settings = field(default_factory=Settings)
    roles: dict[str, tuple[str, str]] = field(default_factory=dict)  # fold -> (role, shown)
    invites: dict[str, str] = field(default_factory=dict)  # fold -> shown
    bans: dict[tuple[str, str], Ban] = field(default_factory=dict)  # (kind, who) -> ban

    @classmethod
    def load(cls, settings: dict[str, Any],
             entries: list[tuple[str, str, dict[str, Any]]]) -> Access:
        access = cls(Settings.load(settings))
        for kind, who, body in entries:
            if kind == "role" and body.get("role") in ("owner", "moderator"):
                access.roles[who] = (body["role"], body.get("name", who))
            elif kind == "invite":
                access.invites[who] = body.get("name", who)
            elif kind in ("ban:name", "ban:key"):
                access.bans[(kind[4:], who)] = Ban(
                    kind[4:], who, body.get("name", who), body.get("by", ""),
                    body.get("reason", ""), body.get("until"))
        return access

    def owners(self) -> list[str]:
        return sorted(shown for role, shown in self.roles.values() if role == "owner")

    def moderators(self) -> list[str]:
        return sorted(shown for role, shown in self.roles.values() if role == "moderator")

    def rank(self, folded: str | None, registered: bool, held: str | None = None) -> int:
        """The rank of a nickname: its stored role if it is registered (whoever holds a
        registered nickname proved it is theirs), else what its session holds."""
        role = self.roles.get(folded or "", (None, ""))[0] if registered else None
        return max(RANKS.get(role or "", MEMBER), RANKS.get(held or "", MEMBER))

    def ban_on(self, folded: str | None, key: str | None, now: float) -> Ban | None:
        """The ban that keeps out this nickname or this key now, if any."""
        for ban in (self.bans.get(("name", folded or "")),
                    self.bans.get(("key", key)) if key else None):
            if ban is not None and (ban.until is None or ban.until > now):
                return ban
        return None

    def live_bans(self, now: float) -> list[Ban]:
        return sorted((b for b in self.bans.values() if b.until is None or b.until > now),
                      key=lambda b: (b.name, b.kind))


def check(action: str, room: str, rank: int, settings: Settings) -> None:
    """May someone of this rank (a member of the room) do this in it?"""
    rule = RULES[action]
    needs = MEMBER if action == "subject" and settings.subject_by == "anyone" else rule.needs
    if rank < needs:
        who = "owners" if needs == OWNER else "moderators"
        raise ProtocolError("not_permitted", f"Only {who} of {room} may {rule.what}")


def check_over(action: str, room: str, rank: int, target: str, target_rank: int,
               oneself: bool) -> None:
    """May someone of this rank act on this person? Only on those of lower rank; a role
    may also be given up by its holder."""
    if RULES[action].over and target_rank >= rank and not (action == "role" and oneself):
        raise ProtocolError("outranked", f"{target} ranks as high as you in {room}")


def check_entry(room: str, access: Access, rank: int, folded: str | None,
                key: str | None, invited: bool, given_key: str | None, now: float) -> None:
    """May this person join? Banned first (a ban holds against invites and roles below
    the operator), then invite-only, then the room key; the invited and those with a
    role need no key."""
    ban = access.ban_on(folded, key, now)
    if ban is not None and rank < OPERATOR:
        why = f": {ban.reason}" if ban.reason else ""
        raise ProtocolError("banned", f"You are banned from {room}{why}")
    if rank >= MODERATOR or invited:
        return
    if access.settings.invite:
        raise ProtocolError("invite_only",
                            f"{room} is invite-only: ask one of its moderators to invite you")
    if access.settings.key and given_key != access.settings.key:
        raise ProtocolError("key_needed", f"{room} needs its key: /join {room} key=KEY"
                            if given_key is None else f"Wrong key for {room}")


def entry(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """An access entry's body as stored (kept small: no empty fields)."""
    return {k: v for k, v in body.items() if v not in (None, "")}
