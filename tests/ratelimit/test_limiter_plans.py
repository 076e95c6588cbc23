"""``RateLimiter.check``'s ``key``: a plan kept by the caller's key is made once, reused
with each request's time, dropped when the policies change, and bounded. (What a kept
plan decides, against a plan made afresh: ``tests/edge/test_decide_plans.py``.)"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from surefoot.ratelimit import RateLimiter, RateLimitPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio


async def test_kept_plans_are_dropped_when_the_policies_change() -> None:
    principals: list[str] = []

    def principal(scope: Any) -> str:
        principals.append(scope["path"])
        return "p"

    clock = ManualClock()
    limiter = RateLimiter(
        store=MemoryStore(),
        policies=[RateLimitPolicy("a", limits=["2/minute"])],
        principal=principal,
        clock=clock,
    )
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "state": {}}
    key: Hashable = ("GET", "/x")
    first = [await limiter.check(dict(scope), key) for _ in range(3)]
    assert [v.admitted for v in first if v is not None] == [True, True, False]
    assert principals == ["/x"]  # planned once, counted three times
    limiter.update_policies([RateLimitPolicy("a", limits=["5/minute"])])
    verdict = await limiter.check(dict(scope), key)
    assert verdict is not None
    assert verdict.admitted  # the new limit, the same counter
    assert principals == ["/x", "/x"]
    assert await limiter.check(dict(scope)) is not None  # no key: planned, not kept
    assert principals == ["/x", "/x", "/x"]
    assert list(limiter._prepared) == [key]


async def test_at_most_so_many_plans_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from surefoot.ratelimit import _limiter

    monkeypatch.setattr(_limiter, "_PREPARED", 2)
    limiter = RateLimiter(store=MemoryStore(), policies=[RateLimitPolicy("a", limits=["9/minute"])])
    for n in range(3):
        scope = {"type": "http", "method": "GET", "path": f"/{n}", "headers": [], "state": {}}
        await limiter.check(scope, n)
    assert list(limiter._prepared) == [2]  # full at 2: started again
