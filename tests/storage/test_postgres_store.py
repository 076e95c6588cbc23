"""What ``PostgresStore`` promises beyond the shared contract suites.

Configuration and URLs; migrations (explicit, idempotent, safe from several processes at
once, checked on first use), and the states of earlier versions read on (sliding logs
converted into entries); the database's clock; responses kept byte for byte; calls
bounded by the store's timeout (longer for large responses), with abandoned statements
and failed batches undone and the pool left healthy; group commit of concurrent
acquires; purging in batches. Every test has its own schema on the shared server,
dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from _support import T0
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency._core import (
    Begin,
    InProgress,
    NotStored,
    Outcome,
    Replay,
    Reserved,
    State,
    Step,
    StoredResponse,
)
from surefoot.ratelimit import ALGORITHM_BY_NAME, ALGORITHMS, Item, Limit
from surefoot.ratelimit._algorithms import ListLog, LogEntry, SlidingLog, quota_period
from surefoot.storage import postgres, store_from_url
from surefoot.storage.postgres import PostgresStore, _migrations, migrate

pytestmark = pytest.mark.anyio

LEASE, TTL = 30.0, 3600.0
OK = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}')
UNREACHABLE = "postgresql://postgres:s3cret@127.0.0.1:1/test"
#: Every migration this surefoot ships ("0001_initial", ...), in order.
ALL = [m.name for m in _migrations()]
VERSIONS = [m.version for m in _migrations()]


def begin_req(token: str, mode: str = "unknown") -> Begin:
    return Begin("fp", token, LEASE, TTL, mode)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def new_schema(dsn: str, *, migrated: bool = True) -> AsyncIterator[str]:
    name = f"surefoot_test_{uuid.uuid4().hex[:12]}"
    if migrated:
        await migrate(dsn, schema=name)
    try:
        yield name
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    async with new_schema(postgres_dsn) as name:
        yield name


@contextlib.asynccontextmanager
async def opened(dsn: str | Any, schema: str, **options: Any) -> AsyncIterator[PostgresStore]:
    """A store on ``schema`` with a patient timeout (5 s) unless the test gives its own:
    a loaded CI machine can stall the shared server for longer than the default 50 ms,
    and only the tests of timeouts are about that."""
    store = PostgresStore(dsn, schema=schema, **{"timeout": 5, **options})
    try:
        yield store
    finally:
        await store.aclose()


async def settle(store: PostgresStore) -> None:
    """Wait for the store's background work (abandoned statements, undos, purges)."""
    while store._tasks:
        await asyncio.gather(*store._tasks, return_exceptions=True)


async def sql(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(query, params)  # type: ignore[arg-type]
        return await cursor.fetchall() if cursor.description else []


# -- configuration ------------------------------------------------------------------------


async def test_a_url_sets_the_options_and_hands_the_rest_to_libpq() -> None:
    url = (
        "postgres://app:s3cret@db.example:6432/api?schema=limits&clock=caller&timeout=0.2"
        "&pool_min=0&pool_max=3&sslmode=disable&application_name=api"
    )
    store = store_from_url(url)
    assert isinstance(store, PostgresStore)
    assert (store.schema, store.clock, store.timeout, store.pool_min, store.pool_max) == (
        "limits",
        "caller",
        0.2,
        0,
        3,
    )
    assert store.rate_limit_algorithms == ALGORITHMS
    assert repr(store) == (
        "PostgresStore('postgres://app:***@db.example:6432/api?sslmode=disable"
        "&application_name=api', schema='limits', clock='caller')"
    )
    await store.aclose()  # never connected: nothing to close


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("clock=wall", "clock"),
        ("timeout=soon", "timeout"),
        ("timeout=0", "timeout"),
        ("timeout=inf", "timeout"),
        ("pool_min=-1", "pool_min"),
        ("pool_min=one", "pool_min"),
        ("pool_max=0", "pool_max"),
        ("pool_min=5&pool_max=2", "pool_max"),
        ("schema=", "schema"),
        ("purge_batch=5", "purge_batch"),  # not an option: libpq refuses it, by name
    ],
)
def test_a_bad_url_option_is_named_without_the_password(query: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named) as raised:
        store_from_url(f"postgresql://app:s3cret@db/api?{query}")
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    "dsn",
    [
        # libpq quotes what it cannot read: the bad escape of a secret option, or the
        # whole URI (PostgresStore's own masker knew only a password urlsplit could find).
        "postgresql://app@db/api?sslpassword=S%zz3CRET",
        "postgresql://app:S3CRET@[::1/api",
        "postgresql://app:p%zzS3CRET@db/api",
        "host=db password=S3CRET colour",  # key=value: libpq refuses 'colour'
    ],
)
def test_a_bad_connection_string_is_named_without_its_secrets(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PostgresStore(dsn)
    assert str(raised.value).startswith("PostgresStore: invalid connection string: ")
    assert "S3CRET" not in str(raised.value)
    assert "3CRET" not in str(raised.value)


@pytest.mark.parametrize(
    "url", ["postgresql://app:S3CRET@[::1/api", "postgresql://app:pw@db/api?sslpassword=S3CRET&x=1"]
)
def test_a_bad_store_url_is_named_masked(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PostgresStore.from_url(url)  # the first used to raise urlsplit's ValueError
    assert "store URL 'postgresql://app:" in str(raised.value)
    assert "S3CRET" not in str(raised.value)


def test_the_repr_masks_every_secret_of_the_connection_string() -> None:
    store = PostgresStore("host=db user=app password=S3CRET sslpassword=S3CRET2 dbname=api")
    assert repr(store) == (
        "PostgresStore('host=db user=app password=*** sslpassword=*** dbname=api', "
        "schema='public', clock='server')"
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"clock": "local"}, "clock"),
        ({"timeout": -1}, "timeout"),
        ({"pool_max": 0}, "pool_max"),
        ({"purge_interval": 0}, "purge_interval"),
        ({"purge_batch": 0}, "purge_batch"),
        ({"schema": "x" * 64}, "schema"),
    ],
)
def test_bad_arguments_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        PostgresStore("postgresql://db/api", **options)


def test_a_bad_connection_string_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        PostgresStore("host=db password=s3cret nonsense")
    assert "s3cret" not in str(raised.value)
    store = PostgresStore("host=db password='s3cret' dbname=api")
    assert "s3cret" not in repr(store)


# -- migrations ---------------------------------------------------------------------------


async def test_migrate_applies_each_migration_once_and_a_dry_run_changes_nothing(
    postgres_dsn: str,
) -> None:
    async with new_schema(postgres_dsn, migrated=False) as name:
        assert ALL[0] == "0001_initial"
        assert await migrate(postgres_dsn, schema=name, dry_run=True) == ALL
        assert await sql(postgres_dsn, "SELECT to_regnamespace(%s)", f'"{name}"') == [(None,)]

        assert await migrate(postgres_dsn, schema=name) == ALL
        assert await migrate(postgres_dsn, schema=name) == []
        assert await migrate(postgres_dsn, schema=name, dry_run=True) == []
        rows = await sql(
            postgres_dsn, f'SELECT version, name FROM "{name}".surefoot_schema_migrations'
        )
        assert rows == list(zip(VERSIONS, ALL, strict=True))


async def test_the_store_never_creates_tables_and_says_how_to_migrate(postgres_dsn: str) -> None:
    async with (
        new_schema(postgres_dsn, migrated=False) as name,
        opened(postgres_dsn, name, clock="caller") as store,
    ):
        calls = (
            lambda: store.begin("k", begin_req("t1"), T0),
            lambda: store.acquire([Item("rl:a", "fixed_window", Limit(5, 60))], T0),
            lambda: store.open(),
        )
        for call in calls:
            with pytest.raises(ConfigurationError, match="surefoot migrate --store"):
                await call()
        assert await sql(postgres_dsn, "SELECT to_regnamespace(%s)", f'"{name}"') == [(None,)]

        # Once migrated, the same store works: no restart needed.
        await migrate(postgres_dsn, schema=name)
        assert await store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, False)


async def test_a_database_migrated_by_a_newer_surefoot_is_refused(
    postgres_dsn: str, schema: str
) -> None:
    await sql(
        postgres_dsn,
        f"INSERT INTO \"{schema}\".surefoot_schema_migrations VALUES (9999, '9999_future')",
    )
    async with opened(postgres_dsn, schema, clock="caller") as store:
        with pytest.raises(ConfigurationError, match="upgrade surefoot"):
            await store.get("k", T0)
    for dry_run in (False, True):
        with pytest.raises(ConfigurationError, match="upgrade surefoot"):
            await migrate(postgres_dsn, schema=schema, dry_run=dry_run)


async def test_migrate_refuses_a_bad_schema_name_and_an_unreachable_database() -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        await migrate("postgresql://db/api", schema="")
    with pytest.raises(StoreUnavailable) as raised:
        await migrate(UNREACHABLE, schema="x")
    assert raised.value.__cause__ is not None


def _migrate_in_process(dsn: str, schema: str, barrier: Any, out: Path) -> None:
    barrier.wait(timeout=30)
    out.write_text(json.dumps(asyncio.run(migrate(dsn, schema=schema))))


@pytest.mark.slow
def test_processes_migrating_at_once_apply_each_migration_once(
    postgres_dsn: str, tmp_path: Path
) -> None:
    schema = f"surefoot_test_{uuid.uuid4().hex[:12]}"
    ctx = multiprocessing.get_context("spawn")
    count = 4
    # Plain processes, not a Pool: Pool.terminate can hang on a worker blocked on the
    # task queue's lock when coverage handles SIGTERM in the workers.
    barrier = ctx.Barrier(count)
    outs = [tmp_path / f"applied{i}.json" for i in range(count)]
    processes = [
        ctx.Process(target=_migrate_in_process, args=(postgres_dsn, schema, barrier, out))
        for out in outs
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)  # a failure guard
        assert [p.exitcode for p in processes] == [0] * count
        results = [json.loads(out.read_text()) for out in outs]
        # Each migration applied by exactly one process (not necessarily the same one).
        assert sorted(name for applied in results for name in applied) == ALL
        rows = asyncio.run(
            sql(
                postgres_dsn,
                f'SELECT version FROM "{schema}".surefoot_schema_migrations ORDER BY 1',
            )
        )
        assert rows == [(v,) for v in VERSIONS]
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join(10)
        asyncio.run(sql(postgres_dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def test_a_sliding_window_kept_by_an_older_surefoot_decides_as_python_does(
    postgres_dsn: str, schema: str
) -> None:
    # Before migration 0004 a state was three numbers: the window [T0, T0 + 10) with 4
    # before it and 6 in it.
    limit = Limit(10, 10, algorithm="sliding_window")
    async with opened(postgres_dsn, schema, clock="caller") as store:
        for n, at in enumerate((T0 + 5, T0 + 15, T0 + 25)):
            await sql(
                postgres_dsn,
                f'INSERT INTO "{schema}".surefoot_ratelimit VALUES (%s, %s, NULL, %s)',
                f"rl:old{n}",
                [T0, 4.0, 6.0],
                T0 + 20,
            )
            _, [got] = await store.acquire([Item(f"rl:old{n}", "sliding_window", limit)], at)
            want, _ = ALGORITHM_BY_NAME["sliding_window"].decide((T0, 4, 6), at, 1, limit)
            assert tuple(got) == pytest.approx(tuple(want), abs=1e-9)
            assert got.remaining == [1, 6, 9][n]


async def test_a_sliding_log_kept_by_the_previous_schema_decides_on_after_the_upgrade(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = Limit(5, 10, algorithm="sliding_log")
    fixed = Item("rl:fixed", "fixed_window", Limit(3, 60))

    def log_item(key: str, cost: int = 1) -> Item:
        return Item(key, "sliding_log", limit, cost)

    async with new_schema(postgres_dsn, migrated=False) as name:
        monkeypatch.setattr(postgres, "_migrations", lambda: _migrations()[:4])
        await migrate(postgres_dsn, schema=name)
        async with opened(postgres_dsn, name, clock="caller") as old:
            # 2 at T0, a look of cost 0 (the admin API's), 1 at T0 + 3, then 1 at T0 + 2.5:
            # a clock that stepped back. Another log, stepped back too, expires at T0 + 2
            # (its last entry's time + 10), its first entry still in the window.
            for at, cost in ((T0, 2), (T0 + 1, 0), (T0 + 3, 1), (T0 + 2.5, 1)):
                await old.acquire([log_item("rl:log", cost)], at)
            for at, cost in ((T0 - 5, 1), (T0 - 8, 3)):
                await old.acquire([log_item("rl:stale", cost)], at)
            await old.acquire([log_item("rl:look", 0)], T0)  # a log of nothing but a look
            await old.acquire([fixed], T0)
        rows = await sql(postgres_dsn, f'SELECT key, numbers FROM "{name}".surefoot_ratelimit')
        assert sorted(rows) == [
            ("rl:fixed", [T0 - T0 % 60, 1.0]),
            ("rl:log", [T0, 2.0, T0 + 1, 0.0, T0 + 3, 1.0, T0 + 2.5, 1.0]),
            ("rl:look", [T0, 0.0]),
            ("rl:stale", [T0 - 5, 1.0, T0 - 8, 3.0]),
        ]
        monkeypatch.undo()
        assert await migrate(postgres_dsn, schema=name) == ALL[4:]

        async with opened(postgres_dsn, name, clock="caller") as store:
            # An expired log counts nothing (the first call: no purge has run yet).
            _, [stale] = await store.acquire([log_item("rl:stale")], T0 + 3)
            assert stale.remaining == 4
            _, [look] = await store.acquire([log_item("rl:look")], T0 + 3)
            assert look.remaining == 4
            # Met first by a decision, converted: times never decreasing (the entry at
            # T0 + 2.5 counted until T0 + 13, as the flat array's prefix did), the look of
            # cost 0 dropped.
            state: Any = ListLog(
                [LogEntry(T0, 2, 2), LogEntry(T0 + 3, 3, 1), LogEntry(T0 + 3, 4, 1)]
            )
            got = []
            for at, cost in (
                (T0 + 5, 1),
                (T0 + 6, 1),
                (T0 + 10.5, 2),
                (T0 + 12.9, 2),
                (T0 + 13, 2),
            ):
                want, new = SlidingLog.decide(state, at, cost, limit)
                _, [decision] = await store.acquire([log_item("rl:log", cost)], at)
                assert tuple(decision) == pytest.approx(tuple(want), abs=1e-9)
                got.append((decision.allowed, decision.remaining))
                state = new if want.allowed else state
            assert got == [(True, 0), (False, 0), (True, 0), (False, 0), (True, 0)]
            # The other algorithms' rows are as they were.
            _, [counted] = await store.acquire([fixed], T0 + 1)
            assert counted.remaining == 1
        rows = await sql(postgres_dsn, f'SELECT key FROM "{name}".surefoot_ratelimit')
        assert rows == [("rl:fixed",)]


async def test_the_acquire_of_a_surefoot_before_version_4_logs_in_the_same_entries(
    postgres_dsn: str, schema: str
) -> None:
    # A process of an older surefoot, still running during a deploy, calls surefoot_acquire.
    limit = Limit(2, 10, algorithm="sliding_log")
    item = Item("rl:log", "sliding_log", limit)
    async with opened(postgres_dsn, schema, clock="caller") as store:
        assert (await store.acquire([item], T0))[0]
        literals = [postgres._item_literals(item, T0 + 1, "caller")]
        pending = postgres._Pending(([item], literals), T0 + 1, None, 0, 0)  # type: ignore[arg-type]
        query = store._sql["acquire"].replace("surefoot_acquire_v4", "surefoot_acquire")
        [row] = await sql(postgres_dsn, query, *postgres._acquire_params([pending], "caller"))
        admitted, _, allowed, *_ = row
        assert (admitted, allowed) == ([True], [True])
        admitted, [refused] = await store.acquire([item], T0 + 2)
        assert (admitted, refused.retry_after) == (False, 8.0)


# -- the database's clock -----------------------------------------------------------------


async def test_a_caller_clock_far_ahead_cannot_take_over_a_live_lease(
    postgres_dsn: str, schema: str
) -> None:
    async with opened(postgres_dsn, schema) as store:  # clock="server"
        wrong = 1_000.0  # a host whose clock says 1970
        assert await store.begin("k", begin_req("t1", "reexecute"), wrong) == Reserved(
            "t1", 1, False
        )
        later = wrong + 10 * LEASE  # by this host's clock, the lease is long over
        blocked = await store.begin("k", begin_req("t2", "reexecute"), later)
        assert isinstance(blocked, InProgress)
        # Handed back on this host's clock: its lease ends LEASE after the reservation.
        assert blocked.lease_expires_at == pytest.approx(later + LEASE, abs=10)

        record = await store.get("k", later)
        assert record is not None
        assert (record.state, record.token) == (State.IN_FLIGHT, "t1")
        assert record.expires_at == pytest.approx(later + TTL, abs=10)
        [(key, listed)] = await store.records(later, state=State.IN_FLIGHT)
        assert (key, listed.lease_expires_at) == ("k", pytest.approx(later + LEASE, abs=10))
        assert await store.records(later, state=State.LEASE_EXPIRED) == []


async def test_rate_limits_decide_on_the_database_clock(postgres_dsn: str, schema: str) -> None:
    bucket = Item("rl:a", "token_bucket", Limit(2, 86400, algorithm="token_bucket"))
    async with opened(postgres_dsn, schema) as store:
        decisions = [(await store.acquire([bucket], now))[0] for now in (0.0, 1e9, 4e9)]
        assert decisions == [True, True, False]  # no caller's clock refilled the bucket

        # A calendar quota, on the database's time zone data.
        zone = "Pacific/Kiritimati"
        quota = Item(
            "rl:q", "quota", Limit(5, 86400, algorithm="quota", period="day", timezone=zone)
        )
        _, [decision] = await store.acquire([quota], 0.0)
        end = quota_period(time.time(), "day", zone)[1]
        assert time.time() + decision.reset_after == pytest.approx(end, abs=10)


# -- responses ----------------------------------------------------------------------------


async def test_responses_are_kept_byte_for_byte(postgres_dsn: str, schema: str) -> None:
    every_byte = bytes(range(256))
    responses = {
        "large": StoredResponse(200, ((b"x-bytes", every_byte),), os.urandom(1 << 20)),
        "empty-body": StoredResponse(204, (), b""),
        "headers": StoredResponse(
            201,
            (
                (b"content-type", b"text/plain; charset=latin-1"),
                (b"x-a", b"\xe9\x00\xff"),
                (b"x-a", b""),
            ),
            b"caf\xe9",
        ),
    }
    async with opened(postgres_dsn, schema, clock="caller") as store:
        for key, response in responses.items():
            await store.begin(key, begin_req(key), T0)
            assert await store.finish(key, key, Outcome(Step.COMPLETE, response), T0 + 1)
            assert await store.begin(key, begin_req("again"), T0 + 2) == Replay(response)
            record = await store.get(key, T0 + 2)
            assert record is not None
            assert record.response == response

        await store.begin("too-large", begin_req("t"), T0)
        not_kept = StoredResponse(200, ((b"content-length", b"9999999"),), None)
        assert await store.finish("too-large", "t", Outcome(Step.COMPLETE, not_kept), T0 + 1)
        assert await store.begin("too-large", begin_req("again"), T0 + 2) == NotStored(200)

        await store.begin("unknown", begin_req("t"), T0)
        await store.finish("unknown", "t", Outcome(Step.MARK_UNKNOWN), T0 + 1)
        resolved = responses["headers"]
        assert await store.resolve("unknown", resolved, T0 + 2)
        assert await store.begin("unknown", begin_req("again"), T0 + 3) == Replay(resolved)


async def test_large_responses_kept_at_once_are_each_kept_whole(
    postgres_dsn: str, schema: str
) -> None:
    # Each 1 MiB response goes alone (Rule 7), in a statement with a budget of its own.
    bodies = {f"k{n}": os.urandom(1 << 20) for n in range(20)}
    async with opened(postgres_dsn, schema, clock="caller") as store:
        await asyncio.gather(*(store.begin(key, begin_req(key), T0) for key in bodies))
        await store.begin("unknown", begin_req("u"), T0)
        await store.finish("unknown", "u", Outcome(Step.MARK_UNKNOWN), T0)
        large = StoredResponse(200, (), os.urandom(1 << 20))
        accepted = await asyncio.gather(
            *(
                store.finish(key, key, Outcome(Step.COMPLETE, StoredResponse(200, (), body)), T0)
                for key, body in bodies.items()
            ),
            store.resolve("unknown", large, T0),
        )
        assert accepted == [True] * 21
    bodies["unknown"] = large.body or b""
    kept = await sql(postgres_dsn, f'SELECT key, sha256(body) FROM "{schema}".surefoot_idempotency')
    assert dict(kept) == {key: hashlib.sha256(body).digest() for key, body in bodies.items()}


def test_a_large_response_gets_time_for_its_size_and_for_those_under_way_with_it() -> None:
    # Rule 4, without a clock: 20 MiB could never be stored within the default 50 ms, so
    # a call's budget adds its bytes and those of every large response under way beside
    # it (entered before it and still going, or entered since) at 50 MiB/s.
    store = PostgresStore(UNREACHABLE)
    mib = 1 << 20
    with store._carrying(mib) as first, store._carrying(2 * mib) as second:
        assert first is not None
        assert second is not None
        assert first() == pytest.approx(0.05 + 3 / 50)  # its own and the one entered since
        with store._carrying(mib) as third:
            assert third is not None
            assert first() == second() == pytest.approx(0.05 + 4 / 50)
            assert third() == pytest.approx(0.05 + 4 / 50)  # those ahead of it, and its own
    with store._carrying(64 << 10) as small:
        assert small is None  # the pool's own timeout: it is batched with the others
    with store._carrying(mib) as alone:
        assert alone is not None
        assert alone() == pytest.approx(0.05 + 1 / 50)  # the others are done


async def test_completing_without_a_response_is_refused_and_changes_nothing(
    postgres_dsn: str, schema: str
) -> None:
    async with opened(postgres_dsn, schema, clock="caller") as store:
        await store.begin("k", begin_req("t1"), T0)
        with pytest.raises(ValueError, match="response"):
            await store.finish("k", "t1", Outcome(Step.COMPLETE), T0 + 1)
        record = await store.get("k", T0 + 1)
        assert record is not None
        assert record.state is State.IN_FLIGHT


# -- timeouts, abandoned statements, the pool ---------------------------------------------


async def test_an_unreachable_database_is_store_unavailable_within_the_timeout() -> None:
    store = PostgresStore(UNREACHABLE, timeout=0.1)
    try:
        calls = (
            lambda: store.begin("k", begin_req("t1"), T0),
            lambda: store.acquire([Item("rl:a", "fixed_window", Limit(5, 60))], T0),
            lambda: store.records(T0),
            lambda: store.open(wait=0.1),
        )
        for call in calls:
            with pytest.raises(StoreUnavailable) as raised:
                await call()
            assert raised.value.__cause__ is not None
            assert "s3cret" not in str(raised.value)
            assert "127.0.0.1" not in str(raised.value)
    finally:
        await store.aclose()


async def test_a_statement_held_up_by_a_row_lock_times_out_and_the_next_call_works(
    postgres_dsn: str, schema: str
) -> None:
    async with opened(postgres_dsn, schema, clock="caller", timeout=0.3, pool_max=1) as store:
        assert await store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, False)
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as locker:
            await locker.execute(
                f'SELECT 1 FROM "{schema}".surefoot_idempotency WHERE key = %s FOR UPDATE', ("k",)
            )
            with pytest.raises(StoreUnavailable) as raised:
                await store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 1)
            assert raised.value.__cause__ is not None
            # The pool's only connection serves the next call: the server ended the
            # abandoned statement (statement_timeout), and a read needs no row lock.
            record = await store.get("k", T0 + 1)
            assert record is not None
            assert record.state is State.IN_FLIGHT
            await locker.rollback()
        assert await store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 2)
        assert await store.begin("k", begin_req("t2"), T0 + 3) == Replay(OK)


async def test_a_reservation_its_caller_gave_up_on_is_given_back(
    postgres_dsn: str, schema: str
) -> None:
    # A pool of the caller's, without statement_timeout: the abandoned begin waits for
    # the lock as long as it is held, then reserves, after its caller has gone.
    async with (
        AsyncConnectionPool(
            postgres_dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
        ) as pool,
        opened(pool, schema, clock="caller", timeout=0.3) as store,
    ):
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as locker:
            await locker.execute(
                f'INSERT INTO "{schema}".surefoot_idempotency (key, state, fingerprint, '
                "token, generation, lease_expires_at, expires_at, ttl) "
                "VALUES ('k', 'in_flight', 'fp', 'other', 1, 0, 0, 0)"
            )
            with pytest.raises(StoreUnavailable):
                await store.begin("k", begin_req("t1"), T0)
            await locker.rollback()
        await settle(store)
        # Nothing executed under t1, so nothing may block the retry.
        assert await store.get("k", T0 + 1) is None
        assert await store.begin("k", begin_req("t2"), T0 + 1) == Reserved("t2", 1, False)


async def test_a_concurrency_slot_its_caller_gave_up_on_is_given_back(
    postgres_dsn: str, schema: str
) -> None:
    slots = Limit(2, 1, algorithm="concurrency", lease=300.0)

    def slot(token: str) -> Item:
        return Item("rl:slots", "concurrency", slots, token=token)

    # Connections not in autocommit: the store commits each step itself.
    async with (
        AsyncConnectionPool(postgres_dsn, min_size=1, max_size=2, open=False) as pool,
        opened(pool, schema, clock="caller", timeout=0.3) as store,
    ):
        [(lock_id,)] = await sql(
            postgres_dsn, f'SELECT "{schema}".surefoot_lock_id(%s)', "rl:slots"
        )
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as locker:
            await locker.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
            with pytest.raises(StoreUnavailable):
                await store.acquire([slot("gone")], T0)
            await locker.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
        await settle(store)
        admitted = [(await store.acquire([slot(f"t{n}")], T0 + 1))[0] for n in range(3)]
        assert admitted == [True, True, False]


class LosesBatchReplies(psycopg.AsyncConnection[Any]):
    """A connection on which a batch of begins or an acquire commits, then its reply is
    lost (as when the connection drops just after the commit)."""

    async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = await super().execute(query, *args, **kwargs)
        if "surefoot_begin_batch(" in str(query) or "surefoot_acquire_v4(" in str(query):
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return cursor


async def test_a_batch_whose_reply_was_lost_gives_back_what_it_may_have_taken(
    postgres_dsn: str, schema: str
) -> None:
    slot = Limit(1, 1, algorithm="concurrency", lease=300.0)
    async with (
        AsyncConnectionPool(
            postgres_dsn,
            min_size=1,
            max_size=2,
            open=False,
            kwargs={"autocommit": True},
            connection_class=LosesBatchReplies,
        ) as pool,
        opened(pool, schema, clock="caller") as store,
    ):
        failed = await asyncio.gather(
            *(store.begin(key, begin_req(f"t-{key}"), T0) for key in ("a", "b", "c")),
            store.acquire([Item("rl:slot", "concurrency", slot, token="gone")], T0),
            return_exceptions=True,
        )
        errors = [error for error in failed if isinstance(error, StoreUnavailable)]
        assert len(errors) == 4
        # The three begins shared a batch; each caller still has a cause of its own to
        # raise and log (one instance raised in three tasks would tangle tracebacks).
        causes = [error.__cause__ for error in errors]
        assert all(isinstance(cause, psycopg.OperationalError) for cause in causes)
        assert len({id(cause) for cause in causes[:3]}) == 3
        await settle(store)
        # The batches committed, but nothing executed under their tokens: all free again.
        for key in ("a", "b", "c"):
            assert await store.get(key, T0 + 1) is None
    async with opened(postgres_dsn, schema, clock="caller") as store:
        item = Item("rl:slot", "concurrency", slot, token="next")
        assert (await store.acquire([item], T0 + 1))[0]
        assert await store.begin("a", begin_req("t2"), T0 + 1) == Reserved("t2", 1, False)


async def test_concurrent_requests_over_the_same_keys_in_any_order_never_deadlock(
    postgres_dsn: str, schema: str
) -> None:
    a = Item("rl:a", "fixed_window", Limit(30, 3600))
    b = Item("rl:b", "sliding_log", Limit(30, 3600, algorithm="sliding_log"))
    async with (
        opened(postgres_dsn, schema, clock="caller", timeout=10) as one,
        opened(postgres_dsn, schema, clock="caller", timeout=10) as two,
    ):
        results = await asyncio.gather(
            *(
                store.acquire([a, b] if n % 2 else [b, a], T0)
                for n in range(40)
                for store in (one, two)
            )
        )
    assert sum(admitted for admitted, _ in results) == 30


async def test_requests_decided_in_one_batch_each_charge_only_what_admitted_them(
    postgres_dsn: str, schema: str
) -> None:
    full = Item("rl:full", "fixed_window", Limit(1, 3600))
    shared = Item("rl:shared", "fixed_window", Limit(5, 3600))
    async with opened(postgres_dsn, schema, clock="caller") as store:
        assert (await store.acquire([full], T0))[0]
        first, second, third = await asyncio.gather(
            store.acquire([full, shared], T0 + 1),  # refused by full: charges nothing
            store.acquire([shared, shared], T0 + 2),  # one key twice: decided on one state
            store.acquire([shared], T0 + 3),
        )
    assert not first[0]
    assert [d.remaining for d in first[1]] == [0, 4]
    assert [(d.allowed, d.remaining) for d in second[1]] == [(True, 4), (True, 4)]
    assert third[1][0].remaining == 3


async def test_begins_and_finishes_sent_together_are_each_answered(
    postgres_dsn: str, schema: str
) -> None:
    async with opened(postgres_dsn, schema, clock="caller") as store:
        decisions = await asyncio.gather(
            store.begin("a", begin_req("t1"), T0),
            store.begin("b", begin_req("t2"), T0),
            store.begin("a", begin_req("t3"), T0),
        )
        assert decisions == [
            Reserved("t1", 1, False),
            Reserved("t2", 1, False),
            InProgress(T0 + LEASE),
        ]
        answers = await asyncio.gather(
            store.finish("a", "t1", Outcome(Step.COMPLETE, OK), T0 + 1),
            store.finish("b", "t2", Outcome(Step.COMPLETE), T0 + 1),  # nothing to keep
            store.finish("a", "t3", Outcome(Step.RELEASE), T0 + 1),  # not the holder
            return_exceptions=True,
        )
        assert answers[0] is True
        assert isinstance(answers[1], ValueError)
        assert answers[2] is False
        b = await store.get("b", T0 + 2)
        assert b is not None
        assert b.state is State.IN_FLIGHT
        assert await store.begin("a", begin_req("t4"), T0 + 2) == Replay(OK)


# -- purging ------------------------------------------------------------------------------


async def test_expired_rows_are_purged_in_batches_after_writes(
    postgres_dsn: str, schema: str
) -> None:
    def count(table: str) -> Any:
        return sql(postgres_dsn, f'SELECT count(*) FROM "{schema}".{table}')

    async with opened(
        postgres_dsn, schema, clock="caller", purge_interval=60, purge_batch=2
    ) as store:
        for n in range(5):
            await store.begin(f"k{n}", begin_req(f"t{n}"), T0)  # each expires at T0 + TTL
            await store.acquire([Item(f"rl:{n}", "fixed_window", Limit(1, 1))], T0)
        await settle(store)  # the first write purged (nothing yet) and set the next purge
        assert await count("surefoot_idempotency") == [(5,)]
        assert await count("surefoot_ratelimit") == [(5,)]

        later = T0 + TTL + 1  # every row has expired
        await store.get("k0", later)  # a read: no purge
        await settle(store)
        assert await count("surefoot_idempotency") == [(5,)]
        await store.begin("new", begin_req("n"), later)
        await settle(store)
        assert await count("surefoot_idempotency") == [(6 - 2,)]
        assert await count("surefoot_ratelimit") == [(5 - 2,)]
        # A full batch brings the next one a second forward, not sooner.
        await store.forget("new", later + 0.5)
        await settle(store)
        assert await count("surefoot_idempotency") == [(3,)]
        await store.forget("missing", later + 1)
        await settle(store)
        assert await count("surefoot_idempotency") == [(1,)]
        assert await count("surefoot_ratelimit") == [(1,)]
        # The operator's purge takes what is left, up to its limit.
        assert await store.purge(later + 2, limit=10) == 1


async def test_sliding_log_entries_are_purged_a_second_after_they_leave_their_window(
    postgres_dsn: str, schema: str
) -> None:
    log = Limit(10, 10, algorithm="sliding_log")
    other = Item("rl:other", "fixed_window", Limit(100, 3600))

    async def entries() -> Any:
        return await sql(
            postgres_dsn,
            f'SELECT key, time FROM "{schema}".surefoot_ratelimit_log ORDER BY key, total',
        )

    async with (
        opened(postgres_dsn, schema, clock="caller", purge_interval=10, purge_batch=2) as store,
        await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as holder,
    ):
        for key, at in (("rl:a", T0), ("rl:b", T0), ("rl:a", T0 + 1), ("rl:b", T0 + 9)):
            assert (await store.acquire([Item(key, "sliding_log", log)], at))[0]
        await settle(store)  # the first write purged (nothing yet) and set the next purge
        # A decision on rl:a under way (its advisory lock held): its entries are skipped.
        lock = f'SELECT "{schema}".surefoot_lock_id(%s)'
        [(lock_id,)] = await (await holder.execute(lock, ("rl:a",))).fetchall()
        await holder.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        await store.acquire([other], T0 + 11.5)  # a write: a purge is due
        await settle(store)
        # rl:b is live, but its entry of T0 left the window (expired at T0 + 10) over a
        # second ago: it goes; rl:a's wait.
        assert await entries() == [("rl:a", T0), ("rl:a", T0 + 1), ("rl:b", T0 + 9)]
        await holder.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
        await store.acquire([other], T0 + 21.5)
        await settle(store)
        assert await entries() == [("rl:b", T0 + 9)]  # a batch: 2 of the 3
        await store.acquire([other], T0 + 22.5)  # a full batch brings the next one forward
        await settle(store)
        assert await entries() == []
        # The logs start afresh.
        _, [decision] = await store.acquire([Item("rl:b", "sliding_log", log)], T0 + 23)
        assert decision.remaining == 9
