"""What an IRC client asks: each command, turned into zchat requests or answered
from what the session knows. Pure: no sockets."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from schema import protocol as P

from . import irc
from .core import (
    CAPS,
    CHANNEL_CONTEXT,
    HOST,
    JOIN_MAX,
    SASL_MAX,
    SERVICES,
    TARGETS_MAX,
    Channel,
    Core,
    just_before,
    seq_of,
)
from .irc import Message
from .names import from_channel, from_nick, key, to_channel, to_nick


class Commands(Core):
    """IRC commands in."""

    def _cmd_cap(self, msg: Message) -> None:
        sub = msg.params[0].upper() if msg.params else ""
        target = self.nick or "*"
        if sub in ("LS", "REQ") and not self.registered:
            self._negotiating = True
        if sub == "LS":
            version = msg.params[1] if len(msg.params) > 1 else ""
            self._cap_302 = self._cap_302 or (version.isascii() and version.isdigit()
                                              and int(version) >= 302)
            offered = " ".join(f"{k}={v}" if v and self._cap_302 else k
                               for k, v in CAPS.items())
            self._send("CAP", target, "LS", offered)
        elif sub == "LIST":
            self._send("CAP", target, "LIST", " ".join(sorted(self.caps)))
        elif sub == "REQ":
            asked = msg.params[1] if len(msg.params) > 1 else ""
            names = asked.split()
            if names and all(n.removeprefix("-") in CAPS for n in names):
                for n in names:
                    if n.startswith("-"):
                        self.caps.discard(n[1:])
                    else:
                        self.caps.add(n)
                self._send("CAP", target, "ACK", asked)
            else:
                self._send("CAP", target, "NAK", asked)
        elif sub == "END":
            if self._negotiating:
                self._negotiating = False
                self._try_register()
        else:
            self._num("410", sub[:20] or "*", "Invalid CAP command")

    def _cmd_nick(self, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self._num("431", "No nickname given")
            return
        nick = msg.params[0]
        name = from_nick(nick)
        if not P.is_nickname(name):
            self._nick_refused(nick, "bad_username", "")
            return
        if not self.registered:
            self.nick = nick
            if self.name is not None and key(name) != key(self.name):
                self.name = None  # a new choice after SASL: log in as this one instead
            self._try_register()
            return
        if name == self.name:
            return
        self._ask("login", ("nick", nick), name=name)

    def _cmd_user(self, msg: Message) -> None:
        if self.registered:
            self._num("462", "You may not reregister")
            return
        if len(msg.params) < 4:
            self._num("461", "USER", "Not enough parameters")
            return
        user = "".join(ch for ch in msg.params[0] if ch.isalnum() or ch in "-_.")[:16]
        self.user = user or "zchat"
        self.realname = msg.params[3]
        self._user_given = True
        self._try_register()

    def _cmd_pass(self, msg: Message) -> None:
        if self.registered:
            self._num("462", "You may not reregister")
        elif msg.params:
            self._password = msg.params[0]

    def _cmd_authenticate(self, msg: Message) -> None:
        if self.registered or self._sasl == "done":
            self._num("907", "You have already authenticated using SASL")
            return
        if "sasl" not in self.caps or not msg.params:
            self._num("904", "SASL authentication failed")
            return
        arg = msg.params[0]
        if arg == "*":
            self._sasl, self._sasl_data = None, ""
            self._num("906", "SASL authentication aborted")
            return
        if self._sasl is None:
            if arg.upper() != "PLAIN":
                self._num("908", "PLAIN", "are available SASL mechanisms")
                self._num("904", "SASL authentication failed")
                return
            self._sasl, self._sasl_data = "plain", ""
            self._send("AUTHENTICATE", "+", source=None)
            return
        if self._sasl != "plain":
            return  # a check is under way
        if arg != "+":
            self._sasl_data += arg
        if len(self._sasl_data) > SASL_MAX:
            self._sasl, self._sasl_data = None, ""
            self._num("905", "SASL message too long")
            return
        if len(arg) == 400:
            return  # more follows
        try:
            parts = base64.b64decode(self._sasl_data, validate=True).decode().split("\0")
        except (binascii.Error, UnicodeDecodeError):
            parts = []
        self._sasl_data = ""
        if len(parts) != 3 or not parts[1] or (parts[0] and parts[0] != parts[1]):
            self._sasl = None
            self._num("904", "SASL authentication failed: send PLAIN as "
                             "\\0NICKNAME\\0PASSWORD")
            return
        self._sasl = "checking"
        self._sasl_login = (from_nick(parts[1]), parts[2])
        if self._request is None:
            self.wants_broker = True
        else:
            self.attach(self._request)

    def _cmd_ping(self, msg: Message) -> None:
        if not msg.params:
            self._num("409", "No origin specified")
            return
        self._send("PONG", self.server, msg.params[0])

    def _cmd_pong(self, msg: Message) -> None:
        pass  # any line proves the client alive (the loop keeps the time)

    def _cmd_quit(self, msg: Message) -> None:
        reason = msg.params[0] if msg.params else "Client Quit"
        self.fatal(f"Quit: {reason}")

    def _cmd_join(self, msg: Message) -> None:
        if not msg.params:
            self._num("461", "JOIN", "Not enough parameters")
            return
        if msg.params[0] == "0":  # leave every channel
            for ch in list(self.channels.values()):
                self._ask("leave", ("part", key(ch.room), ""), room=ch.room)
            return
        targets = msg.params[0].split(",")
        if len(targets) > JOIN_MAX:
            self._num("407", targets[JOIN_MAX] or "*",
                      f"Too many targets: at most {JOIN_MAX} channels in one JOIN")
            targets = targets[:JOIN_MAX]
        keys = msg.params[1].split(",") if len(msg.params) > 1 else []
        for i, target in enumerate(targets):
            room = from_channel(target)
            if room is None or not P.is_room_name(room):
                self._num("403", target or "*", "No such channel (a zchat room is #NAME)")
                continue
            if key(room) in self.channels:
                continue
            room_key = keys[i] if i < len(keys) and keys[i] else None
            self._ask("join", ("join", target, room_key, False), room=room, key=room_key)

    def _cmd_part(self, msg: Message) -> None:
        if not msg.params:
            self._num("461", "PART", "Not enough parameters")
            return
        reason = msg.params[1] if len(msg.params) > 1 else ""
        for target in msg.params[0].split(","):
            found = self._channel(target)
            if found is None:
                self._num("442", target or "*", "You're not on that channel")
                continue
            self._ask("leave", ("part", found[0], reason), room=found[1].room)

    def _cmd_names(self, msg: Message) -> None:
        if not msg.params:
            self._num("366", "*", "End of /NAMES list")
            return
        target = msg.params[0].split(",")[0]
        found = self._channel(target)
        if found is not None:
            self._names(target, found[1].members, found[1])
            self._num("366", target, "End of /NAMES list")
            return
        room = from_channel(target)
        if room is None or not P.is_room_name(room):
            self._num("366", target or "*", "End of /NAMES list")
            return
        self._ask("who", ("names", target, 1), room=room, limit=P.LIST_PAGE_MAX)

    def _names(self, target: str, members: list[str], ch: Channel | None) -> None:
        marks = {"owner": "~", "moderator": "@"}
        words = [marks.get(ch.roles.get(key(m), ""), "") + to_nick(m) if ch else to_nick(m)
                 for m in members]
        head = len(f":{self.server} 353 {self.nick} = {target} :".encode()) + 2
        line: list[str] = []
        size = head
        for word in words:
            if line and size + len(word.encode()) + 1 > irc.LINE_MAX:
                self._num("353", "=", target, " ".join(line))
                line, size = [], head
            line.append(word)
            size += len(word.encode()) + 1
        if line:
            self._num("353", "=", target, " ".join(line))

    def _cmd_topic(self, msg: Message) -> None:
        if not msg.params:
            self._num("461", "TOPIC", "Not enough parameters")
            return
        target = msg.params[0]
        found = self._channel(target)
        if found is None:
            self._num("442", target, "You're not on that channel")
            return
        if len(msg.params) > 1:
            self._ask("subject", ("topic-set", target), room=found[1].room,
                      text=msg.params[1])
        else:
            self._ask("subject", ("topic", target), room=found[1].room)

    def _cmd_list(self, msg: Message) -> None:
        wanted = {key(r) for t in (msg.params[0].split(",") if msg.params else [])
                  if (r := from_channel(t)) is not None}
        self._num("321", "Channel", "Users  Name")
        self._ask("rooms", ("list", frozenset(wanted), 1), limit=P.LIST_PAGE_MAX)

    def _cmd_who(self, msg: Message) -> None:
        mask = msg.params[0] if msg.params else "*"
        found = self._channel(mask)
        if found is not None:
            for m in found[1].members:
                self._who_line(mask, m)
            self._num("315", mask, "End of /WHO list")
            return
        room = from_channel(mask)
        if room is not None and P.is_room_name(room):
            self._ask("who", ("who", mask, 1), room=room, limit=P.LIST_PAGE_MAX)
            return
        name = from_nick(mask)
        for ch in self.channels.values():
            if any(key(m) == key(name) for m in ch.members):
                self._who_line(to_channel(ch.room), next(
                    m for m in ch.members if key(m) == key(name)))
                break
        self._num("315", mask, "End of /WHO list")

    def _who_line(self, target: str, member: str) -> None:
        nick = to_nick(member)
        self._num("352", target, "zchat", HOST, self.server, nick, "H", f"0 {nick}")

    def _cmd_whois(self, msg: Message) -> None:
        if not msg.params:
            self._num("431", "No nickname given")
            return
        nick = msg.params[-1].split(",")[0]
        name = from_nick(nick)
        shared = [to_channel(ch.room) for ch in self.channels.values()
                  if any(key(m) == key(name) for m in ch.members)]
        if shared or self._me(name):
            self._whois(nick, shared)
        elif P.is_nickname(name):
            # Is that nickname online? The users listing sorts by code point: ask for the
            # first name after the one just before it.
            # The listing's order is not zchat's fold: the spellings a client most
            # likely means are asked in turn (as typed, lower, Capitalised, UPPER).
            spellings = list(dict.fromkeys([name, name.lower(), name.capitalize(),
                                            name.upper()]))
            self._ask("users", ("whois", nick, tuple(spellings[1:])),
                      after=just_before(spellings[0]), limit=1)
        else:
            self._num("401", nick, "No such nick")
            self._num("318", nick, "End of /WHOIS list")

    def _whois(self, nick: str, channels: list[str]) -> None:
        self._num("311", nick, "zchat", HOST, "*", nick)
        if channels:
            self._num("319", nick, " ".join(channels))
        self._num("312", nick, self.server, "zchat, through its IRC gateway")
        self._num("318", nick, "End of /WHOIS list")

    def _cmd_privmsg(self, msg: Message) -> None:
        if not msg.params:
            self._num("411", f"No recipient given ({msg.command})")
            return
        if len(msg.params) < 2 or not msg.params[1]:
            self._num("412", "No text to send")
            return
        text = msg.params[1]
        inner = text[1:].removesuffix("\x01") if text.startswith("\x01") else None
        action = inner is not None and inner.upper().startswith("ACTION")
        for target in msg.params[0].split(",")[:TARGETS_MAX]:
            why = ("say", target, msg.command, text, key(self.name or ""))
            found = self._channel(target)
            if target.startswith("#"):
                if found is None:
                    self._num("404", target, "Cannot send to channel: you are not in it")
                else:
                    said = inner[6:].lstrip(" ") if inner and action else ""
                    fields = {"text": said or " ", "me": True} if action else {"text": text}
                    if self._ask("say", why, room=found[1].room, **fields) is not None:
                        self._saying[why[4]] = self._saying.get(why[4], 0) + 1
                continue
            name = from_nick(target)
            if key(name) in SERVICES:
                self._service(target, msg.command, text)
                continue
            if self._me(name):
                self._send(msg.command, self.nick or "*", text, source=self.prefix,
                           tags=self._tags(self.wall()))
                continue
            sent = text
            if action:  # zchat has /me in rooms only: say it in words
                sent = f"* {self.name} {inner[6:].lstrip(' ') if inner else ''}"
            context = self._channel(msg.tags.get(CHANNEL_CONTEXT, ""))
            if context is not None:
                self._ask("whisper", ("whisper", target, msg.command, text,
                                      to_channel(context[1].room)),
                          room=context[1].room, to=name, text=sent)
            else:
                self._ask("msg", ("msg", target, msg.command, text), to=[name], text=sent)

    def _service(self, target: str, command: str, text: str) -> None:
        """NickServ and ChanServ are the gateway's: what IRC clients send them (their
        IDENTIFY, with a password) never reaches a zchat user who took such a name."""
        source = f"{target}!service@{self.server}"
        if command == "NOTICE":
            return
        words = text.split()
        if key(from_nick(target)) == "nickserv" and words and words[0].upper() == "IDENTIFY" \
                and len(words) in (2, 3):
            nick, password = (words[1], words[2]) if len(words) == 3 else (
                self.nick or "", words[1])
            name = from_nick(nick)
            if self._me(name):
                self._send("NOTICE", self.nick or "*", f"You are {nick} already.",
                           source=source)
            elif not P.is_nickname(name):
                self._nick_refused(nick, "bad_username", "")
            elif self._may_try_password():
                self._ask("login", ("nick", nick), name=name, password=password)
            return
        what = ("zchat has no NickServ: claim a registered nickname with SASL PLAIN, "
                "PASS, or /msg NickServ IDENTIFY NICK PASSWORD") \
            if key(from_nick(target)) == "nickserv" else \
            "zchat has no ChanServ: a room is run by its owners and moderators (MODE)"
        self._send("NOTICE", self.nick or "*", what, source=source)

    def _cmd_mode(self, msg: Message) -> None:
        if not msg.params:
            self._num("461", "MODE", "Not enough parameters")
            return
        target = msg.params[0]
        if not target.startswith("#"):
            if not self._me(from_nick(target)):
                self._num("502", "Can't change mode for other users")
            elif len(msg.params) == 1:
                self._num("221", "+")
            return  # user modes mean nothing here: quietly accepted
        found = self._channel(target)
        if found is None:
            self._num("442", target, "You're not on that channel")
            return
        room = found[1].room
        if len(msg.params) == 1:
            self._ask("mode", ("mode", target), room=room)
            return
        self._mode_change(target, room, msg.params[1], msg.params[2:])

    def _mode_change(self, target: str, room: str, modes: str, args: list[str]) -> None:
        sign, settings = "+", {}
        args = list(args)
        for letter in modes:
            if letter in "+-":
                sign = letter
            elif letter == "i":
                settings["invite"] = sign == "+"
            elif letter == "s":
                settings["secret"] = sign == "+"
            elif letter == "t":
                settings["subject_by"] = "moderators" if sign == "+" else "anyone"
            elif letter == "k":
                value = args.pop(0) if args else ""
                if sign == "+" and not value:
                    self._num("461", "MODE", "Not enough parameters")
                    return
                settings["key"] = value if sign == "+" else ""
            elif letter in "oq":
                if not args:
                    self._num("461", "MODE", "Not enough parameters")
                    return
                role = ("owner" if letter == "q" else "moderator") if sign == "+" else "member"
                self._ask("role", ("done", target), room=room,
                          name=from_nick(args.pop(0)), role=role)
            elif letter == "b":
                if not args:
                    self._ask("bans", ("bans", target), room=room)
                    continue
                mask = args.pop(0)
                name = from_nick(mask.split("!")[0])
                cmd = "ban" if sign == "+" else "unban"
                self._ask(cmd, ("ban", target, f"{sign}b", mask), room=room, name=name)
            else:
                self._num("472", letter, "is unknown mode char to me")
        if settings:
            self._ask("mode", ("done", target), room=room, **settings)

    def _cmd_kick(self, msg: Message) -> None:
        if len(msg.params) < 2:
            self._num("461", "KICK", "Not enough parameters")
            return
        found = self._channel(msg.params[0])
        if found is None:
            self._num("442", msg.params[0], "You're not on that channel")
            return
        reason = msg.params[2] if len(msg.params) > 2 and msg.params[2] else None
        self._ask("kick", ("done", msg.params[0]), room=found[1].room,
                  name=from_nick(msg.params[1].split(",")[0]),
                  reason=reason[:P.REASON_MAX] if reason else None)

    def _cmd_invite(self, msg: Message) -> None:
        if len(msg.params) < 2:
            self._num("461", "INVITE", "Not enough parameters")
            return
        found = self._channel(msg.params[1])
        if found is None:
            self._num("442", msg.params[1], "You're not on that channel")
            return
        self._ask("invite", ("invite", msg.params[0], msg.params[1]), room=found[1].room,
                  name=from_nick(msg.params[0]))

    def _cmd_away(self, msg: Message) -> None:
        text = msg.params[0][:P.AWAY_MAX] if msg.params and msg.params[0] else None
        self._ask("away", ("away",), text=text)

    def _cmd_ison(self, msg: Message) -> None:
        known = {key(m) for ch in self.channels.values() for m in ch.members}
        asked = " ".join(msg.params).split()
        self._num("303", " ".join(n for n in asked if key(from_nick(n)) in known))

    def _cmd_userhost(self, msg: Message) -> None:
        known = {key(m) for ch in self.channels.values() for m in ch.members}
        found = [f"{n}=+zchat@{HOST}" for n in msg.params[:5] if key(from_nick(n)) in known]
        self._num("302", " ".join(found))

    def _cmd_motd(self, msg: Message) -> None:
        self._motd()

    def _cmd_chathistory(self, msg: Message) -> None:
        """draft/chathistory: LATEST, BEFORE and AFTER of a room we are in, by msgid."""
        params = msg.params
        sub = params[0].upper() if params else ""
        if sub not in ("LATEST", "BEFORE", "AFTER") or len(params) < 4:
            self._send("FAIL", "CHATHISTORY", "INVALID_PARAMS", sub or "*",
                       "Only LATEST, BEFORE and AFTER, by msgid")
            return
        target, ref, count = params[1], params[2], params[3]
        found = self._channel(target)
        limit = min(int(count), P.HISTORY_PAGE_MAX) \
            if count.isascii() and count.isdigit() and int(count) else 0
        seq = None if ref == "*" else seq_of(ref)
        if found is None or not limit or (seq is None and not (sub == "LATEST" and ref == "*")):
            self._send("FAIL", "CHATHISTORY", "INVALID_TARGET" if found is None
                       else "INVALID_PARAMS", sub, target, "No such history")
            return
        # LATEST: the newest events, of those after the reference only (zchat's "after"
        # would give the oldest after it).
        bound = {"before": seq} if sub == "BEFORE" else {"after": seq} if sub == "AFTER" \
            else {}
        self._ask("history", ("history", target, seq if sub == "LATEST" else None),
                  room=found[1].room, limit=limit, **bound)


BEFORE_REGISTRATION = {"CAP", "NICK", "USER", "PASS", "AUTHENTICATE", "PING", "PONG",
                        "QUIT"}

COMMANDS: dict[str, Callable[[Commands, Message], None]] = {
    "CAP": Commands._cmd_cap, "NICK": Commands._cmd_nick, "USER": Commands._cmd_user,
    "PASS": Commands._cmd_pass, "AUTHENTICATE": Commands._cmd_authenticate,
    "PING": Commands._cmd_ping, "PONG": Commands._cmd_pong, "QUIT": Commands._cmd_quit,
    "JOIN": Commands._cmd_join, "PART": Commands._cmd_part, "NAMES": Commands._cmd_names,
    "TOPIC": Commands._cmd_topic, "LIST": Commands._cmd_list, "WHO": Commands._cmd_who,
    "WHOIS": Commands._cmd_whois, "PRIVMSG": Commands._cmd_privmsg,
    "NOTICE": Commands._cmd_privmsg, "MODE": Commands._cmd_mode, "KICK": Commands._cmd_kick,
    "INVITE": Commands._cmd_invite, "AWAY": Commands._cmd_away, "ISON": Commands._cmd_ison,
    "USERHOST": Commands._cmd_userhost, "MOTD": Commands._cmd_motd,
    "CHATHISTORY": Commands._cmd_chathistory,
}
