"""The rate limiter while its store is down (the tracker: tests/storage/test_store_health.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from _support import T0, leaky_store_error, of
from surefoot._health import (
    StoreDown,
    StoreHealth,
    StoreRecovered,
)
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.ratelimit import (
    Limit,
    RateLimitDependency,
    RateLimitMiddleware,
    RateLimitPolicy,
    RateLimitStoreBypassed,
    RateLimitStoreFailed,
    install_problem_handler,
)
from surefoot.storage import MemoryStore
from surefoot.testing import FlakyStore, ManualClock

pytestmark = pytest.mark.anyio


# == the rate limiter through its middleware ====================================================


class Backend:
    def __init__(self) -> None:
        self.calls = 0

    async def endpoint(self, request: Request) -> Response:
        self.calls += 1
        return PlainTextResponse("ok")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.endpoint, methods=["GET", "POST"])])


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore(MemoryStore(), error=leaky_store_error)


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def make_client(
    backend: Backend, clock: ManualClock, events: list[Event], store: FlakyStore
) -> Callable[..., httpx.AsyncClient]:
    def make(*policies: RateLimitPolicy, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("store", store)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("hooks", [events.append])
        kwargs.setdefault("store_health", StoreHealth(jitter=0))
        mw = RateLimitMiddleware(backend.app(), policies=policies, **kwargs)
        transport = httpx.ASGITransport(mw, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    return make


def assert_no_secret(response: httpx.Response) -> None:
    assert "hunter2" not in response.text
    assert all("hunter2" not in v for v in response.headers.values())


async def test_fail_open_admits_and_reports_each_request(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    events: list[Event],
) -> None:
    store.down("acquire")
    async with make_client(RateLimitPolicy("default", limits=["1/minute"])) as c:
        responses = [await c.get("/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "ratelimit" not in responses[0].headers  # nothing was counted
    assert backend.calls == 3
    assert store.calls["acquire"] == 1  # the two others skipped the store
    [failed] = of(events, RateLimitStoreFailed)
    assert (failed.action, failed.error) == ("fail_open", "ConnectionError")
    assert [e.action for e in of(events, RateLimitStoreBypassed)] == ["fail_open", "fail_open"]
    [down] = of(events, StoreDown)
    assert (down.store, down.layer, down.error) == (
        "MemoryStore",  # the store FlakyStore wraps
        "ratelimit",
        "ConnectionError",
    )
    assert down.request_id == failed.request_id


async def test_fail_closed_answers_a_503_problem_with_retry_after(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    clock: ManualClock,
) -> None:
    store.down("acquire")
    policy = RateLimitPolicy("strict", limits=["100/minute"], on_store_error="fail_closed")
    async with make_client(policy, store_health=StoreHealth(jitter=0, initial_backoff=4)) as c:
        first = await c.get("/", headers={"X-Request-Id": "req-1"})
        clock.advance(1.5)
        second = await c.get("/")
    assert backend.calls == 0
    for r in (first, second):
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert_no_secret(r)
    doc = first.json()
    assert doc == {
        "type": "https://surefoot.dev/problems/store-unavailable",
        "title": "Service temporarily unavailable",
        "status": 503,
        "detail": (
            "The service could not reach its state store, so nothing was executed. "
            "Retry the same request (with the same idempotency key) in 4 seconds."
        ),
        "code": "store_unavailable",
        "request_id": "req-1",
        "retry_after": 4,
    }
    # Retry-After says when the store is next tried: 4 s after the failure, 2.5 s later on.
    assert first.headers["retry-after"] == "4"
    assert second.headers["retry-after"] == "3"
    assert second.json()["retry_after"] == 3


@pytest.mark.parametrize(
    ("amount", "workers", "share"), [(10, 3, 3), (7, 2, 3), (2, 4, 1), (5, 1, 5)]
)
async def test_local_fallback_admits_floor_of_limit_over_workers_per_process(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    backend: Backend,
    events: list[Event],
    amount: int,
    workers: int,
    share: int,
) -> None:
    store.down("acquire")
    policy = RateLimitPolicy(
        "default", limits=[f"{amount}/minute"], on_store_error="local_fallback"
    )
    # Two middlewares are two worker processes: each has its own share.
    for _ in range(2):
        async with make_client(policy, fallback_workers=workers) as c:
            responses = [await c.get("/") for _ in range(share + 1)]
        assert [r.status_code for r in responses] == [200] * share + [429]
        refused = responses[-1]
        assert refused.json()["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
        assert f'"default";q={share};w=60' == responses[0].headers["ratelimit-policy"]
    assert backend.calls == 2 * share
    assert {e.action for e in of(events, RateLimitStoreBypassed)} == {"local_fallback"}
    assert of(events, RateLimitStoreFailed)[0].action == "local_fallback"


async def test_local_fallback_divides_bursts_and_frees_concurrency_slots_locally(
    make_client: Callable[..., httpx.AsyncClient], store: FlakyStore
) -> None:
    store.down("acquire")
    policies = [
        RateLimitPolicy(
            "bucket",
            limits=[Limit(100, 60, algorithm="token_bucket", burst=9)],
            on_store_error="local_fallback",
        ),
        RateLimitPolicy(
            "inflight",
            limits=[Limit(2, 1, algorithm="concurrency")],
            on_store_error="local_fallback",
        ),
    ]
    async with make_client(*policies, fallback_workers=2) as c:
        responses = [await c.get("/") for _ in range(5)]
    # A burst of 9 over 2 workers is 4; the one concurrency slot comes back after each request.
    assert [r.status_code for r in responses] == [200] * 4 + [429]
    assert responses[-1].json()["violated-policies"] == ["bucket"]


async def test_mixed_policies_the_strictest_choice_wins(
    make_client: Callable[..., httpx.AsyncClient], store: FlakyStore, backend: Backend
) -> None:
    store.down("acquire")
    open_ = RateLimitPolicy("open", limits=["1/minute"])
    local = RateLimitPolicy("local", limits=["2/minute"], on_store_error="local_fallback")
    closed = RateLimitPolicy("closed", limits=["9/minute"], on_store_error="fail_closed")
    shadow_closed = RateLimitPolicy(
        "trial", limits=["1/minute"], on_store_error="fail_closed", shadow=True
    )
    async with make_client(open_, local, shadow_closed, fallback_workers=1) as c:
        statuses = [(await c.get("/")).status_code for _ in range(3)]
    # open admits anything, a shadow policy never closes: the local policy decides alone.
    assert statuses == [200, 200, 429]
    async with make_client(open_, local, closed, fallback_workers=1) as c:
        assert (await c.get("/")).status_code == 503


async def test_backoff_then_recovery_by_itself_with_one_event_each(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    clock: ManualClock,
    events: list[Event],
) -> None:
    policy = RateLimitPolicy("default", limits=["100/minute"], on_store_error="fail_closed")
    async with make_client(policy) as c:
        assert (await c.get("/")).status_code == 200
        store.down("acquire")
        statuses = [(await c.get("/")).status_code for _ in range(3)]  # 1 call, 2 skipped
        assert (statuses, store.calls["acquire"]) == ([503, 503, 503], 2)
        clock.advance(0.25)
        assert (await c.get("/")).status_code == 503
        assert store.calls["acquire"] == 2  # no store call between probes
        clock.advance(0.25)
        assert (await c.get("/")).status_code == 503  # the probe, at 0.5 s: it fails
        assert store.calls["acquire"] == 3
        clock.advance(0.75)  # the wait doubled to 1 s
        await c.get("/")
        assert store.calls["acquire"] == 3
        store.up()  # the store is back; nobody notices before the next probe
        assert (await c.get("/")).status_code == 503
        clock.advance(0.25)
        assert (await c.get("/")).status_code == 200  # the probe succeeds
        assert [(await c.get("/")).status_code for _ in range(2)] == [200, 200]
        assert store.calls["acquire"] == 6  # healthy again: every request calls the store
    [down] = of(events, StoreDown)
    [recovered] = of(events, StoreRecovered)
    assert (down.at, recovered.at) == (T0, T0 + 1.5)
    assert (recovered.duration, recovered.failed_probes, recovered.layer) == (1.5, 1, "ratelimit")
    assert [e.error for e in of(events, RateLimitStoreFailed)] == ["ConnectionError"] * 2
    assert len(of(events, RateLimitStoreBypassed)) == 5


async def test_requests_in_flight_when_the_store_fails_make_one_outage_event(
    make_client: Callable[..., httpx.AsyncClient], store: FlakyStore, events: list[Event]
) -> None:
    store.stall("acquire")
    store.down("acquire")
    async with make_client(RateLimitPolicy("default", limits=["1/minute"])) as c:
        tasks = [asyncio.create_task(c.get("/")) for _ in range(4)]
        await store.wait_for_calls(4, "acquire")
        store.resume()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 4
    assert len(of(events, RateLimitStoreFailed)) == 4
    assert len(of(events, StoreDown)) == 1


async def test_a_hanging_store_is_cut_off_by_the_guard_once_then_skipped(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    events: list[Event],
) -> None:
    store.stall("acquire")
    policy = RateLimitPolicy("default", limits=["1/minute"], on_store_error="fail_closed")
    async with make_client(policy, store_timeout=0.05) as c:
        first = await c.get("/")
        second = await c.get("/")
    assert (first.status_code, second.status_code) == (503, 503)
    assert store.calls["acquire"] == 1
    [failed] = of(events, RateLimitStoreFailed)
    assert failed.error == "TimeoutError"
    assert of(events, StoreDown)[0].error == "TimeoutError"


async def test_one_store_health_shared_by_two_limiters(
    make_client: Callable[..., httpx.AsyncClient], store: FlakyStore, events: list[Event]
) -> None:
    health = StoreHealth(jitter=0)
    store.down("acquire")
    policy = RateLimitPolicy("default", limits=["1/minute"])
    async with (
        make_client(policy, store_health=health) as a,
        make_client(policy, store_health=health) as b,
    ):
        await a.get("/")
        await b.get("/")
    assert store.calls["acquire"] == 1
    assert len(of(events, StoreDown)) == 1


async def test_concurrency_slots_are_not_released_into_a_store_that_is_down() -> None:
    watching = FlakyStore(MemoryStore())
    health = StoreHealth(jitter=0)
    policy = RateLimitPolicy("inflight", limits=[Limit(5, 1, algorithm="concurrency")])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # The store fails while this request runs (another request found the outage).
        health.failed(health.permit(T0), T0)
        await PlainTextResponse("ok")(scope, receive, send)

    mw = RateLimitMiddleware(app, store=watching, policies=[policy], store_health=health, hooks=[])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(mw), base_url="http://t") as c:
        assert (await c.get("/")).status_code == 200
    assert watching.calls["release"] == 0  # left to its lease


async def test_a_cancelled_probe_lets_the_next_request_probe_at_once(
    make_client: Callable[..., httpx.AsyncClient], store: FlakyStore, clock: ManualClock
) -> None:
    policy = RateLimitPolicy("default", limits=["100/minute"], on_store_error="fail_closed")
    async with make_client(policy) as c:
        store.down("acquire")
        await c.get("/")
        clock.advance(0.5)
        store.up()
        store.stall("acquire")
        probe = asyncio.create_task(c.get("/"))
        await store.wait_for_calls(2, "acquire")
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        store.resume()
        assert (await c.get("/")).status_code == 200  # no new wait: it probed, and it worked
    assert store.calls["acquire"] == 3


async def test_a_failed_release_never_reaches_the_client(
    make_client: Callable[..., httpx.AsyncClient], store: FlakyStore
) -> None:
    store.down("release")
    policy = RateLimitPolicy("inflight", limits=[Limit(1, 1, algorithm="concurrency")])
    async with make_client(policy) as c:
        r = await c.get("/")
    assert r.status_code == 200
    assert r.text == "ok"


async def test_fastapi_dependency_fails_closed_with_a_problem(store: FlakyStore) -> None:
    store.down("acquire")
    app = FastAPI()
    install_problem_handler(app)
    limit = RateLimitDependency(
        store=store,
        policies=[RateLimitPolicy("api", limits=["5/minute"], on_store_error="fail_closed")],
        hooks=[],
    )

    @app.get("/items", dependencies=[Depends(limit)])
    async def items() -> dict[str, str]:
        return {"ok": "yes"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        r = await c.get("/items")
    assert r.status_code == 503
    assert r.json()["code"] == "store_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert_no_secret(r)


async def test_event_order_of_an_outage_and_its_recovery(
    make_client: Callable[..., httpx.AsyncClient],
    store: FlakyStore,
    clock: ManualClock,
    events: list[Event],
) -> None:
    async with make_client(RateLimitPolicy("default", limits=["100/minute"])) as c:
        store.down("acquire")
        await c.get("/")
        store.up()
        clock.advance(0.5)
        await c.get("/")
    assert [type(e).__name__ for e in events] == [
        "StoreDown",
        "RateLimitStoreFailed",
        "StoreRecovered",
        "RateLimitAllowed",
    ]


# -- configuration -----------------------------------------------------------------------------


def test_local_fallback_needs_the_worker_count(store: FlakyStore) -> None:
    policy = RateLimitPolicy("search", limits=["30/minute"], on_store_error="local_fallback")
    with pytest.raises(ConfigurationError) as info:
        RateLimitMiddleware(Backend().app(), store=store, policies=[policy])
    assert str(info.value).startswith(
        "RateLimitPolicy 'search'.on_store_error: 'local_fallback' expects the rate limiter's "
        "fallback_workers"
    )
    mw = RateLimitMiddleware(
        Backend().app(), store=store, policies=[RateLimitPolicy("a", limits=["1/second"])]
    )
    with pytest.raises(ConfigurationError, match=re.escape("'search'.on_store_error")):
        mw.update_policies([policy])  # refused at run time too; the old list stays
    assert [p.name for p in mw.policies] == ["a"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fallback_workers": 0}, "rate limiter fallback_workers: expected how many worker"),
        ({"fallback_workers": True}, "rate limiter fallback_workers: expected"),
        ({"store_timeout": 0}, "rate limiter store_timeout: expected seconds > 0 or None, got 0"),
        ({"store_health": object()}, "rate limiter store_health: expected a surefoot.storage"),
    ],
)
def test_limiter_options_are_validated(
    store: FlakyStore, kwargs: dict[str, Any], message: str
) -> None:
    policy = RateLimitPolicy("a", limits=["1/second"])
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        RateLimitMiddleware(Backend().app(), store=store, policies=[policy], **kwargs)


def test_policy_on_store_error_is_validated() -> None:
    with pytest.raises(ConfigurationError) as info:
        RateLimitPolicy("api", limits=["1/second"], on_store_error="fail_soft")  # type: ignore[arg-type]
    assert str(info.value) == (
        "RateLimitPolicy 'api'.on_store_error: expected 'fail_open', 'fail_closed' or "
        "'local_fallback', got 'fail_soft'"
    )
