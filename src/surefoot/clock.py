"""Time as a dependency.

No surefoot core reads the clock: adapters ask a ``Clock`` and pass ``now`` in, so tests
drive time with ``surefoot.testing.ManualClock`` instead of sleeping. Times are seconds
since the Unix epoch (wall time), because records are shared between processes and hosts.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Something that tells the time in seconds since the Unix epoch."""

    def now(self) -> float: ...


class SystemClock:
    """The real wall clock (``time.time``)."""

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"
