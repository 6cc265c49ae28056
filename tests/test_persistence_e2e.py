"""Rooms and their history live in the store: they survive the broker stopping, cleanly
(SIGTERM) or not (SIGKILL), and what a joiner is replayed is bounded."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from .harness import Client, admin_json, json_lines


def replayed(client: Client, command: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Join with ``command``; return the reply and the history events replayed with it."""
    start = len(client.out.seen)
    reply = client.enter(command)
    events = [e for e in json_lines(client.out.seen[start:]) if e.get("replay")]
    return reply, events


def say_all(client: Client, texts: list[str]) -> int:
    """Say each line; return the seq of the last once the broker has acknowledged it."""
    client.send(*texts)
    last = None
    for _ in texts:
        last = client.event("reply", cmd="say")
    assert last is not None and last["text"] == texts[-1]
    return last["seq"]


def test_rooms_and_history_survive_a_clean_restart_and_seq_continues(broker, brokers,
                                                                     clients):
    alice = clients()
    alice.enter("/create lounge alice")
    alice.enter("/create den")
    alice.send("/join lounge")  # current again
    alice.event("reply", cmd="join", room="lounge")
    last = say_all(alice, ["m1", "m2", "m3"])
    assert last == 4
    assert broker.stop(signal.SIGTERM) == 0
    alice.event("shutdown")  # told, not left hanging
    restarted = brokers(db=broker.db)
    rooms = admin_json(restarted.control, "ls")["rooms"]
    assert [(r["room"], r["count"], r["seq"]) for r in rooms] == [("den", 0, 1),
                                                                 ("lounge", 0, 4)]
    bob = clients(server=restarted.router)
    reply, history = replayed(bob, "/join lounge bob")
    assert [(e["seq"], e["event"], e.get("text")) for e in history] == [
        (1, "join", None), (2, "msg", "m1"), (3, "msg", "m2"), (4, "msg", "m3"),
        (5, "join", None)]
    assert reply["seq"] == 5
    bob.send("after the restart")
    assert bob.event("reply", cmd="say")["seq"] == 6


def test_acknowledged_messages_survive_a_sigkill_of_the_broker(broker, brokers, clients):
    alice = clients()
    alice.enter("/create lounge alice")
    texts = [f"durable {i}" for i in range(20)]
    acknowledged = say_all(alice, texts)  # every one answered with a reply...
    assert broker.stop(signal.SIGKILL) == -signal.SIGKILL  # ...then the broker dies at once
    restarted = brokers(db=broker.db)
    bob = clients(server=restarted.router)
    reply, history = replayed(bob, "/join lounge bob")
    said = [(e["seq"], e["text"]) for e in history if e["event"] == "msg"]
    assert said == [(seq, text) for seq, text in zip(range(2, acknowledged + 1), texts,
                                                      strict=True)]
    assert reply["seq"] == acknowledged + 1


@pytest.mark.broker_args("--rate", "0")  # 60 messages at once: no rate limit in the way
def test_history_replayed_to_a_joiner_is_bounded_at_50_by_default(broker, clients):
    alice = clients()
    alice.enter("/create lounge alice")  # seq 1
    assert say_all(alice, [f"m{i}" for i in range(1, 61)]) == 61
    bob = clients()
    reply, history = replayed(bob, "/join lounge bob")  # seq 62
    assert len(history) == 50
    assert [e["seq"] for e in history] == list(range(13, 63))  # the newest 50, in order
    assert history[0]["text"] == "m12" and history[-1]["name"] == "bob"


@pytest.mark.broker_args("--history", "5")
def test_the_history_flag_sets_the_replay_bound(broker, clients):
    alice = clients()
    alice.enter("/create lounge alice")
    say_all(alice, [f"m{i}" for i in range(1, 11)])
    bob = clients()
    _, history = replayed(bob, "/join lounge bob")
    assert [e.get("text") for e in history] == ["m7", "m8", "m9", "m10", None]


def test_a_killed_room_stays_gone_after_a_restart(broker, brokers, clients):
    alice = clients()
    alice.enter("/create lounge alice")
    alice.enter("/create den")
    say_all(alice, ["in den"])
    admin_json(broker.control, "kill", "lounge")
    alice.event("ejected", room="lounge")
    broker.stop()
    restarted = brokers(db=broker.db)
    assert [r["room"] for r in admin_json(restarted.control, "ls")["rooms"]] == ["den"]
    bob = clients(server=restarted.router)
    reply, history = replayed(bob, "/create lounge bob")  # the name is free again
    assert reply["seq"] == 1 and [e["seq"] for e in history] == [1]
