"""``TransactionalKeys``: the key and its response commit with the business writes, or neither.

Every behaviour runs on SQLite (a file in WAL mode) and on PostgreSQL (a schema of its own,
dropped afterwards), through the sync API; the async API runs on PostgreSQL. The handler
under test is ``_transactional_workers.book``; crash tests run it in spawned processes
that die at each point of the transaction.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _transactional_workers import (
    GUARD,
    KEYS_TABLE,
    LEDGER_DDL,
    PRINCIPAL,
    Backend,
    Connection,
    book,
    connect,
    count,
    crash_worker,
    write_ledger,
)

import surefoot.storage.postgres
from surefoot.errors import (
    ConfigurationError,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
    IdempotencyRequestInProgress,
    IdempotencyResponseNotStored,
    StoreUnavailable,
    SurefootError,
)
from surefoot.idempotency import AsyncClaim, Claim, StoredResponse, TransactionalKeys, scoped_key
from surefoot.idempotency.transactional import _claim_flow, _drive, _replay_of, _Result
from surefoot.testing import ManualClock

MIGRATION = (
    Path(surefoot.storage.__file__).parent / "_migrations" / "postgres" / "0002_transactional.sql"
)
TTL = 3600.0
CTX = multiprocessing.get_context("spawn")


# -- backends ------------------------------------------------------------------------------


def migrate(dsn: str, schema: str) -> None:
    """The project's migration runner applies every migration, this one included."""
    applied = asyncio.run(surefoot.storage.postgres.migrate(dsn, schema=schema))
    assert "0002_transactional" in applied


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[tuple[str, str]]:
    schema = f"sf_tx_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        migrate(postgres_dsn, schema)
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {schema}.{LEDGER_DDL.removeprefix('CREATE TABLE ')}")
        yield postgres_dsn, schema
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgres":
        dsn, schema = request.getfixturevalue("pg_schema")
        return {"kind": "postgres", "dsn": dsn, "schema": schema}
    path = tmp_path / "app.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(TransactionalKeys().ddl("sqlite") + LEDGER_DDL + ";")
    db.close()
    return {"kind": "sqlite", "path": str(path)}


@pytest.fixture
def conns(backend: Backend) -> Iterator[Callable[..., Connection]]:
    """Open connections to the backend; all closed at the end."""
    opened: list[Connection] = []

    def open_one(**kwargs: Any) -> Connection:
        conn = connect(backend, **kwargs)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        conn.close()


@pytest.fixture
def conn(conns: Callable[..., Connection]) -> Connection:
    return conns()


@pytest.fixture
def keys(clock: ManualClock) -> TransactionalKeys:
    return TransactionalKeys(ttl=TTL, clock=clock, lock_timeout=GUARD)


def claim(conn: Connection, keys: TransactionalKeys, key: str, **request: Any) -> Claim:
    args: dict[str, Any] = {
        "principal": PRINCIPAL,
        "method": "POST",
        "path": "/transfers",
        "payload": {"amount": 100},
    }
    return keys.claim(conn, key=key, **{**args, **request})


def open_transaction(conn: Connection) -> None:
    conn.execute("BEGIN IMMEDIATE" if isinstance(conn, sqlite3.Connection) else "BEGIN")


def key_rows(conn: Connection) -> int:
    return count(conn, KEYS_TABLE)


# -- behaviour, on both backends -------------------------------------------------------------


def test_a_retry_replays_the_first_response_and_books_once(
    conn: Connection, keys: TransactionalKeys
) -> None:
    first = book(conn, keys, "k-1", 100)
    again = book(conn, keys, "k-1", 100)
    quoted = book(conn, keys, '"k-1"', 100)  # the structured-field form of the same key

    assert first[0] == "executed"
    assert first[1].status == 201
    assert first[1].headers == ((b"content-type", b"application/json"),)
    assert again == ("replayed", first[1])
    assert quoted == ("replayed", first[1])
    assert count(conn, "ledger") == 1
    assert key_rows(conn) == 1


@pytest.mark.parametrize(
    ("second", "outcome"),
    [
        pytest.param({"payload": {"amount": 999}}, IdempotencyKeyReused, id="other-body"),
        pytest.param({"path": "/refunds"}, IdempotencyKeyReused, id="other-path"),
        pytest.param({"method": "PUT"}, IdempotencyKeyReused, id="other-method"),
        pytest.param({"payload": b'{"amount": 100.0 }'}, "replayed", id="same-json-as-bytes"),
        pytest.param({"payload": b'{"amount":100}'}, "replayed", id="same-json-compact"),
        pytest.param({"principal": "cus_43"}, "executed", id="other-principal"),
    ],
)
def test_a_second_request_with_the_same_key(
    conn: Connection, keys: TransactionalKeys, second: dict[str, Any], outcome: Any
) -> None:
    open_transaction(conn)
    claim(conn, keys, "k-2").complete(201, {}, b"first")
    conn.execute("COMMIT")

    open_transaction(conn)
    if isinstance(outcome, str):
        result = claim(conn, keys, "k-2", **second)
        assert ("replayed" if result.replay is not None else "executed") == outcome
    else:
        with pytest.raises(outcome):
            claim(conn, keys, "k-2", **second)
    conn.execute("ROLLBACK")
    assert key_rows(conn) == 1


def test_ignored_fields_and_route_scope(conn: Connection, clock: ManualClock) -> None:
    keys = TransactionalKeys(scope="principal_route", ignore_fields=["meta.sent_at"], clock=clock)
    open_transaction(conn)
    claim(conn, keys, "k", payload={"amount": 1, "meta": {"sent_at": 1}}).complete(201, (), b"a")
    # Per route: the same key on another path is another operation.
    claim(conn, keys, "k", path="/refunds").complete(201, (), b"b")
    conn.execute("COMMIT")

    open_transaction(conn)
    replay = claim(conn, keys, "k", payload={"amount": 1, "meta": {"sent_at": 2}}).replay
    conn.execute("ROLLBACK")
    assert replay == StoredResponse(201, (), b"a")


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (None, IdempotencyKeyMissing),
        ("", IdempotencyKeyInvalid),
        ("x" * 256, IdempotencyKeyInvalid),
        ("with space", IdempotencyKeyInvalid),
        ("caf\u00e9", IdempotencyKeyInvalid),
        # Not a latin-1 character: never mapped onto another key ("pay-?").
        ("pay-\u20ac", IdempotencyKeyInvalid),
        ('"unterminated', IdempotencyKeyInvalid),
    ],
)
def test_a_missing_or_malformed_key_is_refused_before_any_write(
    conn: Connection, keys: TransactionalKeys, key: str | None, error: type[SurefootError]
) -> None:
    with pytest.raises(error) as raised:
        book(conn, keys, key, 100)

    assert raised.value.status == 400
    assert (count(conn, "ledger"), key_rows(conn)) == (0, 0)


def test_a_rolled_back_claim_leaves_nothing_and_the_retry_executes(
    conn: Connection, keys: TransactionalKeys
) -> None:
    open_transaction(conn)
    claim(conn, keys, "k-3")
    write_ledger(conn, "k-3", 100)
    conn.execute("ROLLBACK")
    assert (count(conn, "ledger"), key_rows(conn)) == (0, 0)

    assert book(conn, keys, "k-3", 100)[0] == "executed"
    assert count(conn, "ledger") == 1


def test_a_key_past_its_ttl_executes_again_and_then_replays(
    conn: Connection, keys: TransactionalKeys, clock: ManualClock
) -> None:
    _, first = book(conn, keys, "k-4", 100)
    clock.advance(TTL - 1)
    assert book(conn, keys, "k-4", 100) == ("replayed", first)

    clock.advance(1)
    # Expired: even another request may use the key now.
    outcome, second = book(conn, keys, "k-4", 555)
    assert outcome == "executed"
    assert second != first
    assert book(conn, keys, "k-4", 555) == ("replayed", second)
    assert count(conn, "ledger") == 2
    assert key_rows(conn) == 1


def test_completing_twice_or_a_replay_is_a_programming_error(
    conn: Connection, keys: TransactionalKeys
) -> None:
    open_transaction(conn)
    c = claim(conn, keys, "k-5")
    c.complete(201, (), b"once")
    with pytest.raises(RuntimeError, match="already completed"):
        c.complete(201, (), b"twice")
    conn.execute("COMMIT")

    open_transaction(conn)
    replay = claim(conn, keys, "k-5")
    with pytest.raises(RuntimeError, match="replays"):
        replay.complete(201, (), b"again")
    conn.execute("ROLLBACK")
    assert book(conn, keys, "k-5", 100)[1].body == b"once"


@pytest.mark.parametrize("end", ["COMMIT", "ROLLBACK"])
def test_a_claim_used_after_its_transaction_ended_is_refused(
    conn: Connection, keys: TransactionalKeys, end: str
) -> None:
    open_transaction(conn)
    c = claim(conn, keys, "k-6")
    c.complete(201, (), b"done")
    conn.execute(end)

    with pytest.raises(RuntimeError, match="transaction has ended"):
        c.complete(201, (), b"late")


def test_a_rolled_back_claim_cannot_complete_in_a_later_transaction(
    conn: Connection, keys: TransactionalKeys
) -> None:
    open_transaction(conn)
    c = claim(conn, keys, "k-7")
    conn.execute("ROLLBACK")
    open_transaction(conn)

    with pytest.raises(RuntimeError, match="not in this transaction"):
        c.complete(201, (), b"late")
    conn.execute("ROLLBACK")
    assert key_rows(conn) == 0


def test_claiming_outside_a_transaction_is_refused(
    conn: Connection, keys: TransactionalKeys
) -> None:
    with pytest.raises(RuntimeError, match="BEGIN"):
        claim(conn, keys, "k-8")
    assert key_rows(conn) == 0


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [(99, b"", ValueError), (600, b"", ValueError), (201, "text", TypeError)],
)
def test_complete_checks_its_arguments(
    conn: Connection, keys: TransactionalKeys, status: int, body: Any, error: type[Exception]
) -> None:
    open_transaction(conn)
    c = claim(conn, keys, "k-9")
    with pytest.raises(error):
        c.complete(status, (), body)
    # Still completable with a valid response.
    assert c.complete(200, [(b"X-A", "1"), ("x-b", b"2")], b"ok") == StoredResponse(
        200, ((b"x-a", b"1"), (b"x-b", b"2")), b"ok"
    )
    conn.execute("COMMIT")


def test_a_response_whose_body_is_gone_is_not_executed_again(
    conn: Connection, keys: TransactionalKeys
) -> None:
    book(conn, keys, "k-10", 100)
    conn.execute(f"UPDATE {KEYS_TABLE} SET body = NULL")  # an operator trimmed it

    with pytest.raises(IdempotencyResponseNotStored):
        book(conn, keys, "k-10", 100)
    assert count(conn, "ledger") == 1


def test_purge_deletes_expired_keys_in_batches(
    conn: Connection, keys: TransactionalKeys, clock: ManualClock
) -> None:
    for n in range(5):
        book(conn, keys, f"old-{n}", 100)
    clock.advance(TTL / 2)
    _, young = book(conn, keys, "young", 100)
    clock.advance(TTL / 2)

    assert [keys.purge(conn, batch=2) for _ in range(4)] == [2, 2, 1, 0]
    assert key_rows(conn) == 1
    assert book(conn, keys, "young", 100) == ("replayed", young)
    with pytest.raises(ValueError, match="batch"):
        keys.purge(conn, batch=0)


@pytest.mark.parametrize("expired_first", [False, True], ids=["fresh", "over-an-expired-key"])
def test_twenty_concurrent_duplicates_execute_once(
    backend: Backend,
    conns: Callable[..., Connection],
    keys: TransactionalKeys,
    clock: ManualClock,
    expired_first: bool,
) -> None:
    if expired_first:
        book(conns(), keys, "k-storm", 100)
        clock.advance(TTL)
    workers = [conns() for _ in range(20)]
    barrier = threading.Barrier(len(workers), timeout=GUARD)

    def request(conn: Connection) -> tuple[str, StoredResponse]:
        barrier.wait()
        return book(conn, keys, "k-storm", 200)

    with ThreadPoolExecutor(len(workers)) as pool:
        results = list(pool.map(request, workers))

    assert sorted(outcome for outcome, _ in results) == ["executed"] + ["replayed"] * 19
    assert len({response for _, response in results}) == 1
    check = conns()
    amounts = check.execute("SELECT amount FROM ledger ORDER BY amount").fetchall()
    assert [a for (a,) in amounts] == ([100, 200] if expired_first else [200])


# -- crashes: a process dies at each point of the transaction ----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "die_at", ["after_claim", "after_write", "after_complete", "killed", "after_commit"]
)
def test_a_process_that_dies_leaves_both_rows_or_neither(
    backend: Backend, conn: Connection, keys: TransactionalKeys, die_at: str
) -> None:
    ready = CTX.Event()
    child = CTX.Process(target=crash_worker, args=(backend, "k-crash", 100, die_at, ready))
    child.start()
    try:
        if die_at == "killed":
            assert ready.wait(GUARD), "the worker never reached the open transaction"
            child.kill()
        child.join(GUARD)
    finally:
        if child.is_alive():
            child.kill()
            child.join(GUARD)
    assert child.exitcode == (-signal.SIGKILL if die_at == "killed" else 1)

    committed = die_at == "after_commit"
    assert count(conn, "ledger") == key_rows(conn) == int(committed)
    # The client retries: it gets the dead worker's answer, or the work is done now, once.
    outcome, response = book(conn, keys, "k-crash", 100)
    assert outcome == ("replayed" if committed else "executed")
    assert response.status == 201
    assert json.loads(response.body or b"")["key"] == "k-crash"
    assert count(conn, "ledger") == key_rows(conn) == 1


# -- what differs between the backends ------------------------------------------------------


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "app.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(TransactionalKeys().ddl("sqlite") + LEDGER_DDL + ";")
    db.close()
    return {"kind": "sqlite", "path": str(path)}


@pytest.fixture
def pg_backend(pg_schema: tuple[str, str]) -> Backend:
    return {"kind": "postgres", "dsn": pg_schema[0], "schema": pg_schema[1]}


def test_sqlite_commit_without_complete_answers_outcome_unknown_until_completed(
    sqlite_backend: Backend, keys: TransactionalKeys
) -> None:
    db = connect(sqlite_backend)
    open_transaction(db)
    forgotten = claim(db, keys, "k-11")
    write_ledger(db, "k-11", 100)
    db.execute("COMMIT")  # SQLite cannot refuse this COMMIT

    # Never executed again: the work committed, its answer is unknown.
    with pytest.raises(IdempotencyOutcomeUnknown):
        book(db, keys, "k-11", 100)
    # The claim's own token may still record the answer, later (as a late finisher does).
    open_transaction(db)
    stored = forgotten.complete(201, (), b"late")
    db.execute("COMMIT")
    assert book(db, keys, "k-11", 100) == ("replayed", stored)
    assert count(db, "ledger") == 1
    db.close()


def test_sqlite_a_deferred_transaction_that_loses_the_write_lock_gets_503(
    sqlite_backend: Backend, keys: TransactionalKeys
) -> None:
    holder = connect(sqlite_backend)
    open_transaction(holder)
    claim(holder, keys, "k-12").complete(201, (), b"first")
    late = connect(sqlite_backend, timeout=0)
    late.execute("BEGIN")  # deferred, against the docs' advice

    with pytest.raises(StoreUnavailable) as raised:
        claim(late, keys, "k-12")

    assert "locked" in str(raised.value.__cause__)
    assert "locked" not in raised.value.detail  # the driver's text never reaches a client
    late.execute("ROLLBACK")
    holder.execute("COMMIT")
    assert book(late, keys, "k-12", 100)[1].body == b"first"
    holder.close()
    late.close()


def test_postgres_refuses_to_commit_a_claim_without_its_response(
    pg_backend: Backend, keys: TransactionalKeys
) -> None:
    with connect(pg_backend) as pg:
        assert isinstance(pg, psycopg.Connection)
        with (  # noqa: PT012 - the COMMIT at the end of the transaction block raises
            pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="not recorded"),
            pg.transaction(),
        ):
            claim(pg, keys, "k-13")
            write_ledger(pg, "k-13", 100)

        assert (count(pg, "ledger"), key_rows(pg)) == (0, 0)
        assert book(pg, keys, "k-13", 100)[0] == "executed"


def test_postgres_implicit_transactions_and_the_callers_lock_timeout(
    pg_backend: Backend, keys: TransactionalKeys
) -> None:
    dsn, schema = pg_backend["dsn"], pg_backend["schema"]
    # Not autocommit: psycopg opens the transaction with the claim's first statement.
    with psycopg.connect(dsn, options=f"-c search_path={schema}") as pg:
        pg.execute("SET lock_timeout = '42s'")
        pg.commit()
        c = claim(pg, keys, "k-14")
        assert pg.execute("SHOW lock_timeout").fetchone() == ("42s",)
        write_ledger(pg, "k-14", 100)
        stored = c.complete(201, (), b"implicit")
        pg.commit()
        assert claim(pg, keys, "k-14").replay == stored
        pg.rollback()
        assert count(pg, "ledger") == 1


def test_postgres_without_lock_timeout_and_on_a_database_error(
    pg_backend: Backend, clock: ManualClock
) -> None:
    inherit = TransactionalKeys(lock_timeout=None, clock=clock)
    with connect(pg_backend) as pg:
        pg.execute("SET lock_timeout = '3s'")
        with pg.transaction():
            c = claim(pg, inherit, "k-20")
            assert pg.execute("SHOW lock_timeout").fetchone() == ("3s",)
            c.complete(201, (), b"ok")

        missing = TransactionalKeys(table="no_such_table", clock=clock)
        with pytest.raises(StoreUnavailable) as raised, pg.transaction():
            claim(pg, missing, "k-21")

        assert isinstance(raised.value.__cause__, psycopg.errors.UndefinedTable)
        assert "no_such_table" not in raised.value.detail


def test_postgres_a_duplicate_waits_for_the_first_then_replays_or_executes(
    pg_backend: Backend, keys: TransactionalKeys
) -> None:
    for end, expected in (("COMMIT", "replayed"), ("ROLLBACK", "executed")):
        key = f"k-wait-{end}"
        with (
            connect(pg_backend) as first,
            connect(pg_backend) as duplicate,
            connect(pg_backend) as observer,
        ):
            assert isinstance(duplicate, psycopg.Connection)
            open_transaction(first)
            claim(first, keys, key, payload={"amount": 100}).complete(201, (), b"first")
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(book, duplicate, keys, key, 100)
                wait_until_blocked(observer, duplicate.info.backend_pid)
                first.execute(end)
                outcome, response = waiting.result(GUARD)
            assert outcome == expected
            assert (response.body == b"first") == (expected == "replayed")


def test_postgres_a_duplicate_past_lock_timeout_gets_409_in_progress(
    pg_backend: Backend, clock: ManualClock
) -> None:
    impatient = TransactionalKeys(ttl=TTL, clock=clock, lock_timeout=0.05)
    with connect(pg_backend) as first, connect(pg_backend) as duplicate:
        open_transaction(first)
        c = claim(first, impatient, "k-15")

        with pytest.raises(IdempotencyRequestInProgress) as raised:
            book(duplicate, impatient, "k-15", 100)

        assert raised.value.status == 409
        assert raised.value.fields == {"retry_after": 1}
        assert isinstance(raised.value.__cause__, psycopg.errors.LockNotAvailable)
        stored = c.complete(201, (), b"first")  # the first one is unharmed
        first.execute("COMMIT")
        assert book(duplicate, impatient, "k-15", 100) == ("replayed", stored)


def test_postgres_repeatable_read_duplicate_gets_409_then_replays(
    pg_backend: Backend, keys: TransactionalKeys
) -> None:
    with connect(pg_backend) as late, connect(pg_backend) as first:
        late.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        late.execute("SELECT count(*) FROM ledger")  # its snapshot is taken here
        _, stored = book(first, keys, "k-16", 100)

        with pytest.raises(IdempotencyRequestInProgress):
            claim(late, keys, "k-16")
        late.execute("ROLLBACK")
        assert book(late, keys, "k-16", 100) == ("replayed", stored)


def test_postgres_purge_skips_a_key_being_taken_over(
    pg_backend: Backend, keys: TransactionalKeys, clock: ManualClock
) -> None:
    with connect(pg_backend) as taker, connect(pg_backend) as janitor:
        book(taker, keys, "k-17", 100)
        clock.advance(TTL)
        open_transaction(taker)
        c = claim(taker, keys, "k-17", payload={"amount": 7})

        assert keys.purge(janitor) == 0  # does not wait for the taker, nor delete its row
        stored = c.complete(201, (), b"second")
        taker.execute("COMMIT")
        assert book(janitor, keys, "k-17", 7) == ("replayed", stored)


def test_postgres_a_qualified_custom_table(pg_backend: Backend, clock: ManualClock) -> None:
    custom = TransactionalKeys(table=f"{pg_backend['schema']}.billing_keys", clock=clock)
    dsn = pg_backend["dsn"]
    with psycopg.connect(dsn, autocommit=True) as pg:  # search_path: public only
        pg.execute(custom.ddl("postgresql"))
        with pg.transaction():
            stored = claim(pg, custom, "k-18").complete(201, (), b"custom")
        with pg.transaction():
            assert claim(pg, custom, "k-18").replay == stored
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation), pg.transaction():
            claim(pg, custom, "k-19")


def test_the_migration_is_the_default_tables_ddl() -> None:
    assert MIGRATION.read_text() == TransactionalKeys().ddl("postgresql")


def wait_until_blocked(observer: Connection, pid: int) -> None:
    """Until backend ``pid`` waits on a lock (``observer``: autocommit, so that each poll
    reads fresh statistics rather than its transaction's snapshot of them)."""
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
    deadline = time.monotonic() + GUARD  # a failure guard, not a timing assumption
    while time.monotonic() < deadline:
        row = observer.execute(query, (pid,)).fetchone()
        if row is not None and row[0] == "Lock":
            return
    pytest.fail(f"backend {pid} never waited for the key")


# -- async (psycopg.AsyncConnection) ------------------------------------------------------------


@pytest.fixture
async def apg(pg_backend: Backend) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await aconnect(pg_backend)
    yield conn
    await conn.close()


async def aconnect(backend: Backend) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        backend["dsn"], autocommit=True, options=f"-c search_path={backend['schema']}"
    )


async def abook(
    conn: psycopg.AsyncConnection[Any], keys: TransactionalKeys, key: str, amount: int
) -> tuple[str, StoredResponse]:
    async with conn.transaction():
        c = await keys.aclaim(
            conn, principal=PRINCIPAL, key=key, method="POST", path="/transfers",
            payload={"amount": amount},
        )  # fmt: skip
        if c.replay is not None:
            return "replayed", c.replay
        await conn.execute("INSERT INTO ledger (key, amount) VALUES (%s, %s)", (key, amount))
        body = json.dumps({"key": key, "booking": uuid.uuid4().hex}).encode()
        return "executed", await c.acomplete(201, {"content-type": "application/json"}, body)


@pytest.mark.anyio
async def test_async_claims_replay_refuse_and_purge(
    apg: psycopg.AsyncConnection[Any], keys: TransactionalKeys, clock: ManualClock
) -> None:
    outcome, first = await abook(apg, keys, "ak-1", 100)
    assert outcome == "executed"
    assert await abook(apg, keys, "ak-1", 100) == ("replayed", first)
    with pytest.raises(IdempotencyKeyReused):
        await abook(apg, keys, "ak-1", 101)

    async with apg.transaction():
        c = await keys.aclaim(apg, principal=PRINCIPAL, key="ak-2", method="POST", path="/x")
        assert isinstance(c, AsyncClaim)
        assert c.store_key == scoped_key(PRINCIPAL, "ak-2")
        await c.acomplete(204)
        with pytest.raises(RuntimeError, match="already completed"):
            await c.acomplete(204)
    with pytest.raises(RuntimeError, match="transaction has ended"):
        await c.acomplete(204)

    clock.advance(TTL)
    assert await keys.apurge(apg, batch=10) == 2
    cur = await apg.execute("SELECT count(*) FROM ledger")
    assert await cur.fetchone() == (1,)


@pytest.mark.anyio
async def test_async_keeps_the_callers_lock_timeout(
    apg: psycopg.AsyncConnection[Any], clock: ManualClock
) -> None:
    for keys in (TransactionalKeys(clock=clock), TransactionalKeys(lock_timeout=None, clock=clock)):
        await apg.execute("SET lock_timeout = '3s'")
        async with apg.transaction():
            c = await keys.aclaim(apg, principal=PRINCIPAL, key="ak-3", method="POST", path="/")
            cur = await apg.execute("SHOW lock_timeout")
            assert await cur.fetchone() == ("3s",)
            if c.replay is None:
                await c.acomplete(204)


@pytest.mark.anyio
async def test_async_twenty_concurrent_duplicates_execute_once(
    pg_backend: Backend, keys: TransactionalKeys
) -> None:
    conns = [await aconnect(pg_backend) for _ in range(20)]
    try:
        results = await asyncio.gather(*(abook(c, keys, "ak-storm", 100) for c in conns))
    finally:
        for c in conns:
            await c.close()

    assert sorted(outcome for outcome, _ in results) == ["executed"] + ["replayed"] * 19
    assert len({response for _, response in results}) == 1
    async with await aconnect(pg_backend) as check:
        cur = await check.execute("SELECT count(*) FROM ledger")
        assert await cur.fetchone() == (1,)


@pytest.mark.anyio
async def test_async_needs_an_async_connection_and_a_transaction(
    apg: psycopg.AsyncConnection[Any], pg_backend: Backend, keys: TransactionalKeys
) -> None:
    request: dict[str, Any] = {"principal": PRINCIPAL, "key": "k", "method": "POST", "path": "/"}
    with pytest.raises(RuntimeError, match="BEGIN"):
        await keys.aclaim(apg, **request)
    with connect(pg_backend) as sync_conn:
        with pytest.raises(TypeError, match="AsyncConnection"):
            await keys.aclaim(sync_conn, **request)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="AsyncConnection"):
            await keys.apurge(sync_conn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use aclaim"):
        keys.claim(apg, **request)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use apurge"):
        keys.purge(apg)  # type: ignore[arg-type]


# -- the pieces without a database ------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("table", "Keys"),
        ("table", "a.b.c"),
        ("table", "keys; DROP TABLE x"),
        ("table", "x" * 49),
        ("ttl", 59),
        ("ttl", 91 * 86400),
        ("scope", "route"),
        ("ignore_fields", "a.b"),
        ("ignore_fields", [""]),
        ("header", "Idempotency Key"),
        ("lock_timeout", 0),
        ("clock", object()),
    ],
)
def test_invalid_configuration_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=f"TransactionalKeys.{field}: expected"):
        TransactionalKeys(**{field: value})


def test_ddl_by_dialect() -> None:
    keys = TransactionalKeys(table="aux.keys")
    lite = keys.ddl("sqlite")
    assert "CREATE TABLE IF NOT EXISTS aux.keys" in lite
    assert "CREATE INDEX IF NOT EXISTS aux.keys_expires_at ON keys (expires_at)" in lite
    pg = keys.ddl("postgresql")
    assert "CREATE INDEX IF NOT EXISTS keys_expires_at ON aux.keys (expires_at)" in pg
    assert "EXECUTE FUNCTION aux.keys_completed()" in pg
    with pytest.raises(ValueError, match="dialect"):
        keys.ddl("mysql")  # type: ignore[arg-type]
    assert repr(keys).startswith("TransactionalKeys(table='aux.keys'")


def test_claim_needs_a_supported_connection(keys: TransactionalKeys) -> None:
    with pytest.raises(TypeError, match=r"sqlite3\.Connection or a psycopg\.Connection"):
        keys.claim(object(), principal="p", key="k", method="POST", path="/")  # type: ignore[arg-type]


def test_a_key_that_keeps_changing_under_the_claim_is_reported_in_progress() -> None:
    # Each time the INSERT finds a row, the row is gone (purged) before it can be read.
    flow = _claim_flow("idem:x", "fp", "token", TTL, 1000.0)
    results = iter([_Result(0, None), _Result(-1, None)] * 3)
    statements: list[str] = []

    def execute(statement: Any) -> _Result:
        statements.append(statement.op)
        return next(results)

    decision = _drive(flow, execute)

    assert statements == ["insert", "select"] * 3
    with pytest.raises(IdempotencyRequestInProgress):
        _replay_of(decision)
