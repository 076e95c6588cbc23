"""The ordering guard's contract (``surefoot.webhooks``' ``OrderingStore``), run over every store.

Each store must decide exactly as the pure core (``surefoot.webhooks._order``): the tests
replay scripts of claims and settles on a store and on the core side by side, and check
the atomicity the core cannot (concurrent claims of one object).
"""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from _services import store_url
from _support import T0
from surefoot.errors import StoreCapacityExceeded
from surefoot.storage import MemoryStore, SqliteStore, store_from_url
from surefoot.storage.sqlite import SCHEMA_VERSION
from surefoot.webhooks import Claim, OrderingStore, OrderRecord, Verdict, claim, order_state, settle
from surefoot.webhooks import OrderState as O
from surefoot.webhooks import ordering_key as key_of

pytestmark = pytest.mark.anyio

LEASE, RETENTION = 30.0, 3600.0
K = key_of("stripe", "cus_1")
P, S, B = Verdict.PROCEED, Verdict.STALE, Verdict.BUSY


async def _claim(store: Any, version: float, token: str, now: float, key: str = K) -> Claim:
    got: Claim = await store.order_claim(
        key, version=version, token=token, now=now, lease=LEASE, retention=RETENTION
    )
    return got


async def _settle(
    store: Any, version: float, token: str, ok: bool, now: float, key: str = K
) -> None:
    await store.order_settle(key, token=token, version=version, ok=ok, now=now, retention=RETENTION)


async def test_every_store_is_an_ordering_store(store: Any) -> None:
    assert isinstance(store, OrderingStore)


async def test_claim_settle_then_older_events_are_stale(store: Any) -> None:
    assert await store.order_get(K, T0) is None
    assert await _claim(store, 5, "t1", T0) == Claim(P, None, T0 + LEASE)
    assert await store.order_get(K, T0 + 1) == OrderRecord(
        None, "t1", 5, T0 + LEASE, T0 + RETENTION
    )
    await _settle(store, 5, "t1", True, T0 + 2)
    assert await store.order_get(K, T0 + 2) == OrderRecord(
        5, None, None, T0 + 2, T0 + 2 + RETENTION
    )
    assert await _claim(store, 4.5, "t2", T0 + 3) == Claim(S, 5, T0 + 2)
    # Equal to newest is not stale; newer neither.
    assert await _claim(store, 5, "t3", T0 + 4) == Claim(P, 5, T0 + 4 + LEASE)
    await _settle(store, 5, "t3", False, T0 + 5)
    assert await _claim(store, 6, "t4", T0 + 6) == Claim(P, 5, T0 + 6 + LEASE)


async def test_a_held_object_is_busy_until_its_lease_runs_out(store: Any) -> None:
    await _claim(store, 1, "t1", T0)
    assert await _claim(store, 2, "t2", T0 + 1) == Claim(B, None, T0 + LEASE)
    assert await _claim(store, 2, "t2", T0 + LEASE - 0.5) == Claim(B, None, T0 + LEASE)
    # The holder died: the next claim takes over.
    assert await _claim(store, 2, "t2", T0 + LEASE) == Claim(P, None, T0 + 2 * LEASE)
    # The late holder's success still counts; the new holder keeps its lease.
    await _settle(store, 1, "t1", True, T0 + LEASE + 1)
    assert await store.order_get(K, T0 + LEASE + 1) == OrderRecord(
        1, "t2", 2, T0 + 2 * LEASE, T0 + LEASE + 1 + RETENTION
    )
    assert await _claim(store, 3, "t3", T0 + LEASE + 2) == Claim(B, 1, T0 + 2 * LEASE)
    await _settle(store, 2, "t2", True, T0 + LEASE + 3)
    assert await _claim(store, 1.5, "t3", T0 + LEASE + 4) == Claim(S, 2, T0 + LEASE + 3)


async def test_records_expire_after_their_retention(store: Any) -> None:
    await _claim(store, 9, "t1", T0)
    await _settle(store, 9, "t1", True, T0 + 1)
    assert await store.order_get(K, T0 + 1 + RETENTION - 0.001) is not None
    assert await store.order_get(K, T0 + 1 + RETENTION) is None
    await store.purge(T0 + 2 + RETENTION)
    assert await store.order_get(K, T0 + 2 + RETENTION) is None
    # Forgotten: any version is new again.
    got = await _claim(store, 1, "t2", T0 + 2 + RETENTION)
    assert got == Claim(P, None, T0 + 2 + RETENTION + LEASE)


async def test_purge_drops_expired_ordering_records(store: Any) -> None:
    keys = [key_of("e", str(n)) for n in range(3)]
    for n, key in enumerate(keys):
        await _claim(store, 1, "t", T0 + n, key)
    await store.purge(T0 + 1 + RETENTION)
    assert [await store.order_get(k, T0 + 1) for k in keys] == [
        None,
        None,
        OrderRecord(None, "t", 1, T0 + 2 + LEASE, T0 + 2 + RETENTION),
    ]


async def test_concurrent_claims_of_one_object_proceed_once(store: Any) -> None:
    claims = await asyncio.gather(*(_claim(store, n % 7, f"t{n}", T0) for n in range(50)))
    assert sorted(c.verdict.name for c in claims) == ["BUSY"] * 49 + ["PROCEED"]
    assert {c.until for c in claims} == {T0 + LEASE}


async def test_concurrent_settles_keep_the_newest(store: Any) -> None:
    await _claim(store, 0, "t0", T0)
    await asyncio.gather(*(_settle(store, n, f"t{n}", True, T0 + 1) for n in range(50)))
    record = await store.order_get(K, T0 + 1)
    assert record is not None
    assert record.newest == 49
    assert record.holder is None  # t0 settled among them


async def test_decisions_equal_the_core_s(store: Any) -> None:
    """A random script of claims and settles over a few objects, on the store and on
    the core: the same answers and the same records at every step."""
    rng = random.Random(15)
    keys = [key_of("e", str(n)) for n in range(3)]
    model: dict[str, OrderRecord | None] = dict.fromkeys(keys)
    now = T0
    for _ in range(120):
        now += rng.choice((0.0, 0.25, 1.0, 7.5, 40.0, 200.0))
        key = rng.choice(keys)
        token = rng.choice("abc")
        version = float(rng.randint(0, 6)) + rng.choice((0.0, 0.5))
        lease = rng.choice((10.0, 60.0))
        retention = rng.choice((100.0, 1e6))
        if rng.random() < 0.5:
            model[key], want = claim(
                model[key], version=version, token=token, now=now, lease=lease, retention=retention
            )
            got = await store.order_claim(
                key, version=version, token=token, now=now, lease=lease, retention=retention
            )
            assert got == want
        else:
            ok = rng.random() < 0.7
            model[key] = settle(
                model[key], token=token, version=version, ok=ok, now=now, retention=retention
            )
            await store.order_settle(
                key, token=token, version=version, ok=ok, now=now, retention=retention
            )
        live = model[key] if order_state(model[key], now) is not O.ABSENT else None
        assert await store.order_get(key, now) == live


# -- store-specific: bounds and schema -----------------------------------------------------


@pytest.mark.parametrize("on_full", ["refuse", "evict"])
async def test_memory_store_bounds_its_ordering_records(on_full: str) -> None:
    store = MemoryStore(max_records=2, on_full=on_full)  # type: ignore[arg-type]
    a, b, c = (key_of("e", n) for n in "abc")
    await _claim(store, 1, "t", T0, a)
    await _settle(store, 1, "t", True, T0 + 1, a)  # free
    await _claim(store, 1, "t", T0 + 2, b)  # held
    if on_full == "refuse":
        with pytest.raises(StoreCapacityExceeded) as refused:
            await _claim(store, 1, "t", T0 + 3, c)
        assert refused.value.fields == {"retry_after": math.ceil(RETENTION - 2)}
    else:
        # The least recently written record that no lease holds goes.
        assert (await _claim(store, 1, "t", T0 + 3, c)).verdict is P
        assert await store.order_get(a, T0 + 3) is None
        assert await store.order_get(b, T0 + 3) is not None
    # An expired record makes room, whatever on_full says.
    assert (await _claim(store, 1, "t", T0 + 2 + RETENTION, key_of("e", "d"))).verdict is P


async def test_sqlite_upgrades_a_version_5_file_with_an_ordering_table(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    store = SqliteStore(path)
    await store.cache_put("k", b"v", T0 + 60, T0)
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE surefoot_webhook_order")
        db.execute("PRAGMA user_version = 5")
    upgraded = SqliteStore(path)
    try:
        assert (await _claim(upgraded, 1, "t", T0)).verdict is P
        assert await upgraded.cache_get("k", T0 + 1) == b"v"  # what was there stays
    finally:
        await upgraded.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (7,)


@pytest.mark.parametrize("kind", ["redis", "redis_cluster", "postgres"])
async def test_network_stores_on_their_own_clock_answer_on_the_caller_s(
    kind: str, tmp_path: Path
) -> None:
    # On the server's clock the lease runs from the server's now; the answers are moved
    # onto the caller's clock (whose "now" is T0 here, long ago).
    async with store_url(kind, tmp_path, clock="server", options="timeout=1") as url:
        store: Any = store_from_url(url)
        try:
            got = await _claim(store, 1, "t1", T0)
            assert got.verdict is P
            assert got.until == pytest.approx(T0 + LEASE, abs=1e-5)
            # Later on the server's clock, at the same "now" of the caller's: less is left.
            busy = await _claim(store, 2, "t2", T0)
            assert busy.verdict is B
            assert T0 + LEASE - 10 < busy.until <= got.until
            record = await store.order_get(K, T0)
            assert record is not None
            assert (record.holder, record.holding) == ("t1", 1)
            assert T0 + RETENTION - 10 < record.expires <= T0 + RETENTION + 1e-5
            await _settle(store, 1, "t1", True, T0)
            stale = await _claim(store, 0, "t3", T0)
            assert stale[:2] == (S, 1)
            assert T0 - 10 < stale.until <= T0
        finally:
            await store.aclose()
