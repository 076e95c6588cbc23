"""Events of the webhook receiver, one frozen dataclass per outcome of a delivery.

Each carries the endpoint's name and, once it was read, the event id (an id the sender
made up, never a secret); the body is never part of an event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = [
    "WebhookBusy",
    "WebhookDuplicate",
    "WebhookFailed",
    "WebhookProcessed",
    "WebhookReceiverEvent",
    "WebhookRefused",
    "WebhookReplayed",
    "WebhookStale",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookReceiverEvent(Event):
    name: ClassVar[str] = "webhooks.event"

    endpoint: str
    event_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookRefused(WebhookReceiverEvent):
    """A delivery failed verification (``code``: the catalogue's); nothing was stored."""

    name: ClassVar[str] = "webhooks.refused"
    level: ClassVar[int] = logging.WARNING
    code: str


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookProcessed(WebhookReceiverEvent):
    """The application handled the event (its first execution, or one after a release)."""

    name: ClassVar[str] = "webhooks.processed"
    status: int


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookDuplicate(WebhookReceiverEvent):
    """A delivery of an event already handled (the stored answer was replayed) or being
    handled (``in_progress``: answered 409, the sender retries later)."""

    name: ClassVar[str] = "webhooks.duplicate"
    in_progress: bool
    status: int


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookStale(WebhookReceiverEvent):
    """An event older than the newest one processed for its object: acknowledged, not
    handed to the application."""

    name: ClassVar[str] = "webhooks.stale"
    object_id: str
    version: float
    newest: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookBusy(WebhookReceiverEvent):
    """Another event about the same object was being processed: answered 409, released."""

    name: ClassVar[str] = "webhooks.busy"
    object_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookFailed(WebhookReceiverEvent):
    """The application failed on the event (a 5xx, or ``status`` None: it raised or did
    not finish); the event was released so the sender's retry runs it."""

    name: ClassVar[str] = "webhooks.failed"
    level: ClassVar[int] = logging.WARNING
    status: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookReplayed(WebhookReceiverEvent):
    """An operator replayed an archived event (``WebhookReceiver.replay``): ``result`` is
    what became of it (``replayed``: the app ran it and answered ``status``; ``stale``,
    ``busy`` or ``duplicate``: the ordering guard or a sender's concurrent delivery
    answered instead)."""

    name: ClassVar[str] = "webhooks.replayed"
    level: ClassVar[int] = logging.WARNING
    status: int | None
    result: str
