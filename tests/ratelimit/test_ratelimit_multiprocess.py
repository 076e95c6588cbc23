"""Rate limits across real OS processes sharing one SQLite file.

Four worker processes, made with the "spawn" start method, hammer one key per scenario
through their own ``SqliteStore`` on the same file (``_ratelimit_workers`` beside this
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
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from _ratelimit_workers import GUARD, PER_WORKER, SCENARIOS, WORKERS, Scenario, storm_worker

from surefoot.ratelimit import Item
from surefoot.storage import SqliteStore

pytestmark = pytest.mark.slow

CTX = multiprocessing.get_context("spawn")
TOTAL = WORKERS * PER_WORKER


Outcome = list[Any]  # [step, allowed, remaining, delay, error], as a worker wrote it


class Storm:
    """What every scenario's acquires decided, over all the workers."""

    def __init__(self, db: Path, outcomes: dict[str, list[Outcome]]) -> None:
        self.db = db
        self.outcomes = outcomes

    def admitted(self, name: str) -> list[Outcome]:
        outcomes = self.outcomes[name]
        assert len(outcomes) == TOTAL
        assert [o[4] for o in outcomes if o[4] is not None] == []
        return [o for o in outcomes if o[1]]

    def one_more_is_admitted(self, scenario: Scenario) -> bool:
        """A fifth process, arriving at the storm's last instant."""

        async def acquire() -> bool:
            store = SqliteStore(self.db)
            item = Item(scenario.key, scenario.algorithm, scenario.limit, token="parent")
            try:
                admitted, _ = await store.acquire([item], scenario.now(scenario.steps - 1))
            finally:
                await store.aclose()
            return admitted

        return asyncio.run(acquire())


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> Storm:
    """Spawn the workers once, let them play every scenario, kill any left behind."""
    tmp = tmp_path_factory.mktemp("storm")
    db = tmp / "ratelimit.db"
    # A running deployment has the file already; workers opening a fresh file together
    # is the idempotency suite's test_workers_starting_together_all_open_the_store.
    keeper = SqliteStore(db)
    barrier = CTX.Barrier(WORKERS)
    outs = [tmp / f"worker{i}.json" for i in range(WORKERS)]
    workers: list[BaseProcess] = []
    try:
        for i in range(WORKERS):
            worker = CTX.Process(target=storm_worker, args=(i, db, outs[i], barrier), daemon=True)
            worker.start()
            workers.append(worker)
        for worker in workers:
            worker.join(GUARD)
        assert [w.exitcode for w in workers] == [0] * WORKERS
        per_worker = [json.loads(out.read_text()) for out in outs]
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            worker.join(GUARD)
        asyncio.run(keeper.aclose())
    return Storm(db, {name: [o for w in per_worker for o in w[name]] for name in SCENARIOS})


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
    fits = int(scenario.limit.max_wait / interval) + 1  # delays 0, 1/64, ..., 1.5: 97
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
    # 40 requests per step drain the bucket every time: all it can give, it gives.
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
