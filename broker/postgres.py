"""Rooms and their history in PostgreSQL, and the lock that makes one core the active one.

``PostgresStore`` is the ``Store`` of broker/store.py with SqliteStore's semantics. The
turn's writes wait in memory and go to the server at the turn's commit, a busy room's
messages as one INSERT of arrays: a turn of that alone is one round trip, one of several
statements two (a pipeline of them, then COMMIT). A read within the turn sends what waits
first, so the turn reads its own writes. A write that fails dooms the turn: ``commit()``
raises StoreError, having stored none of it. ``(room, seq)`` is the events' primary key,
so a seq used twice is a failed commit, never a second event.

**One active core.** Any number of brokers may start on one database. Each opens a session
and waits, a standby, until that session holds a session-level advisory lock (LOCK_KEY),
then loads the rooms and serves. The lock lives exactly as long as its session, and the
store reads and writes through that one session only, never reconnecting by itself:

* *Fencing.* Every commit is a round trip on the session (COMMIT, or ``SELECT 1`` for a
  turn that wrote nothing), and the loop sends nothing of a turn before its commit
  returns. A session that is gone (the server restarted, an operator ended it, the idle
  timeout below) fails that round trip with ``Fenced``: its lock went with it and another
  core may be active, so this one sends nothing more.
* *A frozen or vanished core loses the lock by itself.* The server ends a session idle for
  ``lock_timeout`` (``idle_session_timeout``, and ``idle_in_transaction_session_timeout``
  for one frozen mid-turn), and TCP keepalives on both ends give up on a peer that
  vanished. An active core is never idle that long: its loop turns, and so commits, at
  least every EXPIRY_CHECK (0.5 s), which is its heartbeat.

Durability is the server's: PostgreSQL's default ``synchronous_commit = on`` survives a
power cut. docs/deploy.md says how to make the server itself highly available.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import msgpack
import psycopg
from psycopg import pq

from .store import LOCK_TIMEOUT, Account, Fenced, StoredRoom, StoreError

log = logging.getLogger("zchat.broker")

LOCK_KEY = int.from_bytes(b"zchat", "big")  # the advisory lock the active core holds
LOCK_POLL = 0.2  # seconds between a standby's attempts at the lock
RECONNECT = 1.0  # seconds between attempts to reach PostgreSQL
APPLICATION = "zchat-core"  # how the sessions are named in pg_stat_activity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    name    TEXT COLLATE "C" PRIMARY KEY,
    created DOUBLE PRECISION NOT NULL,
    creator TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    room   TEXT COLLATE "C" NOT NULL,
    seq    BIGINT NOT NULL,
    body   BYTEA  NOT NULL,  -- msgpack map: the event as published
    origin TEXT,  -- "key:client id:request id" of the message, to recognise a retry
    PRIMARY KEY (room, seq)
);
CREATE TABLE IF NOT EXISTS accounts (
    name   TEXT COLLATE "C" PRIMARY KEY,  -- the fold of the nickname
    key    TEXT,
    salt   BYTEA,
    pwhash BYTEA
);
CREATE TABLE IF NOT EXISTS room_settings (
    room TEXT COLLATE "C" PRIMARY KEY,
    body BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS room_access (
    room TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,  -- "role", "invite", "ban:name", "ban:key"
    who  TEXT COLLATE "C" NOT NULL,  -- a nickname's fold, or a key (z85)
    body BYTEA NOT NULL,
    PRIMARY KEY (room, kind, who)
);
CREATE INDEX IF NOT EXISTS room_access_who ON room_access (who);
CREATE INDEX IF NOT EXISTS events_origin ON events (origin) WHERE origin IS NOT NULL;
CREATE INDEX IF NOT EXISTS accounts_key ON accounts (key) WHERE key IS NOT NULL;
"""

# A turn's messages in one statement: four arrays, sent in binary (%b), unnested.
_INSERT_EVENTS = ("INSERT INTO events (room, seq, body, origin) SELECT * FROM "
                  "unnest(%b::text[], %b::bigint[], %b::bytea[], %b::text[])")
_LAST = 1 << 62  # above any seq: "no bound"


class PostgresStore:
    """The store on a PostgreSQL database, held by this process as the active core."""

    def __init__(self, dsn: str, *, lock_timeout: float = LOCK_TIMEOUT,
                 patience: float | None = None):
        """Connect and wait, as a standby, until this process holds the lock; it is then
        the active core. ``patience``: give up after that many seconds (TimeoutError);
        None waits as long as it takes."""
        self._db = _active_session(dsn, lock_timeout, patience)
        self._db.execute(_SCHEMA)
        self._statements: list[tuple[str, Any]] = []  # the turn's writes, not yet sent
        self._rows: list[tuple[str, int, bytes, str | None]] = []  # its events, likewise
        self._in_tx = False
        self._doomed: psycopg.Error | None = None  # a write of this turn failed
        self.writes = 0
        self._problem: str | None = None
        self._failed: str | None = None  # the last commit's failure, for a second
        self._failed_at = 0.0

    # -- health ---------------------------------------------------------------------------

    def problem(self) -> str | None:
        return self._problem

    def check(self) -> str | None:
        """As SqliteStore: writes are refused for a second after a failed commit. The
        server watches its own disk, and a lost session is Fenced, not a problem."""
        if self._failed is not None and time.monotonic() > self._failed_at + 1.0:
            log.warning("Store: writes resume (%s earlier)", self._failed)
            self._failed = None
        if self._failed != self._problem:
            if self._failed is not None:
                log.critical("STORE: WRITES REFUSED: %s (PostgreSQL)", self._failed)
            self._problem = self._failed
        return self._problem

    # -- rooms and events -----------------------------------------------------------------

    def rooms(self) -> list[StoredRoom]:
        rows = self._read(
            "SELECT r.name, r.created, r.creator,"
            " (SELECT COALESCE(MAX(seq), 0) FROM events e WHERE e.room = r.name)"
            " FROM rooms r ORDER BY r.created, r.name")
        return [StoredRoom(*row) for row in rows]

    def add_room(self, name: str, created: float, creator: str) -> None:
        self._write("INSERT INTO rooms VALUES (%s, %s, %s)", (name, created, creator))

    def drop_room(self, name: str) -> None:
        self._write("DELETE FROM events WHERE room = %s", (name,))
        self._write("DELETE FROM room_settings WHERE room = %s", (name,))
        self._write("DELETE FROM room_access WHERE room = %s", (name,))
        self._write("DELETE FROM rooms WHERE name = %s", (name,))

    def append(self, room: str, seq: int, event: bytes, origin: str | None = None) -> None:
        self.writes += 1
        self._rows.append((room, seq, event, origin))

    def seq_of(self, room: str, origin: str) -> int | None:
        """The seq of the event this origin (client id:request id) already made, if any."""
        rows = self._read("SELECT seq FROM events WHERE origin = %s AND room = %s",
                          (origin, room))
        return rows[0][0] if rows else None

    def events(self, room: str, *, before: int | None = None, after: int | None = None,
               limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events in seq order: the newest ones below ``before``, or the
        oldest ones above ``after`` (so a catch-up pages forward, a scroll-back backward)."""
        below = before if before is not None else _LAST
        if after is not None:
            rows = self._read("SELECT body FROM events WHERE room = %s AND seq > %s"
                              " AND seq < %s ORDER BY seq LIMIT %s",
                              (room, after, below, limit))
            return [msgpack.unpackb(b) for (b,) in rows]
        rows = self._read("SELECT body FROM events WHERE room = %s AND seq < %s"
                          " ORDER BY seq DESC LIMIT %s", (room, below, limit))
        return [msgpack.unpackb(b) for (b,) in reversed(rows)]

    def room_size(self, room: str) -> int:
        [(size,)] = self._read("SELECT COALESCE(SUM(octet_length(body)), 0) FROM events "
                              "WHERE room = %s", (room,))
        return int(size)

    # -- accounts -------------------------------------------------------------------------

    def account(self, name: str) -> Account | None:
        rows = self._read("SELECT name, key, salt, pwhash FROM accounts WHERE name = %s",
                          (name,))
        return Account(*rows[0]) if rows else None

    def save_account(self, account: Account) -> None:
        self._write("INSERT INTO accounts VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO "
                    "UPDATE SET key = EXCLUDED.key, salt = EXCLUDED.salt, "
                    "pwhash = EXCLUDED.pwhash",
                    (account.name, account.key, account.salt, account.pwhash))

    def drop_account(self, name: str) -> None:
        self._write("DELETE FROM accounts WHERE name = %s", (name,))

    def accounts_of(self, key: str) -> int:
        [(count,)] = self._read("SELECT COUNT(*) FROM accounts WHERE key = %s", (key,))
        return count

    # -- what people set up to look after a room ------------------------------------------

    def room_settings(self, room: str) -> dict[str, Any]:
        rows = self._read("SELECT body FROM room_settings WHERE room = %s", (room,))
        return msgpack.unpackb(rows[0][0]) if rows else {}

    def save_room_settings(self, room: str, settings: dict[str, Any]) -> None:
        self._write("INSERT INTO room_settings VALUES (%s, %s) ON CONFLICT (room) DO "
                    "UPDATE SET body = EXCLUDED.body",
                    (room, msgpack.packb(settings, use_bin_type=True)))

    def room_access(self, room: str) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._read("SELECT kind, who, body FROM room_access WHERE room = %s"
                          " ORDER BY kind, who", (room,))
        return [(kind, who, msgpack.unpackb(body)) for kind, who, body in rows]

    def grant(self, room: str, kind: str, who: str, body: dict[str, Any]) -> None:
        self._write("INSERT INTO room_access VALUES (%s, %s, %s, %s) ON CONFLICT "
                    "(room, kind, who) DO UPDATE SET body = EXCLUDED.body",
                    (room, kind, who, msgpack.packb(body, use_bin_type=True)))

    def revoke(self, room: str, kind: str, who: str) -> None:
        self._write("DELETE FROM room_access WHERE room = %s AND kind = %s AND who = %s",
                    (room, kind, who))

    def revoke_everywhere(self, kinds: tuple[str, ...], who: str) -> None:
        """Forget what ``who`` was given in every room (a released nickname's roles)."""
        self._write("DELETE FROM room_access WHERE who = %s AND kind = ANY(%s)",
                    (who, list(kinds)))

    # -- the turn's transaction -----------------------------------------------------------

    def commit(self) -> None:
        """Commit the turn, or raise StoreError having stored none of it (Fenced if the
        session, and the lock with it, is gone). A turn that wrote nothing still makes a
        round trip on the session: that is what proves, before the loop sends anything,
        that this core still holds the lock."""
        wrote = self._in_tx or bool(self._statements or self._rows)
        self._send(commit=True)
        failure, self._doomed = self._doomed, None
        if failure is None and not wrote:
            try:
                self._db.execute("SELECT 1")
            except psycopg.Error as exc:
                failure = exc
        if failure is None:
            return
        if self._lost():
            raise self._fenced(failure) from failure
        self._failed, self._failed_at = f"a commit failed: {failure}", time.monotonic()
        self.check()
        raise StoreError(str(failure)) from failure

    def close(self) -> None:
        """Commit what was written (unless the session is gone), and end the session,
        which lets go of the lock: a standby takes over."""
        try:
            if (self._in_tx or self._statements or self._rows) and not self._lost():
                self.commit()
        except StoreError as exc:
            log.error("Store: the last turn could not be stored: %s", exc)
        finally:
            self._db.close()

    def _write(self, sql: str, args: Any) -> None:
        """One statement of the turn, sent at its commit (or before its next read)."""
        self.writes += 1
        self._seal_rows()
        self._statements.append((sql, args))

    def _seal_rows(self) -> None:
        """The events appended since the last other write, as one statement, in order."""
        if self._rows:
            columns = [list(column) for column in zip(*self._rows, strict=True)]
            self._rows = []
            self._statements.append((_INSERT_EVENTS, columns))

    def _send(self, *, commit: bool) -> None:
        """Send the writes that wait, and COMMIT if ``commit``. A turn of one statement
        (a busy room's messages, say) goes alone, its own transaction: one round trip.
        Otherwise BEGIN and the statements go in one pipeline, and COMMIT after it. A
        failure dooms the turn: its transaction is rolled back at once, so that later
        reads of the turn still work."""
        self._seal_rows()
        statements, self._statements = self._statements, []
        if self._doomed is not None:
            return
        try:
            if commit and not self._in_tx and len(statements) == 1:
                self._db.execute(*statements[0])
                return
            if statements:
                with self._db.pipeline():
                    if not self._in_tx:
                        self._db.execute("BEGIN")
                        self._in_tx = True
                    for sql, args in statements:
                        self._db.execute(sql, args)
            if commit and self._in_tx:
                # Never the last of a pipeline: psycopg ends one with a Flush, after which
                # PostgreSQL arms no idle timeout, and a frozen core would keep the lock.
                self._db.execute("COMMIT")
                self._in_tx = False
        except psycopg.Error as exc:
            self._doomed = exc
            self._roll_back()

    def _roll_back(self) -> None:
        self._in_tx = False
        if self._lost() or self._db.info.transaction_status == pq.TransactionStatus.IDLE:
            return
        try:
            self._db.execute("ROLLBACK")
        except psycopg.Error:
            log.exception("Store: the rollback failed too")

    def _read(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        """Rows of a query, after the writes of the turn that wait (read your writes)."""
        self._send(commit=False)
        try:
            return self._db.execute(sql, args).fetchall()
        except psycopg.Error as exc:
            if self._lost():
                raise self._fenced(exc) from exc
            raise

    def _lost(self) -> bool:
        return self._db.broken or self._db.closed

    def _fenced(self, exc: psycopg.Error) -> Fenced:
        """Say why the session went: the first error of the turn is the telling one (a
        later one only says the connection is closed)."""
        cause = self._doomed or exc
        return Fenced(f"the session with PostgreSQL is gone, and its lock with it: "
                      f"{_first_line(cause)}")


# -- becoming the active core ------------------------------------------------------------


def _active_session(dsn: str, lock_timeout: float, patience: float | None
                    ) -> psycopg.Connection:
    """A session holding the lock. Until it is ours, wait (a standby): PostgreSQL down
    or restarting, try again every RECONNECT; the lock held, every LOCK_POLL."""
    deadline = None if patience is None else time.monotonic() + patience
    said = ""  # logged once for as long as it stays true
    while True:
        try:
            db = _session(dsn, lock_timeout)
        except psycopg.OperationalError as exc:
            said = _say(said, f"Store: cannot reach PostgreSQL ({_first_line(exc)}); "
                              f"trying again every {RECONNECT:g} s")
            _pause(RECONNECT, deadline)
            continue
        try:
            while not db.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)
                                 ).fetchone()[0]:
                said = _say(said, f"Standby: {_holder(db)} holds the store's lock; "
                                  "waiting for it")
                _pause(LOCK_POLL, deadline)
        except psycopg.OperationalError as exc:
            said = _say(said, f"Store: lost PostgreSQL while waiting ({_first_line(exc)})")
            db.close()
            continue
        except BaseException:
            db.close()
            raise
        log.info("Store: this core holds the store's lock (%s, timeout %g s): active",
                 _where(db), lock_timeout)
        return db


def _session(dsn: str, lock_timeout: float) -> psycopg.Connection:
    """A session that the server ends once idle (or frozen mid-transaction) for
    ``lock_timeout``, over a connection whose keepalives give up on a vanished peer."""
    seconds = max(1, math.ceil(lock_timeout))
    db = psycopg.connect(dsn, autocommit=True, application_name=APPLICATION,
                         connect_timeout=max(2, seconds), keepalives=1, keepalives_idle=1,
                         keepalives_interval=1, keepalives_count=seconds,
                         tcp_user_timeout=round(lock_timeout * 1000))
    version = db.info.server_version
    if version < 140000:  # idle_session_timeout came with 14
        db.close()
        raise StoreError(f"PostgreSQL 14 or later is needed (the server is {version // 10000})")
    ms = round(lock_timeout * 1000)
    for setting, value in (("idle_session_timeout", ms),
                           ("idle_in_transaction_session_timeout", ms),
                           ("tcp_keepalives_idle", 1), ("tcp_keepalives_interval", 1),
                           ("tcp_keepalives_count", seconds), ("tcp_user_timeout", ms)):
        db.execute(f"SET {setting} = {int(value)}")
    return db


def describe(dsn: str) -> str:
    """Where a DSN points, for the log: host, port and database, never the password."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    return (f"PostgreSQL {parts.get('host', 'localhost')}:{parts.get('port', 5432)}/"
            f"{parts.get('dbname', parts.get('user', ''))}")


def _holder(db: psycopg.Connection) -> str:
    """Who holds the lock, as the server sees it (for the standby's log line)."""
    row = db.execute(
        "SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l"
        " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
        " AND l.granted AND l.objsubid = 1"
        " AND ((l.classid::bigint << 32) | l.objid::bigint) = %s", (LOCK_KEY,)).fetchone()
    if row is None:
        return "another core"
    name, address, pid = row
    return f"{name or 'a session'} (server pid {pid}{f', from {address}' if address else ''})"


def _where(db: psycopg.Connection) -> str:
    info = db.info
    return f"{info.host}:{info.port}/{info.dbname}, server pid {info.backend_pid}"


def _say(said: str, text: str) -> str:
    if text != said:
        log.warning("%s", text)
    return text


def _pause(seconds: float, deadline: float | None) -> None:
    if deadline is not None and time.monotonic() + seconds > deadline:
        raise TimeoutError("another core holds the store's lock")
    time.sleep(seconds)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

