"""The ``CacheStore`` contract (``StaleCache``'s shared entries) over every store that keeps
them, and the SQLite schema upgrade that added their table."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from _services import store_url
from surefoot.client._cache_store import CacheStore
from surefoot.idempotency._core import Begin, Reserved
from surefoot.storage import SqliteStore, store_from_url
from surefoot.storage.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.anyio

CACHE_KINDS = ["memory", "sqlite", "redis", "redis_cluster"]


@pytest.fixture(params=CACHE_KINDS)
async def cache_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    options = "timeout=1" if request.param.startswith("redis") else ""
    async with store_url(request.param, tmp_path, options=options) as url:
        store: Any = store_from_url(url)
        try:
            yield store
        finally:
            await store.aclose()


async def test_every_cache_store_fulfils_the_protocol(cache_store: Any) -> None:
    assert isinstance(cache_store, CacheStore)


async def test_a_value_is_read_back_until_it_expires(cache_store: Any) -> None:
    assert await cache_store.cache_get("k", 1000.0) is None
    await cache_store.cache_put("k", b"\x00answer\xff", 1060.0, 1000.0)
    assert await cache_store.cache_get("k", 1059.0) == b"\x00answer\xff"
    assert await cache_store.cache_get("other", 1059.0) is None


async def test_a_put_replaces_the_value_and_its_expiry(cache_store: Any) -> None:
    await cache_store.cache_put("k", b"old", 1010.0, 1000.0)
    await cache_store.cache_put("k", b"new", 1060.0, 1000.0)
    assert await cache_store.cache_get("k", 1000.0) == b"new"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_expired_value_is_forgotten_on_the_callers_clock(
    kind: str, tmp_path: Path
) -> None:
    # Redis forgets by PX, on real time (its own test below); these compare `now`.
    async with store_url(kind, tmp_path) as url:
        store: Any = store_from_url(url)
        await store.cache_put("k", b"v", 1060.0, 1000.0)
        assert await store.cache_get("k", 1060.0) == b"v"  # inclusive, as max_staleness
        assert await store.cache_get("k", 1060.001) is None
        await store.aclose()


async def test_redis_keeps_entries_under_the_prefix_with_a_ttl(tmp_path: Path) -> None:
    from redis.asyncio import Redis

    async with store_url("redis", tmp_path, options="timeout=1") as url:
        store: Any = store_from_url(url)
        await store.cache_put("abc", b"v", 1030.0, 1000.0)
        client = Redis.from_url(url.split("?")[0])
        try:
            key = store.prefix + "cache:abc"
            assert await client.get(key) == b"v"
            assert 29_000 < await client.pttl(key) <= 30_000
        finally:
            await client.aclose()
            await store.aclose()


async def test_memory_cache_entries_are_bounded_least_recently_used_first() -> None:
    store: Any = store_from_url("memory://?max_records=2")
    await store.cache_put("a", b"1", 100.0, 0.0)
    await store.cache_put("b", b"2", 100.0, 0.0)
    assert await store.cache_get("a", 1.0) == b"1"  # used: "b" is now the oldest
    await store.cache_put("c", b"3", 100.0, 0.0)
    assert [await store.cache_get(k, 1.0) for k in "abc"] == [b"1", None, b"3"]


async def test_sqlite_purge_batches_drop_expired_cache_rows(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", purge_interval=1.0)
    await store.cache_put("old", b"v", 10.0, 0.0)
    await store.cache_put("new", b"v", 1000.0, 50.0)  # a write past the interval purges
    await store.aclose()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT key FROM surefoot_cache").fetchall() == [("new",)]


async def test_sqlite_upgrades_a_version_2_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    # A version 2 file: what this version writes, without the cache table.
    store = SqliteStore(path)
    decision = await store.begin("key", Begin("fp", "token", 30.0, 3600.0, "unknown"), 1000.0)
    assert isinstance(decision, Reserved)
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE surefoot_cache")
        db.execute("PRAGMA user_version = 2")
    upgraded = SqliteStore(path)
    try:
        await upgraded.cache_put("k", b"v", 1060.0, 1000.0)
        assert await upgraded.cache_get("k", 1001.0) == b"v"
        assert await upgraded.get("key", 1001.0) is not None  # the old records stayed
    finally:
        await upgraded.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (7,)
