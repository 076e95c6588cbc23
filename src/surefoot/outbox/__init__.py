"""Sending webhooks: a transactional outbox, a retry schedule, per-endpoint limits, replay.

The pieces, from the pure ones up:

- ``_core`` (pure): the delivery state machine, the retry schedule and what one
  attempt's result does to its delivery and its endpoint (``judge``).
- ``_signing`` (pure): Standard Webhooks signatures (``v1``, ``v1a``).
- ``outbox`` (adapter): ``Outbox``, which records messages in the application's own
  SQLite or PostgreSQL transaction, holds the endpoints, and claims and records
  deliveries for workers.
- ``worker`` (adapter): ``OutboxWorker``, which POSTs claimed deliveries under
  per-endpoint rate limits, circuit breakers and an SSRF guard.

See ``docs/outbox.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.outbox._core import (
    DEFAULT_SCHEDULE,
    SINCE,
    DeliveryState,
    Judgement,
    Result,
    RetrySchedule,
    judge,
    parse_since,
)
from surefoot.outbox._events import (
    OutboxBacklog,
    WebhookAttempted,
    WebhookDeferred,
    WebhookEndpointDisabled,
    WebhookSenderEvent,
)
from surefoot.outbox._signing import sign

if TYPE_CHECKING:
    from surefoot.outbox.outbox import (
        Attempt,
        Delivery,
        Endpoint,
        EndpointStats,
        Outbox,
    )
    from surefoot.outbox.worker import OutboxWorker
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.outbox.outbox": (
                "Attempt",
                "Delivery",
                "Endpoint",
                "EndpointStats",
                "Outbox",
            ),
            "surefoot.outbox.worker": ("OutboxWorker",),
        },
    )

__all__ = [
    "DEFAULT_SCHEDULE",
    "SINCE",
    "Attempt",
    "Delivery",
    "DeliveryState",
    "Endpoint",
    "EndpointStats",
    "Judgement",
    "Outbox",
    "OutboxBacklog",
    "OutboxWorker",
    "Result",
    "RetrySchedule",
    "WebhookAttempted",
    "WebhookDeferred",
    "WebhookEndpointDisabled",
    "WebhookSenderEvent",
    "judge",
    "parse_since",
    "sign",
]
