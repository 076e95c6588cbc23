"""``RetryPolicy``: what the client retries, how often and how long it waits, as a value.

A policy is immutable and never sleeps: the retry flow (``_flow.py``) asks it for the
backoff of each retry and the driver does the waiting. Change one with
``dataclasses.replace(policy, max_attempts=5)``; the copy is validated again.

Backoff of retry ``n`` (1 for the first retry) is exponential, ``cap(n) = min(backoff_max,
backoff_base * 2 ** (n - 1))``, spread by the jitter (after AWS, "Exponential Backoff and
Jitter")::

    "full"          uniform(0, cap(n))                       the default: spreads retries most
    "equal"         cap(n) / 2 + uniform(0, cap(n) / 2)      never retries at once
    "decorrelated"  min(backoff_max, uniform(base, 3 * previous delay))
    "none"          cap(n)                                   synchronised retries: for comparisons
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, NoReturn

from surefoot.errors import ConfigurationError

__all__ = [
    "DEFAULT_RETRY_PROBLEM_CODES",
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "JITTERS",
    "Jitter",
    "RetryPolicy",
]

Jitter = Literal["full", "equal", "decorrelated", "none"]
JITTERS: tuple[Jitter, ...] = ("full", "equal", "decorrelated", "none")

#: Statuses that say "not now" rather than "never": timeouts, too early, throttled, 5xx.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})
#: RFC 9110 section 9.2.2: sending one of these twice has the effect of sending it once.
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Problem codes of an idempotency layer (surefoot's own) that say: retry with the same key.
DEFAULT_RETRY_PROBLEM_CODES: frozenset[str] = frozenset(
    {"idempotency_request_in_progress", "idempotency_outcome_unknown"}
)

# 2 ** 62 is far beyond any backoff_max; the bound keeps the float from overflowing.
_MAX_EXPONENT = 62


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """When and how an outbound request is retried.

    Example:
        >>> RetryPolicy()  # 3 attempts within 30 s, full jitter from 0.5 s up to 10 s
        >>> RetryPolicy(max_attempts=4, deadline=30.0, attempt_timeout=5.0)
        >>> RetryPolicy(retry_statuses={503}, jitter="decorrelated", raise_on_exhausted=True)

    Args:
        max_attempts: attempts in all, the first included (1 disables retries).
        deadline: seconds from the first attempt after which no attempt starts and no wait
            is begun that would end past it; ``None``: no total deadline.
        attempt_timeout: seconds each attempt may take (applied to httpx's connect, read,
            write and pool timeouts, never loosening the client's own); ``None``: the
            client's timeouts, still capped by what is left of the deadline.
        backoff_base: seconds of the first retry's backoff cap; it doubles per retry.
        backoff_max: the largest backoff, in seconds.
        jitter: ``"full"`` (default), ``"equal"``, ``"decorrelated"`` or ``"none"``.
        retry_statuses: response statuses that are retried (when the request is safe).
        idempotent_methods: methods retried without an idempotency key.
        retry_problem_codes: ``application/problem+json`` codes that are retried whatever
            the status: by default the 409s of an idempotency layer saying the same key
            will get the result (``idempotency_request_in_progress``,
            ``idempotency_outcome_unknown``).
        max_retry_after: the longest ``Retry-After`` the client waits, in seconds; a
            server asking for more is not retried (retrying sooner would be refused again).
        raise_on_exhausted: when the last attempt got a retry status (a 503...), raise
            ``UpstreamUnavailable`` instead of returning that response (httpx's convention,
            the default, is to return it; transport errors always raise).

    Warning:
        ``deadline=None`` with a large ``max_attempts`` and ``max_retry_after`` can keep a
        caller waiting for minutes; keep a deadline on anything a user waits for.
    """

    max_attempts: int = 3
    deadline: float | None = 30.0
    attempt_timeout: float | None = None
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    jitter: Jitter = "full"
    retry_statuses: Collection[int] = DEFAULT_RETRY_STATUSES
    idempotent_methods: Collection[str] = IDEMPOTENT_METHODS
    retry_problem_codes: Collection[str] = DEFAULT_RETRY_PROBLEM_CODES
    max_retry_after: float = 60.0
    raise_on_exhausted: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            _fail("max_attempts", "an integer >= 1", self.max_attempts)
        if self.max_attempts < 1:
            _fail("max_attempts", "an integer >= 1", self.max_attempts)
        for name in ("deadline", "attempt_timeout"):
            value = getattr(self, name)
            if value is not None and not _positive(value):
                _fail(name, "a finite number of seconds > 0, or None", value)
        if not _non_negative(self.backoff_base):
            _fail("backoff_base", "a finite number of seconds >= 0", self.backoff_base)
        if not _non_negative(self.backoff_max) or self.backoff_max < self.backoff_base:
            _fail("backoff_max", "a finite number of seconds >= backoff_base", self.backoff_max)
        if self.jitter not in JITTERS:
            _fail("jitter", f"one of {', '.join(map(repr, JITTERS))}", self.jitter)
        if not _non_negative(self.max_retry_after):
            _fail("max_retry_after", "a finite number of seconds >= 0", self.max_retry_after)
        if not isinstance(self.raise_on_exhausted, bool):
            _fail("raise_on_exhausted", "True or False", self.raise_on_exhausted)
        statuses = _frozen(self.retry_statuses, "retry_statuses", "HTTP statuses (100-599)")
        if not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
            _fail("retry_statuses", "HTTP statuses (integers 100-599)", self.retry_statuses)
        methods = _frozen(self.idempotent_methods, "idempotent_methods", "method names")
        if not all(isinstance(m, str) and m for m in methods):
            _fail("idempotent_methods", "method names ('GET', 'PUT'...)", self.idempotent_methods)
        codes = _frozen(self.retry_problem_codes, "retry_problem_codes", "problem codes")
        if not all(isinstance(c, str) and c for c in codes):
            _fail("retry_problem_codes", "problem codes (strings)", self.retry_problem_codes)
        object.__setattr__(self, "retry_statuses", statuses)
        object.__setattr__(self, "idempotent_methods", frozenset(str(m).upper() for m in methods))
        object.__setattr__(self, "retry_problem_codes", codes)

    def backoff(self, retry: int, *, previous: float, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        ``previous`` is the last delay (``backoff_base`` before the first retry); only
        ``"decorrelated"`` uses it. ``rng`` is the only source of randomness, so a seeded
        ``random.Random`` makes every delay reproducible.
        """
        if self.jitter == "decorrelated":
            upper = max(self.backoff_base, previous * 3)
            return min(self.backoff_max, rng.uniform(self.backoff_base, upper))
        cap = min(self.backoff_max, self.backoff_base * 2.0 ** min(retry - 1, _MAX_EXPONENT))
        if self.jitter == "full":
            return rng.uniform(0.0, cap)
        if self.jitter == "equal":
            return cap / 2 + rng.uniform(0.0, cap / 2)
        return cap


def _positive(value: object) -> bool:
    return _non_negative(value) and value > 0  # type: ignore[operator]


def _non_negative(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _frozen(value: object, name: str, expected: str) -> frozenset[object]:
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        _fail(name, f"a collection of {expected}", value)
    return frozenset(value)


def _fail(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"RetryPolicy.{name}: expected {expected}, got {got!r}")
