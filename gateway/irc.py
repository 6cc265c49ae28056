"""IRC lines: parse what clients send, format what we send, within the protocol's limits.

Pure code, no sockets. The limits are those of the IRC client protocol and of IRCv3
message tags: a line is at most 512 bytes with its CR LF, not counting its tags; a
client's tags are at most 4096 bytes ('@' and the space after them included), ours at
most 8191. A line is ended by CR, LF or both (modern clients send CR LF; old ones either).

Nothing we format can carry a second command: every field goes through ``_field``,
which turns CR, LF and NUL into caret notation (``^M``, ``^J``, ``^@``) whatever the
caller passed, and the line is cut to 512 bytes at a character boundary. Text from zchat
users is also ``neutralise``d before it gets here, as the zchat client shows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from client.render import clean

LINE_MAX = 512  # bytes of a line without its tags, CR LF included
CLIENT_TAGS_MAX = 4096  # bytes of a client's tags, the '@' and the space after them included
SERVER_TAGS_MAX = 8191  # the same for ours
PARAMS_MAX = 15
# IRC's own formatting (bold, colour, hex colour, reset, monospace, reverse, italic,
# strike-through, underline): harmless to an IRC client, which draws it, and what IRC
# users send one another. Every other control character is shown, never obeyed.
FORMATTING = frozenset("\x02\x03\x04\x0f\x11\x16\x1d\x1e\x1f")


class LineError(Exception):
    """A connection that sends this is broken or hostile: ERROR and close."""


@dataclass
class Message:
    command: str
    params: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    source: str | None = None


# -- tags ----------------------------------------------------------------------------------

_ESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def escape_tag(value: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in value.replace("\0", ""))


def unescape_tag(value: str) -> str:
    out, chars = [], iter(value)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(chars, "")  # a lone trailing backslash is dropped (message-tags spec)
        out.append(_UNESCAPES.get(nxt, nxt))
    return "".join(out)


def _tags_text(tags: dict[str, str]) -> str:
    return ";".join(f"{k}={escape_tag(v)}" if v else k for k, v in tags.items())


# -- reading -------------------------------------------------------------------------------


class LineReader:
    """Bytes from a client cut into lines, within the limits; ``LineError`` otherwise.

    A line over the limits, a NUL, or more buffered without a line end than one line may
    hold is no honest client's (they split long text themselves): the connection is
    closed rather than have us guess where its next command starts.

    ``push`` buffers what was read, ``take`` returns at most ``limit`` whole lines of it
    (the loop takes a bounded number a turn; the rest waits, and ``has_line`` says so)."""

    MAX = CLIENT_TAGS_MAX + LINE_MAX

    def __init__(self) -> None:
        self._buf = bytearray()
        self._tail = 0  # bytes after the last line end

    def push(self, data: bytes) -> None:
        if b"\0" in data:
            raise LineError("NUL in a line")
        self._buf += data
        end = max(data.rfind(b"\r"), data.rfind(b"\n"))
        self._tail = self._tail + len(data) if end < 0 else len(data) - end - 1
        if self._tail > self.MAX:
            raise LineError("Line too long")

    def has_line(self) -> bool:
        return len(self._buf) > self._tail

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take(self, limit: int | None = None) -> list[bytes]:
        lines: list[bytes] = []
        buf, start, stop = self._buf, 0, len(self._buf) - self._tail
        while start < stop and (limit is None or len(lines) < limit):
            found = _LINE_END.search(buf, start, stop)
            if found is None:  # cannot be: stop is just past a line end
                break
            end = found.start()
            line = bytes(buf[start:end])
            start = end + 1
            if line:
                check_length(line)
                lines.append(line)
        del buf[:start]
        return lines

    def feed(self, data: bytes) -> list[bytes]:
        """``push`` and ``take`` every whole line."""
        self.push(data)
        return self.take()


_LINE_END = re.compile(rb"[\r\n]")

# What a command costs a client's flood budget (Penalty): those answered with many lines
# or that ask zchat for pages cost more than a line.
COSTS = {b"WHO": 4.0, b"NAMES": 4.0, b"LIST": 8.0, b"WHOIS": 3.0, b"CHATHISTORY": 4.0,
         b"JOIN": 2.0, b"MOTD": 3.0}


def command_of(line: bytes) -> bytes:
    """The command word of a raw line (upper case), without parsing the rest."""
    rest = line
    if rest.startswith(b"@"):
        rest = rest.partition(b" ")[2]
    rest = rest.lstrip(b" ")
    if rest.startswith(b":"):
        rest = rest.partition(b" ")[2].lstrip(b" ")
    return rest.split(b" ", 1)[0].upper()


class Penalty:
    """A client's flood budget, as IRC servers' "fake lag": each line adds its cost
    (``COSTS``, else 1) to a debt that is paid off at ``rate`` a second; lines are
    carried out while the debt is below ``burst``, and wait otherwise. Pure: the time is
    given."""

    def __init__(self, rate: float = 10.0, burst: float = 40.0) -> None:
        self.rate, self.burst = rate, burst
        self.debt = 0.0
        self._at: float | None = None

    def _settle(self, now: float) -> None:
        if self._at is not None:
            self.debt = max(0.0, self.debt - (now - self._at) * self.rate)
        self._at = now

    def ready(self, now: float) -> bool:
        self._settle(now)
        return self.debt < self.burst

    def charge(self, line: bytes, now: float) -> None:
        self._settle(now)
        self.debt += COSTS.get(command_of(line), 1.0)

    def wait(self, now: float) -> float:
        """Seconds until a line may be carried out again (0: now)."""
        self._settle(now)
        return max(0.0, (self.debt - self.burst) / self.rate + 0.001) \
            if self.debt >= self.burst else 0.0


def check_length(line: bytes) -> None:
    tags_len = 0
    if line.startswith(b"@"):
        space = line.find(b" ")
        tags_len = len(line) if space < 0 else space + 1
        if tags_len > CLIENT_TAGS_MAX:
            raise LineError("Tags too long")
    if len(line) - tags_len > LINE_MAX - 2:
        raise LineError("Line too long")


def parse(line: bytes) -> Message | None:
    """One line (no CR LF) -> a Message; None for a line with no command."""
    text = line.decode("utf-8", "replace")  # we announce UTF8ONLY
    tags: dict[str, str] = {}
    if text.startswith("@"):
        raw, _, text = text[1:].partition(" ")
        for item in raw.split(";"):
            key, _, value = item.partition("=")
            if key:
                tags[key] = unescape_tag(value)
    text = text.lstrip(" ")
    source = None
    if text.startswith(":"):
        source, _, text = text[1:].partition(" ")
        text = text.lstrip(" ")
    params: list[str] = []
    while text and len(params) < PARAMS_MAX - 1:
        if text.startswith(":"):
            params.append(text[1:])
            text = ""
            break
        word, _, text = text.partition(" ")
        params.append(word)
        text = text.lstrip(" ")
    if text:  # the fifteenth parameter takes the rest, colon or not
        params.append(text[1:] if text.startswith(":") else text)
    if not params:
        return None
    command = params.pop(0).upper()
    return Message(command, params, tags, source)


# -- writing -------------------------------------------------------------------------------


def _field(text: str) -> str:
    """No field of ours may end the line or hide a NUL, whoever forgot to clean it."""
    if "\r" in text or "\n" in text or "\0" in text:
        text = text.replace("\r", "^M").replace("\n", "^J").replace("\0", "^@")
    return text


def _middle(param: str) -> str:
    """A parameter before the last may hold no space and not start with a colon; one
    that would (a target a client sent as a trailing parameter, echoed in a numeric)
    is shown with its spaces as underscores, never as more parameters."""
    if param and " " not in param and not param.startswith(":"):
        return param
    return "*" + param.replace(" ", "_") if param.startswith(":") or not param \
        else param.replace(" ", "_")


def _cut(data: bytes, size: int) -> bytes:
    """At most ``size`` bytes of UTF-8 text, never half a character."""
    if len(data) <= size:
        return data
    return data[:size].decode("utf-8", "ignore").encode()


def format_line(msg: Message) -> bytes:
    """A Message -> one line with CR LF, within the limits (the last parameter is cut
    if need be; tags that do not fit are left out)."""
    parts = []
    if msg.source:
        parts.append(":" + _field(msg.source).replace(" ", ""))
    parts.append(_field(msg.command))
    params = [_field(p) for p in msg.params]
    params[:-1] = [_middle(p) for p in params[:-1]]
    if params:
        last = params[-1]
        trail = not last or " " in last or last.startswith(":")
        parts += params[:-1] + [":" + last if trail else last]
    body = _cut(" ".join(parts).encode(), LINE_MAX - 2) + b"\r\n"
    if not msg.tags:
        return body
    tags = ("@" + _tags_text({_field(k): v for k, v in msg.tags.items()}) + " ").encode()
    if len(tags) > SERVER_TAGS_MAX:
        return body
    return tags + body


def neutralise(text: str) -> str:
    """Text a zchat user chose, for an IRC client: shown as the zchat client shows it
    (controls in caret notation, bidi and other invisible format characters as
    ``<U+XXXX>``), but IRC's own formatting codes kept. So no CR, LF or NUL (no second
    line), no CTCP delimiter (nobody makes another's client answer a CTCP through a
    room) and no terminal escape ever reaches the IRC client."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _shown(ch) for ch in text)


@lru_cache(maxsize=4096)
def _shown(ch: str) -> str:
    """One character that is not printable, as ``neutralise`` shows it (remembered:
    a text of thousands of them costs thousands of look-ups, not of ``clean`` calls)."""
    return ch if ch in FORMATTING else clean(ch)


def split_text(text: str, budget: int, limit: int | None = None) -> list[str]:
    """Cut ``text`` into pieces of at most ``budget`` UTF-8 bytes, at a space when one is
    near the end of a piece; at most ``limit`` pieces (what is left after them is not
    returned: the caller compares lengths). Never returns an empty list. Linear."""
    budget = max(budget, 16)
    pieces: list[str] = []
    data = text.encode()
    at, size = 0, len(data)
    while size - at > budget:
        if limit is not None and len(pieces) >= limit:
            return pieces
        piece = data[at:at + budget].decode("utf-8", "ignore").encode()
        space = piece.rfind(b" ", budget // 2)
        if space > 0:
            piece = piece[:space + 1]
        pieces.append(piece.decode())
        at += len(piece)
    pieces.append(data[at:].decode())
    return pieces
