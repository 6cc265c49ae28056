"""Who may connect: the broker's own ZAP handler, answered inside the broker loop.

libzmq asks a ZAP handler (at ``inproc://zeromq.zap.01``) about every new connection to
a socket that has a ZAP domain. Every broker socket has one and sets
``ZAP_ENFORCE_DOMAIN``, so if this handler is not answering, nobody gets in: the broker
fails closed. (A ZAP domain also makes libzmq refuse the legacy ZMTP/1.0 framing, which a
raw TCP peer could otherwise use to slip a message past the handshake.)

The policy is a pure function of the request:

    domain    mechanism  admitted                                       identity
    chat      CURVE      any key: chat users need no account to talk    the key (z85)
    control   CURVE      only operator keys (``admin.key``, ``admins/``)  the key (z85)
    edge      CURVE      only edge keys (``edge.key``, ``edges/``)       the key (z85)
    any       NULL       only when the broker runs plaintext (--insecure) none
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

import zmq
from zmq.utils import z85

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
CHAT, CONTROL, EDGE = b"chat", b"control", b"edge"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    identity: str = ""
    reason: str = ""


def decide(domain: bytes, mechanism: bytes, credentials: list[bytes], *, secure: bool,
           operators: Set[bytes], edges: Set[bytes] = frozenset(), crowded: bool = False
           ) -> Verdict:
    """``crowded``: descriptors are running out; chat peers wait, operators get in."""
    if domain not in (CHAT, CONTROL, EDGE):
        return Verdict(False, reason="Unknown domain")
    if crowded and domain == CHAT:
        return Verdict(False, reason="Crowded: descriptors kept for operators")
    if mechanism == b"CURVE" and secure and len(credentials) == 1:
        key = z85.encode(credentials[0])
        if domain == CONTROL and key not in operators:
            return Verdict(False, reason="Not an operator key")
        if domain == EDGE and key not in edges:
            return Verdict(False, reason="Not an edge key")
        return Verdict(True, identity=key.decode())
    if mechanism == b"NULL" and not secure:
        return Verdict(True)
    return Verdict(False, reason="Encryption required" if secure else "Plaintext broker")


def answer(zap: zmq.Socket, *, secure: bool, operators: Set[bytes],
           edges: Set[bytes] = frozenset(), crowded: bool = False) -> Verdict | None:
    """Answer one ZAP request waiting on ``zap`` (a REP socket); None if none waits."""
    try:
        request = zap.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        return None
    if len(request) < 6:  # only libzmq talks on this inproc endpoint; be strict anyway
        zap.send_multipart([b"1.0", request[1] if len(request) > 1 else b"", b"400",
                            b"Malformed ZAP request", b"", b""])
        return Verdict(False, reason="Malformed ZAP request")
    version, request_id, domain, _address, _routing, mechanism = request[:6]
    verdict = decide(domain, mechanism, request[6:], secure=secure, operators=operators,
                     edges=edges, crowded=crowded)
    status = b"200" if verdict.allowed else b"400"
    zap.send_multipart([b"1.0", request_id, status, verdict.reason.encode() or b"OK",
                        verdict.identity.encode(), b""])
    return verdict
