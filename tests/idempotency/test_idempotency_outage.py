"""IdempotencyMiddleware while its store is down: fail closed, fail open, finishing failures."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from _support import T0, leaky_store_error, of
from surefoot._health import StoreDown, StoreHealth, StoreRecovered
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.idempotency import (
    ExecutedUnprotected,
    IdempotencyMiddleware,
    IdempotencyPolicy,
    StoreBypassed,
    StoreFailed,
)
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import FlakyStore, ManualClock

pytestmark = pytest.mark.anyio


class Backend:
    """Counts executions (charges); answers 201, or the status a test sets."""

    def __init__(self) -> None:
        self.executions = 0
        self.status = 201
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def charge(self, request: Request) -> Response:
        self.executions += 1
        self.entered.set()
        payload = json.loads(await request.body() or b"{}")
        if self.gate is not None and self.executions == 1:  # holds the first execution only
            await self.gate.wait()
        return JSONResponse(
            {"charge": self.executions, "amount": payload.get("amount")}, status_code=self.status
        )

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/charges", self.charge, methods=["POST"])])


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore(MemoryStore(), error=leaky_store_error)


@pytest.fixture
def make_client(
    backend: Backend, clock: ManualClock, events: list[Event], store: FlakyStore
) -> Callable[..., httpx.AsyncClient]:
    def make(app: Any = None, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("store", store)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("hooks", [events.append])
        kwargs.setdefault("store_health", StoreHealth(jitter=0))
        wrapped = IdempotencyMiddleware(app or backend.app(), **kwargs)
        transport = httpx.ASGITransport(wrapped, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    return make


def key(k: str = "key-1") -> dict[str, str]:
    return {"Idempotency-Key": k}


def assert_store_unavailable(response: httpx.Response, retry_after: int) -> None:
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == str(retry_after)
    doc = response.json()
    assert doc["code"] == "store_unavailable"
    assert doc["retry_after"] == retry_after
    assert doc["request_id"] == response.headers["x-request-id"]
    assert "nothing was executed" in doc["detail"]
    assert "host" not in doc
    assert "hunter2" not in response.text
    assert all("hunter2" not in v for v in response.headers.values())


# -- fail closed (the default) ----------------------------------------------------------------


async def test_fails_closed_by_default_and_executes_nothing(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    events: list[Event],
) -> None:
    store.down("begin")
    async with make_client() as c:
        first = await c.post("/charges", json={"amount": 500}, headers=key())
        again = await c.post("/charges", json={"amount": 500}, headers=key())
    assert_store_unavailable(first, 1)
    assert_store_unavailable(again, 1)
    assert backend.executions == 0
    assert store.calls["begin"] == 1  # the retry did not wait for the store
    [failed] = of(events, StoreFailed)
    assert (failed.phase, failed.action, failed.error) == (
        "begin",
        "fail_closed",
        "ConnectionError",
    )
    [bypassed] = of(events, StoreBypassed)
    assert (bypassed.phase, bypassed.action) == ("begin", "fail_closed")
    assert bypassed.store_key == failed.store_key
    [down] = of(events, StoreDown)
    assert (down.layer, down.store, down.error) == (
        "idempotency",
        "MemoryStore",  # the store FlakyStore wraps
        "ConnectionError",
    )


async def test_retry_after_tells_when_the_store_is_tried_again(
    make_client: Callable[..., httpx.AsyncClient], store: FlakyStore, clock: ManualClock
) -> None:
    store.down("begin")
    async with make_client(store_health=StoreHealth(jitter=0, initial_backoff=8)) as c:
        assert_store_unavailable(await c.post("/charges", json={}, headers=key()), 8)
        clock.advance(2.5)
        assert_store_unavailable(await c.post("/charges", json={}, headers=key()), 6)


async def test_recovers_by_itself_with_one_event_each_way(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    clock: ManualClock,
    events: list[Event],
) -> None:
    store.down("begin")
    async with make_client() as c:
        for _ in range(3):
            await c.post("/charges", json={}, headers=key())
        clock.advance(0.5)
        await c.post("/charges", json={}, headers=key())  # a failed probe: the wait doubles
        store.up()
        clock.advance(0.75)
        assert (await c.post("/charges", json={}, headers=key())).status_code == 503
        assert store.calls["begin"] == 2
        clock.advance(0.25)
        ok = await c.post("/charges", json={"amount": 1}, headers=key())
        replay = await c.post("/charges", json={"amount": 1}, headers=key())
    assert ok.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert backend.executions == 1
    [down] = of(events, StoreDown)
    [recovered] = of(events, StoreRecovered)
    assert (down.at, recovered.at, recovered.duration) == (T0, T0 + 1.5, 1.5)
    assert (recovered.failed_probes, recovered.layer) == (1, "idempotency")


async def test_a_cancelled_probe_lets_the_next_request_probe_at_once(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    clock: ManualClock,
) -> None:
    store.down("begin")
    async with make_client() as c:
        await c.post("/charges", json={}, headers=key())
        store.up()
        clock.advance(0.5)
        store.stall("begin")
        probe = asyncio.create_task(c.post("/charges", json={}, headers=key("a")))
        await store.wait_for_calls(2, "begin")  # the probe is waiting for the store
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        store.resume()
        r = await c.post("/charges", json={}, headers=key("b"))  # no new wait: it probes
    assert r.status_code == 201
    assert backend.executions == 1
    assert store.calls["begin"] == 3  # the failed call, the cancelled probe (no answer), this one


async def test_store_full_is_not_an_outage(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend, events: list[Event]
) -> None:
    full = MemoryStore(max_records=1)
    backend.gate = asyncio.Event()  # the first request stays in flight: nothing to evict
    async with make_client(store=full) as c:
        first = asyncio.create_task(c.post("/charges", json={}, headers=key("a")))
        await backend.entered.wait()
        second = await c.post("/charges", json={}, headers=key("b"))
        backend.gate.set()
        await first
        # The store refuses new keys while full (it never drops a live record), but it
        # is called: the first request's retry is replayed.
        third = await c.post("/charges", json={}, headers=key("a"))
    assert second.status_code == 503
    assert second.json()["code"] == "store_capacity_exceeded"
    assert third.status_code == 201  # the store was called, not skipped
    assert third.headers["idempotent-replayed"] == "true"
    assert of(events, StoreDown) == []


# -- fail open ----------------------------------------------------------------------------------


async def test_fail_open_executes_unprotected_marks_the_response_and_reports_every_time(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    events: list[Event],
) -> None:
    store.down("begin")
    routes = {"POST /charges": IdempotencyPolicy(on_store_error="fail_open")}
    async with make_client(routes=routes) as c:
        first = await c.post("/charges", json={"amount": 500}, headers=key())
        retry = await c.post("/charges", json={"amount": 500}, headers=key())
    for r in (first, retry):
        assert r.status_code == 201
        assert r.headers["idempotency-status"] == "unprotected"
        assert "idempotent-replayed" not in r.headers
    # The retried payment was charged twice: what fail_open means during an outage.
    assert [first.json()["charge"], retry.json()["charge"]] == [1, 2]
    assert [e.reason for e in of(events, ExecutedUnprotected)] == ["store_failed", "store_down"]
    assert of(events, StoreFailed)[0].action == "fail_open"
    assert of(events, StoreBypassed)[0].action == "fail_open"
    assert store.calls["finish"] == 0  # nothing was reserved, nothing to settle


async def test_fail_open_never_runs_beside_an_original_known_to_be_in_flight(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    events: list[Event],
) -> None:
    policy = IdempotencyPolicy(on_store_error="fail_open", wait=5)
    backend.gate = asyncio.Event()
    async with make_client(policy=policy) as c:
        original = asyncio.create_task(c.post("/charges", json={}, headers=key()))
        await backend.entered.wait()
        # The duplicate is told "in flight" (begin 2), waits, then the store fails (begin 3).
        store.down("begin", after=1)
        duplicate = await c.post("/charges", json={}, headers=key())
        backend.gate.set()
        await original
    assert_store_unavailable(duplicate, 1)
    assert backend.executions == 1
    assert of(events, ExecutedUnprotected) == []
    assert of(events, StoreFailed)[0].action == "fail_closed"


def test_on_store_error_is_validated() -> None:
    with pytest.raises(ConfigurationError) as info:
        IdempotencyPolicy(on_store_error="ignore")  # type: ignore[arg-type]
    assert str(info.value) == (
        "IdempotencyPolicy.on_store_error: expected 'fail_closed' or 'fail_open', got 'ignore'"
    )
    assert IdempotencyPolicy().on_store_error == "fail_closed"


def test_store_health_is_checked_at_construction(store: FlakyStore) -> None:
    with pytest.raises(
        ConfigurationError, match=re.escape("store_health: expected a surefoot.storage.StoreHealth")
    ):
        IdempotencyMiddleware(Backend().app(), store=store, store_health=object())  # type: ignore[arg-type]


# -- finishing --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [201, 500])
async def test_a_finish_failure_still_returns_the_handlers_response(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    events: list[Event],
    status: int,
) -> None:
    store.down("finish")
    backend.status = status
    async with make_client() as c:
        r = await c.post("/charges", json={"amount": 7}, headers=key())
    assert r.status_code == status
    assert r.json() == {"charge": 1, "amount": 7}
    [failed] = of(events, StoreFailed)
    assert (failed.phase, failed.action, failed.error) == (
        "finish",
        "left_to_lease",
        "ConnectionError",
    )
    assert len(of(events, StoreDown)) == 1


@pytest.mark.parametrize(
    ("on_lease_expiry", "after_lease"),
    [("unknown", "idempotency_outcome_unknown"), ("reexecute", None)],
)
async def test_after_a_finish_failure_the_reservation_is_left_to_its_lease(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    clock: ManualClock,
    on_lease_expiry: str,
    after_lease: str | None,
) -> None:
    policy = IdempotencyPolicy(lease=30, on_lease_expiry=on_lease_expiry)  # type: ignore[arg-type]
    store.down("finish")
    async with make_client(policy=policy) as c:
        assert (await c.post("/charges", json={}, headers=key())).status_code == 201
        store.up()
        clock.advance(0.5)  # the next request probes the store, which answers again
        during = await c.post("/charges", json={}, headers=key())
        clock.advance(30)
        after = await c.post("/charges", json={}, headers=key())
    assert during.status_code == 409
    assert during.json()["code"] == "idempotency_request_in_progress"
    if after_lease is None:
        assert after.status_code == 201  # re-executed: the route said that is safe
        assert backend.executions == 2
    else:
        assert after.status_code == 409
        assert after.json()["code"] == after_lease
        assert backend.executions == 1


async def test_a_request_holding_its_key_settles_it_even_after_another_found_an_outage(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    events: list[Event],
) -> None:
    """A blip seen by another request must not cost this one its stored response: a
    skipped finish would leave the key in flight, and its retry would meet "outcome
    unknown" (or, with on_lease_expiry="reexecute", run again)."""
    health = StoreHealth(jitter=0)
    backend.gate = asyncio.Event()
    async with make_client(store_health=health) as c:
        running = asyncio.create_task(c.post("/charges", json={}, headers=key()))
        await backend.entered.wait()
        health.failed(health.permit(T0), T0)  # another request found the store down
        backend.gate.set()
        r = await running
        assert r.status_code == 201
        assert store.calls["finish"] == 1
        assert not of(events, StoreBypassed)
        health.succeeded(health.permit(T0 + 60), T0 + 60)  # the next probe finds it back
        retry = await c.post("/charges", json={}, headers=key())
    assert (retry.status_code, retry.headers["idempotent-replayed"]) == (201, "true")
    assert retry.content == r.content


# -- with the rate limiter ----------------------------------------------------------------------


async def test_an_outage_found_by_the_rate_limiter_spares_the_idempotency_layer_the_wait(
    store: FlakyStore, backend: Backend, clock: ManualClock, events: list[Event]
) -> None:
    health = StoreHealth(jitter=0)
    app = IdempotencyMiddleware(
        backend.app(), store=store, clock=clock, hooks=[events.append], store_health=health
    )
    app = RateLimitMiddleware(
        app,
        store=store,
        policies=[RateLimitPolicy("default", limits=["100/minute"])],  # fails open
        clock=clock,
        hooks=[events.append],
        store_health=health,
    )
    store.down("acquire", "begin")
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.post("/charges", json={}, headers=key())
    assert_store_unavailable(r, 1)
    assert store.calls == {"acquire": 1}  # no begin, no finish
    [down] = of(events, StoreDown)
    assert down.layer == "ratelimit"
    assert backend.executions == 0
