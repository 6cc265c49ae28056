"""Where rooms and their history live: a narrow interface and its SQLite default.

The chat core writes through this interface during a loop turn; the broker loop calls
``commit()`` once per turn *before* sending anything, so nothing is acknowledged or
published that is not stored (one transaction per turn, never one fsync per message).

Durability: WAL journal with ``synchronous=NORMAL`` by default. A committed turn survives
the broker process dying (kill -9); a power cut may lose the last turns. ``durable=True``
(``--durability full``) syncs every commit, surviving power loss at a throughput cost.

Checkpoints (copying the WAL into the database file, with an fsync) run in a thread of
their own, not in a commit: one takes milliseconds here, and every message of the turn
that ran it would wait that long (SQLite's own ran one every 1,000 pages: five times a
second in a busy room). Only past WAL_LONG frames does the loop finish one itself, between
two turns, so that the WAL can start over (see ``_catch_up``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from schema.names import fold

log = logging.getLogger("zchat.broker")

CHECKPOINT_INTERVAL = 0.5  # seconds between the checkpoint thread's rounds
WAL_LONG = 4096  # frames (4 KiB pages): past this, the loop helps the WAL start over


@dataclass(frozen=True)
class StoredRoom:
    name: str
    created: float
    creator: str
    last_seq: int


@dataclass(frozen=True)
class Account:
    """A registered nickname: who may take it (a CURVE key, a password hash, or both).
    ``name`` is the fold of the nickname (schema.names.fold), its key in the store."""

    name: str
    key: str | None
    salt: bytes | None
    pwhash: bytes | None


class StoreError(Exception):
    """A commit failed: nothing of the turn was stored (the disk is full, say)."""


class Fenced(StoreError):
    """This process no longer holds the store: the session that made it the active core
    is gone (broker/postgres.py), and another core may be active now. Nothing of the turn
    was stored, and nothing more may be sent. Raised by commit() and by reads."""


class Store(Protocol):
    writes: int  # grows with every write: a request wrote if it grew while it ran
    def problem(self) -> str | None: ...  # why writes are refused now, if they are
    def check(self) -> str | None: ...  # look at the disk and the file again; problem()
    def rooms(self) -> list[StoredRoom]: ...
    def add_room(self, name: str, created: float, creator: str) -> None: ...
    def drop_room(self, name: str) -> None: ...
    # ``event`` as it is published, packed (schema.pack): stored as it is, packed once.
    def append(self, room: str, seq: int, event: bytes, origin: str | None = None) -> None: ...
    def seq_of(self, room: str, origin: str) -> int | None: ...
    def events(self, room: str, *, before: int | None = None, after: int | None = None,
               limit: int) -> list[dict[str, Any]]: ...
    def account(self, name: str) -> Account | None: ...
    def save_account(self, account: Account) -> None: ...
    def drop_account(self, name: str) -> None: ...
    def room_size(self, room: str) -> int: ...  # bytes of its stored events
    def accounts_of(self, key: str) -> int: ...
    # What people set up to look after a room (broker/rooms.py): its settings, and its
    # access entries, each (kind, who, body): roles, invites and bans.
    def room_settings(self, room: str) -> dict[str, Any]: ...
    def save_room_settings(self, room: str, settings: dict[str, Any]) -> None: ...
    def room_access(self, room: str) -> list[tuple[str, str, dict[str, Any]]]: ...
    def grant(self, room: str, kind: str, who: str, body: dict[str, Any]) -> None: ...
    def revoke(self, room: str, kind: str, who: str) -> None: ...
    def revoke_everywhere(self, kinds: tuple[str, ...], who: str) -> None: ...
    # The turn's writes, or StoreError with none of them stored; Fenced if this process no
    # longer holds the store. The loop sends nothing of a turn before this returns.
    def commit(self) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    name    TEXT PRIMARY KEY,
    created REAL NOT NULL,
    creator TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    room   TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    body   BLOB    NOT NULL,
    origin TEXT,  -- "client id:request id" of the message, to recognise a retry
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (
    name   TEXT PRIMARY KEY,
    key    TEXT,
    salt   BLOB,
    pwhash BLOB
);
-- Added with room ownership: a store made before gains these tables, empty, at start.
CREATE TABLE IF NOT EXISTS room_settings (
    room TEXT PRIMARY KEY,
    body BLOB NOT NULL  -- msgpack map: invite, key, secret, subject, history, ...
);
CREATE TABLE IF NOT EXISTS room_access (
    room TEXT NOT NULL,
    kind TEXT NOT NULL,  -- "role", "invite", "ban:name", "ban:key"
    who  TEXT NOT NULL,  -- a nickname's fold, or a key (z85)
    body BLOB NOT NULL,  -- msgpack map: the role, or who banned, why, until when
    PRIMARY KEY (room, kind, who)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS room_access_who ON room_access (who);
CREATE INDEX IF NOT EXISTS events_origin ON events (origin) WHERE origin IS NOT NULL;
CREATE INDEX IF NOT EXISTS accounts_key ON accounts (key) WHERE key IS NOT NULL;
"""

# A store several cores share (broker/postgres.py) is held by one at a time, and a core
# that froze or vanished lets go of it after this many seconds (--lock-timeout).
LOCK_TIMEOUT = 5.0

# Writes stop while the disk has less than this free: the broker never fills the disk to
# the last byte (where SQLite, and anything else on the machine, would start failing).
DISK_RESERVE = 64 << 20


class SqliteStore:
    """The embedded default store: one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str = ":memory:", *, durable: bool = False,
                 reserve: int = DISK_RESERVE):
        self._path, self._reserve = path, reserve
        self._problem: str | None = None  # why writes are refused, if they are
        self._failed: str | None = None  # the last commit's failure, until space returns
        self._failed_at = 0.0
        # isolation_level=None: we open and commit transactions ourselves, once per turn.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._file = _identity(path)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._fold_accounts()
        self._in_tx = False
        self._doomed: sqlite3.Error | None = None  # a write of this turn failed
        self.writes = 0  # statements and rows written, ever: who wrote is told by its growth
        self._rows: list[tuple[str, int, bytes, str | None]] = []
        self._checkpoints: _Checkpoints | None = None
        if path != ":memory:":
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # see _Checkpoints
            self._checkpoints = _Checkpoints(path)

    def _files(self) -> list[str]:
        """The database file and those of its journal that exist now."""
        return [self._path] + [f for f in (self._path + "-wal", self._path + "-shm")
                               if os.path.exists(f)]

    def _fold_accounts(self) -> None:
        """Accounts are keyed by the fold of their nickname (schema.names); a store made
        before that is brought in line once. Of two that fold alike, the first stays."""
        rows = self._db.execute("SELECT name FROM accounts").fetchall()
        for (name,) in rows:
            key = fold(name)
            if key == name:
                continue
            if self._db.execute("SELECT 1 FROM accounts WHERE name = ?", (key,)).fetchone():
                log.warning("Store: account %r is hidden by one alike; left as it is", name)
                continue
            self._db.execute("UPDATE accounts SET name = ? WHERE name = ?", (key, name))

    def problem(self) -> str | None:
        return self._problem

    def check(self) -> str | None:
        """Look again at what writes need: the file we opened still at its path (a file
        deleted or replaced underneath would take every later write with it), writable,
        and room on its disk. Cheap (two stats): the loop calls it twice a second."""
        if self._file is None:
            return None
        problem = None
        try:
            if _identity(self._path) != self._file:
                problem = "the database file was replaced"
            elif not all(os.access(f, os.W_OK) for f in self._files()):
                problem = "the database file is not writable"
            else:
                disk = os.statvfs(os.path.dirname(os.path.abspath(self._path)))
                if disk.f_flag & os.ST_RDONLY:
                    problem = "the disk is read-only"
                elif disk.f_bavail * disk.f_frsize < self._reserve:
                    problem = "the disk is full"
                elif self._failed is not None and time.monotonic() > self._failed_at + 1.0:
                    # The disk looks fine again a while after a failed commit: try writes.
                    log.warning("Store: writes resume (%s earlier)", self._failed)
                    self._failed = None
        except FileNotFoundError:
            problem = "the database file was deleted"
        problem = problem or self._failed
        if problem != self._problem:
            if problem is not None:
                log.critical("STORE: WRITES REFUSED: %s (%s)", problem, self._path)
            elif self._problem is not None:
                log.warning("Store: writable again (%s)", self._path)
            self._problem = problem
        return problem

    def _write(self, sql: str, args: Any, *, many: bool = False) -> None:
        """One statement of the turn's transaction. A failure (a full disk, say) dooms
        the turn instead of raising into the chat mid-request: commit() reports it."""
        self.writes += 1
        if self._doomed is not None:
            return
        try:
            if not self._in_tx:
                self._db.execute("BEGIN")
                self._in_tx = True
            (self._db.executemany if many else self._db.execute)(sql, args)
        except sqlite3.Error as exc:
            self._doomed = exc

    def rooms(self) -> list[StoredRoom]:
        self._flush()
        rows = self._db.execute(
            "SELECT r.name, r.created, r.creator,"
            " (SELECT COALESCE(MAX(seq), 0) FROM events e WHERE e.room = r.name)"
            " FROM rooms r ORDER BY r.created"
        )
        return [StoredRoom(*row) for row in rows]

    def add_room(self, name: str, created: float, creator: str) -> None:
        self._write("INSERT INTO rooms VALUES (?, ?, ?)", (name, created, creator))

    def drop_room(self, name: str) -> None:
        self._flush()
        self._write("DELETE FROM events WHERE room = ?", (name,))
        self._write("DELETE FROM room_settings WHERE room = ?", (name,))
        self._write("DELETE FROM room_access WHERE room = ?", (name,))
        self._write("DELETE FROM rooms WHERE name = ?", (name,))

    def append(self, room: str, seq: int, event: bytes, origin: str | None = None) -> None:
        # Rows wait for the turn's commit (or the next read) and go in with one
        # executemany: a busy room's turn costs one statement, not one per message.
        self.writes += 1
        self._rows.append((room, seq, event, origin))

    def _flush(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            self._write("INSERT INTO events VALUES (?, ?, ?, ?)", rows, many=True)

    def seq_of(self, room: str, origin: str) -> int | None:
        """The seq of the event this origin (client id:request id) already made, if any."""
        self._flush()
        row = self._db.execute("SELECT seq FROM events WHERE origin = ? AND room = ?",
                               (origin, room)).fetchone()
        return row[0] if row else None

    def events(self, room: str, *, before: int | None = None, after: int | None = None,
               limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events in seq order: the newest ones below ``before``, or the
        oldest ones above ``after`` (so a catch-up pages forward, a scroll-back backward)."""
        self._flush()
        if after is not None:
            rows = self._db.execute(
                "SELECT body FROM events WHERE room = ? AND seq > ? AND seq < ?"
                " ORDER BY seq LIMIT ?",
                (room, after, before if before is not None else 1 << 62, limit))
            return [msgpack.unpackb(b) for (b,) in rows]
        rows = self._db.execute(
            "SELECT body FROM events WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (room, before if before is not None else 1 << 62, limit))
        return [msgpack.unpackb(b) for (b,) in reversed(rows.fetchall())]

    def account(self, name: str) -> Account | None:
        row = self._db.execute("SELECT name, key, salt, pwhash FROM accounts WHERE name = ?",
                               (name,)).fetchone()
        return Account(*row) if row else None

    def save_account(self, account: Account) -> None:
        self._write("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?)",
                    (account.name, account.key, account.salt, account.pwhash))

    def drop_account(self, name: str) -> None:
        self._write("DELETE FROM accounts WHERE name = ?", (name,))

    def room_size(self, room: str) -> int:
        self._flush()
        (size,) = self._db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM events "
                                   "WHERE room = ?", (room,)).fetchone()
        return size

    def accounts_of(self, key: str) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM accounts WHERE key = ?",
                                    (key,)).fetchone()
        return count

    def room_settings(self, room: str) -> dict[str, Any]:
        row = self._db.execute("SELECT body FROM room_settings WHERE room = ?",
                               (room,)).fetchone()
        return msgpack.unpackb(row[0]) if row else {}

    def save_room_settings(self, room: str, settings: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO room_settings VALUES (?, ?)",
                    (room, msgpack.packb(settings, use_bin_type=True)))

    def room_access(self, room: str) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._db.execute("SELECT kind, who, body FROM room_access WHERE room = ?"
                                " ORDER BY kind, who", (room,))
        return [(kind, who, msgpack.unpackb(body)) for kind, who, body in rows]

    def grant(self, room: str, kind: str, who: str, body: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO room_access VALUES (?, ?, ?, ?)",
                    (room, kind, who, msgpack.packb(body, use_bin_type=True)))

    def revoke(self, room: str, kind: str, who: str) -> None:
        self._write("DELETE FROM room_access WHERE room = ? AND kind = ? AND who = ?",
                    (room, kind, who))

    def revoke_everywhere(self, kinds: tuple[str, ...], who: str) -> None:
        """Forget what ``who`` was given in every room (a released nickname's roles)."""
        self._write(f"DELETE FROM room_access WHERE who = ? AND kind IN "
                    f"({', '.join('?' * len(kinds))})", (who, *kinds))

    def commit(self) -> None:
        """Commit the turn, or raise StoreError having stored none of it."""
        self._flush()
        try:
            if self._doomed is not None:
                raise self._doomed
            if self._in_tx:
                self._db.execute("COMMIT")
                self._in_tx = False
        except sqlite3.Error as exc:
            self._doomed, self._in_tx = None, False
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("Store: the rollback failed too")
            self._failed, self._failed_at = f"a commit failed: {exc}", time.monotonic()
            self.check()
            raise StoreError(str(exc)) from exc
        if self._checkpoints is not None and self._checkpoints.wal_long:
            self._catch_up()

    def _catch_up(self) -> None:
        """Finish the checkpoint thread's work between two turns, so the WAL starts over.

        The WAL only starts over when a write begins after a checkpoint that copied every
        frame, which a broker writing every few milliseconds never lets the thread's do: a
        commit lands while it copies. So past WAL_LONG frames the loop checkpoints what
        the thread left, with no write in flight: a few milliseconds every few seconds at
        the busiest. Never while the thread is at it: then on the next turn.
        """
        checkpoints = self._checkpoints
        assert checkpoints is not None
        if checkpoints.lock.acquire(blocking=False):
            try:
                _, frames, done = self._db.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                checkpoints.wal_long = done < frames  # no write in flight: this is exact
            except sqlite3.Error as exc:
                # What is committed is safe in the WAL: serve on, and let the thread's
                # next round say whether to try again.
                log.error("WAL checkpoint failed: %s", exc)
                checkpoints.wal_long = False
            finally:
                checkpoints.lock.release()

    def close(self) -> None:
        try:
            self.commit()
        except StoreError as exc:
            log.error("Store: the last turn could not be stored: %s", exc)
        finally:
            if self._checkpoints is not None:
                self._checkpoints.stop()
            self._db.close()  # the last connection to close checkpoints what is left


def _identity(path: str) -> tuple[int, int] | None:
    """Which file is at ``path`` (device, inode); None for an in-memory store."""
    if path == ":memory:":
        return None
    st = os.stat(path)
    return st.st_dev, st.st_ino


class _Checkpoints(threading.Thread):
    """Checkpoints the WAL every CHECKPOINT_INTERVAL, on a connection of its own.

    A PASSIVE checkpoint never waits for, nor blocks, the broker's writes, and sqlite3
    lets go of the GIL while it copies and syncs, so the loop goes on meanwhile. If the
    broker dies, its next start replays the WAL as usual.
    """

    def __init__(self, path: str):
        super().__init__(name="zchat-checkpoints", daemon=True)
        self._path = path
        self._stopping = threading.Event()
        self.lock = threading.Lock()  # one checkpoint at a time: this thread's or the loop's
        self.wal_long = False  # the WAL is past WAL_LONG frames and was not caught up with
        self.start()

    def run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None)
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL):
                try:
                    self.round(db)
                except sqlite3.Error as exc:  # a full disk, say: the loop will catch up
                    log.error("WAL checkpoint failed: %s", exc)
                    self.wal_long = True
        finally:
            db.close()

    def round(self, db: sqlite3.Connection) -> None:
        # Even a checkpoint that reports every frame copied may have missed a commit made
        # while it copied (it counts from where it started): length alone is the signal.
        with self.lock:
            _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.wal_long = frames > WAL_LONG

    def stop(self) -> None:
        self._stopping.set()
        self.join()
