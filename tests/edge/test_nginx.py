"""NGINX (Debian's ``nginx``) running ``examples/edge/nginx.conf.template``, asking a real
``surefoot decide`` through ``auth_request``, in front of a recording upstream.

Two edges share one decision store: on SQLite both ask one decision service; on Redis each
asks its own, the two sharing the store. Every test calls from addresses of 127.0.0.0/8
picked at random (``loopback_addresses``), so counters a Redis store kept from an earlier
run never apply. The limits (5 per hour, GCRA) cannot refill during a test: no clock is
involved in what is asserted.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from _edge_helpers import (
    NGINX_TEMPLATE,
    DecideProcess,
    NginxProcess,
    RecordingUpstream,
    client,
    decide_config,
    decide_running,
    loopback_addresses,
    nginx_command,
    nginx_config,
    nginx_edge,
    store_url,
    surefoot_decide,
)
from tests.gateway._gateway_helpers import ROOT, rate, settled, surefoot_serve, toml_config

from _support import free_port
from surefoot.errors import StoreUnavailable, problem_document

pytestmark = pytest.mark.slow

LIMIT = 5
POLICIES = f"""
[rate_limit]
store = "default"
legacy_headers = true

[[rate_limit.policies]]
name = "reads"
limits = ["{LIMIT}/hour"]
algorithm = "gcra"
routes = ["GET /charges"]

[[rate_limit.policies]]
name = "writes"
limits = ["100/hour"]
algorithm = "gcra"
routes = ["POST /charges", "POST /refunds"]
"""

OVERRIDES = ("X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method")


def admitted(response: httpx.Response) -> None:
    """An allowed response: the upstream's, with the decision's fields."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["path"] == "/charges"
    assert rate(response, "ratelimit-policy") == {"reads": {"q": LIMIT, "w": 3600}}
    remaining = rate(response)["reads"]["r"]
    assert response.headers["x-ratelimit-limit"] == str(LIMIT)
    assert response.headers["x-ratelimit-remaining"] == str(remaining)
    assert "retry-after" not in response.headers


def refused(response: httpx.Response) -> dict[str, object]:
    """A 429 from the edge: surefoot's problem document and fields."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["code"] == "rate_limit_exceeded"
    assert body["status"] == 429
    assert body["policy"] == "reads"
    assert body["request_id"] == response.headers["x-request-id"]
    retry_after = int(response.headers["retry-after"])
    assert body["retry_after"] == retry_after
    assert rate(response) == {"reads": {"r": 0, "t": retry_after}}
    assert rate(response, "ratelimit-policy") == {"reads": {"q": LIMIT, "w": 3600}}
    assert response.headers["x-ratelimit-remaining"] == "0"
    return body


# -- two edges sharing one store ------------------------------------------------------------


@dataclass
class Edges:
    upstream: RecordingUpstream
    one: NginxProcess
    two: NginxProcess


@pytest.fixture(params=["sqlite", "redis"])
def edges(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Edges]:
    store = store_url(request.param, tmp_path)
    config = decide_config(store, POLICIES)
    services = [surefoot_decide(tmp_path, config, name="decide-1")]
    if request.param == "redis":
        services.append(surefoot_decide(tmp_path, config, name="decide-2"))
    with contextlib.ExitStack() as stack:
        stack.enter_context(decide_running(*services))
        upstream = stack.enter_context(RecordingUpstream().running())
        one, two = (
            stack.enter_context(
                nginx_edge(
                    tmp_path,
                    decide=services[index % len(services)].address,
                    upstream=upstream.address,
                    name=f"nginx-{index + 1}",
                )
            )
            for index in range(2)
        )
        yield Edges(upstream, one, two)


def test_two_edges_sharing_a_store_admit_exactly_the_limit(edges: Edges) -> None:
    (address,) = loopback_addresses(1)
    sent = 4 * LIMIT
    with (
        client(edges.one.url, address=address) as one,
        client(edges.two.url, address=address) as two,
        ThreadPoolExecutor(8) as pool,
    ):
        responses = list(pool.map(lambda i: (one, two)[i % 2].get("/charges"), range(sent)))

    allowed = [r for r in responses if r.status_code == 200]
    assert len(allowed) == LIMIT
    assert len(edges.upstream.requests("GET", "/charges")) == LIMIT  # refusals never got there
    for response in allowed:
        admitted(response)
    # One atomic decision each: every admission saw a different remaining count.
    assert sorted(rate(r)["reads"]["r"] for r in allowed) == list(range(LIMIT))
    others = [r for r in responses if r.status_code != 200]
    assert len(others) == sent - LIMIT
    request_ids = {refused(r)["request_id"] for r in others}
    assert len(request_ids) == len(others)  # each refusal has its own id (NGINX's $request_id)


# -- one edge, on SQLite ----------------------------------------------------------------------


@dataclass
class Edge:
    upstream: RecordingUpstream
    nginx: NginxProcess
    decide: DecideProcess


@contextlib.contextmanager
def one_edge(tmp: Path, *, decide_down: str, unix: bool = False) -> Iterator[Edge]:
    """One decision service on SQLite (on a Unix socket with ``unix``), the upstream, and
    NGINX with ``decide_down``."""
    config = decide_config(store_url("sqlite", tmp), POLICIES)
    decide = surefoot_decide(tmp, config, unix=unix)
    with (
        decide_running(decide),
        RecordingUpstream().running() as upstream,
        nginx_edge(
            tmp,
            decide=decide.address,
            upstream=upstream.address,
            decide_down=decide_down,
        ) as nginx,
    ):
        yield Edge(upstream, nginx, decide)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    with one_edge(tmp_path, decide_down="fail_closed") as running:
        yield running


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_a_spoofed_forwarding_header_is_replaced_so_the_limit_stays_per_client_address(
    tmp_path: Path, transport: str
) -> None:
    # On a Unix socket (upstream surefoot_decide { server unix:PATH; }), the peer has no
    # address: the service trusts it as the edge, and counts the address NGINX wrote.
    with one_edge(tmp_path, decide_down="fail_closed", unix=transport == "unix") as edge:
        spoofed_forwarding_is_replaced(edge)


def spoofed_forwarding_is_replaced(edge: Edge) -> None:
    caller, neighbour = loopback_addresses(2)
    statuses = []
    with client(edge.nginx.url, address=caller) as http:
        for index in range(LIMIT + 1):
            spoofed = f"198.51.100.{index + 1}"
            response = http.get(
                "/charges",
                headers={
                    "X-Forwarded-For": spoofed,
                    "X-Real-IP": spoofed,
                    "Forwarded": f"for={spoofed}",
                },
            )
            statuses.append(response.status_code)
    # The neighbour claims to be the caller: it is counted as itself all the same.
    with client(edge.nginx.url, address=neighbour) as http:
        other = http.get("/charges", headers={"X-Forwarded-For": caller, "X-Real-IP": caller})

    assert statuses == [200] * LIMIT + [429]
    admitted(other)
    assert rate(other)["reads"]["r"] == LIMIT - 1
    seen = edge.upstream.requests("GET", "/charges")
    assert [s.header("x-forwarded-for") for s in seen] == [[caller]] * LIMIT + [[neighbour]]
    assert [s.header("x-real-ip") for s in seen] == [[caller]] * LIMIT + [[neighbour]]
    assert all(not s.header("forwarded") for s in seen)


def test_a_refusal_other_than_429_keeps_its_status_and_problem(edge: Edge) -> None:
    (address,) = loopback_addresses(1)
    with client(edge.nginx.url, address=address) as http:
        # Two API keys in one request: which client is it? The gateway refuses it; so does
        # the edge (NGINX passes the client's headers to the decision, duplicates included).
        response = http.get("/charges", headers=[("X-API-Key", "key-a"), ("X-API-Key", "key-b")])

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "credentials_ambiguous"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert edge.upstream.seen == []


def test_the_upstreams_own_errors_pass_through_the_edge_unchanged(edge: Edge) -> None:
    (address,) = loopback_addresses(1)
    with client(edge.nginx.url, address=address) as http:
        responses = [http.get(f"/status/{status}") for status in (500, 502, 503, 504)]

    # error_page 500 sends auth_request's failures to @surefoot_unavailable: the upstream's
    # 5xx answers are not NGINX's errors and must not turn into that problem.
    assert [r.status_code for r in responses] == [500, 502, 503, 504]
    assert all(r.headers["content-type"] == "application/json" for r in responses)
    assert len(edge.upstream.seen) == 4


# -- the decision service down ------------------------------------------------------------


def test_decision_service_down_fails_open_when_the_template_says_fail_open(
    tmp_path: Path,
) -> None:
    (address,) = loopback_addresses(1)
    with (
        one_edge(tmp_path, decide_down="fail_open") as running,
        client(running.nginx.url, address=address) as http,
    ):
        before = http.get("/charges")
        running.decide.stop()
        after = [http.get("/charges") for _ in range(LIMIT + 1)]

    admitted(before)
    # Unlimited (beyond the limit) and without fields: no decision was made.
    assert [r.status_code for r in after] == [200] * (LIMIT + 1)
    assert all("ratelimit" not in r.headers for r in after)
    assert all(r.json()["path"] == "/charges" for r in after)
    assert len(running.upstream.requests("GET", "/charges")) == LIMIT + 2


def test_decision_service_down_fails_closed_when_the_template_says_fail_closed(
    tmp_path: Path,
) -> None:
    (address,) = loopback_addresses(1)
    with (
        one_edge(tmp_path, decide_down="fail_closed") as running,
        client(running.nginx.url, address=address) as http,
    ):
        before = http.get("/charges")
        running.decide.stop()
        after = http.get("/charges")

    admitted(before)
    assert after.status_code == 503, after.text
    assert after.headers["content-type"] == "application/problem+json"
    assert after.headers["retry-after"] == "1"
    assert "ratelimit" not in after.headers
    # The template's body is surefoot's catalogue entry, word for word.
    request_id = after.headers["x-request-id"]
    assert after.json() == problem_document(StoreUnavailable(retry_after=1), request_id=request_id)
    assert len(running.upstream.requests("GET", "/charges")) == 1  # only the one before


def raw_request(
    url: str, method: str, target: str, *, address: str, headers: Mapping[str, str] = {}
) -> tuple[int, dict[str, Any]]:
    """One request with ``target`` sent byte for byte (httpx would resolve ``..``): the
    status and the JSON body."""
    parts = urlsplit(url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=10, source_address=(address, 0))
    try:
        connection.request(method, target, headers=dict(headers))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("target", ["/x/../charges", "/charges/./", "//charges", "/%63harges"])
def test_a_path_not_in_canonical_form_is_refused_400_and_never_reaches_the_upstream(
    edge: Edge, target: str
) -> None:
    # NGINX forwards the path as sent (proxy_pass without a URI): an upstream that does not
    # resolve it as surefoot does would serve another route than the one counted.
    (address,) = loopback_addresses(1)
    status, problem = raw_request(edge.nginx.url, "GET", target, address=address)
    assert status == 400
    assert problem["code"] == "invalid_path"
    assert edge.upstream.seen == []


def test_a_method_override_header_is_refused_and_never_reaches_the_upstream(
    edge: Edge,
) -> None:
    # NGINX passes the client's headers to the subrequest: the decision sees the header
    # and refuses it (overrides are not allowed in POLICIES' file).
    (address,) = loopback_addresses(1)
    with client(edge.nginx.url, address=address) as http:
        refused = {
            name: http.post("/refunds", json={}, headers={name: "DELETE"}) for name in OVERRIDES
        }
    for name, response in refused.items():
        assert response.status_code == 400
        assert response.json()["code"] == "bad_request"
        assert name in response.json()["detail"]
    assert edge.upstream.seen == []


def test_with_overrides_allowed_the_edge_strips_the_headers_before_the_upstream(
    tmp_path: Path,
) -> None:
    (address,) = loopback_addresses(1)
    config = decide_config(store_url("sqlite", tmp_path), POLICIES, allow_method_override=True)
    decide = surefoot_decide(tmp_path, config)
    with (
        decide_running(decide),
        RecordingUpstream().running() as upstream,
        nginx_edge(tmp_path, decide=decide.address, upstream=upstream.address) as nginx,
        client(nginx.url, address=address) as http,
    ):
        answer = http.post("/refunds", json={}, headers=dict.fromkeys(OVERRIDES, "PUT"))
    assert answer.status_code == 201, answer.text
    (seen,) = upstream.requests("POST", "/refunds")
    assert [seen.header(name) for name in OVERRIDES] == [[], [], []]


def test_the_idempotency_split_matches_charges_as_routes_do(tmp_path: Path) -> None:
    # Routes match ignoring case and a trailing slash: so does the split, or a POST to
    # /Charges/ would be counted as "POST /charges" and skip the idempotency layer.
    (address,) = loopback_addresses(1)
    decide = surefoot_decide(tmp_path, decide_config(store_url("sqlite", tmp_path), POLICIES))
    with (
        decide_running(decide),
        RecordingUpstream().running() as api,
        RecordingUpstream().running() as gateway,
        nginx_edge(
            tmp_path, decide=decide.address, upstream=api.address, gateway=gateway.address
        ) as nginx,
        client(nginx.url, address=address) as http,
    ):
        posts = [http.post(path, json={}) for path in ("/charges", "/Charges/", "/CHARGES")]
        others = [http.post("/charges/x", json={}), http.get("/Charges/")]
    assert [r.status_code for r in posts + others] == [201, 201, 201, 201, 200]
    assert [(s.method, s.path) for s in gateway.seen] == [
        ("POST", "/charges"),
        ("POST", "/Charges/"),
        ("POST", "/CHARGES"),
    ]
    assert [(s.method, s.path) for s in api.seen] == [("POST", "/charges/x"), ("GET", "/Charges/")]


# -- the idempotency split ------------------------------------------------------------------


def test_post_charges_goes_through_surefoot_serve_and_is_replayed_other_posts_go_direct(
    tmp_path: Path,
) -> None:
    (address,) = loopback_addresses(1)
    with RecordingUpstream().running() as api:
        serve_dir = tmp_path / "serve"
        serve_dir.mkdir()
        # surefoot serve behind the edge: idempotency only (the edge already decided the
        # limits), trusting the edge's forwarding headers.
        body = (
            '[server]\ntrusted_proxies = ["127.0.0.1"]\n\n'
            "[identity]\naddress_limits = []\n\n"
            '[idempotency]\nmethods = ["POST"]\n'
        )
        gateway = surefoot_serve(
            serve_dir, toml_config(api.url, f"sqlite:///{serve_dir}/gateway.db", body)
        )
        try:
            gateway.wait_ready()
            decide = surefoot_decide(
                tmp_path, decide_config(store_url("sqlite", tmp_path), POLICIES)
            )
            with (
                decide_running(decide),
                nginx_edge(
                    tmp_path,
                    decide=decide.address,
                    upstream=api.address,
                    gateway=urlsplit(gateway.url).netloc,
                ) as nginx,
                client(nginx.url, address=address) as http,
            ):
                key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
                charge = {"amount": 1999, "currency": "eur"}
                first = http.post("/charges", json=charge, headers=key)
                again = settled(lambda: http.post("/charges", json=charge, headers=key))
                refunds = [http.post("/refunds", json=charge, headers=key) for _ in "ab"]
        finally:
            gateway.server.stop()

    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    # The edge decided the limits of both (its fields are on both responses).
    assert rate(first)["writes"]["r"] == 99
    assert rate(again)["writes"]["r"] < 99
    assert len(api.requests("POST", "/charges")) == 1  # executed once, then replayed
    # Another POST goes to the API directly: no idempotency there, both executed.
    assert [r.status_code for r in refunds] == [201, 201]
    assert all("idempotent-replayed" not in r.headers for r in refunds)
    assert len(api.requests("POST", "/refunds")) == 2
    # surefoot serve believed the edge: the API saw the client's address.
    assert api.requests("POST", "/charges")[0].header("x-forwarded-for") == [
        f"{address}, 127.0.0.1"
    ]


# -- the template -----------------------------------------------------------------------------


@pytest.mark.parametrize("decide_down", ["fail_open", "fail_closed"])
def test_the_template_is_valid_for_nginx_with_either_switch(
    tmp_path: Path, decide_down: str
) -> None:
    config = nginx_config(
        listen=f"127.0.0.1:{free_port()}",
        decide="127.0.0.1:8090",
        upstream="127.0.0.1:9000",
        gateway="127.0.0.1:8080",
        decide_down=decide_down,
    )
    (tmp_path / "nginx.conf").write_text(config)
    result = subprocess.run(
        [*nginx_command(tmp_path)[:-2], "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def _directives(text: str) -> list[str]:
    """The lines of an NGINX configuration without comments, blank lines and elisions,
    whitespace collapsed."""
    lines = (" ".join(line.partition("#")[0].split()) for line in text.splitlines())
    return [line for line in lines if line and "..." not in line]


def test_the_docs_quote_the_tested_template() -> None:
    page = (ROOT / "docs" / "edge.md").read_text()
    start = page.index("\n## NGINX\n")
    end = page.find("\n## ", start + 1)
    section = page[start : end if end != -1 else len(page)]
    blocks = re.findall(r"^```nginx\n(.*?)^```$", section, re.M | re.S)
    # The page shows the fail_closed switch and keeps the other placeholders.
    template = NGINX_TEMPLATE.read_text().replace("{{DECIDE_DOWN}}", "fail_closed")
    tested = set(_directives(template))
    assert len(blocks) >= 4
    for block in blocks:
        assert [line for line in _directives(block) if line not in tested] == []
