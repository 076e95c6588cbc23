"""The rate-limit, error-format and timeout checks against real servers on 127.0.0.1.

slowapi (``tests/probe/targets.py``'s ``slowapi_app``, as its documentation sets it up) and
``surefoot serve`` (a rate-limit policy in front of the legacy payments API), with limits of
5 requests per 2 seconds so that the one real wait of each ``retry_after`` stays short.
The assertions record what each really does; the checks' verdicts must say the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.gateway._gateway_helpers import Server, legacy_upstream, surefoot_serve, toml_config

from _support import free_port
from surefoot.probe import Finding, Target, Verdict
from surefoot.probe._client import HttpProbeClient
from surefoot.probe._limits import LIMIT_CHECKS

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

#: Every check, in the order a run takes them (the first sees a fresh window).
CHECKS = ["rate_limit_headers", "retry_after", "limit_scope", "error_format", "timeouts"]
KEY_A = {"X-API-Key": "probe-key-a"}
KEY_B = {"X-API-Key": "probe-key-b"}


async def probe(goal: Target, checks: list[str] = CHECKS) -> dict[str, Finding]:
    """``checks`` on ``goal``, in order, through the probe's own client."""
    client = HttpProbeClient(
        hosts=[goal.url.split("/")[2]],
        max_requests=200,
        max_duration=60,
        timeout=10,
        credential_headers=["X-API-Key"],
        run=uuid.uuid4().hex[:8],
    )
    async with client:
        return {check: await LIMIT_CHECKS[check](client, goal, client.run) for check in checks}


def shown(found: dict[str, Finding]) -> str:
    return "\n".join(
        f"{c}: {f.verdict.value}: {f.summary} {dict(f.facts)}" for c, f in found.items()
    )


@contextlib.contextmanager
def slowapi(tmp: Path, *, headers: bool) -> Iterator[str]:
    """``slowapi_app`` served by uvicorn on a free port, ready: its URL."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "tests.probe.targets:slowapi_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {"SUREFOOT_PROBE_SLOWAPI_LIMIT": "5/2 seconds"}
    if headers:
        env["SUREFOOT_PROBE_SLOWAPI_HEADERS"] = "1"
    server, url = Server(command, log=tmp / "slowapi.log", env=env), f"http://127.0.0.1:{port}"
    try:
        server.wait_ready(url + "/health")
        yield url
    finally:
        server.stop()


def hello(base: str, **fields: Any) -> Target:
    target = Target(name="hello", method="GET", url=base + "/hello", limit_requests=20)
    return dataclasses.replace(target, **fields)


def verdicts(found: dict[str, Finding]) -> dict[str, str]:
    return {check: finding.verdict.value for check, finding in found.items()}


def redacted(found: dict[str, Finding]) -> bool:
    """No credential of the probe in any finding's evidence or facts (``_model`` Rule 2)."""
    text = repr(found)
    return "probe-key-a" not in text and "probe-key-b" not in text


async def test_slowapi_by_default_sends_no_fields_and_no_retry_after(tmp_path: Path) -> None:
    with slowapi(tmp_path, headers=False) as base:
        found = await probe(hello(base, alt_headers=KEY_B, slow_url=base + "/slow?seconds=0.1"))
    assert verdicts(found) == {
        "rate_limit_headers": "fail",  # a 429 after 5 requests, not one field before it
        "retry_after": "fail",  # its 429 has no Retry-After: nothing to wait for
        "limit_scope": "pass",
        "error_format": "fail",  # Starlette's text/plain 404
        "timeouts": "pass",
    }, shown(found)
    headers = found["rate_limit_headers"].facts
    assert (headers["admitted_before_429"], headers["fields"]) == (5, [])
    limited = found["rate_limit_headers"].evidence[-1]
    assert (limited.status, limited.header("content-type")) == (429, "application/json")
    assert limited.response_body == '{"error":"Rate limit exceeded: 5 per 2 second"}'
    assert "no Retry-After" in found["retry_after"].summary
    # keyed by the client address: another API key from the same address is refused too
    assert found["limit_scope"].facts["scope"] == "global"
    assert found["error_format"].facts["errors"] == [
        {
            "status": 404,
            "content_type": "text/plain",
            "problem_json": False,
            "code": None,
            "leaks": [],
        }
    ]
    assert found["timeouts"].facts["status"] == 200
    assert redacted(found)


async def test_slowapi_with_headers_enabled_sends_x_ratelimit_and_an_honest_retry_after(
    tmp_path: Path,
) -> None:
    with slowapi(tmp_path, headers=True) as base:
        found = await probe(hello(base, alt_headers=KEY_B))
    assert verdicts(found) == {
        "rate_limit_headers": "pass",
        "retry_after": "pass",
        "limit_scope": "pass",
        "error_format": "fail",
        "timeouts": "skipped",  # no slow_url
    }, shown(found)
    headers = found["rate_limit_headers"].facts
    assert (headers["admitted_before_429"], headers["fields"]) == (5, ["x-ratelimit"])
    assert headers["x_ratelimit"]["x-ratelimit-limit"] == "5"
    assert headers["x_ratelimit_reset"] == "epoch"  # X-RateLimit-Reset is a Unix time
    # the window: the first answer's reset less its Date; slowapi's reset is a second late
    # and Date whole seconds, so it reads 3 or 4 s for 2 s: never shorter than the truth
    assert (headers["limit"], headers["limit_from"]) == (5, "x-ratelimit")
    assert 2 <= headers["window"] <= 5, headers
    first = found["rate_limit_headers"].evidence[0]
    assert first.status == 200
    assert first.header("retry-after") is not None  # slowapi sends it on every answer
    assert first.header("ratelimit") is None  # no draft-10 fields
    # Retry-After is int(1 + reset - now): never shorter than the window's rest
    retry = found["retry_after"].facts
    assert retry["after_status"] == 200
    assert retry["retry_after_seconds"] in (1.0, 2.0)
    assert found["limit_scope"].facts["scope"] == "global"
    assert redacted(found)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, url = legacy_upstream(tmp_path_factory.mktemp("legacy"))
    try:
        server.wait_ready(url + "/health")
        yield url
    finally:
        server.stop()


#: The gateway's policies: 5 requests per 2 seconds per API key on the list of charges; 5
#: an hour on the audit log, for ``limit_scope``: its first credential must still be refused
#: after two more requests, and a sliding window of 2 s (entered by ``retry_after``'s wait,
#: the last window's count still weighing) can free a slot in the time a busy machine takes
#: to send them.
POLICY = """
[[rate_limit.policies]]
name = "lists"
limits = ["5/2 seconds"]
routes = ["GET /charges"]

[[rate_limit.policies]]
name = "audit"
limits = ["5/hour"]
routes = ["GET /audit"]
"""


@contextlib.contextmanager
def gateway(legacy: str, tmp: Path, *, read_timeout: int = 10) -> Iterator[str]:
    config = toml_config(legacy, "memory://", POLICY)
    config = config.replace("read_timeout = 10", f"read_timeout = {read_timeout}")
    process = surefoot_serve(tmp, config)
    try:
        process.wait_ready()
        yield process.url
    finally:
        process.server.stop()


async def test_the_gateway_limits_per_key_with_honest_draft_10_fields(
    legacy: str, tmp_path: Path
) -> None:
    with gateway(legacy, tmp_path) as base:
        goal = Target(
            name="charges",
            method="GET",
            url=base + "/charges?limit=1",
            headers=KEY_A,
            alt_headers=KEY_B,
            slow_url=base + "/slow?seconds=2",
            slow_timeout=0.5,
            limit_requests=20,
        )
        found = await probe(goal, [check for check in CHECKS if check != "limit_scope"])
        scoped = dataclasses.replace(goal, url=base + "/audit")
        found |= await probe(scoped, ["limit_scope"])
    assert verdicts(found) == {
        "rate_limit_headers": "pass",
        "retry_after": "pass",
        "limit_scope": "pass",
        "error_format": "fail",  # the upstream's own 404 {"detail": "Not Found"} passes through
        "timeouts": "fail",  # held past the probe's 0.5 s
    }, shown(found)
    headers = found["rate_limit_headers"].facts
    assert (headers["admitted_before_429"], headers["fields"]) == (5, ["draft-10"])
    assert headers["policy"]["lists"] == {"q": 5, "w": 2}
    assert headers["ratelimit"]["lists"]["r"] == 0
    limited = found["rate_limit_headers"].evidence[-1]
    assert limited.header("content-type") == "application/problem+json"
    retry = found["retry_after"].facts
    assert (retry["after_status"], retry["t_equals_retry_after"]) == (200, True)
    assert found["limit_scope"].facts["scope"] == "per_key"
    assert found["error_format"].facts["errors"][0]["content_type"] == "application/json"
    assert found["timeouts"].facts["timed_out"] is True
    assert redacted(found)


async def test_the_gateway_gives_up_on_a_slow_upstream_itself(legacy: str, tmp_path: Path) -> None:
    with gateway(legacy, tmp_path, read_timeout=1) as base:
        goal = Target(
            name="slow", method="GET", url=base + "/health", slow_url=base + "/slow?seconds=3"
        )
        found = await probe(dataclasses.replace(goal, slow_timeout=5), ["timeouts"])
    timeouts = found["timeouts"]
    assert timeouts.verdict is Verdict.PASS, shown(found)
    assert timeouts.facts["status"] == 504
    assert timeouts.evidence[0].header("content-type") == "application/problem+json"
