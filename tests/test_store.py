"""SqliteStore: rooms, their event streams, paging, and what survives a restart."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from broker.store import SqliteStore, StoredRoom, StoreError

ROOT = Path(__file__).resolve().parent.parent


def event(room: str, seq: int, **fields) -> dict:
    return {"ev": "msg", "room": room, "seq": seq, "from": "alice", "text": f"m{seq}",
            **fields}


@pytest.fixture
def store():
    s = SqliteStore(":memory:")
    yield s
    s.close()


def fill(store: SqliteStore, room: str, last: int) -> None:
    store.add_room(room, 1.0, "alice")
    for seq in range(1, last + 1):
        store.append(room, seq, event(room, seq))


def seqs(events: list[dict]) -> list[int]:
    return [e["seq"] for e in events]


# --- rooms -----------------------------------------------------------------------------------


def test_a_new_store_has_no_rooms(store):
    assert store.rooms() == []


def test_an_added_room_is_listed_with_last_seq_zero(store):
    store.add_room("lounge", 12.5, "alice")
    assert store.rooms() == [StoredRoom("lounge", 12.5, "alice", 0)]


def test_rooms_are_listed_in_order_of_creation(store):
    store.add_room("zeta", 3.0, "a")
    store.add_room("alpha", 5.0, "b")
    store.add_room("mid", 1.0, "c")
    assert [r.name for r in store.rooms()] == ["mid", "zeta", "alpha"]


def test_a_rooms_last_seq_is_its_highest_event(store):
    fill(store, "lounge", 7)
    fill(store, "den", 2)
    assert {r.name: r.last_seq for r in store.rooms()} == {"lounge": 7, "den": 2}


def test_a_room_name_is_added_once(store):
    store.add_room("lounge", 1.0, "alice")
    store.commit()
    store.add_room("lounge", 2.0, "bob")  # a failing write dooms the turn: at commit
    with pytest.raises(StoreError):
        store.commit()
    assert [(r.name, r.creator) for r in store.rooms()] == [("lounge", "alice")]


def test_drop_room_removes_the_room_and_its_events_only(store):
    fill(store, "lounge", 3)
    fill(store, "den", 2)
    store.drop_room("lounge")
    assert [r.name for r in store.rooms()] == ["den"]
    assert store.events("lounge", limit=50) == []
    assert seqs(store.events("den", limit=50)) == [1, 2]


def test_a_dropped_room_can_be_created_afresh(store):
    fill(store, "lounge", 3)
    store.drop_room("lounge")
    fill(store, "lounge", 1)
    assert store.rooms()[0].last_seq == 1
    assert seqs(store.events("lounge", limit=50)) == [1]


# --- events ----------------------------------------------------------------------------------


def test_events_come_back_as_they_were_appended(store):
    store.add_room("lounge", 1.0, "alice")
    body = {"ev": "msg", "room": "lounge", "seq": 1, "from": "zoë", "text": "héllo 😀",
            "ts": 1234.5, "me": True, "to": ["a", "b"], "nested": {"k": [1, None]}}
    store.append("lounge", 1, body)
    assert store.events("lounge", limit=1) == [body]


def test_events_are_in_seq_order_whatever_the_order_of_appending(store):
    store.add_room("lounge", 1.0, "alice")
    for seq in (3, 1, 2):
        store.append("lounge", seq, event("lounge", seq))
    assert seqs(store.events("lounge", limit=50)) == [1, 2, 3]
    assert seqs(store.events("lounge", after=0, limit=50)) == [1, 2, 3]


def test_events_are_kept_per_room(store):
    fill(store, "lounge", 3)
    fill(store, "den", 2)
    assert {e["room"] for e in store.events("den", limit=50)} == {"den"}
    assert store.events("nowhere", limit=50) == []


def test_a_seq_is_written_once_per_room(store):
    fill(store, "lounge", 2)
    store.commit()
    store.append("lounge", 2, event("lounge", 2))
    with pytest.raises(StoreError):  # appends are batched: refused at commit
        store.commit()
    assert seqs(store.events("lounge", limit=50)) == [1, 2]  # the turn stored nothing
    store.add_room("den", 2.0, "bob")
    store.append("den", 2, event("den", 2))  # the same seq in another room is fine
    store.commit()


@pytest.mark.parametrize(("bounds", "expected"), [
    ({"limit": 50}, list(range(1, 11))),
    ({"limit": 3}, [8, 9, 10]),  # the newest page
    ({"before": 5, "limit": 2}, [3, 4]),  # scrolling back: the newest below before
    ({"before": 5, "limit": 50}, [1, 2, 3, 4]),
    ({"before": 1, "limit": 50}, []),
    ({"after": 5, "limit": 2}, [6, 7]),  # catching up: the oldest above after
    ({"after": 5, "limit": 50}, [6, 7, 8, 9, 10]),
    ({"after": 10, "limit": 50}, []),
    ({"after": 2, "before": 6, "limit": 50}, [3, 4, 5]),
    ({"after": 2, "before": 6, "limit": 2}, [3, 4]),
    ({"after": 6, "before": 6, "limit": 50}, []),
    ({"before": (1 << 63) - 1, "limit": 2}, [9, 10]),
    ({"after": 0, "before": (1 << 63) - 1, "limit": 50}, list(range(1, 11))),
])
def test_paging(store, bounds, expected):
    fill(store, "lounge", 10)
    assert seqs(store.events("lounge", **bounds)) == expected


def test_paging_backwards_from_the_oldest_shown_walks_the_whole_history(store):
    fill(store, "lounge", 10)
    shown: list[int] = []
    page = store.events("lounge", limit=3)
    while page:
        shown = seqs(page) + shown
        page = store.events("lounge", before=page[0]["seq"], limit=3)
    assert shown == list(range(1, 11))


def test_a_store_reads_its_own_uncommitted_writes(store):
    fill(store, "lounge", 2)  # no commit: the chat reads history within a turn
    assert seqs(store.events("lounge", limit=50)) == [1, 2]
    assert store.rooms()[0].last_seq == 2


# --- durability ------------------------------------------------------------------------------


def test_committed_rooms_and_events_survive_close_and_reopen(tmp_path):
    path = str(tmp_path / "z.db")
    s = SqliteStore(path)
    fill(s, "lounge", 3)
    s.commit()
    s.close()
    reopened = SqliteStore(path)
    try:
        assert reopened.rooms() == [StoredRoom("lounge", 1.0, "alice", 3)]
        assert reopened.events("lounge", limit=50) == [event("lounge", n) for n in (1, 2, 3)]
    finally:
        reopened.close()


def test_close_commits_what_was_written(tmp_path):
    path = str(tmp_path / "z.db")
    s = SqliteStore(path)
    fill(s, "lounge", 2)
    s.close()  # no explicit commit
    reopened = SqliteStore(path)
    try:
        assert seqs(reopened.events("lounge", limit=50)) == [1, 2]
    finally:
        reopened.close()


def test_uncommitted_writes_are_invisible_to_another_reader_until_commit(tmp_path):
    path = str(tmp_path / "z.db")
    writer = SqliteStore(path)
    fill(writer, "lounge", 1)
    writer.commit()
    writer.append("lounge", 2, event("lounge", 2))
    reader = sqlite3.connect(path)
    try:
        count = "SELECT COUNT(*) FROM events"
        assert reader.execute(count).fetchone() == (1,)
        writer.commit()
        assert reader.execute(count).fetchone() == (2,)
    finally:
        reader.close()
        writer.close()


def test_commit_without_writes_is_harmless(store):
    store.commit()
    store.commit()
    fill(store, "lounge", 1)
    store.commit()
    assert seqs(store.events("lounge", limit=50)) == [1]


def test_a_writer_killed_before_commit_loses_only_the_uncommitted_turn(tmp_path):
    path = tmp_path / "z.db"
    script = (
        "import os, sys\n"
        "from broker.store import SqliteStore\n"
        "s = SqliteStore(sys.argv[1])\n"
        "s.add_room('lounge', 1.0, 'alice')\n"
        "s.append('lounge', 1, {'seq': 1})\n"
        "s.commit()\n"
        "s.append('lounge', 2, {'seq': 2})\n"
        "os._exit(0)  # like kill -9: no close, no commit\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, check=True,
                   timeout=30)
    s = SqliteStore(str(path))
    try:
        assert s.rooms() == [StoredRoom("lounge", 1.0, "alice", 1)]
        assert s.events("lounge", limit=50) == [{"seq": 1}]
    finally:
        s.close()


# --- retries: a message is recognised by its origin ------------------------------------------


def test_seq_of_finds_the_event_an_origin_made_in_that_room(store):
    store.add_room("lounge", 1.0, "alice")
    store.add_room("den", 1.0, "alice")
    store.append("lounge", 1, event("lounge", 1))
    store.append("lounge", 2, event("lounge", 2), "cafe:7")
    store.append("den", 1, event("den", 1), "cafe:8")
    assert store.seq_of("lounge", "cafe:7") == 2
    assert store.seq_of("den", "cafe:7") is None
    assert store.seq_of("lounge", "cafe:9") is None


def test_seq_of_survives_a_reopen(tmp_path):
    path = str(tmp_path / "z.db")
    s = SqliteStore(path)
    s.add_room("lounge", 1.0, "alice")
    s.append("lounge", 1, event("lounge", 1), "cafe:7")
    s.close()
    reopened = SqliteStore(path)
    try:
        assert reopened.seq_of("lounge", "cafe:7") == 1
    finally:
        reopened.close()


# --- checkpoints off the loop thread ------------------------------------------------------


def wal_frames(path: Path) -> int:
    """Frames in the WAL right now (a passive checkpoint from another connection says)."""
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    finally:
        db.close()


class WalStore:
    """A file store whose checkpoint thread does nothing by itself: its rounds are run
    by hand (``round``), on a connection of their own as the thread's are."""

    def __init__(self, path: Path):
        self.path = path
        self.store = SqliteStore(str(path))
        self.store.add_room("lounge", 1.0, "alice")
        self.seq = 0
        self._thread_side = sqlite3.connect(path, isolation_level=None)

    def turn(self, *, commit: bool = True) -> None:
        """One loop turn writing one message of a page or more; left open if not commit."""
        self.seq += 1
        self.store.append("lounge", self.seq, event("lounge", self.seq, text="x" * 2000))
        if commit:
            self.store.commit()
        else:
            self.store._flush()  # its transaction is open, as while the loop works

    def turns(self, n: int) -> None:
        for _ in range(n):
            self.turn()

    @property
    def wal_long(self) -> bool:
        assert self.store._checkpoints is not None
        return self.store._checkpoints.wal_long

    def round(self) -> None:
        assert self.store._checkpoints is not None
        self.store._checkpoints.round(self._thread_side)

    def close(self) -> None:
        self._thread_side.close()
        self.store.close()


@pytest.fixture
def wal(tmp_path, monkeypatch):
    from broker import store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_INTERVAL", 3600.0)  # rounds by hand
    monkeypatch.setattr(store_module, "WAL_LONG", 50)
    w = WalStore(tmp_path / "z.db")
    yield w
    w.close()


def test_commits_never_checkpoint_the_wal_themselves(wal):
    """A checkpoint's fsync would hold up a whole turn: the loop's commits leave them to
    the checkpoint thread (SQLite's own would run one every 1,000 pages)."""
    wal.turns(1200)
    assert wal_frames(wal.path) > 1200


def test_the_loop_finishes_a_checkpoint_the_thread_could_not_so_the_wal_starts_over(wal):
    """The WAL starts over only once a checkpoint has caught up with every write. Here a
    reader holding an old snapshot keeps the thread's round from catching up."""
    wal.turns(100)
    reader = sqlite3.connect(wal.path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM events").fetchone() == (100,)
    wal.turns(100)
    wal.round()  # copies up to the reader's snapshot only
    assert wal.wal_long
    reader.execute("COMMIT")
    reader.close()
    wal.turn()  # this turn's commit catches up...
    assert not wal.wal_long
    wal.turn()  # ...so this one starts the WAL over
    assert wal_frames(wal.path) < 10
    assert seqs(wal.store.events("lounge", limit=200)) == list(range(3, 203))


def test_a_checkpoint_that_ran_during_a_turn_still_leads_the_loop_to_catch_up(wal):
    """The real case: the broker commits while the thread's checkpoint copies. That
    checkpoint reports every frame it knew of copied, yet the WAL cannot start over."""
    wal.turns(100)
    wal.turn(commit=False)  # a turn under way while the thread's round runs
    wal.round()
    assert wal.wal_long
    wal.store.commit()  # the turn ends, and the loop catches up...
    assert not wal.wal_long
    wal.turn()  # ...so the next turn starts the WAL over
    assert wal_frames(wal.path) < 10


def test_a_failing_catch_up_is_logged_and_the_turn_still_commits(wal, caplog):
    """A checkpoint that fails (a full disk, say) loses nothing committed: the loop logs
    it and serves on, rather than ending the broker over it."""

    class Failing:  # the store's connection, but checkpoints fail
        def __init__(self, db: sqlite3.Connection):
            self._db = db

        def execute(self, sql: str, *args):
            if "wal_checkpoint" in sql:
                raise sqlite3.OperationalError("database or disk is full")
            return self._db.execute(sql, *args)

        def __getattr__(self, name: str):
            return getattr(self._db, name)

    wal.turns(100)
    wal.turn(commit=False)
    wal.round()
    assert wal.wal_long
    real = wal.store._db
    wal.store._db = Failing(real)
    try:
        wal.store.commit()  # the catch-up fails here
    finally:
        wal.store._db = real
    assert "WAL checkpoint failed: database or disk is full" in caplog.text
    assert not wal.wal_long  # not tried again every turn: the thread's next round decides
    assert seqs(wal.store.events("lounge", limit=200)) == list(range(1, 102))


def test_closing_the_store_stops_its_checkpoint_thread(tmp_path):
    s = SqliteStore(str(tmp_path / "z.db"))
    thread = s._checkpoints
    assert thread is not None and thread.is_alive()
    s.close()
    assert not thread.is_alive()
