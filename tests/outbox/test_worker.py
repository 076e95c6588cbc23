"""``OutboxWorker``: signing, judging, pausing, disabling, rate limits, the breaker, the SSRF
guard, stale leases and ``run``/``stop``, driven in-process with ``run_once``.

Every test hands the worker an ``httpx.MockTransport`` (a ``Consumer`` that records the
requests), a resolver that answers from a table, and a ``ManualClock`` through the outbox;
``rng`` is 0.5, so the schedule's delays carry no jitter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import standardwebhooks

from _support import GUARD, of
from surefoot.client import BreakerStateChanged
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.events import Event, LoggingHook
from surefoot.outbox import (
    DeliveryState,
    Outbox,
    OutboxBacklog,
    OutboxWorker,
    WebhookAttempted,
    WebhookDeferred,
    WebhookEndpointDisabled,
)
from surefoot.storage import MemoryStore
from surefoot.testing import FlakyStore, ManualClock

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
HOST = "hooks.example"
URL = f"https://{HOST}/in"
PUBLIC = "93.184.216.34"
#: Three attempts: at once, 5 s after the first failure, 10 s after the second.
SCHEDULE = (0.0, 5.0, 10.0)

Answer = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class Consumer:
    """The endpoints' side: records every request and answers with ``answer``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answer: Answer = lambda request: httpx.Response(200)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # As a network does, let the worker's other deliveries run meanwhile.
        await anyio.lowlevel.checkpoint()
        response = self.answer(request)
        if not isinstance(response, httpx.Response):
            response = await response
        return response

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]


class Resolver:
    """``async (host, port) -> addresses`` from a table (default: one public address)."""

    def __init__(self) -> None:
        self.table: dict[str, list[str] | BaseException] = {}
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        found = self.table.get(host, [PUBLIC])
        if isinstance(found, BaseException):
            raise found
        return found


@pytest.fixture
def clock() -> ManualClock:
    # standardwebhooks checks the timestamp against the real time (5 minutes either way).
    return ManualClock(time.time())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


def make_outbox(db: Path, clock: ManualClock, **options: Any) -> Outbox:
    options.setdefault("schedule", SCHEDULE)
    outbox = Outbox("sqlite:///" + str(db), clock=clock, **options)
    outbox.create_tables()
    return outbox


@pytest.fixture
def outbox(db: Path, clock: ManualClock) -> Iterator[Outbox]:
    outbox = make_outbox(db, clock)
    yield outbox
    outbox.close()


@pytest.fixture
def consumer() -> Consumer:
    return Consumer()


@pytest.fixture
def resolver() -> Resolver:
    return Resolver()


Factory = Callable[..., OutboxWorker]


@pytest.fixture
async def workers(
    consumer: Consumer, resolver: Resolver, events: list[Event]
) -> AsyncIterator[Factory]:
    """``workers(outbox, **options)``: a worker on the test's consumer, resolver and events,
    closed at the end of the test."""
    made: list[OutboxWorker] = []

    def make(outbox: Outbox, **options: Any) -> OutboxWorker:
        options.setdefault("transport", httpx.MockTransport(consumer))
        options.setdefault("resolver", resolver)
        options.setdefault("hooks", [events.append])
        options.setdefault("rng", lambda: 0.5)
        worker = OutboxWorker(outbox, **options)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.aclose()


def enqueue(
    outbox: Outbox, db: Path, data: object = None, *, tenant: str = "default", **options: Any
) -> str:
    """Record one ``invoice.paid`` message in an application transaction, committed."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        message_id = outbox.enqueue(
            conn,
            "invoice.paid",
            {"invoice": 42} if data is None else data,
            tenant=tenant,
            **options,
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return message_id


def add(outbox: Outbox, name: str = "acme", *, url: str = URL, **options: Any) -> None:
    options.setdefault("secrets", [SECRET])
    outbox.add_endpoint(name, url=url, **options)


def state(outbox: Outbox, message_id: str, endpoint: str = "acme") -> tuple[DeliveryState, int]:
    (delivery,) = outbox.deliveries(message_id=message_id, endpoint=endpoint)
    return delivery.state, delivery.attempts


def attempted(events: list[Event]) -> list[tuple[str, int, str, int | None]]:
    return [(e.message_id, e.attempt, e.outcome, e.status) for e in of(events, WebhookAttempted)]


# -- signing and the body ---------------------------------------------------------------------


async def test_a_2xx_delivers_a_signed_standard_webhook(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    resolver: Resolver,
    events: list[Event],
    clock: ManualClock,
) -> None:
    add(outbox, secrets=[SECRET, OTHER_SECRET])
    message_id = enqueue(outbox, db, {"invoice": 42, "note": "é"})
    worker = workers(outbox)

    assert await worker.run_once() == 1

    (request,) = consumer.requests
    assert request.method == "POST"
    assert request.headers["webhook-id"] == message_id
    assert request.headers["webhook-timestamp"] == str(int(clock.now()))
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("surefoot-webhooks/")
    # Either secret verifies (rotation), with the receivers' reference implementation.
    for secret in (SECRET, OTHER_SECRET):
        payload = standardwebhooks.Webhook(secret).verify(request.content, dict(request.headers))
        assert payload["data"] == {"invoice": 42, "note": "é"}
    document = json.loads(request.content)
    assert set(document) == {"type", "timestamp", "data"}
    assert document["type"] == "invoice.paid"
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)
    assert attempted(events) == [(message_id, 1, "delivered", 200)]
    assert resolver.asked == [(HOST, 443)]


async def test_a_tampered_body_does_not_verify(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer
) -> None:
    add(outbox)
    enqueue(outbox, db)
    await workers(outbox).run_once()
    (request,) = consumer.requests
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(request.content + b" ", dict(request.headers))
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(OTHER_SECRET).verify(request.content, dict(request.headers))


async def test_the_request_goes_to_the_checked_address_with_the_original_host(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, resolver: Resolver
) -> None:
    add(outbox, "plain", url=f"http://{HOST}:8080/in?x=1")
    add(outbox, "tls", url=f"https://{HOST}:8443/in")
    add(outbox, "v6", url="https://v6.example/in")
    resolver.table["v6.example"] = ["2606:4700::1111"]
    enqueue(outbox, db)

    assert await workers(outbox).run_once() == 3

    sent = {r.headers["host"]: r for r in consumer.requests}
    assert set(sent) == {f"{HOST}:8080", f"{HOST}:8443", "v6.example"}
    plain = sent[f"{HOST}:8080"]
    assert (plain.url.scheme, plain.url.host, plain.url.port) == ("http", PUBLIC, 8080)
    assert plain.url.raw_path == b"/in?x=1"
    assert "sni_hostname" not in plain.extensions
    tls = sent[f"{HOST}:8443"]
    assert (tls.url.scheme, tls.url.host, tls.url.port) == ("https", PUBLIC, 8443)
    assert tls.extensions["sni_hostname"] == HOST
    v6 = sent["v6.example"]
    assert v6.url.host == "2606:4700::1111"
    assert v6.extensions["sni_hostname"] == "v6.example"
    assert sorted(resolver.asked) == [(HOST, 8080), (HOST, 8443), ("v6.example", 443)]


async def test_an_internationalised_host_is_sent_in_its_ascii_form(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, resolver: Resolver
) -> None:
    add(outbox, url="https://xn--bcher-kva.example/in")
    message_id = enqueue(outbox, db)

    await workers(outbox).run_once()

    (request,) = consumer.requests
    assert request.headers["host"] == "xn--bcher-kva.example"
    assert request.extensions["sni_hostname"] == "xn--bcher-kva.example"
    assert resolver.asked == [("xn--bcher-kva.example", 443)]
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)


async def test_no_more_than_64_kib_of_an_answer_is_read(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer
) -> None:
    # A consumer that streams an endless answer must not hold the worker (or its memory):
    # the worker reads what a short answer holds (so the connection can be used again),
    # and gives up on the rest.
    chunks: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            chunks.append(1)
            yield b"x" * 65536

    consumer.answer = lambda request: httpx.Response(200, content=endless())
    add(outbox)
    message_id = enqueue(outbox, db)

    with anyio.fail_after(GUARD):
        await workers(outbox).run_once()

    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)
    assert len(chunks) == 2  # 64 KiB, then one more chunk to see there is more


# -- failures and the schedule ------------------------------------------------------------------


def _status(code: int, **headers: str) -> Answer:
    return lambda request: httpx.Response(code, headers=headers)


def _raise(error: type[httpx.TransportError]) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    return answer


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (_status(500), 500, None),
        (_status(302, location="https://elsewhere.example/"), 302, None),
        (_status(307, location=URL), 307, None),
        (_status(404), 404, None),
        (_status(400), 400, None),
        (_status(503), 503, None),  # no Retry-After: the schedule decides
        (_status(429, **{"retry-after": "soon"}), 429, None),  # unusable: ignored
        (_raise(httpx.ReadTimeout), None, "timed out after 15 s"),
        (_raise(httpx.ConnectError), None, "ConnectError: boom"),
    ],
    ids=["500", "302", "307", "404", "400", "503", "429-bad-retry-after", "timeout", "connect"],
)
async def test_a_failure_is_retried_on_the_schedule_then_fails(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
    answer: Answer,
    status: int | None,
    error: str | None,
) -> None:
    consumer.answer = answer
    add(outbox)
    message_id = enqueue(outbox, db)
    worker = workers(outbox)
    start = clock.now()

    assert await worker.run_once() == 1
    assert state(outbox, message_id) == (DeliveryState.PENDING, 1)
    (delivery,) = outbox.deliveries(message_id=message_id)
    assert delivery.next_at == start + 5.0
    assert (delivery.last_status, delivery.last_error) == (status, error)

    clock.advance(4.9)
    assert await worker.run_once() == 0  # not due yet
    clock.advance(0.1)
    assert await worker.run_once() == 1
    assert state(outbox, message_id) == (DeliveryState.PENDING, 2)
    clock.advance(9.9)
    assert await worker.run_once() == 0
    clock.advance(0.1)
    assert await worker.run_once() == 1
    assert state(outbox, message_id) == (DeliveryState.FAILED, 3)
    clock.advance(3600)
    assert await worker.run_once() == 0

    # Redirects are never followed: one request per attempt, all under the message's id.
    assert consumer.ids() == [message_id] * 3
    assert [r.url.host for r in consumer.requests] == [PUBLIC] * 3
    assert attempted(events) == [
        (message_id, 1, "retrying", status),
        (message_id, 2, "retrying", status),
        (message_id, 3, "failed", status),
    ]
    assert [e.error for e in of(events, WebhookAttempted)] == [error] * 3
    history = outbox.attempts(message_id)
    assert [(a.attempt, a.status, a.error) for a in history] == [
        (1, status, error),
        (2, status, error),
        (3, status, error),
    ]
    assert [a.at for a in history] == [start, start + 5.0, start + 15.0]


async def test_a_failure_then_a_success_delivers_under_the_same_id(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, clock: ManualClock
) -> None:
    answers = iter([httpx.Response(500), httpx.Response(204)])
    consumer.answer = lambda request: next(answers)
    add(outbox)
    message_id = enqueue(outbox, db)
    worker = workers(outbox)

    await worker.run_once()
    clock.advance(5)
    await worker.run_once()

    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 2)
    assert consumer.ids() == [message_id, message_id]
    first, second = consumer.requests
    assert int(second.headers["webhook-timestamp"]) == int(first.headers["webhook-timestamp"]) + 5
    for request in (first, second):
        standardwebhooks.Webhook(SECRET).verify(request.content, dict(request.headers))
    assert outbox.endpoint("acme").failing_since is None


# -- Retry-After and pauses ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_retry_after_pauses_the_endpoint(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
    code: int,
    form: str,
) -> None:
    start = clock.now()
    value = (
        "120"
        if form == "seconds"
        else format_datetime(datetime.fromtimestamp(int(start) + 121, UTC), usegmt=True)
    )
    wait = 120.0 if form == "seconds" else int(start) + 121 - start
    consumer.answer = lambda request: (
        httpx.Response(code, headers={"retry-after": value})
        if request.headers["host"] == HOST
        else httpx.Response(200)
    )
    add(outbox)
    add(outbox, "calm", url="https://calm.example/in")
    first = enqueue(outbox, db)
    worker = workers(outbox)
    await worker.run_once()
    (delivery,) = outbox.deliveries(message_id=first, endpoint="acme")
    assert delivery.next_at == pytest.approx(start + wait)  # no sooner than asked
    assert state(outbox, first, "calm") == (DeliveryState.DELIVERED, 1)

    # Everything else for the paused endpoint waits too; other endpoints do not.
    second = enqueue(outbox, db)
    clock.advance(5)  # past the schedule's 5 s, inside the pause
    assert await worker.run_once() == 1
    assert state(outbox, second, "calm") == (DeliveryState.DELIVERED, 1)
    assert state(outbox, second, "acme") == (DeliveryState.PENDING, 0)
    clock.set(start + wait - 0.5)
    assert await worker.run_once() == 0

    consumer.answer = lambda request: httpx.Response(200)
    clock.set(start + wait)
    assert await worker.run_once() == 2
    assert state(outbox, first) == (DeliveryState.DELIVERED, 2)
    assert state(outbox, second) == (DeliveryState.DELIVERED, 1)
    assert consumer.ids().count(first) == 3  # acme twice, calm once


# -- disabling ------------------------------------------------------------------------------------


async def test_410_disables_the_endpoint_until_it_is_enabled(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
) -> None:
    consumer.answer = _status(410)
    add(outbox, concurrency=1)
    first = enqueue(outbox, db)
    second = enqueue(outbox, db)
    worker = workers(outbox)

    assert await worker.run_once() == 1
    assert state(outbox, first) == (DeliveryState.FAILED, 1)
    endpoint = outbox.endpoint("acme")
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "gone")
    assert [(e.endpoint, e.reason) for e in of(events, WebhookEndpointDisabled)] == [
        ("acme", "gone")
    ]
    assert attempted(events) == [(first, 1, "failed", 410)]

    clock.advance(3600)
    assert await worker.run_once() == 0
    assert state(outbox, second) == (DeliveryState.PENDING, 0)

    consumer.answer = _status(200)
    outbox.enable("acme")
    assert await worker.run_once() == 1
    assert state(outbox, second) == (DeliveryState.DELIVERED, 1)
    assert state(outbox, first) == (DeliveryState.FAILED, 1)  # a 410 is final
    assert consumer.ids() == [first, second]


async def test_410_on_several_deliveries_at_once_disables_once(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, events: list[Event]
) -> None:
    consumer.answer = _status(410)
    add(outbox)
    for _ in range(3):
        enqueue(outbox, db)

    assert await workers(outbox).run_once() == 3

    assert [e.reason for e in of(events, WebhookEndpointDisabled)] == ["gone"]
    assert [e.outcome for e in of(events, WebhookAttempted)] == ["failed"] * 3


async def test_an_endpoint_failing_for_disable_after_is_disabled(
    db: Path, workers: Factory, consumer: Consumer, events: list[Event], clock: ManualClock
) -> None:
    outbox = make_outbox(db, clock, schedule=[0, 30, 30, 30, 30], disable_after=60)
    consumer.answer = _status(500)
    add(outbox)
    message_id = enqueue(outbox, db)
    worker = workers(outbox)
    start = clock.now()

    for _ in range(2):
        await worker.run_once()
        clock.advance(30)
    assert outbox.endpoint("acme").failing_since == start
    assert of(events, WebhookEndpointDisabled) == []
    await worker.run_once()  # 60 s after the first failure

    endpoint = outbox.endpoint("acme")
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "failing")
    (disabled,) = of(events, WebhookEndpointDisabled)
    assert (disabled.endpoint, disabled.reason, disabled.at) == ("acme", "failing", start + 60)
    assert state(outbox, message_id) == (DeliveryState.PENDING, 3)
    clock.advance(30)
    assert await worker.run_once() == 0

    consumer.answer = _status(200)
    outbox.enable("acme")
    assert await worker.run_once() == 1
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 4)
    assert outbox.endpoint("acme").failing_since is None
    outbox.close()


# -- rate limits -------------------------------------------------------------------------------


async def _rate_limited(
    outbox: Outbox,
    db: Path,
    worker: OutboxWorker,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
) -> None:
    add(outbox, rate_limit="2/second")
    ids = [enqueue(outbox, db) for _ in range(5)]
    start = clock.now()

    assert await worker.run_once() == 5
    assert len(consumer.requests) == 2
    deferred = of(events, WebhookDeferred)
    assert len(deferred) == 3
    assert {e.reason for e in deferred} == {"rate_limited"}
    # The window is 1 s plus the 20 ms an admission may age before its request leaves.
    assert all(0 < e.retry_after <= 1.02 for e in deferred)
    held = [m for m in ids if m not in consumer.ids()]
    assert [state(outbox, m) for m in held] == [(DeliveryState.PENDING, 0)] * 3
    assert len(of(events, WebhookAttempted)) == 2

    assert await worker.run_once() == 0  # not due before the limit has room
    clock.advance(0.5)
    await worker.run_once()
    assert len(consumer.requests) == 2
    clock.set(start + 1.02)
    await worker.run_once()
    assert len(consumer.requests) == 4
    clock.set(start + 2.04)
    await worker.run_once()
    assert sorted(consumer.ids()) == sorted(ids)
    assert [state(outbox, m) for m in ids] == [(DeliveryState.DELIVERED, 1)] * 5
    sent_at = sorted(float(r.headers["webhook-timestamp"]) for r in consumer.requests)
    for second in {int(t) for t in sent_at}:
        assert sum(1 for t in sent_at if int(t) == second) <= 2


async def test_a_rate_limit_defers_what_is_over_it(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
) -> None:
    worker = workers(outbox, rate_store=MemoryStore())
    await _rate_limited(outbox, db, worker, consumer, events, clock)


async def test_the_default_rate_store_is_the_outboxs_database(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
) -> None:
    worker = workers(outbox)
    await _rate_limited(outbox, db, worker, consumer, events, clock)
    # A second worker counts in the same store: the limit holds across workers.
    other = workers(outbox)
    enqueue(outbox, db)
    enqueue(outbox, db)
    enqueue(outbox, db)
    clock.advance(1.02)
    await worker.run_once()
    await other.run_once()
    assert len(consumer.requests) == 5 + 2


async def test_a_rate_store_that_is_down_defers_instead_of_sending_unchecked(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
) -> None:
    store = FlakyStore(MemoryStore())
    store.down()
    add(outbox, rate_limit="2/second")
    add(outbox, "unlimited", url="https://unlimited.example/in")
    message_id = enqueue(outbox, db)
    worker = workers(outbox, rate_store=store)

    assert await worker.run_once() == 2

    # The other endpoint's delivery of the same pass is sent and recorded all the same.
    assert [r.headers["host"] for r in consumer.requests] == ["unlimited.example"]
    (deferred,) = of(events, WebhookDeferred)
    assert (deferred.endpoint, deferred.reason, deferred.retry_after) == (
        "acme",
        "rate_limit_unavailable",
        1.0,
    )
    assert state(outbox, message_id) == (DeliveryState.PENDING, 0)
    store.up()
    clock.advance(1)
    assert await worker.run_once() == 1
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)


# -- the circuit breaker --------------------------------------------------------------------------


async def test_the_breaker_opens_after_repeated_failures_and_closes_after_open_wait(
    db: Path, workers: Factory, consumer: Consumer, events: list[Event], clock: ManualClock
) -> None:
    outbox = make_outbox(db, clock, schedule=[0] + [1] * 20)
    consumer.answer = _status(500)
    add(outbox, concurrency=20)
    ids = [enqueue(outbox, db) for _ in range(10)]
    worker = workers(outbox)

    await worker.run_once()  # ten failures: the breaker opens
    assert len(consumer.requests) == 10
    assert [e.to_state for e in of(events, BreakerStateChanged)] == ["open"]

    clock.advance(1)
    assert await worker.run_once() == 10
    assert len(consumer.requests) == 10  # no request made
    deferred = of(events, WebhookDeferred)
    assert {e.reason for e in deferred} == {"breaker_open"}
    assert len(deferred) == 10
    assert [state(outbox, m) for m in ids] == [(DeliveryState.PENDING, 1)] * 10

    consumer.answer = _status(200)
    clock.advance(30)  # open_wait: one probe goes through and closes it
    await worker.run_once()
    assert len(consumer.requests) == 11
    assert [e.to_state for e in of(events, BreakerStateChanged)] == ["open", "half_open", "closed"]
    clock.advance(1)
    await worker.run_once()
    assert [state(outbox, m) for m in ids] == [(DeliveryState.DELIVERED, 2)] * 10
    outbox.close()


async def test_without_a_breaker_every_failure_is_sent(
    db: Path, workers: Factory, consumer: Consumer, events: list[Event], clock: ManualClock
) -> None:
    outbox = make_outbox(db, clock, schedule=[0] + [1] * 20)
    consumer.answer = _status(500)
    add(outbox, concurrency=20)
    for _ in range(10):
        enqueue(outbox, db)
    worker = workers(outbox, breaker=False)
    await worker.run_once()
    clock.advance(1)
    await worker.run_once()
    assert len(consumer.requests) == 20
    assert of(events, WebhookDeferred) == []
    outbox.close()


# -- the SSRF guard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "refused"),
    [
        (["127.0.0.1"], "127.0.0.1"),
        (["10.1.2.3"], "10.1.2.3"),
        (["169.254.169.254"], "169.254.169.254"),
        (["192.168.0.7"], "192.168.0.7"),
        (["100.64.0.1"], "100.64.0.1"),
        (["0.0.0.0"], "0.0.0.0"),
        (["::1"], "::1"),
        (["fe80::1%eth0"], "fe80::1"),
        (["::ffff:127.0.0.1"], "127.0.0.1"),
        (["ff0e::1"], "ff0e::1"),
        (["64:ff9b::a9fe:a9fe"], "169.254.169.254"),  # NAT64
        (["2002:7f00:1::1"], "127.0.0.1"),  # 6to4
        (["::127.0.0.1"], "127.0.0.1"),  # IPv4-compatible
        ([PUBLIC, "10.0.0.1"], "10.0.0.1"),  # every address must be public
    ],
)
async def test_a_host_resolving_to_a_private_address_is_refused(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    resolver: Resolver,
    events: list[Event],
    addresses: list[str],
    refused: str,
) -> None:
    resolver.table[HOST] = addresses
    add(outbox)
    message_id = enqueue(outbox, db)

    assert await workers(outbox).run_once() == 1

    assert consumer.requests == []
    (attempt,) = outbox.attempts(message_id)
    assert attempt.status is None
    assert attempt.error is not None
    assert f"resolves to {refused}," in attempt.error
    assert HOST in attempt.error
    assert state(outbox, message_id) == (DeliveryState.PENDING, 1)
    (event,) = of(events, WebhookAttempted)
    assert (event.outcome, event.error) == ("retrying", attempt.error)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8080/in", "127.0.0.1"),
        ("http://10.0.0.5/in", "10.0.0.5"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[::1]/in", "::1"),
        ("http://[::ffff:127.0.0.1]/in", "127.0.0.1"),
    ],
)
async def test_an_ip_literal_url_is_checked_too(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    resolver: Resolver,
    url: str,
    refused: str,
) -> None:
    add(outbox, url=url)
    message_id = enqueue(outbox, db)

    await workers(outbox).run_once()

    assert consumer.requests == []
    assert resolver.asked == []
    (attempt,) = outbox.attempts(message_id)
    assert attempt.error is not None
    assert f"resolves to {refused}," in attempt.error


async def test_a_public_ip_literal_is_sent_as_it_is(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, resolver: Resolver
) -> None:
    add(outbox, url=f"https://{PUBLIC}:8443/in")
    enqueue(outbox, db)
    await workers(outbox).run_once()
    (request,) = consumer.requests
    assert str(request.url) == f"https://{PUBLIC}:8443/in"
    assert request.headers["host"] == f"{PUBLIC}:8443"
    assert resolver.asked == []


@pytest.mark.parametrize("address", ["2606:4700::1111", "64:ff9b::5db8:d822", "::ffff:" + PUBLIC])
async def test_a_public_ipv6_address_is_allowed(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    resolver: Resolver,
    address: str,
) -> None:
    resolver.table[HOST] = [address]
    add(outbox)
    message_id = enqueue(outbox, db)
    await workers(outbox).run_once()
    assert [r.headers["host"] for r in consumer.requests] == [HOST]
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)


async def test_allow_private_true_allows_every_address(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, resolver: Resolver
) -> None:
    resolver.table[HOST] = ["127.0.0.1"]
    add(outbox)
    add(outbox, "literal", url="http://[::1]:8080/in")
    message_id = enqueue(outbox, db)

    assert await workers(outbox, allow_private=True).run_once() == 2

    assert sorted(str(r.url) for r in consumer.requests) == [
        "http://[::1]:8080/in",
        "https://127.0.0.1/in",
    ]
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)
    assert state(outbox, message_id, "literal") == (DeliveryState.DELIVERED, 1)


@pytest.mark.parametrize("allowed", [["10.0.0.0/8"], "10.0.0.0/8", ("10.0.0.0/8", "fd00::/8")])
async def test_allow_private_networks_allow_only_those(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    resolver: Resolver,
    allowed: Sequence[str] | str,
) -> None:
    resolver.table[HOST] = ["10.1.2.3"]
    resolver.table["loop.example"] = ["127.0.0.1"]
    add(outbox)
    add(outbox, "loop", url="https://loop.example/in")
    add(outbox, "metadata", url="http://169.254.169.254/")
    message_id = enqueue(outbox, db)

    assert await workers(outbox, allow_private=allowed).run_once() == 3

    (request,) = consumer.requests
    assert (request.url.host, request.headers["host"]) == ("10.1.2.3", HOST)
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)
    (loop,) = outbox.attempts(message_id, endpoint="loop")
    assert loop.error is not None
    assert "127.0.0.1" in loop.error
    (metadata,) = outbox.attempts(message_id, endpoint="metadata")
    assert metadata.error is not None
    assert "169.254.169.254" in metadata.error


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "Name or service"),
        (OSError("network down"), "network down"),
        ([], f"cannot resolve {HOST}"),
        (UnicodeError("label empty or too long"), f"cannot resolve {HOST}"),
        (["not-an-address"], f"cannot resolve {HOST}"),
    ],
    ids=["gaierror", "oserror", "no-address", "idna", "garbage"],
)
async def test_a_resolution_failure_is_a_failed_attempt(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    resolver: Resolver,
    events: list[Event],
    clock: ManualClock,
    answer: list[str] | BaseException,
    error: str,
) -> None:
    resolver.table[HOST] = answer
    add(outbox)
    add(outbox, "fine", url="https://fine.example/in")
    message_id = enqueue(outbox, db)
    worker = workers(outbox)

    assert await worker.run_once() == 2

    # The other endpoint's delivery in the same pass is sent and recorded all the same.
    assert [r.headers["host"] for r in consumer.requests] == ["fine.example"]
    assert state(outbox, message_id, "fine") == (DeliveryState.DELIVERED, 1)
    assert state(outbox, message_id) == (DeliveryState.PENDING, 1)
    (attempt,) = outbox.attempts(message_id, endpoint="acme")
    assert attempt.status is None
    assert attempt.error is not None
    assert error in attempt.error
    assert f"cannot resolve {HOST}" in attempt.error

    del resolver.table[HOST]
    clock.advance(5)
    assert await worker.run_once() == 1
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 2)


async def test_the_default_resolver_refuses_a_name_that_resolves_to_loopback(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer
) -> None:
    add(outbox, url="http://localhost:9/in")
    message_id = enqueue(outbox, db)

    await workers(outbox, resolver=None).run_once()

    assert consumer.requests == []
    (attempt,) = outbox.attempts(message_id)
    assert attempt.error is not None
    assert "localhost resolves to" in attempt.error


async def test_the_timeout_bounds_the_whole_attempt_resolving_included(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    resolver: Resolver,
) -> None:
    # A resolver that never answers must not keep the delivery past its lease.
    never = asyncio.Event()

    async def silent(host: str, port: int) -> list[str]:
        if host == HOST:
            await never.wait()
        return await resolver(host, port)

    add(outbox)
    add(outbox, "fine", url="https://fine.example/in")
    message_id = enqueue(outbox, db)

    with anyio.fail_after(GUARD):
        assert await workers(outbox, timeout=0.1, lease=1, resolver=silent).run_once() == 2

    (attempt,) = outbox.attempts(message_id, endpoint="acme")
    assert (attempt.status, attempt.error) == (None, "timed out after 0.1 s")
    assert state(outbox, message_id, "fine") == (DeliveryState.DELIVERED, 1)


# -- leases ---------------------------------------------------------------------------------------


async def test_a_stale_workers_record_is_ignored_and_the_delivery_is_sent_again(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
) -> None:
    add(outbox)
    message_id = enqueue(outbox, db)
    other_events: list[Event] = []
    other = workers(outbox, timeout=5, lease=10, hooks=[other_events.append])

    async def hung(request: httpx.Request) -> httpx.Response:
        # The first worker's request outlives its lease; meanwhile the other takes over.
        consumer.requests.append(request)
        clock.advance(11)
        assert await other.run_once() == 1
        return httpx.Response(500)

    stale = workers(outbox, timeout=5, lease=10, transport=httpx.MockTransport(hung))

    assert await stale.run_once() == 1

    assert consumer.ids() == [message_id, message_id]
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 2)
    assert of(events, WebhookAttempted) == []  # the stale worker's 500 changed nothing
    assert attempted(other_events) == [(message_id, 2, "delivered", 200)]
    assert [(a.attempt, a.status) for a in outbox.attempts(message_id)] == [(2, 200)]
    assert outbox.endpoint("acme").failing_since is None


async def test_a_delivery_whose_worker_died_is_sent_again_after_the_lease(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, clock: ManualClock
) -> None:
    add(outbox)
    message_id = enqueue(outbox, db)
    dead = workers(outbox, timeout=5, lease=10)
    # The dead worker claimed (its process then died before it sent or recorded anything).
    assert len(await dead._claim(10)) == 1
    survivor = workers(outbox, timeout=5, lease=10)

    assert await survivor.run_once() == 0
    clock.advance(10)
    assert await survivor.run_once() == 1
    assert consumer.ids() == [message_id]
    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 2)


# -- run and stop ---------------------------------------------------------------------------------


async def test_run_stops_on_stop_after_recording_what_is_in_flight(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, events: list[Event]
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        entered.set()
        await release.wait()
        return httpx.Response(200)

    consumer.answer = slow
    add(outbox)
    message_id = enqueue(outbox, db)
    worker = workers(outbox, poll_interval=60)  # stop() does not wait for the next poll

    with anyio.fail_after(GUARD):
        task = asyncio.create_task(worker.run())
        await entered.wait()
        worker.stop()
        assert not task.done()
        release.set()
        await task

    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)
    assert attempted(events) == [(message_id, 1, "delivered", 200)]


async def test_a_cancelled_run_records_what_is_in_flight(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, events: list[Event]
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        entered.set()
        await release.wait()
        return httpx.Response(200)

    consumer.answer = slow
    add(outbox)
    message_id = enqueue(outbox, db)
    worker = workers(outbox, poll_interval=60)

    with anyio.fail_after(GUARD):
        task = asyncio.create_task(worker.run())
        await entered.wait()
        task.cancel()
        await anyio.lowlevel.checkpoint()
        assert not task.done()  # it waits for the request in flight
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert state(outbox, message_id) == (DeliveryState.DELIVERED, 1)
    assert attempted(events) == [(message_id, 1, "delivered", 200)]


async def test_run_delivers_full_batches_back_to_back_then_stops_when_idle(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer, events: list[Event]
) -> None:
    add(outbox)
    ids = [enqueue(outbox, db) for _ in range(5)]
    all_sent = asyncio.Event()
    worker = workers(outbox, batch=2, poll_interval=60)

    def watch(event: Event) -> None:
        events.append(event)
        if len(of(events, WebhookAttempted)) == len(ids):
            all_sent.set()

    worker.hooks = (watch,)

    with anyio.fail_after(GUARD):
        task = asyncio.create_task(worker.run())
        await all_sent.wait()
        worker.stop()
        await task

    assert sorted(consumer.ids()) == sorted(ids)
    assert [state(outbox, m) for m in ids] == [(DeliveryState.DELIVERED, 1)] * 5


async def test_run_with_nothing_to_do_stops_on_stop(
    outbox: Outbox, workers: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = workers(outbox, poll_interval=60)  # stop() does not wait for the next poll
    claimed, loop = asyncio.Event(), asyncio.get_running_loop()
    claim = outbox.claim

    def claiming(*args: Any, **kwargs: Any) -> Any:  # run in the worker's thread
        try:
            return claim(*args, **kwargs)
        finally:
            loop.call_soon_threadsafe(claimed.set)

    monkeypatch.setattr(outbox, "claim", claiming)
    with anyio.fail_after(GUARD):
        task = asyncio.create_task(worker.run())
        await claimed.wait()  # it found nothing and now waits for its next poll
        worker.stop()
        await task


async def test_run_waits_out_a_database_outage_and_records_what_it_kept(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add(outbox)
    ids = [enqueue(outbox, db) for _ in range(3)]
    worker = workers(outbox, poll_interval=0.01)
    record = outbox.record
    failing = {"record": 1}

    def flaky_record(conn: Any, outcomes: Any) -> Any:
        if failing["record"]:
            failing["record"] -= 1
            raise StoreUnavailable(retry_after=1)
        return record(conn, outcomes)

    monkeypatch.setattr(outbox, "record", flaky_record)
    recorded = asyncio.Event()
    worker.hooks = (
        lambda e: (events.append(e), isinstance(e, WebhookAttempted) and recorded.set()),
    )

    with anyio.fail_after(GUARD):
        task = asyncio.create_task(worker.run())
        await recorded.wait()  # after the outage, from the outcomes it kept
        worker.stop()
        await task

    assert "the database failed" in caplog.text
    assert sorted(consumer.ids()) == sorted(ids)  # each sent once: nothing went out again
    assert [state(outbox, m) for m in ids] == [(DeliveryState.DELIVERED, 1)] * 3


# -- the backlog report ---------------------------------------------------------------------------


async def test_the_backlog_report_carries_each_endpoints_pending_and_oldest_age(
    outbox: Outbox,
    db: Path,
    workers: Factory,
    consumer: Consumer,
    events: list[Event],
    clock: ManualClock,
) -> None:
    consumer.answer = lambda request: httpx.Response(
        500 if request.headers["host"] == HOST else 200
    )
    add(outbox, tenant="t1")
    add(outbox, "calm", url="https://calm.example/in", tenant="t2")
    add(outbox, "idle", url="https://idle.example/in", tenant="t3")
    enqueue(outbox, db, tenant="t1")
    enqueue(outbox, db, tenant="t2")
    clock.advance(7)
    enqueue(outbox, db, tenant="t1")
    worker = workers(outbox, report_every=60)

    await worker.run_once()

    (report,) = of(events, OutboxBacklog)
    assert report.at == clock.now()
    assert report.endpoints == (
        ("acme", True, 2, 0, 0, 7.0),
        ("calm", True, 0, 0, 0, None),
        ("idle", True, 0, 0, 0, None),
    )
    clock.advance(59)
    await worker.run_once()
    assert len(of(events, OutboxBacklog)) == 1  # not before report_every
    clock.advance(1)
    await worker.run_once()
    assert len(of(events, OutboxBacklog)) == 2
    assert of(events, OutboxBacklog)[1].endpoints[0] == ("acme", True, 2, 0, 0, 67.0)


async def test_no_backlog_is_computed_when_no_hook_wants_it(
    outbox: Outbox, db: Path, workers: Factory, events: list[Event]
) -> None:
    class OnlyAttempts:
        def __call__(self, event: Event) -> None:
            events.append(event)

        def wants(self, event_type: type[Event]) -> bool:
            return event_type is WebhookAttempted

    add(outbox)
    enqueue(outbox, db)
    await workers(outbox, hooks=[OnlyAttempts()]).run_once()
    assert [type(e) for e in events] == [WebhookAttempted]


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": 301}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"lease": 15}, "lease"),
        ({"lease": 10}, "lease"),
        ({"timeout": 5, "lease": 5}, "lease"),
        ({"lease": 3601}, "lease"),
        ({"lease": "60"}, "lease"),
        ({"batch": 0}, "batch"),
        ({"batch": 10001}, "batch"),
        ({"batch": 1.5}, "batch"),
        ({"batch": True}, "batch"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"report_every": 0}, "report_every"),
        ({"allow_private": ["not a network"]}, "allow_private[0]"),
        ({"allow_private": ["10.0.0.0/8", "10.0.0.0/33"]}, "allow_private[1]"),
        ({"allow_private": "nonsense"}, "allow_private[0]"),
        ({"allow_private": [None]}, "allow_private[0]"),
        ({"breaker": "yes"}, "breaker"),
    ],
)
async def test_bad_arguments_are_refused_naming_the_field(
    outbox: Outbox, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        OutboxWorker(outbox, **options)
    assert str(raised.value).startswith(f"{field}: expected ")


async def test_an_outbox_is_required() -> None:
    with pytest.raises(ConfigurationError, match=r"^outbox: expected an Outbox"):
        OutboxWorker("sqlite:///app.db")  # type: ignore[arg-type]


async def test_the_default_lease_outlasts_the_timeout(outbox: Outbox) -> None:
    worker = OutboxWorker(outbox, timeout=10)
    try:
        assert worker.lease == 50.0
        assert [type(hook) for hook in worker.hooks] == [LoggingHook]  # the default
    finally:
        await worker.aclose()


async def test_a_breaker_of_ones_own_is_asked_before_each_attempt_and_told_its_result(
    outbox: Outbox, db: Path, workers: Factory, consumer: Consumer
) -> None:
    calls: list[tuple[str, object]] = []

    class Counting:
        def __init__(self, name: str) -> None:
            self.name = name

        def acquire(self) -> object:
            calls.append(("acquire", self.name))
            return self.name

        def on_result(self, permit: object, *, failed: bool, **_: object) -> None:
            calls.append(("result", (permit, failed)))

        def release(self, permit: object) -> None:
            calls.append(("release", permit))

    add(outbox)
    enqueue(outbox, db)
    worker = workers(outbox, breaker=Counting)
    assert await worker.run_once() == 1
    assert calls == [("acquire", "acme"), ("result", ("acme", False))]
