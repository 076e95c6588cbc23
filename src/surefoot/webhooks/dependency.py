"""``webhook_event``: the verified event, for a FastAPI route behind a ``WebhookReceiver``.

Example:
    >>> @app.post("/webhooks/stripe")
    ... async def stripe_events(event: ReceivedWebhook = Depends(webhook_event)):
    ...     payload = event.json()
"""

from __future__ import annotations

from typing import Any

from surefoot.errors import ConfigurationError
from surefoot.webhooks.receiver import WEBHOOK, ReceivedWebhook

try:  # FastAPI reads the parameter's annotation to inject the request.
    from starlette.requests import Request
except ImportError:  # pragma: no cover - without Starlette there is no FastAPI to use this
    Request = Any  # type: ignore[misc,assignment]

__all__ = ["webhook_event"]


def webhook_event(request: Request) -> ReceivedWebhook:
    """The event the ``WebhookReceiver`` verified for this request.

    Raises:
        ConfigurationError: the route is not an endpoint of a ``WebhookReceiver`` in
            front of the app (a 500 ``configuration_error``, never an unverified event).
    """
    received: ReceivedWebhook | None = request.scope.get(WEBHOOK)
    if received is None:
        raise ConfigurationError(
            f"webhook_event: {request.url.path} is not an endpoint of a WebhookReceiver "
            "in front of this app, so it has no verified event"
        )
    return received
