"""``WebhookReceiver``: verified events reach the app once; refused ones leave nothing behind.

A Starlette app records every event it is handed; deliveries are signed the way their
senders sign them (Standard Webhooks, Stripe), time is a ``ManualClock``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from _services import store_url
from _support import T0, of
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.metrics import PrometheusMetrics
from surefoot.storage import MemoryStore, SqliteStore, store_from_url
from surefoot.storage.postgres import PostgresStore
from surefoot.storage.redis import RedisStore
from surefoot.testing import ManualClock
from surefoot.webhooks import (
    EVENT_ID_HEADER,
    REPLAY_HEADER,
    WEBHOOK,
    EventId,
    Hmac,
    Ordering,
    ReceivedWebhook,
    ReplayOutcome,
    StandardWebhooks,
    Stripe,
    WebhookBusy,
    WebhookDuplicate,
    WebhookEndpoint,
    WebhookFailed,
    WebhookProcessed,
    WebhookReceiver,
    WebhookRefused,
    WebhookReplayed,
    WebhookStale,
    webhook_event,
    webhook_store_key,
)
from surefoot.webhooks.receiver import archive_key

pytestmark = pytest.mark.anyio

KEY = b"surefoot-test-signing-key-32-byt"
WHSEC = "whsec_" + base64.b64encode(KEY).decode()
STRIPE_SECRET = "whsec_stripe_test_secret"
PATH = "/webhooks/partner"


def standard_headers(event_id: str, body: bytes, at: float, secret: bytes = KEY) -> dict[str, str]:
    """The headers a Standard Webhooks sender adds (v1, HMAC-SHA256)."""
    stamp = str(int(at))
    mac = hmac.new(secret, f"{event_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": event_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }


def stripe_headers(body: bytes, at: float) -> dict[str, str]:
    stamp = str(int(at))
    mac = hmac.new(STRIPE_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return {
        "stripe-signature": f"t={stamp},v1={mac.hexdigest()}",
        "content-type": "application/json",
    }


class Recorder:
    """The app behind the receiver: records each event it is handed, answers as told."""

    def __init__(self) -> None:
        self.handled: list[ReceivedWebhook] = []
        self.state: dict[str, float] = {}  # object -> the version last applied
        self.status = 200
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        received: ReceivedWebhook | None = scope.get(WEBHOOK)
        if received is None:
            await Response(b"plain", 200)(scope, receive, send)
            return
        assert await request.body() == received.body
        assert request.headers[EVENT_ID_HEADER] == received.id
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.handled.append(received)
        if received.object_id is not None and received.version is not None:
            self.state[received.object_id] = received.version
        await JSONResponse({"handled": received.id}, status_code=self.status)(scope, receive, send)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def receiver_for(
    recorder: Recorder,
    store: Any,
    clock: ManualClock,
    events: list[Event],
    **endpoint: Any,
) -> WebhookReceiver:
    endpoint.setdefault("scheme", StandardWebhooks(secrets=(WHSEC,)))
    return WebhookReceiver(
        recorder,
        endpoints={PATH: WebhookEndpoint(name="partner", **endpoint)},
        store=store,
        clock=clock,
        hooks=[events.append],
    )


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def deliver(
    client: httpx.AsyncClient, event_id: str, body: bytes, at: float, **extra: str
) -> httpx.Response:
    return await client.post(
        PATH, content=body, headers={**standard_headers(event_id, body, at), **extra}
    )


BODY = b'{"type":"invoice.paid","data":{"id":"in_1","amount":1250}}'


async def test_an_event_runs_once_and_its_duplicates_get_the_stored_answer(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    async with client_for(receiver_for(recorder, store, clock, events)) as client:
        first = await deliver(client, "msg_1", BODY, T0)
        again = await deliver(client, "msg_1", BODY, T0 + 60)  # re-signed later, same event
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == {"handled": "msg_1"}
    assert again.headers["idempotent-replayed"] == "true"
    assert [r.id for r in recorder.handled] == ["msg_1"]
    assert recorder.handled[0].json() == json.loads(BODY)
    assert [e.status for e in of(events, WebhookProcessed)] == [200]
    [duplicate] = of(events, WebhookDuplicate)
    assert (duplicate.event_id, duplicate.in_progress) == ("msg_1", False)


MISMATCH = "v1," + base64.b64encode(b"x" * 32).decode()


@pytest.mark.parametrize(
    ("change", "signed_at", "code", "status"),
    [
        ({"webhook-signature": MISMATCH}, T0, "webhook_signature_mismatch", 401),
        ({"webhook-signature": "v1,%%%"}, T0, "webhook_signature_malformed", 400),
        ({"webhook-signature": "v9,AAAA"}, T0, "webhook_signature_unsupported", 400),
        ({"webhook-signature": None}, T0, "webhook_signature_missing", 400),
        ({"webhook-timestamp": str(int(T0) - 301)}, T0, "webhook_signature_mismatch", 401),
        ({}, T0 - 301, "webhook_timestamp_expired", 401),
        ({}, T0 + 301, "webhook_timestamp_in_future", 401),
    ],
)
async def test_a_refused_delivery_stores_nothing_and_reaches_no_app(
    recorder: Recorder,
    store: MemoryStore,
    clock: ManualClock,
    events: list[Event],
    change: dict[str, str | None],
    signed_at: float,
    code: str,
    status: int,
) -> None:
    headers: dict[str, str] = standard_headers("msg_bad", BODY, signed_at)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    async with client_for(receiver_for(recorder, store, clock, events)) as client:
        response = await client.post(PATH, content=BODY, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert BODY.decode() not in response.text
    assert recorder.handled == []
    assert await store.get(webhook_store_key("partner", "msg_bad"), T0) is None
    assert [e.code for e in of(events, WebhookRefused)] == [code]


async def test_a_repeated_signature_header_is_refused(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    headers = list(standard_headers("msg_2", BODY, T0).items())
    headers.append(("webhook-signature", dict(headers)["webhook-signature"]))
    async with client_for(receiver_for(recorder, store, clock, events)) as client:
        response = await client.post(PATH, content=BODY, headers=headers)
    assert (response.status_code, response.json()["code"]) == (400, "webhook_signature_malformed")


@pytest.mark.parametrize(
    ("event_id", "reason"),
    [("m" * 256, "longer than 255"), ("msg é", "not printable ASCII")],
)
async def test_an_event_id_out_of_bounds_is_refused_even_when_signed(
    recorder: Recorder,
    store: MemoryStore,
    clock: ManualClock,
    events: list[Event],
    event_id: str,
    reason: str,
) -> None:
    headers = standard_headers(event_id, BODY, T0)
    async with client_for(receiver_for(recorder, store, clock, events)) as client:
        response = await client.post(
            PATH, content=BODY, headers={k.encode(): v.encode() for k, v in headers.items()}
        )
    assert (response.status_code, response.json()["code"]) == (400, "webhook_event_id_invalid")
    assert reason in response.json()["detail"]
    assert event_id not in response.text


async def test_a_body_over_the_limit_is_refused_before_verification(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    body = b'{"pad":"' + b"x" * 2000 + b'"}'
    async with client_for(receiver_for(recorder, store, clock, events, max_body=1024)) as client:
        response = await deliver(client, "msg_big", body, T0)
    assert (response.status_code, response.json()["code"]) == (413, "request_body_too_large")
    assert [e.code for e in of(events, WebhookRefused)] == ["request_body_too_large"]


@pytest.mark.parametrize("failure", ["status", "raise"])
async def test_a_failed_handler_releases_the_event_for_the_senders_retry(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event], failure: str
) -> None:
    app = receiver_for(recorder, store, clock, events)
    async with client_for(app) as client:
        if failure == "status":
            recorder.status = 500
            assert (await deliver(client, "msg_f", BODY, T0)).status_code == 500
        else:
            recorder.fail = RuntimeError("handler bug")
            with pytest.raises(RuntimeError):
                await deliver(client, "msg_f", BODY, T0)
        recorder.status, recorder.fail = 200, None
        retry = await deliver(client, "msg_f", BODY, T0 + 5)
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers
    assert len(of(events, WebhookFailed)) == 1
    assert len(of(events, WebhookProcessed)) == 1


async def test_a_duplicate_while_the_first_runs_gets_a_retryable_409(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    recorder.gate = asyncio.Event()
    async with client_for(receiver_for(recorder, store, clock, events)) as client:
        first = asyncio.create_task(deliver(client, "msg_c", BODY, T0))
        await recorder.entered.wait()
        during = await deliver(client, "msg_c", BODY, T0)
        recorder.gate.set()
        assert (await first).status_code == 200
    assert during.status_code == 409
    assert during.json()["code"] == "idempotency_request_in_progress"
    assert len(recorder.handled) == 1
    [duplicate] = of(events, WebhookDuplicate)
    assert duplicate.in_progress


async def test_a_delivery_abandoned_by_its_worker_runs_again_once_its_lease_ends(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    recorder.gate = asyncio.Event()  # never set: the first worker "dies" in the handler
    async with client_for(receiver_for(recorder, store, clock, events, lease=30)) as client:
        first = asyncio.create_task(deliver(client, "msg_k", BODY, T0))
        await recorder.entered.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        recorder.gate = None
        clock.advance(29)
        assert (await deliver(client, "msg_k", BODY, clock.now())).status_code == 409
        clock.advance(2)
        retry = await deliver(client, "msg_k", BODY, clock.now())
    assert retry.status_code == 200
    assert [r.id for r in recorder.handled] == ["msg_k"]


async def test_other_paths_and_methods_pass_through_and_a_sent_event_id_header_is_replaced(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    async with client_for(receiver_for(recorder, store, clock, events)) as client:
        assert (await client.post("/elsewhere", content=b"x")).text == "plain"
        assert (await client.get(PATH)).text == "plain"
        forged = await deliver(client, "msg_h", BODY, T0, **{EVENT_ID_HEADER: "forged"})
    assert forged.status_code == 200
    assert recorder.handled[0].id == "msg_h"  # the app asserted the header says the same


async def test_stripe_events_are_identified_by_their_body_id(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    app = receiver_for(recorder, store, clock, events, scheme=Stripe(secrets=(STRIPE_SECRET,)))
    body = b'{"id":"evt_1","type":"charge.succeeded"}'
    async with client_for(app) as client:
        for _ in range(3):
            assert (
                await client.post(PATH, content=body, headers=stripe_headers(body, T0))
            ).status_code == 200
        not_json = await client.post(PATH, content=b"nope", headers=stripe_headers(b"nope", T0))
        no_id = await client.post(PATH, content=b"{}", headers=stripe_headers(b"{}", T0))
    assert [r.id for r in recorder.handled] == ["evt_1"]
    assert (not_json.status_code, not_json.json()["code"]) == (400, "webhook_body_not_json")
    assert (no_id.status_code, no_id.json()["code"]) == (400, "webhook_event_id_invalid")


async def test_an_endpoint_may_read_the_event_id_from_its_own_header(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    app = receiver_for(recorder, store, clock, events, event_id=EventId(header="X-Delivery"))
    async with client_for(app) as client:
        ok = await deliver(client, "msg_x", BODY, T0, **{"x-delivery": "d-1"})
        missing = await deliver(client, "msg_y", BODY, T0)
    assert recorder.handled[0].id == "d-1"
    assert ok.status_code == 200
    assert (missing.status_code, missing.json()["code"]) == (400, "webhook_event_id_invalid")


# -- ordering ---------------------------------------------------------------------------

ORDERING = Ordering(object_field="data.id", version_field="data.version", lease=10)


def update(version: int, obj: str = "cus_1") -> bytes:
    return json.dumps({"data": {"id": obj, "version": version}}).encode()


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_updates_in_any_order_leave_the_app_with_the_newest_state(
    recorder: Recorder, clock: ManualClock, events: list[Event], tmp_path: Any, store_kind: str
) -> None:
    store: Any = MemoryStore() if store_kind == "memory" else SqliteStore(tmp_path / "s.db")
    versions = list(range(1, 101))
    random.Random(7).shuffle(versions)
    app = receiver_for(recorder, store, clock, events, ordering=ORDERING)
    async with client_for(app) as client:
        for version in versions:
            response = await deliver(client, f"msg_{version}", update(version), T0)
            assert response.status_code == 200
    assert recorder.state == {"cus_1": 100}
    applied = [r.version for r in recorder.handled if r.version is not None]
    assert applied == sorted(applied)  # never an older version after a newer one
    assert len(of(events, WebhookStale)) == 100 - len(applied)


async def test_an_event_about_an_object_being_processed_waits_its_turn(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    recorder.gate = asyncio.Event()
    async with client_for(
        receiver_for(recorder, store, clock, events, ordering=ORDERING)
    ) as client:
        first = asyncio.create_task(deliver(client, "msg_1", update(1), T0))
        await recorder.entered.wait()
        busy = await deliver(client, "msg_2", update(2), T0)
        recorder.gate.set()
        await first
        retried = await deliver(client, "msg_2", update(2), T0 + 10)
    assert (busy.status_code, busy.json()["code"]) == (409, "webhook_object_busy")
    assert busy.headers["retry-after"] == "10"
    assert retried.status_code == 200
    assert recorder.state == {"cus_1": 2}
    assert [e.object_id for e in of(events, WebhookBusy)] == ["cus_1"]


async def test_an_ordering_field_missing_is_refused(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    async with client_for(
        receiver_for(recorder, store, clock, events, ordering=ORDERING)
    ) as client:
        response = await deliver(client, "msg_o", b'{"data":{"id":"cus_1"}}', T0)
    assert (response.status_code, response.json()["code"]) == (400, "webhook_event_field_invalid")


# -- FastAPI, metrics, configuration ----------------------------------------------------


async def test_a_fastapi_route_gets_the_verified_event(
    store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    api = FastAPI()
    seen: list[str] = []

    @api.post(PATH)
    async def partner(event: Annotated[ReceivedWebhook, Depends(webhook_event)]) -> dict[str, str]:
        seen.append(event.json()["type"])
        return {"ok": event.id}

    @api.post("/unprotected")
    async def unprotected(
        event: Annotated[ReceivedWebhook, Depends(webhook_event)],
    ) -> dict[str, str]:
        raise AssertionError("never reached")

    from surefoot.ratelimit import install_problem_handler

    install_problem_handler(api)
    app = WebhookReceiver(
        api,
        endpoints={
            PATH: WebhookEndpoint(name="partner", scheme=StandardWebhooks(secrets=(WHSEC,)))
        },
        store=store,
        clock=clock,
        hooks=[events.append],
    )
    async with client_for(app) as client:
        ok = await deliver(client, "msg_fa", BODY, T0)
        wrong = await client.post("/unprotected", content=BODY)
    assert ok.json() == {"ok": "msg_fa"}
    assert seen == ["invoice.paid"]
    assert (wrong.status_code, wrong.json()["code"]) == (500, "configuration_error")


async def test_prometheus_counts_each_outcome(
    recorder: Recorder, store: MemoryStore, clock: ManualClock
) -> None:
    metrics = PrometheusMetrics()
    app = WebhookReceiver(
        recorder,
        endpoints={
            PATH: WebhookEndpoint(name="partner", scheme=StandardWebhooks(secrets=(WHSEC,)))
        },
        store=store,
        clock=clock,
        hooks=[metrics],
    )
    async with client_for(app) as client:
        await deliver(client, "msg_m", BODY, T0)
        await deliver(client, "msg_m", BODY, T0)
        await client.post(
            PATH,
            content=BODY,
            headers={**standard_headers("msg_n", BODY, T0), "webhook-signature": "v1,AAAA"},
        )
    text = metrics.render()[0].decode()
    assert 'surefoot_webhooks_received_total{endpoint="partner",outcome="processed"} 1.0' in text
    assert 'surefoot_webhooks_received_total{endpoint="partner",outcome="duplicate"} 1.0' in text
    refused = '{endpoint="partner",reason="webhook_signature_mismatch"} 1.0'
    assert "surefoot_webhooks_refused_total" + refused in text


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: WebhookEndpoint(name="Bad Name", scheme=StandardWebhooks(secrets=(WHSEC,))),
            "WebhookEndpoint.name",
        ),
        (
            lambda: WebhookEndpoint(
                name="p", scheme=StandardWebhooks(secrets=(WHSEC,)), retention=10
            ),
            "WebhookEndpoint.retention",
        ),
        (
            lambda: WebhookEndpoint(name="p", scheme=StandardWebhooks(secrets=(WHSEC,)), lease=0),
            "WebhookEndpoint.lease",
        ),
        (
            lambda: WebhookEndpoint(
                name="p", scheme=StandardWebhooks(secrets=(WHSEC,)), max_body=0
            ),
            "WebhookEndpoint.max_body",
        ),
        (
            lambda: WebhookReceiver(
                Recorder(),
                endpoints={
                    "/a/../b": WebhookEndpoint(name="p", scheme=StandardWebhooks(secrets=(WHSEC,)))
                },
                store=MemoryStore(),
            ),
            "canonical form",
        ),
        (
            lambda: WebhookReceiver(Recorder(), endpoints={}, store=MemoryStore()),
            "at least one endpoint",
        ),
        (lambda: EventId(), "exactly one"),
        (lambda: Ordering(object_field="data..id", version_field="v"), "Ordering.object_field"),
    ],
)
def test_configuration_errors_name_the_field(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        build()
    assert WHSEC not in str(caught.value)


def test_a_retention_shorter_than_the_senders_horizon_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheme = Stripe(secrets=(STRIPE_SECRET,))
    assert scheme.horizon is not None
    with caplog.at_level(logging.WARNING, logger="surefoot.webhooks"):
        WebhookEndpoint(name="stripe", scheme=scheme, retention=3600)
    assert "less than" in caplog.text
    assert STRIPE_SECRET not in caplog.text


# -- the edges of the adapter -----------------------------------------------------------


class FailingOrders(MemoryStore):
    """A store whose ordering records fail on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_claim = False
        self.fail_settle = False

    async def order_claim(self, key: str, **kwargs: Any) -> Any:
        if self.fail_claim:
            raise OSError("disk on fire")
        return await super().order_claim(key, **kwargs)

    async def order_settle(self, key: str, **kwargs: Any) -> None:
        if self.fail_settle:
            raise OSError("disk on fire")
        await super().order_settle(key, **kwargs)


async def test_an_ordering_store_failure_answers_503_and_releases_the_event(
    recorder: Recorder, clock: ManualClock, events: list[Event]
) -> None:
    store = FailingOrders()
    app = receiver_for(recorder, store, clock, events, ordering=ORDERING)
    async with client_for(app) as client:
        store.fail_claim = True
        down = await deliver(client, "msg_1", update(1), T0)
        store.fail_claim, store.fail_settle = False, True
        unsettled = await deliver(client, "msg_1", update(1), T0)
        store.fail_settle = False
        busy = await deliver(client, "msg_2", update(2), T0)  # the guard's lease still holds
        clock.advance(ORDERING.lease)
        later = await deliver(client, "msg_2", update(2), clock.now())
    assert (down.status_code, down.json()["code"]) == (503, "store_unavailable")
    assert unsettled.status_code == 200
    assert busy.status_code == 409
    assert later.status_code == 200
    assert recorder.state == {"cus_1": 2}


async def test_an_app_that_fails_midway_leaves_its_object_free_and_newest_unchanged(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    calls = 0

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if calls == 1:
            raise RuntimeError("died mid-answer")
        await send({"type": "http.response.body", "body": b"rest"})

    app = WebhookReceiver(
        streaming,
        endpoints={
            PATH: WebhookEndpoint(
                name="p", scheme=StandardWebhooks(secrets=(WHSEC,)), ordering=ORDERING
            )
        },
        store=store,
        clock=clock,
        hooks=[events.append],
    )
    async with client_for(app) as client:
        with pytest.raises(RuntimeError):
            await deliver(client, "msg_1", update(1), T0)
        retry = await deliver(client, "msg_1", update(1), T0)
    assert retry.text == "partrest"
    assert [e.status for e in of(events, WebhookFailed)] == [None]


async def test_the_same_event_id_with_another_body_is_refused_and_not_handed(
    recorder: Recorder, store: MemoryStore, clock: ManualClock
) -> None:
    events: list[Event] = []
    async with client_for(receiver_for(recorder, store, clock, events)) as client:
        await deliver(client, "msg_1", BODY, T0)
        other = await deliver(client, "msg_1", b'{"type":"other"}', T0)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert len(recorder.handled) == 1
    assert of(events, WebhookDuplicate) == []


async def test_a_repeated_event_id_header_is_refused(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    app = receiver_for(recorder, store, clock, events, event_id=EventId(header="x-delivery"))
    headers = [
        *standard_headers("msg_1", BODY, T0).items(),
        ("x-delivery", "a"),
        ("x-delivery", "b"),
    ]
    async with client_for(app) as client:
        response = await client.post(PATH, content=BODY, headers=headers)
    assert (response.status_code, response.json()["code"]) == (400, "webhook_event_id_invalid")


async def test_a_path_the_server_refuses_is_answered_before_any_endpoint_is_matched(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    async with client_for(receiver_for(recorder, store, clock, events)) as client:
        response = await client.post("/webhooks/%2e%2e/%2e%2e/%2e%2e/x", content=BODY)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_path")


async def test_without_hooks_that_want_them_no_event_is_built(
    recorder: Recorder, store: MemoryStore, clock: ManualClock
) -> None:
    app = WebhookReceiver(
        recorder,
        endpoints={PATH: WebhookEndpoint(name="p", scheme=StandardWebhooks(secrets=(WHSEC,)))},
        store=store,
        clock=clock,
        hooks=[],
    )
    async with client_for(app) as client:
        assert (await deliver(client, "msg_1", BODY, T0)).status_code == 200


async def call(
    app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]
) -> list[Any]:
    """Drive ``app`` as a server would, with the request's ``messages``; what it sent."""
    sent: list[Any] = []
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": PATH, "raw_path": PATH.encode(),
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
    }  # fmt: skip
    await app(scope, receive, send)
    return sent


async def test_a_sender_gone_before_its_body_leaves_nothing_and_chunks_count_to_the_limit(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    app = receiver_for(recorder, store, clock, events, max_body=1024)
    assert await call(app, [], []) == []
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 2
    [start, _] = await call(app, chunks, [])
    assert start["status"] == 413
    assert recorder.handled == []


async def test_an_app_reading_past_the_body_gets_the_servers_messages(
    store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    seen: list[Any] = []

    async def listener(scope: Any, receive: Any, send: Any) -> None:
        seen.extend([await receive(), await receive()])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = WebhookReceiver(
        listener,
        endpoints={PATH: WebhookEndpoint(name="p", scheme=StandardWebhooks(secrets=(WHSEC,)))},
        store=store,
        clock=clock,
        hooks=[events.append],
    )
    headers = [(k.encode(), v.encode()) for k, v in standard_headers("msg_1", BODY, T0).items()]
    [start, _] = await call(app, [{"type": "http.request", "body": BODY}], headers)
    assert start["status"] == 204
    assert [m["type"] for m in seen] == ["http.request", "http.disconnect"]
    assert seen[0]["body"] == BODY


class NoOrders:
    """An idempotency store that keeps no ordering records."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("order_"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def standard() -> StandardWebhooks:
    return StandardWebhooks(secrets=(WHSEC,))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: WebhookEndpoint(name="p", scheme=object()), "WebhookEndpoint.scheme"),  # type: ignore[arg-type]
        (
            lambda: WebhookEndpoint(name="p", scheme=Hmac(secrets=("s",), header="x-sig")),
            "WebhookEndpoint.event_id",
        ),
        (
            lambda: WebhookEndpoint(name="p", scheme=standard(), max_stored_response=-1),
            "max_stored_response",
        ),
        (
            lambda: WebhookReceiver(
                Recorder(),
                endpoints={
                    "/a": WebhookEndpoint(name="p", scheme=standard()),
                    "/b": WebhookEndpoint(name="p", scheme=standard()),
                },
                store=MemoryStore(),
            ),
            "distinct names",
        ),
        (
            lambda: WebhookReceiver(
                Recorder(),
                endpoints={"/a": WebhookEndpoint(name="p", scheme=standard(), ordering=ORDERING)},
                store=NoOrders(),
            ),
            "ordering records",
        ),
        (
            lambda: WebhookReceiver(
                Recorder(),
                endpoints={"/a%2Fb": WebhookEndpoint(name="p", scheme=standard())},
                store=MemoryStore(),
            ),
            "canonical form",
        ),
    ],
)
def test_more_configuration_errors(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


# -- archive and replay -----------------------------------------------------------------


class Witness(Recorder):
    """A ``Recorder`` that also notes whether each event it is handed came as a replay."""

    def __init__(self) -> None:
        super().__init__()
        self.replays: list[str | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get(WEBHOOK) is not None:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.replays.append(headers.get(REPLAY_HEADER.lower()))
        await super().__call__(scope, receive, send)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def archive_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    options = "timeout=5" if request.param == "redis" else ""
    async with store_url(request.param, tmp_path, options=options) as url:
        s: Any = store_from_url(url)
        try:
            yield s
        finally:
            await s.aclose()


async def test_a_replay_runs_the_archived_delivery_once_more_then_duplicates_are_answered(
    archive_store: Any, clock: ManualClock, events: list[Event]
) -> None:
    witness, metrics = Witness(), PrometheusMetrics()
    app = WebhookReceiver(
        witness,
        endpoints={PATH: WebhookEndpoint(name="partner", scheme=standard(), archive=True)},
        store=archive_store,
        clock=clock,
        hooks=[events.append, metrics],
    )
    async with client_for(app) as client:
        first = await deliver(
            client, "msg_r", BODY, T0, authorization="Bearer app-secret", **{REPLAY_HEADER: "true"}
        )
        clock.advance(3600)  # far past the signature's tolerance: replay does not re-verify
        replay = await app.replay("partner", "msg_r")
        again = await deliver(client, "msg_r", BODY, clock.now())
    assert first.status_code == 200
    assert replay.result == "replayed"
    assert (replay.status, json.loads(replay.body)) == (200, {"handled": "msg_r"})
    assert ("content-type", "application/json") in replay.headers
    assert [r.body for r in witness.handled] == [BODY, BODY]
    assert witness.replays == [None, "true"]  # a sender cannot pass for a replay
    assert again.headers["idempotent-replayed"] == "true"  # the replay's answer, kept
    assert len(witness.handled) == 2
    [replayed] = of(events, WebhookReplayed)
    assert (replayed.endpoint, replayed.event_id, replayed.status) == ("partner", "msg_r", 200)
    kept = json.loads(await archive_store.cache_get(archive_key("partner", "msg_r"), clock.now()))
    assert {name for name, _ in kept["headers"]} == {
        "webhook-id", "webhook-timestamp", "webhook-signature", "content-type"
    }  # fmt: skip
    assert base64.b64decode(kept["body"]) == BODY
    text = metrics.render()[0].decode()
    assert 'surefoot_webhooks_received_total{endpoint="partner",outcome="replayed"} 1.0' in text


async def test_a_senders_delivery_during_a_replay_waits_and_is_not_run_twice(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    app = receiver_for(recorder, store, clock, events, archive=True)
    async with client_for(app) as client:
        await deliver(client, "msg_d", BODY, T0)
        recorder.gate, recorder.entered = asyncio.Event(), asyncio.Event()
        replay = asyncio.create_task(app.replay("partner", "msg_d"))
        await recorder.entered.wait()
        during = await deliver(client, "msg_d", BODY, T0)
        busy = await app.replay("partner", "msg_d")
        recorder.gate.set()
        assert (await replay).result == "replayed"
        after = await deliver(client, "msg_d", BODY, T0)
    assert (during.status_code, during.json()["code"]) == (409, "idempotency_request_in_progress")
    assert busy == ReplayOutcome("in_flight", retry_after=60.0)
    assert after.headers["idempotent-replayed"] == "true"
    assert len(recorder.handled) == 2


class Sneaky(MemoryStore):
    """A store where the sender's delivery lands right after the replay forgot the event."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: Callable[[], Any] | None = None

    async def forget(self, key: str, now: float) -> bool:
        done = await super().forget(key, now)
        if self.meanwhile is not None:
            await self.meanwhile()
        return done


async def test_a_delivery_that_gets_in_before_the_replay_is_the_one_that_runs(
    recorder: Recorder, clock: ManualClock, events: list[Event]
) -> None:
    store = Sneaky()
    app = receiver_for(recorder, store, clock, events, archive=True)
    async with client_for(app) as client:
        await deliver(client, "msg_s", BODY, T0)

        async def sender() -> None:
            await deliver(client, "msg_s", BODY, T0)

        store.meanwhile = sender
        replay = await app.replay("partner", "msg_s")
    assert (replay.result, replay.status) == ("duplicate", 200)
    assert len(recorder.handled) == 2  # the first delivery, then the sender's; never a third
    assert of(events, WebhookReplayed)[0].result == "duplicate"


async def test_what_cannot_be_replayed(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    plain = receiver_for(recorder, store, clock, events)
    async with client_for(plain) as client:
        await deliver(client, "msg_p", BODY, T0)
    assert await plain.replay("partner", "msg_p") == ReplayOutcome("not_archived")
    assert await store.cache_get(archive_key("partner", "msg_p"), T0) is None  # off by default
    archiving = receiver_for(recorder, MemoryStore(), clock, events, archive=True)
    assert await archiving.replay("partner", "msg_never") == ReplayOutcome("not_archived")
    with pytest.raises(LookupError, match="'nobody'"):
        await archiving.replay("nobody", "msg_p")
    assert len(recorder.handled) == 1
    assert of(events, WebhookReplayed) == []


async def test_an_event_forgotten_meanwhile_and_one_read_by_its_own_header_replay(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    app = receiver_for(
        recorder, store, clock, events, archive=True, event_id=EventId(header="X-Delivery")
    )
    async with client_for(app) as client:
        await deliver(client, "msg_x", BODY, T0, **{"x-delivery": "d-1"})
    await store.forget(webhook_store_key("partner", "d-1"), T0)
    assert (await app.replay("partner", "d-1", request_id="op-1")).result == "replayed"
    assert [r.id for r in recorder.handled] == ["d-1", "d-1"]
    assert of(events, WebhookReplayed)[0].request_id == "op-1"


@pytest.mark.parametrize("failure", ["status", "raise"])
async def test_a_replay_the_app_fails_is_reported_and_released(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event], failure: str
) -> None:
    app = receiver_for(recorder, store, clock, events, archive=True)
    async with client_for(app) as client:
        await deliver(client, "msg_f", BODY, T0)
        if failure == "status":
            recorder.status = 500
        else:
            recorder.fail = RuntimeError("boom")
        replay = await app.replay("partner", "msg_f")
        recorder.status, recorder.fail = 200, None
        retry = await deliver(client, "msg_f", BODY, T0)
    assert replay.result == "failed"
    assert replay.status == (500 if failure == "status" else None)
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers
    assert [e.result for e in of(events, WebhookReplayed)] == ["failed"]


async def test_a_replay_meets_the_ordering_guard(
    recorder: Recorder, store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    app = receiver_for(recorder, store, clock, events, archive=True, ordering=ORDERING)
    async with client_for(app) as client:
        await deliver(client, "msg_v1", update(1), T0)
        await deliver(client, "msg_v2", update(2), T0)
        stale = await app.replay("partner", "msg_v1")
        recorder.gate, recorder.entered = asyncio.Event(), asyncio.Event()
        v3 = asyncio.create_task(deliver(client, "msg_v3", update(3), T0))
        await recorder.entered.wait()
        busy = await app.replay("partner", "msg_v2")  # the newest processed: not stale
        recorder.gate.set()
        await v3
        newest = await app.replay("partner", "msg_v3")
    assert (stale.result, json.loads(stale.body)["status"]) == ("stale", "stale")
    assert (busy.result, busy.status) == ("busy", 409)
    assert newest.result == "replayed"
    assert [r.version for r in recorder.handled] == [1, 2, 3, 3]
    assert recorder.state == {"cus_1": 3}


class BrokenArchive(MemoryStore):
    async def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        raise OSError(f"disk on fire {value[:4]!r}")


async def test_a_failing_archive_does_not_fail_the_delivery(
    recorder: Recorder, clock: ManualClock, events: list[Event], caplog: pytest.LogCaptureFixture
) -> None:
    app = receiver_for(recorder, BrokenArchive(), clock, events, archive=True)
    with caplog.at_level(logging.WARNING, logger="surefoot.webhooks"):
        async with client_for(app) as client:
            response = await deliver(client, "msg_b", BODY, T0)
    assert response.status_code == 200
    assert len(recorder.handled) == 1
    [record] = [r for r in caplog.records if "not archived" in r.getMessage()]
    assert "msg_b" in record.getMessage()
    assert "OSError" in record.getMessage()
    assert "invoice" not in caplog.text  # no body
    assert "disk on fire" not in caplog.text  # nor what the store said
    assert await app.replay("partner", "msg_b") == ReplayOutcome("not_archived")


class NoCache:
    """An idempotency store that keeps nothing else (as ``PostgresStore`` does)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("cache_"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_archiving_on_a_store_that_cannot_keep_events_is_refused() -> None:
    endpoint = WebhookEndpoint(name="p", scheme=standard(), archive=True)
    with pytest.raises(
        ConfigurationError, match=r"WebhookEndpoint\.archive: endpoint 'p'.*NoCache"
    ):
        WebhookReceiver(Recorder(), endpoints={"/a": endpoint}, store=NoCache())
    WebhookReceiver(Recorder(), endpoints={"/a": WebhookEndpoint(name="p", scheme=standard())},
                    store=NoCache())  # fmt: skip


async def test_a_streamed_answer_to_a_replay_is_captured_whole(
    store: MemoryStore, clock: ManualClock, events: list[Event]
) -> None:
    async def streamer(scope: Any, receive: Any, send: Any) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first,"
            yield b"second"

        # Starlette's StreamingResponse listens for the client going away meanwhile.
        await StreamingResponse(chunks(), media_type="text/plain")(scope, receive, send)

    app = WebhookReceiver(
        streamer,
        endpoints={PATH: WebhookEndpoint(name="partner", scheme=standard(), archive=True)},
        store=store,
        clock=clock,
        hooks=[events.append],
    )
    async with client_for(app) as client:
        assert (await deliver(client, "msg_st", BODY, T0)).content == b"first,second"
    replay = await app.replay("partner", "msg_st")
    assert (replay.result, replay.body) == ("replayed", b"first,second")


def test_memory_sqlite_and_redis_stores_archive_and_postgresql_does_not_yet() -> None:
    def archives(cls: type) -> bool:
        return all(callable(getattr(cls, m, None)) for m in ("cache_get", "cache_put"))

    # docs/webhooks.md ("Replaying an event") says so: update it with this line.
    kept = [archives(c) for c in (MemoryStore, SqliteStore, RedisStore, PostgresStore)]
    assert kept == [True, True, True, False]


class RacingSender(MemoryStore):
    """A store where a sender's delivery takes over an abandoned event right after the
    replay read its record, and which counts the forgets."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: Callable[[], Any] | None = None
        self.forgets = 0

    async def get(self, key: str, now: float) -> Any:
        record = await super().get(key, now)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return record

    async def forget(self, key: str, now: float) -> bool:
        self.forgets += 1
        return await super().forget(key, now)


async def test_an_abandoned_event_is_taken_over_by_the_replay_never_forgotten_under_a_sender(
    recorder: Recorder, clock: ManualClock, events: list[Event]
) -> None:
    store = RacingSender()
    app = receiver_for(recorder, store, clock, events, archive=True, lease=30)
    recorder.gate = asyncio.Event()  # never set: the first worker "dies" in the handler
    async with client_for(app) as client:
        first = asyncio.create_task(deliver(client, "msg_a", BODY, T0))
        await recorder.entered.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        recorder.gate = None
        clock.advance(31)  # its lease ran out

        async def sender() -> None:
            assert (await deliver(client, "msg_a", BODY, clock.now())).status_code == 200

        store.meanwhile = sender
        replay = await app.replay("partner", "msg_a")
    assert store.forgets == 0
    assert (replay.result, replay.status) == ("duplicate", 200)
    assert [r.id for r in recorder.handled] == ["msg_a"]  # the sender's delivery, once
