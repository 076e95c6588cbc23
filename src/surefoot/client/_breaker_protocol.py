"""The hook point for a circuit breaker: what the retry flow asks of one, as a Protocol.

The flow calls ``permit = breaker.acquire()`` before every attempt, then exactly one of
``breaker.on_result(permit, ...)`` (the attempt got a response or a transport error) or
``breaker.release(permit)`` (it ended without an outcome: cancelled, or a local error such
as an unsupported URL). ``acquire`` raising ``surefoot.errors.CircuitOpen`` stops the flow
before any network call; the caller gets that ``CircuitOpen``.

Rule 1: every permit acquired is settled once, on every path (the flow guarantees it).
Rule 2: ``failed`` is the flow's verdict (a transport error or a retry status); ``status``
and ``error`` are passed too, so a breaker may count outcomes its own way (a 404 is usually
not a failure, a timeout is), and ``duration`` feeds a slow-call rate.
Rule 3: the methods are synchronous and must not block: they run on the event loop.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Breaker"]


@runtime_checkable
class Breaker(Protocol):
    """What ``ResilientTransport(breaker=...)`` needs from a circuit breaker."""

    def acquire(self) -> object:
        """A permit to make one attempt; raises ``CircuitOpen`` when calls are suspended."""
        ...

    def on_result(
        self,
        permit: object,
        *,
        failed: bool,
        duration: float,
        status: int | None,
        error: BaseException | None,
    ) -> None:
        """The attempt behind ``permit`` ended: a response (``status``) or an ``error``."""
        ...

    def release(self, permit: object) -> None:
        """The attempt behind ``permit`` ended without an outcome; count nothing."""
        ...
