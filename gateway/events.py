"""What zchat tells unasked (room events, private messages, the connection's state)
as IRC messages. Pure: no sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core import Core
from .irc import neutralise
from .names import key, to_channel, to_nick


class Events(Core):
    """zchat events in."""

    def _ev_msg(self, d: dict[str, Any]) -> None:
        room = d.get("room")
        if not isinstance(room, str) or key(room) not in self.channels:
            return
        target = to_channel(self.channels[key(room)].room)
        if d.get("replay"):
            k = key(room)
            if k in self._replaying and self._replaying[k] is None:
                self._replaying[k] = self._open_batch("chathistory", target) or ""
            self._room_text(d, target, self._replaying.get(k) or None, replayed=True)
        elif not self._ours(d):  # ours was echoed when zchat took it
            self._room_text(d, target, None)

    def _ev_join(self, d: dict[str, Any]) -> None:
        ch, name = self.channels.get(key(str(d.get("room")))), d.get("name")
        if d.get("replay") or ch is None or not isinstance(name, str) or self._me(name):
            return
        if any(key(m) == key(name) for m in ch.members):
            return  # back after a broker restart: never gone, as far as IRC knows
        ch.members.append(name)
        self._send("JOIN", to_channel(ch.room), source=self._who_prefix(name),
                   tags=self._tags(d.get("ts")))

    def _ev_leave(self, d: dict[str, Any]) -> None:
        ch, name = self.channels.get(key(str(d.get("room")))), d.get("name")
        if d.get("replay") or ch is None or not isinstance(name, str):
            return
        reason = str(d.get("reason") or "left")
        target = to_channel(ch.room)
        kicked = reason.startswith(("kicked by ", "banned by "))
        if self._me(name):
            if kicked:  # we were removed: ejected follows, and finds nothing to do
                self.channels.pop(key(ch.room), None)
                by, _, why = reason.partition(" by ")[2].partition(": ")
                self._send("KICK", target, self.nick or "*", why or reason,
                           source=self._who_prefix(by), tags=self._tags(d.get("ts")))
            return  # our own leave is told by the reply; a time-out by the resume
        if not any(key(m) == key(name) for m in ch.members):
            return
        tags = self._tags(d.get("ts"))
        if reason == "left":
            ch.members = [m for m in ch.members if key(m) != key(name)]
            self._send("PART", target, source=self._who_prefix(name), tags=tags)
        elif kicked:
            ch.members = [m for m in ch.members if key(m) != key(name)]
            by, _, why = reason.partition(" by ")[2].partition(": ")
            what = "banned" if reason.startswith("banned") else "kicked"
            self._send("KICK", target, to_nick(name), why or what,
                       source=self._who_prefix(by), tags=tags)
        else:  # the session ended: once, from every channel (a QUIT, as IRC has it)
            for other in self.channels.values():
                other.members = [m for m in other.members if key(m) != key(name)]
            self._send("QUIT", reason, source=self._who_prefix(name), tags=tags)

    def _ev_nick(self, d: dict[str, Any]) -> None:
        old, new = d.get("old"), d.get("name")
        if d.get("replay") or not isinstance(old, str) or not isinstance(new, str):
            return
        if self._me(old) or self._me(new):
            return  # ours is told by the login's reply
        seen = False
        for ch in self.channels.values():
            if any(key(m) == key(old) for m in ch.members):
                seen = True
                ch.members = [new if key(m) == key(old) else m for m in ch.members]
        if seen:  # told once, though every room we share sends it
            self._send("NICK", to_nick(new), source=self._who_prefix(old),
                       tags=self._tags(d.get("ts")))

    def _ev_subject(self, d: dict[str, Any]) -> None:
        ch = self.channels.get(key(str(d.get("room"))))
        if d.get("replay") or ch is None:
            return
        ch.subject = str(d.get("text") or "")
        source = self.prefix if self._me(d.get("name")) else self._who_prefix(
            str(d.get("name") or ""))
        self._send("TOPIC", to_channel(ch.room), neutralise(ch.subject), source=source,
                   tags=self._tags(d.get("ts")))

    def _ev_mode(self, d: dict[str, Any]) -> None:
        ch = self.channels.get(key(str(d.get("room"))))
        if d.get("replay") or ch is None:
            return
        changes: list[tuple[str, str | None]] = []
        for setting, letter in (("invite", "i"), ("secret", "s")):
            if isinstance(d.get(setting), bool):
                changes.append((("+" if d[setting] else "-") + letter, None))
        if isinstance(d.get("key"), bool):
            changes.append(("+k" if d["key"] else "-k", "*"))
        if d.get("subject_by") in ("moderators", "anyone"):
            changes.append(("+t" if d["subject_by"] == "moderators" else "-t", None))
        if not changes:
            return  # history visibility has no IRC mode
        letters = "".join(c for c, _ in changes)
        args = [a for _, a in changes if a]
        self._send("MODE", to_channel(ch.room), letters, *args,
                   source=self._who_prefix(str(d.get("name") or "")),
                   tags=self._tags(d.get("ts")))

    def _ev_role(self, d: dict[str, Any]) -> None:
        ch, name = self.channels.get(key(str(d.get("room")))), d.get("name")
        if d.get("replay") or ch is None or not isinstance(name, str):
            return
        role, before = d.get("role"), ch.roles.get(key(name))
        if role in ("owner", "moderator"):
            change = "+q" if role == "owner" else "+o"
            ch.roles[key(name)] = str(role)
        else:
            change = "-q" if before == "owner" else "-o"
            ch.roles.pop(key(name), None)
        self._send("MODE", to_channel(ch.room), change, to_nick(name),
                   source=self._who_prefix(str(d.get("by") or "")),
                   tags=self._tags(d.get("ts")))

    def _ev_dm(self, d: dict[str, Any]) -> None:
        sender, text = d.get("from"), d.get("text")
        if not isinstance(sender, str) or not isinstance(text, str):
            return
        to = [n for n in d.get("to") or () if isinstance(n, str)]
        prefix = f"(to {', '.join(to)}) " if len(to) > 1 else ""
        self._text(self._who_prefix(sender), "PRIVMSG", self.nick or "*", text,
                   action=False, tags=self._tags(d.get("ts")), prefix=prefix)

    def _ev_whisper(self, d: dict[str, Any]) -> None:
        sender, text, room = d.get("from"), d.get("text"), d.get("room")
        if not isinstance(sender, str) or not isinstance(text, str) \
                or not isinstance(room, str):
            return
        channel = to_channel(room)
        tags = self._tags(d.get("ts"), context=channel)
        self._text(self._who_prefix(sender), "NOTICE", self.nick or "*", text, action=False,
                   tags=tags, prefix=f"(whisper in {channel}) ")

    def _ev_broadcast(self, d: dict[str, Any]) -> None:
        sender, text = d.get("from"), d.get("text")
        if isinstance(sender, str) and isinstance(text, str):
            self._text(self._who_prefix(sender), "NOTICE", self.nick or "*", text,
                       action=False, tags=self._tags(d.get("ts")), prefix="(broadcast) ")

    def _ev_ejected(self, d: dict[str, Any]) -> None:
        ch = self.channels.pop(key(str(d.get("room"))), None)
        self._replaying.pop(key(str(d.get("room"))), None)
        if ch is not None:
            self._send("KICK", to_channel(ch.room), self.nick or "*",
                       neutralise(str(d.get("reason") or "removed")))

    def _resumed(self) -> None:
        if self.registered:
            self._notice("Reconnected to zchat; your rooms are caught up")
            self._resync = True

    def _ev_kicked(self, d: dict[str, Any]) -> None:
        self.fatal(f"Disconnected by the zchat operator: {d.get('reason')}")

    def _ev_invited(self, d: dict[str, Any]) -> None:
        room, by = d.get("room"), d.get("by")
        if isinstance(room, str) and isinstance(by, str):
            self._send("INVITE", self.nick or "*", to_channel(room), source=self._who_prefix(by))

    def _ev_error(self, d: dict[str, Any]) -> None:
        if d.get("cmd") == "login":  # our nickname could not be taken back on resuming
            self.fatal(neutralise(str(d.get("text"))))
        else:
            self._notice(f"zchat: {neutralise(str(d.get('text')))}")


def _state(text: str) -> Callable[[Events, dict[str, Any]], None]:
    def show(s: Events, d: dict[str, Any]) -> None:
        if s.registered:
            s._notice(text.format(**{k: neutralise(str(v)) for k, v in d.items()}))
    return show


EVENTS: dict[str, Callable[[Events, dict[str, Any]], None]] = {
    "msg": Events._ev_msg, "join": Events._ev_join, "leave": Events._ev_leave,
    "nick": Events._ev_nick, "subject": Events._ev_subject, "mode": Events._ev_mode,
    "role": Events._ev_role, "dm": Events._ev_dm, "whisper": Events._ev_whisper,
    "broadcast": Events._ev_broadcast, "ejected": Events._ev_ejected,
    "kicked": Events._ev_kicked, "invited": Events._ev_invited, "error": Events._ev_error,
    "shutdown": _state("zchat is shutting down; the gateway reconnects when it is back"),
    "lost": _state("Lost contact with zchat (silent for {silent} s); what you send waits "
                   "for it"),
    "restored": _state("Contact with zchat restored"),
    "reconnecting": _state("Reconnecting to zchat..."),
    "resumed": lambda s, d: s._resumed(),
}
