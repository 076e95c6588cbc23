"""``SqliteStore``: idempotency records and rate-limit counters in one SQLite file.

``SyncSqliteStore`` is its twin with blocking methods (Rule 14), on the same files.

The embedded default: durable across restarts and correct for several worker processes
on one machine (the file must be on a local disk; SQLite locking is unreliable on NFS).

Theory of operation:
1. Each step that writes runs in a ``BEGIN IMMEDIATE`` transaction (select the record,
   apply the pure state machine, write the result). ``BEGIN IMMEDIATE`` takes SQLite's
   single write lock up front, so two processes can never both read "absent" and both
   reserve.
2. The database runs in WAL mode: readers never block the writer. ``synchronous=NORMAL``
   (the default here) survives any process crash; set ``synchronous="FULL"`` to survive
   power loss as well, at a cost per write.
3. Group commit: the steps that write (or may write) are queued and run together, in
   arrival order, in one transaction on the next turn of the event loop, so concurrent
   requests share one commit (SQLite's cost is the commit, not the statement). Each step
   is still atomic and sees the steps before it. A batch that fails fails each of its
   steps, each with a ``StoreUnavailable`` of its own (the SQLite error as its cause);
   nothing of it was committed. Plain reads (``get``, ``records``, ``cache_get``) skip
   the queue and the write lock, and so may a ``begin`` (Rule 11). A store is used from
   one event loop.
4. Once open, the connection never sleeps inside SQLite (``busy_timeout=0``): when another
   process holds the write lock, the batch waits on the event loop with a short jittered
   backoff and tries again, up to ``lock_timeout`` seconds, then fails with
   ``StoreUnavailable``.
5. Expired rows are deleted in small batches (``purge_batch`` rows, one short
   transaction) at most every ``purge_interval`` seconds, piggybacked on a write;
   a full batch schedules the next one a second later instead of looping. The batch
   runs after the write's commit and never fails it: a batch that fails is logged
   (``surefoot.storage``, warning) and the next one waits its interval. ``purge`` is a
   step like any write (queued, backing off while another process holds the lock).
6. Rate-limit counters live in their own table, one row per key with its algorithm's
   state as JSON; a request's limits are read, decided (``ratelimit._core.plan``) and
   written in one transaction, so processes sharing the file never over-admit. A sliding
   log is the exception: its entries are rows of a table of their own (``_TableLog``,
   the core's ``Log``), primary key (key, running total), indexed on (key, time), so
   each lookup of a decision is one index seek, never a walk of the log. An admission
   inserts its entry and deletes the key's entries older than the oldest live one, so
   a key keeps its live entries (at most ``amount``: every cost is at least 1) and
   those that left the window since its last admission. Each entry carries its expiry
   (time + window): the purge batches delete those of idle keys, a few at a time.
7. Cache entries (``StaleCache``'s ``CacheStore`` contract) live in a table of their own,
   one row per key (value, expires_at): a read is a plain ``SELECT`` of a live row, a write
   one upsert in the group commit; expired rows go with the purge batches.
8. The schema version is SQLite's ``user_version``; opening an older file creates what
   it lacks (every statement of the schema is ``IF NOT EXISTS``; a column a table lacks
   is added) and sets the version. Upgrading from version 4 or older copies the sliding
   logs kept as JSON (a flat ``[t1, c1, t2, c2, ...]``) into the log table, so no limit
   starts afresh. A row alone does not say its algorithm (a one-entry log reads as a
   fixed window's ``[start, count]``), so every row of that shape is copied under its
   own key and every row stays: a key names its algorithm (``ratelimit.limit_key``), so
   the copies of other algorithms' rows and the old rows of sliding logs are never
   read, and the purge deletes them when they would have expired.
9. SQLite errors are translated to ``StoreUnavailable`` in one place (``_translate``);
   their text goes to the exception's ``__cause__`` for logs, never to a client. Only a
   write retries a held lock (Rule 4); a plain read that finds the file locked fails.
10. Per-principal quotas (``_core`` Rule 7): each record row carries its key's owner, and
    triggers keep each owner's count of rows (and of unknown ones) in
    ``surefoot_owners``, whichever statement writes them (purges too). A begin that
    needs its owner's usage reads that one row inside its own ``BEGIN IMMEDIATE``
    transaction, so processes racing at a quota never exceed it. The count includes
    expired rows not deleted yet: at a quota, the begin deletes the owner's expired
    rows (an index on owner and expiry) and reads again.
11. Coalescing ``begin``s: a ``begin`` that finds steps queued for the next group commit
    joins them without reading first. It is decided in their transaction, after the
    steps before it, whatever its answer (a reservation, or a replay, a conflict or a
    mismatch from the row read there), so a burst of requests costs one read a key and
    one commit. A ``begin`` that finds the queue empty first decides from a plain read,
    at once: a replay, a conflict or a mismatch then waits for no turn and no write lock
    (another process's included); only a ``begin`` that writes is queued, and read again
    in the transaction. The price: a ``begin`` in a batch waits with it while another
    process holds the write lock.
12. Ordering records (``surefoot.webhooks``' ``OrderingStore``, schema version 6) are rows
    of a table of their own, one per key: ``order_claim`` and ``order_settle`` apply
    ``_order``'s ``claim`` and ``settle`` in the group commit, as every step that writes
    (a claim that finds the queue empty first decides from a plain read, as a ``begin``
    does: a stale or busy answer writes nothing and waits for no lock). Expired rows go
    with the purge batches and ``purge``.
13. Boards (``surefoot.metrics``' ``BoardStore``, schema version 7) are rows of a table of
    their own, one per (board, slot), bounded by ``surefoot._board`` (checked before the
    step is queued). ``board_put``, ``board_claim`` and ``board_delete`` run in the group
    commit, so a claim's read, count and write are one ``BEGIN IMMEDIATE`` transaction:
    of processes claiming one slot at once, exactly one sets it (a claim that finds the
    queue empty first reads the slot, as a ``begin`` does: a live slot answers False at
    once, without the write lock). A read is a plain ``SELECT`` of the live rows. Expired
    rows go with the purge batches and ``purge``; an expired row left in place counts
    for nothing and is overwritten by the next put of its slot.
14. ``SyncSqliteStore`` is the same store with blocking methods (WSGI servers): the same
    schema, steps and answers (its methods are generated from ``SqliteStore``'s by
    ``scripts/unasync.py``; both share ``_Sqlite``), without the group commit. Each step
    that writes runs at once in a ``BEGIN IMMEDIATE`` transaction of its own and, while
    another process holds the write lock, sleeps with the same jittered backoff between
    tries, up to ``lock_timeout``, then fails with ``StoreUnavailable``. Nothing is ever
    queued, so a ``begin`` (or a claim) always first decides from a plain read (Rule 11).
    A lock guards the one connection: threads may share a store, one step at a time.
    Both stores (and any number of processes) may share one file.
15. A connection belongs to the process that opened it (SQLite forbids carrying one across
    ``fork()``; an inherited one shares its parent's locks, and a worker writing through
    it, or opening a second connection beside it, loses committed rows once the parent
    closes its own). So a process about to fork (a server's master with its app preloaded)
    first closes the connection of each store on a file, under the store's lock; the
    parent and each child open a fresh one at their next call. A child also gets a lock
    and a queue of its own. A fork that skips Python's fork hooks is caught by comparing
    ``os.getpid()`` with the opener's: the inherited connection is then left alone, never
    used nor closed, and a fresh one opened (a ``:memory:`` database is the exception: a
    child keeps its private copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from surefoot import idempotency, webhooks
from surefoot._board import MAX_SLOTS, board_full, check_board, check_slot, check_slot_name
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency import (
    Begin,
    Decision,
    Outcome,
    Record,
    State,
    StoredResponse,
    Usage,
    key_owner,
)
from surefoot.ratelimit import (
    ALGORITHMS,
    Concurrency,
    CounterState,
    Item,
    LogEntry,
    RateLimitDecision,
    plan,
)
from surefoot.webhooks import Claim, OrderRecord

__all__ = ["SqliteStore", "SyncSqliteStore"]

T = TypeVar("T")

_log = logging.getLogger("surefoot.storage")

# 2: records, rate-limit counters; 3: cache entries; 4: record owners; 5: sliding log entries;
# 6: ordering records; 7: boards
SCHEMA_VERSION = 7
_TABLE = "surefoot_idempotency"
_COUNTERS = "surefoot_ratelimit"
_LOG = "surefoot_ratelimit_log"
_CACHE = "surefoot_cache"
_OWNERS = "surefoot_owners"
_ORDERS = "surefoot_webhook_order"
_BOARD = "surefoot_board"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    token TEXT NOT NULL,
    generation INTEGER NOT NULL,
    lease_expires_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    ttl REAL NOT NULL,
    status INTEGER,
    headers TEXT,
    body BLOB,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS {_TABLE}_expires_at ON {_TABLE} (expires_at);
CREATE TABLE IF NOT EXISTS {_COUNTERS} (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {_COUNTERS}_expires_at ON {_COUNTERS} (expires_at);
CREATE TABLE IF NOT EXISTS {_LOG} (
    key TEXT NOT NULL,
    total INTEGER NOT NULL,
    time REAL NOT NULL,
    cost INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, total)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {_LOG}_time ON {_LOG} (key, time);
CREATE INDEX IF NOT EXISTS {_LOG}_expires_at ON {_LOG} (expires_at);
CREATE TABLE IF NOT EXISTS {_CACHE} (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {_CACHE}_expires_at ON {_CACHE} (expires_at);
CREATE TABLE IF NOT EXISTS {_ORDERS} (
    key TEXT PRIMARY KEY,
    newest REAL,
    holder TEXT,
    holding REAL,
    until REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {_ORDERS}_expires ON {_ORDERS} (expires);
CREATE TABLE IF NOT EXISTS {_BOARD} (
    board TEXT NOT NULL,
    slot TEXT NOT NULL,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (board, slot)
);
CREATE INDEX IF NOT EXISTS {_BOARD}_expires_at ON {_BOARD} (expires_at);
CREATE INDEX IF NOT EXISTS {_BOARD}_live ON {_BOARD} (board, expires_at);
"""
# Per-principal quotas (Rule 10), created after the tables: a table of schema version 3
# gets its owner column first. Triggers keep each owner's count of rows (expired ones not
# yet deleted included) and of unknown ones, whichever statement writes them.
_OWNER_SCHEMA = (
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_owner ON {_TABLE} (owner, expires_at) "
    "WHERE owner IS NOT NULL",
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_owner_unknown ON {_TABLE} (owner, expires_at) "
    "WHERE owner IS NOT NULL AND state = 'unknown'",
    f"CREATE TABLE IF NOT EXISTS {_OWNERS} "
    "(owner TEXT PRIMARY KEY, records INTEGER NOT NULL, unknown INTEGER NOT NULL)",
    f"""CREATE TRIGGER IF NOT EXISTS {_OWNERS}_insert AFTER INSERT ON {_TABLE}
    WHEN NEW.owner IS NOT NULL BEGIN
        INSERT OR IGNORE INTO {_OWNERS} VALUES (NEW.owner, 0, 0);
        UPDATE {_OWNERS} SET records = records + 1, unknown = unknown + (NEW.state = 'unknown')
        WHERE owner = NEW.owner;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS {_OWNERS}_delete AFTER DELETE ON {_TABLE}
    WHEN OLD.owner IS NOT NULL BEGIN
        UPDATE {_OWNERS} SET records = records - 1, unknown = unknown - (OLD.state = 'unknown')
        WHERE owner = OLD.owner;
        DELETE FROM {_OWNERS} WHERE owner = OLD.owner AND records <= 0;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS {_OWNERS}_update AFTER UPDATE OF state ON {_TABLE}
    WHEN NEW.owner IS NOT NULL AND (OLD.state = 'unknown') <> (NEW.state = 'unknown') BEGIN
        UPDATE {_OWNERS} SET unknown = unknown + (NEW.state = 'unknown') - (OLD.state = 'unknown')
        WHERE owner = NEW.owner;
    END""",
)
_COLUMNS = (
    "state, fingerprint, token, generation, lease_expires_at, expires_at, ttl, "
    "status, headers, body"
)
_SELECT = f"SELECT {_COLUMNS} FROM {_TABLE} WHERE key = ?"
# The owner is a function of the key (``key_owner``): written once, with the row.
_UPSERT = (
    f"INSERT INTO {_TABLE} (key, owner, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET "
    + ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _COLUMNS.split(","))
)
_COUNTS = f"SELECT records, unknown FROM {_OWNERS} WHERE owner = ?"
_DROP_EXPIRED = f"DELETE FROM {_TABLE} WHERE owner = ? AND expires_at <= ?"
_FIRST_EXPIRY = (
    f"SELECT min(expires_at), (SELECT min(expires_at) FROM {_TABLE} "
    f"WHERE owner = ?1 AND state = 'unknown') FROM {_TABLE} WHERE owner = ?1"
)
_DELETE = f"DELETE FROM {_TABLE} WHERE key = ?"
_PURGE = (
    f"DELETE FROM {_TABLE} WHERE rowid IN "
    f"(SELECT rowid FROM {_TABLE} WHERE expires_at <= ? LIMIT ?)"
)
_PURGE_COUNTERS = (
    f"DELETE FROM {_COUNTERS} WHERE rowid IN "
    f"(SELECT rowid FROM {_COUNTERS} WHERE expires_at <= ? LIMIT ?)"
)
_SELECT_COUNTER = f"SELECT state FROM {_COUNTERS} WHERE key = ? AND expires_at > ?"
_UPSERT_COUNTER = (
    f"INSERT INTO {_COUNTERS} (key, state, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET state = excluded.state, expires_at = excluded.expires_at"
)
_DELETE_COUNTER = f"DELETE FROM {_COUNTERS} WHERE key = ?"
# A sliding log's lookups (Rule 6), each one index seek. Times never decrease and totals
# increase, so (time, total) order is the log's order.
_SELECT_LOG = f"SELECT time, total, cost FROM {_LOG} WHERE key = ?"
_LOG_OLDEST_AFTER = f"{_SELECT_LOG} AND time > ? ORDER BY time, total LIMIT 1"
_LOG_NEWEST = f"{_SELECT_LOG} ORDER BY total DESC LIMIT 1"
_LOG_REACHING = f"{_SELECT_LOG} AND total >= ? ORDER BY total LIMIT 1"
# An entry whose total is logged already is the same entry: two limits under one key,
# decided from one state.
_LOG_INSERT = (
    f"INSERT OR IGNORE INTO {_LOG} (key, total, time, cost, expires_at) VALUES (?, ?, ?, ?, ?)"
)
_LOG_FORGET = f"DELETE FROM {_LOG} WHERE key = ? AND total < ?"
_PURGE_LOG = (
    f"DELETE FROM {_LOG} WHERE (key, total) IN "
    f"(SELECT key, total FROM {_LOG} WHERE expires_at <= ? LIMIT ?)"
)
_PURGE_CACHE = (
    f"DELETE FROM {_CACHE} WHERE rowid IN (SELECT rowid FROM {_CACHE} WHERE expires_at < ? LIMIT ?)"
)
_SELECT_CACHE = f"SELECT value FROM {_CACHE} WHERE key = ? AND expires_at >= ?"
_SELECT_ORDER = f"SELECT newest, holder, holding, until, expires FROM {_ORDERS} WHERE key = ?"
_UPSERT_ORDER = (
    f"INSERT INTO {_ORDERS} (key, newest, holder, holding, until, expires) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET newest = excluded.newest, "
    "holder = excluded.holder, holding = excluded.holding, until = excluded.until, "
    "expires = excluded.expires"
)
_PURGE_ORDERS = (
    f"DELETE FROM {_ORDERS} WHERE rowid IN (SELECT rowid FROM {_ORDERS} WHERE expires <= ? LIMIT ?)"
)
_SELECT_SLOT = f"SELECT expires_at FROM {_BOARD} WHERE board = ? AND slot = ?"
_COUNT_SLOTS = f"SELECT count(*) FROM {_BOARD} WHERE board = ? AND expires_at > ?"
_READ_BOARD = f"SELECT slot, value FROM {_BOARD} WHERE board = ? AND expires_at > ?"
_UPSERT_SLOT = (
    f"INSERT INTO {_BOARD} (board, slot, value, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (board, slot) DO UPDATE SET value = excluded.value, "
    "expires_at = excluded.expires_at"
)
_DELETE_SLOT = f"DELETE FROM {_BOARD} WHERE board = ? AND slot = ?"
_PURGE_BOARD = (
    f"DELETE FROM {_BOARD} WHERE rowid IN "
    f"(SELECT rowid FROM {_BOARD} WHERE expires_at <= ? LIMIT ?)"
)
_UPSERT_CACHE = (
    f"INSERT INTO {_CACHE} (key, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)

Row = tuple[str, str, str, int, float, float, float, int | None, str | None, bytes | None]


class _Sqlite:
    """What ``SqliteStore`` and ``SyncSqliteStore`` share (Rule 14): the connection, its
    schema, its purges and its process (Rule 15). Each store adds ``_atomic``, its way of
    running a step."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        lock_timeout: float = 5.0,
        purge_interval: float = 60.0,
        purge_batch: int = 200,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(
                f"{type(self).__name__}.synchronous: expected 'NORMAL' or 'FULL', "
                f"got {synchronous!r}"
            )
        # ``not x > 0`` refuses NaN too; an infinite lock_timeout would wait for ever.
        if (
            not (lock_timeout > 0 and math.isfinite(lock_timeout))
            or not purge_interval > 0
            or purge_batch < 1
        ):
            raise ConfigurationError(
                f"{type(self).__name__}: expected lock_timeout > 0 (finite), purge_interval > 0 "
                f"and purge_batch >= 1, got {lock_timeout!r}, {purge_interval!r}, {purge_batch!r}"
            )
        self.path = str(path)
        self.lock_timeout = lock_timeout
        self.purge_interval = purge_interval
        self.purge_batch = purge_batch
        self._synchronous = synchronous
        self._next_purge_at = 0.0
        # The process that opened the connection, and what belongs to it (Rule 15).
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        # The group commit's queue (Rule 3); a SyncSqliteStore never queues (Rule 14).
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        try:
            # Setting up may wait (blocking) for workers opening the same file at the same
            # moment: switching to WAL and creating the table both need SQLite's locks.
            self._connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=lock_timeout
            )
            self._set_up(synchronous)
            # From now on, never wait inside SQLite: steps back off outside it (Rules 4, 14).
            self._connection.execute("PRAGMA busy_timeout = 0")
        except BaseException as exc:
            if self._connection is not None:
                self._connection.close()
            if isinstance(exc, sqlite3.Error):
                raise ConfigurationError(
                    f"{type(self).__name__}: cannot open database {self.path!r}: {exc}"
                ) from exc
            raise
        _OPEN.add(self)

    @property
    def _lock(self) -> threading.Lock:
        """The lock of this process's connection (Rule 15)."""
        if self._pid != os.getpid():
            self._forked()
        return self._mutex

    @property
    def _db(self) -> sqlite3.Connection:
        """This process's connection (Rule 15), opened at its first use after a fork; used
        under ``_lock``."""
        if self._pid != os.getpid():
            self._forked()
        if self._connection is None:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            # The schema is there already: only the connection's own settings, and it
            # never waits inside SQLite (timeout=0: a held lock fails the call, Rule 4).
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
            try:
                db.execute(f"PRAGMA synchronous = {self._synchronous}")
            except BaseException:
                db.close()
                raise
            self._connection = db
        return self._connection

    def _in_memory(self) -> bool:
        return self.path in (":memory:", "")

    def _forked(self) -> None:
        """This process is a fork of the one that opened the connection (Rule 15): a lock, a
        queue and, at the next use, a connection of its own."""
        if self._connection is not None and not self._in_memory():
            _INHERITED.append(self._connection)  # never used nor closed here
            self._connection = None
        self._mutex = threading.Lock()
        self._pending = []
        self._pid = os.getpid()

    def _before_fork(self) -> None:
        """Close the connection before this process forks (Rule 15); the lock stays held
        until ``_after_fork_in_parent``."""
        self._lock.acquire()
        if self._connection is not None and not self._in_memory():
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None

    def _after_fork_in_parent(self) -> None:
        self._mutex.release()

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
        _OPEN.discard(self)

    def _set_up(self, synchronous: str) -> None:
        # SQLite skips the busy handler where waiting could deadlock (a lock upgrade while
        # another connection holds a pending lock), so opening retries on "locked" too.
        waited = 0.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute(f"PRAGMA synchronous = {synchronous}")
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or waited >= self.lock_timeout:
                    raise
                pause = 0.005 + 0.01 * random.random()
                time.sleep(pause)
                waited += pause

    def _migrate(self) -> None:
        with self._transaction():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{type(self).__name__}: {self.path!r} has schema version {version}, "
                    f"newer than this surefoot understands ({SCHEMA_VERSION}); upgrade surefoot"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({_TABLE})")}
                if "owner" not in columns:
                    self._db.execute(f"ALTER TABLE {_TABLE} ADD COLUMN owner TEXT")
                for statement in _OWNER_SCHEMA:
                    self._db.execute(statement)
                if version < 5:
                    _copy_flat_logs(self._db)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _maybe_purge(self, now: float) -> None:
        """Delete a batch of expired rows (Rule 5). Runs after a step's commit, so it never
        raises: the step's answer stands."""
        try:
            with _translate(retry=True), self._lock, self._transaction():
                deleted = max(
                    self._db.execute(statement, (now, self.purge_batch)).rowcount
                    for statement in (
                        _PURGE,
                        _PURGE_COUNTERS,
                        _PURGE_LOG,
                        _PURGE_CACHE,
                        _PURGE_ORDERS,
                        _PURGE_BOARD,
                    )
                )
        except _Busy:
            return  # another process holds the lock; purge next time
        except Exception:
            _log.warning(
                "%r: deleting expired rows failed; next try in %ss",
                self,
                self.purge_interval,
                exc_info=True,
            )
            self._next_purge_at = now + self.purge_interval
            return
        full = deleted >= self.purge_batch
        self._next_purge_at = now + (1.0 if full else self.purge_interval)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class SyncSqliteStore(_Sqlite):
    """``SqliteStore`` with blocking methods, for WSGI servers (``surefoot.wsgi``, Django,
    Flask): a ``SyncIdempotencyStore`` and a ``SyncRateLimitStore`` (with ordering records,
    boards and cache entries too), with ``SqliteStore``'s arguments, file and answers
    (Rule 14). Threads may share one; worker processes each open their own on one file,
    or share one made before they were forked (Rule 15).

    Example:
        >>> store = SyncSqliteStore("idempotency.db")
        >>> store = sync_store_from_url("sqlite:///var/lib/api/idempotency.db")  # the same
    """

    def _atomic(
        self, work: Callable[[sqlite3.Connection], T], now: float, *, purge: bool = True
    ) -> T:
        """Run ``work`` in a ``BEGIN IMMEDIATE`` transaction of its own, at once (Rule 14),
        then, if ``purge`` and it is due, a batch of expired rows (Rule 5)."""
        delay, waited = 0.0005, 0.0
        while True:
            try:
                with _translate(retry=True), self._lock, self._transaction():
                    result = work(self._db)
                break
            except _Busy as busy:
                if waited >= self.lock_timeout:
                    raise StoreUnavailable(retry_after=1) from busy.__cause__
            # Another process holds the write lock: back off (outside this store's lock,
            # so other threads' reads go on), as the async store's batches do.
            pause = delay * (0.5 + random.random())
            time.sleep(pause)
            waited += pause
            delay = min(delay * 2, 0.05)
        if purge and now >= self._next_purge_at:
            self._maybe_purge(now)
        return result

    # ---- generated by scripts/unasync.py from the async source below: do not edit ----
    def _step(
        self, key: str, apply: Callable[[Record | None], tuple[T, Record | None, bool]], now: float
    ) -> T:
        """Run ``apply`` on the record under ``key`` atomically; write if it says so."""

        owner = key_owner(key) or None

        def work(db: sqlite3.Connection) -> T:
            result, new, changed = apply(_decode(db.execute(_SELECT, (key,)).fetchone()))
            if changed:
                if new is None:
                    db.execute(_DELETE, (key,))
                else:
                    db.execute(_UPSERT, (key, owner, *_encode(new)))
            return result

        return self._atomic(work, now)

    def begin(self, key: str, request: Begin, now: float) -> Decision:
        if not self._pending:
            # Nothing queued (Rule 11): most answers (replay, conflict, mismatch) need
            # no write, so a plain read may settle it without the write lock.
            with _translate(), self._lock:
                seen = _decode(self._db.execute(_SELECT, (key,)).fetchone())
            decision, new = idempotency.begin(seen, request, now)
            if new is seen:
                return decision
        owner = key_owner(key)

        def work(db: sqlite3.Connection) -> Decision:
            record = _decode(db.execute(_SELECT, (key,)).fetchone())
            usage = None
            if owner and idempotency.charges_quota(record, request, now):
                usage = _usage(db, owner, request, now)
            decision, new = idempotency.begin(record, request, now, usage)
            if new is not record and new is not None:
                db.execute(_UPSERT, (key, owner or None, *_encode(new)))
            return decision

        return self._atomic(work, now)

    def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        def apply(record: Record | None) -> tuple[bool, Record | None, bool]:
            accepted, new = idempotency.finish(record, token, outcome, now)
            return accepted, new, new is not record

        return self._step(key, apply, now)

    def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        def apply(record: Record | None) -> tuple[bool, Record | None, bool]:
            accepted, new = idempotency.resolve(record, response, now)
            return accepted, new, accepted

        return self._step(key, apply, now)

    def forget(self, key: str, now: float) -> bool:
        def apply(record: Record | None) -> tuple[bool, Record | None, bool]:
            accepted, new = idempotency.forget(record, now)
            return accepted, new, record is not None

        return self._step(key, apply, now)

    def get(self, key: str, now: float) -> Record | None:
        with _translate(), self._lock:
            record = _decode(self._db.execute(_SELECT, (key,)).fetchone())
        return None if idempotency.classify(record, now) is State.ABSENT else record

    def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        stored = {State.LEASE_EXPIRED: State.IN_FLIGHT}.get(state, state) if state else None
        query = f"SELECT key, {_COLUMNS} FROM {_TABLE} WHERE expires_at > ?"
        params: tuple[object, ...] = (now,)
        if stored is not None:
            query += " AND state = ?"
            params += (stored.value,)
        out: list[tuple[str, Record]] = []
        with _translate(), self._lock:
            cursor = self._db.execute(query + " ORDER BY rowid", params)
            for key, *row in cursor:
                record = _decode(tuple(row))
                if record is not None and state in (None, idempotency.classify(record, now)):
                    out.append((key, record))
                    if len(out) >= limit:
                        break
        return out

    def purge(self, now: float, *, limit: int = 500) -> int:
        def work(db: sqlite3.Connection) -> int:
            deleted = int(db.execute(_PURGE, (now, limit)).rowcount)
            for statement in (_PURGE_ORDERS, _PURGE_BOARD):
                if deleted < limit:
                    deleted += db.execute(statement, (now, limit - deleted)).rowcount
            return deleted

        return self._atomic(work, now, purge=False)  # a step as any write (Rule 5)

    # -- boards (Rule 13) ------------------------------------------------------------------

    def board_put(self, board: str, slot: str, value: bytes, expires_at: float, now: float) -> None:
        check_slot(board, slot, value, expires_at, now)

        def work(db: sqlite3.Connection) -> None:
            _write_slot(db, board, slot, value, expires_at, now, claim=False)

        self._atomic(work, now)

    def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        check_slot(board, slot, value, expires_at, now)
        if not self._pending:
            with _translate(), self._lock:
                row = self._db.execute(_SELECT_SLOT, (board, slot)).fetchone()
            if row is not None and now < row[0]:
                return False

        def work(db: sqlite3.Connection) -> bool:
            return _write_slot(db, board, slot, value, expires_at, now, claim=True)

        return self._atomic(work, now)

    def board_read(self, board: str, now: float) -> dict[str, bytes]:
        check_board(board)
        with _translate(), self._lock:
            rows = self._db.execute(_READ_BOARD, (board, now)).fetchall()
        return {slot: bytes(value) for slot, value in rows}

    def board_delete(self, board: str, slot: str, now: float) -> bool:
        check_slot_name(board, slot)

        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(_SELECT_SLOT, (board, slot)).fetchone()
            if row is None:
                return False
            db.execute(_DELETE_SLOT, (board, slot))
            return bool(now < row[0])

        return self._atomic(work, now)

    # -- ordering records (Rule 12) ------------------------------------------------------

    def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        def decide(record: OrderRecord | None) -> tuple[OrderRecord | None, Claim]:
            return webhooks.claim(
                record, version=version, token=token, now=now, lease=lease, retention=retention
            )

        if not self._pending:
            with _translate(), self._lock:
                seen = _order_row(self._db.execute(_SELECT_ORDER, (key,)).fetchone())
            new, answer = decide(seen)
            if new is seen:
                return answer

        def work(db: sqlite3.Connection) -> Claim:
            record = _order_row(db.execute(_SELECT_ORDER, (key,)).fetchone())
            new, answer = decide(record)
            if new is not record and new is not None:
                db.execute(_UPSERT_ORDER, (key, *new))
            return answer

        return self._atomic(work, now)

    def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            record = _order_row(db.execute(_SELECT_ORDER, (key,)).fetchone())
            new = webhooks.settle(
                record, token=token, version=version, ok=ok, now=now, retention=retention
            )
            if new is not record and new is not None:
                db.execute(_UPSERT_ORDER, (key, *new))

        self._atomic(work, now)

    def order_get(self, key: str, now: float) -> OrderRecord | None:
        with _translate(), self._lock:
            record = _order_row(self._db.execute(_SELECT_ORDER, (key,)).fetchone())
        return webhooks.live_order(record, now)

    # -- rate limits ---------------------------------------------------------------------

    rate_limit_algorithms = ALGORITHMS

    def acquire(self, items: Sequence[Item], now: float) -> tuple[bool, list[RateLimitDecision]]:
        def work(db: sqlite3.Connection) -> tuple[bool, list[RateLimitDecision]]:
            states = [
                _TableLog(db, i.key, i.limit.window)
                if i.algorithm == "sliding_log"
                else _load_state(db.execute(_SELECT_COUNTER, (i.key, now)).fetchone())
                for i in items
            ]
            admitted, decisions, writes = plan(states, items, now)
            for w in writes:
                if isinstance(w.state, _TableLog):
                    w.state.save()
                else:
                    db.execute(_UPSERT_COUNTER, (w.key, json.dumps(w.state), w.expires_at))
            return admitted, decisions

        return self._atomic(work, now)

    def release(self, key: str, token: str, now: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            state = _load_state(db.execute(_SELECT_COUNTER, (key, now)).fetchone())
            if state is None:
                return
            new = Concurrency.release(state, token, now)
            if new is None:
                db.execute(_DELETE_COUNTER, (key,))
            else:
                db.execute(_UPSERT_COUNTER, (key, json.dumps(new), Concurrency.expires_at(new)))

        self._atomic(work, now)

    # -- cache entries -----------------------------------------------------------------------

    def cache_get(self, key: str, now: float) -> bytes | None:
        with _translate(), self._lock:
            row = self._db.execute(_SELECT_CACHE, (key, now)).fetchone()
        return None if row is None else bytes(row[0])

    def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(_UPSERT_CACHE, (key, value, expires_at))

        self._atomic(work, now)

    def close(self) -> None:
        self._close()

    # ---- end ----


class SqliteStore(_Sqlite):
    """Idempotency store in a SQLite database file.

    Example:
        >>> store = SqliteStore("idempotency.db")
        >>> store = store_from_url("sqlite:///var/lib/api/idempotency.db")  # the same, by URL

    Args:
        path: the database file (created with its table if missing), or ``":memory:"``.
        synchronous: SQLite's durability setting: ``"NORMAL"`` survives process crashes,
            ``"FULL"`` power loss too.
        lock_timeout: seconds a step waits for another process's write lock (finite, > 0).
        purge_interval: seconds between two batches of expired-row deletion.
        purge_batch: rows deleted per batch.
    """

    async def _atomic(
        self, work: Callable[[sqlite3.Connection], T], now: float, *, purge: bool = True
    ) -> T:
        """Run ``work`` atomically, in the next group commit (Rule 3), then, if ``purge``
        and it is due, a batch of expired rows (Rule 5)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush, loop, 0.0005, 0.0)
        result = await future
        if purge and now >= self._next_purge_at:
            self._maybe_purge(now)
        return result

    def _flush(self, loop: asyncio.AbstractEventLoop, delay: float, waited: float) -> None:
        """Run every pending step in one write transaction, in arrival order."""
        batch, self._pending = self._pending, []
        outcomes: list[tuple[bool, Any]] = []
        try:
            with _translate(retry=True), self._lock, self._transaction():
                for work, _ in batch:
                    try:
                        outcomes.append((True, work(self._db)))
                    except sqlite3.Error:
                        raise
                    except Exception as exc:  # a step raises before it writes: fail it alone
                        outcomes.append((False, exc))
        except _Busy as busy:
            if waited < self.lock_timeout:
                self._pending[:0] = batch
                pause = delay * (0.5 + random.random())
                loop.call_later(pause, self._flush, loop, min(delay * 2, 0.05), waited + pause)
                return
            outcomes = [(False, _unavailable(busy.__cause__)) for _ in batch]
        except StoreUnavailable as exc:
            outcomes = [(False, _unavailable(exc.__cause__)) for _ in batch]
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if not future.done():  # its caller may have been cancelled
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    # ---- async source of the generated code above (scripts/unasync.py) ----
    async def _step(
        self, key: str, apply: Callable[[Record | None], tuple[T, Record | None, bool]], now: float
    ) -> T:
        """Run ``apply`` on the record under ``key`` atomically; write if it says so."""

        owner = key_owner(key) or None

        def work(db: sqlite3.Connection) -> T:
            result, new, changed = apply(_decode(db.execute(_SELECT, (key,)).fetchone()))
            if changed:
                if new is None:
                    db.execute(_DELETE, (key,))
                else:
                    db.execute(_UPSERT, (key, owner, *_encode(new)))
            return result

        return await self._atomic(work, now)

    async def begin(self, key: str, request: Begin, now: float) -> Decision:
        if not self._pending:
            # Nothing queued (Rule 11): most answers (replay, conflict, mismatch) need
            # no write, so a plain read may settle it without the write lock.
            with _translate(), self._lock:
                seen = _decode(self._db.execute(_SELECT, (key,)).fetchone())
            decision, new = idempotency.begin(seen, request, now)
            if new is seen:
                return decision
        owner = key_owner(key)

        def work(db: sqlite3.Connection) -> Decision:
            record = _decode(db.execute(_SELECT, (key,)).fetchone())
            usage = None
            if owner and idempotency.charges_quota(record, request, now):
                usage = _usage(db, owner, request, now)
            decision, new = idempotency.begin(record, request, now, usage)
            if new is not record and new is not None:
                db.execute(_UPSERT, (key, owner or None, *_encode(new)))
            return decision

        return await self._atomic(work, now)

    async def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        def apply(record: Record | None) -> tuple[bool, Record | None, bool]:
            accepted, new = idempotency.finish(record, token, outcome, now)
            return accepted, new, new is not record

        return await self._step(key, apply, now)

    async def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        def apply(record: Record | None) -> tuple[bool, Record | None, bool]:
            accepted, new = idempotency.resolve(record, response, now)
            return accepted, new, accepted

        return await self._step(key, apply, now)

    async def forget(self, key: str, now: float) -> bool:
        def apply(record: Record | None) -> tuple[bool, Record | None, bool]:
            accepted, new = idempotency.forget(record, now)
            return accepted, new, record is not None

        return await self._step(key, apply, now)

    async def get(self, key: str, now: float) -> Record | None:
        with _translate(), self._lock:
            record = _decode(self._db.execute(_SELECT, (key,)).fetchone())
        return None if idempotency.classify(record, now) is State.ABSENT else record

    async def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        stored = {State.LEASE_EXPIRED: State.IN_FLIGHT}.get(state, state) if state else None
        query = f"SELECT key, {_COLUMNS} FROM {_TABLE} WHERE expires_at > ?"
        params: tuple[object, ...] = (now,)
        if stored is not None:
            query += " AND state = ?"
            params += (stored.value,)
        out: list[tuple[str, Record]] = []
        with _translate(), self._lock:
            cursor = self._db.execute(query + " ORDER BY rowid", params)
            for key, *row in cursor:
                record = _decode(tuple(row))
                if record is not None and state in (None, idempotency.classify(record, now)):
                    out.append((key, record))
                    if len(out) >= limit:
                        break
        return out

    async def purge(self, now: float, *, limit: int = 500) -> int:
        def work(db: sqlite3.Connection) -> int:
            deleted = int(db.execute(_PURGE, (now, limit)).rowcount)
            for statement in (_PURGE_ORDERS, _PURGE_BOARD):
                if deleted < limit:
                    deleted += db.execute(statement, (now, limit - deleted)).rowcount
            return deleted

        return await self._atomic(work, now, purge=False)  # a step as any write (Rule 5)

    # -- boards (Rule 13) ------------------------------------------------------------------

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        check_slot(board, slot, value, expires_at, now)

        def work(db: sqlite3.Connection) -> None:
            _write_slot(db, board, slot, value, expires_at, now, claim=False)

        await self._atomic(work, now)

    async def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        check_slot(board, slot, value, expires_at, now)
        if not self._pending:
            with _translate(), self._lock:
                row = self._db.execute(_SELECT_SLOT, (board, slot)).fetchone()
            if row is not None and now < row[0]:
                return False

        def work(db: sqlite3.Connection) -> bool:
            return _write_slot(db, board, slot, value, expires_at, now, claim=True)

        return await self._atomic(work, now)

    async def board_read(self, board: str, now: float) -> dict[str, bytes]:
        check_board(board)
        with _translate(), self._lock:
            rows = self._db.execute(_READ_BOARD, (board, now)).fetchall()
        return {slot: bytes(value) for slot, value in rows}

    async def board_delete(self, board: str, slot: str, now: float) -> bool:
        check_slot_name(board, slot)

        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(_SELECT_SLOT, (board, slot)).fetchone()
            if row is None:
                return False
            db.execute(_DELETE_SLOT, (board, slot))
            return bool(now < row[0])

        return await self._atomic(work, now)

    # -- ordering records (Rule 12) ------------------------------------------------------

    async def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        def decide(record: OrderRecord | None) -> tuple[OrderRecord | None, Claim]:
            return webhooks.claim(
                record, version=version, token=token, now=now, lease=lease, retention=retention
            )

        if not self._pending:
            with _translate(), self._lock:
                seen = _order_row(self._db.execute(_SELECT_ORDER, (key,)).fetchone())
            new, answer = decide(seen)
            if new is seen:
                return answer

        def work(db: sqlite3.Connection) -> Claim:
            record = _order_row(db.execute(_SELECT_ORDER, (key,)).fetchone())
            new, answer = decide(record)
            if new is not record and new is not None:
                db.execute(_UPSERT_ORDER, (key, *new))
            return answer

        return await self._atomic(work, now)

    async def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            record = _order_row(db.execute(_SELECT_ORDER, (key,)).fetchone())
            new = webhooks.settle(
                record, token=token, version=version, ok=ok, now=now, retention=retention
            )
            if new is not record and new is not None:
                db.execute(_UPSERT_ORDER, (key, *new))

        await self._atomic(work, now)

    async def order_get(self, key: str, now: float) -> OrderRecord | None:
        with _translate(), self._lock:
            record = _order_row(self._db.execute(_SELECT_ORDER, (key,)).fetchone())
        return webhooks.live_order(record, now)

    # -- rate limits ---------------------------------------------------------------------

    rate_limit_algorithms = ALGORITHMS

    async def acquire(
        self, items: Sequence[Item], now: float
    ) -> tuple[bool, list[RateLimitDecision]]:
        def work(db: sqlite3.Connection) -> tuple[bool, list[RateLimitDecision]]:
            states = [
                _TableLog(db, i.key, i.limit.window)
                if i.algorithm == "sliding_log"
                else _load_state(db.execute(_SELECT_COUNTER, (i.key, now)).fetchone())
                for i in items
            ]
            admitted, decisions, writes = plan(states, items, now)
            for w in writes:
                if isinstance(w.state, _TableLog):
                    w.state.save()
                else:
                    db.execute(_UPSERT_COUNTER, (w.key, json.dumps(w.state), w.expires_at))
            return admitted, decisions

        return await self._atomic(work, now)

    async def release(self, key: str, token: str, now: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            state = _load_state(db.execute(_SELECT_COUNTER, (key, now)).fetchone())
            if state is None:
                return
            new = Concurrency.release(state, token, now)
            if new is None:
                db.execute(_DELETE_COUNTER, (key,))
            else:
                db.execute(_UPSERT_COUNTER, (key, json.dumps(new), Concurrency.expires_at(new)))

        await self._atomic(work, now)

    # -- cache entries -----------------------------------------------------------------------

    async def cache_get(self, key: str, now: float) -> bytes | None:
        with _translate(), self._lock:
            row = self._db.execute(_SELECT_CACHE, (key, now)).fetchone()
        return None if row is None else bytes(row[0])

    async def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(_UPSERT_CACHE, (key, value, expires_at))

        await self._atomic(work, now)

    async def aclose(self) -> None:
        self._close()

    # ---- end ----


class _Busy(Exception):
    """Another connection holds the write lock."""


#: The stores of this process (Rule 15); a fork's hooks run in the thread that forks, so
#: the stores whose locks it holds are that thread's.
_OPEN: weakref.WeakSet[_Sqlite] = weakref.WeakSet()
_forking = threading.local()
#: Connections a child inherited through a fork that skipped the hooks: kept, never closed.
_INHERITED: list[sqlite3.Connection] = []


def _before_fork() -> None:
    _forking.stores = list(_OPEN)
    for store in _forking.stores:
        store._before_fork()


def _after_fork_in_parent() -> None:
    for store in getattr(_forking, "stores", ()):
        store._after_fork_in_parent()
    _forking.stores = []


def _after_fork_in_child() -> None:
    for store in getattr(_forking, "stores", ()):
        store._forked()
    _forking.stores = []


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def _unavailable(cause: BaseException | None) -> StoreUnavailable:
    """A failed batch's exception for one of its steps: an instance of its own (one
    instance raised in several tasks would tangle their tracebacks), with the cause."""
    error = StoreUnavailable(retry_after=1)
    error.__cause__ = cause
    return error


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


@contextmanager
def _translate(*, retry: bool = False) -> Iterator[None]:
    """SQLite errors become ``StoreUnavailable`` (503); with ``retry`` (a write, which
    backs off), a held lock becomes ``_Busy`` instead (Rules 4, 9)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if retry and _is_busy(exc):
            raise _Busy from exc
        raise StoreUnavailable(retry_after=1) from exc
    except sqlite3.Error as exc:
        raise StoreUnavailable(retry_after=1) from exc


def _usage(db: sqlite3.Connection, owner: str, request: Begin, now: float) -> Usage:
    """What ``owner`` holds at ``now`` (Rule 10), inside the caller's transaction."""
    records, unknown = db.execute(_COUNTS, (owner,)).fetchone() or (0, 0)
    first = first_unknown = math.inf
    if (request.max_records and records >= request.max_records) or (
        request.max_unknown and unknown >= request.max_unknown
    ):
        # The counts include expired rows not deleted yet: delete the owner's, read again.
        db.execute(_DROP_EXPIRED, (owner, now))
        records, unknown = db.execute(_COUNTS, (owner,)).fetchone() or (0, 0)
        found = db.execute(_FIRST_EXPIRY, (owner,)).fetchone()
        first = math.inf if found[0] is None else found[0]
        first_unknown = math.inf if found[1] is None else found[1]
    return Usage(records, unknown, first, first_unknown)


def _write_slot(
    db: sqlite3.Connection,
    board: str,
    slot: str,
    value: bytes,
    expires_at: float,
    now: float,
    *,
    claim: bool,
) -> bool:
    """Set the slot (only if it is not live, when ``claim``), inside the caller's
    transaction; whether it was set. A full board raises before anything is written."""
    row = db.execute(_SELECT_SLOT, (board, slot)).fetchone()
    if row is not None and now < row[0]:
        if claim:
            return False
    elif db.execute(_COUNT_SLOTS, (board, now)).fetchone()[0] >= MAX_SLOTS:
        raise board_full(board)
    db.execute(_UPSERT_SLOT, (board, slot, value, expires_at))
    return True


def _order_row(row: tuple[Any, ...] | None) -> OrderRecord | None:
    return None if row is None else OrderRecord(*row)


def _load_state(row: tuple[str] | None) -> CounterState:
    return None if row is None else tuple(json.loads(row[0]))


class _TableLog:
    """The sliding log of one key in the log table (Rule 6): the core's ``Log``, read
    inside the caller's transaction, one index seek a lookup.

    As ``ratelimit.ListLog``, ``appended`` writes nothing: the state it returns holds the
    new entry as pending, and ``save`` (the store keeping that state) or reading it
    writes the entry and forgets the entries before ``keep_from``. A state the store
    drops (another limit refused the request) leaves nothing behind.
    """

    __slots__ = ("_db", "_keep_from", "_key", "_pending", "_window")

    def __init__(
        self,
        db: sqlite3.Connection,
        key: str,
        window: float,
        pending: LogEntry | None = None,
        keep_from: int = 0,
    ) -> None:
        self._db, self._key, self._window = db, key, window
        self._pending, self._keep_from = pending, keep_from

    def save(self) -> None:
        """Write the pending entry, expiring a window after its time, and forget the
        entries before ``keep_from``."""
        entry, self._pending = self._pending, None
        if entry is not None:
            time, total, cost = entry
            if cost:  # cost 0 (the admin API's look at a principal's limits) counts nothing
                self._db.execute(_LOG_INSERT, (self._key, total, time, cost, time + self._window))
            self._db.execute(_LOG_FORGET, (self._key, self._keep_from))

    def _first(self, query: str, *args: object) -> LogEntry | None:
        self.save()
        row = self._db.execute(query, (self._key, *args)).fetchone()
        return None if row is None else LogEntry(*row)

    def oldest_after(self, horizon: float) -> LogEntry | None:
        return self._first(_LOG_OLDEST_AFTER, horizon)

    def newest(self) -> LogEntry | None:
        return self._first(_LOG_NEWEST) if self._pending is None else self._pending

    def reaching(self, total: int) -> LogEntry:
        self.save()
        return LogEntry(*self._db.execute(_LOG_REACHING, (self._key, total)).fetchone())

    def appended(self, entry: LogEntry, oldest: LogEntry | None) -> _TableLog:
        self.save()
        keep_from = (entry if oldest is None else oldest).total
        return _TableLog(self._db, self._key, self._window, entry, keep_from)


def _copy_flat_logs(db: sqlite3.Connection) -> None:
    """Copy the sliding logs of schema version 4 and older (JSON ``[t1, c1, t2, c2, ...]``
    in the counters table) into the log table (Rule 8)."""
    entries = []
    for key, state, expires_at in db.execute(f"SELECT key, state, expires_at FROM {_COUNTERS}"):
        flat = json.loads(state)
        if not (
            isinstance(flat, list)
            and flat
            and len(flat) % 2 == 0
            and all(type(t) in (int, float) and type(c) is int for t, c in _pairs(flat))
        ):
            continue
        window = expires_at - flat[-2]  # such a state expired a window after its newest entry
        at, total = -math.inf, 0
        for t, cost in _pairs(flat):
            at = max(at, t)  # an old log's times could step back; a log's never do now
            if cost > 0:  # an entry of cost 0 counted nothing
                total += cost
                entries.append((key, total, at, cost, at + window))
    db.executemany(_LOG_INSERT, entries)


def _pairs(flat: list[Any]) -> Iterator[tuple[Any, Any]]:
    return zip(flat[::2], flat[1::2], strict=True)


def _encode(record: Record) -> tuple[object, ...]:
    response = record.response
    headers = body = status = None
    if response is not None:
        status = response.status
        headers = json.dumps(
            [[n.decode("latin-1"), v.decode("latin-1")] for n, v in response.headers]
        )
        body = response.body
    return (
        record.state.value,
        record.fingerprint,
        record.token,
        record.generation,
        record.lease_expires_at,
        record.expires_at,
        record.ttl,
        status,
        headers,
        body,
    )


def _decode(row: Row | None) -> Record | None:
    if row is None:
        return None
    state, fp, token, generation, lease_at, expires_at, ttl, status, headers, body = row
    response = None
    if status is not None:
        pairs = tuple(
            (n.encode("latin-1"), v.encode("latin-1")) for n, v in json.loads(headers or "[]")
        )
        response = StoredResponse(status, pairs, body)
    return Record(State(state), fp, token, generation, lease_at, expires_at, ttl, response)
