"""Rate limits, quotas and concurrency limits: per client, from configuration.

Algorithms are pure functions in ``_algorithms`` (``(state, now, cost, limit) ->
(decision, state)``); ``_core.plan`` decides one request against several limits, all or
nothing; stores (``_store`` is their contract) run it atomically; ``RateLimitMiddleware``
(ASGI) and ``RateLimitDependency`` (FastAPI) are the adapters, imported on first use so
that importing a core loads no I/O module. While the store is down, each policy fails
open, fails closed or falls back to per-process counters (``on_store_error``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.ratelimit._algorithms import (
    ALGORITHM_BY_NAME,
    Concurrency,
    CounterState,
    ListLog,
    Log,
    LogEntry,
    RateLimitDecision,
    quota_period,
)
from surefoot.ratelimit._core import Item, plan
from surefoot.ratelimit._events import (
    RateLimitAllowed,
    RateLimitEvent,
    RateLimitRejected,
    RateLimitShadowRejected,
    RateLimitStoreBypassed,
    RateLimitStoreFailed,
)
from surefoot.ratelimit._limit import ALGORITHMS, Limit, parse_limit
from surefoot.ratelimit._policy import RateLimitPolicy, Rollout, limit_key
from surefoot.ratelimit._store import RateLimitStore, SyncRateLimitStore

if TYPE_CHECKING:
    from surefoot.ratelimit._limiter import RateLimiter, SyncRateLimiter, TierResolver, Verdict
    from surefoot.ratelimit.dependency import (
        RateLimitDependency,
        RateLimited,
        install_problem_handler,
    )
    from surefoot.ratelimit.middleware import RateLimitMiddleware
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.ratelimit._limiter": (
                "RateLimiter",
                "SyncRateLimiter",
                "TierResolver",
                "Verdict",
            ),
            "surefoot.ratelimit.dependency": (
                "RateLimitDependency",
                "RateLimited",
                "install_problem_handler",
            ),
            "surefoot.ratelimit.middleware": ("RateLimitMiddleware",),
        },
    )

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_BY_NAME",
    "Concurrency",
    "CounterState",
    "Item",
    "Limit",
    "ListLog",
    "Log",
    "LogEntry",
    "RateLimitAllowed",
    "RateLimitDecision",
    "RateLimitDependency",
    "RateLimitEvent",
    "RateLimitMiddleware",
    "RateLimitPolicy",
    "RateLimitRejected",
    "RateLimitShadowRejected",
    "RateLimitStore",
    "RateLimitStoreBypassed",
    "RateLimitStoreFailed",
    "RateLimited",
    "RateLimiter",
    "Rollout",
    "SyncRateLimitStore",
    "SyncRateLimiter",
    "TierResolver",
    "Verdict",
    "install_problem_handler",
    "limit_key",
    "parse_limit",
    "plan",
    "quota_period",
]
