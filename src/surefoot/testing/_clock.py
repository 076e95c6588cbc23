from __future__ import annotations

import asyncio

__all__ = ["ManualClock"]


class ManualClock:
    """A clock that moves only when told to.

    Example:
        >>> clock = ManualClock(1_700_000_000.0)
        >>> clock.advance(30)
        >>> clock.now()
        1700000030.0

    Pass ``clock.sleep`` where surefoot takes a ``sleep`` function: it advances the
    clock instead of waiting, and yields once to the event loop.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("time only moves forward")
        self._now = float(now)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"
