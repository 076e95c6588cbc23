"""The gateway's store capacity cannot be used against other clients (issue 12, item 8).

``[idempotency] max_records_per_principal`` and ``max_unknown_per_principal`` (per route
too) bound what one caller may hold; a gateway on a ``memory://`` idempotency store says
loudly what that risks: one WARNING line when ``surefoot serve`` starts, and in
``check-config`` (both from ``GatewayConfig.store_warnings``).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from _gateway_helpers import (
    EchoUpstream,
    free_port,
    gateway_config,
    problem,
    running,
    surefoot_serve,
    toml_config,
)
from click.testing import CliRunner

from surefoot.cli import main
from surefoot.errors import ConfigurationError


def test_quotas_are_policy_fields_inherited_by_routes_and_false_lifts_them() -> None:
    config = gateway_config(
        idempotency={"max_records_per_principal": 50},
        routes=[
            {"match": "POST /bulk", "idempotency": {"max_records_per_principal": False}},
            {"match": "POST /charges", "idempotency": {"max_unknown_per_principal": 5}},
        ],
    )
    assert config.idempotency_policy.max_records_per_principal == 50
    assert config.idempotency_policy.max_unknown_per_principal == 1000  # the default
    bulk, charges = (
        config.idempotency_routes["POST /bulk"],
        config.idempotency_routes["POST /charges"],
    )
    assert bulk is not None
    assert bulk.max_records_per_principal is None
    assert charges is not None
    assert (charges.max_records_per_principal, charges.max_unknown_per_principal) == (50, 5)


def test_the_gateway_sets_quotas_though_the_library_sets_none() -> None:
    # Every caller of a gateway shares its store: quotas are on by default there, while
    # IdempotencyPolicy() has none (tests/idempotency/test_quotas.py).
    config = gateway_config(routes=[{"match": "POST /charges", "idempotency": {"ttl": 3600}}])
    route = config.idempotency_routes["POST /charges"]
    for policy in (config.idempotency_policy, route):
        assert policy is not None
        assert (policy.max_records_per_principal, policy.max_unknown_per_principal) == (
            10_000,
            1_000,
        )
    shown = config.effective()["idempotency"]
    assert (shown["max_records_per_principal"], shown["max_unknown_per_principal"]) == (
        10_000,
        1_000,
    )


@pytest.mark.parametrize("value", [0, -3, True, 2.5, "10"])
def test_a_quota_is_a_whole_number_or_false(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        gateway_config(idempotency={"max_unknown_per_principal": value})
    assert "idempotency.max_unknown_per_principal: expected a whole number >= 1, or false" in str(
        info.value
    )


@pytest.mark.anyio
async def test_a_client_at_its_quota_gets_429_and_others_go_through() -> None:
    upstream = EchoUpstream()
    clients = [{"name": "acme", "api_key": "k-acme"}, {"name": "globex", "api_key": "k-glx"}]
    config = gateway_config(clients=clients, idempotency={"max_records_per_principal": 2})
    async with running(config, upstream=upstream) as gw:

        async def post(api_key: str, key: str) -> httpx.Response:
            headers = {"x-api-key": api_key, "idempotency-key": key}
            return await gw.client.post("/charges", json={}, headers=headers)

        assert [(await post("k-acme", f"a{n}")).status_code for n in range(2)] == [200, 200]
        refused = await post("k-acme", "a2")
        other = await post("k-glx", "g0")
    body = problem(refused, 429, "idempotency_records_exceeded")
    assert body["retry_after"] == 86400
    assert refused.headers["retry-after"] == "86400"
    assert other.status_code == 200
    assert len(upstream.seen) == 3  # the refused request never reached the upstream


def test_a_memory_store_is_a_warning_and_a_shared_one_says_why() -> None:
    clients = [{"name": "acme", "api_key": "k-acme"}, {"name": "globex", "api_key": "k-glx"}]
    [line] = gateway_config(
        {"clients": clients}, stores={"default": "memory://?max_records=50000"}
    ).store_warnings()
    assert line.startswith("[idempotency] store 'default' is memory://")
    assert "every caller (2 clients and any unlisted one) shares its 50000 records" in line
    assert "callers together can fill it" in line
    assert "503 store_capacity_exceeded" in line
    assert "lock every other client out" not in line  # one holds 10000 at most
    assert "workers" not in line
    [line] = gateway_config(
        stores={"default": "memory://?max_records=50&on_full=evict"}
    ).store_warnings(workers=3)
    assert "shares its 50 records" in line
    assert "completed records inside their TTL" in line
    assert "each of the 3 workers keeps records of its own" in line


LOCKOUT = (
    "so one client can fill the store and lock every other client out "
    "(503 store_capacity_exceeded) until its records expire"
)


def test_a_memory_store_one_client_can_fill_says_so() -> None:
    # The default memory:// keeps MemoryStore's 10000 records and a caller may hold
    # 10000: one client fills it, and every other client's new keys get 503 for the
    # records' TTL.
    [line] = gateway_config().store_warnings()
    assert "shares its 10000 records; one caller may hold 10000 records" in line
    assert LOCKOUT in line
    assert "set max_records_per_principal below 10000" in line
    # A route without a quota lets one caller hold any number.
    [line] = gateway_config(
        stores={"default": "memory://?max_records=50000"},
        routes=[{"match": "POST /bulk", "idempotency": {"max_records_per_principal": False}}],
    ).store_warnings()
    assert "one caller may hold any number of them" in line
    assert LOCKOUT in line
    # Below the store's capacity, no one client can.
    [line] = gateway_config(idempotency={"max_records_per_principal": 9999}).store_warnings()
    assert LOCKOUT not in line


def test_a_shared_store_is_no_warning(tmp_path: Path) -> None:
    config = gateway_config(stores={"default": f"sqlite:///{tmp_path}/s.db", "mem": "memory://"})
    # Only the idempotency store's records are at stake here.
    assert config.store_warnings(workers=4) == []


@pytest.mark.slow
def test_serve_logs_the_warning_when_it_starts(tmp_path: Path) -> None:
    upstream = f"http://127.0.0.1:{free_port()}"  # never called: the start is what matters
    gateway = surefoot_serve(tmp_path, toml_config(upstream, "memory://"))
    try:
        gateway.wait_ready()
    finally:
        gateway.server.stop()
    lines = [
        json.loads(line)
        for line in gateway.server.log.read_text().splitlines()
        if line.startswith("{")
    ]
    warned = [line for line in lines if "is memory://" in line.get("message", "")]
    assert len(warned) == 1, gateway.server.tail()
    assert warned[0]["level"] == "WARNING"


def test_check_config_prints_the_warning_and_still_accepts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(toml_config("http://127.0.0.1:9", "memory://?max_records=500"))

    result = CliRunner().invoke(main, ["check-config", str(path)])

    assert result.exit_code == 0, result.output
    assert f"{path}: warning: [idempotency] store 'default' is memory://" in result.output
    assert "shares its 500 records" in result.output
    assert LOCKOUT in result.output  # 500 records, and a caller may hold 10000
    assert f"{path}: OK" in result.output
