"""Receiving webhooks: verify every signature scheme in use, process each event once,
and never let an older event overwrite a newer one.

The pieces, from the pure ones up:

- ``_verify`` (pure): the signature schemes (``StandardWebhooks``, ``Stripe``,
  ``GitHub``, ``Hmac``), each a ``verify(headers, body, now)`` over the raw bytes that
  returns a ``Verified`` or raises a ``WebhookRejected`` of the catalogue.
- ``_event`` (pure): where an event's id and ordering fields are read (``EventId``,
  ``Ordering``), and the bounds they must meet.
- ``_order`` (pure): the ordering guard's state machine, one record per object, which
  stores apply atomically (``OrderingStore`` in ``_store``).
- ``receiver`` (adapter): ``WebhookReceiver``, pure ASGI, which verifies, then runs each
  event once through an ``IdempotencyMiddleware`` keyed by the event id (and, with
  ``archive=True``, keeps each delivery in an ``EventArchive`` for ``replay``), and
  ``webhook_event`` for a FastAPI dependency.

See ``docs/webhooks.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.webhooks._event import EventId, Ordering, is_event_id
from surefoot.webhooks._events import (
    WebhookBusy,
    WebhookDuplicate,
    WebhookFailed,
    WebhookProcessed,
    WebhookReceiverEvent,
    WebhookRefused,
    WebhookReplayed,
    WebhookStale,
)
from surefoot.webhooks._order import (
    KEY_PREFIX,
    Claim,
    OrderRecord,
    OrderState,
    Verdict,
    claim,
    live_order,
    order_state,
    ordering_key,
    settle,
)
from surefoot.webhooks._store import EventArchive, OrderingStore
from surefoot.webhooks._verify import (
    GitHub,
    Headers,
    Hmac,
    Scheme,
    StandardWebhooks,
    Stripe,
    Verified,
)

if TYPE_CHECKING:
    from surefoot.webhooks.dependency import webhook_event
    from surefoot.webhooks.receiver import (
        EVENT_ID_HEADER,
        REPLAY_HEADER,
        WEBHOOK,
        ReceivedWebhook,
        ReplayOutcome,
        WebhookEndpoint,
        WebhookReceiver,
        webhook_store_key,
    )
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.webhooks.receiver": (
                "EVENT_ID_HEADER",
                "REPLAY_HEADER",
                "WEBHOOK",
                "ReceivedWebhook",
                "ReplayOutcome",
                "WebhookEndpoint",
                "WebhookReceiver",
                "webhook_store_key",
            ),
            "surefoot.webhooks.dependency": ("webhook_event",),
        },
    )

__all__ = [
    "KEY_PREFIX",
    "EVENT_ID_HEADER",
    "REPLAY_HEADER",
    "WEBHOOK",
    "Claim",
    "EventArchive",
    "EventId",
    "GitHub",
    "Headers",
    "Hmac",
    "OrderRecord",
    "OrderState",
    "Ordering",
    "OrderingStore",
    "ReceivedWebhook",
    "ReplayOutcome",
    "Scheme",
    "StandardWebhooks",
    "Stripe",
    "Verdict",
    "Verified",
    "WebhookBusy",
    "WebhookDuplicate",
    "WebhookEndpoint",
    "WebhookFailed",
    "WebhookProcessed",
    "WebhookReceiver",
    "WebhookReceiverEvent",
    "WebhookRefused",
    "WebhookReplayed",
    "WebhookStale",
    "claim",
    "is_event_id",
    "live_order",
    "order_state",
    "ordering_key",
    "settle",
    "webhook_event",
    "webhook_store_key",
]
