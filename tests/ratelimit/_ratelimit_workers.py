"""Worker processes of ``test_ratelimit_multiprocess.py``, and the scenarios they share.

Kept apart from the tests so that a spawned worker imports only what it runs (no
pytest). Every worker opens its own store from the shared store URL (one SQLite file,
one Redis or Redis Cluster key prefix, one PostgreSQL schema) and plays every scenario
in ``SCENARIOS``, in order: all workers meet at a barrier, then each fires
``PER_WORKER`` acquires on the scenario's one key at once (``asyncio.gather``). It writes
what each acquire decided to a JSON file for the parent.

Time never passes by sleeping: every acquire carries a ``now`` from the scenario's
schedule, the same in every process, so the parent knows exactly how many requests the
limit may admit. A scenario of one instant has one step; in a stepped scenario the
requests are spread evenly over ``steps`` instants ``step`` seconds apart, the workers
either meeting at a barrier at each instant (``lockstep``) or running through the
schedule each at its own pace, so that requests of different instants reach the store
out of order. Barrier timeouts are failure guards.

The limits' intervals (``window / amount``) are exact binary fractions, so the expected
counts do not depend on float rounding: that is the contract suite's business
(``tests/storage/test_ratelimit_contract.py``), not that of processes racing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _support import T0
from surefoot.errors import SurefootError
from surefoot.ratelimit import Item, Limit
from surefoot.storage import store_from_url

PER_WORKER = 64
GUARD = 30.0  # seconds a wait may last before the test fails instead of hanging


@dataclass(frozen=True)
class Scenario:
    name: str
    limit: Limit
    steps: int = 1
    step: float = 0.0
    lockstep: bool = True

    @property
    def key(self) -> str:
        return f"rl:{{storm}}:{self.name}"

    @property
    def algorithm(self) -> str:
        assert self.limit.algorithm is not None
        return self.limit.algorithm

    def now(self, step: int) -> float:
        return T0 + step * self.step


def _scenarios() -> list[Scenario]:
    # Limits no worker reaches alone (it sends PER_WORKER = 64): several workers' requests
    # must be counted together, or the total overshoots.
    at_once = [
        Scenario(name, Limit(120, 60, algorithm=name))
        for name in ("fixed_window", "sliding_log", "sliding_window")
    ]
    at_once.append(Scenario("quota", Limit(120, 86400, algorithm="quota", period="day")))
    at_once += [
        Scenario(name, Limit(4, 1, algorithm=name, burst=120))
        for name in ("token_bucket", "leaky_bucket", "gcra")
    ]
    at_once.append(Scenario("concurrency", Limit(120, 1, algorithm="concurrency", lease=30.0)))
    # One every 1/4 s, delayed 24 s at most: 97 places in the queue. Seconds, not a fraction
    # of one: Redis expires the queue in real time, and a storm on a loaded machine took
    # longer than a 1.5 s queue lives, so the parent's one more found it gone.
    at_once.append(Scenario("leaky_queue", Limit(64, 16, algorithm="leaky_queue", max_wait=24.0)))
    # 16 requests per worker and step (64 or more in all) against a burst of 24 and a
    # refill of 16 per step.
    stepped = [
        Scenario(
            f"{name}_{pace}",
            Limit(32, 1, algorithm=name, burst=24),
            steps=4,
            step=0.5,
            lockstep=pace == "lockstep",
        )
        for name in ("token_bucket", "gcra")
        for pace in ("lockstep", "free_running")
    ]
    return at_once + stepped


SCENARIOS = {scenario.name: scenario for scenario in _scenarios()}
assert all(PER_WORKER % scenario.steps == 0 for scenario in SCENARIOS.values())


def storm_worker(index: int, url: str, out: Path, barrier: Any) -> None:
    """Play every scenario with the other workers; write each acquire's outcome to ``out``.

    An outcome is ``[step, allowed, remaining, delay, error]``; ``error`` names a
    ``SurefootError`` (such as ``StoreUnavailable``) instead of failing the worker.
    """

    async def one(store: Any, scenario: Scenario, step: int, n: int) -> list[Any]:
        item = Item(scenario.key, scenario.algorithm, scenario.limit, token=f"w{index}-{n}")
        try:
            _, [decision] = await store.acquire([item], scenario.now(step))
        except SurefootError as exc:
            return [step, False, 0, 0.0, repr(exc)]
        return [step, decision.allowed, decision.remaining, decision.delay, None]

    async def play(store: Any, scenario: Scenario) -> list[list[Any]]:
        per_step = PER_WORKER // scenario.steps
        outcomes: list[list[Any]] = []
        barrier.wait(GUARD)
        for step in range(scenario.steps):
            if step and scenario.lockstep:
                barrier.wait(GUARD)
            batch = range(step * per_step, (step + 1) * per_step)
            outcomes += await asyncio.gather(*(one(store, scenario, step, n) for n in batch))
        return outcomes

    async def main() -> dict[str, list[list[Any]]]:
        store: Any = store_from_url(url)
        try:
            return {name: await play(store, s) for name, s in SCENARIOS.items()}
        finally:
            await store.aclose()

    results = asyncio.run(main())
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results))
    tmp.replace(out)
