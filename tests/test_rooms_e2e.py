"""Protected rooms on a real broker: a banned user and a non-invited one, each on a raw
ZeroMQ client that ignores every rule, get no byte of the room's events, history or
members: across a kick -> rejoin race, a ban -> rejoin race, and a broker restart.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import zmq

from schema import messages

from .harness import Broker, raw_socket
from .test_hardening_e2e import Bare

SECRET = b"vault-secret"


class Listener:
    """A SUB socket on the broker's publisher, keeping every byte it ever receives."""

    def __init__(self, ctx: zmq.Context, broker: Broker):
        self.sub = raw_socket(ctx, zmq.SUB, broker, broker.pub)
        self.received: list[bytes] = []

    def subscribe(self, topic: bytes) -> None:
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)

    def drain(self, timeout: float = 0.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sub.poll(max(0.0, deadline - time.monotonic()) * 1000):
            self.received += self.sub.recv_multipart()

    def wait_for(self, needle: bytes, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in frame for frame in self.received):
            left = deadline - time.monotonic()
            assert left > 0 and self.sub.poll(left * 1000), f"{needle!r} never arrived"
            self.received += self.sub.recv_multipart()


def everything(client: Bare) -> bytes:
    """Every byte a raw client's DEALER received (replies and events), read to the end."""
    while client.dealer.poll(300):
        for m in messages(client.dealer.recv()):
            if "ev" in m:
                client.events.append(m)
            else:
                client.replies[m.get("re")] = m
    return repr((client.events, client.replies)).encode()


def person(ctx: zmq.Context, broker: Broker, name: str, pair: Any = None,
           register: bool = True) -> Bare:
    client = Bare(ctx, broker, pair=pair)
    client.ok("login", name=name)
    if register and pair is None:
        client.ok("register")
    return client


def follow(ctx: zmq.Context, broker: Broker, welcome: dict[str, Any]) -> Listener:
    listener = Listener(ctx, broker)
    listener.subscribe(welcome["topic"])
    return listener


def test_banned_and_uninvited_raw_clients_get_nothing_of_the_room(broker, brokers, zctx):
    owner = person(zctx, broker, "owner")
    owner.ok("create", room="vault")
    owner.ok("mode", room="vault", invite=True)
    owner.ok("subject", room="vault", text="vault-secret topic")
    owner.ok("say", room="vault", text="vault-secret before")
    bob = person(zctx, broker, "bob")
    mallory = person(zctx, broker, "mallory")
    eve = person(zctx, broker, "eve")
    owner.ok("invite", room="vault", name="bob")
    owner.ok("invite", room="vault", name="mallory")
    bob_view = follow(zctx, broker, bob.ok("join", room="vault"))
    mallory_welcome = mallory.ok("join", room="vault")
    stale = follow(zctx, broker, mallory_welcome)  # mallory keeps her old subscription
    prefix = Listener(zctx, broker)  # and eve tries every guess a SUB can make
    for guess in (b"", b"vault", b"vault\0"):
        prefix.subscribe(guess)
    # The non-invited: nothing but the room's name, whatever they ask.
    assert eve.refused("join", room="vault")["code"] == "invite_only"
    assert eve.refused("who", room="vault")["code"] == "not_a_member"
    assert eve.refused("history", room="vault")["code"] == "not_a_member"
    assert eve.refused("subject", room="vault")["code"] == "not_a_member"
    assert eve.ok("rooms")["rooms"] == [{"room": "vault", "closed": True}]

    # The ban, and mallory's rejoin sent at once behind it: whichever the broker reads
    # first, she ends outside, and her stale subscription hears nothing more.
    ban = owner.send("ban", room="vault", name="mallory", key=True, reason="leaks")
    rejoin = mallory.send("join", room="vault")
    assert owner.reply(ban)["ok"]
    mallory.reply(rejoin)
    assert mallory.refused("join", room="vault")["code"] == "banned"
    assert mallory.refused("history", room="vault", after=0)["code"] == "not_a_member"
    assert mallory.refused("who", room="vault")["code"] == "banned"
    rekey = bob.event("rekey")
    bob_view.subscribe(rekey["topic"])
    bob_view.received.clear()
    bob_view.wait_for(b"tick")  # the new subscription is granted: a tick came on it
    stale.drain(0.5)  # the leave went out on her old topic; nothing after it may
    heard_before = b"".join(stale.received)
    for i in range(3):
        owner.ok("say", room="vault", text=f"vault-secret after ban {i}")
    bob_view.wait_for(b"vault-secret after ban 2")
    stale.subscribe(mallory_welcome["topic"])  # asking again for a retired topic: nothing
    stale.drain(1.5)  # past a tick: ticks go out on the live topic only
    assert b"".join(stale.received) == heard_before
    assert b"after ban" not in heard_before

    # A kicked member races back into an invite-only room: the kick withdrew the invite.
    kick = owner.send("kick", room="vault", name="bob", reason="out")
    back = bob.send("join", room="vault")
    assert owner.reply(kick)["ok"]
    bob.reply(back)
    assert bob.refused("join", room="vault")["code"] == "invite_only"
    owner.ok("say", room="vault", text="vault-secret after kick")

    # A restart: bans, invites and roles come back from the store; topics are new.
    assert broker.stop(signal.SIGTERM) == 0
    again = brokers(db=broker.db)
    owner2 = Bare(zctx, again, pair=owner.pair)
    owner2.ok("login", name="owner")  # by its key
    welcome = owner2.ok("join", room="vault")
    assert welcome["role"] == "owner" and welcome["subject"] == "vault-secret topic"
    mallory2 = Bare(zctx, again, pair=mallory.pair)
    mallory2.ok("login", name="mallory2")  # her key, under another nickname
    eve2 = Bare(zctx, again, pair=eve.pair)
    eve2.ok("login", name="eve")
    assert mallory2.refused("join", room="vault")["code"] == "banned"
    assert eve2.refused("join", room="vault")["code"] == "invite_only"
    assert eve2.refused("who", room="vault")["code"] == "not_a_member"
    watchers = [Listener(zctx, again) for _ in range(2)]
    for w in watchers:
        for guess in (b"", b"vault", b"vault\0"):
            w.subscribe(guess)
    owner_view = follow(zctx, again, welcome)
    owner_view.wait_for(b"tick")
    owner2.ok("say", room="vault", text="vault-secret after restart")
    owner_view.wait_for(b"vault-secret after restart")
    for w in (*watchers, prefix, stale):
        w.drain(0.3)
    for leaked in (b"".join(prefix.received), *[b"".join(w.received) for w in watchers],
                   everything(eve), everything(eve2), everything(mallory2)):
        assert SECRET not in leaked
    assert b"after ban" not in everything(mallory)
    assert not [m for m in mallory.events if m.get("ev") == "rekey"]
