"""``Bulkhead``: at most N requests in flight to one upstream, so one slow partner cannot
take every connection, thread or task of the process.

``_Slots`` is the counter, without I/O: it grants slots and queues waiters first come,
first served. ``Bulkhead`` adds a lock and the two waiting primitives: a ``threading.Event``
per waiting thread (the sync transport) and an ``asyncio.Future`` per waiting task (the
async transport); one bulkhead may serve both at once.

Rule 1: ``in_use`` never exceeds ``max_concurrent``: a slot freed while someone waits is
handed to the first waiter directly (it never goes back to the pool, so a newcomer cannot
barge in ahead of the queue).
Rule 2: a waiter that gives up (timeout, cancellation) leaves the queue under the lock; if a
slot was handed to it in the meantime, it owns that slot and must use or release it.
Rule 3: every slot granted is released exactly once (``Slot.release`` is idempotent); the
drivers release it in ``finally`` paths and when the response is closed.
Rule 4: waking a waiter never blocks and never needs its event loop's lock, so a slot may be
released from any thread, or from a task being cancelled.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import Callable

from surefoot.errors import ConfigurationError, UpstreamThrottled

__all__ = ["Bulkhead", "Slot"]

# A waiter is woken by calling it (it must not block).
_Waker = Callable[[], None]


class _Slots:
    """The sans-I/O counter (see the rules above); callers hold the lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.waiters: deque[_Waker] = deque()

    def try_acquire(self) -> bool:
        if self.in_use < self.limit and not self.waiters:
            self.in_use += 1
            return True
        return False

    def release(self) -> _Waker | None:
        """Free a slot; returns the waiter it was handed to (to wake), if any."""
        if self.waiters:
            return self.waiters.popleft()  # the slot changes hands: in_use is unchanged
        self.in_use -= 1
        return None

    def abandon(self, waiter: _Waker) -> bool:
        """The waiter gives up; True if a slot had already been handed to it."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return True
        return False


class Slot:
    """A granted slot; ``release()`` frees it (once, whatever the number of calls)."""

    __slots__ = ("_bulkhead", "_released")

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._bulkhead._release()


class Bulkhead:
    """A concurrency cap per integration: ``max_concurrent`` requests in flight at most.

    Example:
        >>> bulkhead = Bulkhead(10, name="shipping", max_wait=2.0)
        >>> transport = AsyncResilientTransport(httpx.AsyncHTTPTransport(), bulkhead=bulkhead)

    Args:
        max_concurrent: attempts in flight at once (sent and not yet closed).
        name: names the upstream in errors and events.
        max_wait: the longest an attempt waits for a slot, in seconds (real time: a slot
            is waited for, not polled); 0, the default, fails at once, like resilience4j:
            a full bulkhead means the partner is slow, and queueing would only move the pile.

    A full bulkhead raises ``UpstreamThrottled`` (``limit`` "10 requests in flight"): nothing
    was sent. One bulkhead is safe to share between threads, tasks and transports.
    """

    def __init__(
        self, max_concurrent: int, *, name: str = "default", max_wait: float = 0.0
    ) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
            raise ConfigurationError(
                f"Bulkhead.max_concurrent: expected a whole number >= 1, got {max_concurrent!r}"
            )
        if max_concurrent < 1:
            raise ConfigurationError(
                f"Bulkhead.max_concurrent: expected a whole number >= 1, got {max_concurrent!r}"
            )
        if not isinstance(max_wait, int | float) or not 0 <= max_wait < math.inf:
            raise ConfigurationError(
                f"Bulkhead.max_wait: expected a finite number of seconds >= 0, got {max_wait!r}"
            )
        self.max_concurrent = max_concurrent
        self.name = name
        self.max_wait = float(max_wait)
        self.described = f"{max_concurrent} requests in flight"
        self._lock = threading.Lock()
        self._slots = _Slots(max_concurrent)

    @property
    def in_use(self) -> int:
        """Slots taken now."""
        return self._slots.in_use

    def try_acquire(self) -> Slot | None:
        """A slot if one is free now (and nobody waits), else None."""
        with self._lock:
            return Slot(self) if self._slots.try_acquire() else None

    def acquire(self, wait: float) -> Slot:
        """A slot, waiting up to ``wait`` seconds (blocking this thread)."""
        event = threading.Event()
        with self._lock:
            if self._slots.try_acquire():
                return Slot(self)
            self._slots.waiters.append(event.set)
        try:
            granted = event.wait(wait)
        except BaseException:  # interrupted: pass on a slot handed to us meanwhile
            with self._lock:
                granted = self._slots.abandon(event.set)
            if granted:
                self._release()
            raise
        if not granted:
            with self._lock:
                granted = self._slots.abandon(event.set)  # it may have come as we gave up
            if not granted:
                raise self.refusal()
        return Slot(self)

    async def aacquire(self, wait: float) -> Slot:
        """A slot, waiting up to ``wait`` seconds (on the running event loop)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, future)

        with self._lock:
            if self._slots.try_acquire():
                return Slot(self)
            self._slots.waiters.append(wake)
        try:
            # Not wait_for: on 3.11 it may swallow a cancellation that races the result.
            async with asyncio.timeout(wait):
                await future
        except BaseException as exc:
            with self._lock:
                granted = self._slots.abandon(wake)
            if granted:
                if isinstance(exc, TimeoutError):
                    return Slot(self)  # the slot arrived as we gave up: take it
                self._release()  # cancelled: pass the slot on
                raise
            if isinstance(exc, TimeoutError):
                raise self.refusal() from None
            raise
        return Slot(self)

    def refusal(self) -> UpstreamThrottled:
        """The error for an attempt that got no slot."""
        return UpstreamThrottled(integration=self.name, limit=self.described, retry_after=1)

    def _release(self) -> None:
        with self._lock:
            waiter = self._slots.release()
        if waiter is not None:
            waiter()

    def __repr__(self) -> str:
        return f"Bulkhead(name={self.name!r}, in_use={self.in_use}/{self.max_concurrent})"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
