"""The stores every contract suite runs over, each on a clean slate.

Memory and SQLite need nothing; Redis, Redis Cluster and PostgreSQL talk to the real
servers of ``tests/conftest.py`` (skipped when absent, failed under
``SUREFOOT_REQUIRE_SERVICES=1``). Each test gets its own key prefix (Redis) or schema
(PostgreSQL), so runs never see each other's state, and the state is dropped afterwards.
Stores run on the caller's clock here: the suites decide at explicit ``now`` values.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from _services import service_url
from surefoot.storage import MemoryStore, SqliteStore, store_from_url

STORE_KINDS = ["memory", "sqlite", "redis", "redis_cluster", "postgres"]


async def _drop_redis_prefix(url: str, prefix: str) -> None:
    from redis.asyncio import Redis, RedisCluster

    if url.startswith("redis+cluster://"):
        client: Any = RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"))
        nodes = client.get_primaries()
    else:
        client, nodes = Redis.from_url(url), None
    try:
        keys = (
            [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
            if nodes is None
            else [
                k
                for node in nodes
                async for k in client.scan_iter(match=f"{prefix}*", count=1000, target_nodes=node)
            ]
        )
        for key in keys:
            await client.delete(key)
    finally:
        await client.aclose()


async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[Any]:
    """Yield a fresh store of ``kind``; clean up after."""
    if kind == "memory":
        store: Any = MemoryStore()
    elif kind == "sqlite":
        store = SqliteStore(tmp_path / "c.db")
    elif kind in ("redis", "redis_cluster"):
        url = service_url(kind)
        prefix = f"test:{uuid.uuid4().hex[:12]}:"
        store = store_from_url(f"{url}?prefix={prefix}&clock=caller")
        try:
            yield store
        finally:
            await store.aclose()
            await _drop_redis_prefix(url, prefix)
        return
    elif kind == "postgres":
        from surefoot.storage.postgres import migrate

        dsn = service_url("postgres")
        schema = f"surefoot_test_{uuid.uuid4().hex[:12]}"
        await migrate(dsn, schema=schema)
        store = store_from_url(f"{dsn}?schema={schema}&clock=caller")
        try:
            yield store
        finally:
            await store.aclose()
            import psycopg

            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        return
    else:  # pragma: no cover
        raise AssertionError(kind)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async for s in open_store(request.param, tmp_path):
        yield s
