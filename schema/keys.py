"""Where the CURVE keys live, shared by broker, client and admin tool.

Layout of a key directory (default ``data/keys`` beside the default store, or
``$ZCHAT_KEYS``), in pyzmq's certificate format (``zmq.auth``):

    broker.key         the broker's public key: give it to remote clients
    broker.key_secret  the broker's secret key: never leaves the broker's machine
    admin.key          an operator's public key (the control socket admits only these...)
    admin.key_secret   ...and the admin tool signs in with this one
    admins/*.key       further operators' public keys
    edge.key           an edge's public key (the core's edge socket admits only these...)
    edge.key_secret    ...and an edge signs in to the core with this one
    edges/*.key        further edges' public keys

The broker creates what is missing at its first start, so one machine needs no setup;
``python -m admin keygen`` does the same ahead of time, and makes client key pairs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.monitor
from zmq.utils import z85

DEFAULT_DIR = os.path.join("data", "keys")


def key_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("ZCHAT_KEYS") or DEFAULT_DIR)


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85, 40 bytes
    secret: bytes | None  # z85, or None when only the public half is known


def _create(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    zmq.auth.create_certificates(str(directory), name)
    os.chmod(directory / f"{name}.key_secret", 0o600)


def ensure(directory: Path) -> list[str]:
    """Create the broker's, the first operator's and the first edge's key pairs if
    missing; say which."""
    made = []
    for name in ("broker", "admin", "edge"):
        if not (directory / f"{name}.key_secret").exists():
            _create(directory, name)
            made.append(name)
    return made


def load(path: Path) -> KeyPair:
    """A key pair (``NAME.key_secret``) or public key (``NAME.key``) file."""
    public, secret = zmq.auth.load_certificate(str(path))
    return KeyPair(public, secret)


def public_key(value: str) -> bytes:
    """A broker key given on the command line: a z85 string or a key file's path."""
    if len(value) == 40 and not os.path.exists(value):
        return value.encode()
    return load(Path(value)).public


def broker_key(given: str | None, directory: Path) -> bytes:
    """The broker public key to pin: as given (--server-key), else the key directory's."""
    if given:
        return public_key(given)
    path = directory / "broker.key"
    if not path.exists():
        raise ValueError(f"no broker key: {path} does not exist. Give --server-key (the "
                         "broker's public key, printed when it starts) or --insecure")
    return load(path).public


def operator_keys(directory: Path) -> set[bytes]:
    """Public keys admitted on the control socket."""
    keys = set()
    for path in [directory / "admin.key", *sorted((directory / "admins").glob("*.key"))]:
        if path.exists():
            keys.add(load(path).public)
    return keys


def edge_keys(directory: Path) -> set[bytes]:
    """Public keys admitted on the core's edge socket."""
    keys = set()
    for path in [directory / "edge.key", *sorted((directory / "edges").glob("*.key"))]:
        if path.exists():
            keys.add(load(path).public)
    return keys


def new_pair(directory: Path, name: str) -> Path:
    """A fresh key pair NAME in directory (for a client identity); the secret file."""
    _create(directory, name)
    return directory / f"{name}.key_secret"


def curve_client(sock: zmq.Socket, server_public: bytes, pair: KeyPair | None = None) -> None:
    """Make ``sock`` a CURVE client of a server with this public key, presenting the
    routing id bound to its key pair (see ``routing_id``)."""
    if pair is None or pair.secret is None:
        public, secret = zmq.curve_keypair()
        pair = KeyPair(public, secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    sock.setsockopt(zmq.ROUTING_ID, routing_id(pair.secret, server_public))


# --- Routing ids bound to keys -------------------------------------------------------------
# The broker's ROUTER addresses a client by the routing id the client presents, and a new
# connection presenting a known id takes its deliveries over. So a routing id must be one
# that nobody but the holder of the client's secret key can know, whatever the client
# picked: "z", 8 bytes of the client's choosing (random: one key may hold several
# sessions), then the first 16 bytes of HMAC-SHA256 keyed with the X25519 secret that the
# client's key shares with the broker's, over "zchat routing id" and those 8 bytes. The
# broker recomputes it from its own secret and the client's proven public key, and
# refuses a session on any other routing id.

_ROUTE_LABEL = b"zchat routing id"
ROUTE_LENGTH = 1 + 8 + 16


def _shared(secret: bytes, public: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    return X25519PrivateKey.from_private_bytes(z85.decode(secret)).exchange(
        X25519PublicKey.from_public_bytes(z85.decode(public)))


def _route(shared: bytes, nonce: bytes) -> bytes:
    return b"z" + nonce + hmac.new(shared, _ROUTE_LABEL + nonce, hashlib.sha256).digest()[:16]


def routing_id(client_secret: bytes, server_public: bytes, nonce: bytes | None = None
               ) -> bytes:
    """A routing id for a client with this secret key talking to this broker (z85 keys)."""
    return _route(_shared(client_secret, server_public), nonce or os.urandom(8))


class RouteCheck:
    """The broker's side: is this routing id one bound to this client key? The secrets
    shared with keys seen recently are remembered, so a reconnect costs no exchange."""

    def __init__(self, server_secret: bytes, remembered: int = 100_000):
        self._secret = server_secret
        self._shared: dict[str, bytes] = {}
        self._remembered = remembered

    def __call__(self, routing_id: bytes, client_public: str) -> bool:
        if len(routing_id) != ROUTE_LENGTH or routing_id[:1] != b"z":
            return False
        shared = self._shared.get(client_public)
        if shared is None:
            try:
                shared = _shared(self._secret, client_public.encode())
            except ValueError:
                return False
            if len(self._shared) >= self._remembered:
                self._shared.pop(next(iter(self._shared)))
            self._shared[client_public] = shared
        return hmac.compare_digest(routing_id, _route(shared, routing_id[1:9]))


class HandshakeRefused(Exception):
    """The secure handshake failed: our key was refused, or the broker key is wrong."""


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@contextmanager
def watch(sock: zmq.Socket, events: int = zmq.EVENT_ALL) -> Iterator[zmq.Socket]:
    """A monitor on ``sock`` for ``events``, for the length of the block.

    A monitor left unread can freeze the whole context, so it is drained, disabled and
    closed when the block ends, whatever happens in it.
    """
    monitor = sock.get_monitor_socket(events)
    try:
        yield monitor
    finally:
        sock.disable_monitor()
        while monitor.poll(0):
            monitor.recv_multipart()
        monitor.close(0)


def handshake_watch(sock: zmq.Socket) -> contextlib.AbstractContextManager[zmq.Socket]:
    """A monitor on ``sock`` reporting failed handshakes (see ``handshake_failure``)."""
    return watch(sock, HANDSHAKE_FAILED)


def handshake_failure(monitor: zmq.Socket, address: str) -> HandshakeRefused:
    """Read the monitor's event and say what went wrong, in words."""
    event = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return HandshakeRefused(f"The broker at {address} refused our key")
    return HandshakeRefused(f"Secure handshake with {address} failed: "
                            "is this the broker's right public key?")
