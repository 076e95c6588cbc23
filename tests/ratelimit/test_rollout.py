"""Staged rollouts (``Rollout``, ``_policy`` Rule 1): a policy enforced for a named list
and a share of principals chosen by a stable hash, shadowed for the others; the same
choice in every process, and raising the share never releases anyone."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from _support import of
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.identity import hash_credential
from surefoot.ratelimit import (
    RateLimitMiddleware,
    RateLimitPolicy,
    RateLimitRejected,
    RateLimitShadowRejected,
    Rollout,
)
from surefoot.ratelimit._plan import Plan
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock


def reference(policy: str, principal: str, percent: float, listed: Iterable[str]) -> bool:
    """Rule 1, written again with exact fractions."""
    if principal in set(listed):
        return True
    digest = hashlib.sha256(policy.encode() + b"\x00" + principal.encode()).digest()
    return Fraction(int.from_bytes(digest[:8], "big") * 100, 2**64) < Fraction(percent)


def enforced(policy: RateLimitPolicy, principals: Iterable[str]) -> set[str]:
    return {p for p in principals if policy.enforced_for(p)}


def staged(percent: float, listed: Iterable[str] = (), name: str = "reads") -> RateLimitPolicy:
    return RateLimitPolicy(
        name, limits=["2/minute"], rollout=Rollout(percent=percent, principals=listed)
    )


SYNTHETIC = [f"cred:{n:08x}" for n in range(20_000)]

# -- the rule, case by case -------------------------------------------------------------------


def test_the_buckets_are_pinned() -> None:
    """A bucket that moved between versions would change who is enforced on upgrade."""
    assert Rollout.bucket("reads", "cred:b") == pytest.approx(5.048594478933216, abs=1e-12)
    assert Rollout.bucket("reads", "w") == pytest.approx(8.21883175458, abs=1e-9)
    assert Rollout.bucket("reads", "cred:a") == pytest.approx(97.39598047780345, abs=1e-12)
    assert Rollout.bucket("search", "cred:b") == pytest.approx(45.8727089045935, abs=1e-12)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (staged(10), {"cred:b", "w"}),  # buckets 5.05 and 8.22
        (staged(8.2), {"cred:b"}),
        (staged(5), set()),
        (staged(5.05), {"cred:b"}),
        (staged(0), set()),
        (staged(0, ["cred:a"]), {"cred:a"}),
        (staged(10, ["cred:a"]), {"cred:a", "cred:b", "w"}),
        (staged(100), {"cred:a", "cred:b", "cred:c", "u", "w"}),
        (staged(10, name="search"), set()),  # another policy, other buckets: cred:b at 45.9
        (staged(46, name="search"), {"cred:b", "cred:c"}),
        (RateLimitPolicy("reads", limits=["2/minute"]), {"cred:a", "cred:b", "cred:c", "u", "w"}),
        (RateLimitPolicy("reads", limits=["2/minute"], shadow=True), set()),
    ],
)
def test_who_is_enforced(policy: RateLimitPolicy, expected: set[str]) -> None:
    assert enforced(policy, ["cred:a", "cred:b", "cred:c", "u", "w"]) == expected


percents = st.floats(min_value=0, max_value=100, allow_nan=False)
names = st.text(min_size=1, max_size=12, alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.")
principal_lists = st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=40, unique=True)


@settings(max_examples=300, deadline=None)
@given(name=names, percent=percents, principals=principal_lists, data=st.data())
def test_the_enforced_principals_are_exactly_the_reference_s(
    name: str, percent: float, principals: list[str], data: st.DataObject
) -> None:
    listed = data.draw(st.lists(st.sampled_from(principals), unique=True))
    policy = staged(percent, listed, name)
    expected = {p for p in principals if reference(name, p, percent, listed)}
    assert enforced(policy, principals) == expected
    assert set(listed) <= expected  # the listed are always enforced
    # The plan puts the policy's answer on each store item (_plan Rule 1).
    plan = Plan([policy])
    assert plan.shadow
    limits = plan.policies[0].default
    for principal in principals:
        items = limits.items(principal, "")
        assert [item.enforce for item in items] == [principal in expected]


@settings(max_examples=300, deadline=None)
@given(
    name=names,
    low=percents,
    high=percents,
    principals=principal_lists,
    listed=st.lists(st.text(min_size=1, max_size=20), max_size=5),
)
def test_raising_the_percent_never_releases_anyone(
    name: str, low: float, high: float, principals: list[str], listed: list[str]
) -> None:
    low, high = min(low, high), max(low, high)
    assert enforced(staged(low, listed, name), principals) <= enforced(
        staged(high, listed, name), principals
    )


def test_a_rollout_from_10_to_50_keeps_the_first_10_percent() -> None:
    first = enforced(staged(10), SYNTHETIC)
    later = enforced(staged(50), SYNTHETIC)
    assert first < later
    assert enforced(staged(0), SYNTHETIC) == set()
    assert enforced(staged(100), SYNTHETIC) == set(SYNTHETIC)
    assert enforced(staged(0, SYNTHETIC[:3]), SYNTHETIC) == set(SYNTHETIC[:3])


@pytest.mark.parametrize("percent", [0.5, 1, 10, 33.3, 50, 90, 99.5])
def test_the_share_enforced_is_the_percent(percent: float) -> None:
    n, p = len(SYNTHETIC), percent / 100
    count = len(enforced(staged(percent), SYNTHETIC))
    assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_another_process_with_another_hash_seed_enforces_the_same_principals() -> None:
    sample = SYNTHETIC[:2000]
    here = sorted(enforced(staged(30, ["cred:listed"]), [*sample, "cred:listed"]))
    assert 400 < len(here) < 800
    script = (
        "import json, sys\n"
        "from surefoot.ratelimit import RateLimitPolicy, Rollout\n"
        "names = json.load(sys.stdin)\n"
        "policy = RateLimitPolicy('reads', limits=['2/minute'],"
        " rollout=Rollout(percent=30, principals=['cred:listed']))\n"
        "print(json.dumps(sorted(p for p in names if policy.enforced_for(p))))\n"
    )
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps([*sample, "cred:listed"]),
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        assert json.loads(result.stdout) == here


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"percent": 101}, "Rollout.percent: expected a number from 0 to 100, got 101"),
        ({"percent": -1}, "Rollout.percent: expected a number from 0 to 100, got -1"),
        ({"percent": math.nan}, "Rollout.percent: expected a number from 0 to 100, got nan"),
        ({"percent": math.inf}, "Rollout.percent: expected a number from 0 to 100, got inf"),
        ({"percent": True}, "Rollout.percent: expected a number from 0 to 100, got True"),
        ({"percent": "50"}, "Rollout.percent: expected a number from 0 to 100, got '50'"),
        ({"principals": "cred:a"}, "Rollout.principals: expected a collection of principals"),
        ({"principals": [""]}, "Rollout.principals: expected principals (non-empty strings)"),
        ({"principals": [7]}, "Rollout.principals: expected principals (non-empty strings)"),
    ],
)
def test_a_bad_rollout_is_refused_naming_the_field(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Rollout(**options)
    assert str(raised.value).startswith(message)


def test_the_bounds_are_allowed() -> None:
    assert Rollout(percent=0).percent == 0.0
    assert Rollout(percent=100).percent == 100.0
    assert Rollout(principals=["a", "a"]).principals == frozenset({"a"})


def test_a_rollout_beside_shadow_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"RateLimitPolicy 'reads'\.rollout: expected no"):
        RateLimitPolicy("reads", limits=["2/minute"], shadow=True, rollout=Rollout(percent=5))
    with pytest.raises(ConfigurationError, match=r"'reads'\.rollout: expected a surefoot"):
        RateLimitPolicy("reads", limits=["2/minute"], rollout=5)  # type: ignore[arg-type]


def test_a_plan_without_rollout_or_shadow_shows_every_limit() -> None:
    assert not Plan([RateLimitPolicy("reads", limits=["2/minute"])]).shadow
    assert Plan([RateLimitPolicy("reads", limits=["2/minute"]), staged(100)]).shadow


# -- through the middleware -----------------------------------------------------------------


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def _client(
    clock: ManualClock, events: list[Event], *policies: RateLimitPolicy
) -> tuple[httpx.AsyncClient, RateLimitMiddleware]:
    app = Starlette(routes=[Route("/{path:path}", _ok)])
    middleware = RateLimitMiddleware(
        app, policies=policies, store=MemoryStore(), clock=clock, hooks=[events.append]
    )
    transport = httpx.ASGITransport(middleware, client=("203.0.113.9", 1))
    return httpx.AsyncClient(transport=transport, base_url="http://test"), middleware


def _names(header: str) -> set[str]:
    return {item.strip().split(";")[0].strip('"') for item in header.split(",") if item.strip()}


@pytest.mark.anyio
async def test_only_the_enforced_share_is_refused(clock: ManualClock, events: list[Event]) -> None:
    rollout = staged(50)
    base = RateLimitPolicy("base", limits=["100/minute"])
    keys = [f"key-{n}" for n in range(120)]
    principal = {key: hash_credential(key.encode()) for key in keys}
    expected = {key for key in keys if reference("reads", principal[key], 50, ())}
    assert 30 < len(expected) < 90  # the test covers both sides
    client, _ = _client(clock, events, rollout, base)
    refused, passed = set(), set()
    async with client:
        for key in keys:
            statuses = []
            for _ in range(3):
                response = await client.get("/r", headers={"x-api-key": key})
                statuses.append(response.status_code)
                shown = _names(response.headers["ratelimit-policy"])
                # A shadowed principal never sees the limit it is not held to.
                assert shown == ({"reads", "base"} if key in expected else {"base"})
                assert _names(response.headers["ratelimit"]) == shown
            if statuses == [200, 200, 429]:
                refused.add(key)
            else:
                assert statuses == [200, 200, 200]
                passed.add(key)
    assert refused == expected
    assert passed == set(keys) - expected
    assert {e.principal for e in of(events, RateLimitRejected)} == {principal[k] for k in expected}
    shadow = of(events, RateLimitShadowRejected)
    assert sorted(e.principal for e in shadow) == sorted(principal[k] for k in passed)
    assert {e.policy for e in shadow} == {"reads"}


@pytest.mark.anyio
async def test_raising_the_percent_at_run_time_keeps_the_enforced_refused(
    clock: ManualClock, events: list[Event]
) -> None:
    keys = [f"key-{n}" for n in range(60)]
    principal = {key: hash_credential(key.encode()) for key in keys}
    first = {key for key in keys if reference("reads", principal[key], 10, ())}
    later = {key for key in keys if reference("reads", principal[key], 50, ())}
    assert first
    assert later - first
    client, middleware = _client(clock, events, staged(10))

    async def status(key: str) -> int:
        return (await client.get("/r", headers={"x-api-key": key})).status_code

    async with client:
        for key in keys:
            for _ in range(3):
                await status(key)
        middleware.update_policies([staged(50)])
        now_refused = {key for key in keys if await status(key) == 429}
    # Counters carry over: the first 10 % stay refused, the next ones are refused now.
    assert now_refused == later
