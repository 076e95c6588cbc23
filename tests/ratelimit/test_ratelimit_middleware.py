"""RateLimitMiddleware and the FastAPI dependency, as clients see them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import http_sf
import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from _support import store_error
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.idempotency import IdempotencyMiddleware
from surefoot.identity import Identity
from surefoot.ratelimit import (
    Limit,
    RateLimitDependency,
    RateLimitMiddleware,
    RateLimitPolicy,
    RateLimitRejected,
    RateLimitShadowRejected,
    RateLimitStoreFailed,
    install_problem_handler,
)
from surefoot.storage import MemoryStore
from surefoot.testing import FlakyStore, ManualClock, aassert_rate_limited

pytestmark = pytest.mark.anyio


class Backend:
    def __init__(self) -> None:
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.entered = asyncio.Condition()

    async def endpoint(self, request: Request) -> Response:
        self.calls += 1
        async with self.entered:
            self.entered.notify_all()
        await request.body()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("boom")
        return PlainTextResponse("ok", status_code=201 if request.method == "POST" else 200)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{path:path}", self.endpoint, methods=["GET", "POST"]),
            ]
        )


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def make_client(
    backend: Backend, clock: ManualClock, events: list[Event]
) -> Callable[..., httpx.AsyncClient]:
    def make(
        *policies: RateLimitPolicy,
        app: Any = None,
        client: tuple[str, int] = ("203.0.113.9", 1),
        **kwargs: Any,
    ) -> httpx.AsyncClient:
        kwargs.setdefault("store", MemoryStore())
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("hooks", [events.append])
        mw = RateLimitMiddleware(app or backend.app(), policies=policies, **kwargs)
        make.last = mw  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(mw, client=client, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    return make


def parse_list(value: str) -> dict[str, dict[str, Any]]:
    """RFC 9651 List of String items -> {name: params}; fails on bad syntax."""
    out = {}
    for item, params in http_sf.parse(value.encode(), tltype="list"):
        assert isinstance(item, str), "names must be Strings"
        out[item] = dict(params)
    return out


async def test_limit_then_429_with_problem_and_headers(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    async with make_client(RateLimitPolicy("default", limits=["3/minute"])) as c:
        responses = await aassert_rate_limited(c, "GET", "/x", limit=3)
    assert backend.calls == 3
    ok, refused = responses[0], responses[-1]
    assert parse_list(ok.headers["ratelimit-policy"]) == {"default": {"q": 3, "w": 60}}
    assert parse_list(ok.headers["ratelimit"])["default"]["r"] == 2
    doc = refused.json()
    assert doc["code"] == "rate_limit_exceeded"
    assert doc["policy"] == "default"
    assert doc["violated-policies"] == ["default"]
    assert doc["retry_after"] == int(refused.headers["retry-after"])
    assert (
        "You have exceeded 3 requests per minute for policy 'default'. Try again in"
        in doc["detail"]
    )
    state = parse_list(refused.headers["ratelimit"])["default"]
    assert state["r"] == 0
    # The draft: Retry-After no earlier than t.
    assert int(refused.headers["retry-after"]) >= state["t"]


async def test_retry_after_is_honest(
    make_client: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    async with make_client(
        RateLimitPolicy("p", limits=["2/minute"], algorithm="fixed_window")
    ) as c:
        clock.set(1_700_000_010.0)  # 10 s into a fixed window (windows start at multiples of 60)
        await c.get("/")
        await c.get("/")
        refused = await c.get("/")
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        assert wait == 1_700_000_040 - 1_700_000_010  # the window ends at ...040
        clock.advance(wait - 1)
        assert (await c.get("/")).status_code == 429
        clock.advance(1)
        assert (await c.get("/")).status_code == 200


JAN_1_2026 = 1_767_225_600.0  # 00:00 UTC, the start of a 31-day month (and a 10 s window)

# Each limit admits `capacity` requests at one instant, then refuses.
T_LIMITS = [
    pytest.param(Limit(5, 10, algorithm="fixed_window"), 5, id="fixed_window"),
    pytest.param(Limit(5, 10, algorithm="sliding_log"), 5, id="sliding_log"),
    # The case: a burst at a window's start used to answer t=20 with w=10.
    pytest.param(Limit(5, 10, algorithm="sliding_window"), 5, id="sliding_window"),
    pytest.param(Limit(5, 10, algorithm="token_bucket", burst=8), 8, id="token_bucket"),
    pytest.param(Limit(5, 10, algorithm="leaky_bucket", burst=8), 8, id="leaky_bucket"),
    pytest.param(Limit(5, 10, algorithm="gcra", burst=8), 8, id="gcra"),
    pytest.param(Limit(5, 10, algorithm="leaky_queue", max_wait=0), 1, id="leaky_queue"),
    # A 31-day month is longer than the nominal 30 days: w is the month's own length.
    pytest.param(Limit(5, 30 * 86400, algorithm="quota", period="month"), 5, id="quota-month"),
]


@pytest.mark.parametrize(("limit", "capacity"), T_LIMITS)
async def test_t_is_when_more_is_available_and_never_more_than_w(
    make_client: Callable[..., httpx.AsyncClient],
    clock: ManualClock,
    limit: Limit,
    capacity: int,
) -> None:
    # Read as a client would, with an RFC 9651 parser: t is the whole seconds until more
    # quota is available (draft-10, issue #149), at most w; on the 429 it is Retry-After.
    clock.set(JAN_1_2026 + 1)
    async with make_client(RateLimitPolicy("p", limits=[limit])) as c:
        responses = [await c.get("/") for _ in range(capacity + 1)]
        assert [r.status_code for r in responses] == [200] * capacity + [429]
        for r in responses:
            [(name, policy)] = parse_list(r.headers["ratelimit-policy"]).items()
            state = parse_list(r.headers["ratelimit"])[name]
            assert isinstance(state["t"], int)
            assert 0 < state["t"] <= policy["w"], (r.headers["ratelimit"], policy)
        if limit.algorithm == "quota":
            assert policy["w"] == 31 * 86400
        refused = parse_list(responses[-1].headers["ratelimit"])["p"]
        assert refused["t"] == int(responses[-1].headers["retry-after"])
        last = parse_list(responses[capacity - 1].headers["ratelimit"])["p"]
        assert last["r"] == 0
        # Waiting t, one more request is admitted; a second sooner, not yet.
        clock.advance(last["t"] - 1)
        assert (await c.get("/")).status_code == 429
        clock.advance(1)
        assert (await c.get("/")).status_code == 200


async def test_t_is_0_for_a_limit_with_nothing_used(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    # The minute limit turns the request away (it costs more than it ever admits), so
    # the hour limit is charged nothing: full, nothing more will come, t=0.
    policies = [
        RateLimitPolicy("minute", limits=["2/minute"], costs={"GET /big": 3}),
        RateLimitPolicy("hour", limits=["100/hour"]),
    ]
    async with make_client(*policies) as c:
        refused = await c.get("/big")
        ok = await c.get("/")
    assert refused.status_code == 429
    assert parse_list(refused.headers["ratelimit"])["hour"] == {"r": 100, "t": 0}
    # Once something is used, more comes back: the request leaves the last hour.
    assert parse_list(ok.headers["ratelimit"]) == {
        "minute": {"r": 1, "t": 60},
        "hour": {"r": 99, "t": 3600},
    }


async def test_several_limits_all_must_allow_and_are_named(
    make_client: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    async with make_client(
        RateLimitPolicy("api", limits=["5/minute", "2/second"], algorithm="sliding_log")
    ) as c:
        r1 = await c.get("/")
        assert parse_list(r1.headers["ratelimit-policy"]) == {
            "api-60s": {"q": 5, "w": 60},
            "api-1s": {"q": 2, "w": 1},
        }
        await c.get("/")
        refused = await c.get("/")
        assert refused.json()["violated-policies"] == ["api-1s"]
        states = parse_list(refused.headers["ratelimit"])
        assert states["api-60s"]["r"] == 3  # not charged for the refused request
        for _ in range(3):
            clock.advance(1)
            assert (await c.get("/")).status_code == 200
        assert (await c.get("/")).json()["violated-policies"] == ["api-60s"]


async def test_principals_are_isolated(make_client: Callable[..., httpx.AsyncClient]) -> None:
    async with make_client(RateLimitPolicy("default", limits=["2/minute"])) as c:
        await aassert_rate_limited(c, "GET", "/", limit=2, principal="key-a")
        await aassert_rate_limited(c, "GET", "/", limit=2, principal="key-b")
        await aassert_rate_limited(c, "GET", "/", limit=2, principal={"authorization": "Bearer x"})
        # The address-based principal is untouched by the keyed clients.
        assert (await c.get("/")).status_code == 200


async def test_spoofed_forwarding_headers_change_nothing(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    policy = RateLimitPolicy("default", limits=["2/minute"])
    async with make_client(policy, principal=Identity(trusted_proxies=["10.0.0.0/8"])) as c:
        for n in range(3):
            spoof = {"x-forwarded-for": f"198.51.100.{n}", "forwarded": f"for=198.51.100.{n}"}
            r = await c.get("/", headers=spoof)
        assert r.status_code == 429  # all three counted against the real peer 203.0.113.9


async def test_trusted_proxy_chain_is_followed(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    policy = RateLimitPolicy("default", limits=["1/minute"])
    identity = Identity(trusted_proxies=["10.0.0.0/8"])
    async with make_client(policy, principal=identity, client=("10.0.0.5", 1)) as c:
        # The client spoofs a first hop; our proxies appended the real address.
        r = await c.get("/", headers={"x-forwarded-for": "1.1.1.1, 198.51.100.7, 10.0.0.9"})
        assert r.status_code == 200
        r = await c.get("/", headers={"x-forwarded-for": "2.2.2.2, 198.51.100.7, 10.0.0.9"})
        assert r.status_code == 429  # the same real client, whatever it claims before
        r = await c.get("/", headers={"x-forwarded-for": "198.51.100.8"})
        assert r.status_code == 200


async def test_tiers_overrides_allowlist_exemptions_and_costs(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    from surefoot.identity import hash_credential

    vip = hash_credential(b"vip")
    policy = RateLimitPolicy(
        "default",
        limits=["1/minute"],
        tiers={"pro": ["3/minute"]},
        overrides={vip: ["5/minute"]},
        allow=[hash_credential(b"ops")],
        exempt=["/health"],
        costs={"POST /export": 2},
    )

    def tier(scope: Any, principal: str) -> str | None:
        return "pro" if dict(scope["headers"]).get(b"x-plan") == b"pro" else None

    async with make_client(policy, tier=tier) as c:
        await aassert_rate_limited(c, "GET", "/", limit=1, principal="free")
        await aassert_rate_limited(
            c, "GET", "/", limit=3, principal={"x-api-key": "p", "x-plan": "pro"}
        )
        await aassert_rate_limited(c, "GET", "/", limit=5, principal="vip")
        for _ in range(10):
            assert (await c.get("/", headers={"x-api-key": "ops"})).status_code == 200
            assert (await c.get("/health", headers={"x-api-key": "free"})).status_code == 200
        pro = {"x-api-key": "p2", "x-plan": "pro"}
        assert (await c.post("/export", headers=pro)).status_code == 201  # costs 2 of 3
        assert (await c.post("/export", headers=pro)).status_code == 429
        assert (await c.get("/", headers=pro)).status_code == 200  # 1 left


async def test_policies_cover_only_their_routes_and_per_route_counts(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    search = RateLimitPolicy(
        "search", limits=["1/minute"], routes=["GET /search/{kind}"], per_route=True
    )
    async with make_client(search) as c:
        assert (await c.get("/search/a")).status_code == 200
        assert (await c.get("/search/b")).status_code == 429  # the template is the route
        assert (await c.get("/other")).status_code == 200
        assert "ratelimit" not in (await c.get("/other")).headers


async def test_shadow_policy_reports_but_never_rejects(
    make_client: Callable[..., httpx.AsyncClient], events: list[Event], backend: Backend
) -> None:
    async with make_client(RateLimitPolicy("trial", limits=["2/minute"], shadow=True)) as c:
        for _ in range(5):
            r = await c.get("/")
            assert r.status_code == 200
            assert "ratelimit" not in r.headers  # a shadow policy is not advertised
    shadow = [e for e in events if isinstance(e, RateLimitShadowRejected)]
    assert len(shadow) == 3
    assert shadow[0].policy == "trial"
    assert not [e for e in events if isinstance(e, RateLimitRejected)]
    assert backend.calls == 5


async def test_shadow_and_enforced_policies_together(
    make_client: Callable[..., httpx.AsyncClient], events: list[Event]
) -> None:
    enforced = RateLimitPolicy("hard", limits=["3/minute"])
    trial = RateLimitPolicy("soft", limits=["1/minute"], shadow=True)
    async with make_client(enforced, trial) as c:
        statuses = [(await c.get("/")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # Reported on every request the shadow policy would have refused, the last one too.
    assert len([e for e in events if isinstance(e, RateLimitShadowRejected)]) == 3


async def test_policies_swap_at_run_time_keeping_counters(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_client(RateLimitPolicy("default", limits=["2/minute"])) as c:
        mw = make_client.last  # type: ignore[attr-defined]
        await c.get("/")
        await c.get("/")
        assert (await c.get("/")).status_code == 429
        mw.update_policies([RateLimitPolicy("default", limits=["3/minute"])])
        assert (await c.get("/")).status_code == 200  # 2 used of the new 3
        assert (await c.get("/")).status_code == 429
        with pytest.raises(ConfigurationError, match="names must be unique"):
            mw.update_policies(
                [RateLimitPolicy("a", limits=["1/s"]), RateLimitPolicy("a", limits=["1/s"])]
            )
        assert mw.policies[0].limits[0].amount == 3  # the bad update changed nothing


async def test_leaky_queue_delays_then_rejects(
    make_client: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RateLimitPolicy("smooth", limits=[Limit(2, 1, algorithm="leaky_queue", max_wait=1.0)])
    async with make_client(policy, sleep=sleep) as c:
        statuses = [(await c.get("/")).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert slept == [0.5, 1.0]  # spaced 0.5 s apart, up to max_wait


async def test_concurrency_slots_are_freed_when_responses_end(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    policy = RateLimitPolicy("inflight", limits=[Limit(2, 1, algorithm="concurrency")])
    async with make_client(policy) as c:
        backend.gate = asyncio.Event()
        first = [asyncio.create_task(c.get("/")) for _ in range(2)]
        async with backend.entered:
            await backend.entered.wait_for(lambda: backend.calls >= 2)
        refused = await c.get("/")
        assert refused.status_code == 429
        assert refused.json()["code"] == "concurrency_limit_exceeded"
        assert (
            parse_list(refused.headers["ratelimit-policy"])["inflight"]["qu"]
            == "concurrent-requests"
        )
        # No t while a slot is free (it comes back when a response ends, not at a time);
        # the refusal's t is its Retry-After.
        assert parse_list(refused.headers["ratelimit"])["inflight"] == {"r": 0, "t": 1}
        assert refused.headers["retry-after"] == "1"
        backend.gate.set()
        answered = [await t for t in first]
        assert [r.status_code for r in answered] == [200, 200]
        states = [parse_list(r.headers["ratelimit"])["inflight"] for r in answered]
        assert sorted(states, key=lambda state: state["r"]) == [{"r": 0}, {"r": 1}]
        backend.gate = None
        backend.fail = True
        assert (await c.get("/")).status_code == 500  # the app raised: the slot still comes back
        backend.fail = False
        assert (await c.get("/")).status_code == 200


async def test_concurrency_slot_of_a_cancelled_request_comes_back(
    clock: ManualClock, backend: Backend
) -> None:
    store = MemoryStore()
    policy = RateLimitPolicy("inflight", limits=[Limit(1, 1, algorithm="concurrency")])
    mw = RateLimitMiddleware(backend.app(), store=store, policies=[policy], clock=clock, hooks=[])
    backend.gate = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(mw), base_url="http://t") as c:
        task = asyncio.create_task(c.get("/"))
        async with backend.entered:
            await backend.entered.wait_for(lambda: backend.calls >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        backend.gate = None
        assert (await c.get("/")).status_code == 200


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
async def test_store_outage(
    make_client: Callable[..., httpx.AsyncClient], events: list[Event], mode: str
) -> None:
    store = FlakyStore(MemoryStore(), error=store_error(ConnectionError("redis 10.0.0.1 refused")))
    store.down("acquire")
    policy = RateLimitPolicy("default", limits=["1/minute"], on_store_error=mode)  # type: ignore[arg-type]
    async with make_client(policy, store=store) as c:
        r = await c.get("/")
    assert "10.0.0.1" not in r.text
    if mode == "fail_open":
        assert r.status_code == 200
    else:
        assert r.status_code == 503
        assert r.json()["code"] == "store_unavailable"
    [failed] = [e for e in events if isinstance(e, RateLimitStoreFailed)]
    assert (failed.action, failed.error) == (mode, "ConnectionError")


async def test_legacy_headers(
    make_client: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    policy = RateLimitPolicy("default", limits=["2/minute"], algorithm="fixed_window")
    async with make_client(policy, legacy_headers=True, legacy_reset="epoch") as c:
        r = await c.get("/")
    assert r.headers["x-ratelimit-limit"] == "2"
    assert r.headers["x-ratelimit-remaining"] == "1"
    assert r.headers["x-ratelimit-reset"] == "1700000040"
    async with make_client(policy, headers=False, legacy_headers=True) as c:
        r = await c.get("/")
    assert "ratelimit" not in r.headers
    assert r.headers["x-ratelimit-reset"] == "40"


async def test_quota_problem(make_client: Callable[..., httpx.AsyncClient]) -> None:
    policy = RateLimitPolicy("monthly", limits=["2/month"], algorithm="quota")
    async with make_client(policy) as c:
        responses = await aassert_rate_limited(c, "GET", "/", limit=2)
    doc = responses[-1].json()
    assert doc["code"] == "quota_exceeded"
    assert "You have used your quota of 2 requests per month for policy 'monthly'" in doc["detail"]


async def test_rate_limit_outside_idempotency_never_stores_a_429(
    clock: ManualClock, backend: Backend
) -> None:
    store = MemoryStore()
    inner = IdempotencyMiddleware(backend.app(), store=store, clock=clock, hooks=[])
    app = RateLimitMiddleware(
        inner,
        store=store,
        policies=[RateLimitPolicy("w", limits=["1/minute"], algorithm="fixed_window")],
        clock=clock,
        hooks=[],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        headers = {"Idempotency-Key": "k"}
        assert (await c.post("/charge", headers=headers)).status_code == 201
        assert (await c.post("/charge", headers={"Idempotency-Key": "k2"})).status_code == 429
        clock.advance(60)
        r = await c.post("/charge", headers={"Idempotency-Key": "k2"})
        assert r.status_code == 201  # executed now: the 429 was never recorded
        assert "idempotent-replayed" not in r.headers
    assert backend.calls == 2


async def test_non_http_scopes_pass(clock: ManualClock) -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = RateLimitMiddleware(
        app, store=MemoryStore(), policies=[RateLimitPolicy("d", limits=["1/s"])]
    )
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


def test_configuration_errors() -> None:
    class Partial(MemoryStore):
        rate_limit_algorithms = frozenset({"token_bucket"})

    with pytest.raises(
        ConfigurationError, match="algorithm 'sliding_window' is not supported by Partial"
    ):
        RateLimitMiddleware(
            lambda *a: None, store=Partial(), policies=[RateLimitPolicy("d", limits=["1/s"])]
        )  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="expected a RateLimitStore"):
        RateLimitMiddleware(lambda *a: None, store=object(), policies=[])  # type: ignore[arg-type]


# -- FastAPI dependency -------------------------------------------------------------------------


@pytest.fixture
async def fastapi_client(clock: ManualClock) -> AsyncIterator[httpx.AsyncClient]:
    api = FastAPI()
    install_problem_handler(api)
    limit = RateLimitDependency(
        store=MemoryStore(),
        policies=[RateLimitPolicy("search", limits=["2/minute"])],
        clock=clock,
        hooks=[],
    )
    slots = RateLimitDependency(
        store=MemoryStore(),
        policies=[RateLimitPolicy("slots", limits=[Limit(1, 1, algorithm="concurrency")])],
        clock=clock,
        hooks=[],
    )

    @api.get("/search", dependencies=[Depends(limit)])
    async def search() -> dict[str, str]:
        return {"hits": "none"}

    @api.get("/slow", dependencies=[Depends(slots)])
    async def slow() -> dict[str, str]:
        return {"done": "yes"}

    @api.get("/free")
    async def free() -> dict[str, str]:
        return {"free": "yes"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url="http://t") as c:
        yield c


async def test_fastapi_dependency(fastapi_client: httpx.AsyncClient) -> None:
    responses = await aassert_rate_limited(fastapi_client, "GET", "/search", limit=2)
    assert parse_list(responses[0].headers["ratelimit"])["search"]["r"] == 1
    assert responses[-1].json()["code"] == "rate_limit_exceeded"
    assert responses[-1].headers["x-request-id"] == responses[-1].json()["request_id"]
    for _ in range(3):
        assert (await fastapi_client.get("/free")).status_code == 200
        assert (await fastapi_client.get("/slow")).status_code == 200  # the slot is freed each time
