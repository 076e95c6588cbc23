"""Staged rollouts in the gateway: ``[rate_limit.policies.rollout]`` enforces a policy for
the clients it names (and a share of the others) and shadows the rest; ``/admin/rollouts``
shows each stage and who a stricter one would break; a bad table names its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import ADMIN_HEADERS, EchoUpstream, gateway_config, problem, running

from _support import T0, of
from surefoot.errors import ConfigurationError
from surefoot.gateway import load_config
from surefoot.identity import hash_credential
from surefoot.ratelimit import RateLimitRejected, RateLimitShadowRejected
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

ACME_KEY, GLOBEX_KEY = "k-acme-0123456789", "k-globex-0123456789"
CLIENTS = [{"name": "acme", "api_key": ACME_KEY}, {"name": "globex", "api_key": GLOBEX_KEY}]
ACME = {"authorization": f"Bearer {ACME_KEY}"}
GLOBEX = {"authorization": f"Bearer {GLOBEX_KEY}"}
READS = {"name": "reads", "limits": ["2/minute"], "rollout": {"clients": ["acme"]}}


async def rollouts(admin: httpx.AsyncClient, query: str = "") -> dict[str, Any]:
    response = await admin.get(f"/admin/rollouts{query}", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_the_listed_client_is_refused_and_the_other_is_reported() -> None:
    events: list[Any] = []
    config = gateway_config(rate_limit={"policies": [READS]}, clients=CLIENTS)
    clock = ManualClock(T0)
    async with running(config, upstream=EchoUpstream(), clock=clock, hooks=[events.append]) as gw:
        acme = [(await gw.client.get("/a", headers=ACME)).status_code for _ in range(3)]
        globex = [(await gw.client.get("/a", headers=GLOBEX)).status_code for _ in range(5)]
        assert acme == [200, 200, 429]
        assert globex == [200] * 5
        assert gw.gateway.top is not None
        await gw.gateway.top.flush()
        data = await rollouts(gw.admin)
        top = await gw.admin.get("/admin/top?list=shadow&policy=reads", headers=ADMIN_HEADERS)
    globex_principal = hash_credential(GLOBEX_KEY.encode())
    assert [e.principal for e in of(events, RateLimitRejected)] == [
        hash_credential(ACME_KEY.encode())
    ]
    assert [e.principal for e in of(events, RateLimitShadowRejected)] == [globex_principal] * 3
    assert data == {
        "window": "1h",
        "policies": [
            {
                "name": "reads",
                "stage": "partial",
                "percent": 0.0,
                "clients": ["acme"],
                "would_break": {
                    "total": 3.0,
                    "k": data["policies"][0]["would_break"]["k"],
                    "error_bound": 3.0 / data["policies"][0]["would_break"]["k"],
                    "items": [
                        {
                            "principal": globex_principal,
                            "client": "globex",
                            "enforced": False,
                            "count": 3.0,
                            "error": 0.0,
                        }
                    ],
                },
            }
        ],
    }
    assert top.status_code == 200
    assert [(i["client"], i["count"]) for i in top.json()["items"]] == [("globex", 3.0)]


async def test_a_request_refused_by_two_limits_of_one_policy_counts_once() -> None:
    policy = {"name": "reads", "limits": ["2/minute", "2/hour"], "rollout": {}}
    config = gateway_config(rate_limit={"policies": [policy]}, clients=CLIENTS)
    async with running(config, upstream=EchoUpstream(), clock=ManualClock(T0)) as gw:
        for _ in range(4):
            assert (await gw.client.get("/a", headers=GLOBEX)).status_code == 200
        assert gw.gateway.top is not None
        await gw.gateway.top.flush()
        data = await rollouts(gw.admin, "?window=5m&limit=5")
    (reads,) = data["policies"]
    assert reads["stage"] == "shadow"  # an empty rollout enforces for no one
    assert [(i["client"], i["count"]) for i in reads["would_break"]["items"]] == [("globex", 2.0)]


async def test_each_stage_is_named_and_enforced_policies_are_not_listed() -> None:
    policies = [
        {"name": "trial", "limits": ["2/minute"], "shadow": True},
        {"name": "half", "limits": ["2/minute"], "rollout": {"percent": 50}},
        {"name": "done", "limits": ["2/minute"], "rollout": {"percent": 100, "clients": ["acme"]}},
        {"name": "plain", "limits": ["2/minute"]},
    ]
    config = gateway_config(
        rate_limit={"policies": policies}, clients=CLIENTS, top={"enabled": False}
    )
    async with running(config, upstream=EchoUpstream()) as gw:
        data = await rollouts(gw.admin)
        bad = await gw.admin.get("/admin/rollouts?window=2d", headers=ADMIN_HEADERS)
        unknown = await gw.admin.get("/admin/rollouts?policy=trial", headers=ADMIN_HEADERS)
    assert [(p["name"], p["stage"], p["percent"], p["clients"]) for p in data["policies"]] == [
        ("trial", "shadow", 0.0, []),
        ("half", "partial", 50.0, []),
        ("done", "enforced", 100.0, ["acme"]),
    ]
    assert all(p["would_break"] is None for p in data["policies"])  # [top] is off
    assert "window: expected one of 1m" in problem(bad, 400, "admin_bad_request")["detail"]
    assert "unknown parameter" in problem(unknown, 400, "admin_bad_request")["detail"]


async def test_a_client_listed_by_address_is_enforced_by_its_address() -> None:
    clients = [*CLIENTS, {"name": "office", "address": "203.0.113.50"}]
    policy = {"name": "reads", "limits": ["2/minute"], "rollout": {"clients": ["office"]}}
    config = gateway_config(rate_limit={"policies": [policy]}, clients=clients)
    async with running(config, upstream=EchoUpstream()) as gw:
        async with gw.connect(client="203.0.113.50") as office:
            statuses = [(await office.get("/a")).status_code for _ in range(3)]
        others = [(await gw.client.get("/a")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert others == [200, 200, 200]


# -- bad tables -------------------------------------------------------------------------------

HEAD = (
    '[upstream]\nurl = "http://127.0.0.1:9"\n[admin]\ntoken = "admin-token-for-tests"\n'
    '[[clients]]\nname = "acme"\napi_key = "k-acme-0123456789"\n'
    '[[rate_limit.policies]]\nname = "reads"\nlimits = ["2/minute"]\n'
)  # 10 lines: the policy's table starts on line 8


def refused(tmp_path: Path, body: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(HEAD + body)
    with pytest.raises(ConfigurationError) as raised:
        load_config(str(path))
    return str(raised.value).replace(str(path), "gateway.toml")


@pytest.mark.parametrize("percent", ["101", "-1", "nan"])
def test_a_percent_outside_0_to_100_names_the_field_and_its_line(
    tmp_path: Path, percent: str
) -> None:
    message = refused(tmp_path, f"[rate_limit.policies.rollout]\npercent = {percent}\n")
    assert message.startswith(
        "gateway.toml:12: rate_limit.policies[0].rollout.percent: expected a share of clients "
        "from 0 to 100, got "
    ), message


def test_an_inline_rollout_table_is_found_at_its_key(tmp_path: Path) -> None:
    message = refused(tmp_path, "rollout = { percent = 250 }\n")
    assert message.startswith("gateway.toml:11: rate_limit.policies[0].rollout.percent: "), message


def test_an_unknown_client_names_the_field_and_its_line(tmp_path: Path) -> None:
    message = refused(tmp_path, '[rate_limit.policies.rollout]\nclients = ["acme", "acmee"]\n')
    assert message == (
        "gateway.toml:12: rate_limit.policies[0].rollout.clients[1]: unknown client 'acmee': "
        "expected a name from [[clients]] (did you mean 'acme'?)"
    )


def test_shadow_beside_a_rollout_names_the_field_and_its_line(tmp_path: Path) -> None:
    message = refused(tmp_path, "shadow = true\n[rate_limit.policies.rollout]\npercent = 10\n")
    assert message == (
        "gateway.toml:11: rate_limit.policies[0].shadow: expected false beside a rollout (the "
        "rollout shadows the clients it does not enforce): remove shadow = true to start the "
        "rollout"
    )
