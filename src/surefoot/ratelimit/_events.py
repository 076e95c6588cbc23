"""Events of the rate limiter: every decision, one frozen dataclass each.

While the store is down, each request emits ``RateLimitStoreFailed`` when its own store
call failed, or ``RateLimitStoreBypassed`` when the store was known to be down and not
called; the outage itself is one ``surefoot.storage.StoreDown`` and one
``StoreRecovered``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = [
    "RateLimitAllowed",
    "RateLimitEvent",
    "RateLimitRejected",
    "RateLimitShadowRejected",
    "RateLimitStoreBypassed",
    "RateLimitStoreFailed",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitEvent(Event):
    name: ClassVar[str] = "ratelimit.event"

    method: str
    path: str
    principal: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitAllowed(RateLimitEvent):
    """A request passed every limit (logged at DEBUG: one per request)."""

    name: ClassVar[str] = "ratelimit.allowed"
    level: ClassVar[int] = logging.DEBUG
    policies: tuple[str, ...]
    delay: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitRejected(RateLimitEvent):
    """A request was refused with 429 by ``policy``'s ``limit``."""

    name: ClassVar[str] = "ratelimit.rejected"
    level: ClassVar[int] = logging.WARNING
    policy: str
    limit: str
    retry_after: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitShadowRejected(RateLimitEvent):
    """A shadow policy would have refused the request; it went through."""

    name: ClassVar[str] = "ratelimit.shadow_rejected"
    level: ClassVar[int] = logging.WARNING
    policy: str
    limit: str
    retry_after: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitStoreFailed(RateLimitEvent):
    """This request's store call failed; ``action`` says what its policies chose.

    ``action`` is ``"fail_open"`` (admitted unlimited), ``"fail_closed"`` (503) or
    ``"local_fallback"`` (decided by this process's counters).
    """

    name: ClassVar[str] = "ratelimit.store_failed"
    level: ClassVar[int] = logging.ERROR
    action: str
    error: str  # the exception's class name (``TimeoutError`` for the guard), never its text


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitStoreBypassed(RateLimitEvent):
    """The store is down: the request was decided by ``action`` without calling it.

    One per request during an outage, so logged at DEBUG like ``RateLimitAllowed``; count
    them with a hook.
    """

    name: ClassVar[str] = "ratelimit.store_bypassed"
    level: ClassVar[int] = logging.DEBUG
    action: str
