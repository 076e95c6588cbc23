"""``SagaLog``: sagas' durable progress in two tables of a SQLite or PostgreSQL database,
and what support staff do with them (list, show a timeline, retry, compensate, resolve).

Tables (``{prefix}_runs``, ``{prefix}_log``), created by ``create_tables`` or by running
``ddl(...)`` in a migration: one row per saga with its state and its steps' records
(JSON), and one timeline row per transition, written in the same transaction.

Theory of operation::

    start ──INSERT (nothing if the id exists: the first run is returned)──► RUNNING, due now
    worker: claim (due, lease expired: fence + 1, lease) ─► step ─► commit (only where the
            fence still holds: the step's result and the next step's start, one write)
    person: retry / compensate / resolve (fence + 1: a worker still running it is cut off,
            its next commit changes nothing)

Rule 1: at most one worker owns a saga: a claim takes only rows whose lease has run out
        and bumps the row's fence; every later write of that worker names the fence, so a
        worker whose lease ran out (paused, partitioned) writes nothing once another one
        (or a person) took the saga. On PostgreSQL claimed rows are locked
        ``FOR UPDATE SKIP LOCKED``, so workers on many hosts claim different sagas.
Rule 2: a commit is durable before the next step's action runs (PostgreSQL commits wait
        for the disk; SQLite runs in WAL mode with ``synchronous=NORMAL``, durable across
        a process crash).
Rule 3: a person's action is checked against the saga's state in the same transaction
        that changes it, and logged with who did it and why; an action that does not
        apply is ``SagaActionRefused`` and changes nothing. It bumps the fence but keeps
        the lease: a worker running a step of the saga learns at its next renewal that
        the saga is no longer its own and stops the step, and only when that lease has
        run out can a worker take the saga (so a step is not looked up or undone while
        its worker may still be running it).
Rule 4: a finished saga is kept ``retention`` seconds after it finished (``purge``).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from surefoot._masking import masked_url
from surefoot._sql import (
    Connection,
    Cursor,
    Dialect,
    database_dialect,
    in_transaction,
    translated,
)
from surefoot.clock import Clock, SystemClock
from surefoot.errors import AdminNotFound, ConfigurationError, SagaActionRefused
from surefoot.saga._core import (
    OPEN,
    Entry,
    Plan,
    PlanStep,
    Record,
    Retry,
    SagaState,
    StepRecord,
    StepState,
    abandon,
    start,
    take_over,
)
from surefoot.saga._define import Saga

__all__ = ["Claimed", "SagaLog", "SagaRun", "TimelineEntry"]

DEFAULT_PREFIX = "surefoot_saga"
MAX_INPUT = 256 * 1024
_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_REASON = re.compile(r"[\x20-\x7e]{1,500}")
_ACTOR = re.compile(r"[\x21-\x7e]{1,64}")
#: Saga ids: short enough for ``saga:<id>:<step>:undo`` to be an idempotency key (200).
_ID = re.compile(r"[\x21-\x7e]{1,120}")
_COLUMNS = "id, name, input, state, forward, steps, due_at, deadline_at, error, fence"
_ACTIVE = "('running', 'compensating')"
_NO_TRANSACTION = (
    "SagaLog.start(conn=...): expected a connection inside a transaction the application "
    "opened (BEGIN IMMEDIATE on SQLite), so that the saga starts only if it commits"
)


@dataclass(frozen=True, slots=True)
class SagaRun:
    """One saga as stored: what ``get``, ``runs`` and the admin API show."""

    id: str
    name: str
    state: str
    input: Any
    steps: list[dict[str, Any]]
    error: str | None
    created_at: float
    updated_at: float
    due_at: float
    deadline_at: float | None
    owner: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of a saga's timeline (``SagaLog.timeline``)."""

    seq: int
    at: float
    kind: str
    step: str | None
    attempt: int | None
    detail: str | None
    actor: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Claimed(NamedTuple):
    """A saga a worker owns until its lease runs out, under ``fence``; ``plan`` is its
    steps as recorded at its start."""

    id: str
    name: str
    input: Any
    plan: Plan
    record: Record
    fence: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.plan.steps)


def _ddl(p: str, dialect: Dialect) -> str:
    real = "DOUBLE PRECISION" if dialect == "postgresql" else "REAL"
    big = "BIGINT" if dialect == "postgresql" else "INTEGER"
    return f"""
CREATE TABLE IF NOT EXISTS {p}_runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL,
    forward INTEGER NOT NULL,
    steps TEXT NOT NULL,
    due_at {real} NOT NULL,
    deadline_at {real},
    error TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    owner TEXT,
    lease_until {real} NOT NULL DEFAULT 0,
    fence {big} NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS {p}_runs_due ON {p}_runs (due_at) WHERE state IN {_ACTIVE};
CREATE INDEX IF NOT EXISTS {p}_runs_state ON {p}_runs (state, updated_at);
CREATE TABLE IF NOT EXISTS {p}_log (
    saga_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at {real} NOT NULL,
    kind TEXT NOT NULL,
    step TEXT,
    attempt INTEGER,
    detail TEXT,
    actor TEXT NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
"""


def _steps_json(plan: Plan, record: Record) -> str:
    return json.dumps(
        [
            {
                "name": spec.name,
                "undo": spec.undo,
                "lookup": spec.lookup,
                "state": step.state.value,
                "attempts": step.attempts,
                "lookups": step.lookups,
                "undo_attempts": step.undo_attempts,
                "result": step.result,
                "error": step.error,
            }
            for spec, step in zip(plan.steps, record.steps, strict=True)
        ],
        separators=(",", ":"),
    )


def _stored(
    state: str, forward: int, steps: str, due: float, deadline: Any, error: Any
) -> tuple[Plan, Record]:
    """A stored run's plan (what a person's action and a changed definition need to know
    of its steps, without the application's code) and record, from one parse."""
    parsed = json.loads(steps)
    plan = Plan(
        tuple(PlanStep(s["name"], s["undo"], s["lookup"], Retry(), Retry()) for s in parsed)
    )
    record = Record(
        SagaState(state),
        bool(forward),
        tuple(
            StepRecord(
                StepState(s["state"]),
                s["attempts"],
                s["lookups"],
                s["undo_attempts"],
                s["result"],
                s["error"],
            )
            for s in parsed
        ),
        due,
        deadline,
        error,
    )
    return plan, record


def _check(pattern: re.Pattern[str], value: object, field: str, expected: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = value if not isinstance(value, str) else value[:80]
        raise ValueError(f"{field}: expected {expected}, got {shown!r}")
    return value


class SagaLog:
    """Sagas' progress, in the application's SQLite or PostgreSQL database.

    Example::

        log = SagaLog("sqlite:///shop.db")
        log.create_tables()
        run, created = log.start(checkout, "order-1042", {"sku": "A1", "amount": 1200})

    Args:
        database: ``sqlite:///path`` or ``postgresql://...``.
        prefix: the tables' name prefix.
        retention: seconds a finished saga is kept (``purge``).
        clock: time source (tests inject one).
    """

    def __init__(
        self,
        database: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        retention: float = 30 * 86400.0,
        clock: Clock | None = None,
    ) -> None:
        try:
            dialect = database_dialect(database)
        except ValueError as exc:
            raise ConfigurationError(f"SagaLog.database: {exc}") from None
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"SagaLog.prefix: expected lowercase letters, digits and _ (at most 40), "
                f"got {prefix!r}"
            )
        if not isinstance(retention, int | float) or not 0 < retention < math.inf:
            raise ConfigurationError(f"SagaLog.retention: expected seconds, got {retention!r}")
        self.database = database
        self.dialect: Dialect = dialect
        self.prefix = prefix
        self.retention = float(retention)
        self.clock: Clock = clock if clock is not None else SystemClock()
        # Opened on first use (and again after close): threads share it, one at a time.
        self._admin = Connection(database, dialect)

    def __repr__(self) -> str:
        return f"SagaLog({masked_url(self.database)!r}, prefix={self.prefix!r})"

    def ddl(self, dialect: Dialect | None = None) -> str:
        """The tables' ``CREATE`` statements, for a migration."""
        return _ddl(self.prefix, dialect or self.dialect)

    def create_tables(self) -> None:
        with self._admin.transaction() as cur:
            for statement in self.ddl().split(";"):
                if statement.strip():
                    cur.execute(statement)

    def connect(self) -> Connection:
        """A connection of its own, for a worker."""
        return Connection(self.database, self.dialect)

    def close(self) -> None:
        self._admin.close()

    def _q(self, query: str) -> str:
        return query.replace("?", "%s") if self.dialect == "postgresql" else query

    # -- starting ----------------------------------------------------------------------------

    def start(
        self,
        saga: Saga,
        saga_id: str,
        input: Any = None,
        *,
        conn: Any = None,
        actor: str = "app",
    ) -> tuple[SagaRun, bool]:
        """Record a new saga, due now; ``(run, True)``. If ``saga_id`` exists, nothing
        changes and the first run is returned: ``(run, False)``.

        With ``conn`` (the application's own ``sqlite3`` or ``psycopg`` connection, inside
        a transaction it opened on the same database), the saga is recorded in that
        transaction: it starts if and only if the application commits (an order and its
        checkout saga, or neither). Nothing is committed or rolled back here.

        Raises:
            ValueError: ``saga_id`` is not 1-120 printable ASCII characters, or names a
                saga of another name, or ``input`` is not JSON-serialisable or is larger
                than 256 KiB. Nothing is recorded.
            ConfigurationError: ``saga`` is not a ``Saga`` with at least one step.
            RuntimeError: ``conn`` is given outside a transaction.
        """
        if not isinstance(saga, Saga):
            raise ConfigurationError(f"SagaLog.start: expected a Saga, got {saga!r}")
        plan = saga.plan()
        _check(_ID, saga_id, "saga_id", "1-120 printable ASCII characters without spaces")
        _check(_ACTOR, actor, "actor", "1-64 printable ASCII characters without spaces")
        try:
            text = json.dumps(input, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"input: expected JSON-serialisable data (dict, list, str, number, bool, "
                f"None): {exc}"
            ) from None
        if len(text) > MAX_INPUT:
            raise ValueError(f"input: expected at most {MAX_INPUT} bytes of JSON, got {len(text)}")
        now = self.clock.now()
        deadline = None if saga.deadline is None else now + saga.deadline
        record, entries = start(plan, now, deadline)
        with self._starting(conn) as cur:
            cur.execute(
                self._q(
                    f"INSERT INTO {self.prefix}_runs (id, name, input, state, forward, steps, "
                    "due_at, deadline_at, error, created_at, updated_at, seq) "
                    "VALUES (?, ?, ?, ?, 1, ?, ?, ?, NULL, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
                ),
                (
                    saga_id,
                    saga.name,
                    text,
                    record.state.value,
                    _steps_json(plan, record),
                    now,
                    deadline,
                    now,
                    now,
                    len(entries),
                ),
            )
            created = cur.rowcount == 1
            if created:
                self._insert_log(cur, saga_id, 0, now, entries, actor)
            run = self._get(cur, saga_id)
        assert run is not None
        if run.name != saga.name:
            raise ValueError(f"saga_id: {saga_id!r} is a {run.name!r} saga, not a {saga.name!r}")
        return run, created

    @contextlib.contextmanager
    def _starting(self, conn: Any) -> Iterator[Cursor]:
        if conn is None:
            with self._admin.transaction() as cur:
                yield cur
            return
        if self.dialect == "sqlite":
            if not isinstance(conn, sqlite3.Connection):
                raise ConfigurationError(
                    f"SagaLog.start(conn=...): expected a sqlite3.Connection to the log's "
                    f"database, got {type(conn).__name__}"
                )
            if not in_transaction(conn, starting=True):
                raise RuntimeError(_NO_TRANSACTION)
            with translated():
                yield conn.cursor()
            return
        import psycopg
        from psycopg.rows import tuple_row

        if not isinstance(conn, psycopg.Connection):
            raise ConfigurationError(
                f"SagaLog.start(conn=...): expected a (sync) psycopg.Connection to the log's "
                f"database, got {type(conn).__name__}"
            )
        if not in_transaction(conn, starting=True):
            raise RuntimeError(_NO_TRANSACTION)
        with translated():
            yield conn.cursor(row_factory=tuple_row)

    # -- workers -----------------------------------------------------------------------------

    def claim(
        self,
        conn: Connection,
        owner: str,
        *,
        names: Iterable[str],
        limit: int,
        lease: float,
        saga_id: str | None = None,
    ) -> list[Claimed]:
        """Take up to ``limit`` due sagas of ``names`` whose lease ran out (or the one
        ``saga_id``, if due and free), for ``lease`` seconds."""
        names = list(names)
        now = self.clock.now()
        marks = ", ".join("?" * len(names))
        where = f"state IN {_ACTIVE} AND due_at <= ? AND lease_until < ? AND name IN ({marks})"
        params: list[object] = [now, now, *names]
        if saga_id is not None:
            where += " AND id = ?"
            params.append(saga_id)
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        query = self._q(
            f"UPDATE {self.prefix}_runs SET owner = ?, lease_until = ?, fence = fence + 1 "
            f"WHERE id IN (SELECT id FROM {self.prefix}_runs WHERE {where} "
            f"ORDER BY due_at LIMIT ?{lock}) RETURNING {_COLUMNS}"
        )
        with conn.transaction() as cur:
            cur.execute(query, (owner, now + lease, *params, limit))
            rows = cur.fetchall()
        return [
            Claimed(
                row[0],
                row[1],
                json.loads(row[2]),
                *_stored(row[3], row[4], row[5], row[6], row[7], row[8]),
                row[9],
            )
            for row in rows
        ]

    def commit(
        self,
        conn: Connection,
        claimed: Claimed,
        plan: Plan,
        record: Record,
        entries: Sequence[Entry],
        *,
        lease_until: float,
        actor: str,
    ) -> bool:
        """Write ``record`` and its timeline ``entries`` where the claim's fence still
        holds (Rule 1); ``lease_until`` 0 hands the saga back. False: the saga is no
        longer this worker's, and nothing was written."""
        now = self.clock.now()
        update = (
            f"UPDATE {self.prefix}_runs SET state = ?, forward = ?, steps = ?, "
            "due_at = ?, deadline_at = ?, error = ?, updated_at = ?, lease_until = ?, "
            "owner = CASE WHEN ? > 0 THEN owner END, seq = seq + ? "
            "WHERE id = ? AND fence = ? RETURNING seq"
        )
        params: list[object] = [
            record.state.value,
            int(record.forward),
            _steps_json(plan, record),
            record.due_at,
            record.deadline_at,
            record.error,
            now,
            lease_until,
            lease_until,
            len(entries),
            claimed.id,
            claimed.fence,
        ]
        if self.dialect == "postgresql" and entries:
            # One statement, committed on its own: a round trip and a disk wait per step.
            written = conn.statement(
                f"WITH u AS ({self._q(update)}) INSERT INTO {self.prefix}_log "
                "(saga_id, seq, at, kind, step, attempt, detail, actor) "
                "SELECT %s, u.seq - %s + e.n, %s, e.kind, e.step, e.attempt, e.detail, %s "
                "FROM u, unnest(%s::text[], %s::text[], %s::int[], %s::text[]) "
                "WITH ORDINALITY AS e(kind, step, attempt, detail, n) RETURNING 1",
                [
                    *params,
                    claimed.id,
                    len(entries),
                    now,
                    actor,
                    [e.kind for e in entries],
                    [e.step for e in entries],
                    [e.attempt for e in entries],
                    [e.detail for e in entries],
                ],
            )
            return len(written) == len(entries)
        with conn.transaction() as cur:
            cur.execute(self._q(update), params)
            row = cur.fetchone()
            if row is None:
                return False
            self._insert_log(cur, claimed.id, row[0] - len(entries), now, entries, actor)
        return True

    def renew(self, conn: Connection, claimed: Claimed, lease_until: float) -> bool:
        """Extend a claim's lease, where its fence still holds and the lease was not handed
        back (False: the saga is no longer this worker's). A renewal still in flight when
        the step's commit hands the saga back (a backoff) must not take it again, or no
        worker could claim it until that lease ran out."""
        with conn.transaction() as cur:
            cur.execute(
                self._q(
                    f"UPDATE {self.prefix}_runs SET lease_until = ? "
                    "WHERE id = ? AND fence = ? AND lease_until > 0"
                ),
                (lease_until, claimed.id, claimed.fence),
            )
            return cur.rowcount == 1

    def _insert_log(
        self,
        cur: Cursor,
        saga_id: str,
        seq: int,
        now: float,
        entries: Sequence[Entry],
        actor: str,
    ) -> None:
        cur.executemany(
            self._q(
                f"INSERT INTO {self.prefix}_log (saga_id, seq, at, kind, step, attempt, detail, "
                "actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            [
                (saga_id, seq + n, now, e.kind, e.step, e.attempt, e.detail, actor)
                for n, e in enumerate(entries, 1)
            ],
        )

    # -- reading -----------------------------------------------------------------------------

    def get(self, saga_id: str) -> SagaRun | None:
        """The saga ``saga_id``, or None."""
        with self._admin.transaction() as cur:
            return self._get(cur, saga_id)

    def _get(self, cur: Cursor, saga_id: str) -> SagaRun | None:
        cur.execute(self._q(f"{self._select()} WHERE id = ?"), (self.clock.now(), saga_id))
        row = cur.fetchone()
        return None if row is None else self._run(row)

    def _select(self, *, summary: bool = False) -> str:
        # A summary leaves the input out (up to MAX_INPUT each), and _run the results.
        return (
            f"SELECT id, name, state, {'NULL' if summary else 'input'}, steps, error, "
            "created_at, updated_at, due_at, deadline_at, "
            f"CASE WHEN lease_until > ? THEN owner END FROM {self.prefix}_runs"
        )

    @staticmethod
    def _run(row: Sequence[Any], *, summary: bool = False) -> SagaRun:
        steps = json.loads(row[4])
        if summary:
            steps = [{k: v for k, v in step.items() if k != "result"} for step in steps]
        return SagaRun(
            row[0],
            row[1],
            row[2],
            None if summary else json.loads(row[3]),
            steps,
            row[5],
            row[6],
            row[7],
            row[8],
            row[9],
            row[10],
        )

    def runs(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        older_than: float | None = None,
        limit: int = 100,
    ) -> list[SagaRun]:
        """Sagas, the least recently changed first: only those in ``state``, of ``name``,
        or unchanged for ``older_than`` seconds or more. Summaries: without their input
        (``None``) and their steps' results; ``get`` gives a whole run."""
        where: list[str] = []
        params: list[object] = []
        if state is not None:
            if state not in {s.value for s in SagaState}:
                raise ValueError(
                    f"state: expected one of {', '.join(s.value for s in SagaState)}, got {state!r}"
                )
            where.append("state = ?")
            params.append(state)
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if older_than is not None:
            if not isinstance(older_than, int | float) or not 0 <= older_than < math.inf:
                raise ValueError(f"older_than: expected seconds, got {older_than!r}")
            where.append("updated_at <= ?")
            params.append(self.clock.now() - older_than)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit: expected 1 to 1000, got {limit!r}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._admin.transaction() as cur:
            cur.execute(
                self._q(f"{self._select(summary=True)}{clause} ORDER BY updated_at LIMIT ?"),
                (self.clock.now(), *params, limit),
            )
            return [self._run(row, summary=True) for row in cur.fetchall()]

    def timeline(self, saga_id: str) -> list[TimelineEntry]:
        """Every transition of the saga, in order (``AdminNotFound`` for an unknown id)."""
        with self._admin.transaction() as cur:
            if self._get(cur, saga_id) is None:
                raise AdminNotFound(what=f"saga {saga_id!r}")
            cur.execute(
                self._q(
                    f"SELECT seq, at, kind, step, attempt, detail, actor FROM {self.prefix}_log "
                    "WHERE saga_id = ? ORDER BY seq"
                ),
                (saga_id,),
            )
            return [TimelineEntry(*row) for row in cur.fetchall()]

    def counts(self) -> list[tuple[str, str, int, float]]:
        """``(name, state, how many, oldest updated_at)`` for every name and state."""
        with self._admin.transaction() as cur:
            cur.execute(
                f"SELECT name, state, COUNT(*), MIN(updated_at) FROM {self.prefix}_runs "
                "GROUP BY name, state ORDER BY name, state"
            )
            return [(r[0], r[1], r[2], r[3]) for r in cur.fetchall()]

    def purge(self, *, batch: int = 1000) -> int:
        """Delete up to ``batch`` sagas finished more than ``retention`` seconds ago."""
        if not isinstance(batch, int) or not 1 <= batch <= 100_000:
            # (SQLite reads LIMIT -1 as no limit at all; PostgreSQL refuses it)
            raise ValueError(f"batch: expected 1 to 100000, got {batch!r}")
        cutoff = self.clock.now() - self.retention
        finished = "('completed', 'compensated', 'resolved')"
        with self._admin.transaction() as cur:
            cur.execute(
                self._q(
                    f"SELECT id FROM {self.prefix}_runs WHERE state IN {finished} "
                    "AND updated_at < ? LIMIT ?"
                ),
                (cutoff, batch),
            )
            ids = [(row[0],) for row in cur.fetchall()]
            cur.executemany(self._q(f"DELETE FROM {self.prefix}_log WHERE saga_id = ?"), ids)
            cur.executemany(self._q(f"DELETE FROM {self.prefix}_runs WHERE id = ?"), ids)
        return len(ids)

    # -- a person's actions (Rule 3) ---------------------------------------------------------

    def retry(self, saga_id: str, *, reason: str, actor: str) -> SagaRun:
        """Go on now, in the saga's direction, with fresh attempts for the step at hand
        (a waiting saga runs now; a ``needs_attention`` one gets another chance)."""

        def act(plan: Plan, record: Record) -> tuple[Record, list[Entry]]:
            if record.state not in OPEN:
                raise SagaActionRefused(reason=f"the saga is {record.state.value}")
            new, entries = take_over(plan, record)
            if new.state is SagaState.NEEDS_ATTENTION:
                raise SagaActionRefused(
                    reason="nothing is left to retry: the saga waits for a person to accept "
                    f"what it could not settle ({record.error}); resolve it"
                )
            return new, entries

        return self._act(saga_id, "retry", reason, actor, act)

    def compensate(self, saga_id: str, *, reason: str, actor: str) -> SagaRun:
        """Turn a running (or ``needs_attention``) saga back now: undo what it did."""

        def act(plan: Plan, record: Record) -> tuple[Record, list[Entry]]:
            if record.state not in OPEN:
                raise SagaActionRefused(reason=f"the saga is {record.state.value}")
            if not record.forward:
                raise SagaActionRefused(reason="the saga is already compensating; retry it")
            # A step in doubt is looked up again going back, with fresh attempts.
            steps = tuple(replace(step, lookups=0) for step in record.steps)
            back = Record(SagaState.RUNNING, True, steps, 0.0, record.deadline_at, record.error)
            return abandon(plan, back, f"compensate ({actor}): {reason}")

        return self._act(saga_id, "compensate", reason, actor, act)

    def resolve(self, saga_id: str, *, reason: str, actor: str) -> SagaRun:
        """Close an open saga by hand: a person settled it outside (kept in the timeline)."""

        def act(plan: Plan, record: Record) -> tuple[Record, list[Entry]]:
            if record.state not in OPEN:
                raise SagaActionRefused(reason=f"the saga is {record.state.value}")
            return Record(
                SagaState.RESOLVED,
                record.forward,
                record.steps,
                record.due_at,
                record.deadline_at,
                record.error,
            ), []

        return self._act(saga_id, "resolve", reason, actor, act)

    def _act(
        self,
        saga_id: str,
        kind: str,
        reason: str,
        actor: str,
        act: Callable[[Plan, Record], tuple[Record, list[Entry]]],
    ) -> SagaRun:
        _check(_REASON, reason, "reason", "1-500 printable ASCII characters")
        _check(_ACTOR, actor, "actor", "1-64 printable ASCII characters without spaces")
        lock = " FOR UPDATE" if self.dialect == "postgresql" else ""
        now = self.clock.now()
        with self._admin.transaction() as cur:
            cur.execute(
                self._q(
                    f"SELECT name, state, forward, steps, due_at, deadline_at, error, seq "
                    f"FROM {self.prefix}_runs WHERE id = ?{lock}"
                ),
                (saga_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise AdminNotFound(what=f"saga {saga_id!r}")
            plan, record = _stored(row[1], row[2], row[3], row[4], row[5], row[6])
            new, entries = act(plan, record)
            new = Record(
                new.state,
                new.forward,
                new.steps,
                now if new.due_at <= now else new.due_at,
                new.deadline_at,
                new.error,
            )
            entries = [Entry(kind, None, None, reason), *entries]
            cur.execute(
                self._q(
                    f"UPDATE {self.prefix}_runs SET state = ?, forward = ?, steps = ?, "
                    "due_at = ?, deadline_at = ?, error = ?, updated_at = ?, "
                    "fence = fence + 1, seq = seq + ? WHERE id = ?"
                ),
                (
                    new.state.value,
                    int(new.forward),
                    _steps_json(plan, new),
                    new.due_at,
                    new.deadline_at,
                    new.error,
                    now,
                    len(entries),
                    saga_id,
                ),
            )
            self._insert_log(cur, saga_id, row[7], now, entries, actor)
            run = self._get(cur, saga_id)
        assert run is not None
        return run
