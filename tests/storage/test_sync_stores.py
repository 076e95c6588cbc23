"""The synchronous stores (``SyncMemoryStore``, ``SyncSqliteStore``, ``sync_store_from_url``).

The contract suites run over them through ``conftest.AsyncView`` (the ``sync_*`` kinds);
here: what only a blocking store can show. Threads sharing one store and OS processes
sharing one file reserve a key exactly once and never admit more than a limit, and so do
the workers a server forks from a process that created the store (preloaded apps);
``SyncSqliteStore`` backs off while another process holds SQLite's write lock, answers a
replay without that lock, never fails a step for its piggybacked purge, and shares its
file with ``SqliteStore``; ``sync_store_from_url`` reads the URLs ``store_from_url`` reads
and refuses the ones it refuses.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import multiprocessing
import re
import sqlite3
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import surefoot.storage.sqlite as sqlite_module
from _services import store_url_sync
from _support import T0, forked_child
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency import (
    Begin,
    IdempotencyStore,
    InProgress,
    Outcome,
    Replay,
    Reserved,
    Step,
    StoredResponse,
    SyncIdempotencyStore,
)
from surefoot.ratelimit import Item, Limit, RateLimitStore, SyncRateLimitStore
from surefoot.storage import (
    STORES,
    SYNC_STORES,
    SqliteStore,
    SyncMemoryStore,
    SyncSqliteStore,
    SyncStore,
    check_store_url,
    store_from_url,
    sync_store_from_url,
)

LEASE, TTL = 30.0, 3600.0
OK = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}')
LIMIT = Limit(30, 60, algorithm="sliding_window")  # 30 a minute
GUARD = 60.0  # seconds a wait may last before the test fails instead of hanging


def begin_req() -> Begin:
    return Begin("fp", uuid.uuid4().hex, LEASE, TTL, "unknown")


def acquire_one(store: Any, key: str = "rl:{shared}") -> bool:
    admitted, [decision] = store.acquire([Item(key, "sliding_window", LIMIT)], T0)
    assert admitted is decision.allowed
    return bool(admitted)


@pytest.fixture(params=["memory", "sqlite"])
def sync_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    store: Any = (
        SyncMemoryStore() if request.param == "memory" else SyncSqliteStore(tmp_path / "s.db")
    )
    try:
        yield store
    finally:
        store.close()


# -- what they are -------------------------------------------------------------------------


def test_each_sync_store_is_a_sync_store_and_not_an_async_one(sync_store: Any) -> None:
    assert isinstance(sync_store, SyncStore)
    assert isinstance(sync_store, SyncIdempotencyStore)
    assert isinstance(sync_store, SyncRateLimitStore)
    assert not isinstance(sync_store, IdempotencyStore)
    assert not isinstance(sync_store, RateLimitStore)
    methods = [
        name
        for name, value in inspect.getmembers(type(sync_store), inspect.isfunction)
        if not name.startswith("_")
    ]
    assert "begin" in methods
    assert "close" in methods
    assert [
        name for name in methods if inspect.iscoroutinefunction(getattr(sync_store, name))
    ] == []


def test_a_sync_store_answers_at_once_with_the_same_decisions(sync_store: Any) -> None:
    first = begin_req()
    assert sync_store.begin("k", first, T0) == Reserved(first.token, 1, took_over=False)
    assert isinstance(sync_store.begin("k", begin_req(), T0 + 1), InProgress)
    assert sync_store.finish("k", first.token, Outcome(Step.COMPLETE, OK), T0 + 2)
    assert sync_store.begin("k", begin_req(), T0 + 3) == Replay(OK)
    assert [key for key, _ in sync_store.records(T0 + 3)] == ["k"]


# -- threads and processes -------------------------------------------------------------------


#: Rounds of a race between threads: many races, for a step that is not atomic to lose one.
ROUNDS = 100


def _in_threads(n: int, step: Callable[[int], Any]) -> list[tuple[int, Any]]:
    """Run ``step(i)`` for each round ``i`` in ``n`` threads, released together at each
    round and switching between them as often as the interpreter can (so a step that is
    not atomic shows it); every ``(i, answer)``, in no order."""
    barrier = threading.Barrier(n)
    answers: list[tuple[int, Any]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for i in range(ROUNDS):
                barrier.wait(GUARD)
                answers.append((i, step(i)))
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run) for _ in range(n)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert len(answers) == n * ROUNDS
    return answers


def test_threads_sharing_a_store_reserve_a_key_exactly_once(sync_store: Any) -> None:
    decisions = _in_threads(
        8, lambda i: type(sync_store.begin(f"hot-{i}", begin_req(), T0)).__name__
    )
    reserved = Counter(i for i, name in decisions if name == "Reserved")
    assert reserved == dict.fromkeys(range(ROUNDS), 1)
    assert sum(name == "InProgress" for _, name in decisions) == 7 * ROUNDS


def test_threads_sharing_a_store_admit_exactly_the_limit(sync_store: Any) -> None:
    three = Limit(3, 60, algorithm="sliding_window")

    def acquire(i: int) -> bool:
        admitted, _ = sync_store.acquire([Item(f"rl:{i}", "sliding_window", three)], T0)
        return bool(admitted)

    admitted = _in_threads(8, acquire)
    assert Counter(i for i, ok in admitted if ok) == dict.fromkeys(range(ROUNDS), 3)


def test_threads_claiming_one_board_slot_set_it_once(sync_store: Any) -> None:
    # The board contract suite runs over the async stores only; its atomic step here.
    def claim(i: int) -> tuple[bool, bytes]:
        value = threading.current_thread().name.encode()
        return sync_store.board_claim("sent", f"s{i}", value, T0 + 60, T0), value

    answers = _in_threads(8, claim)
    winners = {i: value for i, (won, value) in answers if won}
    assert sum(won for _, (won, _) in answers) == len(winners) == ROUNDS
    # Each slot holds its winner's value: the others found it set and wrote nothing.
    assert sync_store.board_read("sent", T0) == {f"s{i}": v for i, v in winners.items()}
    assert sync_store.board_delete("sent", "s0", T0)
    assert len(sync_store.board_read("sent", T0)) == ROUNDS - 1


def test_cache_entries_are_read_back_until_they_expire(sync_store: Any) -> None:
    sync_store.cache_put("c", b"value", T0 + 10, T0)
    assert sync_store.cache_get("c", T0 + 10) == b"value"
    assert sync_store.cache_get("c", T0 + 11) is None


CTX = multiprocessing.get_context("spawn")
WORKERS, CALLS = 4, 50
#: The synchronous store of each network kind (the processes' test runs over them once written).
SYNC_CLASSES = {
    "redis": ("surefoot.storage.redis", "SyncRedisStore"),
    "redis_cluster": ("surefoot.storage.redis", "SyncRedisStore"),
    "postgres": ("surefoot.storage.postgres", "SyncPostgresStore"),
}


def racer(url: str, barrier: Any, out: Path) -> None:
    """Begin one key ``CALLS`` times, then acquire one limit ``CALLS`` times, together with
    the other workers; write the names of the decisions and how many were admitted."""
    store: Any = sync_store_from_url(url)
    try:
        barrier.wait(GUARD)
        decisions = [type(store.begin("hot", begin_req(), T0)).__name__ for _ in range(CALLS)]
        barrier.wait(GUARD)
        admitted = sum(acquire_one(store) for _ in range(CALLS))
    finally:
        store.close()
    out.write_text(json.dumps({"decisions": decisions, "admitted": admitted}))


@pytest.fixture(params=["sqlite", "redis", "redis_cluster", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store every process opens by URL, set up before the workers start."""
    kind: str = request.param
    if kind in SYNC_CLASSES:
        module, name = SYNC_CLASSES[kind]
        if not hasattr(importlib.import_module(module), name):
            pytest.skip(f"{module}.{name} does not exist yet")
    options = "lock_timeout=30" if kind == "sqlite" else "timeout=30"
    with store_url_sync(kind, tmp_path, options=options) as url:
        keeper = sync_store_from_url(url)  # creates the SQLite file before the workers
        try:
            yield url
        finally:
            keeper.close()


@pytest.mark.slow
def test_processes_sharing_a_store_reserve_once_and_admit_exactly_the_limit(
    shared_url: str, tmp_path: Path
) -> None:
    barrier = CTX.Barrier(WORKERS)
    outs = [tmp_path / f"worker-{n}.json" for n in range(WORKERS)]
    processes = [
        CTX.Process(target=racer, args=(shared_url, barrier, outs[n]), daemon=True)
        for n in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(GUARD * 2)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    results = [json.loads(out.read_text()) for out in outs]
    decisions = [name for r in results for name in r["decisions"]]
    assert len(decisions) == WORKERS * CALLS
    assert decisions.count("Reserved") == 1
    assert decisions.count("InProgress") == WORKERS * CALLS - 1
    assert sum(r["admitted"] for r in results) == LIMIT.amount


# -- SyncSqliteStore and SQLite's write lock ------------------------------------------------


class FakeSleep:
    """``time`` for ``surefoot.storage.sqlite``: the back-off's pauses are recorded, not
    slept (no test waits for time), and ``at[n]`` runs at the n-th pause (from 1)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.at: dict[int, Callable[[], object]] = {}

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        action = self.at.pop(len(self.pauses), None)
        if action is not None:
            action()


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> FakeSleep:
    fake = FakeSleep()
    monkeypatch.setattr(sqlite_module, "time", fake)
    return fake


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection of "another process" to ``tmp_path / "s.db"``, released afterwards."""
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        yield db
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()


def test_sqlite_a_step_waits_out_another_process_s_write_lock_then_fails(
    tmp_path: Path, backoff: FakeSleep, holder: sqlite3.Connection
) -> None:
    store = SyncSqliteStore(tmp_path / "s.db", lock_timeout=0.05)
    first = begin_req()
    assert isinstance(store.begin("done", first, T0), Reserved)
    assert store.finish("done", first.token, Outcome(Step.COMPLETE, OK), T0)
    holder.execute("BEGIN IMMEDIATE")  # as another process mid-transaction
    with pytest.raises(StoreUnavailable) as failed:
        store.begin("new", begin_req(), T0)
    assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
    # It tried again and again, and failed once its pauses added up to lock_timeout.
    assert len(backoff.pauses) > 2
    assert sum(backoff.pauses[:-1]) < store.lock_timeout <= sum(backoff.pauses)
    backoff.pauses.clear()
    with pytest.raises(StoreUnavailable):
        acquire_one(store)
    assert sum(backoff.pauses) >= store.lock_timeout
    # What needs no write needs no write lock (Rule 11): reads and replays answer.
    assert store.get("new", T0) is None
    assert store.begin("done", begin_req(), T0 + 1) == Replay(OK)
    holder.execute("ROLLBACK")
    assert isinstance(store.begin("new", begin_req(), T0 + 2), Reserved)
    assert acquire_one(store)
    store.close()


def test_sqlite_a_step_goes_through_when_the_lock_is_released_during_its_wait(
    tmp_path: Path, backoff: FakeSleep, holder: sqlite3.Connection
) -> None:
    store = SyncSqliteStore(tmp_path / "s.db", lock_timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    backoff.at[3] = lambda: holder.execute("ROLLBACK")
    first = begin_req()
    assert store.begin("k", first, T0) == Reserved(first.token, 1, took_over=False)
    assert len(backoff.pauses) == 3  # three tries refused, the fourth went through
    holder.execute("BEGIN IMMEDIATE")
    backoff.at[5] = lambda: holder.execute("ROLLBACK")
    assert acquire_one(store)
    assert len(backoff.pauses) == 5
    store.close()


def test_sqlite_purge_backs_off_as_a_step_does_and_fails_as_store_unavailable(
    tmp_path: Path, backoff: FakeSleep, holder: sqlite3.Connection
) -> None:
    store = SyncSqliteStore(tmp_path / "s.db", lock_timeout=0.05)
    for i in range(3):
        store.begin(f"k{i}", Begin("fp", f"t{i}", LEASE, 120, "unknown"), T0)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable) as failed:
        store.purge(T0 + 200)
    assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
    assert sum(backoff.pauses) >= store.lock_timeout
    backoff.pauses.clear()
    backoff.at[2] = lambda: holder.execute("ROLLBACK")
    assert store.purge(T0 + 200) == 3
    assert len(backoff.pauses) == 2
    store.close()


def test_sqlite_a_read_that_finds_the_file_locked_is_store_unavailable(tmp_path: Path) -> None:
    store = SyncSqliteStore(tmp_path / "s.db")
    # As after a fork (Rule 15): the store's connection is closed, to be opened at its
    # next call, which finds the file held by a process in exclusive locking mode.
    store._before_fork()
    store._after_fork_in_parent()
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("PRAGMA locking_mode = EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO surefoot_cache VALUES ('c', x'00', 1)")
    reads: list[Callable[[], object]] = [
        lambda: store.get("k", T0),
        lambda: store.records(T0),
        lambda: store.begin("k", begin_req(), T0),
        lambda: store.cache_get("c", T0),
        lambda: store.board_read("b", T0),
        lambda: store.order_get("k", T0),
    ]
    try:
        for read in reads:
            with pytest.raises(StoreUnavailable) as failed:
                read()
            assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.get("k", T0) is None
    store.close()


def test_sqlite_a_failing_purge_never_fails_the_step_it_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = SyncSqliteStore(tmp_path / "s.db")
    # Stands for SQLITE_FULL or SQLITE_IOERR during the purge, after the step committed.
    monkeypatch.setattr(sqlite_module, "_PURGE_BOARD", "DELETE FROM no_such_table WHERE ? AND ?")
    first = begin_req()
    with caplog.at_level(logging.WARNING, logger="surefoot.storage"):
        assert store.begin("k", first, T0) == Reserved(first.token, 1, took_over=False)
        assert store.finish("k", first.token, Outcome(Step.COMPLETE, OK), T0 + 1)
        assert store.begin("k", begin_req(), T0 + 2) == Replay(OK)
    # Logged once: the next batch waits its interval rather than failing every write.
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "expired rows" in warning.getMessage()
    assert isinstance(warning.exc_info and warning.exc_info[1], StoreUnavailable)
    store.close()


def test_sqlite_expired_rows_are_purged_in_batches_on_writes(tmp_path: Path) -> None:
    store = SyncSqliteStore(tmp_path / "s.db", purge_interval=60, purge_batch=3)
    for i in range(7):
        store.begin(f"k{i}", Begin("fp", f"t{i}", LEASE, 120, "unknown"), T0)
    reader = sqlite3.connect(tmp_path / "s.db")

    def rows() -> int:
        return int(reader.execute("SELECT count(*) FROM surefoot_idempotency").fetchone()[0])

    assert rows() == 7
    # The first write after they expired deletes one batch of 3 (the new row is live).
    store.begin("n1", begin_req(), T0 + 200)
    assert rows() == 8 - 3
    # A full batch brings the next one forward by a second only.
    store.begin("n2", begin_req(), T0 + 200.5)
    assert rows() == 6
    store.begin("n3", begin_req(), T0 + 201)
    assert rows() == 7 - 3
    reader.close()
    store.close()


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -1.0])
def test_sqlite_lock_timeout_must_be_a_finite_number_of_seconds(tmp_path: Path, bad: float) -> None:
    for cls in (SyncSqliteStore, SqliteStore):
        with pytest.raises(ConfigurationError, match=r"expected lock_timeout > 0 \(finite\)"):
            cls(tmp_path / "s.db", lock_timeout=bad)
    for from_url in (sync_store_from_url, store_from_url):
        with pytest.raises(ConfigurationError, match="lock_timeout: expected a finite number"):
            from_url(f"sqlite:///{tmp_path}/s.db?lock_timeout={bad}")


#: A start method that forks, as servers with a preloaded app do (none on Windows).
FORK = (
    multiprocessing.get_context("fork")
    if "fork" in multiprocessing.get_all_start_methods()
    else None
)
FORK_KEYS = 150


def forked_racer(store: SyncSqliteStore, barrier: Any, worker: int, out: Path) -> None:
    """In a forked worker, with the store its parent created: race the other workers on
    each hot key, and write a key of its own after each; write the hot keys' decisions."""
    forked_child()
    barrier.wait(GUARD)
    decisions = []
    for i in range(FORK_KEYS):
        decisions.append(type(store.begin(f"hot-{i}", begin_req(), T0)).__name__)
        assert isinstance(store.begin(f"own-{worker}-{i}", begin_req(), T0), Reserved)
    out.write_text(json.dumps(decisions))


@pytest.mark.slow
@pytest.mark.skipif(FORK is None, reason="no fork() here")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # a multi-threaded parent
def test_sqlite_workers_forked_from_the_process_that_created_the_store_each_use_their_own(
    tmp_path: Path,
) -> None:
    assert FORK is not None
    path = tmp_path / "s.db"
    store = SyncSqliteStore(path, lock_timeout=30)
    assert isinstance(store.begin("warm", begin_req(), T0), Reserved)  # the parent used it
    barrier = FORK.Barrier(WORKERS + 1)
    outs = [tmp_path / f"worker-{n}.json" for n in range(WORKERS)]
    processes = [
        FORK.Process(target=forked_racer, args=(store, barrier, n, outs[n]), daemon=True)
        for n in range(WORKERS)
    ]
    for process in processes:
        process.start()
    barrier.wait(GUARD)
    store.close()  # the parent closes its store while the workers write (as a master may)
    for process in processes:
        process.join(GUARD * 2)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    decisions = [json.loads(out.read_text()) for out in outs]
    for i in range(FORK_KEYS):
        assert [d[i] for d in decisions].count("Reserved") == 1, f"hot-{i}"
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        count = "SELECT count(*) FROM surefoot_idempotency WHERE key LIKE ?"
        assert check.execute(count, ("own-%",)).fetchone() == (WORKERS * FORK_KEYS,)
        assert check.execute(count, ("hot-%",)).fetchone() == (FORK_KEYS,)
        assert check.execute(count, ("warm",)).fetchone() == (1,)
    finally:
        check.close()


@pytest.mark.anyio
async def test_sqlite_sync_and_async_stores_share_one_file(tmp_path: Path) -> None:
    sync = SyncSqliteStore(tmp_path / "s.db")
    aio = SqliteStore(tmp_path / "s.db")
    try:
        first = begin_req()
        assert isinstance(sync.begin("k", first, T0), Reserved)
        assert isinstance(await aio.begin("k", begin_req(), T0 + 1), InProgress)
        assert sync.finish("k", first.token, Outcome(Step.COMPLETE, OK), T0 + 2)
        assert await aio.begin("k", begin_req(), T0 + 3) == Replay(OK)
        admitted = [acquire_one(sync) for _ in range(LIMIT.amount - 1)]
        got, _ = await aio.acquire([Item("rl:{shared}", "sliding_window", LIMIT)], T0)
        assert all(admitted)
        assert got
        assert not acquire_one(sync)
    finally:
        sync.close()
        await aio.aclose()


def test_sqlite_sync_store_refuses_bad_options_under_its_own_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^SyncSqliteStore: expected lock_timeout > 0"):
        SyncSqliteStore(tmp_path / "s.db", lock_timeout=0)
    with pytest.raises(ConfigurationError, match=r"^SyncMemoryStore\.max_records"):
        SyncMemoryStore(max_records=0)


# -- sync_store_from_url ----------------------------------------------------------------------


def test_every_scheme_has_a_sync_twin() -> None:
    assert set(SYNC_STORES) == set(STORES)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "attributes"),
    [
        ("memory://", {"max_records": 10_000, "on_full": "refuse"}),
        ("memory://?on_full=evict&max_records=7", {"max_records": 7, "on_full": "evict"}),
        ("sqlite:///{tmp}/a.db", {"path": "{tmp}/a.db", "lock_timeout": 5.0}),
        ("sqlite:///{tmp}/a.db?lock_timeout=2&synchronous=full", {"lock_timeout": 2.0}),
    ],
)
async def test_sync_store_from_url_makes_the_twin_of_store_from_url(
    url: str, attributes: dict[str, Any], tmp_path: Path
) -> None:
    url = url.format(tmp=tmp_path)
    sync: Any = sync_store_from_url(url)
    aio: Any = store_from_url(url)
    try:
        assert type(sync).__name__ == "Sync" + type(aio).__name__
        for name, value in attributes.items():
            value = value.format(tmp=tmp_path) if isinstance(value, str) else value
            assert getattr(sync, name) == getattr(aio, name) == value
    finally:
        sync.close()
        await aio.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/x",
        "memory://?on_full=drop",
        "memory://?max_records=many",
        "memory://?colour=blue",
        "sqlite://",
        "sqlite:///a.db?synchronous=off",
        "sqlite:///a.db?lock_timeout=soon",
        "sqlite:///a.db?journal=wal",
    ],
)
def test_sync_store_from_url_refuses_what_store_from_url_refuses(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        store_from_url(url)
    with pytest.raises(ConfigurationError) as sync_refused:
        sync_store_from_url(url)
    assert str(sync_refused.value) == str(refused.value)


class _Fake:
    """A network store class: ``from_url`` answers the URL it was given."""

    @classmethod
    def from_url(cls, url: str) -> tuple[str, str]:
        return cls.__name__, url


@pytest.mark.parametrize(
    ("url", "module", "name"),
    [
        ("redis://127.0.0.1:6379/0?prefix=a:", "surefoot.storage.redis", "SyncRedisStore"),
        ("rediss://127.0.0.1:6380/0", "surefoot.storage.redis", "SyncRedisStore"),
        ("redis+cluster://127.0.0.1:7000", "surefoot.storage.redis", "SyncRedisStore"),
        ("postgresql://app@db/app?schema=s", "surefoot.storage.postgres", "SyncPostgresStore"),
        ("postgres://app@db/app", "surefoot.storage.postgres", "SyncPostgresStore"),
    ],
)
def test_network_schemes_look_their_sync_class_up_when_asked(
    url: str, module: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = importlib.import_module(module)
    fake = type(name, (_Fake,), {})
    monkeypatch.setattr(home, name, fake, raising=False)
    assert sync_store_from_url(url) == (name, url)
    monkeypatch.delattr(home, name)
    with pytest.raises(ConfigurationError, match=f"this surefoot has no {name}"):
        sync_store_from_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db?bogus=1", "unknown options ['bogus']"),
        ("sqlite:///x.db?lock_timeout=nan", "lock_timeout"),
        ("memory://?on_full=drop", "on_full"),
        ("redis://127.0.0.1:6379/0?clock=moon", "clock"),
        ("ftp://host/x", "expected one of the schemes"),
    ],
)
def test_check_store_url_refuses_what_opening_would_refuse(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        check_store_url(url)
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        sync_store_from_url(url)


def test_check_store_url_opens_nothing(tmp_path: Path) -> None:
    path = tmp_path / "never.db"
    check_store_url(f"sqlite:///{path}")
    check_store_url("postgresql://app@db.invalid/app?schema=surefoot")  # libpq's, read at open
    assert not path.exists()
