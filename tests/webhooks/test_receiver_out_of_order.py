"""Out-of-order delivery: 100 updates to one object, shuffled by the chaos tools' ``reorder``
fault, leave the application with the newest state, never an older one after a newer.

Four senders deliver 25 updates each, all at once; each sender's ``AsyncChaosTransport``
holds its 25 and lets them through one at a time in its plan's shuffled order, and the
four streams reach one ``WebhookReceiver`` (with an ``Ordering``) at the same time, on
SQLite, Redis, Redis Cluster and PostgreSQL. An event about the object while another is
being processed gets 409 ``webhook_object_busy``; the sender sends it again once another
delivery was answered (retries are not held again: the ``reorder`` rule matches first
attempts only). The first event the application processes is held until some delivery
was told busy, so that path is taken on every run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from _services import store_url
from _support import T0, of
from surefoot.chaos import AsyncChaosTransport, FaultPlan, Reorder, Rule
from surefoot.events import Event
from surefoot.storage import store_from_url
from surefoot.testing import ManualClock
from surefoot.webhooks import (
    WEBHOOK,
    Ordering,
    ReceivedWebhook,
    StandardWebhooks,
    WebhookBusy,
    WebhookEndpoint,
    WebhookProcessed,
    WebhookReceiver,
    WebhookStale,
)

pytestmark = pytest.mark.anyio

PATH = "/webhooks/customers"
SCHEME = StandardWebhooks(
    secrets=("whsec_" + base64.b64encode(b"surefoot-reorder-signing-key-32b").decode(),)
)
ORDERING = Ordering(object_field="data.id", version_field="data.version", lease=10)
UPDATES = 100
SENDERS = 4
MAX_ATTEMPTS = 200  # per update: a sender's retries are bounded
GUARD = 30.0  # seconds a wait may last before the test fails instead of hanging


@pytest.fixture(params=["sqlite", "redis", "redis_cluster", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    options = "timeout=5" if request.param != "sqlite" else ""
    async with store_url(request.param, tmp_path, options=options) as url:
        s: Any = store_from_url(url)
        try:
            yield s
        finally:
            await s.aclose()


class Customers:
    """The application: keeps the customer's state from the events it is handed, in the
    order it applies them; the first one waits until some delivery was told busy."""

    def __init__(self) -> None:
        self.applied: list[float] = []
        self.state: dict[str, float] = {}
        self.busy_seen = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        received: ReceivedWebhook = scope[WEBHOOK]
        assert received.object_id is not None
        assert received.version is not None
        if not self.applied:
            async with asyncio.timeout(GUARD):
                await self.busy_seen.wait()
        newest = self.state.get(received.object_id)
        assert newest is None or received.version > newest, (received.version, newest)
        self.applied.append(received.version)
        self.state[received.object_id] = received.version
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"applied"})


class Arrivals:
    """In front of the receiver: the versions in the order the deliveries arrived."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.versions: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if dict(scope["headers"]).get(b"x-attempt") == b"1":
            message = await receive()
            self.versions.append(json.loads(message["body"])["data"]["version"])
            replayed = False

            async def again() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return message
                return await receive()

            await self.app(scope, again, send)
        else:
            await self.app(scope, receive, send)


class Sender:
    """Delivers updates and sends again those answered 409, each time once another
    delivery (of any sender) was answered since it sent: the holder's turn ended."""

    def __init__(self, on_busy: Callable[[], None]) -> None:
        self.answered = 0
        self.progress = asyncio.Condition()
        self.busy = 0
        self.on_busy = on_busy

    async def deliver(self, client: httpx.AsyncClient, version: int) -> tuple[int, int]:
        """The final status of the update and how many attempts it took."""
        body = json.dumps({"type": "customer.updated", "data": {"id": "cus_1", "version": version}})
        headers = SCHEME.sign(body.encode(), event_id=f"evt_{version:03d}", timestamp=int(T0))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            seen = self.answered
            response = await client.post(
                PATH, content=body, headers={**headers, "x-attempt": str(attempt)}
            )
            async with self.progress:
                self.answered += 1
                self.progress.notify_all()
            if response.status_code != 409:
                return response.status_code, attempt
            code = response.json()["code"]
            assert code in ("webhook_object_busy", "idempotency_request_in_progress"), code
            if code == "webhook_object_busy":
                self.busy += 1
                self.on_busy()
            await self.answered_since(seen + 1)
        return 409, MAX_ATTEMPTS

    async def answered_since(self, count: int) -> None:
        """Until more than ``count`` deliveries were answered."""
        async with asyncio.timeout(GUARD), self.progress:
            await self.progress.wait_for(lambda: self.answered > count)


@pytest.mark.parametrize("seed", [15, 2026])
async def test_shuffled_updates_leave_the_newest_state_and_never_go_back(
    store: Any, clock: ManualClock, events: list[Event], seed: int
) -> None:
    customers = Customers()
    receiver = WebhookReceiver(
        customers,
        endpoints={PATH: WebhookEndpoint(name="customers", scheme=SCHEME, ordering=ORDERING)},
        store=store,
        clock=clock,
        hooks=[events.append],
    )
    arrivals = Arrivals(receiver)
    asgi = httpx.ASGITransport(app=arrivals)
    sender = Sender(on_busy=customers.busy_seen.set)

    versions = list(range(1, UPDATES + 1))
    random.Random(seed).shuffle(versions)  # which sender delivers which update
    share = UPDATES // SENDERS

    async def stream(index: int) -> list[tuple[int, int]]:
        plan = FaultPlan(
            [
                Rule(
                    name="out-of-order",
                    fault=Reorder(window=share, hold=GUARD),
                    methods=("POST",),
                    headers={"x-attempt": "1"},  # a retry goes at once
                )
            ],
            seed=seed * 10 + index,
        )
        chaos = AsyncChaosTransport(asgi, plan, hooks=[])
        async with httpx.AsyncClient(transport=chaos, base_url="http://hooks") as client:
            mine = versions[index * share : (index + 1) * share]
            results = await asyncio.gather(*(sender.deliver(client, v) for v in mine))
        assert plan.counts() == {"out-of-order": share}
        return results

    results = [r for rs in await asyncio.gather(*map(stream, range(SENDERS))) for r in rs]

    # Every update was finally acknowledged; the senders met a busy object and retried.
    assert [status for status, _ in results] == [200] * UPDATES
    assert sender.busy >= 1
    assert len(of(events, WebhookBusy)) == sender.busy
    # The updates really reached the receiver out of order.
    assert sorted(arrivals.versions) == list(range(1, UPDATES + 1))
    assert arrivals.versions != sorted(arrivals.versions)
    # The newest state only, never an older version applied after a newer one.
    assert customers.state == {"cus_1": UPDATES}
    assert customers.applied == sorted(customers.applied)
    assert customers.applied[-1] == UPDATES
    # Each update was applied or acknowledged as stale, exactly once.
    processed = {e.event_id for e in of(events, WebhookProcessed)}
    stale = {e.event_id for e in of(events, WebhookStale)}
    assert len(processed) == len(customers.applied)
    assert processed | stale == {f"evt_{v:03d}" for v in range(1, UPDATES + 1)}
    assert not processed & stale
    assert all(e.newest is not None and e.version < e.newest for e in of(events, WebhookStale))
