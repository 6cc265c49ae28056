"""How events look to a person: one or more text lines each, safe for a terminal.

Everything another user chose (names, room names, text) passes through ``clean`` so
control characters and escape sequences are shown, never obeyed: nobody can move your
cursor, clear your screen or retitle your terminal by chatting, nor reverse the text
around theirs with a bidi override.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .connection import Event

# Invisible format characters that writing needs, kept: the zero-width joiner makes one
# emoji of several (👩‍💻) and, with the non-joiner, shapes Persian, Arabic and Indic
# words (می‌خواهم). Other format characters (bidi overrides and isolates, zero-width
# spaces...) can disguise text, so they are shown as <U+XXXX> like any non-printable.
KEPT_FORMAT = frozenset("\u200c\u200d")


def clean(value: Any) -> str:
    """Printable text only: control characters become caret notation (ESC -> ^[)."""
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch in KEPT_FORMAT:
            out.append(ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append("^" + chr(ord(ch) ^ 0x40))
        else:
            out.append(f"<U+{ord(ch):04X}>")
    return "".join(out)


def _names(names: Any) -> str:
    return ", ".join(clean(n) for n in names or ())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _room_line(d: dict[str, Any], body: str) -> str:
    return f"[{clean(d.get('room'))}] {body}"


def _msg(d: dict[str, Any]) -> list[str]:
    who, text = clean(d.get("from")), clean(d.get("text"))
    return [_room_line(d, f"* {who} {text}" if d.get("me") else f"{who}: {text}")]


def _join(d: dict[str, Any]) -> list[str]:
    return [_room_line(d, f"{clean(d.get('name'))} joined")]


def _leave(d: dict[str, Any]) -> list[str]:
    reason = d.get("reason")
    suffix = f" ({clean(reason)})" if reason and reason != "left" else ""
    return [_room_line(d, f"{clean(d.get('name'))} left{suffix}")]


def _nick(d: dict[str, Any]) -> list[str]:
    return [_room_line(d, f"{clean(d.get('old'))} is now known as {clean(d.get('name'))}")]


def _subject(d: dict[str, Any]) -> list[str]:
    text = d.get("text")
    return [_room_line(d, f"{clean(d.get('name'))} set the topic: {clean(text)}" if text
                       else f"{clean(d.get('name'))} cleared the topic")]


def _modes(d: dict[str, Any]) -> str:
    """Settings as people say them: invite-only, key, secret, who sets the topic..."""
    words = []
    for setting, value in d.items():
        if setting == "invite":
            words.append("invite-only" if value else "open to all")
        elif setting == "key":
            words.append("needs a key" if value else "no key")
        elif setting == "secret":
            words.append("secret" if value else "listed")
        elif setting == "subject_by":
            words.append(f"topic set by {clean(value)}")
        elif setting == "history":
            words.append("history shared with joiners" if value == "shared"
                         else "history from one's join only")
    return ", ".join(words)


def _mode(d: dict[str, Any]) -> list[str]:
    changed = {k: v for k, v in d.items()
               if k in ("invite", "key", "secret", "subject_by", "history")}
    return [_room_line(d, f"{clean(d.get('name'))} made the room {_modes(changed)}")]


def _role(d: dict[str, Any]) -> list[str]:
    role = d.get("role")
    what = "no longer has a role" if role == "member" else f"is now {clean(role)}"
    return [_room_line(d, f"{clean(d.get('name'))} {what} (by {clean(d.get('by'))})")]


def _ban_line(b: dict[str, Any]) -> str:
    what = "key of " if b.get("kind") == "key" else ""
    until = b.get("until")
    when = (f" until {time.strftime('%Y-%m-%d %H:%M', time.localtime(until))}"
            if isinstance(until, (int, float)) else "")
    why = f": {clean(b.get('reason'))}" if b.get("reason") else ""
    return f"{what}{clean(b.get('name'))} by {clean(b.get('by'))}{when}{why}"


def _dm(d: dict[str, Any]) -> list[str]:
    to = d.get("to") or []
    marker = f"(group {_names(to)}) " if len(to) > 1 else ""
    return [f"{marker}{clean(d.get('from'))}: {clean(d.get('text'))}"]


def _reply(d: dict[str, Any]) -> list[str]:
    cmd = d.get("cmd")
    if cmd == "login":
        return [f"Logged in as {clean(d['name'])}"]
    if cmd == "register":
        return [f"Nickname {clean(d['name'])} is now registered to your {clean(d['by'])}"]
    if cmd == "logout":
        return [f"Logged out ({clean(d['name'])})"]
    if cmd == "users":
        users = d.get("users") or []
        return [f"Users ({len(users)}): {_names(users)}" if users else "No users logged in"]
    if cmd == "rooms":
        rooms = d.get("rooms") or []
        if not rooms:
            return ["No rooms"]
        listed = ", ".join(
            f"{clean(r.get('room'))} (closed)" if "count" not in r else
            f"{clean(r.get('room'))} ({_plural(r['count'], 'member')})"
            + (f" - {clean(r['subject'])}" if r.get("subject") else "") for r in rooms)
        return [f"Rooms ({len(rooms)}): {listed}"]
    if cmd in ("create", "join"):
        verb = "Created and joined" if cmd == "create" else "Joined"
        lines = [f"{verb} {clean(d['room'])} as {clean(d['name'])} "
                 f"(members: {_names(d.get('members'))})"]
        if d.get("role"):
            lines.append(f"You are {clean(d['role'])} of {clean(d['room'])}")
        if d.get("subject"):
            lines.append(f"Topic of {clean(d['room'])}: {clean(d['subject'])}")
        return lines
    if cmd == "leave":
        return [f"Left {clean(d['room'])}"]
    if cmd == "who":
        members = d.get("members") or []
        return [f"Members of {clean(d['room'])} ({len(members)}): {_names(members)}"]
    if cmd == "whisper":
        return [f"(whisper to {clean(d['to'])}) {clean(d.get('text', ''))}".rstrip()]
    if cmd == "msg":
        return [f"(to {_names(d.get('to'))}) {clean(d.get('text', ''))}".rstrip()]
    if cmd == "away":
        text = d.get("text")
        return [f"You are marked away: {clean(text)}" if text else "You are back"]
    if cmd == "broadcast":
        return [f"(broadcast to {_plural(d.get('count', 0), 'user')}) "
                f"{clean(d.get('text', ''))}".rstrip()]
    if cmd == "subject" and "seq" not in d:  # read: a change is told by its event
        return [f"Topic of {clean(d.get('room'))}: {clean(d['text'])} (set by "
                f"{clean(d.get('by'))})" if d.get("text")
                else f"{clean(d.get('room'))} has no topic"]
    if cmd == "mode" and "seq" not in d:
        return [f"{clean(d.get('room'))} is {_modes(d.get('modes') or {})}"]
    if cmd == "invite":
        return [f"Invited {clean(d.get('name'))} into {clean(d.get('room'))}"]
    if cmd == "uninvite":
        return [f"Withdrew the invitation of {clean(d.get('name'))} into "
                f"{clean(d.get('room'))}"]
    if cmd == "invites":
        invited = d.get("invites") or []
        return ([f"Invited into {clean(d.get('room'))}: "
                 + ", ".join(clean(n) for n in invited)] if invited
                else [f"Nobody is invited into {clean(d.get('room'))}"])
    if cmd == "kick":
        return [f"Kicked {clean(d.get('name'))} from {clean(d.get('room'))}"]
    if cmd == "ban":
        return [f"Banned from {clean(d.get('room'))}: {_ban_line(b)}"
                for b in d.get("bans") or ()]
    if cmd == "unban":
        return [f"Lifted the bans on {clean(d.get('name'))} in {clean(d.get('room'))}"]
    if cmd == "bans":
        bans = d.get("bans") or []
        return ([f"Bans of {clean(d.get('room'))} ({len(bans)}):"]
                + [f"  {_ban_line(b)}" for b in bans]) if bans \
            else [f"Nobody is banned from {clean(d.get('room'))}"]
    return []  # say, ping, bye, changes told by their event: no confirmation needed


def _history(d: dict[str, Any]) -> list[str]:
    events = d.get("events") or []
    if not events:
        return [f"No older messages in {clean(d.get('room'))}"]
    lines = [f"--- older messages of {clean(d.get('room'))} ---"]
    for e in events:
        lines += RENDERERS.get(e.get("kind"), lambda _: [])(e)
    return lines + ["--- end of older messages ---"]


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "msg": _msg,
    "join": _join,
    "leave": _leave,
    "nick": _nick,
    "subject": _subject,
    "mode": _mode,
    "role": _role,
    "invited": lambda d: [f"{clean(d.get('by'))} invited you into {clean(d.get('room'))}: "
                          f"/join {clean(d.get('room'))}"],
    "dm": _dm,
    "whisper": lambda d: [f"(whisper) {clean(d.get('from'))}: {clean(d.get('text'))}"],
    "broadcast": lambda d: [f"(broadcast) {clean(d.get('from'))}: {clean(d.get('text'))}"],
    "ejected": lambda d: [f"You were removed from {clean(d.get('room'))}: "
                          f"{clean(d.get('reason'))}"],
    "kicked": lambda d: [f"You were disconnected by the operator: {clean(d.get('reason'))}"],
    "shutdown": lambda d: [f"The broker is shutting down ({clean(d.get('reason'))}); "
                           "will reconnect when it is back"],
    "lost": lambda d: [f"Lost contact with the broker at {clean(d.get('server'))} "
                       f"(silent for {d.get('silent')} s)"],
    "restored": lambda d: [f"Contact with the broker restored at {clean(d.get('server'))}"],
    "reconnecting": lambda d: [f"Reconnecting to {clean(d.get('server'))}..."],
    "resumed": lambda d: [f"Reconnected as {clean(d.get('name') or '(no nickname)')}"
                          + (f" in {_names(d.get('rooms'))}" if d.get("rooms") else "")],
    "reply": _reply,
    "error": lambda d: [clean(d.get("text"))],
    "history": _history,
    "info": lambda d: [str(d.get("text"))],  # our own text, e.g. /help
    # The chatroom assignment's client's line for each answer to login, sendto, logout.
    "outcome": lambda d: ["Success" if d.get("ok") else "Failure"],
}


def render(event: Event) -> list[str]:
    return RENDERERS.get(event.kind, lambda _: [])(event.data)
