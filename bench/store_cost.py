"""What a turn's commit costs, per turn and per row: SQLite beside PostgreSQL.

``python -m bench.store_cost`` starts a throwaway PostgreSQL (tests/pgcluster.py: fsync
on, synchronous_commit on, on this machine's disk, over loopback TCP), or uses
``--dsn``, and times the stores themselves as the broker's loop drives them: each turn
appends N messages of a busy room (or creates a room and its join event, or writes
nothing: the fencing round trip) and commits once. Figures, not a test; on a shared
2-core machine they vary from run to run, so read them as orders and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

from broker.postgres import PostgresStore
from broker.store import SqliteStore, Store
from schema import pack

TEXT = "x" * 100  # a typical chat line, and the event around it as the chat stores it


def event(room: str, seq: int) -> dict:
    return {"ev": "msg", "room": room, "seq": seq, "ts": time.time(), "from": "alice",
            "text": TEXT, "inc": "0123456789abcdef"}


class Turns:
    """Turns against one store, in one room, seqs running on."""

    def __init__(self, store: Store):
        self.store = store
        self.seq = 0
        self.rooms = 0
        store.add_room("busy", time.time(), "alice")
        store.commit()

    def messages(self, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            self.store.append("busy", self.seq, pack(event("busy", self.seq)), f"k:c:{self.seq}")
        self.store.commit()

    def new_room(self) -> None:
        self.rooms += 1
        name = f"room{self.rooms}"
        self.store.add_room(name, time.time(), "alice")
        self.store.append(name, 1, pack({"ev": "join", "room": name, "seq": 1, "name": "alice"}))
        self.store.commit()

    def nothing(self) -> None:
        self.store.commit()


def timed(turn: Callable[[], None], seconds: float) -> list[float]:
    """Seconds each turn took, for about ``seconds`` (after a few to warm up)."""
    for _ in range(3):
        turn()
    took: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(took) < 5:
        started = time.perf_counter()
        turn()
        took.append(time.perf_counter() - started)
    return took


@contextmanager
def stores(dsn: str | None) -> Iterator[list[tuple[str, Callable[[], Store]]]]:
    with tempfile.TemporaryDirectory() as tmp:
        made = [
            ("SQLite (normal)", lambda: SqliteStore(f"{tmp}/normal.db")),
            ("SQLite (full)", lambda: SqliteStore(f"{tmp}/full.db", durable=True)),
        ]
        if dsn is not None:
            made.append(("PostgreSQL", lambda: PostgresStore(dsn)))
            yield made
            return
        from tests.pgcluster import Cluster

        cluster = Cluster().start()
        try:
            made.append(("PostgreSQL", lambda: PostgresStore(cluster.create_database())))
            yield made
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.store_cost", description=__doc__)
    p.add_argument("--dsn", help="an empty PostgreSQL database to use (default: start one)")
    p.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = p.parse_args(argv)
    sizes = (1, 10, 100, 1000)
    print("| store | turn | median ms/turn | p90 ms/turn | µs/row |")
    print("|---|---|---|---|---|")
    with stores(args.dsn) as made:
        for name, open_store in made:
            store = open_store()
            turns = Turns(store)
            cases = [("nothing written", turns.nothing, 0),
                     ("a room and its join", turns.new_room, 2)]
            cases += [(f"messages: {n}", partial(turns.messages, n), n) for n in sizes]
            for label, turn, rows in cases:
                took = sorted(timed(turn, args.seconds))
                median = statistics.median(took)
                p90 = took[int(len(took) * 0.9)]
                per_row = f"{median / rows * 1e6:.1f}" if rows else ""
                print(f"| {name} | {label} | {median * 1e3:.3f} | {p90 * 1e3:.3f} | "
                      f"{per_row} |", flush=True)
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
