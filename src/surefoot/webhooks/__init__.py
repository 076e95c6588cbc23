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
  event once through an ``IdempotencyMiddleware`` keyed by the event id, and
  ``webhook_event`` for a FastAPI dependency.

See ``docs/webhooks.md``.
"""
