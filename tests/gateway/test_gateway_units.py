"""The gateway in process: its policy file, load shedder, proxy, outcome-unknown keys,
admin API and reloads, each driven through ``Gateway`` with an in-process upstream.

Time never passes by itself here: the gateway gets a ``ManualClock``.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    CLIENT,
    INTERNAL_DETAIL,
    ROOT,
    EchoUpstream,
    Running,
    charge,
    free_port,
    gateway_config,
    problem,
    rate,
    running,
)
from click.testing import CliRunner
from examples.legacy_payments.app import create_app
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from surefoot.cli import main
from surefoot.errors import ConfigurationError
from surefoot.gateway import GatewayConfig, LoadShedder, load_config
from surefoot.gateway._serve import _bind as bind
from surefoot.idempotency._core import State, scoped_key
from surefoot.identity import hash_credential
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

ADDRESS = "addr:" + CLIENT  # the principal of an in-process client without credentials
UPSTREAM = '[upstream]\nurl = "http://127.0.0.1:9000"\n'
ADMIN = f'\n[admin]\ntoken = "{ADMIN_TOKEN}"\n'
VALID = UPSTREAM + ADMIN


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the policy file ------------------------------------------------------------------------


def test_the_example_policy_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUREFOOT_ADMIN_TOKEN", "from-the-environment")
    path = ROOT / "examples" / "gateway.toml"
    admin = tomllib.loads(path.read_text())["admin"]

    config = load_config(path)

    assert config.admin_token == admin.get("token", "from-the-environment")
    assert config.root.upstream.app == "examples.legacy_payments.app:app"
    assert [p.name for p in config.rate_limit_policies] == ["charges", "reads"]
    assert list(config.lookups) == ["POST /charges"]
    assert config.critical_routes == ["GET /health"]
    policy = config.idempotency_routes["POST /charges"]
    assert policy is not None
    assert policy.on_server_error == "unknown"
    assert config.principals[hash_credential(b"sk_test_acme")] == "acme"


def test_an_admin_token_from_the_environment_must_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, UPSTREAM + '\n[admin]\ntoken_env = "SUREFOOT_TEST_ADMIN_TOKEN"\n')
    monkeypatch.delenv("SUREFOOT_TEST_ADMIN_TOKEN", raising=False)

    with pytest.raises(ConfigurationError) as raised:
        load_config(path)

    assert (
        f"{path}:5: admin.token_env: the environment variable 'SUREFOOT_TEST_ADMIN_TOKEN' "
        "is not set" in str(raised.value)
    )
    monkeypatch.setenv("SUREFOOT_TEST_ADMIN_TOKEN", "from-the-environment")
    assert load_config(path).admin_token == "from-the-environment"


BAD_FILES = [
    pytest.param(
        UPSTREAM + "connect_timout = 3\n" + ADMIN,
        3, "upstream.connect_timout", "unknown field (did you mean 'connect_timeout'?)",
        id="unknown-field",
    ),
    pytest.param(
        VALID + '\n[server]\nport = "80"\n',
        8, "server.port", "expected a port number 0-65535, got '80'",
        id="wrong-type",
    ),
    pytest.param(
        '[upstream]\nurl = "ftp://example.com"\n' + ADMIN,
        2, "upstream.url", "expected an absolute http:// or https:// URL, got 'ftp://example.com'",
        id="bad-url",
    ),
    pytest.param(
        VALID + '\n[stores]\ndefault = "mongodb://user:pw-secret@db/x"\n',
        8, "stores.default", "expected a store URL with a scheme in [",
        id="bad-store-scheme",
    ),
    pytest.param(
        VALID + '\n[[clients]]\nname = "acme"\napi_key = "k"\n\n[[rate_limit.policies]]\n'
        'name = "p"\nlimits = ["5/second"]\noverrides = { ghost = ["1/second"] }\n',
        14, "rate_limit.policies[0].overrides.ghost",
        "unknown client 'ghost': expected a name from [[clients]]",
        id="unknown-client-in-overrides",
    ),
    pytest.param(
        VALID + '\n[[routes]]\nmatch = "POST /charges"\n[routes.idempotency.lookup]\n'
        'path = "/charges/{reference}"\n',
        10, "routes[0].idempotency.lookup.path", "unknown placeholder {reference}: expected {key}",
        id="bad-lookup-placeholder",
    ),
    pytest.param(
        UPSTREAM + "\n[admin]\nport = 8081\n",
        4, "admin.token", "required: set token or token_env, or enabled = false",
        id="missing-admin-token",
    ),
    pytest.param(
        UPSTREAM + 'app = "legacy:app"\n' + ADMIN,
        1, "upstream", "expected exactly one of url and app",
        id="url-and-app",
    ),
    pytest.param(
        "[upstream]\nconnect_timeout = 2\n" + ADMIN,
        1, "upstream", "expected exactly one of url and app",
        id="neither-url-nor-app",
    ),
    pytest.param(
        VALID + '\n[[routes]]\nmatch = "POST /a"\n\n[[routes]]\nmatch = "charges"\n',
        11, "routes[1].match", "expected '[METHOD ]/path'",
        id="bad-route-template",
    ),
    pytest.param(
        VALID + "\n[upstream.breaker]\nopen_wait = inf\n",
        8, "upstream.breaker.open_wait", "expected a finite number of seconds > 0, got inf",
        id="breaker-infinite-wait",
    ),
    pytest.param(
        VALID + "\n[upstream.breaker]\nfailure_rate_threshold = nan\n",
        8, "upstream.breaker.failure_rate_threshold", "expected a share in (0, 1], such as 0.5",
        id="breaker-nan-share",
    ),
]  # fmt: skip


def test_the_breaker_table_takes_circuit_breakers_defaults_but_the_gateways_slow_call_duration(
    tmp_path: Path,
) -> None:
    import inspect

    from surefoot.client import CircuitBreaker

    table = load_config(write(tmp_path, VALID + "\n[upstream.breaker]\nminimum_calls = 3\n"))
    breaker = table.root.upstream.breaker
    assert breaker is not None
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(CircuitBreaker).parameters.items()
        if name in type(breaker).model_fields
    }
    assert breaker.model_dump() == {**defaults, "minimum_calls": 3, "slow_call_duration": 10.0}
    assert defaults["slow_call_duration"] == 60.0  # the gateway's 10 s is its own, on purpose


@pytest.mark.parametrize(("text", "line", "field", "expected"), BAD_FILES)
def test_a_bad_file_is_refused_with_its_line_field_and_what_was_expected(
    tmp_path: Path, text: str, line: int, field: str, expected: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigurationError) as raised:
        load_config(path)

    message = str(raised.value)
    assert f"{path}:{line}: {field}: " in message
    assert expected in message
    assert "secret" not in message


def test_every_problem_of_a_file_is_listed_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream]\nurl = "ftp://x"\n\n[server]\nport = "x"\n' + ADMIN)

    with pytest.raises(ConfigurationError) as raised:
        load_config(path)

    message = str(raised.value)
    assert message.startswith(f"{path}: 2 problems in the gateway configuration:")
    assert f"{path}:2: upstream.url: " in message
    assert f"{path}:5: server.port: " in message


def test_effective_configuration_masks_every_secret() -> None:
    config = gateway_config(
        admin={"token": "admin-secret"},
        clients=[{"name": "acme", "api_key": "sk-secret"}],
        stores={"default": "redis://user:pw-secret@127.0.0.1:6379/0?prefix=gw:"},
    )

    effective = config.effective()

    assert "secret" not in json.dumps(effective)
    assert effective["admin"]["token"] == "***"
    assert effective["clients"][0]["api_key"] == "***"
    assert effective["stores"]["default"] == "redis://user:***@127.0.0.1:6379/0?prefix=gw:"
    assert config.admin_token == "admin-secret"


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + '\n[[routes]]\nmatch = "POST /charges"\n')

    result = CliRunner().invoke(main, ["check-config", str(path)])

    assert result.exit_code == 0, result.output
    assert f"{path}: OK: upstream http://127.0.0.1:9000, 1 routes" in result.output


def test_check_config_refuses_an_invalid_file(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAM + "connect_timout = 3\n" + ADMIN)

    result = CliRunner().invoke(main, ["check-config", str(path)])

    assert result.exit_code == 1
    assert f"Error: {path}:3: upstream.connect_timout: unknown field" in result.output


# -- the load shedder -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "critical_share", "in_flight", "normal", "critical"),
    [
        (1, 0.0, 0, True, True),
        (1, 0.0, 1, False, False),
        (1, 0.5, 0, True, True),  # one slot cannot be reserved: it stays usable
        (2, 0.5, 0, True, True),
        (2, 0.5, 1, False, True),
        (2, 0.5, 2, False, False),
        (4, 0.0, 3, True, True),
        (4, 0.0, 4, False, False),
        (10, 0.2, 7, True, True),
        (10, 0.2, 8, False, True),
        (10, 0.2, 9, False, True),
        (10, 0.2, 10, False, False),
        (10, 0.25, 6, True, True),  # ceil(2.5) = 3 reserved
        (10, 0.25, 7, False, True),
        (3, 0.99, 1, False, True),  # at most limit - 1 reserved
    ],
)  # fmt: skip
def test_the_shedder_keeps_the_reserved_share_for_critical_requests(
    limit: int, critical_share: float, in_flight: int, normal: bool, critical: bool
) -> None:
    for is_critical, admitted in ((False, normal), (True, critical)):
        shedder = LoadShedder(limit=limit, critical_share=critical_share)
        for _ in range(in_flight):
            assert shedder.try_acquire(critical=True)

        assert shedder.try_acquire(critical=is_critical) is admitted
        assert shedder.in_flight == in_flight + admitted


def test_the_shedder_admits_again_once_a_slot_is_released() -> None:
    shedder = LoadShedder(limit=2, critical_share=0.5)
    assert shedder.try_acquire(critical=False)
    assert not shedder.try_acquire(critical=False)

    shedder.release()

    assert shedder.try_acquire(critical=False)


@pytest.mark.parametrize(("limit", "share"), [(0, 0.2), (5, 1.0), (5, -0.1)])
def test_the_shedder_refuses_impossible_settings(limit: int, share: float) -> None:
    with pytest.raises(ConfigurationError, match="LoadShedder: expected limit >= 1"):
        LoadShedder(limit=limit, critical_share=share)


def test_releasing_a_slot_never_held_is_an_error() -> None:
    shedder = LoadShedder(limit=2)
    with pytest.raises(RuntimeError, match="without a slot held"):
        shedder.release()


# -- the stack ------------------------------------------------------------------------------


OFF = {"idempotency": False}


@pytest.mark.parametrize(
    ("routes", "protected"),
    [
        ([{"match": "/*"} | OFF], False),
        ([{"match": "* /{rest:path}"} | OFF], False),
        ([{"match": "/a"} | OFF, {"match": "/*"} | OFF], False),
        ([{"match": "POST /a", "idempotency": {"ttl": 3600}}, {"match": "/*"} | OFF], True),
        ([{"match": "GET /*"} | OFF], True),
        ([{"match": "/v1/*"} | OFF], True),
        ([], True),
    ],
)
async def test_the_idempotency_layer_is_left_out_only_where_it_would_protect_nothing(
    routes: list[dict[str, Any]], protected: bool
) -> None:
    upstream = EchoUpstream()
    async with running(gateway_config(routes=routes), upstream=upstream) as gw:
        keyed = {"Idempotency-Key": "k-1"}
        responses = [await gw.client.post("/a", json={}, headers=keyed) for _ in range(2)]
        stack = gw.gateway.stack
        # Under abuse protection, the first layer of the stack.
        layers = type(stack.guard.app if stack.guard is not None else stack.app).__name__

    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert replayed == ([None, "true"] if protected else [None, None])
    assert len(upstream.seen) == (1 if protected else 2)
    assert (layers == "IdempotencyMiddleware") is protected


# -- the proxy ------------------------------------------------------------------------------


async def test_hop_by_hop_request_headers_are_not_forwarded() -> None:
    upstream = EchoUpstream()
    async with running(gateway_config(), upstream=upstream) as gw:
        response = await gw.client.get(
            "/echo",
            headers={
                "Connection": "x-private-hop",
                "X-Private-Hop": "1",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Upgrade": "h2c",
                "Proxy-Authorization": "Basic eDp5",
                "X-Kept": "yes",
            },
        )

    assert response.status_code == 200
    (seen,) = upstream.seen
    names = {name for name, _ in seen.headers}
    assert names.isdisjoint({"x-private-hop", "keep-alive", "te", "upgrade", "proxy-authorization"})
    assert "x-private-hop" not in seen.header("connection")
    assert seen.header("x-kept") == ["yes"]


async def test_hop_by_hop_response_headers_are_not_sent_back() -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        response = await gw.client.get("/echo")

    assert response.headers["x-upstream"] == "yes"
    assert "keep-alive" not in response.headers
    assert response.headers["x-request-id"] != "the-upstream-s-own-id"


async def test_response_headers_named_by_connection_are_not_sent_back() -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        response = await gw.client.get("/echo")

    assert "x-upstream-hop" not in response.headers


async def test_forwarded_headers_are_set_and_a_spoofed_chain_is_replaced() -> None:
    upstream = EchoUpstream()
    async with running(gateway_config(), upstream=upstream) as gw:
        await gw.client.get(
            "/echo", headers={"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Host": "evil"}
        )

    (seen,) = upstream.seen
    assert seen.header("x-forwarded-for") == [CLIENT]
    assert seen.header("x-forwarded-proto") == ["http"]
    assert seen.header("x-forwarded-host") == ["gateway.test"]


async def test_a_trusted_proxy_s_chain_is_extended() -> None:
    upstream = EchoUpstream()
    config = gateway_config(server={"trusted_proxies": ["10.0.0.0/8"]})
    async with running(config, upstream=upstream) as gw, gw.connect(client="10.0.0.5") as proxy:
        await proxy.get("/echo", headers={"X-Forwarded-For": "198.51.100.1"})

    (seen,) = upstream.seen
    assert seen.header("x-forwarded-for") == ["198.51.100.1, 10.0.0.5"]


async def test_a_request_id_is_kept_only_from_a_trusted_proxy() -> None:
    upstream = EchoUpstream()
    config = gateway_config(server={"trusted_proxies": ["10.0.0.0/8"]})
    async with running(config, upstream=upstream) as gw, gw.connect(client="10.0.0.5") as proxy:
        trusted = await proxy.get("/echo", headers={"X-Request-Id": "rid-from-the-proxy"})
        spoofed = await gw.client.get("/echo", headers={"X-Request-Id": "rid-spoofed"})

    first, second = upstream.seen
    assert first.header("x-request-id") == ["rid-from-the-proxy"]
    assert trusted.headers["x-request-id"] == "rid-from-the-proxy"
    (replaced,) = second.header("x-request-id")
    assert replaced != "rid-spoofed"
    assert spoofed.headers["x-request-id"] == replaced


@pytest.mark.parametrize(("forward", "expected"), [(True, ["k-1"]), (False, [])])
async def test_the_idempotency_key_is_forwarded_unless_told_not_to(
    forward: bool, expected: list[str]
) -> None:
    upstream = EchoUpstream()
    config = gateway_config(upstream={"forward_idempotency_key": forward})
    async with running(config, upstream=upstream) as gw:
        response = await gw.client.post("/echo", json={}, headers={"Idempotency-Key": "k-1"})

    assert response.status_code == 200
    assert upstream.seen[0].header("idempotency-key") == expected


@pytest.mark.parametrize(
    ("method", "path", "key", "retry_safe"),
    [
        ("POST", "/status/500", "k-1", True),  # the key never executes twice
        ("POST", "/unprotected/status/500", None, False),  # may have happened: check first
        ("GET", "/status/503", None, True),  # an idempotent method
    ],
)
async def test_an_upstream_5xx_becomes_a_problem_that_says_whether_to_retry(
    method: str, path: str, key: str | None, retry_safe: bool
) -> None:
    config = gateway_config(routes=[{"match": "POST /unprotected/*", "idempotency": False}])
    async with running(config, upstream=EchoUpstream()) as gw:
        headers = {"Idempotency-Key": key} if key else {}
        response = await gw.client.request(method, path, headers=headers, json={})

    body = problem(response, 502, "upstream_unavailable")
    assert body["retry_safe"] is retry_safe
    assert INTERNAL_DETAIL not in response.text
    assert "x-upstream" not in response.headers


async def test_an_unreachable_upstream_is_502_and_releases_the_key() -> None:
    clock = ManualClock()
    config = gateway_config(upstream={"url": f"http://127.0.0.1:{free_port()}"})
    async with running(config, clock=clock) as gw:
        first = await gw.client.post("/charges", json={}, headers={"Idempotency-Key": "k-1"})
        record = await gw.gateway.stack.idempotency_store.get(
            scoped_key(ADDRESS, "k-1"), clock.now()
        )
        retry = await gw.client.post("/charges", json={}, headers={"Idempotency-Key": "k-1"})

    assert problem(first, 502, "upstream_unavailable")["retry_safe"] is True
    assert record is None
    # Executed again (not 409): the retry went to the upstream, which is still down.
    assert problem(retry, 502, "upstream_unavailable")["reason"] == "it could not be reached"


async def test_the_breaker_opens_on_failures_and_recovers_through_half_open() -> None:
    clock = ManualClock()
    upstream = EchoUpstream()
    breaker = {"minimum_calls": 2, "window_size": 2, "open_wait": 10, "half_open_calls": 1}
    config = gateway_config(upstream={"breaker": breaker})
    async with running(config, upstream=upstream, clock=clock) as gw:
        assert gw.gateway.stack.proxy.breaker is not None
        assert gw.gateway.stack.proxy.breaker.clock is clock
        failures = [(await gw.client.get("/status/500")).status_code for _ in range(2)]
        opened = await gw.client.get("/echo")
        clock.advance(9)
        still_open = await gw.client.get("/echo")
        calls_while_open = len(upstream.seen)
        clock.advance(1)
        probe = await gw.client.get("/echo")
        closed = await gw.client.get("/echo")

    assert failures == [502, 502]
    assert problem(opened, 503, "circuit_open")["retry_after"] == 10
    assert opened.headers["retry-after"] == "10"
    assert still_open.headers["retry-after"] == "1"
    assert calls_while_open == 2  # nothing was sent while open
    assert (probe.status_code, closed.status_code) == (200, 200)
    assert len(upstream.seen) == 4


async def test_a_failed_half_open_probe_opens_the_breaker_again() -> None:
    clock = ManualClock()
    breaker = {"minimum_calls": 1, "window_size": 1, "open_wait": 5, "half_open_calls": 1}
    config = gateway_config(upstream={"breaker": breaker})
    async with running(config, upstream=EchoUpstream(), clock=clock) as gw:
        assert (await gw.client.get("/status/500")).status_code == 502
        clock.advance(5)
        probe = await gw.client.get("/status/500")
        after = await gw.client.get("/echo")

    assert probe.status_code == 502
    assert problem(after, 503, "circuit_open")["retry_after"] == 5


async def test_normal_requests_are_shed_first_and_critical_ones_still_pass() -> None:
    upstream = EchoUpstream()
    config = gateway_config(
        upstream={"concurrency": {"limit": 2, "critical_share": 0.5}},
        routes=[{"match": "GET /critical", "critical": True}],
    )
    async with running(config, upstream=upstream) as gw:
        held = asyncio.ensure_future(gw.client.get("/hold"))
        await asyncio.wait_for(upstream.entered.wait(), 5)
        shed = await gw.client.get("/normal")
        critical = await gw.client.get("/critical")
        upstream.release.set()
        first = await held
        after = await gw.client.get("/normal")

    body = problem(shed, 503, "service_overloaded")
    assert body["retry_after"] == 1
    assert shed.headers["retry-after"] == "1"
    assert critical.status_code == 200
    assert (first.status_code, after.status_code) == (200, 200)
    assert [s.path for s in upstream.seen] == ["/hold", "/critical", "/normal"]


async def test_a_shed_request_is_told_the_configured_wait() -> None:
    upstream = EchoUpstream()
    config = gateway_config(upstream={"concurrency": {"limit": 1, "retry_after": 3}})
    async with running(config, upstream=upstream) as gw:
        held = asyncio.ensure_future(gw.client.get("/hold"))
        await asyncio.wait_for(upstream.entered.wait(), 5)
        shed = await gw.client.get("/normal")
        upstream.release.set()
        await held

    assert problem(shed, 503, "service_overloaded")["retry_after"] == 3
    assert shed.headers["retry-after"] == "3"


async def test_a_shed_keyed_request_releases_its_key() -> None:
    upstream = EchoUpstream()
    config = gateway_config(upstream={"concurrency": {"limit": 1, "critical_share": 0}})
    async with running(config, upstream=upstream) as gw:
        held = asyncio.ensure_future(gw.client.get("/hold"))
        await asyncio.wait_for(upstream.entered.wait(), 5)
        shed = await gw.client.post("/charges", json={}, headers={"Idempotency-Key": "k-1"})
        upstream.release.set()
        await held
        retry = await gw.client.post("/charges", json={}, headers={"Idempotency-Key": "k-1"})

    problem(shed, 503, "service_overloaded")
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers


async def test_the_served_sockets_turn_nagle_off() -> None:
    # Without TCP_NODELAY a keep-alive client waits ~40 ms per response (delayed ACKs).
    sock = bind("127.0.0.1", 0)
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        option = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        nodelay.set_result(option)
        writer.close()

    async with await asyncio.start_server(accepted, sock=sock):
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        option = await asyncio.wait_for(nodelay, 5)
        writer.close()
        await writer.wait_closed()

    assert option != 0


# -- outcome unknown ------------------------------------------------------------------------

LOOKUP = {"path": "/charges/by-reference/{body.reference}", "found": [200], "status": 201}
AFTER_COMMIT = {"X-Legacy-Fail": "after-commit"}
BEFORE_COMMIT = {"X-Legacy-Fail": "before-commit"}


def legacy_config(lookup: dict[str, Any] | None = None, **tables: Any) -> GatewayConfig:
    idempotency: dict[str, Any] = {"on_server_error": "unknown"}
    if lookup is not None:
        idempotency["lookup"] = lookup
    return gateway_config(routes=[{"match": "POST /charges", "idempotency": idempotency}], **tables)


@pytest.fixture
def ledger(tmp_path: Path) -> FastAPI:
    return create_app(str(tmp_path / "ledger.db"))


async def by_reference(gw: Running, reference: str) -> dict[str, Any]:
    response = await gw.client.get(f"/charges/by-reference/{reference}")
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


async def audit(gw: Running) -> dict[str, Any]:
    response = await gw.client.get("/audit")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def state_of(gw: Running, key: str, clock: ManualClock) -> State | None:
    store = gw.gateway.stack.idempotency_store
    record = await store.get(scoped_key(ADDRESS, key), clock.now())
    return None if record is None else record.state


async def test_a_commit_then_500_leaves_the_key_unknown_and_a_lookup_replays_it(
    ledger: FastAPI,
) -> None:
    clock = ManualClock()
    async with running(legacy_config(LOOKUP), upstream=ledger, clock=clock) as gw:
        headers = {"Idempotency-Key": "k-1"}
        failed = await gw.client.post(
            "/charges", json=charge("r-1"), headers=headers | AFTER_COMMIT
        )
        unknown = await state_of(gw, "k-1", clock)
        retry = await gw.client.post("/charges", json=charge("r-1"), headers=headers)
        again = await gw.client.post("/charges", json=charge("r-1"), headers=headers)
        booked = await by_reference(gw, "r-1")
        counts = await audit(gw)

    assert problem(failed, 502, "upstream_unavailable")["retry_safe"] is True
    assert unknown is State.UNKNOWN
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == booked
    assert (again.status_code, again.content) == (201, retry.content)
    assert counts["charges"] == 1


async def test_without_a_lookup_a_retry_of_an_unknown_key_is_409(ledger: FastAPI) -> None:
    clock = ManualClock()
    async with running(legacy_config(), upstream=ledger, clock=clock) as gw:
        headers = {"Idempotency-Key": "k-1"}
        await gw.client.post("/charges", json=charge("r-1"), headers=headers | AFTER_COMMIT)
        retry = await gw.client.post("/charges", json=charge("r-1"), headers=headers)
        counts = await audit(gw)

    assert problem(retry, 409, "idempotency_outcome_unknown")
    assert counts["charges"] == 1


@pytest.mark.parametrize(
    ("lookup", "retry_after"), [(None, "5"), (LOOKUP | {"not_found_after": 60}, "13")]
)
async def test_a_409_for_an_unknown_key_says_when_to_retry(
    ledger: FastAPI, lookup: dict[str, Any] | None, retry_after: str
) -> None:
    # An SDK retrying at once spent its three retries within 2.5 s against these 409s.
    # With a lookup, the reconciler settles unknown keys every reconcile_interval (12.5 s,
    # rounded up); without, an operator does, and the middleware's default applies.
    clock = ManualClock()
    config = legacy_config(lookup, idempotency={"reconcile_interval": 12.5})
    async with running(config, upstream=ledger, clock=clock) as gw:
        headers = {"Idempotency-Key": "k-1"}
        await gw.client.post("/charges", json=charge("r-1"), headers=headers | BEFORE_COMMIT)
        retry = await gw.client.post("/charges", json=charge("r-1"), headers=headers)

    assert problem(retry, 409, "idempotency_outcome_unknown")["retry_after"] == int(retry_after)
    assert retry.headers["retry-after"] == retry_after


async def test_the_admin_api_resolves_and_releases_unknown_keys(ledger: FastAPI) -> None:
    clock = ManualClock()
    async with running(legacy_config(), upstream=ledger, clock=clock) as gw:
        committed, lost = {"Idempotency-Key": "k-done"}, {"Idempotency-Key": "k-lost"}
        await gw.client.post("/charges", json=charge("r-done"), headers=committed | AFTER_COMMIT)
        await gw.client.post("/charges", json=charge("r-lost"), headers=lost | BEFORE_COMMIT)
        listed = (await gw.admin.get("/admin/unknown", headers=ADMIN_HEADERS)).json()
        booked = await by_reference(gw, "r-done")
        resolved = await gw.admin.post(
            "/admin/keys/resolve",
            headers=ADMIN_HEADERS,
            json={"store_key": scoped_key(ADDRESS, "k-done"), "status": 201, "body": booked},
        )
        released = await gw.admin.post(
            "/admin/keys/release",
            headers=ADMIN_HEADERS,
            json={"store_key": scoped_key(ADDRESS, "k-lost")},
        )
        replayed = await gw.client.post("/charges", json=charge("r-done"), headers=committed)
        executed = await gw.client.post("/charges", json=charge("r-lost"), headers=lost)
        counts = await audit(gw)
        left = (await gw.admin.get("/admin/unknown", headers=ADMIN_HEADERS)).json()

    assert {r["store_key"] for r in listed["unknown"]} == {
        scoped_key(ADDRESS, "k-done"),
        scoped_key(ADDRESS, "k-lost"),
    }
    assert resolved.json()["result"] == "resolved"
    assert released.json()["result"] == "released"
    assert replayed.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == booked
    assert executed.status_code == 201
    assert "idempotent-replayed" not in executed.headers
    assert counts == {"charges": 2, "references": 2, "duplicated_references": []}
    assert left == {"unknown": []}


async def test_the_reconciler_resolves_found_keys_and_releases_lost_ones_late(
    ledger: FastAPI,
) -> None:
    clock = ManualClock()
    lookup = LOOKUP | {"not_found_after": 60}
    async with running(legacy_config(lookup), upstream=ledger, clock=clock) as gw:
        resolver = gw.gateway.stack.resolver
        assert resolver is not None
        committed, lost = {"Idempotency-Key": "k-done"}, {"Idempotency-Key": "k-lost"}
        await gw.client.post("/charges", json=charge("r-done"), headers=committed | AFTER_COMMIT)
        await gw.client.post("/charges", json=charge("r-lost"), headers=lost | BEFORE_COMMIT)

        first_pass = await resolver.reconcile_once()
        states = [await state_of(gw, "k-done", clock), await state_of(gw, "k-lost", clock)]
        early_retry = await gw.client.post("/charges", json=charge("r-lost"), headers=lost)
        clock.advance(59)
        too_early = await resolver.reconcile_once()
        clock.advance(1)
        late_pass = await resolver.reconcile_once()
        released = await state_of(gw, "k-lost", clock)
        replayed = await gw.client.post("/charges", json=charge("r-done"), headers=committed)
        executed = await gw.client.post("/charges", json=charge("r-lost"), headers=lost)
        booked = await by_reference(gw, "r-done")
        counts = await audit(gw)

    assert first_pass == 1
    assert states == [State.COMPLETED, State.UNKNOWN]
    # Not found, but too soon to say the work did not happen: still unknown.
    problem(early_retry, 409, "idempotency_outcome_unknown")
    assert (too_early, late_pass, released) == (0, 1, None)
    assert replayed.status_code == 201
    assert replayed.json() == booked
    assert executed.status_code == 201
    assert "idempotent-replayed" not in executed.headers
    assert counts == {"charges": 2, "references": 2, "duplicated_references": []}


# -- the admin API --------------------------------------------------------------------------

ACME = {"X-API-Key": "sk_acme"}
ACME_PRINCIPAL = hash_credential(b"sk_acme")


def admin_config(**tables: Any) -> GatewayConfig:
    return gateway_config(
        clients=[{"name": "acme", "api_key": "sk_acme"}],
        rate_limit={
            "policies": [
                {"name": "charges", "limits": ["5/minute"], "routes": ["POST /charges"]},
                {"name": "reads", "limits": ["10/minute", "100/hour"], "routes": ["GET /*"]},
            ]
        },
        **tables,
    )


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ""}])
async def test_the_admin_api_needs_the_token(headers: dict[str, str]) -> None:
    async with running(admin_config(), upstream=EchoUpstream()) as gw:
        responses = [
            await gw.admin.get("/admin/config", headers=headers),
            await gw.admin.get("/metrics", headers=headers),
            await gw.admin.post("/admin/keys/release", headers=headers, json={"store_key": "x"}),
        ]

    for response in responses:
        problem(response, 401, "admin_unauthorized")
        assert ADMIN_TOKEN not in response.text


async def test_the_probes_need_no_token() -> None:
    async with running(admin_config(), upstream=EchoUpstream()) as gw:
        health = await gw.admin.get("/healthz")
        ready = await gw.admin.get("/readyz")

    assert (health.status_code, health.json()) == (200, {"status": "ok", "generation": 0})
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")


async def test_metrics_count_requests_and_replays() -> None:
    async with running(admin_config(), upstream=EchoUpstream()) as gw:
        for _ in range(2):
            await gw.client.post("/charges", json={}, headers=ACME | {"Idempotency-Key": "k-1"})
        response = await gw.admin.get("/metrics", headers=ADMIN_HEADERS)

    assert response.status_code == 200
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples["surefoot_http_requests_total"] == 2
    assert samples["surefoot_idempotency_replays_total"] == 1


async def test_the_admin_config_masks_secrets() -> None:
    async with running(admin_config(), upstream=EchoUpstream()) as gw:
        response = await gw.admin.get("/admin/config", headers=ADMIN_HEADERS)

    assert response.status_code == 200
    assert ADMIN_TOKEN not in response.text
    assert "sk_acme" not in response.text
    config = response.json()["config"]
    assert config["admin"]["token"] == "***"
    assert config["clients"][0]["api_key"] == "***"


async def test_the_admin_limits_show_what_each_policy_has_left() -> None:
    async with running(admin_config(), upstream=EchoUpstream(), clock=ManualClock()) as gw:
        for key in ("k-1", "k-2"):
            await gw.client.post("/charges", json={}, headers=ACME | {"Idempotency-Key": key})
        await gw.client.get("/echo", headers=ACME)
        first = await gw.admin.get("/admin/limits?client=acme", headers=ADMIN_HEADERS)
        second = await gw.admin.get("/admin/limits?client=acme", headers=ADMIN_HEADERS)

    assert first.status_code == 200
    assert first.json() == second.json()  # reading usage uses nothing
    (acme,) = [p for p in first.json()["principals"] if p["principal"] == ACME_PRINCIPAL]
    left = sorted((limit["policy"], limit["remaining"]) for limit in acme["limits"])
    assert left == [("charges", 3), ("reads", 9), ("reads", 99)]


async def test_the_admin_api_finds_a_key_by_principal_and_key() -> None:
    async with running(admin_config(), upstream=EchoUpstream()) as gw:
        await gw.client.post("/charges", json={}, headers=ACME | {"Idempotency-Key": "k-1"})
        found = await gw.admin.get(
            "/admin/keys", params={"principal": ACME_PRINCIPAL, "key": "k-1"}, headers=ADMIN_HEADERS
        )
        other = await gw.admin.get(
            "/admin/keys", params={"principal": ADDRESS, "key": "k-1"}, headers=ADMIN_HEADERS
        )

    assert found.status_code == 200
    record = found.json()
    assert (record["state"], record["status"]) == ("completed", 200)
    assert record["store_key"] == scoped_key(ACME_PRINCIPAL, "k-1")
    problem(other, 404, "admin_not_found")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/admin/nothing", None, 404, "admin_not_found"),
        ("GET", "/admin/limits?client=ghost", None, 404, "admin_not_found"),
        ("POST", "/admin/keys/release", {"store_key": "idem:none"}, 404, "admin_not_found"),
        ("GET", "/admin/limits", None, 400, "admin_bad_request"),
        ("GET", "/admin/keys?key=k-1", None, 400, "admin_bad_request"),
        ("POST", "/admin/keys/resolve", "not json", 400, "admin_bad_request"),
        ("POST", "/admin/keys/resolve", {"store_key": "idem:x"}, 400, "admin_bad_request"),
        ("POST", "/admin/keys/release", ["a", "list"], 400, "admin_bad_request"),
    ],
)
async def test_admin_errors_are_problems(
    method: str, path: str, body: Any, status: int, code: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body) if body is not None else None
    async with running(admin_config(), upstream=EchoUpstream()) as gw:
        response = await gw.admin.request(method, path, content=content, headers=ADMIN_HEADERS)

    problem(response, status, code)


# -- reloading ------------------------------------------------------------------------------


def policy_file(*policies: str) -> str:
    blocks = "".join(
        f'\n[[rate_limit.policies]]\nname = "{name}"\nlimits = ["{limit}"]\nroutes = ["{route}"]\n'
        for name, limit, route in (p.split("|") for p in policies)
    )
    return '[upstream]\nurl = "http://upstream.test"\n\n[stores]\ndefault = "memory://"\n' + (
        ADMIN + blocks
    )


@pytest.fixture
async def reloadable(tmp_path: Path) -> AsyncIterator[tuple[Running, Path]]:
    path = write(tmp_path, policy_file("charges|5/minute|POST /charges"))
    async with running(
        load_config(path), upstream=EchoUpstream(), config_path=str(path), clock=ManualClock()
    ) as gw:
        yield gw, path


async def post(gw: Running, key: str) -> httpx.Response:
    response = await gw.client.post("/charges", json={}, headers={"Idempotency-Key": key})
    assert response.status_code == 200, response.text
    return response


async def test_a_reload_changes_limits_and_counters_carry_on(
    reloadable: tuple[Running, Path],
) -> None:
    gw, path = reloadable
    for key in ("k-1", "k-2", "k-3"):
        used = await post(gw, key)
    assert rate(used)["charges"]["r"] == 2
    store = gw.gateway.stack.rate_limit_store

    path.write_text(policy_file("charges|5/minute|POST /charges", "reads|2/minute|GET /*"))
    assert await gw.gateway.reload() is True
    limits = await gw.admin.get(
        "/admin/limits", params={"principal": ADDRESS}, headers=ADMIN_HEADERS
    )
    after = await post(gw, "k-4")
    reads = await gw.client.get("/echo")

    assert gw.gateway.stack.rate_limit_store is store
    assert gw.gateway.generation == 1
    assert [(x["policy"], x["remaining"]) for x in limits.json()["principals"][0]["limits"]] == [
        ("charges", 2),
        ("reads", 2),
        ("address", 997),  # [identity] address_limits: 1000/minute by default
    ]
    assert rate(after)["charges"]["r"] == 1
    assert rate(reads, "ratelimit-policy") == {
        "reads": {"q": 2, "w": 60},
        "address": {"q": 1000, "w": 60},
    }

    path.write_text(policy_file("charges|8/minute|POST /charges"))
    assert await gw.gateway.reload() is True
    raised = await post(gw, "k-5")

    assert rate(raised, "ratelimit-policy")["charges"]["q"] == 8
    assert rate(raised)["charges"]["r"] == 3  # 8 minus the 5 used before
    assert "ratelimit" not in (await gw.client.get("/echo")).headers


async def test_reloading_an_unchanged_file_does_nothing(reloadable: tuple[Running, Path]) -> None:
    gw, _ = reloadable
    stack = gw.gateway.stack

    assert await gw.gateway.reload() is False
    assert gw.gateway.stack is stack
    assert gw.gateway.generation == 0


async def test_a_broken_file_is_refused_and_the_old_stack_stays(
    reloadable: tuple[Running, Path],
) -> None:
    gw, path = reloadable
    stack = gw.gateway.stack
    path.write_text(policy_file("charges|5/fortnight|POST /charges"))

    with pytest.raises(ConfigurationError, match=re.escape(f"{path}:")):
        await gw.gateway.reload()

    assert gw.gateway.stack is stack
    assert gw.gateway.generation == 0
    assert rate(await post(gw, "k-1"), "ratelimit-policy")["charges"]["q"] == 5


async def test_admin_reload_of_a_broken_file_is_422_and_the_old_config_serves(
    reloadable: tuple[Running, Path],
) -> None:
    gw, path = reloadable
    path.write_text(policy_file("charges|5/minute|POST /charges") + "\n[server]\nport = 'x'\n")

    refused = await gw.admin.post("/admin/reload", headers=ADMIN_HEADERS)
    config = await gw.admin.get("/admin/config", headers=ADMIN_HEADERS)
    served = await post(gw, "k-1")

    body = problem(refused, 422, "config_rejected")
    assert "server.port: expected a port number" in body["detail"]
    assert config.json()["generation"] == 0
    assert rate(served, "ratelimit-policy")["charges"]["q"] == 5

    path.write_text(policy_file("charges|7/minute|POST /charges"))
    applied = await gw.admin.post("/admin/reload", headers=ADMIN_HEADERS)

    assert applied.json() == {"reloaded": True, "generation": 1}
    assert rate(await post(gw, "k-2"), "ratelimit-policy")["charges"]["q"] == 7
