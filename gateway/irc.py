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

from dataclasses import dataclass, field

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
    closed rather than have us guess where its next command starts."""

    MAX = CLIENT_TAGS_MAX + LINE_MAX

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        if b"\0" in self._buf:
            raise LineError("NUL in a line")
        lines = []
        start = 0
        buf = self._buf
        while True:
            ends = [i for i in (buf.find(b"\r", start), buf.find(b"\n", start)) if i >= 0]
            if not ends:
                break
            end = min(ends)
            line = bytes(buf[start:end])
            start = end + 1
            if line:
                check_length(line)
                lines.append(line)
        del buf[:start]
        if len(buf) > self.MAX:
            raise LineError("Line too long")
        return lines


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
    return "".join(ch if ch in FORMATTING else clean(ch) for ch in text)


def split_text(text: str, budget: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``budget`` UTF-8 bytes, at a space when one is
    near the end of a piece. Never returns an empty list."""
    budget = max(budget, 16)
    pieces = []
    data = text.encode()
    while len(data) > budget:
        piece = _cut(data, budget)
        space = piece.rfind(b" ", budget // 2)
        if space > 0:
            piece = piece[:space + 1]
        pieces.append(piece.decode())
        data = data[len(piece):]
    pieces.append(data.decode())
    return pieces
