"""Receiving webhooks from Stripe, GitHub and a Standard Webhooks sender in one FastAPI app.

Theory of operation:
1. ``WebhookReceiver`` wraps the whole app and owns three paths, one per sender, each with
   its signature scheme and the secrets from the environment (``STRIPE_WEBHOOK_SECRET``,
   ``GITHUB_WEBHOOK_SECRET``, ``PARTNER_WEBHOOK_SECRET``; comma-separated during a
   rotation). A delivery whose signature, timestamp or event id is wrong gets a problem
   document and never reaches a route.
2. Each event id is remembered in the store (``$SUREFOOT_STORE``, default
   ``sqlite:///webhooks-store.db``) for 7 days: a redelivery gets the first answer back without
   reaching the route again; a duplicate that arrives while the first is running gets 409,
   and the sender tries again later. A route that fails (5xx or an exception) releases the
   event, so the sender's retry runs it.
3. The partner's events update customers (``data.id``) at a version (``data.version``):
   the ordering guard hands a route only events newer than the newest it processed for
   that customer, so an older update delivered late never overwrites a newer one.
4. The routes record what they were handed in ``$WEBHOOKS_LEDGER`` (default
   ``webhooks.db``): ``GET /handled`` lists it.

Run it with ``uvicorn --factory examples.webhooks.app:create_app``, and send it signed
events with ``python -m examples.webhooks.send`` (see ``docs/webhooks.md``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from surefoot.storage import store_from_url
from surefoot.webhooks import (
    GitHub,
    Ordering,
    ReceivedWebhook,
    StandardWebhooks,
    Stripe,
    WebhookEndpoint,
    WebhookReceiver,
    webhook_event,
)

Event = Annotated[ReceivedWebhook, Depends(webhook_event)]


def _secrets(variable: str) -> tuple[str, ...]:
    value = os.environ.get(variable, "")
    found = tuple(part.strip() for part in value.split(",") if part.strip())
    if not found:
        raise SystemExit(f"set {variable} to the sender's signing secret")
    return found


@contextmanager
def _ledger() -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(os.environ.get("WEBHOOKS_LEDGER", "webhooks.db"))) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS handled"
            " (sender TEXT, event_id TEXT, kind TEXT, object TEXT, version REAL)"
        )
        with db:
            yield db


def create_app() -> Any:
    api = FastAPI(title="webhooks example")

    def record(event: ReceivedWebhook, kind: str) -> dict[str, str]:
        with _ledger() as db:
            db.execute(
                "INSERT INTO handled VALUES (?, ?, ?, ?, ?)",
                (event.endpoint, event.id, kind, event.object_id, event.version),
            )
        return {"handled": event.id}

    @api.post("/webhooks/stripe")
    def stripe(event: Event) -> dict[str, str]:
        return record(event, event.json()["type"])

    @api.post("/webhooks/github")
    def github(event: Event) -> dict[str, str]:
        return record(event, "push" if "commits" in event.json() else "other")

    @api.post("/webhooks/partner")
    def partner(event: Event) -> dict[str, str]:
        return record(event, event.json()["type"])

    @api.get("/handled")
    def handled() -> list[dict[str, Any]]:
        with _ledger() as db:
            rows = db.execute("SELECT sender, event_id, kind, object, version FROM handled")
            names = ("sender", "event_id", "kind", "object", "version")
            return [dict(zip(names, row, strict=True)) for row in rows]

    endpoints = {
        "/webhooks/stripe": WebhookEndpoint(
            name="stripe", scheme=Stripe(secrets=_secrets("STRIPE_WEBHOOK_SECRET"))
        ),
        "/webhooks/github": WebhookEndpoint(
            name="github", scheme=GitHub(secrets=_secrets("GITHUB_WEBHOOK_SECRET"))
        ),
        "/webhooks/partner": WebhookEndpoint(
            name="partner",
            scheme=StandardWebhooks(secrets=_secrets("PARTNER_WEBHOOK_SECRET")),
            ordering=Ordering(object_field="data.id", version_field="data.version"),
        ),
    }
    store = store_from_url(os.environ.get("SUREFOOT_STORE", "sqlite:///webhooks-store.db"))
    return WebhookReceiver(api, endpoints=endpoints, store=store)
