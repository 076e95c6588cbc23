"""The stores every contract suite runs over, each on a clean slate.

Memory and SQLite need nothing; Redis, Redis Cluster and PostgreSQL talk to the real
servers of ``tests/_services.py`` (skipped when absent, failed under
``SUREFOOT_REQUIRE_SERVICES=1``). Each test gets its own file, key prefix or schema, so
runs never see each other's state, and the state is dropped afterwards. Stores run on
the caller's clock here: the suites decide at explicit ``now`` values.

The ``sync_*`` kinds are the synchronous stores (``sync_store_from_url``) seen through
``AsyncView``, so the same suites run over them unchanged. Their calls block, so the
suites' ``asyncio.gather`` bursts run one call after another: each call is still the one
atomic step under test (threads and processes are tested in ``test_sync_stores.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from _services import STORE_KINDS, store_url
from surefoot.storage import store_from_url, sync_store_from_url
from surefoot.testing import FlakyStore

SYNC_KINDS = [f"sync_{kind}" for kind in STORE_KINDS]

#: The synchronous store of each network kind, in its module (written apart from the others).
SYNC_CLASSES = {
    "redis": ("surefoot.storage.redis", "SyncRedisStore"),
    "redis_cluster": ("surefoot.storage.redis", "SyncRedisStore"),
    "postgres": ("surefoot.storage.postgres", "SyncPostgresStore"),
}

#: Methods a suite needs beyond ``SyncStore``'s: a sync store without them is skipped there.
SUITE_NEEDS = {
    "test_ordering_contract": ("order_claim", "order_settle", "order_get"),
}

_METHODS = (
    "begin",
    "finish",
    "resolve",
    "forget",
    "get",
    "records",
    "purge",
    "acquire",
    "release",
    "order_claim",
    "order_settle",
    "order_get",
    "board_put",
    "board_claim",
    "board_read",
    "board_delete",
    "cache_get",
    "cache_put",
)


class AsyncView:
    """A synchronous store behind the async protocols: each method calls the blocking one
    and returns its answer (or raises its exception); ``aclose`` calls ``close``. Only the
    methods the store has are there, so a protocol check sees what the store offers."""

    def __init__(self, sync: Any) -> None:
        self.sync = sync
        self.rate_limit_algorithms = sync.rate_limit_algorithms
        for name in _METHODS:
            method = getattr(sync, name, None)
            if method is not None:
                setattr(self, name, _coroutine(method))

    async def aclose(self) -> None:
        self.sync.close()

    def __repr__(self) -> str:
        return f"AsyncView({self.sync!r})"


def _coroutine(method: Any) -> Any:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    call.__name__ = method.__name__
    return call


def sync_class(kind: str) -> None:
    """Skip (with the reason) when the sync store of a network ``kind`` is not written yet."""
    if kind in SYNC_CLASSES:
        module, name = SYNC_CLASSES[kind]
        if not hasattr(importlib.import_module(module), name):
            pytest.skip(f"{module}.{name} does not exist yet")


@pytest.fixture(params=[*STORE_KINDS, "flaky", *SYNC_KINDS])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    # "flaky": surefoot.testing's FlakyStore over SQLite, which while up is a store like any other.
    sync = request.param.startswith("sync_")
    kind = "sqlite" if request.param == "flaky" else request.param.removeprefix("sync_")
    if sync:
        sync_class(kind)
    # The suites test decisions, not the network stores' 50 ms timeout (their own tests
    # do): a generous timeout keeps a loaded CI machine from failing them.
    options = "timeout=1" if kind in ("redis", "redis_cluster", "postgres") else ""
    async with store_url(kind, tmp_path, options=options) as url:
        s: Any = AsyncView(sync_store_from_url(url)) if sync else store_from_url(url)
        if request.param == "flaky":
            s = FlakyStore(s)
        try:
            missing = [
                name
                for name in SUITE_NEEDS.get(request.module.__name__.rpartition(".")[2], ())
                if not hasattr(s, name)
            ]
            if missing:
                pytest.skip(f"{s!r} has no {', '.join(missing)}")
            yield s
        finally:
            await s.aclose()
