"""Who is calling, as the gateway sees it: one credential is one principal in every
spelling, unknown credentials buy no fresh buckets, ambiguous ones are refused.

The policy-file checks run in process. The rest goes over real sockets: a raw socket
client sends exact bytes to ``surefoot serve`` (two of them: one whose file lists API
keys, one whose file lists none), in front of the legacy payments API. Each test calls
from an address of its own, told through ``X-Forwarded-For`` by 127.0.0.1, the gateways'
trusted proxy, so that no test spends another's per-address counters.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from _gateway_helpers import (
    EchoUpstream,
    GatewayProcess,
    Server,
    gateway_config,
    legacy_upstream,
    problem,
    running,
    surefoot_serve,
    toml_config,
)

from surefoot.errors import ConfigurationError
from test_identity import CREDENTIAL_SPELLINGS, spelled

KNOWN_KEY = "sk_acme_e2e"
TIERED_KEY = "sk_beta_e2e"  # used by one test only: its counter is its own


# -- the policy file --------------------------------------------------------------------------


def policies(*entries: dict[str, Any], **tables: Any) -> dict[str, Any]:
    return {"rate_limit": {"policies": list(entries)}, **tables}


CHARGES = {"name": "charges", "limits": ["3/minute"], "routes": ["POST /charges"]}
READS = {
    "name": "reads",
    "limits": ["10/minute"],
    "routes": ["GET /*"],
    "exempt": ["GET /health"],
}


def test_without_api_keys_an_address_ceiling_covers_the_policies_routes() -> None:
    (ceiling,) = gateway_config(policies(CHARGES, READS)).rate_limit_policies[2:]
    assert ceiling.name == "address"
    assert ceiling.per == "address"
    assert [limit.describe() for limit in ceiling.limits] == ["1000 requests per minute"]
    assert ceiling.routes == ("POST /charges", "GET /*")
    assert ceiling.exempt == ()  # /health is exempt from 'reads' only
    everywhere = {"name": "all", "limits": ["5/second"], "exempt": ["GET /health"]}
    (ceiling,) = gateway_config(
        policies(everywhere, {**READS, "exempt": ["GET /health", "GET /x"]})
    ).rate_limit_policies[2:]
    assert (ceiling.routes, ceiling.exempt) == ((), ("GET /health",))


@pytest.mark.anyio
async def test_a_client_listed_by_address_is_not_held_to_the_ceiling() -> None:
    batch = {"name": "batch", "address": "127.0.0.1", "tier": "bulk"}
    tiered = {**CHARGES, "tiers": {"bulk": ["50/minute"]}}
    config = gateway_config(
        policies(tiered, identity={"address_limits": ["2/minute"]}),
        clients=[batch],
        idempotency={"required": False},
    )
    (ceiling,) = config.rate_limit_policies[1:]
    assert ceiling.allow == frozenset({"addr:127.0.0.1"})
    async with (
        running(config, upstream=EchoUpstream()) as gw,
        gw.connect(client="127.0.0.1") as listed,
        gw.connect(client="10.9.9.9") as other,
    ):
        statuses = [(await listed.post("/charges", json={})).status_code for _ in range(6)]
        unnamed = [(await other.post("/charges", json={})).status_code for _ in range(3)]
    assert statuses == [200] * 6
    assert unnamed == [200, 200, 429]  # the ceiling still holds for everyone else


@pytest.mark.parametrize(
    "tables",
    [
        # API keys listed: unknown credentials already count as their address.
        {"clients": [{"name": "acme", "api_key": KNOWN_KEY}]},
        {"identity": {"address_limits": []}},
    ],
)
def test_no_ceiling_with_api_keys_listed_or_when_switched_off(tables: dict[str, Any]) -> None:
    config = gateway_config(policies(CHARGES, **tables))
    assert [p.name for p in config.rate_limit_policies] == ["charges"]
    assert gateway_config().rate_limit_policies == ()  # nothing limited: nothing to back


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            policies(CHARGES, identity={"address_limits": ["5/fortnight"]}),
            "identity.address_limits: expected",
        ),
        (
            policies(CHARGES, stores={"default": "redis+cluster://127.0.0.1:7000"}),
            "identity.address_limits: expected [] with a Redis Cluster rate-limit store",
        ),
        (
            policies({**CHARGES, "name": "address"}),
            "rate_limit.policies[0].name: 'address' is the [identity] address_limits",
        ),
    ],
)
def test_a_ceiling_that_cannot_work_is_refused(tables: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        gateway_config(tables)
    assert message in str(caught.value)


@pytest.mark.parametrize("key", [" sk_padded", "Bearer sk_x", ""])
def test_an_api_key_that_no_request_could_match_is_refused_unshown(key: str) -> None:
    with pytest.raises(
        ConfigurationError, match=r"clients\[0\]\.api_key: expected the key alone"
    ) as caught:
        gateway_config(clients=[{"name": "acme", "api_key": key}])
    assert "sk_" not in str(caught.value)


def test_a_listed_key_is_one_principal_for_every_spelling() -> None:
    config = gateway_config(clients=[{"name": "acme", "api_key": KNOWN_KEY}])
    assert config.api_keys == [KNOWN_KEY]
    assert list(config.principals.values()) == ["acme"]


@pytest.mark.anyio
async def test_ambiguous_credentials_are_refused_on_any_route() -> None:
    upstream = EchoUpstream()
    async with running(gateway_config(), upstream=upstream) as gw:
        twice = await gw.client.get("/anything", headers=[("X-API-Key", "k"), ("X-API-Key", "k")])
        listed = await gw.client.get("/anything", headers={"Authorization": "Bearer a, Basic b"})
    problem(twice, 400, "credentials_ambiguous")
    problem(listed, 400, "credentials_ambiguous")
    assert upstream.seen == []


@pytest.mark.anyio
async def test_different_credentials_in_two_headers_are_refused_without_a_client_list() -> None:
    upstream = EchoUpstream()
    async with running(gateway_config(), upstream=upstream) as gw:
        both = {"Authorization": "Bearer junk-1", "X-API-Key": "k"}
        refused = await gw.client.get("/anything", headers=both)
        same = await gw.client.get(
            "/anything", headers={"Authorization": "Bearer k", "X-API-Key": "k"}
        )
    problem(refused, 400, "credentials_ambiguous")
    assert same.status_code == 200
    assert len(upstream.seen) == 1


LIMITED = {"policies": [{"name": "charges", "limits": ["3/hour"], "routes": ["POST /charges"]}]}


@pytest.mark.anyio
async def test_a_credential_the_connection_header_names_never_picks_the_bucket() -> None:
    # The proxy drops what Connection names, so the upstream only ever hears of X-API-Key:
    # the gateway must count that, not the junk beside it.
    upstream = EchoUpstream()
    config = gateway_config(rate_limit=LIMITED, idempotency={"required": False})
    async with running(config, upstream=upstream) as gw:
        statuses = []
        for i in range(8):
            headers = {
                "Authorization": f"Bearer junk-{i}",
                "X-API-Key": "k",
                "Connection": "authorization",
            }
            statuses.append(
                (await gw.client.post("/charges", json={}, headers=headers)).status_code
            )
    assert statuses == [200] * 3 + [429] * 5
    assert all(seen.header("authorization") == [] for seen in upstream.seen)


@pytest.mark.anyio
async def test_a_method_override_the_connection_header_names_is_never_matched() -> None:
    upstream = EchoUpstream()
    config = gateway_config(
        server={"allow_method_override": True},
        routes=[{"match": "POST /charges", "idempotency": {"required": True}}],
    )
    async with running(config, upstream=upstream) as gw:
        headers = {"X-HTTP-Method-Override": "GET", "Connection": "x-http-method-override"}
        keyless = await gw.client.post("/charges", json={}, headers=headers)
    problem(keyless, 400, "idempotency_key_missing")
    assert upstream.seen == []


# -- on the wire --------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def problem(self) -> dict[str, Any]:
        assert self.header("content-type") == "application/problem+json", self
        document: dict[str, Any] = json.loads(self.body)
        return document


def exchange(
    gateway: GatewayProcess,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    *,
    address: str,
    body: bytes = b"",
) -> Answer:
    """One request, as exact bytes on a connection of its own, from ``address``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"X-Forwarded-For: {address}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    port = urlsplit(gateway.url).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    pairs = [field.partition(":") for field in fields]
    return Answer(
        int(status_line.split()[1]),
        [(name.strip().lower(), value.strip()) for name, _, value in pairs],
        content,
    )


def quota(answer: Answer, policy: str) -> int | None:
    """The ``q`` of ``policy`` in ``RateLimit-Policy``."""
    for item in (answer.header("ratelimit-policy") or "").split(","):
        name, *params = item.strip().split(";")
        if name.strip('"') == policy:
            return next(int(p[2:]) for p in params if p.startswith("q="))
    return None


KNOWN = f"""
[server]
trusted_proxies = ["127.0.0.1"]

[[clients]]
name = "acme"
api_key = "{KNOWN_KEY}"
tier = "partner"

[[clients]]
name = "beta"
api_key = "{TIERED_KEY}"
tier = "partner"

[[rate_limit.policies]]
name = "reads"
limits = ["3/hour"]
routes = ["GET /status/200"]
tiers = {{ partner = ["8/hour"] }}
"""

UNKNOWN = """
[server]
trusted_proxies = ["127.0.0.1"]

[identity]
address_limits = ["20/hour"]

[[rate_limit.policies]]
name = "spelling"
limits = ["5/hour"]
routes = ["GET /status/200"]

[[rate_limit.policies]]
name = "keys"
limits = ["3/hour"]
routes = ["GET /status/202"]
"""


@dataclass
class Gateways:
    known: GatewayProcess  # the file lists an API key
    unknown: GatewayProcess  # it lists none: the upstream verifies keys


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    upstream, url = legacy_upstream(tmp_path_factory.mktemp("upstream"))
    made: list[GatewayProcess] = []
    for body in (KNOWN, UNKNOWN):
        folder = tmp_path_factory.mktemp("gateway")
        made.append(surefoot_serve(folder, toml_config(url, f"sqlite:///{folder}/s.db", body)))
    servers: list[Server] = [upstream, *(g.server for g in made)]
    try:
        upstream.wait_ready(url + "/health")
        for gateway in made:
            gateway.wait_ready()
        yield Gateways(*made)
    finally:
        for server in servers:
            server.stop()


def statuses(answers: Sequence[Answer]) -> list[int]:
    return [answer.status for answer in answers]


@pytest.mark.slow
def test_one_key_in_every_spelling_is_one_bucket(gateways: Gateways) -> None:
    answers = [
        exchange(
            gateways.unknown,
            "GET",
            "/status/200",
            spelled(spelling, "sk_one_key"),
            address="198.51.100.1",
        )
        for spelling in CREDENTIAL_SPELLINGS
    ]
    assert statuses(answers) == [200] * 5 + [429] * (len(CREDENTIAL_SPELLINGS) - 5)
    assert answers[-1].problem()["policy"] == "spelling"


@pytest.mark.slow
def test_made_up_keys_share_their_address_bucket_when_the_file_lists_keys(
    gateways: Gateways,
) -> None:
    def get(key: str) -> Answer:
        headers = [("X-API-Key", key)]
        return exchange(gateways.known, "GET", "/status/200", headers, address="198.51.100.2")

    made_up = [get(f"sk_{secrets.token_hex(8)}") for _ in range(30)]
    known = get(KNOWN_KEY)
    assert statuses(made_up) == [200] * 3 + [429] * 27
    assert made_up[-1].problem()["policy"] == "reads"
    assert known.status == 200  # the listed client is its own principal, from anywhere
    assert quota(known, "reads") == 8


@pytest.mark.slow
def test_without_a_client_list_each_key_has_its_bucket_under_an_address_ceiling(
    gateways: Gateways,
) -> None:
    def get(key: str, address: str = "198.51.100.3") -> Answer:
        return exchange(
            gateways.unknown, "GET", "/status/202", [("X-API-Key", key)], address=address
        )

    one_key = [get("sk_steady") for _ in range(4)]
    made_up = [get(f"sk_{secrets.token_hex(8)}") for _ in range(30)]
    elsewhere = get(f"sk_{secrets.token_hex(8)}", address="198.51.100.4")
    assert statuses(one_key) == [202] * 3 + [429]
    assert one_key[-1].problem()["policy"] == "keys"
    # 20 an hour from one address, whatever the keys: 3 went to sk_steady.
    assert statuses(made_up) == [202] * 17 + [429] * 13
    assert made_up[-1].problem()["policy"] == "address"
    assert quota(made_up[0], "address") == 20
    assert elsewhere.status == 202


@pytest.mark.slow
def test_a_listed_key_keeps_its_tier_in_every_spelling_and_beside_junk(
    gateways: Gateways,
) -> None:
    spellings = [spelled(spelling, TIERED_KEY) for spelling in CREDENTIAL_SPELLINGS]
    spellings += [
        [("X-API-Key", TIERED_KEY), ("Authorization", f"Bearer junk-{secrets.token_hex(4)}")]
        for _ in range(3)
    ]
    answers = [
        exchange(gateways.known, "GET", "/status/200", headers, address="198.51.100.5")
        for headers in spellings
    ]
    assert statuses(answers) == [200] * 8 + [429] * (len(spellings) - 8)
    assert {quota(answer, "reads") for answer in answers} == {8}


@pytest.mark.slow
def test_two_made_up_keys_behind_one_address_never_share_a_stored_response(
    gateways: Gateways,
) -> None:
    def post(key: str) -> Answer:
        headers = [("X-API-Key", key), ("Idempotency-Key", "one-key-two-callers")]
        return exchange(
            gateways.known, "POST", "/status/201", headers, address="198.51.100.6", body=b"{}"
        )

    first, second, again = post("sk_made_up_1"), post("sk_made_up_2"), post("sk_made_up_1")
    assert statuses([first, second, again]) == [201, 201, 201]
    assert first.header("idempotent-replayed") is None
    assert second.header("idempotent-replayed") is None  # executed: not the other's answer
    assert again.header("idempotent-replayed") == "true"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/status/200", [("Authorization", f"Bearer {KNOWN_KEY}"), ("Authorization", "x")]),
        ("GET", "/health", [("X-API-Key", KNOWN_KEY), ("x-api-key", KNOWN_KEY)]),
        ("GET", "/status/200", [("Authorization", f"Bearer {KNOWN_KEY}, Bearer other")]),
        (
            "POST",
            "/status/201",
            [("X-API-Key", "a"), ("X-API-Key", "b"), ("Idempotency-Key", "ambiguous")],
        ),
    ],
)
def test_ambiguous_credentials_get_a_400_problem(
    gateways: Gateways, method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    answer = exchange(gateways.known, method, path, headers, address="198.51.100.7", body=b"{}")
    assert answer.status == 400
    document = answer.problem()
    assert document["code"] == "credentials_ambiguous"
    assert KNOWN_KEY not in answer.body.decode()
