"""How events look to a person: one or more text lines each, safe for a terminal.

Everything another user chose (names, room names, text) passes through ``clean`` so
control characters and escape sequences are shown, never obeyed: nobody can move your
cursor, clear your screen or retitle your terminal by chatting, nor reverse the text
around theirs with a bidi override.
"""

from __future__ import annotations

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
        listed = ", ".join(f"{clean(r['room'])} ({_plural(r['count'], 'member')})"
                           for r in rooms)
        return [f"Rooms ({len(rooms)}): {listed}"]
    if cmd in ("create", "join"):
        verb = "Created and joined" if cmd == "create" else "Joined"
        return [f"{verb} {clean(d['room'])} as {clean(d['name'])} "
                f"(members: {_names(d.get('members'))})"]
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
    return []  # say, ping, bye: a chat line needs no confirmation


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
