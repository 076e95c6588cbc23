"""Per-principal quotas across real OS processes sharing one store (``_core`` Rule 7).

Several spawned workers begin new keys of one principal at the same instant, each many
at once: together they never hold more records than its quota, and they hold exactly
that many. The worker is ``_quota_workers.racer``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _quota_workers import GUARD, PRINCIPAL, QUOTA, T0, racer

from _services import store_url_sync
from surefoot.idempotency import scoped_key
from surefoot.storage import store_from_url

pytestmark = pytest.mark.slow

CTX = multiprocessing.get_context("spawn")
WORKERS = 4
KEYS = 20  # per worker: 80 new keys for a quota of 25


@pytest.fixture(params=["sqlite", "redis", "redis_cluster", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store every process opens by URL, set up before the workers start."""
    kind: str = request.param
    options = "lock_timeout=30" if kind == "sqlite" else "timeout=30"
    with store_url_sync(kind, tmp_path, options=options) as url:
        keeper: Any = store_from_url(url)  # creates the SQLite file before the workers
        yield url
        asyncio.run(keeper.aclose())


def test_processes_racing_at_a_quota_never_exceed_it(shared_url: str, tmp_path: Path) -> None:
    barrier = CTX.Barrier(WORKERS)
    outs = [tmp_path / f"worker-{n}.json" for n in range(WORKERS)]
    processes = [
        CTX.Process(target=racer, args=(shared_url, barrier, n, KEYS, outs[n]), daemon=True)
        for n in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(GUARD * 2)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    results = [json.loads(out.read_text()) for out in outs]
    assert sum(r["reserved"] for r in results) == QUOTA
    assert sum(r["refused"] for r in results) == WORKERS * KEYS - QUOTA

    async def held() -> int:
        store: Any = store_from_url(shared_url)
        try:
            live = await store.records(T0 + 1, limit=1000)
        finally:
            await store.aclose()
        owned = {scoped_key(PRINCIPAL, f"w{w}-k{i}") for w in range(WORKERS) for i in range(KEYS)}
        return sum(key in owned for key, _ in live)

    assert asyncio.run(held()) == QUOTA
