"""``PostgresStore``: idempotency records and rate-limit counters in PostgreSQL.

For records that must outlive any one machine and sit beside business data, and for
counters shared by every host of an API. Needs ``pip install 'surefoot[postgres]'``
(psycopg 3 and psycopg_pool).

Rule 1: the schema is created and upgraded only by ``migrate`` (``surefoot migrate
        --store URL``), never implicitly. Migrations are the ``NNNN_name.sql`` files of
        ``_migrations/postgres``, applied in number order, each in its own transaction
        under a transaction-level advisory lock (so processes migrating at once apply
        each file once), and recorded in ``surefoot_schema_migrations``. On first use
        the store checks that every migration it knows is applied, and none it does not
        know: otherwise ``ConfigurationError``, saying what to do.
Rule 2: every step is one call of one PL/pgSQL function (or one statement), which
        applies the state machine of
        ``surefoot.idempotency._core`` or the ``plan`` of ``surefoot.ratelimit._core``
        to the stored rows, operation for operation in IEEE doubles, so it decides
        exactly as the Python references do. An idempotency step locks its row
        (``FOR UPDATE``, or the insert's conflict); answers that change nothing (replay,
        in progress, mismatch) come from a plain read. Rate limits take one advisory
        lock per key, in ascending lock id order, so concurrent calls over overlapping
        keys never deadlock. Counters commit with ``synchronous_commit`` off (a database
        crash may forget the last fraction of a second of counts); records are durable.
        A sliding log keeps a row per admission (``surefoot_ratelimit_log``, migration
        0005), so that a decision costs a few index lookups, and an admission one insert
        and the deletion of the entries that left the window, however long the log.
Rule 3: time is the database's (``clock="server"``, the default): ``clock_timestamp()``,
        read once the rows are locked, so no host's clock skew can over-admit or take
        over a live lease. Absolute times handed back (``InProgress.lease_expires_at``,
        a ``Record``'s) are moved onto the caller's clock by ``now - db_now``. With
        ``clock="caller"`` the ``now`` argument is the time, as in the other stores.
        Calendar quotas take their period from the database's time zone data in server
        mode and from ``quota_period`` in caller mode.
Rule 4: every call is bounded by ``timeout`` (pool wait and statement); connections the
        store opens also carry it as ``statement_timeout``. A call carrying a response
        of more than 64 KiB (a finish or a resolve) has ``timeout`` plus, at 50 MiB/s,
        its bytes and those of the other large responses under way with it, on the
        client and as the ``statement_timeout`` of its transaction.
        The statement runs in a task of its own: a caller whose time ran out (or who
        was cancelled) leaves at once, with ``StoreUnavailable``, while the statement
        ends on the server by itself and its connection goes back to the pool idle,
        never mid-query. A reservation or a concurrency slot that such an abandoned
        statement still took is given back, and so is any that a failed batch (Rule 7)
        may have taken, under its own token.
Rule 5: psycopg and pool errors, and timeouts, become ``StoreUnavailable`` in one place
        (``_translate``); their text stays on ``__cause__`` for logs, never reaches a
        client.
Rule 6: expired rows are deleted in batches of ``purge_batch`` at most every
        ``purge_interval`` seconds, in the background after a call; rows other
        transactions hold are skipped (``SKIP LOCKED``), so no request waits on a purge.
        Sliding log entries go a second after they leave their window, from the keys
        whose advisory lock is free, taken for the batch (a decision on one of them
        meanwhile waits for the batch to commit).
Rule 7: group commit: the begins, the finishes and the acquires that arrive on one turn
        of the event loop (up to 64 of a kind, and up to 256 KiB of responses; a call
        carrying more than 64 KiB goes alone) go in one call, which decides them one
        after the other, each atomically, in arrival order, with one commit (a batch of
        several keys first takes their advisory locks, in order, as in Rule 2). A hot
        key costs one lock hand-over per batch instead of one per request, and a burst
        one commit. A batch that fails fails each of its calls, each with its own copy
        of the error; it may have committed (a lost reply), so the reservations and
        concurrency slots its begins and acquires may hold are released in the
        background under their own tokens, which fence off anyone else's. A store is
        used from one event loop.
Rule 8: per-principal quotas (``_core`` Rule 7, migration ``0003_record_owners``): a
        record row carries its key's owner, and triggers keep each owner's count of rows
        (and of unknown ones) in ``surefoot_owners``. Every step that writes records
        first takes an advisory lock per owner among its keys (with its keys' locks, in
        one ascending order; the purge skips owners whose lock is taken), so an owner's
        count is written by one transaction at a time and a begin reads it, atomically,
        in one row. At a quota the begin first deletes the owner's expired rows (the
        count includes them until they are deleted) and reads again; over it, it answers
        ``OverQuota`` and writes nothing. The price: one principal's steps are
        serialised by its lock (a batch takes it once for all of its calls).
Rule 9: the webhook ordering guard's records (``surefoot.webhooks``' ``OrderingStore``,
        migration ``0006_webhook_order``) are rows of ``surefoot_webhook_order``, one per
        key. ``order_claim`` and ``order_settle`` are one call each of a PL/pgSQL function
        that takes the key's advisory lock, reads the time (Rule 3), and re-states the
        rules of ``surefoot.webhooks._order`` (the differential tests hold it to the
        Python reference); ``order_get`` is one statement. A claim whose caller gave up
        is given back as a failed settle under its own token (which frees the row only
        if that claim took it). Expired rows go with the purge (Rule 6).
Rule 10: boards (``surefoot.metrics``' ``BoardStore``, migration ``0007_board``) are rows
        of ``surefoot_board``, one per (board, slot), bounded by ``surefoot._board``
        (checked before anything is sent). ``board_put`` and ``board_claim`` are one call
        each of ``surefoot_board_write``, which takes the board's advisory lock, reads the
        time (Rule 3: on the database's clock a slot lives ``expires_at - now`` of it),
        counts the board's live slots and writes, so concurrent claims of one slot set
        it once and no board passes its bound. ``board_read`` and ``board_delete`` are
        one statement each. A value of more than 64 KiB gets Rule 4's longer budget. A
        claim whose caller gave up may have been made: nothing is given back. Expired
        rows go with the purge (Rule 6).
Rule 11: ``SyncPostgresStore`` is this store for threads (WSGI workers, Django, Flask).
        Both stores are ``_Steps``: the same options, URL grammar, statements, migrations
        check, and for each step one plan (statement, parameters, reading of the rows);
        they differ only in how a plan runs. The sync store runs each begin, finish and
        acquire as a batch of one of Rule 7's functions, blocking, on a connection of its
        own from a ``psycopg_pool.ConnectionPool`` (so threads share a store safely), and
        never batches calls together. Rule 4 without the task: ``timeout`` bounds the
        wait for a connection and, as ``statement_timeout``, the statement on the server
        (a large response's longer budget included); a thread cannot leave a statement
        under way. A call that fails once its statement is sent gives back, before it
        raises, the reservation, concurrency slots or ordering claim it may have taken,
        under its own token, unless the server's error proves that nothing committed (a
        cancelled statement, a refusal); a lost reply may hide a commit. An acquire's
        slots go back in one statement (one connection, one ``timeout``), which takes
        their locks in the acquire functions' order. The purge (Rule 6) runs in a daemon
        thread, one batch at a time; ``close`` waits for it briefly. ``pool_min`` is
        ``pool_max`` by default (a burst of threads finds its connections open). In a
        forked child the pool the store made in the parent is forgotten, never used nor
        closed (its sockets are the parent's), and the child makes its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from importlib import resources
from typing import Any, Generic, Literal, NamedTuple, NoReturn, Protocol, Self, TypeVar
from urllib.parse import parse_qsl, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from surefoot._board import MAX_SLOTS, board_full, check_board, check_slot, check_slot_name
from surefoot._masking import masked_text, masked_url, split_url
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency import (
    Begin,
    Decision,
    InProgress,
    Mismatch,
    NotStored,
    Outcome,
    OverQuota,
    Record,
    Replay,
    Reserved,
    State,
    Step,
    StoredResponse,
    Unknown,
)
from surefoot.ratelimit import ALGORITHMS, Item, Limit, RateLimitDecision, quota_period
from surefoot.webhooks import Claim, OrderRecord, Verdict

__all__ = ["PostgresStore", "SyncPostgresStore", "migrate"]

_log = logging.getLogger("surefoot.storage")

Pool = AsyncConnectionPool[Any]
SyncPool = ConnectionPool[Any]
Row = tuple[Any, ...]

#: How long an abandoned statement may run on after its caller gave up, before the
#: driver cancels it (and closes the connection if the server does not answer).
_GRACE = 1.0
#: Budget of a purge batch (longer than a request's: it runs in the background).
_PURGE_TIMEOUT = 5.0
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {s}.surefoot_schema_migrations (version integer PRIMARY KEY, "
    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
)
#: Most calls sent together in one batch, and most bytes of responses (Rule 7).
_BATCH = 64
_BATCH_BYTES = 256 << 10
#: A call carrying a larger response goes alone, with a longer budget (Rules 4 and 7).
_ALONE = 64 << 10
#: Bytes per second of response that a call's budget allows for, beyond ``timeout``.
_THROUGHPUT = 50 << 20
_OPTIONS = ("schema", "clock", "timeout", "pool_min", "pool_max")


# -- migrations --------------------------------------------------------------------------


class Migration(NamedTuple):
    version: int
    name: str  # "0001_initial"
    sql: str


@functools.cache
def _migrations() -> tuple[Migration, ...]:
    """Every migration this surefoot ships, in order."""
    folder = resources.files("surefoot.storage") / "_migrations" / "postgres"
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise ConfigurationError(
                f"PostgreSQL migrations: {found[version].name} and {entry.name} share "
                f"number {version:04d}"
            )
        found[version] = Migration(version, entry.name[:-4], entry.read_text("utf-8"))
    return tuple(found[v] for v in sorted(found))


async def migrate(dsn: str, *, schema: str = "public", dry_run: bool = False) -> list[str]:
    """Apply the pending migrations to ``schema`` (created if missing); what was applied.

    Example:
        >>> await migrate("postgresql://app@db/app", schema="surefoot")
        ['0001_initial']
        >>> await migrate("postgresql://app@db/app", schema="surefoot")  # nothing left
        []

    Args:
        dsn: a libpq connection string, or a ``postgresql://`` URL: a store URL's own
            options (``?schema=``, ``timeout``...) are left out of the connection.
        schema: the schema that holds surefoot's tables.
        dry_run: only say which migrations would be applied.

    Each migration runs in its own transaction, under an advisory lock on the schema, so
    processes that migrate at once (every replica at deploy time) apply each one once.

    Raises:
        ConfigurationError: ``schema`` is not a valid name, or the database has a
            migration newer than this surefoot knows (upgrade surefoot).
        StoreUnavailable: the database could not be reached or refused a statement
            (its message is on ``__cause__``).
    """
    _check_schema(schema, "migrate(schema)")
    if dsn.startswith(("postgresql://", "postgres://")):
        dsn, _ = _split_url(dsn)
    ident = _ident(schema)
    lock = int.from_bytes(
        hashlib.blake2b(f"surefoot.migrate:{schema}".encode(), digest_size=8).digest(),
        "big",
        signed=True,
    )
    applied: list[str] = []
    with _translate():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            if dry_run:
                done = await _applied(conn, schema)
                _refuse_newer(done, schema)
                return [m.name for m in _migrations() if m.version not in done]
            for migration in _migrations():
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                    cursor = await conn.execute("SELECT to_regnamespace(%s) IS NULL", (ident,))
                    if (await cursor.fetchone()) == (True,):
                        await conn.execute(_render("CREATE SCHEMA {s}", schema))
                    await conn.execute(_render(_MIGRATIONS_TABLE, schema))
                    done = await _applied(conn, schema)
                    _refuse_newer(done, schema)
                    if migration.version in done:
                        continue  # another process applied it while we waited for the lock
                    await conn.execute(_render("SET LOCAL search_path TO {s}, pg_temp", schema))
                    await conn.execute(migration.sql)
                    await conn.execute(
                        _render(
                            "INSERT INTO {s}.surefoot_schema_migrations VALUES (%s, %s)", schema
                        ),
                        (migration.version, migration.name),
                    )
                applied.append(migration.name)
    return applied


async def _applied(conn: psycopg.AsyncConnection[Any], schema: str) -> set[int]:
    """The versions applied to ``schema``, none if it has no migrations table yet."""
    table = _render("{s}.surefoot_schema_migrations", schema)
    cursor = await conn.execute("SELECT to_regclass(%s) IS NULL", (table,))
    if (await cursor.fetchone()) == (True,):
        return set()
    cursor = await conn.execute(
        _render("SELECT version FROM {s}.surefoot_schema_migrations", schema)
    )
    return {version for (version,) in await cursor.fetchall()}


def _refuse_newer(done: set[int], schema: str) -> None:
    newest = _migrations()[-1].version
    if done and max(done) > newest:
        raise ConfigurationError(
            f"PostgreSQL schema {schema!r} is at migration {max(done):04d}, newer than this "
            f"surefoot knows ({newest:04d}): upgrade surefoot"
        )


#: Every statement the store sends; ``{s}`` is the schema, quoted. Responses go as binary
#: parameters (``%b``): in text, a 1 MiB ``bytea[]`` takes some 70 ms to encode and parse.
_QUERIES = {
    "begin": (
        "SELECT * FROM {s}.surefoot_begin_batch(%s::text[], %s::float8[], %s::text[], "
        "%s::text[], %s::float8[], %s::float8[], %s::boolean[], %s::integer[], %s::integer[])"
    ),
    "finish": (
        "SELECT * FROM {s}.surefoot_finish_batch(%s::text[], %s::float8[], %s::text[], "
        "%s::text[], %s::integer[], %b::bytea[], %s::integer[], %b::bytea[])"
    ),
    "resolve": "SELECT * FROM {s}.surefoot_resolve(%s, %s, %s, %b::bytea[], %b::bytea)",
    "forget": "SELECT * FROM {s}.surefoot_forget(%s, %s)",
    "purge": "SELECT * FROM {s}.surefoot_purge(%s, %s, %s)",
    "release": "SELECT * FROM {s}.surefoot_release(%s, %s, %s)",
    # Several keys' slots in one statement (Rule 11's give-back), their locks taken in
    # the order the acquire functions take them (by lock id): no deadlock with them.
    "release_all": (
        "SELECT count(*) FROM (SELECT u.k, u.t FROM unnest(%s::text[], %s::text[]) AS u(k, t) "
        "ORDER BY {s}.surefoot_lock_id(u.k)) AS o, LATERAL {s}.surefoot_release(o.k, o.t, %s) AS r"
    ),
    "acquire": (
        "SELECT * FROM {s}.surefoot_acquire_v4(%s::float8[], %s::integer[], %s::text[], "
        "%s::text[], %s::bigint[], %s::boolean[], %s::text[], %s::bigint[], %s::float8[], "
        "%s::bigint[], %s::float8[], %s::float8[], %s::text[], %s::text[], %s::float8[], "
        "%s::float8[])"
    ),
    "get": (
        "WITH c AS (SELECT coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"
        " AS now) SELECT r.state, r.fingerprint, r.token, r.generation, r.lease_expires_at, "
        "r.expires_at, r.ttl, r.status, r.headers, r.body, c.now "
        "FROM {s}.surefoot_idempotency AS r, c WHERE r.key = %(key)s AND r.expires_at > c.now"
    ),
    "records": (
        "WITH c AS (SELECT coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"
        " AS now) SELECT r.key, r.state, r.fingerprint, r.token, r.generation, "
        "r.lease_expires_at, r.expires_at, r.ttl, r.status, r.headers, r.body, c.now "
        "FROM {s}.surefoot_idempotency AS r, c WHERE r.expires_at > c.now "
        "AND (%(state)s::text IS NULL OR r.state = %(state)s::text) "
        "AND (%(live)s::boolean IS NULL OR (r.lease_expires_at > c.now) = %(live)s::boolean) "
        "ORDER BY r.seq LIMIT %(limit)s"
    ),
    "versions": "SELECT version FROM {s}.surefoot_schema_migrations",
    "order_claim": "SELECT * FROM {s}.surefoot_order_claim(%s, %s, %s, %s, %s, %s)",
    "order_settle": "SELECT * FROM {s}.surefoot_order_settle(%s, %s, %s, %s, %s, %s)",
    "order_get": (
        "WITH c AS (SELECT coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"
        " AS now) SELECT r.newest, r.holder, r.holding, r.until, r.expires, c.now "
        "FROM {s}.surefoot_webhook_order AS r, c WHERE r.key = %(key)s AND r.expires > c.now"
    ),
    "board_write": (
        "SELECT * FROM {s}.surefoot_board_write(%s, %s, %b, %s::float8, %s::float8, %s::float8, "
        "%s, %s)"
    ),
    "board_read": (
        "WITH c AS (SELECT coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"
        " AS now) SELECT b.slot, b.value FROM {s}.surefoot_board AS b, c "
        "WHERE b.board = %(board)s AND b.expires_at > c.now"
    ),
    "board_delete": (
        "WITH c AS (SELECT coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)"
        " AS now) DELETE FROM {s}.surefoot_board AS b USING c "
        "WHERE b.board = %(board)s AND b.slot = %(slot)s RETURNING b.expires_at > c.now"
    ),
}


def _render(template: str, schema: str) -> str:
    return sql.SQL(template).format(s=sql.Identifier(schema)).as_string(None)


#: The ``statement_timeout`` of the connections a store opens, and of one transaction
#: that needs longer (Rule 4).
_SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"
_SET_LOCAL_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"


def _milliseconds(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds * 1000))}ms"


class _Entry(Protocol):
    """A begin, finish or acquire as a batch's parameters read it: a ``_Pending`` of
    ``PostgresStore`` or a ``_Call`` of ``SyncPostgresStore``."""

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def now(self) -> float: ...


class _Pending(NamedTuple):
    """A begin, finish or acquire waiting for its batch (Rule 7)."""

    args: tuple[Any, ...]  # what the batch needs from the call
    now: float
    future: asyncio.Future[Any]
    deadline: float
    size: int  # bytes of response the call carries


class _Call(NamedTuple):
    """A begin, finish or acquire of ``SyncPostgresStore``: a batch of one (Rule 11)."""

    args: tuple[Any, ...]
    now: float


#: Builds a batch's parameters (given the clock mode); reads one result per call; undoes
#: what a call did if its caller gave up (or, given None, what it may have done if its
#: batch failed).
_Params = Callable[[Sequence[_Entry], str], list[Any]]
_Results = Callable[[Sequence[_Entry], list[Row]], Sequence[Any]]
_Undo = Callable[[_Pending, Any], Awaitable[None] | None]

_T = TypeVar("_T")


class _Plan(NamedTuple, Generic[_T]):
    """One step as one statement (Rule 2), whichever store runs it: the statement, its
    parameters and how its rows read; the bytes of response it carries (Rule 4's longer
    budget); a budget of its own (a purge's); whether it writes (Rule 6)."""

    query: str
    params: Sequence[Any] | dict[str, Any]
    read: Callable[[list[Row]], _T]
    size: int = 0
    budget: float | None = None
    wrote: bool = True


# -- what both stores share --------------------------------------------------------------


class _Steps:
    """What ``PostgresStore`` and ``SyncPostgresStore`` share: their options, checked
    once; their statements; the plan of every step and the reading of its rows (Rule 2);
    the migrations check (Rule 1); the budgets of large responses (Rule 4). The two
    differ only in how a plan is run."""

    rate_limit_algorithms = ALGORITHMS

    def __init__(
        self,
        dsn_or_pool: object,
        pool_class: type[Any],
        *,
        schema: str,
        clock: Literal["server", "caller"],
        timeout: float,
        pool_min: int,
        pool_max: int,
        purge_interval: float,
        purge_batch: int,
    ) -> None:
        name = type(self).__name__
        _check_schema(schema, f"{name}.schema")
        if clock not in ("server", "caller"):
            _bad(f"{name}.clock", "'server' or 'caller'", clock)
        if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
            _bad(f"{name}.timeout", "a positive number of seconds", timeout)
        if not (isinstance(pool_min, int) and pool_min >= 0):
            _bad(f"{name}.pool_min", "a whole number >= 0", pool_min)
        if not (isinstance(pool_max, int) and pool_max >= max(1, pool_min)):
            _bad(f"{name}.pool_max", f"a whole number >= max(1, pool_min={pool_min})", pool_max)
        if not purge_interval > 0:
            _bad(f"{name}.purge_interval", "a positive number of seconds", purge_interval)
        if not (isinstance(purge_batch, int) and purge_batch >= 1):
            _bad(f"{name}.purge_batch", "a whole number >= 1", purge_batch)
        if isinstance(dsn_or_pool, str):
            try:
                conninfo_to_dict(dsn_or_pool)
            except psycopg.Error as exc:
                raise ConfigurationError(
                    f"{name}: invalid connection string: "
                    + masked_text(str(exc).strip(), dsn_or_pool)
                ) from None
            self._dsn: str | None = dsn_or_pool
        elif isinstance(dsn_or_pool, pool_class):
            self._dsn = None
        else:
            pool = pool_class.__name__
            article = "an" if pool[0] in "AEIOU" else "a"
            _bad(name, f"a connection string or {article} {pool}", dsn_or_pool)
        self.schema = schema
        self.clock = clock
        self.timeout = float(timeout)
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.purge_interval = float(purge_interval)
        self.purge_batch = purge_batch
        self._next_purge_at = 0.0
        # Bytes of large responses in calls under way, and ever (Rule 4); threads of a
        # SyncPostgresStore update them together.
        self._carried = self._entered = 0
        self._carry_lock = threading.Lock()
        self._sql = {name: _render(template, schema) for name, template in _QUERIES.items()}

    @classmethod
    def from_url(cls, url: str) -> Self:
        """A store from ``postgresql://user:password@host:port/db?schema=surefoot&...``.

        Options: ``schema``, ``clock`` (``server`` or ``caller``), ``timeout`` (seconds),
        ``pool_min``, ``pool_max``; any other query parameter goes to libpq
        (``sslmode=require``, ``connect_timeout=5``...).

        Raises:
            ConfigurationError: naming the option and what it expects.
        """
        dsn, options = _split_url(url)
        kwargs: dict[str, Any] = {}
        if "schema" in options:
            kwargs["schema"] = options["schema"]
        if "clock" in options:
            if options["clock"] not in ("server", "caller"):
                _bad("store URL: clock", "server or caller", options["clock"])
            kwargs["clock"] = options["clock"]
        if "timeout" in options:
            try:
                kwargs["timeout"] = float(options["timeout"])
            except ValueError:
                _bad("store URL: timeout", "a positive number of seconds", options["timeout"])
            if not 0 < kwargs["timeout"] < math.inf:
                _bad("store URL: timeout", "a positive number of seconds", options["timeout"])
        for name in ("pool_min", "pool_max"):
            if name in options:
                try:
                    kwargs[name] = int(options[name])
                except ValueError:
                    _bad(f"store URL: {name}", "a whole number", options[name])
        return cls(dsn, **kwargs)

    def _verify(self, rows: list[Row]) -> None:
        """Rule 1: every known migration applied, none unknown (``rows``: the versions
        applied, none if the table is missing)."""
        done = {version for (version,) in rows}
        _refuse_newer(done, self.schema)
        missing = [m.name for m in _migrations() if m.version not in done]
        if missing:
            raise ConfigurationError(
                f"{type(self).__name__}: schema {self.schema!r} lacks migrations {missing}: "
                f"run `surefoot migrate --store URL` (with --schema {self.schema} or the URL's "
                "schema option) before using the store"
            )

    @contextlib.contextmanager
    def _carrying(self, size: int) -> Iterator[Callable[[], float] | None]:
        """Rule 4: the budget of a call carrying ``size`` bytes of response, while it is
        under way: ``timeout``, plus at ``_THROUGHPUT`` its bytes and those of every
        other large response under way at the same time (they share the link and the
        server), so it grows while later ones arrive. None: ``timeout``, which the pool's
        connections already carry."""
        if size <= _ALONE:
            yield None
            return
        with self._carry_lock:
            ahead, entered = self._carried, self._entered
            self._carried += size
            self._entered += size

        def budget() -> float:
            return self.timeout + (ahead + self._entered - entered) / _THROUGHPUT

        try:
            yield budget
        finally:
            with self._carry_lock:
                self._carried -= size

    def _now(self, now: float) -> float | None:
        return float(now) if self.clock == "caller" else None

    def _purge_due(self, now: float) -> bool:
        """Rule 6: whether a purge batch is due (then the next is scheduled)."""
        if now < self._next_purge_at:
            return False
        self._next_purge_at = now + self.purge_interval
        return True

    def _purged(self, now: float, row: Row) -> None:
        """After a purge batch: a full one calls for the next a second later."""
        records, counters = row
        if max(records, counters) >= self.purge_batch:
            self._next_purge_at = min(self._next_purge_at, now + 1.0)

    # -- plans: one per step, whichever store runs it ------------------------------------

    def _alone(
        self, kind: str, call: _Call, read: Callable[[Any], _T], *, size: int = 0
    ) -> _Plan[_T]:
        """A begin, finish or acquire as a batch of one of Rule 7's functions."""
        params, results = _KINDS[kind]
        calls = [call]

        def read_rows(rows: list[Row]) -> _T:
            [result] = results(calls, rows)
            return read(result)

        return _Plan(self._sql[kind], params(calls, self.clock), read_rows, size=size)

    def _resolve_plan(self, key: str, response: StoredResponse, now: float) -> _Plan[bool]:
        params = (key, self._now(now), *_response(response))
        return _Plan(self._sql["resolve"], params, _flag, size=_size(response))

    def _forget_plan(self, key: str, now: float) -> _Plan[bool]:
        return _Plan(self._sql["forget"], (key, self._now(now)), _flag)

    def _get_plan(self, key: str, now: float) -> _Plan[Record | None]:
        params = {"key": key, "now": self._now(now)}
        return _Plan(
            self._sql["get"], params, functools.partial(_first_record, now=now), wrote=False
        )

    def _records_plan(
        self, now: float, state: State | None, limit: int
    ) -> _Plan[list[tuple[str, Record]]] | None:
        """None: no stored row is in ``state`` (``ABSENT``)."""
        if state is State.ABSENT:
            return None
        stored, live = {
            None: (None, None),
            State.IN_FLIGHT: ("in_flight", True),
            State.LEASE_EXPIRED: ("in_flight", False),
            State.COMPLETED: ("completed", None),
            State.UNKNOWN: ("unknown", None),
        }[state]
        params = {"now": self._now(now), "state": stored, "live": live, "limit": limit}
        read = functools.partial(_keyed_records, now=now)
        return _Plan(self._sql["records"], params, read, wrote=False)

    def _purge_plan(self, now: float, records: int, counters: int) -> _Plan[Row]:
        params = (self._now(now), records, counters)
        return _Plan(self._sql["purge"], params, _only, budget=_PURGE_TIMEOUT, wrote=False)

    def _release_plan(self, key: str, token: str, now: float) -> _Plan[None]:
        return _Plan(self._sql["release"], (key, token, self._now(now)), _nothing)

    def _order_claim_plan(
        self, key: str, version: float, token: str, now: float, lease: float, retention: float
    ) -> _Plan[Claim]:
        params = (key, self._now(now), token, float(version), float(lease), float(retention))
        return _Plan(self._sql["order_claim"], params, functools.partial(_claim, now=now))

    def _order_settle_plan(
        self, key: str, token: str, version: float, ok: bool, now: float, retention: float
    ) -> _Plan[None]:
        params = (key, self._now(now), token, float(version), ok, float(retention))
        return _Plan(self._sql["order_settle"], params, _nothing)

    def _order_get_plan(self, key: str, now: float) -> _Plan[OrderRecord | None]:
        params = {"key": key, "now": self._now(now)}
        read = functools.partial(_order_record, now=now)
        return _Plan(self._sql["order_get"], params, read, wrote=False)

    def _board_write_plan(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float, *, claim: bool
    ) -> _Plan[bool]:
        check_slot(board, slot, value, expires_at, now)
        params = (board, slot, value, self._now(now), float(now), float(expires_at), claim)
        read = functools.partial(_board_written, board=board)
        return _Plan(self._sql["board_write"], (*params, MAX_SLOTS), read, size=len(value))

    def _board_read_plan(self, board: str, now: float) -> _Plan[dict[str, bytes]]:
        check_board(board)
        params = {"board": board, "now": self._now(now)}
        return _Plan(self._sql["board_read"], params, _board_slots, wrote=False)

    def _board_delete_plan(self, board: str, slot: str, now: float) -> _Plan[bool]:
        check_slot_name(board, slot)
        params = {"board": board, "slot": slot, "now": self._now(now)}
        return _Plan(self._sql["board_delete"], params, _deleted)

    def __repr__(self) -> str:
        where = masked_url(self._dsn) if self._dsn is not None else getattr(self, "_pool", None)
        return f"{type(self).__name__}({where!r}, schema={self.schema!r}, clock={self.clock!r})"


# -- the store ---------------------------------------------------------------------------


class PostgresStore(_Steps):
    """Idempotency and rate-limit store in PostgreSQL (11 or later).

    Example:
        >>> await migrate("postgresql://app@db/app", schema="surefoot")  # once, at deploy
        >>> store = PostgresStore("postgresql://app@db/app", schema="surefoot")
        >>> store = store_from_url("postgresql://app@db/app?schema=surefoot&timeout=0.1")

    Args:
        dsn_or_pool: a libpq connection string or URL, or an ``AsyncConnectionPool`` to
            share (the store then neither configures nor closes it).
        schema: where ``migrate`` put surefoot's tables.
        clock: ``"server"``: decide on the database's clock; ``"caller"``: on the ``now``
            each call is given.
        timeout: seconds a call may take, waiting for a connection included.
        pool_min: connections kept open (from the first call on).
        pool_max: connections at most.
        purge_interval: seconds between two batches of expired-row deletion.
        purge_batch: rows deleted per batch.

    Warning:
        Nothing connects until the first call (or ``open``), which also checks that the
        schema is migrated. A shared pool should give its connections a
        ``statement_timeout`` and autocommit; the store commits each step itself if not.
    """

    def __init__(
        self,
        dsn_or_pool: str | Pool,
        *,
        schema: str = "public",
        clock: Literal["server", "caller"] = "server",
        timeout: float = 0.05,
        pool_min: int = 1,
        pool_max: int = 10,
        purge_interval: float = 60.0,
        purge_batch: int = 500,
    ) -> None:
        super().__init__(
            dsn_or_pool,
            AsyncConnectionPool,
            schema=schema,
            clock=clock,
            timeout=timeout,
            pool_min=pool_min,
            pool_max=pool_max,
            purge_interval=purge_interval,
            purge_batch=purge_batch,
        )
        self._pool: Pool | None = None if isinstance(dsn_or_pool, str) else dsn_or_pool
        self._opened = False
        self._checked = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._checking: asyncio.Task[None] | None = None
        self._queues: dict[str, list[_Pending]] = {"begin": [], "finish": [], "acquire": []}

    # -- connections ---------------------------------------------------------------------

    def _get_pool(self) -> Pool:
        if self._pool is None:
            assert self._dsn is not None
            self._pool = AsyncConnectionPool(
                self._dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                open=False,
                kwargs={"autocommit": True},
                configure=self._configure,
                name="surefoot",
            )
        return self._pool

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(_SET_TIMEOUT, (_milliseconds(self.timeout),))

    async def open(self, *, wait: float = 5.0) -> None:
        """Connect and check the schema now, rather than on the first call.

        Waits up to ``wait`` seconds for ``pool_min`` connections: for application
        start-up and command-line tools, where the first call's short ``timeout`` would
        be spent connecting.

        Raises:
            ConfigurationError: the schema is not migrated (or is newer than this surefoot).
            StoreUnavailable: the database could not be reached in time, or refused the
                connection (its ``__cause__`` says why).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        with _translate():
            if self._dsn is not None and self._pool is None:
                # One connection of our own first: a pool retries a refused login in the
                # background and then says only that it timed out; this one fails at once
                # with the server's reason (FATAL:  role "app" does not exist).
                async with asyncio.timeout(wait):
                    conn = await psycopg.AsyncConnection.connect(self._dsn)
                await conn.close()
            pool = self._get_pool()
            await pool.open(wait=self._dsn is not None, timeout=wait)
            self._opened = True
            await self._check(pool, deadline)

    async def _ready(self, deadline: float) -> Pool:
        pool = self._get_pool()
        if not self._opened:
            await pool.open(wait=False)
            self._opened = True
        if not self._checked:
            # One check for all the calls that arrive before it is done.
            loop = asyncio.get_running_loop()
            checking = self._checking
            if checking is None or checking.done():
                checking = self._checking = loop.create_task(self._check(pool, deadline))
                checking.add_done_callback(_retrieve)
            await asyncio.wait_for(asyncio.shield(checking), max(deadline - loop.time(), 0))
        return pool

    async def _check(self, pool: Pool, deadline: float) -> None:
        """Rule 1: every known migration applied, none unknown."""
        try:
            rows = await self._roundtrip(pool, self._sql["versions"], (), deadline)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            rows = []
        self._verify(rows)
        self._checked = True

    async def _run(self, plan: _Plan[_T], now: float) -> _T:
        """One step's statement, within its budget; its rows read."""
        with self._carrying(plan.size) as budget:
            seconds = plan.budget if budget is None else budget()
            rows = await self._query(plan.query, plan.params, budget=seconds)
        if plan.wrote:
            self._wrote(now)
        return plan.read(rows)

    async def _query(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any],
        *,
        budget: float | None = None,
    ) -> list[Row]:
        """Run one statement within the call's budget (Rules 4 and 5)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if budget is None else budget)
        with _translate():
            pool = await self._ready(deadline)
            return await self._roundtrip(pool, query, params, deadline, budget)

    async def _roundtrip(
        self,
        pool: Pool,
        query: str,
        params: Sequence[Any] | dict[str, Any],
        deadline: float,
        budget: float | None = None,
    ) -> list[Row]:
        loop = asyncio.get_running_loop()
        conn = await pool.getconn(timeout=max(deadline - loop.time(), 0.001))
        task = loop.create_task(self._execute(pool, conn, query, params, budget))
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(deadline - loop.time(), 0))
        except BaseException:
            # The caller gave up; the statement ends by itself on the server.
            self._track(task)
            task.add_done_callback(_retrieve)
            raise

    async def _execute(
        self,
        pool: Pool,
        conn: psycopg.AsyncConnection[Any],
        query: str,
        params: Sequence[Any] | dict[str, Any],
        budget: float | None,
    ) -> list[Row]:
        try:
            async with asyncio.timeout((budget or self.timeout) + _GRACE):
                if budget is not None:  # a longer statement than the pool's timeout allows
                    async with conn.transaction():
                        await conn.execute(_SET_LOCAL_TIMEOUT, (_milliseconds(budget),))
                        cursor = await conn.execute(query, params)
                        return await cursor.fetchall()
                cursor = await conn.execute(query, params)
                rows = await cursor.fetchall()
                if not conn.autocommit:
                    await conn.commit()
                return rows
        finally:
            await pool.putconn(conn)

    def _track(self, task: asyncio.Task[Any]) -> None:
        """Keep a background task (aclose waits for it)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _batched(self, kind: str, args: tuple[Any, ...], now: float, *, size: int = 0) -> Any:
        """Rule 7: queue a call for the next batch of its kind; its result, in time."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        with self._carrying(size) as budget, _translate():
            deadline = start + (self.timeout if budget is None else budget())
            await self._ready(deadline)
            future = loop.create_future()
            queue = self._queues[kind]
            queue.append(_Pending(args, now, future, deadline, size))
            if len(queue) == 1:
                loop.call_soon(self._send, kind)
            if budget is None:
                return await asyncio.wait_for(future, max(deadline - loop.time(), 0))
            try:
                while not future.done():
                    remaining = start + budget() - loop.time()
                    if remaining <= 0:
                        raise TimeoutError
                    await asyncio.wait((future,), timeout=remaining)
                return future.result()
            finally:
                future.cancel()  # given up: its batch undoes what it did (Rule 4)

    def _send(self, kind: str) -> None:
        loop = asyncio.get_running_loop()
        queue = [pending for pending in self._queues[kind] if not pending.future.done()]
        taken = _batch_length(queue)
        batch, self._queues[kind] = queue[:taken], queue[taken:]
        if self._queues[kind]:
            loop.call_soon(self._send, kind)
        if batch:
            self._track(loop.create_task(self._run_batch(kind, batch)))

    async def _run_batch(self, kind: str, batch: list[_Pending]) -> None:
        """One call for the batch; each caller gets its answer, or its abandoned call is
        undone (Rule 4)."""
        loop = asyncio.get_running_loop()
        params, results = _KINDS[kind]
        undo: _Undo | None = {"begin": self._begin_undo, "acquire": self._acquire_undo}.get(kind)
        sent = False
        try:
            pool = self._get_pool()
            deadline = max(pending.deadline for pending in batch)
            size = sum(pending.size for pending in batch)
            budget = None
            if size > _ALONE:  # Rule 4: time for every large response now under way
                budget = self.timeout + max(size, self._carried) / _THROUGHPUT
                deadline = max(deadline, loop.time() + budget)
            conn = await pool.getconn(timeout=max(deadline - loop.time(), 0.001))
            query = self._sql[kind]
            sent = True
            rows = await self._execute(pool, conn, query, params(batch, self.clock), budget)
        except BaseException as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(_own(exc))
            if not isinstance(exc, Exception):
                raise
            if sent and undo is not None:
                # It may have committed (its reply lost): give back what it may have taken.
                compensations = [c for p in batch if (c := undo(p, None)) is not None]
                if compensations:
                    self._spawn(_together(compensations))
            return
        for pending, result in zip(batch, results(batch, rows), strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
            elif undo is not None:
                compensation = undo(pending, result)
                if compensation is not None:
                    self._spawn(compensation)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                _log.warning("surefoot PostgresStore background step failed", exc_info=True)

        self._track(asyncio.get_running_loop().create_task(run()))

    def _wrote(self, now: float) -> None:
        """Rule 6: schedule a purge batch when one is due."""
        if self._purge_due(now):
            self._spawn(self._purge_batch(now))

    async def _purge_batch(self, now: float) -> None:
        batch = self.purge_batch
        self._purged(now, await self._run(self._purge_plan(now, batch, batch), now))

    # -- idempotency ---------------------------------------------------------------------

    async def begin(self, key: str, request: Begin, now: float) -> Decision:
        row = await self._batched("begin", (key, request), now)
        self._wrote(now)
        return _decision(row, request, now)

    def _begin_undo(self, pending: _Pending, row: Row | None) -> Awaitable[None] | None:
        """A reservation nobody will execute (None: that may have been made): release it,
        so that a retry can run."""
        if not _may_hold_reservation(row):
            return None
        key, request = pending.args
        return self._release_reservation(key, request.token, pending.now)

    async def _release_reservation(self, key: str, token: str, now: float) -> None:
        await self.finish(key, token, Outcome(Step.RELEASE), now)

    async def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        size = _size(outcome.response)
        accepted = await self._batched("finish", (key, token, outcome), now, size=size)
        result = _accepted(accepted)
        self._wrote(now)
        return result

    async def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        return await self._run(self._resolve_plan(key, response, now), now)

    async def forget(self, key: str, now: float) -> bool:
        return await self._run(self._forget_plan(key, now), now)

    async def get(self, key: str, now: float) -> Record | None:
        return await self._run(self._get_plan(key, now), now)

    async def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        plan = self._records_plan(now, state, limit)
        return [] if plan is None else await self._run(plan, now)

    async def purge(self, now: float, *, limit: int = 500) -> int:
        records, _ = await self._run(self._purge_plan(now, limit, 0), now)
        return int(records)

    # -- ordering records (Rule 9) ---------------------------------------------------------

    async def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        plan = self._order_claim_plan(key, version, token, now, lease, retention)
        try:
            return await self._run(plan, now)
        except StoreUnavailable:
            # The claim may have been made (its reply lost, or its caller gone): free it.
            self._spawn(
                self.order_settle(
                    key, token=token, version=version, ok=False, now=now, retention=retention
                )
            )
            raise

    async def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        await self._run(self._order_settle_plan(key, token, version, ok, now, retention), now)

    async def order_get(self, key: str, now: float) -> OrderRecord | None:
        return await self._run(self._order_get_plan(key, now), now)

    # -- boards (Rule 10) ----------------------------------------------------------------

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        plan = self._board_write_plan(board, slot, value, expires_at, now, claim=False)
        await self._run(plan, now)

    async def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        plan = self._board_write_plan(board, slot, value, expires_at, now, claim=True)
        return await self._run(plan, now)

    async def board_read(self, board: str, now: float) -> dict[str, bytes]:
        return await self._run(self._board_read_plan(board, now), now)

    async def board_delete(self, board: str, slot: str, now: float) -> bool:
        return await self._run(self._board_delete_plan(board, slot, now), now)

    # -- rate limits ---------------------------------------------------------------------

    async def acquire(
        self, items: Sequence[Item], now: float
    ) -> tuple[bool, list[RateLimitDecision]]:
        if not items:
            return True, []
        literals = [_item_literals(item, now, self.clock) for item in items]
        result: tuple[bool, list[RateLimitDecision]] = await self._batched(
            "acquire", (items, literals), now
        )
        self._wrote(now)
        return result

    def _acquire_undo(
        self, pending: _Pending, result: tuple[bool, list[RateLimitDecision]] | None
    ) -> Awaitable[None] | None:
        """Concurrency slots nobody will use (None: that may have been taken): give them
        back."""
        held = _held_slots(pending.args[0], result)
        return self._release_all(held, pending.now) if held else None

    async def _release_all(self, items: list[Item], now: float) -> None:
        for item in items:
            await self.release(item.key, item.token, now)

    async def release(self, key: str, token: str, now: float) -> None:
        await self._run(self._release_plan(key, token, now), now)

    async def aclose(self) -> None:
        """Let background work finish (briefly), then close the pool if the store made it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout + _GRACE
        await asyncio.sleep(0)  # batches queued on this turn are sent
        while self._tasks and loop.time() < deadline:
            # Undos and purges may start more work as they finish.
            await asyncio.wait(set(self._tasks), timeout=deadline - loop.time())
        for task in self._tasks:
            task.cancel()
        if self._dsn is not None and self._pool is not None:
            await self._pool.close()
            self._pool = None
        self._opened = self._checked = False
        self._checking = None


# -- the synchronous store (Rule 11) -----------------------------------------------------


class SyncPostgresStore(_Steps):
    """``PostgresStore`` for threads: WSGI workers, Django, Flask.

    The same options, URL, schema, statements and answers as ``PostgresStore``; each
    method blocks, and ``close`` replaces ``aclose``. Safe to share between threads:
    every call takes a connection of its own from the pool.

    Example:
        >>> asyncio.run(migrate("postgresql://app@db/app", schema="surefoot"))  # at deploy
        >>> store = SyncPostgresStore("postgresql://app@db/app", schema="surefoot")
        >>> store = SyncPostgresStore.from_url("postgresql://app@db/app?schema=surefoot")

    Args:
        dsn_or_pool: a libpq connection string or URL, or a ``psycopg_pool.ConnectionPool``
            to share (the store then neither configures nor closes it).
        schema: where ``migrate`` put surefoot's tables.
        clock: ``"server"``: decide on the database's clock; ``"caller"``: on the ``now``
            each call is given.
        timeout: seconds a call may take waiting for a connection, and its statement on
            the server (``statement_timeout``).
        pool_min: connections kept open (from ``open`` or the first call on); by
            default ``pool_max``: a burst of threads that finds fewer open waits for
            new ones, which a short ``timeout`` does not allow.
        pool_max: connections at most: at least the threads that call at once.
        purge_interval: seconds between two batches of expired-row deletion.
        purge_batch: rows deleted per batch.

    After a fork (gunicorn's workers, ``preload_app`` or not), the child leaves the pool
    the store made in its parent alone (its connections are the parent's) and opens its
    own at its first call. A pool you pass in is yours to open in each process.

    Warning:
        A thread cannot leave a statement under way: ``timeout`` bounds the wait for a
        connection and the statement's time on the server, not a network that goes
        silent; for that, give libpq ``keepalives_idle`` or ``tcp_user_timeout`` in the
        URL. Nothing connects until the first call (or ``open``), which also checks that
        the schema is migrated.
    """

    def __init__(
        self,
        dsn_or_pool: str | SyncPool,
        *,
        schema: str = "public",
        clock: Literal["server", "caller"] = "server",
        timeout: float = 0.05,
        pool_min: int | None = None,
        pool_max: int = 10,
        purge_interval: float = 60.0,
        purge_batch: int = 500,
    ) -> None:
        if pool_min is None:
            pool_min = pool_max if isinstance(pool_max, int) and pool_max >= 1 else 1
        super().__init__(
            dsn_or_pool,
            ConnectionPool,
            schema=schema,
            clock=clock,
            timeout=timeout,
            pool_min=pool_min,
            pool_max=pool_max,
            purge_interval=purge_interval,
            purge_batch=purge_batch,
        )
        self._pool: SyncPool | None = None if isinstance(dsn_or_pool, str) else dsn_or_pool
        self._opened = False
        self._checked = False
        self._lock = threading.Lock()  # the pool's creation and the schema check
        self._purge_lock = threading.Lock()
        self._purging: threading.Thread | None = None
        # Pools made in a parent process, kept (never used, closed or collected: that
        # would end the parent's sessions) in a forked child.
        self._inherited: list[SyncPool] = []
        if self._dsn is not None:
            _FORKABLE.add(self)  # a pool passed in is the caller's (Rule 11)

    def _forked(self) -> None:
        """In a forked child: forget the parent's pool (its sockets are the parent's),
        and the locks and purge thread of the parent's threads."""
        if self._pool is not None:
            self._inherited.append(self._pool)
        self._pool = None
        self._opened = self._checked = False
        self._lock = threading.Lock()
        self._purge_lock = threading.Lock()
        self._purging = None

    # -- connections ---------------------------------------------------------------------

    def _get_pool(self) -> SyncPool:
        if self._pool is None:
            assert self._dsn is not None
            self._pool = ConnectionPool(
                self._dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                open=False,
                kwargs={"autocommit": True},
                configure=self._configure,
                name="surefoot",
            )
        return self._pool

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(_SET_TIMEOUT, (_milliseconds(self.timeout),))

    def open(self, *, wait: float = 5.0) -> None:
        """Connect and check the schema now, rather than on the first call.

        Waits up to ``wait`` seconds for ``pool_min`` connections: for application
        start-up and command-line tools, where the first call's short ``timeout`` would
        be spent connecting.

        Raises:
            ConfigurationError: the schema is not migrated (or is newer than this surefoot).
            StoreUnavailable: the database could not be reached in time, or refused the
                connection (its ``__cause__`` says why).
        """
        deadline = time.monotonic() + wait
        with _translate():
            if self._dsn is not None and self._pool is None:
                # One connection of our own first, for the server's reason (as PostgresStore).
                limit: dict[str, Any] = {}
                if "connect_timeout" not in conninfo_to_dict(self._dsn):
                    limit["connect_timeout"] = max(2, math.ceil(wait))  # libpq's least is 2
                psycopg.Connection.connect(self._dsn, **limit).close()
            with self._lock:
                pool = self._get_pool()
                pool.open(wait=self._dsn is not None, timeout=wait)
                self._opened = True
                self._check(pool, deadline)

    def _ready(self, deadline: float) -> SyncPool:
        pool = self._pool
        if pool is not None and self._checked:
            return pool
        # One check at a time: the calls that arrive meanwhile wait for it, in their time.
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            raise TimeoutError("the schema check under way took the call's time")
        try:
            pool = self._get_pool()
            if not self._opened:
                pool.open(wait=False)
                self._opened = True
            if not self._checked:
                self._check(pool, deadline)
            return pool
        finally:
            self._lock.release()

    def _check(self, pool: SyncPool, deadline: float) -> None:
        """Rule 1: every known migration applied, none unknown."""
        try:
            conn = pool.getconn(timeout=max(deadline - time.monotonic(), 0.001))
            rows = self._execute(pool, conn, self._sql["versions"], (), None)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            rows = []
        self._verify(rows)
        self._checked = True

    def _run(self, plan: _Plan[_T], now: float, *, undo: Callable[[], None] | None = None) -> _T:
        """One step's statement, within its budget; its rows read. ``undo`` gives back
        what the step may have taken if it failed after its statement was sent, unless
        the error proves that nothing was committed."""
        with self._carrying(plan.size) as budget:
            seconds = plan.budget if budget is None else budget()
            rows = self._query(plan.query, plan.params, budget=seconds, undo=undo)
        if plan.wrote:
            self._wrote(now)
        return plan.read(rows)

    def _query(
        self,
        query: str,
        params: Sequence[Any] | dict[str, Any],
        *,
        budget: float | None = None,
        undo: Callable[[], None] | None = None,
    ) -> list[Row]:
        """Run one statement within the call's budget (Rules 4, 5 and 11)."""
        deadline = time.monotonic() + (self.timeout if budget is None else budget)
        sent = False
        try:
            with _translate():
                pool = self._ready(deadline)
                conn = pool.getconn(timeout=max(deadline - time.monotonic(), 0.001))
                sent = True
                return self._execute(pool, conn, query, params, budget)
        except StoreUnavailable as exc:
            if sent and undo is not None and _may_have_committed(exc.__cause__):
                try:
                    undo()
                except Exception:
                    _log.warning("surefoot SyncPostgresStore could not give back", exc_info=True)
            raise

    def _execute(
        self,
        pool: SyncPool,
        conn: psycopg.Connection[Any],
        query: str,
        params: Sequence[Any] | dict[str, Any],
        budget: float | None,
    ) -> list[Row]:
        try:
            if budget is not None:  # a longer statement than the pool's timeout allows
                with conn.transaction():
                    conn.execute(_SET_LOCAL_TIMEOUT, (_milliseconds(budget),))
                    return conn.execute(query, params).fetchall()
            rows = conn.execute(query, params).fetchall()
            if not conn.autocommit:
                conn.commit()
            return rows
        finally:
            pool.putconn(conn)

    def _wrote(self, now: float) -> None:
        """Rule 6: start a purge batch in a thread of its own when one is due (and none
        is under way)."""
        if now < self._next_purge_at:
            return
        with self._purge_lock:
            running = self._purging is not None and self._purging.is_alive()
            if not self._purge_due(now) or running:
                return
            thread = self._purging = threading.Thread(
                target=self._purge_batch, args=(now,), name="surefoot-purge", daemon=True
            )
        thread.start()

    def _purge_batch(self, now: float) -> None:
        batch = self.purge_batch
        try:
            row = self._run(self._purge_plan(now, batch, batch), now)
        except Exception:
            _log.warning("surefoot SyncPostgresStore background purge failed", exc_info=True)
            return
        with self._purge_lock:
            self._purged(now, row)

    # -- idempotency ---------------------------------------------------------------------

    def begin(self, key: str, request: Begin, now: float) -> Decision:
        call = _Call((key, request), now)
        read = functools.partial(_decision, request=request, now=now)
        # Rule 11: a reservation the failed call may have made is released under its token.
        undo = functools.partial(self._release_reservation, key, request.token, now)
        return self._run(self._alone("begin", call, read), now, undo=undo)

    def _release_reservation(self, key: str, token: str, now: float) -> None:
        self.finish(key, token, Outcome(Step.RELEASE), now)

    def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        call = _Call((key, token, outcome), now)
        size = _size(outcome.response)
        return self._run(self._alone("finish", call, _accepted, size=size), now)

    def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        return self._run(self._resolve_plan(key, response, now), now)

    def forget(self, key: str, now: float) -> bool:
        return self._run(self._forget_plan(key, now), now)

    def get(self, key: str, now: float) -> Record | None:
        return self._run(self._get_plan(key, now), now)

    def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        plan = self._records_plan(now, state, limit)
        return [] if plan is None else self._run(plan, now)

    def purge(self, now: float, *, limit: int = 500) -> int:
        records, _ = self._run(self._purge_plan(now, limit, 0), now)
        return int(records)

    # -- ordering records (Rule 9) ---------------------------------------------------------

    def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        plan = self._order_claim_plan(key, version, token, now, lease, retention)
        undo = functools.partial(
            self.order_settle,
            key,
            token=token,
            version=version,
            ok=False,
            now=now,
            retention=retention,
        )
        return self._run(plan, now, undo=undo)

    def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        self._run(self._order_settle_plan(key, token, version, ok, now, retention), now)

    def order_get(self, key: str, now: float) -> OrderRecord | None:
        return self._run(self._order_get_plan(key, now), now)

    # -- boards (Rule 10) ----------------------------------------------------------------

    def board_put(self, board: str, slot: str, value: bytes, expires_at: float, now: float) -> None:
        self._run(self._board_write_plan(board, slot, value, expires_at, now, claim=False), now)

    def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        plan = self._board_write_plan(board, slot, value, expires_at, now, claim=True)
        return self._run(plan, now)

    def board_read(self, board: str, now: float) -> dict[str, bytes]:
        return self._run(self._board_read_plan(board, now), now)

    def board_delete(self, board: str, slot: str, now: float) -> bool:
        return self._run(self._board_delete_plan(board, slot, now), now)

    # -- rate limits ---------------------------------------------------------------------

    def acquire(self, items: Sequence[Item], now: float) -> tuple[bool, list[RateLimitDecision]]:
        if not items:
            return True, []
        literals = [_item_literals(item, now, self.clock) for item in items]
        plan = self._alone("acquire", _Call((items, literals), now), _same_decisions)
        held = _held_slots(items, None)
        # Rule 11: concurrency slots the failed call may have taken are given back.
        undo = functools.partial(self._release_all, held, now) if held else None
        return self._run(plan, now, undo=undo)

    def _release_all(self, items: list[Item], now: float) -> None:
        """Every slot in one statement: one connection and one ``timeout`` for them all."""
        keys = [item.key for item in items]
        tokens = [item.token for item in items]
        params = (keys, tokens, self._now(now))
        self._run(_Plan(self._sql["release_all"], params, _nothing), now)

    def release(self, key: str, token: str, now: float) -> None:
        self._run(self._release_plan(key, token, now), now)

    def close(self) -> None:
        """Let a purge under way finish (briefly), then close the pool if the store made it."""
        purging = self._purging
        if purging is not None:
            purging.join(self.timeout + _GRACE)
        with self._lock:
            if self._dsn is not None and self._pool is not None:
                self._pool.close()
                self._pool = None
            self._opened = self._checked = False


# -- helpers -----------------------------------------------------------------------------


#: The stores of this process that a fork must reset in the child (one hook for all).
_FORKABLE: weakref.WeakSet[SyncPostgresStore] = weakref.WeakSet()


def _after_fork() -> None:
    for store in list(_FORKABLE):
        store._forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork)


@contextlib.contextmanager
def _translate() -> Iterator[None]:
    """Rule 5: driver, pool and timeout errors become ``StoreUnavailable``."""
    try:
        yield
    except (psycopg.Error, OSError) as exc:  # OSError: TimeoutError, refused sockets
        raise StoreUnavailable(retry_after=1) from exc


def _array(elements: Iterable[str]) -> str:
    """A PostgreSQL array literal: several times cheaper to send than a list the driver
    adapts element by element."""
    return "{" + ",".join(elements) + "}"


def _float(value: float | None) -> str:
    return "NULL" if value is None else repr(float(value))


def _nows(batch: Sequence[_Entry], clock: str) -> str:
    return _array(_float(p.now) if clock == "caller" else "NULL" for p in batch)


def _begin_params(batch: Sequence[_Entry], clock: str) -> list[Any]:
    requests: list[tuple[str, Begin]] = [p.args for p in batch]
    return [
        _array(_quote(key) for key, _ in requests),
        _nows(batch, clock),
        _array(_quote(r.fingerprint) for _, r in requests),
        _array(_quote(r.token) for _, r in requests),
        _array(_float(r.lease) for _, r in requests),
        _array(_float(r.ttl) for _, r in requests),
        _array("t" if r.on_lease_expiry == "reexecute" else "f" for _, r in requests),
        _array(str(int(r.max_records)) for _, r in requests),
        _array(str(int(r.max_unknown)) for _, r in requests),
    ]


def _begin_results(batch: Sequence[_Entry], rows: list[Row]) -> list[Row]:
    return rows


def _finish_params(batch: Sequence[_Entry], clock: str) -> list[Any]:
    calls: list[tuple[str, str, Outcome]] = [p.args for p in batch]
    headers: list[bytes] = []
    counts, bodies, statuses = [], [], []
    for _, _, outcome in calls:
        response = outcome.response
        status, flat, body = _response(response)
        headers.extend(flat or ())
        counts.append(str(len(flat or ())))
        bodies.append(body)
        statuses.append("NULL" if status is None else str(int(status)))
    return [
        _array(_quote(key) for key, _, _ in calls),
        _nows(batch, clock),
        _array(_quote(token) for _, token, _ in calls),
        _array(outcome.step.value for _, _, outcome in calls),
        _array(statuses),
        headers,
        _array(counts),
        bodies,
    ]


def _finish_results(batch: Sequence[_Entry], rows: list[Row]) -> list[bool | None]:
    return [accepted for (accepted,) in rows]


def _item_literals(item: Item, now: float, clock: str) -> tuple[str, ...]:
    """An acquire's item as elements of ``surefoot_acquire``'s arrays."""
    limit = item.limit
    if clock == "caller" and item.algorithm == "quota":
        start, end = quota_period(now, limit.period or "day", limit.timezone)
        period = (repr(start), repr(end))
    else:
        period = ("NULL", "NULL")  # the database reads its own calendar (Rule 3)
    return (
        _quote(item.key),
        item.algorithm,
        str(int(item.cost)),
        "t" if item.enforce else "f",
        _quote(item.token),
        *_limit_literals(limit),
        *period,
    )


def _acquire_params(batch: Sequence[_Entry], clock: str) -> list[Any]:
    columns: list[list[str]] = [[] for _ in range(14)]
    for pending in batch:
        for literals in pending.args[1]:
            for column, value in zip(columns, literals, strict=True):
                column.append(value)
    sizes = _array(str(len(pending.args[0])) for pending in batch)
    return [_nows(batch, clock), sizes, *(_array(column) for column in columns)]


def _acquire_results(
    batch: Sequence[_Entry], rows: list[Row]
) -> list[tuple[bool, list[RateLimitDecision]]]:
    [(admitted, _, allowed, remaining, reset_after, retry_after, delay, available)] = rows
    out = []
    first = 0
    for n, pending in enumerate(batch):
        last = first + len(pending.args[0])
        fields = (allowed, remaining, reset_after, retry_after, delay, available)
        decisions = [
            RateLimitDecision(*decision)
            for decision in zip(*(column[first:last] for column in fields), strict=True)
        ]
        out.append((bool(admitted[n]), decisions))
        first = last
    return out


#: A batch's parameters, and its results one per call, by kind (Rule 7): the same
#: for a batch of ``PostgresStore``'s and a ``SyncPostgresStore``'s batch of one.
_KINDS: dict[str, tuple[_Params, _Results]] = {
    "begin": (_begin_params, _begin_results),
    "finish": (_finish_params, _finish_results),
    "acquire": (_acquire_params, _acquire_results),
}


def _decision(row: Row, request: Begin, now: float) -> Decision:
    """A begin's answer from its row of ``surefoot_begin_batch``."""
    verdict, generation, lease_expires_at, status, headers, body, db_now, limit, free_at = row
    if verdict in ("over_records", "over_unknown"):
        kind: Literal["records", "unknown"] = "records" if verdict == "over_records" else "unknown"
        return OverQuota(kind, limit, max(free_at - db_now, 0.0))
    if verdict == "reserved":
        return Reserved(request.token, generation, False)
    if verdict == "took_over":
        return Reserved(request.token, generation, True)
    if verdict == "in_progress":
        return InProgress(lease_expires_at + (now - db_now))
    if verdict == "replay":
        if body is None:
            return NotStored(status)
        return Replay(StoredResponse(status, _pairs(headers), body))
    if verdict == "mismatch":
        return Mismatch()
    return Unknown(lease_expired_now=verdict == "expired_to_unknown")


def _may_hold_reservation(row: Row | None) -> bool:
    """Whether a begin (its row; None: lost) may have left a reservation under its token."""
    return row is None or row[0] in ("reserved", "took_over")


def _held_slots(
    items: Sequence[Item], result: tuple[bool, list[RateLimitDecision]] | None
) -> list[Item]:
    """The concurrency slots an acquire (its result; None: lost) may hold."""
    if result is None:
        return [item for item in items if item.algorithm == "concurrency"]
    admitted, decisions = result
    return [
        item
        for item, decision in zip(items, decisions, strict=True)
        if admitted and decision.allowed and item.algorithm == "concurrency"
    ]


def _accepted(accepted: bool | None) -> bool:
    """A finish's answer; None: a completion without a response, refused by the SQL."""
    if accepted is None:
        raise ValueError("completing a record needs the response to keep")
    return bool(accepted)


def _may_have_committed(error: BaseException | None) -> bool:
    """Whether a statement that failed with ``error`` once sent may still have committed
    (Rule 11): unless the server answered with an error of its own (which rolled it
    back), the reply may be what was lost. Class 08 (connection) and 57 (operator
    intervention, a shutdown) may come after a commit; a cancelled statement
    (``statement_timeout``, 57014) did not commit."""
    sqlstate = getattr(error, "sqlstate", None)
    if not isinstance(sqlstate, str):
        return True
    return sqlstate[:2] in ("08", "57") and sqlstate != "57014"


def _same_decisions(
    result: tuple[bool, list[RateLimitDecision]],
) -> tuple[bool, list[RateLimitDecision]]:
    return result


def _flag(rows: list[Row]) -> bool:
    [(accepted,)] = rows
    return bool(accepted)


def _only(rows: list[Row]) -> Row:
    [row] = rows
    return row


def _nothing(rows: list[Row]) -> None:
    return None


def _first_record(rows: list[Row], now: float) -> Record | None:
    return _record(rows[0], now) if rows else None


def _keyed_records(rows: list[Row], now: float) -> list[tuple[str, Record]]:
    return [(row[0], _record(row[1:], now)) for row in rows]


def _claim(rows: list[Row], now: float) -> Claim:
    [(verdict, newest, until, db_now)] = rows
    return Claim(Verdict(verdict), newest, until + (now - db_now))


def _order_record(rows: list[Row], now: float) -> OrderRecord | None:
    if not rows:
        return None
    newest, holder, holding, until, expires, db_now = rows[0]
    shift = now - db_now
    return OrderRecord(newest, holder, holding, until + shift, expires + shift)


def _board_written(rows: list[Row], board: str) -> bool:
    [(verdict,)] = rows
    if verdict == "full":
        raise board_full(board)
    return bool(verdict == "set")


def _board_slots(rows: list[Row]) -> dict[str, bytes]:
    return {slot: bytes(value) for slot, value in rows}


def _deleted(rows: list[Row]) -> bool:
    return bool(rows and rows[0][0])


def _batch_length(queue: list[_Pending]) -> int:
    """How many calls from the head of ``queue`` go in the next batch (Rule 7): up to
    ``_BATCH`` calls and ``_BATCH_BYTES`` of responses; a call carrying more than
    ``_ALONE`` goes alone."""
    total = 0
    for n, pending in enumerate(queue[:_BATCH]):
        total += pending.size
        if n and (pending.size > _ALONE or total > _BATCH_BYTES):
            return n
        if pending.size > _ALONE:
            return 1
    return min(len(queue), _BATCH)


def _own(error: BaseException) -> Exception:
    """One waiter's exception for its failed batch: an instance of its own (one instance
    raised in several tasks would tangle their tracebacks), with the same text, cause
    and traceback. A cancelled batch is ``StoreUnavailable``."""
    if isinstance(error, Exception):
        with contextlib.suppress(Exception):  # an exception its args cannot rebuild
            mine = copy.copy(error)
            mine.__cause__, mine.__context__ = error.__cause__, error.__context__
            mine.__suppress_context__ = error.__suppress_context__
            return mine.with_traceback(error.__traceback__)
    unavailable = StoreUnavailable(retry_after=1)
    unavailable.__cause__ = error
    return unavailable


async def _together(works: Iterable[Awaitable[None]]) -> None:
    """Run ``works`` at once; the first failure, if any, once all have ended."""
    for outcome in await asyncio.gather(*works, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


def _size(response: StoredResponse | None) -> int:
    """Bytes of ``response`` sent to the database."""
    if response is None:
        return 0
    headers = sum(len(name) + len(value) for name, value in response.headers)
    return len(response.body or b"") + headers


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a task's exception as seen: its waiters may all have given up."""
    if not task.cancelled():
        task.exception()


def _quote(text: str) -> str:
    """``text`` as an element of a PostgreSQL array literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1024)
def _limit_literals(limit: Limit) -> tuple[str, ...]:
    """A limit's fields as array literal elements (``repr`` of a float reads back exactly)."""
    return (
        str(int(limit.amount)),
        repr(float(limit.window)),
        str(int(limit.capacity)),
        repr(float(limit.max_wait)),
        repr(float(limit.lease)),
        _quote(limit.period or "day"),
        _quote(limit.timezone),
    )


def _response(response: StoredResponse | None) -> tuple[Any, ...]:
    if response is None:
        return (None, None, None)
    flat = [part for pair in response.headers for part in pair]
    return (response.status, flat, response.body)


def _pairs(flat: list[bytes] | None) -> tuple[tuple[bytes, bytes], ...]:
    flat = flat or []
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


def _record(row: Row, now: float) -> Record:
    state, fingerprint, token, generation, lease_at, expires_at, ttl, status, *rest = row
    headers, body, db_now = rest
    shift = now - db_now  # Rule 3: onto the caller's clock (0 with clock="caller")
    response = None if status is None else StoredResponse(status, _pairs(headers), body)
    return Record(
        State(state),
        fingerprint,
        token,
        generation,
        lease_at + shift,
        expires_at + shift,
        ttl,
        response,
    )


def _ident(schema: str) -> str:
    return sql.Identifier(schema).as_string(None)


def _check_schema(schema: object, name: str) -> None:
    if not (isinstance(schema, str) and 0 < len(schema.encode()) <= 63 and "\0" not in schema):
        _bad(name, "a schema name of 1 to 63 bytes", schema)


def _bad(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"{name}: expected {expected}, got {got!r}")


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """(libpq URL, surefoot's options) from a store URL."""
    parts = split_url(url)
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _OPTIONS:
            ours[name] = value
        else:
            rest.append((name, value))
    dsn = parts._replace(query=urlencode(rest)).geturl()
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # The driver may quote the URL as rebuilt, or a part of it: both masked.
        reason = masked_text(masked_text(str(exc).strip(), dsn), url)
        raise ConfigurationError(f"store URL {masked_url(url)!r}: {reason}") from None
    return dsn, ours
