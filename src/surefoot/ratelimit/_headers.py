"""The rate-limit response fields of draft-ietf-httpapi-ratelimit-headers-10.

``RateLimit-Policy`` lists each limit as an RFC 9651 String item with ``q`` (quota) and
``w`` (window, whole seconds), plus ``qu="concurrent-requests"`` for concurrency limits;
``RateLimit`` lists the same items with ``r`` (remaining) and ``t`` (delta seconds, never
a timestamp: clients' clocks are not ours). On a 429 the violated limit's ``t`` is the
``Retry-After`` value, as the draft asks (``Retry-After`` no earlier than ``t``).
The legacy ``X-RateLimit-*`` trio reports the limit closest to exhaustion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from surefoot.ratelimit._algorithms import RateLimitDecision
from surefoot.ratelimit._limit import Limit

__all__ = ["Reported", "legacy_headers", "ratelimit_headers", "whole_seconds"]


@dataclass(frozen=True, slots=True)
class Reported:
    """One limit as the headers name it, with its decision for this request."""

    name: str
    limit: Limit
    decision: RateLimitDecision


def whole_seconds(seconds: float) -> int:
    """Seconds rounded up (a client that waits this long is never early), at least 0."""
    if seconds == math.inf:
        return 2**31 - 1
    return max(0, math.ceil(seconds - 1e-9))


def _sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=4096)
def _policy_item(name: str, limit: Limit) -> str:
    """One ``RateLimit-Policy`` member: constant for a limit, so built once."""
    if limit.algorithm == "concurrency":
        return f'{_sf_string(name)};q={limit.amount};qu="concurrent-requests"'
    return f"{_sf_string(name)};q={limit.capacity};w={whole_seconds(limit.window)}"


def ratelimit_headers(reported: Sequence[Reported], *, rejected: bool) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Policy`` and ``RateLimit`` for the reported limits."""
    policies, states = [], []
    for item in reported:
        name, limit, decision = _sf_string(item.name), item.limit, item.decision
        policies.append(_policy_item(item.name, limit))
        late = rejected and not decision.allowed
        t = decision.retry_after if late else decision.reset_after
        states.append(f"{name};r={max(0, decision.remaining)};t={whole_seconds(t)}")
    return [
        (b"ratelimit-policy", ", ".join(policies).encode()),
        (b"ratelimit", ", ".join(states).encode()),
    ]


def legacy_headers(
    reported: Sequence[Reported], *, now: float, reset: Literal["seconds", "epoch"]
) -> list[tuple[bytes, bytes]]:
    """``X-RateLimit-Limit/Remaining/Reset`` of a refusing limit, else the closest to exhaustion."""
    closest = min(
        reported, key=lambda r: (r.decision.allowed, r.decision.remaining / r.limit.capacity)
    )
    decision = closest.decision
    after = whole_seconds(decision.reset_after if decision.allowed else decision.retry_after)
    value = after if reset == "seconds" else math.ceil(now) + after
    return [
        (b"x-ratelimit-limit", str(closest.limit.capacity).encode()),
        (b"x-ratelimit-remaining", str(max(0, decision.remaining)).encode()),
        (b"x-ratelimit-reset", str(value).encode()),
    ]
