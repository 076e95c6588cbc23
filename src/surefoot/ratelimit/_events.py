"""Events of the rate limiter: every decision, one frozen dataclass each."""

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
    """The counter store failed; ``action`` says what the policies chose."""

    name: ClassVar[str] = "ratelimit.store_failed"
    level: ClassVar[int] = logging.ERROR
    action: str  # "fail_open" or "fail_closed"
    error: str  # the exception's class name, never its text
