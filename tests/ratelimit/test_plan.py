"""The rate limiter's compiled plan decides what the policies' own methods decide (Rule 1)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.ratelimit import Limit, RateLimitPolicy, limit_key
from surefoot.ratelimit._headers import policy_field
from surefoot.ratelimit._plan import Plan

POLICIES = (
    RateLimitPolicy("all", limits=["10/second", "100/hour"]),
    RateLimitPolicy(
        "charges",
        limits=["5/minute"],
        algorithm="gcra",
        routes=["POST /v1/charges*", "GET /v1/charges/{id}"],
        costs={"POST /v1/charges/export": 7},
        per_route=True,
        tiers={"pro": ["50/minute", Limit(3, 1, algorithm="concurrency")]},
        overrides={"cred:vip": ["500/minute"]},
    ),
    RateLimitPolicy("open", limits=["30/minute"], exempt=["GET /health"], allow=["cred:ops"]),
    RateLimitPolicy("quota", limits=["1000/day"], algorithm="quota", shadow=True),
)

methods = st.sampled_from(["GET", "HEAD", "POST", "PUT"])
paths = st.sampled_from(
    ["/health", "/Health", "/v1/charges", "/v1/charges/", "/v1/charges/ch_1", "/v1/charges/export"]
)
principals = st.sampled_from(["cred:a", "cred:vip", "cred:ops", "addr:10.0.0.1"])
tiers = st.sampled_from([None, "pro", "free"])


@settings(max_examples=300, deadline=None)
@given(
    policies=st.lists(
        st.sampled_from(POLICIES), min_size=1, max_size=4, unique_by=lambda p: p.name
    ),
    method=methods,
    path=paths,
    principal=principals,
    tier=tiers,
)
def test_the_plan_decides_what_the_policies_decide(
    policies: list[RateLimitPolicy], method: str, path: str, principal: str, tier: str | None
) -> None:
    plan = Plan(policies)
    expected = [(p, p.route_for(method, path)) for p in policies]
    covering = [(p, route) for p, route in expected if route is not None]
    assert [(c.policy, route) for c, route in plan.covering(method, path)] == covering
    for compiled, route in plan.covering(method, path):
        policy = compiled.policy
        assert (principal in compiled.allow) == (principal in policy.allow)
        assert compiled.cost_for(method, path) == policy.cost_for(method, path)
        limits = compiled.limits_for(principal, tier)
        assert limits.limits == policy.limits_for(principal, tier)
        scoped = route if policy.per_route else ""
        items = limits.items(principal, scoped)
        assert [i.key for i in items] == [
            limit_key(policy.name, limit, principal, scoped) for limit in limits.limits
        ]
        assert [i.limit for i in items] == list(limits.limits)
        assert all(i.enforce is not policy.shadow for i in items)
        quota = any(limit.algorithm == "quota" for limit in limits.limits)
        assert limits.policy_field == (None if quota else policy_field(limits.slots, now=0.0))
        fresh = limits.fresh(items, 3)
        assert [i.key for i in fresh] == [i.key for i in items]
        assert all(i.cost == 3 for i in fresh)
        assert all(bool(i.token) == (i.algorithm == "concurrency") for i in fresh)


def test_the_flags_of_a_plan() -> None:
    everywhere = Plan([POLICIES[0], POLICIES[3]])
    assert everywhere.covering("GET", "/x") is everywhere.covering("POST", "/y")
    assert everywhere.shadow
    assert not everywhere.concurrency
    assert not everywhere.queued
    routed = Plan(POLICIES[:2])
    assert routed.concurrency
    assert not routed.shadow
    queued = Plan([RateLimitPolicy("q", limits=["5/second"], algorithm="leaky_queue")])
    assert queued.queued


def test_a_limit_of_several_is_named_by_its_window() -> None:
    plan = Plan(POLICIES[:2])
    assert [s.name for s in plan.policies[0].default.slots] == ["all-1s", "all-3600s"]
    assert [s.name for s in plan.policies[1].default.slots] == ["charges"]
    assert [s.name for s in plan.policies[1].tiers["pro"].slots] == [
        "charges-60s",
        "charges-concurrency",
    ]
