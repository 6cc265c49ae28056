"""zchat's answers to what the IRC client asked, as IRC replies and numerics.
Pure: no sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schema import protocol as P

from .core import LIST_PAGES_MAX, WHO_PAGES_MAX, Channel, Core, just_before, msgid
from .irc import neutralise
from .names import from_channel, from_nick, key, to_channel, to_nick


class Replies(Core):
    """Replies to our requests, by what they were for (the session's ``why``)."""

    def _re_register(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        self._registering = None
        if ok:
            self._took_name(d["name"])
            self._welcome()
        elif self.nick == why[1]:
            self._nick_refused(why[1], d.get("code"), d.get("text"))
        else:
            self._try_register()  # the nick changed meanwhile: try the new one

    def _re_sasl(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        if ok:
            self._sasl = "done"
            self._took_name(d["name"])
            self._num("900", self.prefix, self.nick or "*",
                      f"You are now logged in as {self.nick}")
            self._num("903", "SASL authentication successful")
        else:
            self._sasl = None
            self._num("904", f"SASL authentication failed: {d.get('text')}")
        self._try_register()

    def _re_nick(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        if not ok:
            self._nick_refused(why[1], d.get("code"), d.get("text"))
            return
        old, old_name = self.prefix, self.name
        self._took_name(d["name"])
        for ch in self.channels.values():
            ch.members = [self.name if old_name and key(m) == key(old_name) else m
                          for m in ch.members]
        self._send("NICK", self.nick or "*", source=old)

    def _re_join(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        _, target, room_key, retried = why  # retried: False, "create" (was missing), True
        if ok:
            self._joined(d)
        elif d.get("code") == "no_such_room" and not retried:
            if not self._may_create():
                self._num("403", target, "No such channel, and this connection has "
                                         "created rooms enough lately: try again later")
                return
            self._ask("create", ("join", target, room_key, "create"),
                      room=from_channel(target))
        elif d.get("code") == "room_exists" and retried is not True:
            # Someone created it between our join and our create: join it, once.
            self._ask("join", ("join", target, room_key, True), room=from_channel(target),
                      key=room_key)
        else:
            self._chan_error(target, d.get("code"), d.get("text"))

    def _joined(self, d: dict[str, Any]) -> None:
        room = d["room"]
        k = key(room)
        if k in self.channels:
            return
        members = [m for m in d.get("members") or () if isinstance(m, str)]
        ch = Channel(room, members, subject=d.get("subject") or "")
        if d.get("role") in ("owner", "moderator") and self.name:
            ch.roles[key(self.name)] = d["role"]
        self.channels[k] = ch
        target = to_channel(room)
        self._send("JOIN", target, source=self.prefix)
        if ch.subject:
            self._num("332", target, neutralise(ch.subject))
        self._names(target, members, ch)
        if d.get("more") and members:
            self._ask("who", ("names", target, 1, True), room=room, after=members[-1],
                      limit=P.LIST_PAGE_MAX)
        else:
            self._num("366", target, "End of /NAMES list")
        self._replaying[k] = None  # the welcome's history comes next, as replayed events

    def _re_part(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        _, k, reason = why
        ch = self.channels.pop(k, None)
        if ch is None:
            return
        if ok:
            params = [to_channel(ch.room)] + ([reason] if reason else [])
            self._send("PART", *params, source=self.prefix)
        else:
            self.channels[k] = ch
            self._chan_error(to_channel(ch.room), d.get("code"), d.get("text"))

    def _re_names(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        target, page = why[1], why[2]
        joined = len(why) > 3  # the rest of a crowded room's members, after its welcome
        if ok:
            members = [m for m in d.get("members") or () if isinstance(m, str)]
            found = self._channel(target)
            if joined and found is not None:
                known = {key(m) for m in found[1].members}
                found[1].members += [m for m in members if key(m) not in known]
            self._names(target, members, found[1] if found else None)
            if d.get("more") and members and page < WHO_PAGES_MAX:
                self._ask("who", (*why[:2], page + 1, *why[3:]), room=from_channel(target),
                          after=members[-1], limit=P.LIST_PAGE_MAX)
                return
        self._num("366", target, "End of /NAMES list")

    def _re_resync(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        _, k, page, listed = why
        ch = self.channels.get(k)
        if ch is None or not ok:
            return
        members = [m for m in d.get("members") or () if isinstance(m, str)]
        listed = (*listed, *members)
        if d.get("more") and members and page < WHO_PAGES_MAX:
            self._ask("who", ("resync", k, page + 1, listed), wait=False, room=ch.room,
                      after=members[-1], limit=P.LIST_PAGE_MAX)
            return
        if d.get("more"):
            return  # too crowded to tell who is missing: leave the names as they are
        here = {key(m) for m in listed}
        target = to_channel(ch.room)
        for m in [m for m in ch.members if key(m) not in here and not self._me(m)]:
            ch.members.remove(m)
            self._send("PART", target, "did not come back after zchat restarted",
                       source=self._who_prefix(m))
        known = {key(m) for m in ch.members}
        for m in [m for m in listed if key(m) not in known]:
            ch.members.append(m)
            self._send("JOIN", target, source=self._who_prefix(m))

    def _re_who(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        target, page = why[1], why[2]
        if ok:
            members = [m for m in d.get("members") or () if isinstance(m, str)]
            for m in members:
                self._who_line(target, m)
            if d.get("more") and members and page < WHO_PAGES_MAX:
                self._ask("who", ("who", target, page + 1), room=from_channel(target),
                          after=members[-1], limit=P.LIST_PAGE_MAX)
                return
        self._num("315", target, "End of /WHO list")

    def _re_whois(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        nick, others = why[1], why[2] if len(why) > 2 else ()
        users = d.get("users") or [] if ok else []
        if users and isinstance(users[0], str) and key(users[0]) == key(from_nick(nick)):
            self._whois(to_nick(users[0]), [])
        elif ok and others:
            self._ask("users", ("whois", nick, others[1:]), after=just_before(others[0]),
                      limit=1)
        else:
            self._num("401", nick, "No such nick")
            self._num("318", nick, "End of /WHOIS list")

    def _re_topic(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        target = why[1]
        if not ok:
            self._chan_error(target, d.get("code"), d.get("text"))
        elif d.get("text"):
            self._num("332", target, neutralise(d["text"]))
            if d.get("by"):
                self._num("333", target, to_nick(d["by"]), "0")
        else:
            self._num("331", target, "No topic is set")

    def _re_done(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        """A change whose outcome zchat tells everyone in the room as an event."""
        if not ok:
            self._chan_error(why[1], d.get("code"), d.get("text"))

    def _re_list(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        _, wanted, page = why
        rooms = [r for r in d.get("rooms") or () if isinstance(r, dict)] if ok else []
        for r in rooms:
            name = r.get("room")
            if not isinstance(name, str) or (wanted and key(name) not in wanted):
                continue
            if r.get("closed"):
                self._num("322", to_channel(name), "0", "[closed: invite-only or keyed]")
            else:
                self._num("322", to_channel(name), str(r.get("count", 0)),
                          neutralise(r.get("subject") or ""))
        if ok and d.get("more") and rooms:
            if page < LIST_PAGES_MAX:
                self._ask("rooms", ("list", wanted, page + 1), after=rooms[-1].get("room"),
                          limit=P.LIST_PAGE_MAX)
                return
            self._notice(f"LIST stops at {LIST_PAGES_MAX * P.LIST_PAGE_MAX} rooms")
        self._num("323", "End of /LIST")

    def _re_say(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        _, target, command, text, as_name = why
        left = self._saying.get(as_name, 0) - 1
        if left > 0:
            self._saying[as_name] = left
        else:
            self._saying.pop(as_name, None)
        if ok and isinstance(d.get("seq"), int):
            self._said.append((key(from_channel(target) or ""), d["seq"]))
        if not ok:
            self._num("404", target, f"Cannot send to channel: {d.get('text')}")
            return
        if "echo-message" in self.caps:
            room = from_channel(target) or ""
            seq = d.get("seq")
            mid = msgid(d.get("room") or room, seq) if isinstance(seq, int) else None
            self._send(command, target, text, source=self.prefix,
                       tags=self._tags(self.wall(), mid=mid))

    def _re_msg(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        _, target, command, text, *context = why
        if not ok:
            numeric = "401" if d.get("code") in ("no_such_user", "not_in_room") else "404"
            self._num(numeric, target, str(d.get("text")))
            return
        away = d.get("away")
        if isinstance(away, dict):
            for name, said in away.items():
                self._num("301", to_nick(str(name)), neutralise(str(said)))
        if "echo-message" in self.caps:
            self._send(command, target, text, source=self.prefix,
                       tags=self._tags(self.wall(), context=context[0] if context else None))

    def _re_invite(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        if ok:
            self._num("341", why[1], why[2])
        else:
            self._chan_error(why[2], d.get("code"), d.get("text"))

    def _re_away(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        if not ok:
            self._notice(str(d.get("text")))
        elif d.get("away"):
            self._num("306", "You have been marked as being away")
        else:
            self._num("305", "You are no longer marked as being away")

    def _re_mode(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        target = why[1]
        if not ok:
            self._chan_error(target, d.get("code"), d.get("text"))
            return
        modes = d.get("modes") or {}
        letters = "".join(letter for letter, on in (
            ("i", modes.get("invite")), ("k", modes.get("key")), ("s", modes.get("secret")),
            ("t", modes.get("subject_by") == "moderators")) if on)
        self._num("324", target, "+" + letters, *(["*"] if modes.get("key") else []))

    def _re_bans(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        target = why[1]
        if not ok and d.get("code") != "not_permitted":
            self._chan_error(target, d.get("code"), d.get("text"))
            return
        # zchat shows bans to moderators only; to others (irssi asks on every JOIN) the
        # list is empty, as on networks that hide it.
        for ban in d.get("bans") or ():
            if isinstance(ban, dict) and isinstance(ban.get("name"), str):
                self._num("367", target, f"{to_nick(ban['name'])}!*@*",
                          to_nick(str(ban.get("by") or "*")), "0")
        self._num("368", target, "End of channel ban list")

    def _re_ban(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        _, target, change, mask = why
        if ok:  # zchat tells nobody else of bans: only the moderator sees the MODE
            self._send("MODE", target, change, mask, source=self.prefix)
        else:
            self._chan_error(target, d.get("code"), d.get("text"))

    def _re_history(self, why: tuple[Any, ...], ok: bool, d: dict[str, Any]) -> None:
        _, target, newer_than = why
        if not ok:
            self._send("FAIL", "CHATHISTORY", "MESSAGE_ERROR", target, str(d.get("text")))
            return
        batch = self._open_batch("chathistory", target)
        for e in d.get("events") or ():
            if isinstance(e, dict) and e.get("ev") == "msg" and (
                    newer_than is None or (e.get("seq") or 0) > newer_than):
                self._room_text(e, target, batch, past=True)
        if batch:
            self._send("BATCH", f"-{batch}")


REPLIES: dict[str, Callable[[Replies, tuple[Any, ...], bool, dict[str, Any]], None]] = {
    "register": Replies._re_register, "sasl": Replies._re_sasl, "nick": Replies._re_nick,
    "join": Replies._re_join, "part": Replies._re_part, "names": Replies._re_names,
    "who": Replies._re_who, "whois": Replies._re_whois, "topic": Replies._re_topic,
    "topic-set": Replies._re_done, "done": Replies._re_done, "list": Replies._re_list,
    "say": Replies._re_say, "msg": Replies._re_msg, "whisper": Replies._re_msg,
    "invite": Replies._re_invite, "away": Replies._re_away, "mode": Replies._re_mode,
    "bans": Replies._re_bans, "ban": Replies._re_ban, "history": Replies._re_history,
    "resync": Replies._re_resync,
}
