"""What ``SyncPostgresStore`` promises beyond the shared contract suites.

The contract suites run over it through ``conftest.AsyncView`` (``sync_postgres``); here:
the same URL options and errors as ``PostgresStore``; migrations checked on first use,
never applied; calls bounded by the timeout (a row lock held elsewhere), with no secret of
the connection string in any message; a call whose reply was lost gives back what it may
have taken before it raises; a shared pool without autocommit; threads and OS processes
sharing the database reserve a key once and admit exactly a limit; the same answers as
``PostgresStore`` for the same steps, on records either store can read; the purge in the
background. Every test has its own schema on the shared server, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from _support import T0, forked_child
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency import (
    Begin,
    IdempotencyStore,
    InProgress,
    Outcome,
    Replay,
    Reserved,
    State,
    Step,
    StoredResponse,
    SyncIdempotencyStore,
)
from surefoot.ratelimit import (
    ALGORITHM_BY_NAME,
    Item,
    Limit,
    RateLimitStore,
    SyncRateLimitStore,
)
from surefoot.storage.postgres import PostgresStore, SyncPostgresStore, migrate
from surefoot.webhooks import Verdict

LEASE, TTL = 30.0, 3600.0
OK = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}')
UNREACHABLE = "postgresql://postgres:s3cret@127.0.0.1:1/test"
GUARD = 60.0  # seconds a wait may last before the test fails instead of hanging


def begin_req(token: str | None = None, mode: str = "unknown") -> Begin:
    return Begin("fp", token or uuid.uuid4().hex, LEASE, TTL, mode)  # type: ignore[arg-type]


@contextlib.contextmanager
def new_schema(dsn: str, *, migrated: bool = True) -> Iterator[str]:
    name = f"surefoot_test_{uuid.uuid4().hex[:12]}"
    if migrated:
        asyncio.run(migrate(dsn, schema=name))
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    with new_schema(postgres_dsn) as name:
        yield name


@contextlib.contextmanager
def opened(dsn: str | Any, schema: str, **options: Any) -> Iterator[SyncPostgresStore]:
    """A store on ``schema`` with a patient timeout (5 s) unless the test gives its own,
    as in ``test_postgres_store.py``."""
    store = SyncPostgresStore(dsn, schema=schema, **{"timeout": 5, **options})
    try:
        yield store
    finally:
        store.close()


def sql(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(query, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


# -- configuration ------------------------------------------------------------------------


def test_a_url_sets_the_same_options_as_for_the_async_store() -> None:
    url = (
        "postgres://app:s3cret@db.example:6432/api?schema=limits&clock=caller&timeout=0.2"
        "&pool_min=0&pool_max=3&sslmode=disable"
    )
    store, twin = SyncPostgresStore.from_url(url), PostgresStore.from_url(url)
    fields = ("schema", "clock", "timeout", "pool_min", "pool_max", "_dsn", "_sql")
    assert [getattr(store, f) for f in fields] == [getattr(twin, f) for f in fields]
    assert (store.schema, store.clock, store.timeout, store.pool_max) == (
        "limits",
        "caller",
        0.2,
        3,
    )
    assert repr(store) == repr(twin).replace("PostgresStore", "SyncPostgresStore", 1)
    assert "s3cret" not in repr(store)
    assert isinstance(store, SyncIdempotencyStore)
    assert isinstance(store, SyncRateLimitStore)
    assert not isinstance(store, IdempotencyStore)
    assert not isinstance(store, RateLimitStore)


@pytest.mark.parametrize(
    ("query", "named"),
    [("clock=local", "clock"), ("timeout=0", "timeout"), ("pool_max=0", "pool_max")],
)
def test_a_bad_url_option_is_named_without_the_password(query: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named) as raised:
        SyncPostgresStore.from_url(f"postgresql://app:s3cret@db/api?{query}")
    assert "s3cret" not in str(raised.value)


def test_bad_arguments_and_connection_strings_are_named_under_the_store_s_own_name() -> None:
    with pytest.raises(ConfigurationError, match=r"^SyncPostgresStore\.purge_batch"):
        SyncPostgresStore("postgresql://db/api", purge_batch=0)
    with pytest.raises(ConfigurationError) as raised:
        SyncPostgresStore("host=db password=S3CRET colour")
    assert str(raised.value).startswith("SyncPostgresStore: invalid connection string: ")
    assert "S3CRET" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="ConnectionPool"):
        SyncPostgresStore(object())  # type: ignore[arg-type]


# -- migrations ---------------------------------------------------------------------------


def test_the_store_never_creates_tables_and_says_how_to_migrate(postgres_dsn: str) -> None:
    with new_schema(postgres_dsn, migrated=False) as name, opened(postgres_dsn, name) as store:
        for call in (
            lambda: store.begin("k", begin_req(), T0),
            lambda: store.acquire([Item("rl:a", "fixed_window", Limit(5, 60))], T0),
            lambda: store.open(wait=5),
        ):
            with pytest.raises(ConfigurationError) as raised:
                call()
            assert str(raised.value).startswith(f"SyncPostgresStore: schema {name!r} lacks")
            assert "surefoot migrate --store URL" in str(raised.value)
        [(absent,)] = sql(postgres_dsn, "SELECT to_regnamespace(%s) IS NULL", name)
        assert absent  # not even the schema
        asyncio.run(migrate(postgres_dsn, schema=name))
        assert store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, False)


def test_a_database_migrated_by_a_newer_surefoot_is_refused(postgres_dsn: str, schema: str) -> None:
    sql(
        postgres_dsn,
        f"INSERT INTO \"{schema}\".surefoot_schema_migrations VALUES (9999, '9999_future')",
    )
    with (
        opened(postgres_dsn, schema) as store,
        pytest.raises(ConfigurationError, match=r"9999.*upgrade surefoot"),
    ):
        store.get("k", T0)


# -- timeouts and failures ----------------------------------------------------------------


def test_an_unreachable_database_is_store_unavailable_without_its_secrets() -> None:
    with opened(UNREACHABLE, "public", timeout=0.1) as store:
        calls: list[Callable[[], object]] = [
            lambda: store.begin("k", begin_req(), T0),
            lambda: store.acquire([Item("rl:a", "fixed_window", Limit(5, 60))], T0),
            lambda: store.records(T0),
            lambda: store.open(wait=0.1),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as raised:
                call()
            assert raised.value.__cause__ is not None
            assert "s3cret" not in str(raised.value)
            assert "127.0.0.1" not in str(raised.value)


def test_a_statement_held_up_by_a_row_lock_times_out_and_the_next_call_works(
    postgres_dsn: str, schema: str
) -> None:
    with opened(postgres_dsn, schema, clock="caller", timeout=0.3, pool_max=1) as store:
        assert store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, False)
        with psycopg.connect(postgres_dsn) as locker:
            locker.execute(
                f'SELECT 1 FROM "{schema}".surefoot_idempotency WHERE key = %s FOR UPDATE', ("k",)
            )
            with pytest.raises(StoreUnavailable) as raised:
                store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 1)
            assert isinstance(raised.value.__cause__, psycopg.errors.QueryCanceled)
            # The pool's only connection serves the next call, and a read takes no lock.
            record = store.get("k", T0 + 1)
            assert record is not None
            assert record.state is State.IN_FLIGHT
            locker.rollback()
        assert store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 2)
        assert store.begin("k", begin_req("t2"), T0 + 3) == Replay(OK)


def test_a_begin_that_timed_out_reserved_nothing(postgres_dsn: str, schema: str) -> None:
    with opened(postgres_dsn, schema, clock="caller", timeout=0.3) as store:
        with psycopg.connect(postgres_dsn) as locker:
            # Another transaction's row for the key, not committed: the begin waits for it.
            locker.execute(
                f'INSERT INTO "{schema}".surefoot_idempotency (key, state, fingerprint, '
                "token, generation, lease_expires_at, expires_at, ttl) "
                "VALUES ('k', 'in_flight', 'fp', 'other', 1, 0, 0, 0)"
            )
            with pytest.raises(StoreUnavailable):
                store.begin("k", begin_req("t1"), T0)
            locker.rollback()
        assert store.get("k", T0 + 1) is None
        assert store.begin("k", begin_req("t2"), T0 + 1) == Reserved("t2", 1, False)


class LosesReplies(psycopg.Connection[Any]):
    """A connection on which a begin, an acquire or an ordering claim commits, then its
    reply is lost (as when the connection drops just after the commit)."""

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = super().execute(query, *args, **kwargs)
        if any(f"surefoot_{name}(" in str(query) for name in ("begin_batch", "acquire_v4")) or (
            "surefoot_order_claim(" in str(query)
        ):
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return cursor


def test_a_call_whose_reply_was_lost_gives_back_what_it_may_have_taken(
    postgres_dsn: str, schema: str
) -> None:
    slot = Item("rl:slot", "concurrency", Limit(1, 1, algorithm="concurrency", lease=300.0))
    with (
        ConnectionPool(
            postgres_dsn,
            min_size=1,
            max_size=2,
            open=True,
            kwargs={"autocommit": True},
            connection_class=LosesReplies,
        ) as pool,
        opened(pool, schema, clock="caller") as store,
    ):
        calls: list[Callable[[], object]] = [
            lambda: store.begin("a", begin_req("t1"), T0),
            lambda: store.acquire([slot._replace(token="gone")], T0),
            lambda: store.order_claim(
                "order", version=1, token="gone", now=T0, lease=30, retention=3600
            ),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as raised:
                call()
            assert isinstance(raised.value.__cause__, psycopg.OperationalError)
        # Each committed, but nothing executed under its token: given back before it raised.
        assert store.get("a", T0 + 1) is None
        record = store.order_get("order", T0 + 1)
        assert record is not None
        assert (record.holder, record.newest) == (None, None)
    with opened(postgres_dsn, schema, clock="caller") as store:
        assert store.acquire([slot._replace(token="next")], T0 + 1)[0]
        assert store.begin("a", begin_req("t2"), T0 + 1) == Reserved("t2", 1, False)
        claim = store.order_claim("order", version=1, token="next", now=T0, lease=30, retention=60)
        assert claim.verdict is Verdict.PROCEED


class CountsReleases(LosesReplies):
    """``LosesReplies``, counting the statements that give concurrency slots back."""

    releases: ClassVar[list[str]] = []

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        if "surefoot_release(" in str(query):
            CountsReleases.releases.append(str(query))
        return super().execute(query, *args, **kwargs)


def test_the_slots_of_a_failed_acquire_are_given_back_in_one_statement(
    postgres_dsn: str, schema: str
) -> None:
    one = Limit(1, 1, algorithm="concurrency", lease=300.0)
    slots = [Item(f"rl:{{u}}:s{n}", "concurrency", one, token="gone") for n in range(3)]
    CountsReleases.releases = []
    with (
        ConnectionPool(
            postgres_dsn,
            min_size=1,
            max_size=2,
            open=True,
            kwargs={"autocommit": True},
            connection_class=CountsReleases,
        ) as pool,
        opened(pool, schema, clock="caller") as store,
        pytest.raises(StoreUnavailable),
    ):
        store.acquire(slots, T0)
    assert len(CountsReleases.releases) == 1  # one round trip, one timeout, for the three
    with opened(postgres_dsn, schema, clock="caller") as store:
        admitted, _ = store.acquire([s._replace(token="next") for s in slots], T0 + 1)
        assert admitted


def test_by_default_the_pool_keeps_a_connection_per_thread_from_open_on(
    postgres_dsn: str, schema: str
) -> None:
    with opened(postgres_dsn, schema, pool_max=4) as store:
        assert store.pool_min == store.pool_max == 4
        store.open()
        assert store._pool is not None
        assert store._pool.get_stats()["pool_size"] == 4
    assert SyncPostgresStore(postgres_dsn).pool_min == 10
    assert SyncPostgresStore(postgres_dsn, pool_min=1).pool_min == 1


FORK = (
    multiprocessing.get_context("fork")
    if "fork" in multiprocessing.get_all_start_methods()
    else None
)
SLOTS_FORKED = Limit(5, 60, algorithm="sliding_window")


def backend_pid(store: SyncPostgresStore) -> int:
    assert store._pool is not None
    with store._pool.connection() as conn:
        return int(conn.info.backend_pid)


def forked_racer(store: SyncPostgresStore, barrier: Any, out: Path) -> None:
    """In a forked child, with the parent's store: begins and acquires, and the backend
    pid of a connection of the child's pool."""
    forked_child()
    barrier.wait(GUARD)
    decisions = [type(store.begin("hot", begin_req(), T0)).__name__ for _ in range(10)]
    item = Item("rl:forked", "sliding_window", SLOTS_FORKED)
    admitted = sum(store.acquire([item], T0)[0] for _ in range(10))
    pid = backend_pid(store)
    store.close()
    out.write_text(json.dumps({"decisions": decisions, "admitted": admitted, "pid": pid}))


@pytest.mark.slow
@pytest.mark.skipif(FORK is None, reason="no fork on this platform")
def test_a_store_opened_before_a_fork_works_in_every_child_and_still_in_the_parent(
    postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    assert FORK is not None
    with opened(postgres_dsn, schema, clock="caller", pool_max=2) as store:
        store.open()  # as at an application's start-up, before gunicorn forks its workers
        assert store.begin("before", begin_req("p1"), T0) == Reserved("p1", 1, False)
        parent_pid = backend_pid(store)
        barrier = FORK.Barrier(3)
        outs = [tmp_path / f"child-{n}.json" for n in range(3)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            children = [
                FORK.Process(target=forked_racer, args=(store, barrier, out), daemon=True)
                for out in outs
            ]
            for child in children:
                child.start()
        try:
            for child in children:
                child.join(GUARD)
        finally:
            for child in children:
                if child.is_alive():
                    child.kill()
        assert [c.exitcode for c in children] == [0, 0, 0]
        results = [json.loads(out.read_text()) for out in outs]
        decisions = [name for result in results for name in result["decisions"]]
        assert decisions.count("Reserved") == 1
        assert decisions.count("InProgress") == 29
        assert sum(result["admitted"] for result in results) == SLOTS_FORKED.amount
        pids = {result["pid"] for result in results}
        assert len(pids) == 3
        assert parent_pid not in pids  # each child on connections of its own
        # The parent's pool was left alone: it still works.
        assert store.begin("hot", begin_req("p2"), T0) == InProgress(T0 + LEASE)
        assert store.begin("after", begin_req("p3"), T0) == Reserved("p3", 1, False)


def test_a_shared_pool_without_autocommit_gets_each_step_committed(
    postgres_dsn: str, schema: str
) -> None:
    with ConnectionPool(postgres_dsn, min_size=1, max_size=2, open=True) as pool:
        with opened(pool, schema, clock="caller") as store:
            assert store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, False)
            assert sql(postgres_dsn, f'SELECT token FROM "{schema}".surefoot_idempotency') == [
                ("t1",)
            ]
        with pool.connection() as conn:  # the store left the caller's pool open
            assert conn.execute("SELECT 1").fetchall() == [(1,)]


# -- the same steps as PostgresStore --------------------------------------------------------


def test_the_sync_and_async_stores_answer_alike_and_read_each_other_s_records(
    postgres_dsn: str,
) -> None:
    def steps(store: Any) -> list[Any]:
        """One script of steps; each answer is awaited if the store is async."""
        calls: list[Callable[[], Any]] = [
            lambda: store.begin("k", begin_req("t1"), T0),
            lambda: store.begin("k", begin_req("t2"), T0 + 1),
            lambda: store.begin("k", Begin("other", "t3", LEASE, TTL, "unknown"), T0 + 1),
            lambda: store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 2),
            lambda: store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 2),
            lambda: store.begin("k", begin_req("t4"), T0 + 3),
            lambda: store.begin("u", begin_req("t5"), T0),
            lambda: store.finish("u", "t5", Outcome(Step.MARK_UNKNOWN), T0 + 1),
            lambda: store.begin("u", begin_req("t6"), T0 + 2),
            lambda: store.resolve("u", OK, T0 + 3),
            lambda: store.get("u", T0 + 4),
            lambda: store.records(T0 + 4),
            lambda: store.records(T0 + 4, state=State.ABSENT),
            lambda: store.forget("u", T0 + 5),
            lambda: store.get("u", T0 + 5),
            lambda: store.begin("x", begin_req("t7", "reexecute"), T0),
            lambda: store.begin("x", begin_req("t8", "reexecute"), T0 + LEASE + 1),
            lambda: store.purge(T0 + TTL * 10),
            lambda: store.order_claim("o", version=2, token="a", now=T0, lease=30, retention=60),
            lambda: store.order_claim("o", version=3, token="b", now=T0, lease=30, retention=60),
            lambda: store.order_settle("o", token="a", version=2, ok=True, now=T0, retention=60),
            lambda: store.order_get("o", T0 + 1),
            lambda: store.board_claim("b", "s", b"one", T0 + 60, T0),
            lambda: store.board_claim("b", "s", b"two", T0 + 60, T0),
            lambda: store.board_put("b", "t", b"three", T0 + 60, T0),
            lambda: store.board_read("b", T0 + 1),
            lambda: store.board_delete("b", "s", T0 + 1),
            lambda: store.board_read("b", T0 + 1),
        ]
        for name in sorted(ALGORITHM_BY_NAME):
            limit = Limit(2, 10, algorithm=name, lease=300.0)
            items = [Item(f"rl:{name}", name, limit, token=f"tok-{name}")]
            calls += [lambda items=items, i=i: store.acquire(items, T0 + i) for i in range(3)]
        calls.append(lambda: store.release("rl:concurrency", "tok-concurrency", T0 + 3))
        return calls

    with (
        new_schema(postgres_dsn) as one,
        new_schema(postgres_dsn) as two,
        asyncio.Runner() as runner,  # one loop for the async store
    ):

        def play(store: Any) -> list[Any]:
            answers = []
            for call in steps(store):
                answer = call()
                answers.append(runner.run(answer) if asyncio.iscoroutine(answer) else answer)
            return answers

        twin = PostgresStore(postgres_dsn, schema=one, clock="caller", timeout=5)
        try:
            expected = play(twin)
            with opened(postgres_dsn, two, clock="caller") as store:
                assert play(store) == expected
            # One schema, both stores: each reads and settles the other's records.
            with opened(postgres_dsn, one, clock="caller") as store:
                assert runner.run(twin.begin("n", begin_req("t9"), T0)) == Reserved("t9", 1, False)
                assert store.finish("n", "t9", Outcome(Step.COMPLETE, OK), T0 + 1)
                assert runner.run(twin.begin("n", begin_req(), T0 + 2)) == Replay(OK)
                assert store.begin("m", begin_req("t10"), T0) == Reserved("t10", 1, False)
                assert runner.run(twin.finish("m", "t10", Outcome(Step.COMPLETE, OK), T0 + 1))
                assert store.begin("m", begin_req(), T0 + 2) == Replay(OK)
                assert store.get("m", T0 + 2) == runner.run(twin.get("m", T0 + 2))
        finally:
            runner.run(twin.aclose())


def test_expired_rows_are_purged_in_the_background_after_writes(
    postgres_dsn: str, schema: str
) -> None:
    def count() -> int:
        [(rows,)] = sql(postgres_dsn, f'SELECT count(*) FROM "{schema}".surefoot_idempotency')
        return int(rows)

    short = Begin("fp", "t", LEASE, 10.0, "unknown")
    with opened(postgres_dsn, schema, clock="caller", purge_interval=60) as store:
        for n in range(5):  # the first write's purge finds nothing expired yet
            store.begin(f"old{n}", short._replace(token=f"t{n}"), T0)
        assert count() == 5
        store.begin("new", begin_req("tn"), T0 + 30)  # no purge due yet
    assert count() == 6  # close waited for the purge under way, which deleted nothing
    with opened(postgres_dsn, schema, clock="caller", purge_interval=60) as store:
        store.begin("new", begin_req("tn2"), T0 + 61)  # a new store: a purge is due at once
    assert count() == 1


# -- threads and processes -------------------------------------------------------------------


def test_threads_sharing_a_store_reserve_a_key_once_on_fewer_connections(
    postgres_dsn: str, schema: str
) -> None:
    answers: list[Any] = []
    barrier = threading.Barrier(8)
    with opened(postgres_dsn, schema, clock="caller", timeout=10, pool_max=3) as store:

        def run() -> None:
            barrier.wait(GUARD)
            answers.extend(store.begin("hot", begin_req(), T0) for _ in range(25))

        threads = [threading.Thread(target=run) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD)
    assert len(answers) == 200
    assert sum(isinstance(a, Reserved) for a in answers) == 1
    assert sum(isinstance(a, InProgress) for a in answers) == 199


CTX = multiprocessing.get_context("spawn")
WORKERS, CALLS = 4, 50
SLIDING = Limit(30, 60, algorithm="sliding_window")  # 30 a minute


def racer(dsn: str, schema: str, barrier: Any, out: Path) -> None:
    """Begin one key ``CALLS`` times, then acquire one limit ``CALLS`` times, together
    with the other workers (each with its store, on the database's clock); write the
    names of the decisions and how many acquires were admitted."""
    store = SyncPostgresStore(dsn, schema=schema, timeout=30)
    try:
        barrier.wait(GUARD)
        decisions = [type(store.begin("hot", begin_req(), T0)).__name__ for _ in range(CALLS)]
        barrier.wait(GUARD)
        item = Item("rl:shared", "sliding_window", SLIDING)
        admitted = sum(store.acquire([item], T0)[0] for _ in range(CALLS))
    finally:
        store.close()
    out.write_text(json.dumps({"decisions": decisions, "admitted": admitted}))


@pytest.mark.slow
def test_processes_reserve_a_key_once_and_admit_exactly_the_limit(
    postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    barrier = CTX.Barrier(WORKERS)
    outs = [tmp_path / f"worker-{n}.json" for n in range(WORKERS)]
    processes = [
        CTX.Process(target=racer, args=(postgres_dsn, schema, barrier, out), daemon=True)
        for out in outs
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(GUARD * 2)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    assert [p.exitcode for p in processes] == [0] * WORKERS
    results = [json.loads(out.read_text()) for out in outs]
    decisions = [name for result in results for name in result["decisions"]]
    assert len(decisions) == WORKERS * CALLS
    assert decisions.count("Reserved") == 1
    assert decisions.count("InProgress") == WORKERS * CALLS - 1
    assert sum(result["admitted"] for result in results) == SLIDING.amount
