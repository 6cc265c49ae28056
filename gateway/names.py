"""zchat names as IRC nicknames and channels, and back.

A zchat room ``lounge`` is the channel ``#lounge``: room names have no space, comma or
control character (schema/names.py), so ``#`` + any room name is a valid channel, and a
channel is a room only if it starts with ``#`` (``CHANTYPES=#``).

Nicknames: zchat allows ASCII punctuation anywhere in a name, and IRC clients read some
of it as syntax: ``!`` and ``@`` split ``nick!user@host``, ``*`` and ``?`` are masks, and
a name starting with ``#``, ``&``, ``:``, ``$`` or a status prefix (``~ & @ % +``) reads as
a channel, a trailing parameter or a channel operator. Those characters are shown as
their full-width forms (``a!b`` is ``a！b``). zchat names never contain full-width
punctuation (only full-width letters and digits are allowed), so the mapping cannot
collide with a real name and goes back exactly.
"""

from __future__ import annotations

from schema.names import fold

ANYWHERE = "!@*?"
FIRST = ANYWHERE + "#&:$~%+"
_WIDE = {ch: chr(ord(ch) + 0xFEE0) for ch in FIRST}  # U+0021..U+007E -> U+FF01..U+FF5E
_NARROW = {v: k for k, v in _WIDE.items()}


def to_nick(name: str) -> str:
    """A zchat nickname as IRC clients can hold it."""
    if not name:
        return "*"
    head = _WIDE.get(name[0], name[0]) if name[0] in FIRST else name[0]
    return head + "".join(_WIDE[ch] if ch in ANYWHERE else ch for ch in name[1:])


def from_nick(nick: str) -> str:
    """An IRC nickname (as we showed it, or as typed) -> the zchat nickname."""
    return "".join(_NARROW.get(ch, ch) for ch in nick)


def to_channel(room: str) -> str:
    return "#" + room


def from_channel(channel: str) -> str | None:
    """``#room`` -> ``room``; None for anything that is not one of our channels."""
    if len(channel) < 2 or not channel.startswith("#"):
        return None
    return channel[1:]


def key(name: str) -> str:
    """The key two spellings of one zchat name share (its fold)."""
    return fold(name)
