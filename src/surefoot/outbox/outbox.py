"""``Outbox``: webhooks recorded in the application's own transaction, and the tables a
worker delivers them from (SQLite or PostgreSQL, the application's own database).

Theory of operation::

    BEGIN IMMEDIATE                (the application; BEGIN on PostgreSQL)
    ...business writes...
    outbox.enqueue(conn, "invoice.paid", {...})
                                   one message row, one delivery row per matching
                                   enabled endpoint of the tenant
    COMMIT                         (the application): the change and its webhooks, or neither

    worker: claim (one short transaction) ─► POST, no transaction open ─► record (one short
    transaction, only where the claim's token still holds)

The tables (``{prefix}_endpoints``, ``_messages``, ``_deliveries``, ``_attempts``) are
created by ``create_tables`` or by running ``ddl(...)`` in a migration of the application.
The delivery state machine and its rules are in ``_core``; this module holds the SQL.

Rule 1: ``enqueue`` never commits, never rolls back and opens no transaction of its own:
        a rolled-back transaction leaves no message, a committed one leaves its message
        and deliveries, even if the process dies just after the COMMIT.
Rule 2: a message's id is stable (``msg_`` and 26 random characters, or the caller's
        ``event_id``); enqueueing an ``event_id`` already recorded changes nothing and
        returns the same id, so an application retrying its own transaction sends once.
Rule 3: the worker's statements run on its own connection, in transactions that hold
        no network call; on SQLite a claim or a record holds the write lock for a few
        statements only. On PostgreSQL the endpoints being claimed are locked
        ``FOR UPDATE SKIP LOCKED``, so workers on many hosts claim different endpoints
        at once and an endpoint's in-flight count never exceeds its ``concurrency``.
        A record is one UPDATE (only where the claim's token still holds; it returns
        those rows) and one INSERT of their attempts, whatever the batch's size. A
        worker's own commits do not wait for the disk on PostgreSQL: one lost in a crash
        only sends a delivery once more, which at least once allows.
Rule 4: secrets are stored for signing and never returned: ``Endpoint`` shows how many
        there are, ``repr`` and the admin API show none.
Rule 5: a message is kept ``retention`` seconds once nothing waits to deliver it
        (``purge``, which workers call, deletes it with its deliveries and attempts).
"""

from __future__ import annotations

import enum
import json
import re
import secrets as _secrets
import sqlite3
import threading
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from surefoot._sql import Connection, Dialect, database_dialect, in_transaction, translated
from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError
from surefoot.outbox._core import (
    DeliveryState,
    RetrySchedule,
    check_url,
    is_event_pattern,
    is_event_type,
    is_name,
    matches,
)
from surefoot.webhooks import is_event_id

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "Attempt",
    "Claimed",
    "Delivery",
    "Endpoint",
    "EndpointStats",
    "Outbox",
    "Outcome",
]

DEFAULT_PREFIX = "surefoot_webhook"
MAX_PAYLOAD = 256 * 1024
_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_ORDERING_KEY = re.compile(r"[\x21-\x7e]{1,200}")
_MIN_SECRET_BYTES = 24
_MAX_SECRETS = 5
_REASON = re.compile(r"[\x20-\x7e]{1,200}")
#: Claims checked per statement when recording (3 parameters each, well under SQLite's 32766).
_CHUNK = 500
_SECRET_PREFIXES = ("whsec_", "whsk_")

# PostgreSQL's batches of rows, as arrays (one parameter per column).
_UNNEST_RECORD = (
    "unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::float8[], %s::int[], "
    "%s::int[], %s::int[], %s::text[], %s::float8[])"
)
_UNNEST_ATTEMPTS = (
    "unnest(%s::text[], %s::bigint[], %s::int[], %s::float8[], %s::int[], %s::text[], %s::float8[])"
)


def _fail(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"{name}: expected {expected}, got {got!r}")


def _secret_bytes(text: str) -> int:
    import base64
    import binascii

    body = text.split("_", 1)[1] if text.startswith(_SECRET_PREFIXES) else text
    try:
        return len(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError):
        return -1


def check_secret(secret: object, field: str) -> str:
    """``secret`` if it can sign: ``whsec_`` (v1, HMAC) or ``whsk_`` (v1a, Ed25519) and
    the base64 of at least 24 bytes. The message never shows the secret."""
    if not isinstance(secret, str) or not secret.startswith(_SECRET_PREFIXES):
        raise ConfigurationError(
            f"{field}: expected a 'whsec_...' or 'whsk_...' secret (the value is not shown)"
        )
    size = _secret_bytes(secret)
    if secret.startswith("whsk_") and size not in (32, 64):
        raise ConfigurationError(
            f"{field}: expected a whsk_ Ed25519 signing key: the base64 of its 32-byte seed "
            f"(or of the seed and the public key, 64 bytes), got {max(size, 0)} bytes "
            "(the secret is not shown)"
        )
    if size < _MIN_SECRET_BYTES:
        shown = "not base64" if size < 0 else f"{size} bytes"
        raise ConfigurationError(
            f"{field}: expected the base64 of at least {_MIN_SECRET_BYTES} random bytes "
            f"after the prefix, got {shown} (the secret is not shown)"
        )
    return secret


# -- values ------------------------------------------------------------------------------------


class _Row:
    """A value read from the tables, shown as JSON by the CLI and the admin API."""

    __slots__ = ()

    def as_dict(self) -> dict[str, object]:
        """The fields as JSON values (a state as its name, a tuple as a list)."""
        shown: dict[str, object] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            shown[f.name] = value
        return shown


@dataclass(frozen=True, slots=True)
class Endpoint(_Row):
    """A consumer's URL and what it accepts (its secrets are never part of this value)."""

    name: str
    tenant: str
    url: str
    event_types: tuple[str, ...] | None
    rate_limit: str | None
    concurrency: int
    enabled: bool
    disabled_reason: str | None
    failing_since: float | None
    secrets: int


@dataclass(frozen=True, slots=True)
class Delivery(_Row):
    """One message to one endpoint."""

    message_id: str
    endpoint: str
    event_type: str
    state: DeliveryState
    attempts: int
    next_at: float | None
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Attempt(_Row):
    """One HTTP attempt of a delivery: its status or error, and how long it took."""

    message_id: str
    endpoint: str
    attempt: int
    at: float
    status: int | None
    error: str | None
    latency: float


@dataclass(frozen=True, slots=True)
class EndpointStats(_Row):
    """An endpoint's backlog: deliveries waiting, in flight, failed, and the age of the
    oldest undelivered message (None: nothing waits)."""

    endpoint: str
    enabled: bool
    pending: int
    sending: int
    failed: int
    oldest_undelivered: float | None


class Claimed(NamedTuple):
    """A delivery a worker holds under ``token`` until ``lease_until``."""

    endpoint: str
    seq: int
    message_id: str
    event_type: str
    body: bytes
    attempt: int
    token: str
    url: str
    secrets: tuple[str, ...]
    rate_limit: str | None
    failing_since: float | None


class Outcome(NamedTuple):
    """What to record for a claimed delivery: ``attempted`` False puts it back untouched
    (Rule 5 of ``_core``) with ``next_at``; otherwise the judged state and the attempt."""

    claimed: Claimed
    state: DeliveryState
    next_at: float | None
    attempted: bool
    at: float
    status: int | None = None
    error: str | None = None
    latency: float = 0.0
    paused_until: float | None = None
    disable: str | None = None


# -- SQL ---------------------------------------------------------------------------------------


def _ddl(p: str, dialect: Dialect) -> str:
    seq = (
        "INTEGER PRIMARY KEY"
        if dialect == "sqlite"
        else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    )
    real = "REAL" if dialect == "sqlite" else "DOUBLE PRECISION"
    blob = "BLOB" if dialect == "sqlite" else "BYTEA"
    big = "INTEGER" if dialect == "sqlite" else "BIGINT"
    return f"""
CREATE TABLE IF NOT EXISTS {p}_endpoints (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    secrets TEXT NOT NULL,
    event_types TEXT,
    rate_limit TEXT,
    concurrency INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    disabled_reason TEXT,
    failing_since {real},
    paused_until {real} NOT NULL DEFAULT 0,
    claimed_at {real} NOT NULL DEFAULT 0,
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS {p}_endpoints_tenant ON {p}_endpoints (tenant);
CREATE TABLE IF NOT EXISTS {p}_messages (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ordering_key TEXT,
    body {blob} NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS {p}_messages_tenant ON {p}_messages (tenant, created_at);
CREATE INDEX IF NOT EXISTS {p}_messages_created ON {p}_messages (created_at);
CREATE TABLE IF NOT EXISTS {p}_deliveries (
    endpoint TEXT NOT NULL,
    seq {big} NOT NULL,
    ordering_key TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at {real} NOT NULL,
    token TEXT,
    lease_until {real},
    last_status INTEGER,
    last_error TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    PRIMARY KEY (endpoint, seq)
);
CREATE INDEX IF NOT EXISTS {p}_deliveries_due ON {p}_deliveries (endpoint, state, next_at);
CREATE INDEX IF NOT EXISTS {p}_deliveries_order
    ON {p}_deliveries (endpoint, ordering_key, seq) WHERE ordering_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS {p}_deliveries_message ON {p}_deliveries (seq);
CREATE TABLE IF NOT EXISTS {p}_attempts (
    id {seq},
    endpoint TEXT NOT NULL,
    seq {big} NOT NULL,
    attempt INTEGER NOT NULL,
    at {real} NOT NULL,
    status INTEGER,
    error TEXT,
    latency {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS {p}_attempts_delivery ON {p}_attempts (seq, endpoint);
"""


_DUE = "((d.state = 'pending' AND d.next_at <= ?) OR (d.state = 'sending' AND d.lease_until <= ?))"


class _Sql:
    """Every statement of one table prefix in one dialect (values are always parameters)."""

    def __init__(self, p: str, dialect: Dialect) -> None:
        lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
        self.dialect = dialect
        #: The dialect's parameter mark (the statements are written with ``?``).
        self.mark = "?" if dialect == "sqlite" else "%s"
        self.insert_message = (
            f"INSERT INTO {p}_messages (id, tenant, event_type, ordering_key, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING seq"
        )
        self.matching = (
            f"SELECT name, event_types FROM {p}_endpoints WHERE tenant = ? AND enabled = 1"
        )
        self.insert_delivery = (
            f"INSERT INTO {p}_deliveries (endpoint, seq, ordering_key, state, next_at, "
            "created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)"
        )
        self.claim_endpoints = (
            f"SELECT e.name, e.url, e.secrets, e.rate_limit, e.concurrency, e.failing_since "
            f"FROM {p}_endpoints e WHERE e.enabled = 1 AND e.paused_until <= ? AND EXISTS "
            f"(SELECT 1 FROM {p}_deliveries d WHERE d.endpoint = e.name AND {_DUE}) "
            # An endpoint at its concurrency is left out, so it never fills the LIMIT while
            # others wait (claim counts again, under the lock, before taking any).
            f"AND (SELECT count(*) FROM {p}_deliveries f WHERE f.endpoint = e.name "
            "AND f.state = 'sending' AND f.lease_until > ?) < e.concurrency "
            f"ORDER BY e.claimed_at LIMIT ?{lock}"
        )
        self.in_flight = (
            f"SELECT count(*) FROM {p}_deliveries "
            "WHERE endpoint = ? AND state = 'sending' AND lease_until > ?"
        )
        self.claim = (
            f"UPDATE {p}_deliveries SET state = 'sending', token = ?, lease_until = ?, "
            "attempts = attempts + 1, updated_at = ? WHERE endpoint = ? AND seq IN "
            f"(SELECT d.seq FROM {p}_deliveries d WHERE d.endpoint = ? AND {_DUE} AND "
            "(d.ordering_key IS NULL OR NOT EXISTS ("
            f"SELECT 1 FROM {p}_deliveries o WHERE o.endpoint = d.endpoint "
            "AND o.ordering_key = d.ordering_key AND o.seq < d.seq "
            "AND o.state IN ('pending', 'sending'))) "
            "ORDER BY d.next_at, d.seq LIMIT ?) RETURNING seq, attempts"
        )
        self.touch_endpoints = f"UPDATE {p}_endpoints SET claimed_at = ? WHERE name IN "
        # One statement for a batch of outcomes (the rows are "{rows}"), applied only
        # where the claim's token still holds; it returns those rows. CASTs give the
        # VALUES' columns their types on PostgreSQL (a column of NULLs would be text).
        self._record = (
            "WITH v (k_endpoint, k_seq, k_token, k_state, k_next_at, k_back, k_status, "
            "k_attempted, k_error, k_now) AS (VALUES {rows}) "
            f"UPDATE {p}_deliveries AS d SET state = CAST(v.k_state AS TEXT), "
            "next_at = CAST(v.k_next_at AS DOUBLE PRECISION), token = NULL, "
            "lease_until = NULL, attempts = d.attempts - CAST(v.k_back AS INTEGER), "
            "last_status = COALESCE(CAST(v.k_status AS INTEGER), d.last_status), "
            "last_error = CASE WHEN CAST(v.k_attempted AS INTEGER) = 1 "
            "THEN CAST(v.k_error AS TEXT) ELSE d.last_error END, "
            "updated_at = CAST(v.k_now AS DOUBLE PRECISION) FROM v "
            "WHERE d.endpoint = CAST(v.k_endpoint AS TEXT) AND d.seq = CAST(v.k_seq AS BIGINT) "
            "AND d.token = CAST(v.k_token AS TEXT) RETURNING endpoint, seq"
        )
        self._insert_attempts = (
            f"INSERT INTO {p}_attempts (endpoint, seq, attempt, at, status, error, latency) "
            "VALUES {rows}"
        )
        # One per endpoint and batch (_endpoint_results): ``failing_since`` is cleared
        # (reset, NULL), set anew (reset, the first failure after the last success) or kept
        # (the first failure if there was none); a pause only ever grows.
        self.endpoint_result = (
            f"UPDATE {p}_endpoints SET failing_since = CASE WHEN ? THEN ? "
            "ELSE COALESCE(failing_since, ?) END, "
            "paused_until = CASE WHEN paused_until < ? THEN ? ELSE paused_until END WHERE name = ?"
        )
        self.endpoint_disable = (
            f"UPDATE {p}_endpoints SET enabled = 0, disabled_reason = ? "
            "WHERE name = ? AND enabled = 1"
        )
        self.endpoint_enable = (
            f"UPDATE {p}_endpoints SET enabled = 1, disabled_reason = NULL, "
            "failing_since = NULL, paused_until = 0 WHERE name = ?"
        )
        self.insert_endpoint = (
            f"INSERT INTO {p}_endpoints (name, tenant, url, secrets, event_types, rate_limit, "
            "concurrency, enabled, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING"
        )
        self.endpoint_columns = (
            "name, tenant, url, event_types, rate_limit, concurrency, enabled, "
            "disabled_reason, failing_since, secrets"
        )
        self.endpoints = f"SELECT {self.endpoint_columns} FROM {p}_endpoints"
        self.secrets = f"SELECT secrets FROM {p}_endpoints WHERE name = ?"
        self.set_secrets = f"UPDATE {p}_endpoints SET secrets = ? WHERE name = ?"
        self.delete_endpoint = [
            f"DELETE FROM {p}_attempts WHERE endpoint = ?",
            f"DELETE FROM {p}_deliveries WHERE endpoint = ?",
            f"DELETE FROM {p}_endpoints WHERE name = ?",
        ]
        self.deliveries = (
            "SELECT m.id, d.endpoint, m.event_type, d.state, d.attempts, d.next_at, "
            "d.last_status, d.last_error, d.created_at, d.updated_at "
            f"FROM {p}_deliveries d JOIN {p}_messages m ON m.seq = d.seq"
        )
        self.attempts = (
            "SELECT m.id, a.endpoint, a.attempt, a.at, a.status, a.error, a.latency "
            f"FROM {p}_attempts a JOIN {p}_messages m ON m.seq = a.seq WHERE m.id = ?"
        )
        self.message_seq = f"SELECT seq FROM {p}_messages WHERE id = ?"
        self.resend = (
            f"UPDATE {p}_deliveries SET state = 'pending', attempts = 0, next_at = ?, "
            "token = NULL, lease_until = NULL, updated_at = ? "
            "WHERE seq = ? AND endpoint = ? AND state IN ('delivered', 'failed')"
        )
        self.recover = (
            f"UPDATE {p}_deliveries SET state = 'pending', attempts = 0, next_at = ?, "
            "updated_at = ? WHERE endpoint = ? AND state = 'failed' AND created_at >= ?"
        )
        self.hurry = (
            f"UPDATE {p}_deliveries SET next_at = ?, updated_at = ? WHERE endpoint = ? "
            "AND state = 'pending' AND created_at >= ? AND next_at > ?"
        )
        # The messages of the endpoint's tenant it never got (recorded while it was
        # disabled), for recover to queue; their types are matched in Python.
        self.missed = (
            f"SELECT m.seq, m.event_type, m.ordering_key FROM {p}_messages m "
            "WHERE m.tenant = ? AND m.created_at >= ? AND NOT EXISTS "
            f"(SELECT 1 FROM {p}_deliveries d WHERE d.seq = m.seq AND d.endpoint = ?) "
            f"AND m.created_at >= (SELECT created_at FROM {p}_endpoints WHERE name = ?)"
        )
        self.insert_missed = (
            f"INSERT INTO {p}_deliveries (endpoint, seq, ordering_key, state, next_at, "
            "created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)"
        )
        self.stats = (
            "SELECT e.name, e.enabled, "
            "coalesce(sum(CASE WHEN d.state = 'pending' THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN d.state = 'sending' THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN d.state = 'failed' THEN 1 ELSE 0 END), 0), "
            "min(CASE WHEN d.state IN ('pending', 'sending') THEN d.created_at END) "
            f"FROM {p}_endpoints e LEFT JOIN {p}_deliveries d ON d.endpoint = e.name "
            # Delivered rows (nearly all of them, in time) are never read: the index holds.
            "AND d.state IN ('pending', 'sending', 'failed') "
            "GROUP BY e.name, e.enabled ORDER BY e.name"
        )
        self.purgeable = (
            f"SELECT m.seq FROM {p}_messages m WHERE m.created_at < ? AND NOT EXISTS "
            f"(SELECT 1 FROM {p}_deliveries d WHERE d.seq = m.seq "
            "AND d.state IN ('pending', 'sending')) LIMIT ?"
        )
        self.purge = [
            f"DELETE FROM {p}_attempts WHERE seq IN ",
            f"DELETE FROM {p}_deliveries WHERE seq IN ",
            f"DELETE FROM {p}_messages WHERE seq IN ",
        ]
        self.messages_of = f"SELECT seq, id, event_type, body FROM {p}_messages WHERE seq IN "
        if dialect == "postgresql":
            for name, value in vars(self).items():
                if isinstance(value, str):
                    setattr(self, name, value.replace("?", "%s"))
            self.delete_endpoint = [s.replace("?", "%s") for s in self.delete_endpoint]

    def record(self, n: int) -> str:
        """``_record`` for ``n`` outcomes (on PostgreSQL: one array per column)."""
        if self.dialect == "postgresql":
            return self._record.replace("(VALUES {rows})", f"(SELECT * FROM {_UNNEST_RECORD})")
        return self._record.replace("{rows}", self.rows(n, 10))

    def insert_attempts(self, n: int) -> str:
        if self.dialect == "postgresql":
            return self._insert_attempts.replace(
                "VALUES {rows}", f"SELECT * FROM {_UNNEST_ATTEMPTS}"
            )
        return self._insert_attempts.replace("{rows}", self.rows(n, 7))

    def columns(self, rows: Sequence[tuple[object, ...]]) -> list[object]:
        """The parameters of ``record``/``insert_attempts``: on PostgreSQL one array per
        column (a few parameters to convert instead of thousands), on SQLite the rows'."""
        if self.dialect == "postgresql":
            return [list(column) for column in zip(*rows, strict=True)]
        return [value for row in rows for value in row]

    def rows(self, n: int, width: int) -> str:
        row = "(" + ", ".join([self.mark] * width) + ")"
        return ", ".join([row] * n)

    def messages(self, seqs: Sequence[int]) -> tuple[str, list[object]]:
        """The query and parameters that read the messages ``seqs`` (an array on
        PostgreSQL, one parameter each on SQLite)."""
        if self.dialect == "postgresql":
            return self.messages_of + "(SELECT unnest(%s::bigint[]))", [list(seqs)]
        return self.messages_of + self.placeholders(len(seqs)), list(seqs)

    def placeholders(self, n: int) -> str:
        """One row of ``n`` parameters: ``(?, ?, ...)``."""
        return self.rows(1, n)


# -- connections -------------------------------------------------------------------------------


def _listed(event_types: object) -> tuple[Any, ...]:
    if not isinstance(event_types, Iterable) or isinstance(event_types, bytes | dict):
        _fail("event_types", "a list of event types such as 'invoice.paid'", event_types)
    return tuple(event_types)


def _delays(schedule: object) -> tuple[Any, ...]:
    if not isinstance(schedule, Sequence) or isinstance(schedule, str | bytes):
        _fail("schedule", "a list of delays in seconds", schedule)
    return tuple(schedule)


# -- the public API ----------------------------------------------------------------------------


class Outbox:
    """Webhooks recorded with the change that causes them, delivered from the same database.

    Example:
        >>> outbox = Outbox("sqlite:///app.db", event_types=["invoice.paid"])
        >>> outbox.create_tables()
        >>> outbox.add_endpoint("acme", url="https://acme.example/hooks", secrets=[secret])
        >>> db.execute("BEGIN IMMEDIATE")  # the application's sqlite3 connection
        >>> db.execute("UPDATE invoices SET paid = 1 WHERE id = ?", (42,))
        >>> outbox.enqueue(db, "invoice.paid", {"invoice": 42})
        'msg_...'
        >>> db.execute("COMMIT")  # the invoice and its webhook, together

    Args:
        database: where the tables are, as the worker and the admin side reach it
            (``sqlite:///path`` or ``postgresql://...``); the application's own database.
        event_types: the types the application sends (``invoice.*`` covers a family);
            None accepts any well-formed type.
        prefix: the tables' name prefix.
        max_payload: bytes of a message's JSON body at most.
        schedule: when deliveries are attempted (default: Standard Webhooks' example).
        disable_after: seconds an endpoint may keep failing before it is disabled (5 days).
        retention: seconds a message is kept once nothing waits to deliver it (30 days;
            at least the schedule's span), for ``attempts``, ``resend`` and ``recover``.
        clock: source of ``now`` (tests inject ``ManualClock``).

    Warning:
        On SQLite, open the application's transaction with ``BEGIN IMMEDIATE``: the
        worker writes to the same file, and a deferred transaction that reads first
        may fail with "database is locked" when it writes.
    """

    def __init__(
        self,
        database: str,
        *,
        event_types: Iterable[str] | None = None,
        prefix: str = DEFAULT_PREFIX,
        max_payload: int = MAX_PAYLOAD,
        schedule: RetrySchedule | Sequence[float] | None = None,
        disable_after: float = 5 * 86400.0,
        retention: float = 30 * 86400.0,
        clock: Clock | None = None,
    ) -> None:
        try:
            self.dialect: Dialect = database_dialect(database)
        except ValueError as exc:
            raise ConfigurationError(f"database: {exc}") from None
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            _fail("prefix", "a lower-case SQL name (letters, digits, _)", prefix)
        if event_types is not None:
            types = (event_types,) if isinstance(event_types, str) else _listed(event_types)
            for index, t in enumerate(types):
                if not is_event_pattern(t):
                    _fail(f"event_types[{index}]", "an event type such as 'invoice.paid'", t)
            event_types = types
        if not isinstance(max_payload, int) or not 1024 <= max_payload <= 16 * 1024 * 1024:
            _fail("max_payload", "bytes between 1024 and 16777216", max_payload)
        if not isinstance(schedule, RetrySchedule):
            schedule = RetrySchedule() if schedule is None else RetrySchedule(_delays(schedule))
        if not isinstance(disable_after, int | float) or not 60 <= disable_after <= 90 * 86400:
            _fail("disable_after", "seconds between 60 and 7776000 (90 days)", disable_after)
        self.database = database
        self.event_types: tuple[str, ...] | None = event_types
        self.prefix = prefix
        self.max_payload = max_payload
        self.schedule = schedule
        self.disable_after = float(disable_after)
        if not _is_seconds(retention) or not schedule.span < retention <= 3650 * 86400:
            _fail(
                "retention",
                f"seconds longer than the schedule's span ({schedule.span:g}) and at most "
                "315360000 (10 years)",
                retention,
            )
        self.retention = float(retention)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.sql = _Sql(prefix, self.dialect)
        self._sqlite = _Sql(prefix, "sqlite")
        self._postgres = _Sql(prefix, "postgresql")
        self._admin: Connection | None = None
        self._admin_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Outbox({self.database.split('@')[-1]!r}, prefix={self.prefix!r})"

    # -- schema ----------------------------------------------------------------------------

    def ddl(self, dialect: Dialect | None = None) -> str:
        """The ``CREATE TABLE IF NOT EXISTS`` script of the outbox's tables."""
        return _ddl(self.prefix, dialect or self.dialect)

    def create_tables(self) -> None:
        """Create the tables in ``database`` if they do not exist."""
        with self._connection().transaction() as cursor:
            for statement in self.ddl().split(";"):
                if statement.strip():
                    cursor.execute(statement)

    # -- recording (in the application's transaction) ----------------------------------------

    def enqueue(
        self,
        conn: sqlite3.Connection | psycopg.Connection[Any],
        event_type: str,
        payload: object,
        *,
        tenant: str = "default",
        event_id: str | None = None,
        ordering_key: str | None = None,
    ) -> str:
        """Record a message in ``conn``'s open transaction; returns its id.

        ``payload`` is the event's ``data`` (anything JSON can hold). Deliveries of one
        ``ordering_key`` to one endpoint are attempted one at a time, in order.

        Raises:
            ConfigurationError: an unknown or malformed event type, a payload over
                ``max_payload``, a malformed tenant, id or ordering key.
            RuntimeError: ``conn`` has no transaction open.
        """
        message_id, row, now = self._message(event_type, payload, tenant, event_id, ordering_key)
        sql = self._sql_of(conn)
        if not in_transaction(conn, starting=True):
            raise RuntimeError(_NO_TRANSACTION)
        if isinstance(conn, sqlite3.Connection):
            cursor: Any = conn.cursor()
            cursor.row_factory = None
        else:
            from psycopg.rows import tuple_row

            cursor = conn.cursor(row_factory=tuple_row)  # whatever the application's is
        steps = _enqueue_steps(sql, row, tenant, event_type, ordering_key, now)
        with translated():
            statement = next(steps, None)
            while statement is not None:
                cursor.execute(*statement)
                statement = _next(steps, cursor.fetchall() if cursor.description else [])
        return message_id

    async def aenqueue(
        self,
        conn: psycopg.AsyncConnection[Any],
        event_type: str,
        payload: object,
        *,
        tenant: str = "default",
        event_id: str | None = None,
        ordering_key: str | None = None,
    ) -> str:
        """``enqueue`` on a ``psycopg.AsyncConnection``."""
        import psycopg
        from psycopg.rows import tuple_row

        if not isinstance(conn, psycopg.AsyncConnection):
            raise TypeError(
                f"Outbox.aenqueue: expected a psycopg.AsyncConnection, got {type(conn)!r}"
            )
        message_id, row, now = self._message(event_type, payload, tenant, event_id, ordering_key)
        if not in_transaction(conn, starting=True):
            raise RuntimeError(_NO_TRANSACTION)
        steps = _enqueue_steps(self._postgres, row, tenant, event_type, ordering_key, now)
        with translated():
            async with conn.cursor(row_factory=tuple_row) as cursor:
                statement = next(steps, None)
                while statement is not None:
                    await cursor.execute(*statement)
                    rows = await cursor.fetchall() if cursor.description else []
                    statement = _next(steps, rows)
        return message_id

    def _sql_of(self, conn: object) -> _Sql:
        if isinstance(conn, sqlite3.Connection):
            return self._sqlite
        try:
            import psycopg
        except ImportError:  # pragma: no cover - then no psycopg connection exists either
            psycopg = None  # type: ignore[assignment]
        if psycopg is None or not isinstance(conn, psycopg.Connection):
            raise TypeError(
                "Outbox.enqueue: expected a sqlite3.Connection or a psycopg.Connection "
                f"(with a psycopg.AsyncConnection, use aenqueue), got {type(conn)!r}"
            )
        return self._postgres

    def _message(
        self,
        event_type: str,
        payload: object,
        tenant: str,
        event_id: str | None,
        ordering_key: str | None,
    ) -> tuple[str, tuple[object, ...], float]:
        if not is_event_type(event_type):
            _fail("event_type", "an event type such as 'invoice.paid'", event_type)
        if self.event_types is not None and not matches(event_type, self.event_types):
            _fail("event_type", f"one of {list(self.event_types)}", event_type)
        if not is_name(tenant):
            _fail("tenant", "1 to 64 of A-Z a-z 0-9 _ . : -", tenant)
        if event_id is None:
            event_id = "msg_" + _secrets.token_hex(13)
        elif not isinstance(event_id, str) or not is_event_id(event_id):
            _fail("event_id", "1 to 255 printable ASCII characters", event_id)
        if ordering_key is not None and not (
            isinstance(ordering_key, str) and _ORDERING_KEY.fullmatch(ordering_key)
        ):
            _fail("ordering_key", "1 to 200 printable ASCII characters", ordering_key)
        now = self.clock.now()
        try:
            document = {"type": event_type, "timestamp": _iso(now), "data": payload}
            body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"payload: expected JSON data, got {exc}") from None
        if len(body) > self.max_payload:
            _fail("payload", f"at most {self.max_payload} bytes as JSON", f"{len(body)} bytes")
        return event_id, (event_id, tenant, event_type, ordering_key, body, now), now

    # -- endpoints -------------------------------------------------------------------------

    def add_endpoint(
        self,
        name: str,
        *,
        url: str,
        secrets: Sequence[str],
        tenant: str = "default",
        event_types: Iterable[str] | None = None,
        rate_limit: str | None = None,
        concurrency: int = 10,
        enabled: bool = True,
    ) -> Endpoint:
        """Register a consumer's endpoint (messages recorded from now on reach it).

        ``secrets``: ``whsec_`` (v1 signatures) or ``whsk_`` (v1a, Ed25519) secrets; every
        one signs each delivery. ``rate_limit``: at most this many deliveries
        (``"10/second"``, shared by every worker). ``concurrency``: requests in flight.

        Raises:
            ConfigurationError: naming the field; nothing is created.
        """
        from surefoot.ratelimit import parse_limit

        if not is_name(name):
            _fail("name", "1 to 64 of A-Z a-z 0-9 _ . : -", name)
        if not is_name(tenant):
            _fail("tenant", "1 to 64 of A-Z a-z 0-9 _ . : -", tenant)
        check_url(url)
        if isinstance(secrets, str) or not isinstance(secrets, Sequence) or not secrets:
            _fail("secrets", "a list of 1 to 5 secrets", "<hidden>")
        if len(secrets) > _MAX_SECRETS:
            _fail("secrets", "at most 5 secrets", f"{len(secrets)} secrets")
        stored = [[check_secret(s, f"secrets[{i}]"), None] for i, s in enumerate(secrets)]
        types = self._accepted(event_types)
        if rate_limit is not None:
            try:
                parse_limit(rate_limit)
            except ConfigurationError as exc:
                raise ConfigurationError(f"rate_limit: {exc}") from None
        if (
            not isinstance(concurrency, int)
            or isinstance(concurrency, bool)
            or not 1 <= concurrency <= 1000
        ):
            _fail("concurrency", "requests in flight between 1 and 1000", concurrency)
        row = (
            name,
            tenant,
            url,
            json.dumps(stored),
            None if types is None else json.dumps(types),
            rate_limit,
            concurrency,
            1 if enabled else 0,
            self.clock.now(),
        )
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.insert_endpoint, row)
            if cursor.rowcount != 1:
                _fail("name", "a name no other endpoint has", name)
        return self.endpoint(name)

    def _accepted(self, event_types: Iterable[str] | None) -> list[str] | None:
        if event_types is None:
            return None
        types = [event_types] if isinstance(event_types, str) else list(_listed(event_types))
        if not types:
            _fail("event_types", "at least one type, or None for every type", types)
        for index, t in enumerate(types):
            if not is_event_pattern(t):
                _fail(f"event_types[{index}]", "an event type such as 'invoice.paid'", t)
            bare = t.removesuffix(".*")
            # Accepted: a declared type, a type or family within a declared family, or a
            # family that holds a declared type ("invoice.*" when "invoice.paid" is sent).
            if self.event_types is not None and not (
                matches(bare, self.event_types)
                or t in self.event_types
                or any(matches(declared, (t,)) for declared in self.event_types)
            ):
                _fail(f"event_types[{index}]", f"one of {list(self.event_types)}", t)
        return types

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint called ``name``; ``KeyError`` when there is none."""
        found = self.endpoints(name=name)
        if not found:
            raise KeyError(name)
        return found[0]

    def endpoints(self, *, tenant: str | None = None, name: str | None = None) -> list[Endpoint]:
        """Every endpoint (of ``tenant``), by name."""
        mark = self.sql.mark
        where, params = [], []
        for column, value in (("tenant", tenant), ("name", name)):
            if value is not None:
                where.append(f"{column} = {mark}")
                params.append(value)
        query = self.sql.endpoints + (" WHERE " + " AND ".join(where) if where else "")
        with self._connection().transaction() as cursor:
            cursor.execute(query + " ORDER BY name", params)
            rows = cursor.fetchall()
        now = self.clock.now()
        return [
            Endpoint(
                n,
                t,
                u,
                None if et is None else tuple(json.loads(et)),
                rl,
                c,
                bool(en),
                dr,
                fs,
                len(_live_secrets(s, now)),
            )
            for n, t, u, et, rl, c, en, dr, fs, s in rows
        ]

    def enable(self, name: str) -> Endpoint:
        """Enable ``name``: its undelivered messages go out again, from now."""
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.endpoint_enable, (name,))
            if cursor.rowcount != 1:
                raise KeyError(name)
        return self.endpoint(name)

    def disable(self, name: str, reason: str = "manual") -> Endpoint:
        """Stop delivering to ``name``: its undelivered messages wait until it is enabled;
        messages recorded meanwhile are not queued for it (``recover`` queues them).
        An endpoint already disabled keeps its first reason."""
        if not isinstance(reason, str) or not _REASON.fullmatch(reason):
            _fail("reason", "1 to 200 printable characters", reason)
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.endpoint_disable, (reason, name))
        return self.endpoint(name)

    def rotate_secret(self, name: str, secret: str, *, keep_old_for: float = 86400.0) -> Endpoint:
        """Sign with ``secret`` from now on, and with the current ones for ``keep_old_for``
        seconds more, so consumers can switch without dropping a delivery."""
        check_secret(secret, "secret")
        if not isinstance(keep_old_for, int | float) or not 0 <= keep_old_for <= 30 * 86400:
            _fail("keep_old_for", "seconds between 0 and 2592000 (30 days)", keep_old_for)
        now = self.clock.now()
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.secrets, (name,))
            row = cursor.fetchone()
            if row is None:
                raise KeyError(name)
            until = now + keep_old_for
            current = [[s, until if e is None else min(e, until)] for s, e in _stored(row[0], now)]
            kept = [[secret, None], *current][:_MAX_SECRETS]
            cursor.execute(self.sql.set_secrets, (json.dumps(kept), name))
        return self.endpoint(name)

    def remove_endpoint(self, name: str) -> None:
        """Delete ``name`` with its deliveries and attempts."""
        with self._connection().transaction() as cursor:
            for statement in self.sql.delete_endpoint:
                cursor.execute(statement, (name,))
            if cursor.rowcount != 1:
                raise KeyError(name)

    # -- deliveries ------------------------------------------------------------------------

    def deliveries(
        self,
        *,
        endpoint: str | None = None,
        state: DeliveryState | str | None = None,
        message_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries, newest first, filtered by endpoint, state and message."""
        mark = self.sql.mark
        where: list[str] = []
        params: list[object] = []
        for column, value in (("d.endpoint", endpoint), ("m.id", message_id)):
            if value is not None:
                where.append(f"{column} = {mark}")
                params.append(value)
        if state is not None:
            where.append(f"d.state = {mark}")
            params.append(DeliveryState(state).value)
        query = self.sql.deliveries + (" WHERE " + " AND ".join(where) if where else "")
        query += f" ORDER BY d.seq DESC LIMIT {mark}"
        params.append(max(1, min(int(limit), 10000)))
        with self._connection().transaction() as cursor:
            cursor.execute(query, params)
            rows = cursor.fetchall()
        return [
            Delivery(i, e, t, DeliveryState(s), a, n if s == "pending" else None, ls, le, c, u)
            for i, e, t, s, a, n, ls, le, c, u in rows
        ]

    def attempts(self, message_id: str, *, endpoint: str | None = None) -> list[Attempt]:
        """Every attempt to deliver ``message_id``, oldest first."""
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.attempts, (message_id,))
            rows = cursor.fetchall()
        found = [Attempt(*row) for row in rows if endpoint is None or row[1] == endpoint]
        return sorted(found, key=lambda a: (a.endpoint, a.at, a.attempt))

    def resend(self, message_id: str, endpoint: str) -> bool:
        """Deliver a delivered or failed message to ``endpoint`` again, now, with a fresh
        schedule; False when it is still pending or in flight. ``KeyError``: no such one."""
        now = self.clock.now()
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.message_seq, (message_id,))
            row = cursor.fetchone()
            if row is None:
                raise KeyError(message_id)
            cursor.execute(self.sql.resend, (now, now, row[0], endpoint))
            if cursor.rowcount == 1:
                return True
        if not self.deliveries(message_id=message_id, endpoint=endpoint, limit=1):
            raise KeyError(endpoint)
        return False

    def recover(self, endpoint: str, since: float) -> int:
        """Deliver every message for ``endpoint`` recorded at or after ``since`` (a
        timestamp) that it has not received, now: the failed ones again (with a fresh
        schedule), those waiting for their next attempt at once, and those recorded while
        it was disabled (which it never got); returns how many were queued."""
        found = self.endpoint(endpoint)
        now = self.clock.now()
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.recover, (now, now, endpoint, since))
            queued = int(cursor.rowcount)
            cursor.execute(self.sql.hurry, (now, now, endpoint, since, now))
            queued += int(cursor.rowcount)
            cursor.execute(self.sql.missed, (found.tenant, since, endpoint, endpoint))
            missed = [
                (endpoint, seq, ordering_key, now, now, now)
                for seq, event_type, ordering_key in cursor.fetchall()
                if matches(event_type, found.event_types)
            ]
            if missed:
                cursor.executemany(self.sql.insert_missed, missed)
        return queued + len(missed)

    def purge(self, *, batch: int = 1000) -> int:
        """Delete up to ``batch`` messages older than ``retention`` that nothing waits to
        deliver, with their deliveries and attempts; returns how many (workers call it)."""
        before = self.clock.now() - self.retention
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.purgeable, (before, batch))
            seqs = [row[0] for row in cursor.fetchall()]
            if seqs:
                marks = self.sql.placeholders(len(seqs))
                for statement in self.sql.purge:
                    cursor.execute(statement + marks, seqs)
        return len(seqs)

    def stats(self) -> list[EndpointStats]:
        """Every endpoint's backlog (what the metrics export)."""
        now = self.clock.now()
        with self._connection().transaction() as cursor:
            cursor.execute(self.sql.stats)
            rows = cursor.fetchall()
        return [
            EndpointStats(
                n, bool(e), int(p), int(s), int(f), None if o is None else max(0.0, now - o)
            )
            for n, e, p, s, f, o in rows
        ]

    # -- what a worker does (on its own connection) ------------------------------------------

    def connect(self) -> Connection:
        """A new connection to ``database`` for a worker (one per worker).

        On PostgreSQL its commits do not wait for the disk (``synchronous_commit`` off):
        a claim or a record lost in a server crash only sends a delivery once more, which
        at least once allows; the application's own commits are untouched.
        """
        return Connection(self.database, self.dialect, durable=False)

    def claim(
        self, conn: Connection, *, limit: int, lease: float, endpoints: int = 50
    ) -> list[Claimed]:
        """Take up to ``limit`` due deliveries, each endpoint's under its concurrency."""
        sql, now = self.sql, self.clock.now()
        token = _secrets.token_hex(8)
        taken: list[tuple[tuple[Any, ...], int, int]] = []
        with conn.transaction() as cursor:
            cursor.execute(sql.claim_endpoints, (now, now, now, now, endpoints))
            for row in cursor.fetchall():
                if len(taken) >= limit:
                    break
                name, concurrency = row[0], row[4]
                cursor.execute(sql.in_flight, (name, now))
                room = min(concurrency - cursor.fetchone()[0], limit - len(taken))
                if room <= 0:
                    continue
                cursor.execute(sql.claim, (token, now + lease, now, name, name, now, now, room))
                taken.extend((row, seq, attempts) for seq, attempts in cursor.fetchall())
            if not taken:
                return []
            # Each endpoint claimed for goes to the back of the next claims' rotation.
            names = sorted({row[0] for row, _, _ in taken})
            cursor.execute(sql.touch_endpoints + sql.placeholders(len(names)), [now, *names])
            cursor.execute(*sql.messages(sorted({seq for _, seq, _ in taken})))
            messages = {seq: (i, t, bytes(b)) for seq, i, t, b in cursor.fetchall()}
        live: dict[str, tuple[str, ...]] = {}
        claimed = []
        for row, seq, attempts in taken:
            name, url, secrets_json, rate_limit, _, failing_since = row
            if name not in live:
                live[name] = _live_secrets(secrets_json, now)
            message_id, event_type, body = messages[seq]
            claimed.append(
                Claimed(
                    name,
                    seq,
                    message_id,
                    event_type,
                    body,
                    attempts,
                    token,
                    url,
                    live[name],
                    rate_limit,
                    failing_since,
                )
            )
        return claimed

    def record(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Record ``outcomes``; returns those whose claim still held (Rule 2 of ``_core``).

        A handful of statements whatever the number of outcomes: one UPDATE of the
        deliveries whose claims still hold (it returns them), one INSERT of their attempts,
        one UPDATE per endpoint.
        """
        sql, now = self.sql, self.clock.now()
        held: set[tuple[str, int]] = set()
        with conn.transaction() as cursor:
            for start in range(0, len(outcomes), _CHUNK):
                chunk = outcomes[start : start + _CHUNK]
                rows = [
                    (
                        o.claimed.endpoint,
                        o.claimed.seq,
                        o.claimed.token,
                        o.state.value,
                        o.next_at if o.next_at is not None else now,
                        0 if o.attempted else 1,
                        o.status,
                        1 if o.attempted else 0,
                        o.error,
                        now,
                    )
                    for o in chunk
                ]
                cursor.execute(sql.record(len(chunk)), sql.columns(rows))
                held.update((endpoint, seq) for endpoint, seq in cursor.fetchall())
            kept = [o for o in outcomes if (o.claimed.endpoint, o.claimed.seq) in held]
            attempted = [o for o in kept if o.attempted]
            for start in range(0, len(attempted), _CHUNK):
                chunk = attempted[start : start + _CHUNK]
                attempts = [
                    (c.endpoint, c.seq, c.attempt, o.at, o.status, o.error, o.latency)
                    for o in chunk
                    for c in (o.claimed,)
                ]
                cursor.execute(sql.insert_attempts(len(chunk)), sql.columns(attempts))
            if attempted:
                cursor.executemany(sql.endpoint_result, _endpoint_results(attempted))
                disabled: dict[str, str] = {}
                for o in attempted:
                    if o.disable is not None:
                        disabled.setdefault(o.claimed.endpoint, o.disable)
                if disabled:
                    cursor.executemany(sql.endpoint_disable, [(r, e) for e, r in disabled.items()])
        return kept

    # -- plumbing ------------------------------------------------------------------------------

    def _connection(self) -> Connection:
        with self._admin_lock:
            if self._admin is None:
                self._admin = Connection(self.database, self.dialect)
            return self._admin

    def close(self) -> None:
        """Close the admin side's connection (a worker closes its own)."""
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None


_NO_TRANSACTION = (
    "Outbox.enqueue runs inside the caller's transaction, and this connection has none "
    "open: BEGIN (BEGIN IMMEDIATE on SQLite) first"
)


_Step = tuple[str, tuple[object, ...]]


def _enqueue_steps(
    sql: _Sql,
    row: tuple[object, ...],
    tenant: str,
    event_type: str,
    ordering_key: str | None,
    now: float,
) -> Generator[_Step, list[tuple[Any, ...]], None]:
    """The statements of one ``enqueue`` (no I/O): the driver runs each and sends back its
    rows. The message first; if its id was recorded already, nothing more (Rule 2);
    else one delivery per enabled endpoint of the tenant that takes the type."""
    inserted = yield sql.insert_message, row
    if not inserted:
        return
    endpoints = yield sql.matching, (tenant,)
    for name, types in endpoints:
        if matches(event_type, None if types is None else tuple(json.loads(types))):
            yield sql.insert_delivery, (name, inserted[0][0], ordering_key, now, now, now)


def _next(steps: Generator[_Step, list[tuple[Any, ...]], None], rows: list[Any]) -> _Step | None:
    """The statement after the one that returned ``rows``; None when there is none."""
    try:
        return steps.send(rows)
    except StopIteration:
        return None


def _stored(secrets_json: str, now: float) -> list[tuple[str, float | None]]:
    """An endpoint's stored secrets that still sign at ``now``, with their expiry (None:
    until rotated out)."""
    return [(s, e) for s, e in json.loads(secrets_json) if e is None or e > now]


def _live_secrets(secrets_json: str, now: float) -> tuple[str, ...]:
    return tuple(s for s, _ in _stored(secrets_json, now))


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _endpoint_results(attempted: Sequence[Outcome]) -> list[tuple[object, ...]]:
    """The parameters of ``endpoint_result``: what a batch of attempts, in order, does to
    each endpoint's ``failing_since`` and pause (Rule 4 of ``_core``)."""
    found: dict[str, list[Any]] = {}  # endpoint: [reset, since, pause]
    for o in attempted:
        entry = found.setdefault(o.claimed.endpoint, [False, None, 0.0])
        if o.state is DeliveryState.DELIVERED:
            entry[0], entry[1] = True, None
        elif entry[1] is None:
            entry[1] = o.at
        entry[2] = max(entry[2], o.paused_until or 0.0)
    return [
        (reset, since, since, pause, pause, endpoint)
        for endpoint, (reset, since, pause) in found.items()
    ]


def _iso(now: float) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
