"""Events of the outbox worker: one per attempt, one per delivery put back unsent, one
per endpoint disabled, and a periodic backlog report (what the metrics export).

Each carries the endpoint's name and the message id (never a secret, never the body).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = [
    "OutboxBacklog",
    "WebhookAttempted",
    "WebhookDeferred",
    "WebhookEndpointDisabled",
    "WebhookSenderEvent",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSenderEvent(Event):
    name: ClassVar[str] = "outbox.event"

    endpoint: str


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookAttempted(WebhookSenderEvent):
    """One HTTP attempt ended. ``outcome``: ``delivered``, ``retrying`` (a later attempt
    is scheduled) or ``failed`` (the schedule is exhausted, or the endpoint answered 410)."""

    name: ClassVar[str] = "outbox.attempted"
    message_id: str
    event_type: str
    attempt: int
    outcome: str
    status: int | None
    error: str | None
    latency: float


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookDeferred(WebhookSenderEvent):
    """A claimed delivery went back unsent (``reason``: ``rate_limited``,
    ``rate_limit_unavailable`` while the rate-limit store fails, ``breaker_open``); its
    attempt count is unchanged."""

    name: ClassVar[str] = "outbox.deferred"
    level: ClassVar[int] = logging.DEBUG
    message_id: str
    reason: str
    retry_after: float


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookEndpointDisabled(WebhookSenderEvent):
    """The worker disabled an endpoint (``reason``: ``gone`` after a 410, ``failing``
    after failing for ``disable_after``); its messages wait until it is enabled."""

    name: ClassVar[str] = "outbox.endpoint_disabled"
    level: ClassVar[int] = logging.WARNING
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxBacklog(Event):
    """The backlog of every endpoint, reported by a worker every ``report_every`` seconds.

    ``endpoints`` holds ``(name, enabled, pending, sending, failed, oldest_age)`` per
    endpoint, ``oldest_age`` in seconds or None.
    """

    name: ClassVar[str] = "outbox.backlog"
    level: ClassVar[int] = logging.DEBUG
    endpoints: tuple[tuple[str, bool, int, int, int, float | None], ...]
