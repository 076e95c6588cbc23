"""Idempotency across real OS processes sharing one store.

The storms run over every shared store (one SQLite file, Redis, Redis Cluster,
PostgreSQL); the crash and takeover scenarios over SQLite, the embedded default.

Workers are processes made with the "spawn" start method, running the functions of
``_multiprocess_workers`` beside this file (pytest puts this directory on ``sys.path``
and spawned workers inherit it; its docstring tells how workers record executions and
keep time without sleeping). The parent plays the retrying client, the operator, or the
worker that takes over, with its own ``SqliteStore`` on the same file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from _multiprocess_workers import (
    KEY,
    LEASE,
    PRINCIPAL,
    build_app,
    client_for,
    doomed_worker,
    late_worker,
    post,
    startup_worker,
    storm_worker,
)

from _services import store_url_sync
from _support import GUARD, SPAWN, T0, join_all, problem_code, read_ledger
from surefoot.idempotency import State, StoredResponse, scoped_key
from surefoot.storage import SqliteStore, store_from_url
from surefoot.testing import ManualClock

pytestmark = pytest.mark.slow

WORKERS = 4
PER_WORKER = 50

needs_sigkill = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"), reason="needs POSIX signals to kill a worker"
)


# -- fixtures and helpers of the parent --------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    """The shared database file, created and held open while the workers run.

    A running deployment always has a connection open when a worker (re)starts; the
    workers of a fresh deployment opening the file together is tested on its own
    (``test_workers_starting_together_all_open_the_store``).
    """
    path = tmp_path / "idempotency.db"
    keeper = SqliteStore(path)
    yield path
    asyncio.run(keeper.aclose())


@pytest.fixture(params=["sqlite", "redis", "redis_cluster", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store every process opens by URL, set up before the workers start."""
    kind: str = request.param
    options = "lock_timeout=30" if kind == "sqlite" else "timeout=30"
    with store_url_sync(kind, tmp_path, options=options) as url:
        keeper: Any = store_from_url(url)
        yield url
        asyncio.run(keeper.aclose())


def run_storm(
    spawn: Callable[..., BaseProcess],
    tmp_path: Path,
    url: str,
    keys_of: Callable[[int], list[str]],
    *,
    hold_until: int,
) -> list[dict[str, Any]]:
    barrier = SPAWN.Barrier(WORKERS)
    cond = SPAWN.Condition()
    answered = SPAWN.Value("i", 0, lock=False)
    ledger = tmp_path / "ledger"
    outs = [tmp_path / f"worker{i}.json" for i in range(WORKERS)]
    workers = [
        spawn(
            storm_worker, i, url, ledger, outs[i], keys_of(i), barrier, answered, cond, hold_until
        )
        for i in range(WORKERS)
    ]
    join_all(workers)
    return [r for out in outs for r in json.loads(out.read_text())]


# -- acceptance criteria -------------------------------------------------------------------


def test_identical_requests_from_four_processes_execute_once(
    spawn: Callable[..., BaseProcess], tmp_path: Path, shared_url: str
) -> None:
    total = WORKERS * PER_WORKER
    ledger = tmp_path / "ledger"

    responses = run_storm(
        spawn, tmp_path, shared_url, lambda i: [KEY] * PER_WORKER, hold_until=total - 1
    )

    assert len(read_ledger(ledger)) == 1
    originals = [r for r in responses if r["status"] == 201 and r["replayed"] is None]
    assert len(originals) == 1
    (original,) = originals
    for r in responses:
        if r is original:
            continue
        if r["status"] == 201:
            assert (r["replayed"], r["body"]) == ("true", original["body"])
        else:
            assert r["status"] == 409
            assert json.loads(r["body"])["code"] == "idempotency_request_in_progress"
    # The original held its reservation until every other request was answered.
    assert sum(r["status"] == 409 for r in responses) == total - 1

    # Any process replays the stored response afterwards, without executing again.
    async def retry() -> httpx.Response:
        store: Any = store_from_url(shared_url)
        app = build_app(store=store, clock=ManualClock(T0 + 1), ledger=ledger, who="parent")
        try:
            async with client_for(app) as client:
                return await post(client, KEY)
        finally:
            await store.aclose()

    replay = asyncio.run(retry())
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert replay.text == original["body"]
    assert len(read_ledger(ledger)) == 1


def test_distinct_keys_from_four_processes_each_execute_once(
    spawn: Callable[..., BaseProcess], tmp_path: Path, shared_url: str
) -> None:
    total = WORKERS * PER_WORKER
    keys = [f"order-{n:03d}" for n in range(total)]

    responses = run_storm(spawn, tmp_path, shared_url, lambda i: keys[i::WORKERS], hold_until=0)

    assert [(r["status"], r["replayed"]) for r in responses] == [(201, None)] * total
    executed = [key for _, key in read_ledger(tmp_path / "ledger")]
    assert sorted(executed) == keys

    async def completed() -> list[str]:
        store: Any = store_from_url(shared_url)
        try:
            rows = await store.records(T0 + 1, state=State.COMPLETED, limit=10 * total)
        finally:
            await store.aclose()
        return sorted(key for key, _ in rows)

    assert asyncio.run(completed()) == sorted(scoped_key(PRINCIPAL, k) for k in keys)


def test_workers_starting_together_all_open_the_store(
    spawn: Callable[..., BaseProcess], tmp_path: Path
) -> None:
    rounds = 10
    paths = [tmp_path / f"fresh{n}.db" for n in range(rounds)]
    barrier = SPAWN.Barrier(WORKERS)
    outs = [tmp_path / f"worker{i}.json" for i in range(WORKERS)]
    join_all([spawn(startup_worker, paths, barrier, outs[i]) for i in range(WORKERS)])

    per_worker = [json.loads(out.read_text()) for out in outs]
    per_round = [sorted(results[n] for results in per_worker) for n in range(rounds)]
    assert per_round == [["InProgress"] * (WORKERS - 1) + ["Reserved"]] * rounds


def kill_while_holding(
    spawn: Callable[..., BaseProcess],
    db: Path,
    ledger: Path,
    on_lease_expiry: Literal["reexecute", "unknown"],
) -> None:
    """A worker reserves ``KEY`` at ``T0``, starts its handler and is killed with SIGKILL."""
    started = SPAWN.Event()
    doomed = spawn(doomed_worker, db, ledger, on_lease_expiry, started)
    assert started.wait(GUARD), "the worker never reached its handler"
    assert doomed.pid is not None
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(GUARD)
    assert doomed.exitcode == -signal.SIGKILL
    assert read_ledger(ledger) == [("doomed", KEY)]


async def check_orphaned_lease(
    store: SqliteStore, client: httpx.AsyncClient, clock: ManualClock, ledger: Path
) -> None:
    """The dead worker's reservation outlives it, and holds retries off until it expires."""
    [(held_key, held)] = await store.records(clock.now())
    assert (held_key, held.state) == (scoped_key(PRINCIPAL, KEY), State.IN_FLIGHT)
    assert held.lease_expires_at == T0 + LEASE

    clock.set(T0 + LEASE - 1)
    response = await post(client, KEY)
    assert response.status_code == 409
    assert problem_code(response) == "idempotency_request_in_progress"
    assert read_ledger(ledger) == [("doomed", KEY)]


@needs_sigkill
@pytest.mark.parametrize("operator", ["resolve", "forget"])
def test_killed_worker_with_unknown_lease_expiry_never_executes_twice(
    spawn: Callable[..., BaseProcess], tmp_path: Path, db: Path, operator: str
) -> None:
    ledger = tmp_path / "ledger"
    kill_while_holding(spawn, db, ledger, "unknown")

    async def after_the_crash() -> None:
        store_key = scoped_key(PRINCIPAL, KEY)
        clock = ManualClock(T0)
        store = SqliteStore(db)
        app = build_app(store=store, clock=clock, ledger=ledger, who="retry")
        try:
            async with client_for(app) as client:
                await check_orphaned_lease(store, client, clock, ledger)

                clock.set(T0 + LEASE + 1)
                for _ in range(3):
                    response = await post(client, KEY)
                    assert response.status_code == 409
                    assert problem_code(response) == "idempotency_outcome_unknown"
                    clock.advance(LEASE)
                assert read_ledger(ledger) == [("doomed", KEY)]
                record = await store.get(store_key, clock.now())
                assert record is not None
                assert record.state is State.UNKNOWN

                if operator == "resolve":
                    found = StoredResponse(
                        201, ((b"content-type", b"application/json"),), b'{"id":"ch_found"}'
                    )
                    assert await store.resolve(store_key, found, clock.now())
                    for _ in range(2):
                        response = await post(client, KEY)
                        assert response.status_code == 201
                        assert response.headers["idempotent-replayed"] == "true"
                        assert response.content == b'{"id":"ch_found"}'
                    assert read_ledger(ledger) == [("doomed", KEY)]
                else:
                    assert await store.forget(store_key, clock.now())
                    first = await post(client, KEY)
                    assert (first.status_code, first.json()["by"]) == (201, "retry")
                    assert "idempotent-replayed" not in first.headers
                    again = await post(client, KEY)
                    assert (again.status_code, again.headers["idempotent-replayed"]) == (
                        201,
                        "true",
                    )
                    assert again.content == first.content
                    assert read_ledger(ledger) == [("doomed", KEY), ("retry", KEY)]
        finally:
            await store.aclose()

    asyncio.run(after_the_crash())


@needs_sigkill
def test_killed_worker_with_reexecute_lease_expiry_runs_the_retry(
    spawn: Callable[..., BaseProcess], tmp_path: Path, db: Path
) -> None:
    ledger = tmp_path / "ledger"
    kill_while_holding(spawn, db, ledger, "reexecute")

    async def after_the_crash() -> None:
        clock = ManualClock(T0)
        store = SqliteStore(db)
        app = build_app(
            store=store, clock=clock, ledger=ledger, who="retry", on_lease_expiry="reexecute"
        )
        try:
            async with client_for(app) as client:
                await check_orphaned_lease(store, client, clock, ledger)

                clock.set(T0 + LEASE + 1)
                first = await post(client, KEY)
                assert (first.status_code, first.json()["by"]) == (201, "retry")
                assert "idempotent-replayed" not in first.headers
                assert read_ledger(ledger) == [("doomed", KEY), ("retry", KEY)]
                record = await store.get(scoped_key(PRINCIPAL, KEY), clock.now())
                assert record is not None
                assert (record.state, record.generation) == (State.COMPLETED, 2)

                again = await post(client, KEY)
                assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
                assert again.content == first.content
                assert len(read_ledger(ledger)) == 2
        finally:
            await store.aclose()

    asyncio.run(after_the_crash())


@pytest.mark.parametrize("late_finish", ["after_takeover_completed", "during_takeover"])
def test_late_finisher_from_an_expired_lease_cannot_overwrite_the_takeover(
    spawn: Callable[..., BaseProcess], tmp_path: Path, db: Path, late_finish: str
) -> None:
    ledger = tmp_path / "ledger"
    out = tmp_path / "late.json"
    started, release = SPAWN.Event(), SPAWN.Event()
    late = spawn(late_worker, db, ledger, out, started, release)
    assert started.wait(GUARD), "the late worker never reached its handler"

    async def let_late_finish() -> None:
        release.set()
        await asyncio.to_thread(late.join, GUARD)
        assert late.exitcode == 0

    async def take_over() -> tuple[httpx.Response, httpx.Response]:
        store_key = scoped_key(PRINCIPAL, KEY)
        clock = ManualClock(T0 + LEASE + 1)
        store = SqliteStore(db)
        app = build_app(
            store=store,
            clock=clock,
            ledger=ledger,
            who="successor",
            on_lease_expiry="reexecute",
            after_record=let_late_finish if late_finish == "during_takeover" else None,
        )
        try:
            async with client_for(app) as client:
                successor = await post(client, KEY)
                if late_finish == "after_takeover_completed":
                    await let_late_finish()
                clock.set(T0 + 3 * LEASE)
                replay = await post(client, KEY)
            record = await store.get(store_key, clock.now())
        finally:
            await store.aclose()
        assert record is not None
        assert record.response is not None
        assert (record.state, record.generation) == (State.COMPLETED, 2)
        assert record.response.body == successor.content
        return successor, replay

    successor, replay = asyncio.run(take_over())

    late_result = json.loads(out.read_text())
    assert late_result["status"] == 201
    assert json.loads(late_result["body"])["by"] == "late"
    assert "StaleFinish" in late_result["events"]
    assert "ResponseStored" not in late_result["events"]
    assert read_ledger(ledger) == [("late", KEY), ("successor", KEY)]
    assert (successor.status_code, successor.json()["by"]) == (201, "successor")
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert replay.content == successor.content
