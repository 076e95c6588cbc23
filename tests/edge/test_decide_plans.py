"""Rule 7 of ``surefoot.edge._decide``: a decision planned once per original method, URI,
client address and credential headers decides exactly as one planned afresh.

The differential test plays the same random requests on two decision services of one
policy file (tiers, per-client overrides, an address ceiling with a client listed by its
address, route costs, per-route counters, a quota, a shadowed policy, concurrency slots;
method overrides allowed or not), each with a store and a clock of its own: one keeps its
plans (as served), the other forgets every one (the plan made afresh each time, as before
Rule 7). Every answer must be the same, byte for byte: status, fields and body. The
requests mix what the key holds (methods, URIs in every form, known, unknown and repeated
credentials, forwarding headers from the edge and from a client) with what it must not
depend on (other headers).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surefoot.edge import DecisionApp
from surefoot.gateway import config_from_dict
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

EDGE, CLIENT, LISTED = "10.0.0.5", "203.0.113.7", "198.51.100.9"

POLICY: dict[str, Any] = {
    "upstream": {"url": "http://upstream.test"},
    "stores": {"default": "memory://"},
    "server": {"trusted_proxies": ["10.0.0.0/8"]},
    "admin": {"enabled": False},
    "identity": {"address_limits": ["9/minute"]},
    "clients": [
        {"name": "acme", "api_key": "key-a", "tier": "partner"},
        {"name": "beta", "api_key": "key-b"},
        {"name": "office", "address": LISTED},
    ],
    "rate_limit": {
        "policies": [
            {
                "name": "reads",
                "limits": ["4/minute"],
                "routes": ["GET /orders", "GET /orders/{id}"],
                "costs": {"GET /orders/{id}": 2},
                "tiers": {"partner": ["6/minute"]},
                "overrides": {"beta": ["1/minute"]},
            },
            {
                "name": "items",
                "limits": ["2/minute"],
                "routes": ["/items/{id}"],
                "per_route": True,
            },
            {"name": "daily", "algorithm": "quota", "limits": ["5/day"], "routes": ["POST /*"]},
            {"name": "peek", "limits": ["1/minute"], "routes": ["GET /*"], "shadow": True},
            {
                "name": "jobs",
                "algorithm": "concurrency",
                "limits": ["1/second"],
                "routes": ["/jobs"],
            },
        ]
    },
}

METHODS = st.sampled_from(["GET", "POST", "get"])
URIS = st.sampled_from(
    [
        "/orders",
        "/orders?page=2",
        "/orders/1",
        "/orders/2",
        "/items/1",
        "/items/2",
        "/jobs",
        "/other",
        "http://api.example/orders/1",
        "/%6Frders",
        "/orders/../items/1",
        "orders",
    ]
)
CREDENTIALS = st.sampled_from(
    [
        (),
        (("authorization", "Bearer key-a"),),
        (("x-api-key", "key-a"),),
        (("x-api-key", "key-b"),),
        (("x-api-key", "stolen"),),
        (("authorization", "Bearer key-a"), ("x-api-key", "key-b")),
        (("x-api-key", "key-a"), ("x-api-key", "key-a")),
        (("authorization", "Basic a2V5LWE6"),),
    ]
)
FORWARDED = st.sampled_from([(), (("x-forwarded-for", CLIENT),), (("x-forwarded-for", LISTED),)])
OTHERS = st.sampled_from(
    [
        (),
        (("user-agent", "app/1"),),
        (("x-http-method-override", "GET"),),
        (("x-method-override", "PUT"),),
    ]
)
REQUEST = st.tuples(st.sampled_from([EDGE, CLIENT]), METHODS, URIS, CREDENTIALS, FORWARDED, OTHERS)


class _Forgetful(dict[Any, Any]):
    """A memo that keeps nothing: every request is planned afresh."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def forgetful(policy: dict[str, Any] = POLICY) -> DecisionApp:
    app = DecisionApp(config_from_dict(policy), clock=ManualClock(), store=MemoryStore())
    object.__setattr__(app.decider, "described", _Forgetful())
    app.decider.limiter.limiter._prepared = _Forgetful()
    return app


async def answer(app: DecisionApp, request: Any, number: int) -> tuple[int, list[Any], bytes]:
    peer, method, uri, credentials, forwarded, others = request
    headers = [
        ("x-original-method", method),
        ("x-original-uri", uri),
        ("x-request-id", f"{number:032x}"),
        *credentials,
        *forwarded,
        *others,
    ]
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://decide") as client:
        response = await client.get("/decide", headers=headers)
    # From a client that is not the edge the request id is made up: the same for both.
    made_up = response.headers["x-request-id"].encode()
    fields = [(k, v.encode().replace(made_up, b"<id>")) for k, v in response.headers.multi_items()]
    return response.status_code, fields, response.content.replace(made_up, b"<id>")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # A few requests, sharing parts of what the key holds, each sent again and again.
    pool=st.lists(REQUEST, min_size=1, max_size=5),
    picks=st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.5, 7.0])), max_size=30),
    reload=st.booleans(),
    overrides=st.booleans(),
)
async def test_a_kept_plan_decides_as_a_plan_made_afresh(
    pool: list[Any], picks: list[tuple[int, float]], reload: bool, overrides: bool
) -> None:
    server = {**POLICY["server"], "allow_method_override": overrides}
    policy = {**POLICY, "server": server}
    keeps = DecisionApp(config_from_dict(policy), clock=ManualClock(), store=MemoryStore())
    afresh = forgetful(policy)
    for number, (pick, wait) in enumerate(picks):
        request = pool[pick % len(pool)]
        for app in (keeps, afresh):
            app.clock.advance(wait)  # type: ignore[attr-defined]
        kept = await answer(keeps, request, number)
        made = await answer(afresh, request, number)
        assert kept == made, request
        if reload and number == len(picks) // 2:  # a reload starts afresh (Rule 7)
            await keeps.reload(config_from_dict(policy))
            assert keeps.decider.described == {}
    assert len(afresh.decider.described) == 0  # the reference kept nothing


async def test_the_same_request_is_planned_once_and_counted_every_time() -> None:
    clock = ManualClock()
    app = DecisionApp(config_from_dict(POLICY), clock=clock, store=MemoryStore())
    request = (EDGE, "GET", "/orders/1", (("x-api-key", "key-a"),), (), ())
    # key-a is a partner: 6 a minute, a cost of 2 on /orders/{id}.
    statuses = [(await answer(app, request, n))[0] for n in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert len(app.decider.described) == 1
    [(key, _)] = app.decider.limiter.limiter._prepared.items()
    assert key == (b"GET", b"/orders/1", EDGE, (b"x-api-key", b"key-a"))


@pytest.mark.parametrize(
    ("request_", "described"),
    [
        # A concurrency slot takes a token of its own: the request is described once,
        # its plan is made every time.
        ((EDGE, "POST", "/jobs", (), (), ()), 1),
        ((EDGE, "POST", "/orders", (), (), (("x-http-method-override", "GET"),)), 0),
        ((EDGE, "GET", "/orders/../items/1", (), (), ()), 0),  # refused: not canonical
        ((EDGE, "GET", "/orders", (("x-api-key", "a"), ("x-api-key", "b")), (), ()), 0),
        ((EDGE, "GET", "/orders?" + "q" * 1000, (("x-api-key", "k" * 20),), (), ()), 0),
    ],
)
async def test_what_is_never_kept(request_: Any, described: int) -> None:
    app = DecisionApp(config_from_dict(POLICY), clock=ManualClock(), store=MemoryStore())
    await answer(app, request_, 1)
    assert len(app.decider.described) == described
    assert app.decider.limiter.limiter._prepared == {}
