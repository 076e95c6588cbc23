"""``RecordingSleep``: run retries instantly and see what the client waited."""

from __future__ import annotations

import asyncio

from surefoot.testing._clock import ManualClock

__all__ = ["RecordingSleep"]


class RecordingSleep:
    """A ``sleep`` for the client transports that records each wait and advances a clock.

    Example:
        >>> clock = ManualClock()
        >>> sleep = RecordingSleep(clock)
        >>> transport = ResilientTransport(inner, clock=clock, sleep=sleep)
        >>> async_transport = AsyncResilientTransport(inner, clock=clock, sleep=sleep.asleep)
        >>> ...  # make requests
        >>> sleep.calls
        [0.31, 0.74]

    Call it (sync) or await ``asleep`` (async): neither waits; the clock moves forward by
    the requested seconds, so deadlines, ``Retry-After`` dates and the retry budget see the
    time pass. ``asleep`` yields once to the event loop, as a real sleep would.
    """

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock if clock is not None else ManualClock()
        #: Every requested wait, in seconds, in order.
        self.calls: list[float] = []

    @property
    def total(self) -> float:
        """Seconds waited in all."""
        return sum(self.calls)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        self(seconds)
        await asyncio.sleep(0)

    def clear(self) -> None:
        """Forget the recorded waits (the clock keeps its time)."""
        self.calls.clear()

    def __repr__(self) -> str:
        return f"RecordingSleep(calls={self.calls!r}, clock={self.clock!r})"
