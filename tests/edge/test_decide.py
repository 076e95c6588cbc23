"""The decision service in process (``surefoot.edge.DecisionApp``): what an edge proxy
sends (``X-Original-Method``, ``X-Original-URI``, the client's credential headers, its
forwarding headers) and what it gets back (200 with the rate-limit fields, or the problem;
in NGINX mode a 403 carrying the real status and the problem in headers)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from surefoot.cli import main
from surefoot.edge import DecisionApp
from surefoot.errors import ConfigurationError
from surefoot.gateway import GatewayConfig, SharedOverrides, TemporaryOverride, config_from_dict
from surefoot.storage import MemoryStore
from surefoot.testing import FlakyStore, ManualClock

pytestmark = pytest.mark.anyio

#: The edge proxy (a trusted proxy) and a client that is not one.
EDGE = "10.0.0.5"
CLIENT = "203.0.113.7"
PROBLEM = "application/problem+json"


def config(*policies: Mapping[str, Any], **tables: Any) -> GatewayConfig:
    """A policy file with ``policies`` and the edge's network as trusted proxies."""
    base: dict[str, Any] = {
        "upstream": {"url": "http://upstream.test"},
        "stores": {"default": "memory://"},
        "server": {"trusted_proxies": ["10.0.0.0/8"]},
        "admin": {"enabled": False},
        "rate_limit": {"policies": [dict(p) for p in policies]},
    }
    return config_from_dict(base | tables)


def reads(limit: int = 3, **options: Any) -> dict[str, Any]:
    return {"name": "reads", "limits": [f"{limit}/minute"], **options}


@asynccontextmanager
async def service(app: DecisionApp, peer: str = EDGE) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` whose TCP peer address is ``peer``."""
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://decide") as client:
        yield client


def described(method: str = "GET", uri: str = "/orders", **headers: str) -> dict[str, str]:
    """The headers an edge sends to describe a client's request."""
    return {"X-Original-Method": method, "X-Original-URI": uri, **headers}


def t_of(response: httpx.Response) -> int:
    """The ``t`` parameter of the ``RateLimit`` field."""
    found = re.search(r";t=(\d+)", response.headers["ratelimit"])
    assert found is not None, response.headers["ratelimit"]
    return int(found.group(1))


async def statuses(client: httpx.AsyncClient, count: int, **headers: str) -> list[int]:
    return [
        (await client.get("/decide", headers=described(**headers))).status_code
        for _ in range(count)
    ]


async def test_an_allowed_request_is_200_empty_with_the_rate_limit_fields(
    clock: ManualClock,
) -> None:
    app = DecisionApp(config(reads(3)), clock=clock)
    async with service(app) as client:
        answer = await client.get("/decide", headers=described())
    assert answer.status_code == 200
    assert answer.content == b""
    # The gateway's own fields: the file's policy, and its per-address ceiling.
    assert answer.headers["ratelimit"] == '"reads";r=2;t=60, "address";r=999;t=60'
    assert answer.headers["ratelimit-policy"].startswith('"reads";q=3;w=60, "address";q=1000')
    assert "retry-after" not in answer.headers


async def test_exactly_the_limit_is_admitted_then_429_with_retry_after_equal_to_t(
    clock: ManualClock,
) -> None:
    app = DecisionApp(config(reads(3)), clock=clock)
    async with service(app) as client:
        assert await statuses(client, 3) == [200, 200, 200]
        clock.advance(10)
        refused = await client.get("/decide", headers=described())
        assert refused.status_code == 429
        assert refused.headers["content-type"] == PROBLEM
        problem = refused.json()
        assert problem["code"] == "rate_limit_exceeded"
        assert problem["policy"] == "reads"
        assert problem["request_id"] == refused.headers["x-request-id"]
        wait = int(refused.headers["retry-after"])
        assert wait == t_of(refused) == problem["retry_after"] == 50
        clock.advance(wait - 1)
        assert await statuses(client, 1) == [429]
        clock.advance(1)  # a client that waits exactly Retry-After is admitted
        assert await statuses(client, 1) == [200]


async def test_each_credential_has_its_own_bucket(clock: ManualClock) -> None:
    app = DecisionApp(config(reads(2)), clock=clock)
    async with service(app) as client:
        assert await statuses(client, 3, Authorization="Bearer key-a") == [200, 200, 429]
        assert await statuses(client, 1, **{"X-API-Key": "key-b"}) == [200]
        # The same key, spelled as the gateway says is one credential: key-a's bucket.
        assert await statuses(client, 1, **{"X-API-Key": "key-a"}) == [429]


async def test_ambiguous_credentials_are_refused_as_the_gateway_refuses_them(
    clock: ManualClock,
) -> None:
    app = DecisionApp(config(reads(2)), clock=clock)
    async with service(app) as client:
        answer = await client.get(
            "/decide", headers=described(Authorization="Bearer a", **{"X-API-Key": "b"})
        )
    assert answer.status_code == 400
    assert answer.json()["code"] == "credentials_ambiguous"


async def test_forwarding_headers_from_a_client_that_is_not_the_edge_are_ignored(
    clock: ManualClock,
) -> None:
    app = DecisionApp(config(reads(2)), clock=clock)
    async with service(app, peer=CLIENT) as client:
        spoofed = [
            (await client.get("/decide", headers=described(**forwarding))).status_code
            for forwarding in (
                {"X-Forwarded-For": "198.51.100.1"},
                {"X-Real-IP": "198.51.100.2"},
                {"X-Forwarded-For": "198.51.100.3"},
            )
        ]
    assert spoofed == [200, 200, 429]  # all counted as the peer, CLIENT


async def test_the_edge_is_believed_about_the_client_address(clock: ManualClock) -> None:
    app = DecisionApp(config(reads(2)), clock=clock)
    async with service(app, peer=EDGE) as client:
        # The last address is what the edge wrote; the first is the client's own claim.
        one = {"X-Forwarded-For": "192.0.2.99, 198.51.100.1"}
        assert await statuses(client, 3, **one) == [200, 200, 429]
        assert await statuses(client, 1, **{"X-Forwarded-For": "192.0.2.99"}) == [200]
        assert await statuses(client, 2, **{"X-Real-IP": "198.51.100.1"}) == [429, 429]
        assert await statuses(client, 1, **{"X-Real-IP": "198.51.100.7"}) == [200]
        # No forwarding header from the edge: the edge itself.
        assert await statuses(client, 3) == [200, 200, 429]


@pytest.mark.parametrize(
    ("server", "believed"),
    [
        ("http://decide", True),  # server (host, None): a Unix socket, as ASGI names one
        ("http://decide:8090", False),  # a port and no peer: not a Unix socket, not trusted
    ],
)
async def test_a_peer_without_an_address_is_the_edge_only_on_a_unix_socket(
    clock: ManualClock, server: str, believed: bool
) -> None:
    app = DecisionApp(config(reads(2)), clock=clock)
    transport = httpx.ASGITransport(app=app, client=None)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=server) as client:
        one = await statuses(client, 2, **{"X-Forwarded-For": "198.51.100.1"})
        other = await statuses(client, 1, **{"X-Forwarded-For": "198.51.100.2"})
    assert one == [200, 200]
    # Believed: another client, its own count; not believed: both are one "unknown" peer.
    assert other == ([200] if believed else [429])


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/decide?edge=nginx", {}), ("/decide", {"X-Surefoot-Edge": "nginx"})],
    ids=["query", "header"],
)
async def test_nginx_mode_sends_a_refusal_as_403_with_the_status_and_problem_in_headers(
    clock: ManualClock, path: str, headers: dict[str, str]
) -> None:
    app = DecisionApp(config(reads(1, name="lectures-\u00e9t\u00e9")), clock=clock)
    async with service(app) as client:
        allowed = await client.get(path, headers=described(**headers))
        refused = await client.get(path, headers=described(**headers))
    assert allowed.status_code == 200
    assert "surefoot-status" not in allowed.headers
    assert refused.status_code == 403
    assert refused.headers["surefoot-status"] == "429"
    raw = refused.headers.raw
    problem_field = next(v for k, v in raw if k.lower() == b"surefoot-problem")
    assert problem_field.isascii()
    assert b"\n" not in problem_field
    problem = json.loads(problem_field)
    assert problem == refused.json()
    assert problem["code"] == "rate_limit_exceeded"
    assert problem["policy"] == "lectures-\u00e9t\u00e9"
    assert refused.headers["retry-after"] == str(t_of(refused)) == "60"
    assert refused.headers["ratelimit-policy"].startswith('"lectures-')


async def test_a_client_cannot_switch_the_mode_with_an_unknown_edge_header(
    clock: ManualClock,
) -> None:
    app = DecisionApp(config(reads(1)), clock=clock)
    async with service(app) as client:
        answers = [
            await client.get("/decide", headers=described(**{"X-Surefoot-Edge": "bogus"}))
            for _ in range(2)
        ]
        typo = await client.get("/decide?edge=ngnix", headers=described())
    assert [a.status_code for a in answers] == [200, 429]
    assert typo.status_code == 400
    assert "ngnix" in typo.json()["detail"]


@pytest.mark.parametrize(
    ("uri", "reason"),
    [("/a/%2F/b", "invalid_path"), ("/../etc", "invalid_path"), ("orders", "invalid_path")],
)
async def test_a_path_that_cannot_be_made_canonical_is_400(
    clock: ManualClock, uri: str, reason: str
) -> None:
    app = DecisionApp(config(reads(1)), clock=clock)
    async with service(app) as client:
        answer = await client.get("/decide", headers=described(uri=uri))
        nginx = await client.get("/decide?edge=nginx", headers=described(uri=uri))
    assert answer.status_code == 400
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["code"] == reason
    assert nginx.status_code == 403
    assert nginx.headers["surefoot-status"] == "400"
    assert json.loads(nginx.headers["surefoot-problem"])["code"] == reason


async def test_one_resource_one_bucket_whatever_the_method_query_or_target_form(
    clock: ManualClock,
) -> None:
    app = DecisionApp(config(reads(2, routes=["GET /orders/{id}"])), clock=clock)
    async with service(app) as client:
        spelled = [("GET", "/orders/7"), ("HEAD", "/orders/7?x=1")]
        spelled += [("GET", "http://api.example/orders/7")]
        answers = [
            await client.get("/decide", headers=described(method=m, uri=u)) for m, u in spelled
        ]
        other = await client.get("/decide", headers=described(uri="/invoices/7"))
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert other.status_code == 200
    assert "ratelimit" not in other.headers  # no policy covers it


@pytest.mark.parametrize(
    "uri",
    [
        "/v1/files/../a",
        "/v1/files/%2e%2e/a",
        "/v1/files/./a",
        "/v1//files/a",
        "/v1/files/%61",
        "http://api.example/v1/files/../a?x=1",
    ],
)
async def test_a_path_not_already_canonical_is_refused_in_every_mode_and_never_counted(
    clock: ManualClock, uri: str
) -> None:
    # The edge forwards the path as sent: an upstream that resolves it otherwise would
    # serve another route than the one counted, so the decision refuses it instead.
    policies = [reads(1, routes=["GET /v1/files/*"]), {"name": "all", "limits": ["1/minute"]}]
    app = DecisionApp(config(*policies), clock=clock)
    async with service(app) as client:
        plain = [await client.get("/decide", headers=described(uri=uri)) for _ in range(3)]
        nginx = await client.get("/decide?edge=nginx", headers=described(uri=uri))
        canonical = await client.get("/decide", headers=described(uri="/v1/files/a"))
    assert [r.status_code for r in plain] == [400, 400, 400]
    assert {r.json()["code"] for r in plain} == {"invalid_path"}
    assert nginx.status_code == 403
    assert nginx.headers["surefoot-status"] == "400"
    assert json.loads(nginx.headers["surefoot-problem"])["code"] == "invalid_path"
    assert canonical.status_code == 200  # the refusals counted nothing, in no policy


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method"])
async def test_a_method_override_header_is_refused_naming_it_unless_overrides_are_allowed(
    clock: ManualClock, header: str
) -> None:
    deletes = {"name": "deletes", "limits": ["1/minute"], "routes": ["DELETE /items/*"]}
    app = DecisionApp(config(deletes), clock=clock)
    override = described(method="POST", uri="/items/1", **{header: "DELETE"})
    async with service(app) as client:
        first = await client.get("/decide", headers=described(method="DELETE", uri="/items/1"))
        refused = [await client.get("/decide", headers=override) for _ in range(2)]
        nginx = await client.get("/decide?edge=nginx", headers=override)
        get = await client.get("/decide", headers=described(uri="/items/1", **{header: "GET"}))
    assert first.status_code == 200
    for answer in refused:
        assert answer.status_code == 400
        assert answer.json()["code"] == "bad_request"
        assert header in answer.json()["detail"]
    assert nginx.status_code == 403
    assert nginx.headers["surefoot-status"] == "400"
    assert get.status_code == 400  # on any method: the upstream would never see it

    allowed = DecisionApp(
        config(deletes, server={"trusted_proxies": ["10.0.0.0/8"], "allow_method_override": True}),
        clock=clock,
    )
    async with service(allowed) as client:
        counted = [await client.get("/decide", headers=override) for _ in range(2)]
    assert [r.status_code for r in counted] == [200, 429]  # counted as the DELETE it names


async def test_forwarded_configured_but_absent_reads_x_forwarded_for(
    clock: ManualClock,
) -> None:
    # HAProxy's Lua action writes X-Forwarded-For only: with forwarded_header = "forwarded"
    # every client would otherwise be the edge's address, one bucket for all.
    server = {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": "forwarded"}
    app = DecisionApp(config(reads(1), server=server), clock=clock)
    async with service(app) as client:
        answers = [
            await client.get("/decide", headers=described(**{"X-Forwarded-For": address}))
            for address in ("203.0.113.7", "198.51.100.9", "203.0.113.7")
        ]
        forwarded = await client.get(
            "/decide",
            headers=described(**{"Forwarded": "for=192.0.2.1", "X-Forwarded-For": "203.0.113.7"}),
        )
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert forwarded.status_code == 200  # Forwarded, when present, is the one read


async def test_a_leaky_queue_policy_is_a_configuration_error_naming_it(
    clock: ManualClock,
) -> None:
    # Its delay would run inside the decision, past the edge's subrequest timeout.
    queued = {"name": "queued", "limits": ["1/minute"], "algorithm": "leaky_queue"}
    with pytest.raises(ConfigurationError, match=r"'queued'.*leaky_queue"):
        DecisionApp(config(reads(1), queued), clock=clock)
    app = DecisionApp(config(reads(1)), clock=clock)
    with pytest.raises(ConfigurationError, match=r"'queued'.*leaky_queue"):
        await app.reload(config(reads(1), queued))
    assert [p.name for p in app.decider.config.rate_limit_policies] == ["reads", "address"]  # kept


@pytest.mark.parametrize("missing", ["X-Original-Method", "X-Original-URI"])
async def test_a_missing_description_header_is_400_naming_it(
    clock: ManualClock, missing: str
) -> None:
    app = DecisionApp(config(reads(1)), clock=clock)
    headers = described()
    del headers[missing]
    async with service(app) as client:
        answer = await client.get("/decide", headers=headers)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["code"] == "bad_request"
    assert missing in problem["detail"]


async def test_an_unknown_endpoint_is_a_problem(clock: ManualClock) -> None:
    app = DecisionApp(config(reads(1)), clock=clock)
    async with service(app) as client:
        answer = await client.get("/orders")
    assert answer.status_code == 400
    assert answer.json()["code"] == "bad_request"


@pytest.mark.parametrize(("action", "status"), [("fail_open", 200), ("fail_closed", 503)])
async def test_store_down_follows_the_policys_on_store_error(
    clock: ManualClock, action: str, status: int
) -> None:
    store = FlakyStore(MemoryStore())
    app = DecisionApp(config(reads(1, on_store_error=action)), clock=clock, store=store)
    store.down()
    async with service(app) as client:
        answers = [await client.get("/decide", headers=described()) for _ in range(3)]
        ready = await client.get("/readyz")
        healthy = await client.get("/healthz")
        nginx = await client.get("/decide?edge=nginx", headers=described())
    assert [a.status_code for a in answers] == [status] * 3
    if status == 503:
        assert answers[0].json()["code"] == "store_unavailable"
        assert nginx.status_code == 403
        assert nginx.headers["surefoot-status"] == "503"
    else:
        assert nginx.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["code"] == "store_unavailable"
    assert healthy.status_code == 200
    store.up()
    async with service(app) as client:
        assert (await client.get("/readyz")).status_code == 200


async def test_a_reload_changes_the_limits_and_keeps_the_counters(clock: ManualClock) -> None:
    app = DecisionApp(config(reads(3)), clock=clock)
    async with service(app) as client:
        assert await statuses(client, 2) == [200, 200]
        await app.reload(config(reads(2)))
        assert await statuses(client, 1) == [429]
    await app.aclose()


def test_surefoot_decide_refuses_an_invalid_file_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[stores]\ndefault = "memory://"\n[admin]\nenabled = false\n')
    result = CliRunner().invoke(main, ["decide", "--config", str(path), "--port", "0"])
    assert result.exit_code == 1
    assert "upstream" in result.output


async def test_a_temporary_override_applies_until_it_expires(clock: ManualClock) -> None:
    store = MemoryStore()
    app = DecisionApp(config(reads(3)), clock=clock, store=store)
    board = SharedOverrides(store, clock=clock)  # what the gateway's admin API writes
    override = TemporaryOverride(
        id=uuid.uuid4().hex,
        policy="reads",
        client=None,
        limits=("1/minute",),
        starts_at=clock.now(),
        expires_at=clock.now() + 600,
        by="ops",
        reason="incident 12",
    )
    await board.add(override)
    await app.startup()  # reads the overrides in force, as its lifespan does
    try:
        async with service(app) as client:
            assert await statuses(client, 2) == [200, 429]
            clock.advance(600)  # it expires on the request path: the file's limit again
            assert await statuses(client, 4) == [200, 200, 200, 429]
    finally:
        await app.aclose()
