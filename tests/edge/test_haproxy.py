"""HAProxy in front of an API, asking ``surefoot decide`` (``examples/edge/haproxy.cfg.template``
and ``surefoot.lua``, run by Debian's ``haproxy`` as an ordinary process).

Each test starts its own processes on free ports of 127.0.0.1: the recording upstream (in
this process), ``surefoot decide`` on SQLite or Redis, and one or two HAProxy instances
configured through the environment variables the template reads. Clients connect from
random loopback addresses, so the edge's ``src`` is the address a client is counted as.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import pytest
from _edge_helpers import (
    DecideProcess,
    RecordingUpstream,
    binary,
    client,
    decide_config,
    loopback_addresses,
    surefoot_decide,
    wait_listening,
)
from tests.gateway._gateway_helpers import ROOT, Server, rate

from _services import store_url_sync
from _support import free_port
from surefoot.errors import (
    RateLimitExceeded,
    StoreUnavailable,
    problem_document,
    problem_type_uri,
)

pytestmark = pytest.mark.slow

TEMPLATE = ROOT / "examples" / "edge" / "haproxy.cfg.template"
LUA = ROOT / "examples" / "edge" / "surefoot.lua"
PROBLEM = "application/problem+json"


def policy(name: str, limit: str, route: str) -> str:
    """A policy exact enough to count on: ``sliding_log`` admits exactly the limit."""
    return (
        f'\n[[rate_limit.policies]]\nname = "{name}"\nlimits = ["{limit}"]\n'
        f'algorithm = "sliding_log"\nroutes = ["{route}"]\n'
    )


# -- processes ------------------------------------------------------------------------------


@dataclass
class HaproxyProcess:
    """One ``haproxy -db`` on a free port, in front of the upstream."""

    server: Server
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def haproxy_edge(
    tmp: Path, *, decide: str, upstream: str, when_unavailable: str, name: str = "haproxy"
) -> Iterator[HaproxyProcess]:
    """HAProxy on the template as it is, its ``${...}`` filled from the environment:
    ``decide`` and ``upstream`` are host:port; ``when_unavailable`` is "open" or "closed"."""
    port = free_port()
    env = {
        "SUREFOOT_LUA": str(LUA),
        "SUREFOOT_BIND": f"127.0.0.1:{port}",
        "SUREFOOT_DECIDE_LOCAL": f"127.0.0.1:{free_port()}",
        "SUREFOOT_DECIDE": decide,
        "SUREFOOT_UPSTREAM": upstream,
        "SUREFOOT_WHEN_UNAVAILABLE": when_unavailable,
    }
    command = [binary("haproxy", package="haproxy"), "-f", str(TEMPLATE), "-db"]
    server = Server(command, log=tmp / f"{name}.log", env=env)
    try:
        wait_listening(server, port)
        yield HaproxyProcess(server, port)
    finally:
        server.stop()


@contextlib.contextmanager
def deciding(
    tmp: Path, store: str, policies: str, *, name: str = "decide", **server: Any
) -> Iterator[DecideProcess]:
    """``surefoot decide`` on ``store``, ready, stopped on exit (``server``: the
    ``decide_config`` options of its ``[server]`` table)."""
    process = surefoot_decide(tmp, decide_config(store, policies, **server), name=name)
    try:
        process.wait_ready()
        yield process
    finally:
        process.server.stop()


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream().running() as running:
        yield running


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store shared by every decision service of the test."""
    with store_url_sync(request.param, tmp_path) as url:
        yield url


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The problem document of ``response``, checked to be ``status`` and ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code), body
    assert body["type"] == problem_type_uri(code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# -- tests -----------------------------------------------------------------------------------


def test_two_haproxy_edges_share_the_limit_and_admit_exactly_it(
    tmp_path: Path, store: str, upstream: RecordingUpstream
) -> None:
    policies = policy("orders", "5/hour", "GET /orders")
    with (
        deciding(tmp_path, store, policies, name="decide-a") as decide_a,
        deciding(tmp_path, store, policies, name="decide-b") as decide_b,
        haproxy_edge(
            tmp_path,
            decide=decide_a.address,
            upstream=upstream.address,
            when_unavailable="closed",
            name="haproxy-a",
        ) as edge_a,
        haproxy_edge(
            tmp_path,
            decide=decide_b.address,
            upstream=upstream.address,
            when_unavailable="closed",
            name="haproxy-b",
        ) as edge_b,
    ):
        key = {"X-API-Key": f"key-{uuid.uuid4().hex}"}
        (address,) = loopback_addresses(1)

        def send(i: int) -> httpx.Response:
            edge = (edge_a, edge_b)[i % 2]
            with client(edge.url, address=address, headers=key) as http:
                return http.get("/orders")

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(send, range(16)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 11
    assert len(upstream.requests("GET", "/orders")) == 5
    for refused in (r for r in responses if r.status_code == 429):
        problem(refused, 429, "rate_limit_exceeded")


def test_the_rate_limit_fields_on_allow_and_refusal_and_the_problem_on_429(
    tmp_path: Path, store: str, upstream: RecordingUpstream
) -> None:
    policies = "[rate_limit]\nlegacy_headers = true\n" + policy("orders", "3/hour", "GET /orders")
    (address,) = loopback_addresses(1)
    key = {"X-API-Key": f"key-{uuid.uuid4().hex}"}
    with (
        deciding(tmp_path, store, policies) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="closed"
        ) as edge,
        client(edge.url, address=address, headers=key) as http,
    ):
        allowed = [http.get("/orders") for _ in range(3)]
        refused = [http.get("/orders"), http.get("/orders")]

    for n, response in enumerate(allowed):
        assert response.status_code == 200, response.text
        assert response.json()["path"] == "/orders"  # the upstream's answer
        assert rate(response)["orders"]["r"] == 2 - n
        assert rate(response, "ratelimit-policy") == {"orders": {"q": 3, "w": 3600}}
        assert response.headers["x-ratelimit-limit"] == "3"
        assert response.headers["x-ratelimit-remaining"] == str(2 - n)
        assert "x-ratelimit-reset" in response.headers
    assert len(upstream.requests("GET", "/orders")) == 3

    first = refused[0]
    body = problem(first, 429, "rate_limit_exceeded")
    assert body["title"] == RateLimitExceeded.title
    retry_after = int(first.headers["retry-after"])
    assert 0 < retry_after <= 3600
    assert body["retry_after"] == retry_after
    assert rate(first)["orders"] == {"r": 0, "t": retry_after}
    assert rate(first, "ratelimit-policy") == {"orders": {"q": 3, "w": 3600}}
    assert first.headers["x-ratelimit-remaining"] == "0"
    # The request id is the one HAProxy made (unique-id-format) and the decision adopted.
    ids = [r.headers["x-request-id"] for r in refused]
    assert [str(uuid.UUID(i)) for i in ids] == ids
    assert ids[0] != ids[1]
    assert len(upstream.requests("GET", "/orders")) == 3  # a refusal never reaches it


def test_ambiguous_credentials_are_refused_as_the_gateway_refuses_them(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    (address,) = loopback_addresses(1)
    with (
        deciding(
            tmp_path, f"sqlite:///{tmp_path}/store.db", policy("orders", "3/hour", "GET /orders")
        ) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="closed"
        ) as edge,
        client(edge.url, address=address) as http,
    ):
        twice = http.get("/orders", headers=[("X-API-Key", "key-a"), ("X-API-Key", "key-b")])
        once = http.get("/orders", headers={"X-API-Key": "key-a"})

    problem(twice, 400, "credentials_ambiguous")
    assert "retry-after" not in twice.headers
    assert once.status_code == 200  # each value reached the decision as the client sent it
    assert len(upstream.requests("GET", "/orders")) == 1


def test_a_client_s_own_forwarding_headers_are_ignored(
    tmp_path: Path, store: str, upstream: RecordingUpstream
) -> None:
    policies = policy("per_address", "3/hour", "GET /by-address")
    spoofer, other = loopback_addresses(2)
    with (
        deciding(tmp_path, store, policies) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="closed"
        ) as edge,
    ):
        with client(edge.url, address=spoofer) as http:
            spoofed = [
                http.get(
                    "/by-address",
                    headers={
                        "X-Forwarded-For": f"198.51.100.{i}",
                        "X-Real-IP": f"198.51.100.{i}",
                        "Forwarded": f"for=198.51.100.{i}",
                    },
                )
                for i in range(5)
            ]
        with client(edge.url, address=other) as http:
            elsewhere = http.get("/by-address")

    # Counted as the address HAProxy saw, whatever the client claimed: 3 then refused.
    assert [r.status_code for r in spoofed] == [200, 200, 200, 429, 429]
    problem(spoofed[3], 429, "rate_limit_exceeded")
    # Another client address has its own count: the edge forwards its src, not its own.
    assert elsewhere.status_code == 200
    assert rate(elsewhere)["per_address"]["r"] == 2


def test_decision_service_down_fail_closed_answers_503_store_unavailable(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    (address,) = loopback_addresses(1)
    store = f"sqlite:///{tmp_path}/store.db"
    with (
        deciding(tmp_path, store, policy("orders", "100/hour", "GET /orders")) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="closed"
        ) as edge,
        client(edge.url, address=address) as http,
    ):
        before = http.get("/orders")
        decide.server.stop()
        during = [http.get("/orders"), http.get("/orders")]
        log = edge.server.tail()

    assert before.status_code == 200
    assert "ratelimit" in before.headers
    for response in during:
        body = problem(response, 503, "store_unavailable")
        # The catalogue's document, as the gateway answers a store it cannot reach.
        expected = problem_document(StoreUnavailable(retry_after=1), request_id=body["request_id"])
        assert body == expected
        assert response.headers["retry-after"] == "1"
        assert "ratelimit" not in response.headers
    assert len(upstream.requests("GET", "/orders")) == 1  # only the request before
    assert "surefoot: the decision service is unavailable" in log


def test_decision_service_down_fail_open_forwards_unlimited(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    (address,) = loopback_addresses(1)
    store = f"sqlite:///{tmp_path}/store.db"
    with (
        deciding(tmp_path, store, policy("orders", "1/hour", "GET /orders")) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="open"
        ) as edge,
        client(edge.url, address=address) as http,
    ):
        before = [http.get("/orders"), http.get("/orders")]
        decide.server.stop()
        during = [http.get("/orders") for _ in range(3)]

    assert [r.status_code for r in before] == [200, 429]
    # Open: forwarded past the exhausted limit, with no rate-limit fields (nothing decided).
    assert [r.status_code for r in during] == [200, 200, 200]
    for response in during:
        assert json.loads(response.content)["path"] == "/orders"
        assert "ratelimit" not in response.headers
    assert len(upstream.requests("GET", "/orders")) == 4


OVERRIDES = ("X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method")


def test_a_method_override_header_is_refused_and_never_reaches_the_upstream(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    # The Lua action forwards the override headers: the decision refuses them (overrides
    # are not allowed) rather than count a method the upstream would not run.
    (address,) = loopback_addresses(1)
    policies = policy("deletes", "1/hour", "DELETE /items/*")
    with (
        deciding(tmp_path, f"sqlite:///{tmp_path}/d.db", policies) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="closed"
        ) as edge,
        client(edge.url, address=address) as http,
    ):
        refused = {name: http.post("/items/1", headers={name: "DELETE"}) for name in OVERRIDES}
    for name, response in refused.items():
        assert name in problem(response, 400, "bad_request")["detail"]
    assert upstream.seen == []


def test_with_overrides_allowed_haproxy_strips_the_headers_before_the_upstream(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    (address,) = loopback_addresses(1)
    policies = policy("deletes", "1/hour", "DELETE /items/*")
    with (
        deciding(
            tmp_path, f"sqlite:///{tmp_path}/d.db", policies, allow_method_override=True
        ) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="closed"
        ) as edge,
        client(edge.url, address=address) as http,
    ):
        first = http.post("/items/1", headers=dict.fromkeys(OVERRIDES, "DELETE"))
        second = http.post("/items/1", headers={"X-HTTP-Method-Override": "DELETE"})
    # Counted as the DELETE it names (so the Lua forwarded the headers)...
    assert first.status_code == 201, first.text
    problem(second, 429, "rate_limit_exceeded")
    # ...and never seen by the upstream.
    (seen,) = upstream.requests("POST", "/items/1")
    assert [seen.header(name) for name in OVERRIDES] == [[], [], []]


def test_a_path_not_in_canonical_form_is_refused_400_and_never_reaches_the_upstream(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    (address,) = loopback_addresses(1)
    with (
        deciding(tmp_path, f"sqlite:///{tmp_path}/d.db", policy("o", "1/hour", "GET /o")) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="closed"
        ) as edge,
    ):
        connection = HTTPConnection("127.0.0.1", edge.port, timeout=10, source_address=(address, 0))
        try:
            connection.request("GET", "/x/../o")
            answer = connection.getresponse()
            status, body = answer.status, json.loads(answer.read())
        finally:
            connection.close()
    assert (status, body["code"]) == (400, "invalid_path")
    assert upstream.seen == []


def test_with_forwarded_configured_haproxy_clients_are_still_counted_apart(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    # The Lua action writes X-Forwarded-For only; with forwarded_header = "forwarded" the
    # decision reads it when Forwarded is absent, or every client would share one bucket.
    one, two = loopback_addresses(2)
    with (
        deciding(
            tmp_path,
            f"sqlite:///{tmp_path}/d.db",
            policy("o", "1/hour", "GET /o"),
            forwarded_header="forwarded",
        ) as decide,
        haproxy_edge(
            tmp_path, decide=decide.address, upstream=upstream.address, when_unavailable="closed"
        ) as edge,
    ):
        answers = []
        for address in (one, two, one):
            with client(edge.url, address=address) as http:
                answers.append(http.get("/o"))
    assert [a.status_code for a in answers] == [200, 200, 429]


def test_the_docs_show_the_configuration_and_the_script_as_they_are_tested() -> None:
    page = (ROOT / "docs" / "edge.md").read_text()
    section = page[page.index("\n## HAProxy\n") :]
    blocks = dict(re.findall(r"^```(haproxy|lua)\n(.*?)^```$", section, re.M | re.S))
    assert blocks == {"haproxy": TEMPLATE.read_text(), "lua": LUA.read_text()}
