"""zchat's wire protocol: kinds, fields, limits, error codes and the codec."""

from .codec import Request, decode, decode_admin, error, messages, ok, pack, parse, request, unpack
from .protocol import ERRORS, PROTOCOL_VERSION, ProtocolError

__all__ = [
    "ERRORS", "PROTOCOL_VERSION", "ProtocolError", "Request",
    "decode", "decode_admin", "error", "messages", "ok", "pack", "parse", "request",
    "unpack",
]
