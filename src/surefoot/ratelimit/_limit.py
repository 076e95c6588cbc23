"""``Limit`` and ``parse_limit``: how much, over how long, with which algorithm.

A limit is written ``"100/minute"``, ``"10/second"``, ``"5000/day"``, ``"20/5 minutes"``,
``"1000/hour"`` or ``"100000/month"`` (calendar months need the ``quota`` algorithm), or
built with explicit fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from surefoot.errors import ConfigurationError

__all__ = ["ALGORITHMS", "Limit", "parse_limit"]

#: Every algorithm name, as used in configuration.
ALGORITHMS = frozenset(
    {
        "fixed_window",
        "sliding_log",
        "sliding_window",
        "token_bucket",
        "leaky_bucket",
        "leaky_queue",
        "gcra",
        "concurrency",
        "quota",
    }
)

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "month": 30 * 86400.0, "months": 30 * 86400.0,
}  # fmt: skip
_NAMED_WINDOWS = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}
_SPEC = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``amount`` units of cost per ``window`` seconds.

    Example:
        >>> Limit(100, 60)  # 100 per minute, with the policy's algorithm
        >>> Limit(10, 1, algorithm="token_bucket", burst=20)
        >>> Limit(5000, 86400, algorithm="quota", period="day", timezone="Europe/Paris")

    Args:
        amount: units admitted per window (a request costs 1 unless the route says more).
        window: the window, in seconds (for ``concurrency``: unused).
        algorithm: overrides the policy's algorithm for this limit.
        burst: bucket capacity for ``token_bucket``, ``leaky_bucket`` and ``gcra``
            (default: ``amount``).
        max_wait: ``leaky_queue`` only: the longest a request is delayed before it is
            rejected instead (seconds).
        lease: ``concurrency`` only: seconds after which a slot held by a crashed
            worker comes back.
        period: ``quota`` only: ``"day"`` or ``"month"``, on the calendar of ``timezone``.
        timezone: IANA time zone of a quota's calendar.
    """

    amount: int
    window: float
    algorithm: str | None = None
    burst: int | None = None
    max_wait: float = 1.0
    lease: float = 60.0
    period: Literal["day", "month"] | None = None
    timezone: str = "UTC"
    #: The most a bucket holds: ``burst``, or ``amount`` (kept, as every decision reads it).
    capacity: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.amount, int) or self.amount < 1:
            _fail("amount", "a positive whole number", self.amount)
        if not self.window > 0:
            _fail("window", "a positive number of seconds", self.window)
        if self.algorithm is not None and self.algorithm not in ALGORITHMS:
            _fail("algorithm", f"one of {sorted(ALGORITHMS)}", self.algorithm)
        if self.burst is not None and (not isinstance(self.burst, int) or self.burst < 1):
            _fail("burst", "a positive whole number", self.burst)
        if not self.max_wait >= 0:
            _fail("max_wait", "seconds >= 0", self.max_wait)
        if not self.lease > 0:
            _fail("lease", "a positive number of seconds", self.lease)
        if self.period not in (None, "day", "month"):
            _fail("period", "'day' or 'month'", self.period)
        object.__setattr__(self, "capacity", self.amount if self.burst is None else self.burst)

    def describe(self) -> str:
        """``"100 requests per minute"``, ``"5 requests in flight"``, for messages."""
        if self.algorithm == "concurrency":
            return f"{self.amount} requests in flight"
        per = self.period or _NAMED_WINDOWS.get(self.window) or f"{self.window:g} seconds"
        return f"{self.amount} requests per {per}"


def parse_limit(spec: str | Limit, *, algorithm: str | None = None) -> Limit:
    """A ``Limit`` from ``"100/minute"``, ``"20/5 minutes"``, ``"5000 per day"``...

    ``"N/day"`` and ``"N/month"`` with ``algorithm="quota"`` are calendar periods.

    Raises:
        ConfigurationError: saying what was expected.
    """
    if isinstance(spec, Limit):
        return spec
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    unit = match.group(3).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigurationError(
            f"limit {spec!r}: expected 'AMOUNT/UNIT' or 'AMOUNT/N UNITS', such as '100/minute', "
            "'10/second', '20/5 minutes' or '5000/day' (units: second, minute, hour, day, month)"
        )
    amount, count = int(match.group(1)), float(match.group(2) or 1)
    window = count * _UNITS[unit]
    period: Literal["day", "month"] | None = None
    if algorithm == "quota":
        if unit.startswith("d") and count == 1:
            period = "day"
        elif unit.startswith("month") and count == 1:
            period = "month"
        else:
            raise ConfigurationError(
                f"limit {spec!r}: a quota is per 'day' or per 'month', such as '5000/day'"
            )
    elif unit.startswith("month"):
        raise ConfigurationError(
            f"limit {spec!r}: months are calendar periods; use algorithm 'quota' for them"
        )
    return Limit(amount, window, algorithm=algorithm, period=period)


def _fail(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"Limit.{name}: expected {expected}, got {got!r}")
