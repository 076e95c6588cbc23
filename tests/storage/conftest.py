"""The stores every contract suite runs over, each on a clean slate.

Memory and SQLite need nothing; Redis, Redis Cluster and PostgreSQL talk to the real
servers of ``tests/_services.py`` (skipped when absent, failed under
``SUREFOOT_REQUIRE_SERVICES=1``). Each test gets its own file, key prefix or schema, so
runs never see each other's state, and the state is dropped afterwards. Stores run on
the caller's clock here: the suites decide at explicit ``now`` values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from _services import STORE_KINDS, store_url
from surefoot.storage import store_from_url
from surefoot.testing import FlakyStore


@pytest.fixture(params=[*STORE_KINDS, "flaky"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    # "flaky": surefoot.testing's FlakyStore over SQLite, which while up is a store like any other.
    kind = "sqlite" if request.param == "flaky" else request.param
    # The suites test decisions, not the network stores' 50 ms timeout (their own tests
    # do): a generous timeout keeps a loaded CI machine from failing them.
    options = "timeout=1" if kind in ("redis", "redis_cluster", "postgres") else ""
    async with store_url(kind, tmp_path, options=options) as url:
        s: Any = store_from_url(url)
        if request.param == "flaky":
            s = FlakyStore(s)
        try:
            yield s
        finally:
            await s.aclose()
