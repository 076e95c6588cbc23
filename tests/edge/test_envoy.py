"""Envoy's rate-limit service, asked as Envoy's ``envoy.filters.http.ratelimit`` asks it.

A ``grpc.aio`` client built from the same protos (``xds-protos``) sends the requests the
filter sends for the route actions of the Envoy configuration in ``docs/edge.md``
(``ENVOY_REQUESTS`` below: a domain, one or several descriptors of ``generic_key``,
``remote_address``, ``request_headers`` and ``header_match`` entries, ``hits_addend``), to
real servers on 127.0.0.1, over SQLite and Redis stores.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import wrappers_pb2

from surefoot.edge._envoy import (
    MAX_DESCRIPTORS,
    MAX_ENTRIES,
    MAX_HITS_ADDEND,
    EnvoyRateLimitService,
    EnvoyServer,
    serve_envoy,
)
from surefoot.errors import StoreUnavailable
from surefoot.gateway import GatewayConfig, SharedOverrides, TemporaryOverride, config_from_dict
from surefoot.identity import hash_credential
from surefoot.ratelimit import Item, limit_key
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
Unit = rls_pb2.RateLimitResponse.RateLimit
CLIENT = "203.0.113.7"
OTHER = "198.51.100.9"

#: Requests as Envoy's filter sends them: ``(domain, [descriptor entries...], hits_addend)``;
#: a descriptor is its (key, value) entries, and ``("#hits", n)`` its own hits_addend.
#: ``generic_key`` + ``remote_address``: actions ``generic_key {descriptor_value: api}``
#: and ``remote_address {}``; ``api_key``, ``path``, ``method``: ``request_headers``
#: actions on ``x-api-key``, ``:path`` and ``:method``; ``header_match``: a
#: ``header_match {descriptor_value: ...}`` action.
ENVOY_REQUESTS: dict[str, tuple[str, list[list[tuple[str, str]]], int]] = {
    "by_address": ("edge", [[("generic_key", "api"), ("remote_address", CLIENT)]], 0),
    "by_other_address": ("edge", [[("generic_key", "api"), ("remote_address", OTHER)]], 0),
    "header_match_a": (
        "edge",
        [[("generic_key", "api"), ("header_match", "get"), ("remote_address", CLIENT)]],
        0,
    ),
    "header_match_b": (
        "edge",
        [[("generic_key", "api"), ("header_match", "post"), ("remote_address", CLIENT)]],
        0,
    ),
    "by_key": (
        "edge",
        [[("generic_key", "api"), ("remote_address", CLIENT), ("api_key", "k-acme")]],
        0,
    ),
    "by_unknown_key": (
        "edge",
        [[("generic_key", "api"), ("remote_address", CLIENT), ("api_key", "k-junk")]],
        0,
    ),
    "several": (
        "edge",
        [
            [("generic_key", "api"), ("remote_address", CLIENT)],
            [("generic_key", "unknown-policy"), ("remote_address", CLIENT)],
            [("destination_cluster", "backend")],
            [
                ("policy", "charges"),
                ("remote_address", CLIENT),
                ("path", "/v1/charges?amount=3"),
                ("method", "POST"),
            ],
        ],
        0,
    ),
    "charges_elsewhere": (
        "edge",
        [
            [
                ("policy", "charges"),
                ("remote_address", CLIENT),
                ("path", "/v1/refunds"),
                ("method", "POST"),
            ]
        ],
        0,
    ),
    "hits_2": ("edge", [[("generic_key", "api"), ("remote_address", CLIENT)]], 2),
    "descriptor_hits_3": (
        "edge",
        [[("generic_key", "api"), ("remote_address", CLIENT), ("#hits", "3")]],
        1,
    ),
}


def request(domain: str, descriptors: Sequence[Sequence[tuple[str, str]]], hits: int = 0) -> Any:
    built = []
    for entries in descriptors:
        descriptor = ratelimit_pb2.RateLimitDescriptor(
            entries=[
                ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)
                for k, v in entries
                if k != "#hits"
            ]
        )
        for k, v in entries:
            if k == "#hits":
                descriptor.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=int(v)))
        built.append(descriptor)
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=built, hits_addend=hits)


def envoy(name: str) -> Any:
    return request(*ENVOY_REQUESTS[name])


def config(store: str = "memory://") -> GatewayConfig:
    return config_from_dict(
        {
            "upstream": {"url": "http://upstream.test"},
            "stores": {"default": store},
            "admin": {"enabled": False},
            "clients": [{"name": "acme", "api_key": "k-acme", "tier": "pro"}],
            "rate_limit": {
                "policies": [
                    {
                        "name": "api",
                        "limits": ["3/minute"],
                        "algorithm": "sliding_log",
                        "tiers": {"pro": ["5/minute"]},
                    },
                    {
                        "name": "charges",
                        "limits": ["4/minute"],
                        "algorithm": "sliding_log",
                        "routes": ["POST /v1/charges"],
                        "costs": {"POST /v1/charges": 2},
                    },
                    {
                        "name": "closed",
                        "limits": ["1/second"],
                        "on_store_error": "fail_closed",
                    },
                ]
            },
        }
    )


class Client:
    """Envoy's side of the protocol: one channel to one server."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)

    async def ask(self, message: Any) -> Any:
        return await self.stub.ShouldRateLimit(message, timeout=10)


def headers(response: Any) -> dict[str, str]:
    return {h.key: h.value for h in response.response_headers_to_add}


@pytest.fixture
async def running(clock: ManualClock) -> AsyncIterator[Client]:
    served = await serve_envoy(config(), port=0, store=MemoryStore(), clock=clock)
    client = Client(served.port)
    try:
        yield client
    finally:
        await client.channel.close()
        await served.stop(None)


async def test_envoy_requests_are_admitted_exactly_then_over_limit(
    running: Client, clock: ManualClock
) -> None:
    for remaining in (2, 1, 0):
        answer = await running.ask(envoy("by_address"))
        assert answer.overall_code == OK
        (status,) = answer.statuses
        assert status.code == OK
        assert status.current_limit.name == "api"
        assert status.current_limit.requests_per_unit == 3
        assert status.current_limit.unit == Unit.MINUTE
        assert status.limit_remaining == remaining
        assert headers(answer) == {
            "ratelimit-policy": '"api";q=3;w=60',
            "ratelimit": f'"api";r={remaining};t=60',
        }
        assert answer.raw_body == b""
    clock.advance(10)
    refused = await running.ask(envoy("by_address"))
    assert refused.overall_code == OVER
    (status,) = refused.statuses
    assert (status.code, status.limit_remaining) == (OVER, 0)
    assert status.duration_until_reset.seconds == 50
    assert headers(refused) == {
        "ratelimit-policy": '"api";q=3;w=60',
        "ratelimit": '"api";r=0;t=50',
        "retry-after": "50",
        "content-type": "application/problem+json",
    }
    problem = json.loads(refused.raw_body)
    assert (problem["status"], problem["code"]) == (429, "rate_limit_exceeded")
    assert (problem["policy"], problem["retry_after"]) == ("api", 50)
    # Another address has its own counter; waiting Retry-After admits this one again.
    assert (await running.ask(envoy("by_other_address"))).overall_code == OK
    clock.advance(50)
    assert (await running.ask(envoy("by_address"))).overall_code == OK


async def test_header_match_entries_never_choose_a_counter(running: Client) -> None:
    codes = [
        (await running.ask(envoy(name))).overall_code
        for name in ("header_match_a", "header_match_b", "header_match_a", "header_match_b")
    ]
    assert codes == [OK, OK, OK, OVER]


async def test_a_known_api_key_counts_as_its_client_and_an_unknown_one_as_its_address(
    running: Client,
) -> None:
    answers = [await running.ask(envoy("by_key")) for _ in range(5)]
    assert [a.statuses[0].limit_remaining for a in answers] == [4, 3, 2, 1, 0]
    assert answers[0].statuses[0].current_limit.requests_per_unit == 5  # tier "pro"
    assert (await running.ask(envoy("by_key"))).overall_code == OVER
    # An unknown key buys no fresh bucket: it shares its address's.
    assert (await running.ask(envoy("by_address"))).statuses[0].limit_remaining == 2
    assert (await running.ask(envoy("by_unknown_key"))).statuses[0].limit_remaining == 1


async def test_several_descriptors_are_decided_together(running: Client) -> None:
    answer = await running.ask(envoy("several"))
    assert answer.overall_code == OK
    api, unknown, unnamed, charges = answer.statuses
    assert (api.code, api.current_limit.name, api.limit_remaining) == (OK, "api", 2)
    # Unknown policies, and descriptors naming none, are unlimited (Envoy's own answer).
    for status in (unknown, unnamed):
        assert status.code == OK
        assert not status.HasField("current_limit")
    # The route's cost is 2 of 4.
    assert (charges.current_limit.name, charges.limit_remaining) == ("charges", 2)
    assert headers(answer)["ratelimit"] == '"api";r=2;t=60, "charges";r=2;t=60'
    assert (await running.ask(envoy("several"))).overall_code == OK
    refused = await running.ask(envoy("several"))
    assert refused.overall_code == OVER
    assert [s.code for s in refused.statuses] == [OK, OK, OK, OVER]
    assert headers(refused)["ratelimit"] == '"api";r=1;t=60, "charges";r=0;t=60'
    # Refused: nothing was charged to "api", which said yes.
    assert (await running.ask(envoy("by_address"))).statuses[0].limit_remaining == 0


async def test_a_route_the_policy_does_not_cover_is_unlimited(running: Client) -> None:
    for _ in range(5):
        answer = await running.ask(envoy("charges_elsewhere"))
        assert answer.overall_code == OK
        assert not answer.statuses[0].HasField("current_limit")
        assert headers(answer) == {}


async def test_hits_addend_is_the_cost(running: Client) -> None:
    assert (await running.ask(envoy("hits_2"))).statuses[0].limit_remaining == 1
    refused = await running.ask(envoy("descriptor_hits_3"))  # the descriptor's wins
    assert refused.overall_code == OVER
    assert refused.statuses[0].limit_remaining == 1
    assert (await running.ask(envoy("by_address"))).statuses[0].limit_remaining == 0


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (request("", [[("generic_key", "api"), ("remote_address", CLIENT)]]), "domain"),
        (
            request("edge", [[("generic_key", "api"), ("remote_address", CLIENT)]] * 33),
            f"at most {MAX_DESCRIPTORS}",
        ),
        (
            request("edge", [[("generic_key", "api")] + [("x", "y")] * MAX_ENTRIES]),
            f"at most {MAX_ENTRIES} entries",
        ),
        (
            request("edge", [[("generic_key", "api"), ("remote_address", CLIENT)]], 10_001),
            f"at most {MAX_HITS_ADDEND}",
        ),
        (request("edge", [[("generic_key", "api")]]), "expected a remote_address entry"),
        (request("edge", [[("generic_key", "api"), ("remote_address", "nope")]]), "IP address"),
        (
            request("edge", [[("generic_key", "api"), ("policy", "charges")]]),
            "name different policies",
        ),
        (
            request(
                "edge",
                [[("generic_key", "api"), ("remote_address", CLIENT), ("remote_address", OTHER)]],
            ),
            "appears twice",
        ),
        (
            request(
                "edge", [[("generic_key", "api"), ("remote_address", CLIENT), ("k" * 4097, "v")]]
            ),
            "keys of at most 4096 characters",
        ),
        (
            request("edge", [[("generic_key", "api"), ("remote_address", "1" * 4097)]]),
            "IP address",
        ),
    ],
)
async def test_a_malformed_request_is_invalid_argument_and_counts_nothing(
    running: Client, message: Any, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.ask(message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (caught.value.details() or "")
    assert (await running.ask(envoy("by_address"))).statuses[0].limit_remaining == 2


async def test_another_domain_is_unlimited_when_a_domain_is_set(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(config(), store=MemoryStore(), clock=clock, domain="edge")
    for _ in range(4):
        answer = await service.decide(request("other", ENVOY_REQUESTS["by_address"][1]))
        assert answer.overall_code == OK
        assert not answer.statuses[0].HasField("current_limit")
    assert (await service.decide(envoy("by_address"))).statuses[0].limit_remaining == 2


class DownStore(MemoryStore):
    async def acquire(self, items: Any, now: float) -> Any:
        raise StoreUnavailable()


async def test_a_store_that_is_down_fails_open_or_closed_per_policy(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(config(), store=DownStore(), clock=clock)
    assert (await service.decide(envoy("by_address"))).overall_code == OK  # fail_open
    closed = await service.decide(
        request(
            "edge",
            [*ENVOY_REQUESTS["by_address"][1], [("policy", "closed"), ("remote_address", CLIENT)]],
        )
    )
    assert closed.overall_code == OVER
    assert [s.code for s in closed.statuses] == [OK, OVER]
    assert headers(closed)["retry-after"] == "1"
    problem = json.loads(closed.raw_body)
    assert (problem["code"], problem["status"]) == ("store_unavailable", 429)  # Envoy's status


async def shared_limits(store_url: str, clock: ManualClock) -> None:
    """Two servers on one store admit the limit between them, exactly."""
    servers: list[EnvoyServer] = [
        await serve_envoy(config(store_url), port=0, clock=clock) for _ in range(2)
    ]
    clients = [Client(s.port) for s in servers]
    try:
        codes = [(await clients[i % 2].ask(envoy("by_address"))).overall_code for i in range(6)]
        assert codes == [OK, OK, OK, OVER, OVER, OVER]
        key = [(await clients[i % 2].ask(envoy("by_key"))).statuses[0] for i in range(6)]
        assert [s.limit_remaining for s in key] == [4, 3, 2, 1, 0, 0]
        assert [s.code for s in key] == [OK] * 5 + [OVER]
    finally:
        for client in clients:
            await client.channel.close()
        for server in servers:
            await server.stop(None)


async def test_two_servers_share_limits_on_sqlite(tmp_path: Path, clock: ManualClock) -> None:
    await shared_limits(f"sqlite:///{tmp_path / 'limits.db'}", clock)


async def test_two_servers_share_limits_on_redis(redis_url: str, clock: ManualClock) -> None:
    joint = "&" if "?" in redis_url else "?"
    await shared_limits(f"{redis_url}{joint}prefix=envoy-{uuid.uuid4().hex}:&clock=caller", clock)


async def test_the_store_keys_are_the_gateways(clock: ManualClock) -> None:
    """An Envoy descriptor counts in the bucket the gateway counts the same client in."""
    store = MemoryStore()
    service = EnvoyRateLimitService(config(), store=store, clock=clock)
    await service.decide(envoy("by_key"))
    principal = hash_credential(b"k-acme")
    (pro,) = service.policies["api"].limits_for(principal, "pro")
    item = Item(limit_key("api", pro, principal, ""), pro.algorithm or "", pro)
    admitted, (decision,) = await store.acquire([item], clock.now())
    assert admitted
    assert decision.remaining == 3  # 5 for the tier "pro", less Envoy's request and this one


def more_config() -> GatewayConfig:
    return config_from_dict(
        {
            "upstream": {"url": "http://upstream.test"},
            "stores": {"default": "memory://"},
            "admin": {"enabled": False},
            "clients": [{"name": "acme", "api_key": "k-acme"}],
            "rate_limit": {
                "policies": [
                    {"name": "multi", "limits": ["2/second", "10/5 minutes"]},
                    {"name": "daily", "limits": ["100/day"], "algorithm": "quota"},
                    {"name": "slow", "limits": ["10/5 minutes"]},
                    {"name": "shadowed", "limits": ["1/minute"], "shadow": True},
                    {
                        "name": "routes",
                        "limits": ["2/minute"],
                        "routes": ["GET /v1/a", "GET /v1/b"],
                        "per_route": True,
                    },
                ]
            },
        }
    )


def one(*entries: tuple[str, str]) -> Any:
    return request("edge", [list(entries)])


async def test_several_limits_of_a_policy_report_the_tightest(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(more_config(), store=MemoryStore(), clock=clock)
    asked = one(("policy", "multi"), ("remote_address", CLIENT))
    first = await service.decide(asked)
    (status,) = first.statuses
    # 1 of 2 left this second is tighter than 9 of 10 in five minutes.
    assert (status.current_limit.name, status.limit_remaining) == ("multi-1s", 1)
    assert status.current_limit.unit == Unit.SECOND
    assert headers(first)["ratelimit-policy"] == '"multi-1s";q=2;w=1, "multi-300s";q=10;w=300'
    await service.decide(asked)
    refused = await service.decide(asked)
    assert refused.overall_code == OVER
    assert refused.statuses[0].current_limit.name == "multi-1s"
    assert json.loads(refused.raw_body)["violated-policies"] == ["multi-1s"]
    clock.advance(1)
    allowed = await service.decide(asked)
    assert allowed.overall_code == OK


async def test_a_window_of_no_single_unit_is_envoys_unknown_unit(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(more_config(), store=MemoryStore(), clock=clock)
    answer = await service.decide(one(("policy", "slow"), ("remote_address", CLIENT)))
    limit = answer.statuses[0].current_limit
    assert (limit.name, limit.unit, limit.requests_per_unit) == ("slow", Unit.UNKNOWN, 10)
    assert headers(answer)["ratelimit-policy"] == '"slow";q=10;w=300'


async def test_a_quota_reports_its_period(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(more_config(), store=MemoryStore(), clock=clock)
    answer = await service.decide(one(("generic_key", "daily"), ("remote_address", CLIENT)))
    (status,) = answer.statuses
    assert (status.current_limit.unit, status.current_limit.requests_per_unit) == (Unit.DAY, 100)
    assert headers(answer)["ratelimit-policy"] == '"daily";q=100;w=86400'


async def test_a_shadowed_policy_never_refuses_and_is_not_shown(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(more_config(), store=MemoryStore(), clock=clock)
    asked = one(("generic_key", "shadowed"), ("remote_address", CLIENT))
    answers = [await service.decide(asked) for _ in range(3)]
    assert [a.overall_code for a in answers] == [OK] * 3
    assert [a.statuses[0].code for a in answers] == [OK] * 3
    assert headers(answers[2]) == {}


async def test_per_route_policies_count_each_route(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(more_config(), store=MemoryStore(), clock=clock)

    def on(path: str, method: str = "GET") -> Any:
        return one(
            ("generic_key", "routes"),
            ("remote_address", CLIENT),
            ("path", path),
            ("method", method),
        )

    # HEAD is GET; the query and a second spelling of the path do not change the route.
    assert (await service.decide(on("/v1/a?x=1", "HEAD"))).statuses[0].limit_remaining == 1
    assert (await service.decide(on("//v1/./a"))).statuses[0].limit_remaining == 0
    assert (await service.decide(on("/v1/a"))).overall_code == OVER
    assert (await service.decide(on("/v1/b"))).statuses[0].limit_remaining == 1


@pytest.mark.parametrize(
    ("credential", "remaining"),
    [
        (("authorization", "Bearer k-acme"), 0),  # the same client as X-API-Key: k-acme
        (("authorization", "Bearer k-acme, Bearer other"), 1),  # ambiguous: its address
        (("api_key", " k-acme\t"), 0),
    ],
)
async def test_credentials_are_parsed_as_the_gateway_parses_them(
    clock: ManualClock, credential: tuple[str, str], remaining: int
) -> None:
    service = EnvoyRateLimitService(more_config(), store=MemoryStore(), clock=clock)
    await service.decide(
        one(("policy", "multi"), ("remote_address", CLIENT), ("api_key", "k-acme"))
    )
    answer = await service.decide(one(("policy", "multi"), ("remote_address", CLIENT), credential))
    assert answer.statuses[0].limit_remaining == remaining


class StuckStore(MemoryStore):
    async def acquire(self, items: Any, now: float) -> Any:
        await asyncio.Event().wait()


async def test_a_store_that_never_answers_is_cut_off(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(config(), store=StuckStore(), clock=clock, store_timeout=0.05)
    answer = await service.decide(envoy("several"))
    assert answer.overall_code == OK
    assert [s.HasField("current_limit") for s in answer.statuses] == [False] * 4


async def test_descriptors_on_one_counter_add_their_costs(running: Client) -> None:
    by_address = ENVOY_REQUESTS["by_address"][1][0]
    by_key = ENVOY_REQUESTS["by_key"][1][0]
    answer = await running.ask(request("edge", [by_address, by_key, by_address]))
    assert [s.limit_remaining for s in answer.statuses] == [1, 4, 1]
    # One member per name in the fields: the tighter of the two "api" buckets.
    assert headers(answer)["ratelimit"] == '"api";r=1;t=60'
    refused = await running.ask(request("edge", [by_address, by_key, by_address]))
    assert [s.code for s in refused.statuses] == [OVER, OK, OVER]
    assert headers(refused)["ratelimit"] == '"api";r=1;t=60'
    assert (await running.ask(envoy("by_key"))).statuses[0].limit_remaining == 3


async def test_the_address_ceiling_counts_addresses_and_spares_listed_ones(
    clock: ManualClock,
) -> None:
    ceiling = config_from_dict(
        {
            "upstream": {"url": "http://upstream.test"},
            "stores": {"default": "memory://"},
            "admin": {"enabled": False},
            "identity": {"address_limits": ["2/minute"]},
            "clients": [{"name": "office", "address": OTHER}],
            "rate_limit": {"policies": [{"name": "api", "limits": ["10/minute"]}]},
        }
    )
    service = EnvoyRateLimitService(ceiling, store=MemoryStore(), clock=clock)
    codes = [
        (
            await service.decide(one(("policy", "address"), ("remote_address", CLIENT), key))
        ).overall_code
        for key in (("api_key", "k-1"), ("api_key", "k-2"), ("api_key", "k-3"))
    ]
    assert codes == [OK, OK, OVER]  # fresh keys buy no fresh buckets
    listed = await service.decide(one(("policy", "address"), ("remote_address", OTHER)))
    assert not listed.statuses[0].HasField("current_limit")
    with pytest.raises(Exception, match="expected a remote_address entry"):
        await service.decide(one(("policy", "address"), ("api_key", "k-1")))


async def test_overlong_keys_are_refused(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(config(), store=MemoryStore(), clock=clock)
    with pytest.raises(ValueError, match="keys of at most 4096 characters"):
        await service.decide(
            one(("generic_key", "api"), ("remote_address", CLIENT), ("x" * 4097, ""))
        )


@pytest.mark.parametrize(
    "credential",
    [
        ("api_key", "k" * 4097),  # a padded X-API-Key
        ("authorization", "Bearer " + "k" * 4097),
        ("x-api-key", "k-acme" + " " * 4096),  # a known key, padded
    ],
)
async def test_an_oversize_credential_counts_as_the_address(
    running: Client, credential: tuple[str, str]
) -> None:
    # Before the fix: INVALID_ARGUMENT, which Envoy (failure_mode_deny: false) lets through.
    asked = request("edge", [[("generic_key", "api"), ("remote_address", CLIENT), credential]])
    codes = [(await running.ask(asked)).overall_code for _ in range(3)]
    assert codes == [OK, OK, OK]
    assert (await running.ask(envoy("by_address"))).overall_code == OVER  # one counter


async def test_the_query_is_not_measured_and_never_chooses_a_route(running: Client) -> None:
    base = [("generic_key", "charges"), ("remote_address", CLIENT), ("method", "POST")]
    padded = request("edge", [[*base, ("path", "/v1/charges?pad=" + "a" * 4100)]])
    answers = [await running.ask(padded) for _ in range(3)]
    assert [a.overall_code for a in answers] == [OK, OK, OVER]  # 4/minute, cost 2
    assert answers[0].statuses[0].limit_remaining == 2


@pytest.mark.parametrize("path", ["/v1/charges;v=1", "/a/%2F/b", "/v1/" + "a" * 4097 + "?q"])
async def test_a_path_surefoot_refuses_is_over_limit_with_invalid_path(
    running: Client, path: str
) -> None:
    charges = [("generic_key", "charges"), ("remote_address", CLIENT), ("method", "POST")]
    by_address = ENVOY_REQUESTS["by_address"][1][0]
    answer = await running.ask(request("edge", [by_address, [*charges, ("path", path)]]))
    assert answer.overall_code == OVER
    assert [s.code for s in answer.statuses] == [OK, OVER]
    document = json.loads(answer.raw_body)
    assert (document["code"], document["status"]) == ("invalid_path", 429)
    assert headers(answer) == {"content-type": "application/problem+json"}  # no Retry-After
    # Nothing was counted, on either descriptor.
    assert (await running.ask(envoy("by_address"))).statuses[0].limit_remaining == 2
    fine = await running.ask(request("edge", [[*charges, ("path", "/v1/charges")]]))
    assert fine.statuses[0].limit_remaining == 2


def header_config(headers: Sequence[str]) -> GatewayConfig:
    return config_from_dict(
        {
            "upstream": {"url": "http://upstream.test"},
            "stores": {"default": "memory://"},
            "admin": {"enabled": False},
            "identity": {"credential_headers": list(headers)},
            "clients": [{"name": "acme", "api_key": "k-acme", "tier": "pro"}],
            "rate_limit": {
                "policies": [
                    {"name": "api", "limits": ["3/minute"], "tiers": {"pro": ["5/minute"]}}
                ]
            },
        }
    )


async def test_credentials_come_from_the_files_credential_headers(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(header_config(["X-Token"]), store=MemoryStore(), clock=clock)

    async def remaining(*entries: tuple[str, str]) -> int:
        asked = one(("policy", "api"), ("remote_address", CLIENT), *entries)
        return int((await service.decide(asked)).statuses[0].limit_remaining)

    assert await remaining(("x-token", "k-acme")) == 4  # acme's counter: tier pro, 5/minute
    # Headers the file does not list are ignored: the address's own counter, 3/minute.
    assert await remaining(("api_key", "k-acme")) == 2
    assert await remaining(("authorization", "Bearer k-acme")) == 1
    assert await remaining(("x-api-key", "k-acme")) == 0
    assert await remaining(("x-token", "k-acme")) == 3


async def test_api_key_stands_for_x_api_key_when_it_is_listed(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(header_config(["x-api-key"]), store=MemoryStore(), clock=clock)
    for entry in (("api_key", "k-acme"), ("x-api-key", "k-acme")):
        await service.decide(one(("policy", "api"), ("remote_address", CLIENT), entry))
    left = await service.decide(one(("policy", "api"), ("remote_address", CLIENT)))
    assert left.statuses[0].limit_remaining == 2  # both counted as acme, not the address
    acme = await service.decide(one(("policy", "api"), ("x-api-key", "k-acme")))
    assert acme.statuses[0].limit_remaining == 2  # 5/minute (tier pro), 3 used


def override(clock: ManualClock, limits: tuple[str, ...] = ("1/minute",)) -> TemporaryOverride:
    return TemporaryOverride(
        id=uuid.uuid4().hex,
        policy="api",
        client=None,
        limits=limits,
        starts_at=clock.now(),
        expires_at=clock.now() + 600,
        by="ops",
        reason="incident 12",
    )


async def test_a_temporary_override_applies_after_a_sync_until_it_expires(
    clock: ManualClock,
) -> None:
    store = MemoryStore()
    service = EnvoyRateLimitService(config(), store=store, clock=clock)
    await SharedOverrides(store, clock=clock).add(override(clock))  # the admin API's write
    assert (await service.decide(envoy("by_address"))).statuses[0].limit_remaining == 2
    await service.sync_overrides()
    codes = [(await service.decide(envoy("by_other_address"))).overall_code for _ in range(2)]
    assert codes == [OK, OVER]
    clock.advance(600)  # it expires on the request path: the file's limit again
    codes = [(await service.decide(envoy("by_other_address"))).overall_code for _ in range(4)]
    assert codes == [OK, OK, OK, OVER]


async def test_serve_envoy_reads_the_overrides_at_start_and_stops_reading(
    clock: ManualClock,
) -> None:
    store = MemoryStore()
    await SharedOverrides(store, clock=clock).add(override(clock))
    served = await serve_envoy(config(), port=0, store=store, clock=clock)
    client = Client(served.port)
    try:
        codes = [(await client.ask(envoy("by_address"))).overall_code for _ in range(2)]
        assert codes == [OK, OVER]
        syncing = served.syncing
        assert syncing is not None
        assert not syncing.done()
    finally:
        await client.channel.close()
        await served.stop(None)
    assert syncing.cancelled()
    assert served.syncing is None


async def test_a_reloaded_file_keeps_the_counters_of_kept_limits(clock: ManualClock) -> None:
    service = EnvoyRateLimitService(config(), store=MemoryStore(), clock=clock)
    await service.decide(envoy("by_address"))
    service.update(more_config())
    assert (await service.decide(envoy("by_address"))).statuses[0].HasField(
        "current_limit"
    ) is False
    service.update(config())
    assert (await service.decide(envoy("by_address"))).statuses[0].limit_remaining == 1


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def acquire(self, items: Any, now: float) -> Any:
        self.calls.append(len(items))
        return await super().acquire(items, now)


async def test_one_request_is_one_store_call(clock: ManualClock) -> None:
    store = CountingStore()
    service = EnvoyRateLimitService(config(), store=store, clock=clock)
    by_key = ENVOY_REQUESTS["by_key"][1][0]
    await service.decide(request("edge", [*ENVOY_REQUESTS["several"][1], by_key]))
    assert store.calls == [3]  # api by address, charges, api by key: one acquire
    await service.decide(envoy("charges_elsewhere"))  # nothing to count: no call
    assert store.calls == [3]
