"""Exactly once inside the application's own transaction: ``TransactionalKeys``.

``IdempotencyMiddleware`` keeps its records in a store beside the application's database,
so between the handler's COMMIT and the record of its response there is a window in which
a crash leaves work done and no record of it (the lease and ``on_lease_expiry`` then decide).
Here the key row and its response are written through the application's own connection,
inside the application's own transaction, so they commit with the business writes or not
at all. Theory of operation, for one request::

    BEGIN                     (the caller; BEGIN IMMEDIATE on SQLite)
    claim = keys.claim(conn, principal=..., key=..., method=..., path=..., payload=...)
                              INSERT the key row with no response yet
    claim.replay is not None  an earlier request with this key committed: send it again
    ...business writes...     (the caller)
    claim.complete(status, headers, body)
                              UPDATE the row with the response
    COMMIT                    (the caller): row, response and business writes together

Rule 1: the key row is written first, by one ``INSERT ... ON CONFLICT DO NOTHING`` on the
        scoped key (primary key). A second transaction with the same key waits until the
        first one ends: on PostgreSQL on the key's index entry, bounded by ``lock_timeout``
        (then ``IdempotencyRequestInProgress``, 409); on SQLite at ``BEGIN IMMEDIATE``,
        which takes the database's single write lock. Afterwards it sees the committed row
        and replays, or, if the first rolled back, no row, and executes.
Rule 2: surefoot never commits or rolls back. Until the caller's COMMIT nothing of the
        claim is visible to anyone else; after it, the key, its response and the business
        writes are all visible. A crash before COMMIT leaves none of them.
Rule 3: the fingerprint is checked first (``_core`` Rule 2): the same key with another
        request is ``IdempotencyKeyReused`` (422) whatever the row holds, and writes nothing.
Rule 4: a claim completes once, inside the transaction that claimed it: ``complete`` checks
        that the connection is still in a transaction and updates only the row with the
        claim's own token that has no response yet; anything else is a ``RuntimeError``.
        On PostgreSQL a deferred constraint trigger also fails the COMMIT of a transaction
        that claimed a key and never completed it, so business writes never commit
        without their response.
Rule 5: a committed row without a response (SQLite only, when a caller committed without
        completing) is never executed again: it answers ``IdempotencyOutcomeUnknown`` (409)
        until it expires, or until that claim completes in a later transaction.
Rule 6: a row is live until ``expires_at`` (``ttl`` after its completion); after that a
        claim takes it over with a conditional ``UPDATE`` and executes. ``purge`` deletes
        expired rows in batches and, on PostgreSQL, skips rows another transaction holds.
Rule 7: database errors are translated here, in one context manager per driver: a lock or
        serialisation conflict is ``IdempotencyRequestInProgress``, anything else
        ``StoreUnavailable``; the driver's text stays on ``__cause__``, never in a response.

The statements of a claim are one generator flow (``_claim_flow``, no I/O, decisions by
``_core.begin``) driven by a sync driver (``sqlite3``, ``psycopg.Connection``) and an
async one (``psycopg.AsyncConnection``). ``Claim`` and ``AsyncClaim`` share the claimed
row (``_Claim``) and the checks of a completion (``TransactionalKeys._completion``): each
only runs the UPDATE on its own kind of connection.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, NoReturn, Protocol

from surefoot._json import NOT_JSON, parse_json_body
from surefoot._sql import in_transaction
from surefoot.clock import Clock, SystemClock
from surefoot.errors import (
    ConfigurationError,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
    IdempotencyRequestInProgress,
    IdempotencyResponseNotStored,
    StoreUnavailable,
)
from surefoot.idempotency import _core
from surefoot.idempotency._core import (
    Begin,
    Decision,
    InProgress,
    Mismatch,
    NotStored,
    Record,
    Replay,
    Reserved,
    State,
    StoredResponse,
    scoped_key,
)
from surefoot.idempotency._fingerprint import fingerprint
from surefoot.idempotency._key import InvalidKey, parse_key
from surefoot.idempotency._policy import _MAX_TTL, _MIN_TTL

if TYPE_CHECKING:
    import psycopg

__all__ = ["AsyncClaim", "Claim", "TransactionalKeys"]

DEFAULT_TABLE = "surefoot_transactional_keys"
_RETRY_AFTER = 1
#: Claim attempts before a key that keeps changing under us is reported as in progress.
_ATTEMPTS = 3
_IDENTIFIER = re.compile(r"(?:([a-z_][a-z0-9_]{0,47})\.)?([a-z_][a-z0-9_]{0,47})")
_COLUMNS = "fingerprint, expires_at, status, headers, body"

# PostgreSQL: lock_timeout is set for the claim only, then put back as the caller had it.
# OFFSET 0 keeps the subquery from being flattened, so the old value is read before the
# new one is set.
_SET_LOCK_TIMEOUT = (
    "SELECT p.prev, set_config('lock_timeout', %s, true) "
    "FROM (SELECT current_setting('lock_timeout') AS prev OFFSET 0) AS p"
)
_RESTORE_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %s, true)"


class _Statements(NamedTuple):
    """The SQL of one table in one dialect."""

    insert: str
    select: str
    take_over: str
    complete: str
    purge: str


def _statements(table: str, dialect: Literal["sqlite", "postgresql"]) -> _Statements:
    # Identifiers come from the validated table name only; values are always parameters.
    sql = _Statements(
        insert=(
            f"INSERT INTO {table} (key, fingerprint, token, created_at, expires_at) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
        ),
        select=f"SELECT {_COLUMNS} FROM {table} WHERE key = ?",  # noqa: S608
        take_over=(
            f"UPDATE {table} SET fingerprint = ?, token = ?, created_at = ?, "  # noqa: S608
            "expires_at = ?, status = NULL, headers = NULL, body = NULL "
            "WHERE key = ? AND expires_at <= ?"
        ),
        complete=(
            f"UPDATE {table} SET status = ?, headers = ?, body = ?, expires_at = ? "  # noqa: S608
            "WHERE key = ? AND token = ? AND status IS NULL"
        ),
        purge=(
            f"DELETE FROM {table} WHERE rowid IN "  # noqa: S608
            f"(SELECT rowid FROM {table} WHERE expires_at <= ? LIMIT ?)"
            if dialect == "sqlite"
            # SKIP LOCKED: never wait for (or delete under) a transaction taking a row over.
            else f"DELETE FROM {table} WHERE key IN "  # noqa: S608
            f"(SELECT key FROM {table} WHERE expires_at <= ? LIMIT ? FOR UPDATE SKIP LOCKED)"
        ),
    )
    if dialect == "sqlite":
        return sql
    return _Statements(*(s.replace("?", "%s") for s in sql))


# -- the flow of a claim (no I/O) ------------------------------------------------------------


class _Statement(NamedTuple):
    op: Literal["insert", "select", "take_over"]
    params: tuple[object, ...]


class _Result(NamedTuple):
    rowcount: int
    row: tuple[Any, ...] | None


_Flow = Generator[_Statement, _Result, Decision]


def _claim_flow(store_key: str, fingerprint: str, token: str, ttl: float, now: float) -> _Flow:
    """The statements of one claim; the driver sends back each one's result.

    Returns ``Reserved`` (this request executes), ``Replay``, ``NotStored``, ``Mismatch``,
    ``Unknown`` (a committed row without a response), or ``InProgress`` when the row kept
    changing under the claim (purged or taken over by others) ``_ATTEMPTS`` times.
    """
    request = Begin(fingerprint, token, lease=ttl, ttl=ttl, on_lease_expiry="unknown")
    for _ in range(_ATTEMPTS):
        inserted = yield _Statement("insert", (store_key, fingerprint, token, now, now + ttl))
        if inserted.rowcount == 1:
            return Reserved(token, 1, took_over=False)
        found = (yield _Statement("select", (store_key,))).row
        if found is None:
            continue  # purged between the two statements: insert again
        decision, _ = _core.begin(_record(found, ttl), request, now)
        if not isinstance(decision, Reserved):
            return decision
        # The row has expired: take it over, unless someone else just did.
        params = (fingerprint, token, now, now + ttl, store_key, now)
        if (yield _Statement("take_over", params)).rowcount == 1:
            return Reserved(token, 1, took_over=True)
    return InProgress(now)


def _record(row: tuple[Any, ...], ttl: float) -> Record:
    """A visible row as a ``_core`` record: completed, or committed without a response."""
    fp, expires_at, status, headers, body = row
    if status is None:
        return Record(State.UNKNOWN, fp, "", 1, expires_at, expires_at, ttl)
    pairs = tuple(
        (n.encode("latin-1"), v.encode("latin-1")) for n, v in json.loads(headers or "[]")
    )
    response = StoredResponse(status, pairs, None if body is None else bytes(body))
    return Record(State.COMPLETED, fp, "", 1, expires_at, expires_at, ttl, response)


def _replay_of(decision: Decision) -> StoredResponse | None:
    """The claim's replay (None: execute), or the catalogue error the caller must answer."""
    if isinstance(decision, Reserved):
        return None
    if isinstance(decision, Replay):
        return decision.response
    if isinstance(decision, Mismatch):
        raise IdempotencyKeyReused()
    if isinstance(decision, NotStored):
        raise IdempotencyResponseNotStored(original_status=decision.status)
    if isinstance(decision, InProgress):
        raise IdempotencyRequestInProgress(retry_after=_RETRY_AFTER)
    raise IdempotencyOutcomeUnknown()


def _drive(flow: _Flow, execute: Callable[[_Statement], _Result]) -> Decision:
    try:
        statement = next(flow)
        while True:
            statement = flow.send(execute(statement))
    except StopIteration as done:
        decision: Decision = done.value
        return decision


async def _adrive(flow: _Flow, execute: Callable[[_Statement], Awaitable[_Result]]) -> Decision:
    try:
        statement = next(flow)
        while True:
            statement = flow.send(await execute(statement))
    except StopIteration as done:
        decision: Decision = done.value
        return decision


# -- drivers ---------------------------------------------------------------------------------


class _Cursor(Protocol):
    """What the sync driver needs of a ``sqlite3`` or ``psycopg`` cursor."""

    @property
    def description(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...

    def execute(self, query: str, params: tuple[object, ...], /) -> Any: ...

    def fetchone(self) -> Any: ...


def _run(cursor: _Cursor, sql: str, params: tuple[object, ...]) -> _Result:
    cursor.execute(sql, params)
    row = cursor.fetchone() if cursor.description else None
    return _Result(cursor.rowcount, None if row is None else tuple(row))


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        # "database is locked" here means the caller's transaction did not take the write
        # lock up front (BEGIN IMMEDIATE) and lost it to another writer: nothing was done.
        raise StoreUnavailable(retry_after=_RETRY_AFTER) from exc


@contextmanager
def _psycopg_errors() -> Iterator[None]:
    import psycopg

    try:
        yield
    except (psycopg.errors.LockNotAvailable, psycopg.errors.SerializationFailure) as exc:
        # lock_timeout ran out while another transaction held the key, or (REPEATABLE READ,
        # SERIALIZABLE) that transaction committed after this one's snapshot: a retry in a
        # new transaction gets its result.
        raise IdempotencyRequestInProgress(retry_after=_RETRY_AFTER) from exc
    except psycopg.Error as exc:
        raise StoreUnavailable(retry_after=_RETRY_AFTER) from exc


def _sqlite_cursor(conn: sqlite3.Connection) -> sqlite3.Cursor:
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples, whatever the application's connection uses
    return cursor


def _check_psycopg(conn: object, method: str, *, async_: bool) -> None:
    """Refuse anything but the psycopg connection class ``method`` works with."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - then no psycopg connection exists either
        cls: type | None = None
    else:
        cls = psycopg.AsyncConnection if async_ else psycopg.Connection
    if cls is None or not isinstance(conn, cls):
        expected = (
            "a psycopg.AsyncConnection"
            if async_
            else "a sqlite3.Connection or a psycopg.Connection (with a psycopg.AsyncConnection, "
            f"use a{method})"
        )
        raise TypeError(f"TransactionalKeys.{method}: expected {expected}, got {type(conn)!r}")


def _require_transaction(conn: sqlite3.Connection | Any) -> None:
    if not in_transaction(conn, starting=True):
        raise RuntimeError(
            "TransactionalKeys.claim runs inside the caller's transaction, and this "
            "connection has none open: BEGIN (BEGIN IMMEDIATE on SQLite) first"
        )


# -- the public API ----------------------------------------------------------------------------


class TransactionalKeys:
    """Idempotency keys recorded in the application's own transaction (SQLite, PostgreSQL).

    Example:
        >>> keys = TransactionalKeys(ttl=86400)
        >>> db.execute("BEGIN IMMEDIATE")  # sqlite3.Connection(isolation_level=None)
        >>> claim = keys.claim(
        ...     db, principal="cus_42", key=idempotency_key,
        ...     method="POST", path="/transfers", payload=body,
        ... )
        >>> if claim.replay is not None:
        ...     db.execute("ROLLBACK")
        ...     return claim.replay  # the first response, byte for byte
        >>> db.execute("INSERT INTO transfers ...")
        >>> stored = claim.complete(201, {"content-type": "application/json"}, response_body)
        >>> db.execute("COMMIT")  # the transfer and the key's response, together

    Args:
        table: the key table (``name`` or ``schema.name``, lower case), created by
            ``ddl(...)`` or, on PostgreSQL, by migration ``0002_transactional``.
        ttl: seconds a key answers with its response after completion (1 minute to 90 days).
        scope: ``"principal"`` (a key is unique per client) or ``"principal_route"``
            (per client, method and path).
        ignore_fields: JSON fields (dotted paths) left out of the fingerprint.
        header: the header that carried the key, named in 400 answers.
        lock_timeout: PostgreSQL: seconds a claim waits for another transaction holding
            the same key before ``IdempotencyRequestInProgress``; None: the connection's
            own ``lock_timeout``.
        clock: source of ``now`` (tests inject ``ManualClock``).

    Warning:
        On SQLite, open the transaction with ``BEGIN IMMEDIATE``. A deferred ``BEGIN``
        still never executes a request twice, but a concurrent duplicate then fails with
        ``StoreUnavailable`` instead of waiting for the first one and replaying it.
        On SQLite, too, a transaction that claims and commits without ``complete`` leaves
        a key that answers ``IdempotencyOutcomeUnknown`` until it expires (PostgreSQL
        refuses such a COMMIT).
    """

    def __init__(
        self,
        *,
        table: str = DEFAULT_TABLE,
        ttl: float = 86400.0,
        scope: Literal["principal", "principal_route"] = "principal",
        ignore_fields: Iterable[str] = (),
        header: str = "Idempotency-Key",
        lock_timeout: float | None = 5.0,
        clock: Clock | None = None,
    ) -> None:
        match = _IDENTIFIER.fullmatch(table) if isinstance(table, str) else None
        if match is None:
            _fail("table", "a lower-case SQL name or schema.name (letters, digits, _)", table)
        if not _MIN_TTL <= ttl <= _MAX_TTL:
            _fail("ttl", f"seconds between {_MIN_TTL:.0f} and {_MAX_TTL:.0f} (90 days)", ttl)
        if scope not in ("principal", "principal_route"):
            _fail("scope", "'principal' or 'principal_route'", scope)
        if isinstance(ignore_fields, str):
            _fail("ignore_fields", "a list of field names or dotted paths", ignore_fields)
        fields = tuple(ignore_fields)
        if any(not f or not isinstance(f, str) for f in fields):
            _fail("ignore_fields", "non-empty field names or dotted paths", fields)
        if not header or not header.isascii() or " " in header:
            _fail("header", "an HTTP header name", header)
        if lock_timeout is not None and not lock_timeout > 0:
            _fail("lock_timeout", "seconds greater than 0, or None", lock_timeout)
        if clock is not None and not isinstance(clock, Clock):
            _fail("clock", "a Clock (an object with now())", clock)
        self.table = table
        self.ttl = float(ttl)
        self.scope = scope
        self.ignore_fields = fields
        self.header = header
        self.lock_timeout = lock_timeout
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._schema, self._name = match.group(1), match.group(2)
        self._ignore_paths = tuple(tuple(f.split(".")) for f in fields)
        self._sqlite = _statements(table, "sqlite")
        self._postgres = _statements(table, "postgresql")

    def __repr__(self) -> str:
        return (
            f"TransactionalKeys(table={self.table!r}, ttl={self.ttl!r}, scope={self.scope!r}, "
            f"lock_timeout={self.lock_timeout!r})"
        )

    # -- claiming ------------------------------------------------------------------------

    def claim(
        self,
        conn: sqlite3.Connection | psycopg.Connection[Any],
        *,
        principal: str,
        key: str | None,
        method: str,
        path: str,
        payload: object = None,
    ) -> Claim:
        """Claim ``key`` inside the transaction open on ``conn`` (SQLite or sync psycopg).

        Args:
            conn: the application's connection, inside its own open transaction.
            principal: who is calling; keys of different principals never meet.
            key: the client's key as sent (a raw token or a structured-field string), or
                None when the request carried none.
            method: the request's method.
            path: the request's path (with its query string when that matters), or a
                route template with ``scope="principal_route"``.
            payload: the request body: its raw bytes (JSON compared semantically, other
                bodies by their bytes), or the decoded JSON value (a ``dict``, as from
                ``model.model_dump(mode="json")``), or None for no body.

        Returns:
            The claim: ``claim.replay`` is the stored response to send again, or None
            when this request executes and then calls ``claim.complete``.

        Raises:
            IdempotencyKeyMissing: ``key`` is None (400).
            IdempotencyKeyInvalid: the key is malformed (400).
            IdempotencyKeyReused: the key was used with a different request (422).
            IdempotencyRequestInProgress: another transaction held the key longer than
                ``lock_timeout`` (409, retry in a new transaction).
            IdempotencyOutcomeUnknown: the key was committed without a response (409).
            StoreUnavailable: the database failed (503); the transaction must roll back.
            RuntimeError: ``conn`` has no transaction open.
        """
        is_sqlite = isinstance(conn, sqlite3.Connection)
        if not is_sqlite:
            _check_psycopg(conn, "claim", async_=False)
        _require_transaction(conn)
        store_key, fp = self._prepare(principal, key, method, path, payload)
        token = secrets.token_hex(12)
        flow = _claim_flow(store_key, fp, token, self.ttl, self.clock.now())
        if isinstance(conn, sqlite3.Connection):
            with _sqlite_errors(), closing(_sqlite_cursor(conn)) as cursor:
                lite = self._sqlite
                decision = _drive(flow, lambda s: _run(cursor, getattr(lite, s.op), s.params))
        else:
            from psycopg.rows import tuple_row

            with _psycopg_errors(), conn.cursor(row_factory=tuple_row) as cur:
                prev = self._set_lock_timeout(cur)
                sql = self._postgres
                decision = _drive(flow, lambda s: _run(cur, getattr(sql, s.op), s.params))
                if prev is not None:
                    cur.execute(_RESTORE_LOCK_TIMEOUT, (prev,))
        return Claim(self, conn, store_key, token, _replay_of(decision))

    async def aclaim(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        principal: str,
        key: str | None,
        method: str,
        path: str,
        payload: object = None,
    ) -> AsyncClaim:
        """``claim`` inside the transaction open on a ``psycopg.AsyncConnection``.

        Example:
            >>> async with conn.transaction():
            ...     claim = await keys.aclaim(conn, principal=p, key=k, method="POST",
            ...                               path="/transfers", payload=body)
            ...     if claim.replay is None:
            ...         await conn.execute("INSERT INTO transfers ...")
            ...         await claim.acomplete(201, headers, response_body)

        Arguments, result and errors are those of ``claim``.
        """
        _check_psycopg(conn, "aclaim", async_=True)
        _require_transaction(conn)
        store_key, fp = self._prepare(principal, key, method, path, payload)
        token = secrets.token_hex(12)
        flow = _claim_flow(store_key, fp, token, self.ttl, self.clock.now())
        sql = self._postgres
        from psycopg.rows import tuple_row

        with _psycopg_errors():
            async with conn.cursor(row_factory=tuple_row) as cur:

                async def execute(statement: _Statement) -> _Result:
                    await cur.execute(getattr(sql, statement.op), statement.params)
                    row = await cur.fetchone() if cur.description else None
                    return _Result(cur.rowcount, row)

                prev = None
                if self.lock_timeout is not None:
                    await cur.execute(_SET_LOCK_TIMEOUT, (self._lock_timeout_ms(),))
                    prev = _first(await cur.fetchone())
                decision = await _adrive(flow, execute)
                if prev is not None:
                    await cur.execute(_RESTORE_LOCK_TIMEOUT, (prev,))
        return AsyncClaim(self, conn, store_key, token, _replay_of(decision))

    def _prepare(
        self, principal: str, key: str | None, method: str, path: str, payload: object
    ) -> tuple[str, str]:
        """The scoped store key and the request's fingerprint; raises for a bad key."""
        method = method.upper()
        if key is None:
            raise IdempotencyKeyMissing(method=method, path=path, header=self.header)
        try:
            # An HTTP header carries bytes: a character no header byte stands for is not
            # replaced (that would map "pay-€" onto "pay-?"), it makes the key invalid.
            raw = key.encode("latin-1")
        except UnicodeEncodeError:
            raise IdempotencyKeyInvalid(
                header=self.header, reason="it contains a non-printable character"
            ) from None
        try:
            parsed_key = parse_key([raw])
        except InvalidKey as exc:
            raise IdempotencyKeyInvalid(header=self.header, reason=exc.reason) from None
        assert parsed_key is not None  # one value given, so a key or an error
        route = f"{method} {path}" if self.scope == "principal_route" else None
        if isinstance(payload, bytes | bytearray | memoryview):
            body = bytes(payload)
            parsed = parse_json_body(body, None)
        elif payload is None:
            body, parsed = b"", NOT_JSON
        else:
            # Through JSON text, so a value compares exactly as the same body sent as bytes.
            body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()
            parsed = parse_json_body(body, b"application/json")
        digest = fingerprint(method, path.encode(), body, parsed, self._ignore_paths)
        return scoped_key(principal, parsed_key, route), digest

    def _lock_timeout_ms(self) -> str:
        assert self.lock_timeout is not None
        return f"{max(1, round(self.lock_timeout * 1000))}ms"

    def _set_lock_timeout(self, cursor: _Cursor) -> str | None:
        if self.lock_timeout is None:
            return None
        cursor.execute(_SET_LOCK_TIMEOUT, (self._lock_timeout_ms(),))
        return _first(cursor.fetchone())

    # -- completing (called by the claims) --------------------------------------------------

    def _completion(
        self,
        claim: _Claim,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]],
        body: bytes,
    ) -> tuple[StoredResponse, tuple[object, ...]]:
        if claim.replay is not None:
            raise RuntimeError(
                "this claim replays an earlier response: there is nothing to complete"
            )
        if not in_transaction(claim._conn, starting=False):
            raise RuntimeError(
                "the claim's transaction has ended: complete it before COMMIT, on the "
                "connection that claimed it"
            )
        if claim._completed:
            raise RuntimeError("this claim is already completed")
        if not (isinstance(status, int) and 100 <= status <= 599):
            raise ValueError(f"status: expected an HTTP status code, got {status!r}")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"body: expected bytes, got {type(body).__name__}")
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        raw = tuple((_latin1(n).lower(), _latin1(v)) for n, v in pairs)
        response = StoredResponse(status, raw, bytes(body))
        encoded = json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in raw])
        now = self.clock.now()
        params = (status, encoded, response.body, now + self.ttl, claim.store_key, claim._token)
        return response, params

    # -- maintenance -----------------------------------------------------------------------

    def purge(
        self, conn: sqlite3.Connection | psycopg.Connection[Any], *, batch: int = 1000
    ) -> int:
        """Delete up to ``batch`` expired keys; returns how many went.

        Run it outside request handling, on a connection in autocommit mode, so that each
        batch is its own short transaction, until it returns less than ``batch``.
        On a connection inside a transaction it is part of that transaction.
        """
        _check_batch(batch)
        params = (self.clock.now(), batch)
        if isinstance(conn, sqlite3.Connection):
            with _sqlite_errors():
                return conn.execute(self._sqlite.purge, params).rowcount
        _check_psycopg(conn, "purge", async_=False)
        with _psycopg_errors(), conn.cursor() as cur:
            cur.execute(self._postgres.purge, params)
            return cur.rowcount

    async def apurge(self, conn: psycopg.AsyncConnection[Any], *, batch: int = 1000) -> int:
        """``purge`` on a ``psycopg.AsyncConnection``."""
        _check_psycopg(conn, "apurge", async_=True)
        _check_batch(batch)
        with _psycopg_errors():
            async with conn.cursor() as cur:
                await cur.execute(self._postgres.purge, (self.clock.now(), batch))
                return cur.rowcount

    def ddl(self, dialect: Literal["sqlite", "postgresql"]) -> str:
        """The SQL script that creates the key table (safe to run again).

        Example:
            >>> db.executescript(TransactionalKeys().ddl("sqlite"))

        On PostgreSQL it also creates the deferred trigger that fails the COMMIT of a
        transaction that claimed a key and never completed it. For the default table,
        ``surefoot.storage.postgres.migrate`` applies the same script (migration 0002).
        """
        table, name, schema = self.table, self._name, self._schema
        if dialect == "sqlite":
            index = f"{schema}.{name}_expires_at" if schema else f"{name}_expires_at"
            return _SQLITE_DDL.format(table=table, index=index, name=name)
        if dialect == "postgresql":
            function = f"{schema}.{name}_completed" if schema else f"{name}_completed"
            return _POSTGRES_DDL.format(table=table, name=name, function=function)
        raise ValueError(f"dialect: expected 'sqlite' or 'postgresql', got {dialect!r}")


class _Claim:
    """What both claims hold: the claimed row (``complete`` updates it by key and token)."""

    __slots__ = ("_completed", "_conn", "_keys", "_token", "replay", "store_key")

    def __init__(
        self,
        keys: TransactionalKeys,
        conn: Any,
        store_key: str,
        token: str,
        replay: StoredResponse | None,
    ) -> None:
        self._keys = keys
        self._conn = conn
        self._token = token
        self._completed = False
        self.store_key = store_key
        self.replay = replay


class Claim(_Claim):
    """A key claimed inside a transaction of a ``sqlite3`` or sync ``psycopg`` connection.

    Attributes:
        store_key: the scoped key, primary key of the row (what an operator looks up).
        replay: the response of the earlier request with this key, to send again
            (add ``Idempotent-Replayed: true``); None when this request executes.
    """

    __slots__ = ()

    def complete(
        self,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] = (),
        body: bytes = b"",
    ) -> StoredResponse:
        """Record the response of this request, in the claim's transaction, before COMMIT.

        Returns:
            The response as stored, which every retry will receive byte for byte (send
            this one, so the first answer and the replays are the same).

        Raises:
            RuntimeError: the claim is a replay, is already completed, or its transaction
                has ended (committed or rolled back).
            StoreUnavailable: the database failed; the transaction must roll back.
        """
        response, params = self._keys._completion(self, status, headers, body)
        conn = self._conn
        if isinstance(conn, sqlite3.Connection):
            with _sqlite_errors():
                updated = conn.execute(self._keys._sqlite.complete, params).rowcount
        else:
            with _psycopg_errors(), conn.cursor() as cur:
                cur.execute(self._keys._postgres.complete, params)
                updated = cur.rowcount
        _check_updated(updated)
        self._completed = True
        return response


class AsyncClaim(_Claim):
    """A key claimed inside a transaction of a ``psycopg.AsyncConnection``.

    Attributes:
        store_key: the scoped key, primary key of the row.
        replay: the response to send again, or None when this request executes.
    """

    __slots__ = ()

    async def acomplete(
        self,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] = (),
        body: bytes = b"",
    ) -> StoredResponse:
        """``Claim.complete`` for a claim made with ``aclaim``."""
        response, params = self._keys._completion(self, status, headers, body)
        with _psycopg_errors():
            async with self._conn.cursor() as cur:
                await cur.execute(self._keys._postgres.complete, params)
                updated = cur.rowcount
        _check_updated(updated)
        self._completed = True
        return response


def _check_updated(rowcount: int) -> None:
    if rowcount != 1:
        raise RuntimeError(
            "the claimed key is not in this transaction any more: it was rolled back, or "
            "its transaction ended and another request took the key over"
        )


def _first(row: tuple[Any, ...] | None) -> str:
    assert row is not None  # a SELECT without FROM or WHERE returns one row
    value: str = row[0]
    return value


def _check_batch(batch: int) -> None:
    if not (isinstance(batch, int) and batch > 0):
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")


def _latin1(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _fail(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"TransactionalKeys.{name}: expected {expected}, got {got!r}")


_SQLITE_DDL = """\
-- surefoot.idempotency.TransactionalKeys: idempotency keys written in the application's
-- own transactions. A row without a status is a claim whose response is not recorded.
CREATE TABLE IF NOT EXISTS {table} (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    token TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    status INTEGER,
    headers TEXT,
    body BLOB
);
CREATE INDEX IF NOT EXISTS {index} ON {name} (expires_at);
"""

_POSTGRES_DDL = """\
-- surefoot.idempotency.TransactionalKeys: idempotency keys written in the application's
-- own transactions. A row without a status is a claim whose response is not recorded.
CREATE TABLE IF NOT EXISTS {table} (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    token TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    status INTEGER,
    headers TEXT,
    body BYTEA
);
CREATE INDEX IF NOT EXISTS {name}_expires_at ON {table} (expires_at);

-- Runs at COMMIT (deferred), on the row as it is then: a transaction that claimed a key
-- and never recorded its response must not commit its business writes without it.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pending boolean;
BEGIN
    EXECUTE format('SELECT status IS NULL FROM %I.%I WHERE key = $1',
                   TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO pending USING NEW.key;
    IF pending THEN
        RAISE EXCEPTION 'idempotency key % was claimed but its response was not recorded',
            NEW.key
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'call claim.complete() before COMMIT, or roll back';
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS {name}_completed ON {table};
CREATE CONSTRAINT TRIGGER {name}_completed
    AFTER INSERT OR UPDATE OF token ON {table}
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION {function}();
"""
