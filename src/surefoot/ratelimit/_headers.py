"""The rate-limit response fields of draft-ietf-httpapi-ratelimit-headers-10.

``RateLimit-Policy`` lists each limit as an RFC 9651 String item with ``q`` (quota) and
``w`` (window, whole seconds), plus ``qu="concurrent-requests"`` for concurrency limits;
``RateLimit`` lists the same items with ``r`` (remaining) and ``t`` (delta seconds, never
a timestamp: clients' clocks are not ours).

Rule 1: ``t`` is the seconds until *additional* quota is available (the draft's resolution
        of its issue #149: the decision's ``available_after``, rounded up), 0 exactly when
        nothing is used, and at most ``w`` (see the algorithms' Rule 4 for the
        exceptions). Whole seconds, rounded up: a client that waits ``t`` finds more.
Rule 2: on a 429 the violated limit's ``t`` is the ``Retry-After`` value, as the draft asks
        (``Retry-After`` no earlier than ``t``): waiting it, the request is admitted.
Rule 3: a concurrency limit has no ``t`` unless it refused: a slot comes back when a
        response ends, which no clock predicts (the draft makes ``t`` optional).
Rule 4: a calendar quota's ``w`` is the length of its current period (a 31-day month, a
        23-hour day), so that ``t``, the time to the period's end, never exceeds it.

The legacy ``X-RateLimit-*`` trio reports the limit closest to exhaustion; its reset is
when that limit is back to *full* (``reset_after``), as GitHub and most APIs mean it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from surefoot.ratelimit._algorithms import RateLimitDecision, quota_period
from surefoot.ratelimit._limit import Limit

__all__ = [
    "Reported",
    "fixed_policy_field",
    "legacy_headers",
    "policy_field",
    "state_field",
    "whole_seconds",
]


@dataclass(frozen=True, slots=True)
class Reported:
    """One limit as the headers name it, with what of its fields never changes, made once."""

    name: str
    limit: Limit
    #: Its ``RateLimit-Policy`` member; None for a quota, whose window is its period (Rule 4).
    member: str | None = field(init=False, repr=False, compare=False)
    #: The start of its ``RateLimit`` item: the name and ``;r=``.
    prefix: str = field(init=False, repr=False, compare=False)
    concurrent: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        quota = self.limit.algorithm == "quota"
        member = None if quota else _policy_item(self.name, self.limit, self.limit.window)
        object.__setattr__(self, "member", member)
        object.__setattr__(self, "prefix", f"{_sf_string(self.name)};r=")
        object.__setattr__(self, "concurrent", self.limit.algorithm == "concurrency")


_INF = math.inf
_FOREVER = 2**31 - 1
_ceil = math.ceil


def whole_seconds(seconds: float) -> int:
    """Seconds rounded up (a client that waits this long is never early), at least 0."""
    if seconds == _INF:
        return _FOREVER
    return max(0, _ceil(seconds - 1e-9))


def _sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=4096)
def _policy_item(name: str, limit: Limit, window: float) -> str:
    """One ``RateLimit-Policy`` member: constant for a limit (and a quota's period)."""
    if limit.algorithm == "concurrency":
        return f'{_sf_string(name)};q={limit.amount};qu="concurrent-requests"'
    return f"{_sf_string(name)};q={limit.capacity};w={whole_seconds(window)}"


def policy_field(reported: Sequence[Reported], *, now: float) -> bytes:
    """``RateLimit-Policy``'s value for the reported limits at ``now``."""
    members = []
    for item in reported:
        member = item.member
        if member is None:
            limit = item.limit
            start, end = quota_period(now, limit.period or "day", limit.timezone)
            member = _policy_item(item.name, limit, end - start)  # Rule 4
        members.append(member)
    return ", ".join(members).encode()


def fixed_policy_field(reported: Sequence[Reported]) -> bytes | None:
    """``RateLimit-Policy``'s value if it never changes (no quota among the limits)."""
    if any(item.member is None for item in reported):
        return None
    return policy_field(reported, now=0.0)


def state_field(
    reported: Sequence[Reported], decisions: Sequence[RateLimitDecision], *, rejected: bool
) -> bytes:
    """``RateLimit``'s value for the reported limits and their decisions."""
    states = []
    # Not zip(strict=True): its keyword argument costs as much as the rest of one item.
    for i, item in enumerate(reported):
        decision = decisions[i]
        remaining = decision.remaining if decision.remaining > 0 else 0
        if rejected and not decision.allowed:
            # Rule 2: the very value of Retry-After (at least 1 second).
            t = max(1, whole_seconds(decision.retry_after))
        elif item.concurrent:
            states.append(f"{item.prefix}{remaining}")  # Rule 3
            continue
        else:
            # Rule 1: a state with anything used never says 0. (whole_seconds, written
            # out: this runs for every limit of every request.)
            available = decision.available_after
            if available <= 0:
                t = 0
            elif available == _INF:
                t = _FOREVER
            else:
                t = _ceil(available - 1e-9)
                if t < 1:
                    t = 1
        states.append(f"{item.prefix}{remaining};t={t}")
    return ", ".join(states).encode()


def legacy_headers(
    reported: Sequence[Reported],
    decisions: Sequence[RateLimitDecision],
    *,
    now: float,
    reset: Literal["seconds", "epoch"],
) -> list[tuple[bytes, bytes]]:
    """``X-RateLimit-Limit/Remaining/Reset`` of a refusing limit, else the closest to exhaustion."""
    limit, decision = min(
        zip((r.limit for r in reported), decisions, strict=True),
        key=lambda ld: (ld[1].allowed, ld[1].remaining / ld[0].capacity),
    )
    # Until full (not until more, as RateLimit's t): what X-RateLimit-Reset means elsewhere.
    after = whole_seconds(decision.reset_after if decision.allowed else decision.retry_after)
    value = after if reset == "seconds" else math.ceil(now) + after
    return [
        (b"x-ratelimit-limit", str(limit.capacity).encode()),
        (b"x-ratelimit-remaining", str(max(0, decision.remaining)).encode()),
        (b"x-ratelimit-reset", str(value).encode()),
    ]
