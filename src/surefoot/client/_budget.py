"""``RetryBudget``: retries may be at most a fraction of recent requests (gRPC, Envoy, Finagle).

A per-request limit (``max_attempts``) does not stop a retry storm: when an upstream fails
every request, three attempts each triple its load just when it can least take it. A
budget bounds retries across requests instead::

    a retry may go  iff  retries + 1 <= ratio * requests + min_retries_per_second * window

counted over the last ``window`` seconds. Under a total outage the load is therefore at most
``(1 + ratio)`` times the callers' own rate (plus the small reserve), whatever
``max_attempts`` says; while the upstream is healthy nobody retries and the budget is full.
The reserve lets a caller that sends few requests still retry.

Rule 1: the window slides in ``_BUCKETS`` steps: counts older than ``window`` are forgotten
within ``window / _BUCKETS`` seconds, and memory is constant.
Rule 2: one lock guards the counts, so threads (and tasks, which never wait on it across an
``await``) share a budget safely.
Rule 3: the budget never reads the clock; ``now`` is passed in (seconds, from any ``Clock``).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import NoReturn

from surefoot.errors import ConfigurationError

__all__ = ["RetryBudget"]

_BUCKETS = 10


class RetryBudget:
    """A shared allowance of retries, refilled by requests.

    Example:
        >>> budget = RetryBudget(ratio=0.2, min_retries_per_second=10, window=10)
        >>> transport = ResilientTransport(httpx.HTTPTransport(), budget=budget)

    Share one budget between the transports that call the same upstream; each transport
    makes its own when none is given. ``RetryBudget.unlimited()`` turns the budget off.

    Args:
        ratio: retries allowed per request, over the window (0.2: one retry per five requests).
        min_retries_per_second: a reserve of retries per second that is always allowed,
            so a caller with little traffic can still retry.
        window: seconds of history the budget counts.
    """

    def __init__(
        self, *, ratio: float = 0.2, min_retries_per_second: float = 10.0, window: float = 10.0
    ) -> None:
        if not _number(ratio) or not (0 <= ratio < math.inf):
            _fail("ratio", "a finite number >= 0", ratio)
        if not _number(min_retries_per_second) or min_retries_per_second < 0:
            _fail(
                "min_retries_per_second",
                "a number >= 0 (math.inf: unlimited)",
                min_retries_per_second,
            )
        if not _number(window) or not (0 < window < math.inf):
            _fail("window", "a finite number of seconds > 0", window)
        self.ratio = float(ratio)
        self.min_retries_per_second = float(min_retries_per_second)
        self.window = float(window)
        self._reserve = self.min_retries_per_second * self.window
        self._width = self.window / _BUCKETS
        self._lock = threading.Lock()
        # (bucket number, requests, retries), oldest first; totals kept beside them.
        self._buckets: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    @classmethod
    def unlimited(cls) -> RetryBudget:
        """A budget that allows every retry (the per-request ``max_attempts`` still applies)."""
        return cls(min_retries_per_second=math.inf)

    def record_request(self, now: float) -> None:
        """Count one logical request (its first attempt), which earns ``ratio`` retries."""
        with self._lock:
            self._bucket(now)[1] += 1
            self._requests += 1

    def try_retry(self, now: float) -> bool:
        """Spend one retry; True when the retry may go (and it was counted)."""
        with self._lock:
            bucket = self._bucket(now)
            if self._retries + 1 > self.ratio * self._requests + self._reserve:
                return False
            bucket[2] += 1
            self._retries += 1
            return True

    def available(self, now: float) -> float:
        """Retries that would be allowed now (``math.inf`` when unlimited)."""
        with self._lock:
            self._bucket(now)
            return max(0.0, self.ratio * self._requests + self._reserve - self._retries)

    def _bucket(self, now: float) -> list[int]:
        number = math.floor(now / self._width)
        buckets = self._buckets
        while buckets and buckets[0][0] <= number - _BUCKETS:
            _, requests, retries = buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if buckets and buckets[-1][0] >= number:
            # A clock that steps back counts into the newest bucket rather than reorder.
            return buckets[-1]
        bucket = [number, 0, 0]
        buckets.append(bucket)
        return bucket

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, "
            f"min_retries_per_second={self.min_retries_per_second!r}, window={self.window!r})"
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _fail(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"RetryBudget.{name}: expected {expected}, got {got!r}")
