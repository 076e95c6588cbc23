"""``WebhookReceiver`` across real OS processes sharing one store.

The storm runs over every shared store (one SQLite file, Redis, Redis Cluster,
PostgreSQL); the crash over SQLite, the embedded default, and Redis.

Workers are processes made with the "spawn" start method, running the functions of
``_receiver_workers`` beside this file (pytest puts this directory on ``sys.path`` and
spawned workers inherit it; its docstring tells how workers record executions and share
one manual clock). The parent plays the sender's last retry, and the clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
import pytest
from _receiver_workers import (
    EVENT_ID,
    LEASE,
    MAX_RETRIES,
    SharedClock,
    build_receiver,
    client_for,
    deliver,
    doomed_worker,
    sender_worker,
    storm_worker,
)

from _services import store_url_sync
from _support import GUARD, SPAWN, T0, join_all, read_ledger
from surefoot.idempotency import State
from surefoot.storage import store_from_url
from surefoot.webhooks import webhook_store_key

pytestmark = pytest.mark.slow

WORKERS = 4
PER_WORKER = 50

needs_sigkill = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"), reason="needs POSIX signals to kill a worker"
)


def store_fixture(name: str, kinds: list[str]) -> Any:
    @pytest.fixture(name=name, params=kinds)
    def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
        """One store every process opens by URL, set up (and held open) before the workers
        start, as in a running deployment."""
        kind: str = request.param
        options = "lock_timeout=30" if kind == "sqlite" else "timeout=30"
        with store_url_sync(kind, tmp_path, options=options) as found:
            keeper: Any = store_from_url(found)
            yield found
            asyncio.run(keeper.aclose())

    return url


shared_url = store_fixture("shared_url", ["sqlite", "redis", "redis_cluster", "postgres"])
crash_url = store_fixture("crash_url", ["sqlite", "redis"])


async def deliver_from_parent(url: str, clock: SharedClock, ledger: Path) -> httpx.Response:
    store: Any = store_from_url(url)
    app = build_receiver(store=store, clock=clock, ledger=ledger, who="parent")
    try:
        async with client_for(app) as client:
            return await deliver(client, clock.now())
    finally:
        await store.aclose()


def test_one_event_delivered_200_times_by_four_processes_runs_once(
    spawn: Callable[..., BaseProcess], tmp_path: Path, shared_url: str
) -> None:
    total = WORKERS * PER_WORKER
    ledger = tmp_path / "ledger"
    now = SPAWN.Value("d", T0)
    barrier, cond, settled = SPAWN.Barrier(WORKERS), SPAWN.Condition(), SPAWN.Event()
    answered = SPAWN.Value("i", 0, lock=False)
    outs = [tmp_path / f"worker{i}.json" for i in range(WORKERS)]
    join_all(
        [
            spawn(
                storm_worker,
                i,
                shared_url,
                now,
                ledger,
                outs[i],
                PER_WORKER,
                barrier,
                answered,
                cond,
                settled,
            )
            for i in range(WORKERS)
        ]
    )
    deliveries = [d for out in outs for d in json.loads(out.read_text())]
    assert len(deliveries) == total

    [(who, event_id)] = read_ledger(ledger)
    assert event_id == EVENT_ID
    ran = [d for d in deliveries if d["first"]["status"] == 200 and d["first"]["replayed"] is None]
    assert len(ran) == 1
    [original] = ran
    assert json.loads(original["first"]["body"])["by"] == who
    for d in deliveries:
        if d is original:
            continue
        # First: a retryable 409 (the event was being processed: the one that ran held it
        # until every other first delivery was answered), then the stored answer.
        first, last = d["first"], d["last"]
        assert (first["status"], first["code"]) == (409, "idempotency_request_in_progress")
        assert (last["status"], last["replayed"]) == (200, "true")
        assert last["body"] == original["first"]["body"]
        assert 2 <= d["attempts"] <= 1 + MAX_RETRIES

    # The sender's next retry, from yet another process, long after: the stored answer.
    clock = SharedClock(now)
    clock.set(T0 + 3600)
    again = asyncio.run(deliver_from_parent(shared_url, clock, ledger))
    assert (again.status_code, again.headers["idempotent-replayed"]) == (200, "true")
    assert again.text == original["first"]["body"]
    assert len(read_ledger(ledger)) == 1


@needs_sigkill
def test_a_worker_killed_while_processing_leaves_the_event_to_the_senders_retry(
    spawn: Callable[..., BaseProcess], tmp_path: Path, crash_url: str
) -> None:
    ledger = tmp_path / "ledger"
    now = SPAWN.Value("d", T0)
    clock = SharedClock(now)
    started = SPAWN.Event()
    doomed = spawn(doomed_worker, crash_url, now, ledger, started)
    assert started.wait(GUARD), "the worker never reached its handler"
    assert doomed.pid is not None
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(GUARD)
    assert doomed.exitcode == -signal.SIGKILL
    assert read_ledger(ledger) == []  # killed before the end of its handler

    async def held() -> Any:
        store: Any = store_from_url(crash_url)
        try:
            return await store.get(webhook_store_key("partner", EVENT_ID), clock.now())
        finally:
            await store.aclose()

    record = asyncio.run(held())
    assert record is not None
    assert (record.state, record.lease_expires_at) == (State.IN_FLIGHT, T0 + LEASE)

    def retry(who: str) -> dict[str, Any]:
        out = tmp_path / f"{who}.json"
        join_all([spawn(sender_worker, crash_url, now, ledger, out, who)])
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    # While the dead worker's lease runs, a retry is told to come back later.
    clock.set(T0 + LEASE - 1)
    early = retry("early")
    assert (early["status"], early["code"]) == (409, "idempotency_request_in_progress")
    assert read_ledger(ledger) == []

    # Once it ran out, the next retry (another worker) processes the event, once.
    clock.set(T0 + LEASE + 1)
    late = retry("late")
    assert (late["status"], late["replayed"]) == (200, None)
    assert json.loads(late["body"])["by"] == "late"
    assert read_ledger(ledger) == [("late", EVENT_ID)]

    clock.set(T0 + 2 * LEASE)
    again = asyncio.run(deliver_from_parent(crash_url, clock, ledger))
    assert (again.status_code, again.headers["idempotent-replayed"]) == (200, "true")
    assert again.text == late["body"]
    assert read_ledger(ledger) == [("late", EVENT_ID)]
