"""Turning frames into validated requests, and messages into frames.

msgpack decodes many byte strings into *something* (b"h" is the integer 104), so a
successful decode proves nothing: every request is checked against its Kind before any
handler sees it. Validation never raises anything but ProtocolError.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from .protocol import (
    ADMIN_REQUESTS,
    CLIENT_REQUESTS,
    PLAIN_DECODE_MAX,
    RECIPIENTS_MAX,
    REQUEST_FIELDS_MAX,
    Kind,
    ProtocolError,
)

REQUEST_ID_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: its id, its command and its fields (absent optionals = None).

    ``retry`` marks a request sent again after a reconnect, with its original id: the
    broker answers it from memory (or the store) if it was carried out already.
    """

    id: int
    cmd: str
    args: Mapping[str, Any]
    retry: bool = False


def pack(message: Mapping[str, Any] | list[Mapping[str, Any]]) -> bytes:
    # A Packer per thread, kept: msgpack.packb makes one for every call, with a buffer of
    # 256 KiB to allocate and free, which is half of what packing a chat event costs.
    try:
        return _packers.packer.pack(message)
    except AttributeError:  # this thread's first
        _packers.packer = msgpack.Packer(use_bin_type=True)
        return _packers.packer.pack(message)


_packers = threading.local()


def unpack(frame: bytes) -> Any:
    """Decode one frame; any decoding failure is a ProtocolError('malformed')."""
    try:
        # strict_map_key: only str/bytes keys. Ext types are not part of the protocol:
        # ext_hook refuses them, except timestamps (ext -1), which msgpack decodes
        # without asking the hook; those are looked for when their header bytes occur.
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True,
                                  ext_hook=_refuse_ext)
        if b"\xff" in frame and any(marker in frame for marker in _TIMESTAMP_HEADERS):
            _refuse_timestamps(message)
        return message
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, etc.
        raise ProtocolError("malformed") from exc


# fixext 4, fixext 8 and ext 8 (12 bytes) headers of type -1: the three timestamp forms.
_TIMESTAMP_HEADERS = (b"\xd6\xff", b"\xd7\xff", b"\xc7\x0c\xff")


def messages(frame: bytes) -> list[dict[str, Any]]:
    """The messages in a frame from the broker: a reply frame or a room's frame is an
    array of maps. Anything else (which a broker never sends) yields none."""
    try:
        decoded = unpack(frame)
    except ProtocolError:
        return []
    if not isinstance(decoded, list):
        return []
    return [m for m in decoded if isinstance(m, dict)]


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError("ext types are not part of the protocol")


def _refuse_timestamps(value: Any) -> None:
    if isinstance(value, msgpack.Timestamp):
        raise ValueError("ext types are not part of the protocol")
    if isinstance(value, dict):
        value = value.values()
    if isinstance(value, (list, type({}.values()))):
        for item in value:
            _refuse_timestamps(item)


def request_id(message: Any) -> int | None:
    """The id of a decoded message if it has a usable one (so an error can echo it)."""
    if isinstance(message, dict):
        rid = message.get("id")
        if type(rid) is int and 0 <= rid <= REQUEST_ID_MAX:
            return rid
    return None


def parse(message: Any, kinds: Mapping[str, Kind] = CLIENT_REQUESTS) -> Request:
    """Validate a decoded message against the kinds it may be; return the Request."""
    if not isinstance(message, dict):
        raise ProtocolError("malformed", "A request must be a map")
    rid = request_id(message)
    if rid is None:
        raise ProtocolError("malformed", "A request needs an integer id")
    cmd = message.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("malformed", "A request needs a string cmd")
    kind = kinds.get(cmd)
    if kind is None:
        raise ProtocolError("unknown_command", f"Unknown command: {cmd[:40]!r}")
    args: dict[str, Any] = {}
    for field in kind.fields:
        value = message.get(field.name)
        if value is None:
            if field.required:
                raise ProtocolError("invalid_command", f"Missing field: {field.name}")
            args[field.name] = None
            continue
        # bool is a subclass of int: an exact type check keeps True out of int fields.
        if type(value) is not field.kind:
            raise ProtocolError("invalid_command",
                                f"Field {field.name} must be {field.kind.__name__}")
        if field.rule is not None and not field.rule(value):
            raise ProtocolError(field.error)
        args[field.name] = value
    retry = message.get("retry", False)
    if type(retry) is not bool:
        raise ProtocolError("invalid_command", "Field retry must be bool")
    return Request(rid, cmd, args, retry)


def unpack_request(frame: bytes) -> Any:
    """Decode a request frame for a cost bounded whatever the peer sent.

    msgpack's decode time grows with the number of items, and a megabyte frame can hold a
    million tiny ones (120 ms of the loop, before any check could refuse it). A request
    is a small flat map: at most REQUEST_FIELDS_MAX fields whose values are scalars or
    one array of names. A small frame cannot hold enough items to matter and is decoded
    at once; a larger one is walked header by header, refusing a container where none
    may be before decoding anything inside it, so its cost is a few dozen items at most.
    """
    if len(frame) <= PLAIN_DECODE_MAX:
        return unpack(frame)
    reader = msgpack.Unpacker(raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                              max_buffer_size=len(frame))
    reader.feed(frame)
    try:
        if frame[0] not in _MAP_HEADERS:
            raise ValueError("not a map")
        message: dict[Any, Any] = {}
        for _ in range(_length(reader.read_map_header(), REQUEST_FIELDS_MAX)):
            key = _scalar(reader, frame)
            if frame[reader.tell()] in _ARRAY_HEADERS:
                length = _length(reader.read_array_header(), RECIPIENTS_MAX)
                message[key] = [_scalar(reader, frame) for _ in range(length)]
            else:
                message[key] = _scalar(reader, frame)
        if reader.tell() != len(frame):
            raise ValueError("trailing data")
        return message
    except Exception as exc:  # msgpack raises ValueError subclasses, IndexError, etc.
        raise ProtocolError("malformed") from exc


def _length(length: int, limit: int) -> int:
    if length > limit:
        raise ValueError("too many items")
    return length


def _scalar(reader: msgpack.Unpacker, frame: bytes) -> Any:
    """The next item, which must be no container and no ext (refused by its header)."""
    if frame[reader.tell()] in _NOT_SCALAR:
        raise ValueError("nested or ext item in a request")
    return reader.unpack()


# msgpack header bytes: maps (fixmap, map 16/32), arrays (fixarray, array 16/32), and
# ext (fixext 1..16, ext 8/16/32).
_MAP_HEADERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ARRAY_HEADERS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
_NOT_SCALAR = _MAP_HEADERS | _ARRAY_HEADERS | frozenset(range(0xD4, 0xD9)) | {0xC7, 0xC8, 0xC9}


def decode(frame: bytes, kinds: Mapping[str, Kind] = CLIENT_REQUESTS) -> Request:
    """Frame to validated Request, or ProtocolError (with the request's id, if usable)."""
    message = unpack_request(frame)
    try:
        return parse(message, kinds)
    except ProtocolError as err:
        err.rid = request_id(message)
        raise


def decode_admin(frame: bytes) -> Request:
    return decode(frame, ADMIN_REQUESTS)


def ok(rid: int | None, **fields: Any) -> dict[str, Any]:
    return {"re": rid, "ok": True, **fields}


def ok_with(rid: int | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``ok`` of fields already in a map (a handler's result): one copy, not two."""
    return {"re": rid, "ok": True, **fields}


def error(rid: int | None, err: ProtocolError) -> dict[str, Any]:
    return {"re": rid, "ok": False, "code": err.code, "error": err.text}


def request(rid: int, cmd: str, **fields: Any) -> dict[str, Any]:
    """Build a request map, leaving out absent optionals."""
    return {"id": rid, "cmd": cmd, **{k: v for k, v in fields.items() if v is not None}}
