"""Rate limits across real OS processes sharing one store.

Worker processes, made with the "spawn" start method, hammer one key per scenario
through their own store on the same state: four on one SQLite file, eight on Redis,
Redis Cluster and PostgreSQL (``_ratelimit_workers`` beside this
file tells how; pytest puts this directory on ``sys.path`` and spawned workers inherit
it). The workers are spawned once for the module and play every scenario; each test
checks one. All requests of an instant carry the same ``now``, so the expected
admissions are exact: what one process alone would admit, and what the algorithm's table
in ``surefoot.ratelimit._algorithms`` documents.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import Any

import pytest
from _ratelimit_workers import GUARD, PER_WORKER, SCENARIOS, Scenario, storm_worker

from _services import store_url_sync
from surefoot.ratelimit import Item
from surefoot.storage import store_from_url

pytestmark = pytest.mark.slow

CTX = multiprocessing.get_context("spawn")
#: Worker processes per store: SQLite serialises writers on one machine; the network
#: stores take the issue's 8 processes x 64 concurrent tasks.
WORKERS = {"sqlite": 4, "redis": 8, "redis_cluster": 8, "postgres": 8}


Outcome = list[Any]  # [step, allowed, remaining, delay, error], as a worker wrote it


class Storm:
    """What every scenario's acquires decided, over all the workers."""

    def __init__(self, url: str, workers: int, outcomes: dict[str, list[Outcome]]) -> None:
        self.url = url
        self.workers = workers
        self.outcomes = outcomes

    def admitted(self, name: str) -> list[Outcome]:
        outcomes = self.outcomes[name]
        assert len(outcomes) == self.workers * PER_WORKER
        assert [o[4] for o in outcomes if o[4] is not None] == []
        return [o for o in outcomes if o[1]]

    def one_more_is_admitted(self, scenario: Scenario) -> bool:
        """One more process, arriving at the storm's last instant."""

        async def acquire() -> bool:
            store: Any = store_from_url(self.url)
            item = Item(scenario.key, scenario.algorithm, scenario.limit, token="parent")
            try:
                admitted, _ = await store.acquire([item], scenario.now(scenario.steps - 1))
            finally:
                await store.aclose()
            return admitted

        return asyncio.run(acquire())


@pytest.fixture(scope="module", params=sorted(WORKERS))
def storm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Storm]:
    """Spawn the workers once per store, let them play every scenario, kill any left behind."""
    kind: str = request.param
    tmp = tmp_path_factory.mktemp(f"storm-{kind}")
    # Racing processes must not give up on a busy store: the waits are failure guards.
    options = "lock_timeout=30" if kind == "sqlite" else "timeout=30"
    if kind == "postgres":
        options += "&pool_max=4"
    with store_url_sync(kind, tmp, options=options) as url:
        # A running deployment has its store set up already; workers opening a fresh
        # SQLite file together is the idempotency suite's
        # test_workers_starting_together_all_open_the_store.
        keeper: Any = store_from_url(url)
        count = WORKERS[kind]
        barrier = CTX.Barrier(count)
        outs = [tmp / f"worker{i}.json" for i in range(count)]
        workers: list[BaseProcess] = []
        try:
            for i in range(count):
                args = (i, url, outs[i], barrier)
                worker = CTX.Process(target=storm_worker, args=args, daemon=True)
                worker.start()
                workers.append(worker)
            for worker in workers:
                worker.join(GUARD * 4)
            assert [w.exitcode for w in workers] == [0] * count
            per_worker = [json.loads(out.read_text()) for out in outs]
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
                worker.join(GUARD)
            asyncio.run(keeper.aclose())
        outcomes = {name: [o for w in per_worker for o in w[name]] for name in SCENARIOS}
        yield Storm(url, count, outcomes)


def counts_down(admitted: list[Outcome], capacity: int) -> bool:
    """Each admission saw what the previous one left: no two decided on the same state."""
    return sorted(o[2] for o in admitted) == list(range(capacity))


@pytest.mark.parametrize("name", ["fixed_window", "sliding_log", "sliding_window", "quota"])
def test_window_algorithms_admit_exactly_the_limit(storm: Storm, name: str) -> None:
    scenario = SCENARIOS[name]
    admitted = storm.admitted(name)
    assert len(admitted) == scenario.limit.amount
    assert counts_down(admitted, scenario.limit.amount)
    assert not storm.one_more_is_admitted(scenario)


@pytest.mark.parametrize("name", ["token_bucket", "leaky_bucket", "gcra"])
def test_buckets_admit_exactly_their_burst_at_one_instant(storm: Storm, name: str) -> None:
    scenario = SCENARIOS[name]
    admitted = storm.admitted(name)
    assert len(admitted) == scenario.limit.capacity
    assert counts_down(admitted, scenario.limit.capacity)
    assert not storm.one_more_is_admitted(scenario)


def test_concurrency_holds_exactly_the_limit_in_flight(storm: Storm) -> None:
    scenario = SCENARIOS["concurrency"]
    admitted = storm.admitted("concurrency")
    assert len(admitted) == scenario.limit.amount
    assert counts_down(admitted, scenario.limit.amount)
    assert not storm.one_more_is_admitted(scenario)


def test_leaky_queue_admits_what_it_can_start_within_max_wait(storm: Storm) -> None:
    scenario = SCENARIOS["leaky_queue"]
    interval = scenario.limit.window / scenario.limit.amount
    fits = int(scenario.limit.max_wait / interval) + 1  # delays 0, 1/4, ..., 24: 97
    admitted = storm.admitted("leaky_queue")
    assert len(admitted) == fits
    # Each admitted request got its own place in the queue.
    assert sorted(o[3] for o in admitted) == [n * interval for n in range(fits)]
    assert counts_down(admitted, fits)
    assert not storm.one_more_is_admitted(scenario)


def refill_bound(scenario: Scenario, last_step: int) -> float:
    """B + A*T/W: the most a bucket admits from T0 to the ``last_step``'s instant."""
    span = last_step * scenario.step
    return scenario.limit.capacity + scenario.limit.amount * span / scenario.limit.window


@pytest.mark.parametrize("name", ["token_bucket", "gcra"])
def test_buckets_in_lockstep_admit_the_burst_then_each_step_s_refill(
    storm: Storm, name: str
) -> None:
    scenario = SCENARIOS[f"{name}_lockstep"]
    admitted = storm.admitted(scenario.name)
    # 64 or more requests per step drain the bucket every time: all it can give, it gives.
    refill = int(scenario.limit.amount * scenario.step / scenario.limit.window)
    per_step = [sum(o[0] == step for o in admitted) for step in range(scenario.steps)]
    assert per_step == [scenario.limit.capacity] + [refill] * (scenario.steps - 1)
    assert len(admitted) == refill_bound(scenario, scenario.steps - 1)


@pytest.mark.parametrize("name", ["token_bucket", "gcra"])
def test_buckets_never_exceed_burst_plus_refill_when_processes_run_ahead(
    storm: Storm, name: str
) -> None:
    scenario = SCENARIOS[f"{name}_free_running"]
    admitted = storm.admitted(scenario.name)
    for last in range(scenario.steps):
        assert sum(o[0] <= last for o in admitted) <= refill_bound(scenario, last)
    assert admitted  # the storm did reach the store
