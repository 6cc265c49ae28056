"""The stores: rooms, their event streams, paging, and what survives a restart.

Every semantic test runs against both backends, SQLite and PostgreSQL (a real server,
tests/pgcluster.py): they must behave alike. Tests of what only one has (SQLite's WAL
checkpoints; PostgreSQL's lock and fencing) are marked ``sqlite_only`` or
``postgres_only``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import msgpack
import psycopg
import pytest

from broker.postgres import PostgresStore
from broker.store import Account, Fenced, SqliteStore, Store, StoredRoom, StoreError
from schema import pack

ROOT = Path(__file__).resolve().parent.parent
sqlite_only = pytest.mark.sqlite_only
postgres_only = pytest.mark.postgres_only


def event(room: str, seq: int, **fields) -> dict:
    return {"ev": "msg", "room": room, "seq": seq, "from": "alice", "text": f"m{seq}",
            **fields}


@dataclass
class Place:
    """Where a store lives, so that it can be opened again: a file, or a database."""

    backend: str  # "sqlite" or "postgres"
    where: str  # the file's path, or the database's DSN

    def open(self) -> Store:
        if self.backend == "sqlite":
            return SqliteStore(self.where)
        return PostgresStore(self.where, patience=10)  # the last holder may still be leaving

    def count_events(self) -> int:
        """How many events another connection sees committed."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.where) as db:
                return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        with psycopg.connect(self.where) as db:
            return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


@pytest.fixture(params=["sqlite", "postgres"])
def place(request, tmp_path) -> Place:
    if request.param == "sqlite":
        return Place("sqlite", str(tmp_path / "z.db"))
    return Place("postgres", request.getfixturevalue("pg_dsn"))


@pytest.fixture
def store(place):
    s = SqliteStore(":memory:") if place.backend == "sqlite" else place.open()
    yield s
    s.close()


def fill(store: Store, room: str, last: int) -> None:
    store.add_room(room, 1.0, "alice")
    for seq in range(1, last + 1):
        store.append(room, seq, pack(event(room, seq)))


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
    store.append("lounge", 1, pack(body))
    assert store.events("lounge", limit=1) == [body]


def test_events_are_in_seq_order_whatever_the_order_of_appending(store):
    store.add_room("lounge", 1.0, "alice")
    for seq in (3, 1, 2):
        store.append("lounge", seq, pack(event("lounge", seq)))
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
    store.append("lounge", 2, pack(event("lounge", 2)))
    with pytest.raises(StoreError):  # appends are batched: refused at commit
        store.commit()
    assert seqs(store.events("lounge", limit=50)) == [1, 2]  # the turn stored nothing
    store.add_room("den", 2.0, "bob")
    store.append("den", 2, pack(event("den", 2)))  # the same seq in another room is fine
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


def test_committed_rooms_and_events_survive_close_and_reopen(place):
    s = place.open()
    fill(s, "lounge", 3)
    s.commit()
    s.close()
    reopened = place.open()
    try:
        assert reopened.rooms() == [StoredRoom("lounge", 1.0, "alice", 3)]
        assert reopened.events("lounge", limit=50) == [event("lounge", n) for n in (1, 2, 3)]
    finally:
        reopened.close()


def test_close_commits_what_was_written(place):
    s = place.open()
    fill(s, "lounge", 2)
    s.close()  # no explicit commit
    reopened = place.open()
    try:
        assert seqs(reopened.events("lounge", limit=50)) == [1, 2]
    finally:
        reopened.close()


def test_uncommitted_writes_are_invisible_to_another_reader_until_commit(place):
    writer = place.open()
    try:
        fill(writer, "lounge", 1)
        writer.commit()
        writer.append("lounge", 2, pack(event("lounge", 2)))
        writer.events("lounge", limit=50)  # a read within the turn: its writes are sent
        assert place.count_events() == 1
        writer.commit()
        assert place.count_events() == 2
    finally:
        writer.close()


def test_commit_without_writes_is_harmless(store):
    store.commit()
    store.commit()
    fill(store, "lounge", 1)
    store.commit()
    assert seqs(store.events("lounge", limit=50)) == [1]


OPENERS = {"sqlite": "from broker.store import SqliteStore as Opened\n",
           "postgres": "from broker.postgres import PostgresStore as Opened\n"}


def test_a_writer_killed_before_commit_loses_only_the_uncommitted_turn(place):
    script = (
        "import os, sys\n"
        f"{OPENERS[place.backend]}"
        "from schema import pack\n"
        "s = Opened(sys.argv[1])\n"
        "s.add_room('lounge', 1.0, 'alice')\n"
        "s.append('lounge', 1, pack({'seq': 1}))\n"
        "s.commit()\n"
        "s.append('lounge', 2, pack({'seq': 2}))\n"
        "s.events('lounge', limit=50)  # the turn's writes are sent, not committed\n"
        "os._exit(0)  # like kill -9: no close, no commit\n"
    )
    subprocess.run([sys.executable, "-c", script, place.where], cwd=ROOT, check=True,
                   timeout=30)
    s = place.open()
    try:
        assert s.rooms() == [StoredRoom("lounge", 1.0, "alice", 1)]
        assert s.events("lounge", limit=50) == [{"seq": 1}]
    finally:
        s.close()


# --- accounts, and what people set up to look after a room -----------------------------------


def test_an_account_is_saved_replaced_counted_by_key_and_dropped(store):
    assert store.account("alice") is None
    store.save_account(Account("alice", "KEY1", b"salt", b"hash"))
    store.save_account(Account("bob", "KEY1", None, None))
    assert store.account("alice") == Account("alice", "KEY1", b"salt", b"hash")  # unsent
    store.commit()
    store.save_account(Account("alice", "KEY2", None, b"other"))  # a renewal replaces
    store.commit()
    assert store.account("alice") == Account("alice", "KEY2", None, b"other")
    assert (store.accounts_of("KEY1"), store.accounts_of("KEY2")) == (1, 1)
    store.drop_account("bob")
    assert store.account("bob") is None and store.accounts_of("KEY1") == 0


def test_room_settings_and_access_are_kept_per_room_and_go_with_it(store):
    fill(store, "lounge", 1)
    fill(store, "den", 1)
    assert store.room_settings("lounge") == {} and store.room_access("lounge") == []
    store.save_room_settings("lounge", {"invite": True, "subject": "héllo"})
    store.save_room_settings("lounge", {"invite": False})  # replaces
    store.grant("lounge", "role", "zed", {"role": "owner"})
    store.grant("lounge", "invite", "amy", {"name": "Amy"})
    store.grant("lounge", "role", "bob", {"role": "moderator"})
    store.grant("lounge", "role", "bob", {"role": "owner"})  # replaces
    store.grant("den", "role", "bob", {"role": "owner"})
    store.commit()
    assert store.room_settings("lounge") == {"invite": False}
    assert store.room_access("lounge") == [("invite", "amy", {"name": "Amy"}),
                                           ("role", "bob", {"role": "owner"}),
                                           ("role", "zed", {"role": "owner"})]
    store.revoke("lounge", "invite", "amy")
    store.revoke_everywhere(("role",), "bob")
    assert store.room_access("lounge") == [("role", "zed", {"role": "owner"})]
    assert store.room_access("den") == []
    store.drop_room("lounge")
    assert store.room_settings("lounge") == {} and store.room_access("lounge") == []


def test_a_rooms_size_is_the_bytes_of_its_stored_events(store):
    assert store.room_size("lounge") == 0
    fill(store, "lounge", 3)
    fill(store, "den", 1)
    packed = [msgpack.packb(event("lounge", seq)) for seq in (1, 2, 3)]
    assert store.room_size("lounge") == sum(map(len, packed))


def test_a_turn_with_a_failed_write_stores_none_of_its_writes(store):
    fill(store, "lounge", 1)
    store.commit()
    store.save_account(Account("alice", "KEY", None, None))
    store.add_room("lounge", 2.0, "bob")  # fails: the room exists
    store.append("lounge", 2, pack(event("lounge", 2)))
    assert seqs(store.events("lounge", limit=50))[0] == 1  # reads still work
    with pytest.raises(StoreError):
        store.commit()
    assert store.account("alice") is None
    assert seqs(store.events("lounge", limit=50)) == [1]
    fill(store, "den", 1)  # and the next turn is a turn like any
    store.commit()
    assert {r.name for r in store.rooms()} == {"lounge", "den"}


# --- retries: a message is recognised by its origin ------------------------------------------


def test_seq_of_finds_the_event_an_origin_made_in_that_room(store):
    store.add_room("lounge", 1.0, "alice")
    store.add_room("den", 1.0, "alice")
    store.append("lounge", 1, pack(event("lounge", 1)))
    store.append("lounge", 2, pack(event("lounge", 2)), "cafe:7")
    store.append("den", 1, pack(event("den", 1)), "cafe:8")
    assert store.seq_of("lounge", "cafe:7") == 2
    assert store.seq_of("den", "cafe:7") is None
    assert store.seq_of("lounge", "cafe:9") is None


def test_seq_of_survives_a_reopen(place):
    s = place.open()
    s.add_room("lounge", 1.0, "alice")
    s.append("lounge", 1, pack(event("lounge", 1)), "cafe:7")
    s.close()
    reopened = place.open()
    try:
        assert reopened.seq_of("lounge", "cafe:7") == 1
    finally:
        reopened.close()


# --- SQLite only: checkpoints off the loop thread -----------------------------------------


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
        self.store.append("lounge", self.seq, pack(event("lounge", self.seq, text="x" * 2000)))
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


@sqlite_only
def test_commits_never_checkpoint_the_wal_themselves(wal):
    """A checkpoint's fsync would hold up a whole turn: the loop's commits leave them to
    the checkpoint thread (SQLite's own would run one every 1,000 pages)."""
    wal.turns(1200)
    assert wal_frames(wal.path) > 1200


@sqlite_only
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


@sqlite_only
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


@sqlite_only
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


@sqlite_only
def test_closing_the_store_stops_its_checkpoint_thread(tmp_path):
    s = SqliteStore(str(tmp_path / "z.db"))
    thread = s._checkpoints
    assert thread is not None and thread.is_alive()
    s.close()
    assert not thread.is_alive()


# --- PostgreSQL only: one active core, and fencing -------------------------------------------


def end_session(cluster, dsn: str) -> None:
    """End the store's session on the server, as an operator or a restart would."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as db:
        for pid in cluster.backends(dsn):
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))


def lock_taken(dsn: str, patience: float) -> PostgresStore:
    """A second store on the database: it returns once it holds the lock."""
    return PostgresStore(dsn, patience=patience)


@postgres_only
def test_a_second_store_waits_as_a_standby_until_the_first_lets_go(pg_dsn):
    first = PostgresStore(pg_dsn)
    fill(first, "lounge", 2)
    first.commit()
    with pytest.raises(TimeoutError):
        lock_taken(pg_dsn, patience=0.6)
    first.close()
    second = lock_taken(pg_dsn, patience=5)
    try:
        assert second.rooms() == [StoredRoom("lounge", 1.0, "alice", 2)]
    finally:
        second.close()


@postgres_only
def test_a_store_whose_session_ended_is_fenced_even_in_a_turn_that_wrote_nothing(
        pg_dsn, pg_cluster):
    s = PostgresStore(pg_dsn)
    try:
        s.commit()  # a round trip: we hold it
        end_session(pg_cluster, pg_dsn)
        with pytest.raises(Fenced, match="session with PostgreSQL is gone"):
            s.commit()
    finally:
        s.close()


@postgres_only
def test_a_fenced_turn_stores_nothing_and_its_reads_are_fenced_too(pg_dsn, pg_cluster):
    s = PostgresStore(pg_dsn)
    fill(s, "lounge", 1)
    s.commit()
    s.append("lounge", 2, pack(event("lounge", 2)))
    end_session(pg_cluster, pg_dsn)
    with pytest.raises(Fenced):
        s.events("lounge", limit=50)
    with pytest.raises(Fenced):
        s.commit()
    s.close()
    after = lock_taken(pg_dsn, patience=5)
    try:
        assert seqs(after.events("lounge", limit=50)) == [1]
    finally:
        after.close()


@postgres_only
@pytest.mark.parametrize("last_turn", ["of statements", "of messages", "under way"])
def test_a_frozen_holder_loses_the_lock_after_the_lock_timeout(pg_dsn, last_turn):
    """A holder that makes no round trip (a frozen process) is ended by the server after
    lock_timeout, whatever its last turn sent (a pipeline, a single statement), and in
    the middle of a turn's transaction too: a standby takes over, and the holder's next
    commit is fenced, storing nothing."""
    frozen = PostgresStore(pg_dsn, lock_timeout=1.0)
    fill(frozen, "lounge", 1)  # a room and its message: two statements, a pipeline
    frozen.commit()
    if last_turn == "of messages":
        frozen.append("lounge", 2, pack(event("lounge", 2)))
        frozen.commit()
    elif last_turn == "under way":
        frozen.append("lounge", 2, pack(event("lounge", 2)))
        frozen.events("lounge", limit=50)  # the transaction is open on the server
    standby = lock_taken(pg_dsn, patience=5)  # granted once the server ends that session
    try:
        with pytest.raises(Fenced, match="timeout"):
            frozen.commit()
        stored = [1, 2] if last_turn == "of messages" else [1]
        assert seqs(standby.events("lounge", limit=50)) == stored
    finally:
        frozen.close()
        standby.close()


@postgres_only
def test_a_server_restart_fences_the_holder_and_the_store_is_taken_again(pg_dsn,
                                                                         pg_cluster):
    s = PostgresStore(pg_dsn)
    fill(s, "lounge", 3)
    s.commit()
    pg_cluster.restart("fast")
    with pytest.raises(Fenced):
        s.commit()
    s.close()
    again = lock_taken(pg_dsn, patience=10)
    try:
        assert again.rooms() == [StoredRoom("lounge", 1.0, "alice", 3)]
    finally:
        again.close()


@postgres_only
def test_a_turn_goes_to_the_server_as_one_pipeline_at_commit(pg_dsn):
    """Writes wait in memory until the commit, and a read within the turn sends them
    first: another reader sees none of them before the commit."""
    s = PostgresStore(pg_dsn)
    place = Place("postgres", pg_dsn)
    try:
        fill(s, "lounge", 100)
        s.grant("lounge", "role", "alice", {"role": "owner"})
        assert place.count_events() == 0
        assert len(s.events("lounge", limit=200)) == 100  # read your writes
        assert place.count_events() == 0
        s.commit()
        assert place.count_events() == 100
    finally:
        s.close()
