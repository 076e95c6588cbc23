"""The idempotency checks against real partners, each a process on a free port of 127.0.0.1,
through the probe's own client (``HttpProbeClient``: the allowlist, the budget, the cut).

- the legacy payments API (``examples/legacy_payments``): no idempotency, so it must fail
  ``replay``, ``lost_response``, ``concurrent`` and ``mismatch``;
- ``surefoot serve`` in front of it (its default: a key required on every POST): it must
  pass them, and refuse a write without a key;
- fastapi-idempotency-key and asgi-idempotency-header around a small ledger
  (``targets.py``): the verdicts are what each one does, read in its source and observed.
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
from surefoot.probe import Effect, Finding, Target, Verdict
from surefoot.probe._client import HttpProbeClient
from surefoot.probe._idempotency import IDEMPOTENCY_CHECKS

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CHECKS = ["replay", "lost_response", "concurrent", "mismatch", "no_key"]
BODY = (
    '{"amount": 1999, "currency": "eur", "customer": "{{run}}-{{n}}", "reference": "{{run}}-{{n}}"}'
)


def charges(base: str) -> Target:
    """``POST base/charges``, counted by ``GET base/charges?customer=...``."""
    return Target(
        name="charges",
        method="POST",
        url=f"{base}/charges",
        headers={"Content-Type": "application/json"},
        body=BODY,
        effect=Effect(
            method="GET", url=f"{base}/charges?customer={{{{run}}}}-{{{{n}}}}", count="json:data"
        ),
        concurrency=5,
    )


async def probe(base: str, checks: list[str] = CHECKS, **fields: Any) -> dict[str, Finding]:
    """``checks`` on ``base``'s charges, in order (``fields`` change the target)."""
    goal = dataclasses.replace(charges(base), **fields)
    client = HttpProbeClient(
        hosts=[base.removeprefix("http://")],
        max_requests=200,
        max_duration=120,
        timeout=15,
        run=uuid.uuid4().hex[:8],
    )
    async with client:
        return {
            check: await IDEMPOTENCY_CHECKS[check](client, goal, client.run) for check in checks
        }


def verdicts(found: dict[str, Finding]) -> dict[str, str]:
    return {check: finding.verdict.value for check, finding in found.items()}


def shown(found: dict[str, Finding]) -> str:
    return "\n".join(
        f"{c}: {f.verdict.value}: {f.summary} {dict(f.facts)}" for c, f in found.items()
    )


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, url = legacy_upstream(tmp_path_factory.mktemp("legacy"))
    try:
        server.wait_ready(url + "/health")
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(legacy: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway")
    process = surefoot_serve(tmp, toml_config(legacy, f"sqlite:///{tmp}/store.db"))
    try:
        process.wait_ready()
        yield process.url
    finally:
        process.server.stop()


@contextlib.contextmanager
def serving(name: str, tmp: Path) -> Iterator[str]:
    """``python -m tests.probe.targets NAME PORT`` on a free port, ready: its URL."""
    port = free_port()
    command = [sys.executable, "-m", "tests.probe.targets", name, str(port)]
    server, url = Server(command, log=tmp / f"{name}.log"), f"http://127.0.0.1:{port}"
    try:
        server.wait_ready(url + "/health")
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fik(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving("fik", tmp_path_factory.mktemp("fik")) as url:
        yield url


@pytest.fixture(scope="module")
def aih(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving("aih", tmp_path_factory.mktemp("aih")) as url:
        yield url


async def test_the_legacy_api_fails_the_idempotency_checks(legacy: str) -> None:
    found = await probe(legacy)
    assert verdicts(found) == {
        "replay": "fail",
        "lost_response": "fail",
        "concurrent": "fail",
        "mismatch": "fail",
        "no_key": "inconclusive",
    }, shown(found)
    assert found["replay"].facts["effects"] == 2
    assert found["lost_response"].facts["effects"] == 2
    assert found["concurrent"].facts["effects"] == 5
    assert found["concurrent"].facts["statuses"] == [201] * 5
    assert found["mismatch"].facts["other_effects"] == 1
    assert found["no_key"].facts["accepted"] is True


async def test_the_gateway_in_front_of_it_passes_them(gateway: str) -> None:
    found = await probe(gateway)
    assert verdicts(found) == dict.fromkeys(CHECKS, "pass"), shown(found)
    assert found["replay"].facts["replayed_header"] is True
    assert found["lost_response"].facts["statuses"] == [None, 201]
    assert_one_executed(found["concurrent"])
    assert found["mismatch"].facts["statuses"] == [201, 422]
    assert found["no_key"].facts["statuses"] == [400]
    # a real wait (through the probe's client), far within the gateway's 24 h ttl
    later = await probe(gateway, ["key_lifetime"], key_lifetime=0.5)
    assert later["key_lifetime"].verdict is Verdict.PASS, shown(later)
    assert later["key_lifetime"].facts["effects"] == 1


def assert_one_executed(finding: Finding) -> None:
    """One copy executed; the others were refused while it ran (409) or, had they come
    after it finished, got its replay (201): either way one effect."""
    assert finding.facts["effects"] == 1
    statuses: list[Any] = finding.facts["statuses"]
    assert set(statuses) <= {201, 409}
    assert 201 in statuses


async def test_fastapi_idempotency_key_passes_and_accepts_a_keyless_write(fik: str) -> None:
    # Its lock is one atomic step (MemoryBackend.try_lock under an asyncio.Lock) and its
    # fingerprint covers the body: a copy in flight gets 409, another body 422 (its
    # on_conflict_status and on_mismatch_status); a key is optional (required=False).
    found = await probe(fik)
    assert verdicts(found) == {**dict.fromkeys(CHECKS, "pass"), "no_key": "inconclusive"}, shown(
        found
    )
    assert_one_executed(found["concurrent"])
    assert found["mismatch"].facts["statuses"] == [201, 422]
    assert found["mismatch"].facts["other_effects"] == 0
    assert found["no_key"].facts == {
        "effects": 1,
        "statuses": [201],
        "accepted": True,
        "effect_check": "json:data",
    }


async def test_asgi_idempotency_header_replays_the_first_answer_for_another_body(
    aih: str,
) -> None:
    # It keys on the header alone (no fingerprint of the request): another body with a used
    # key gets the first answer back, marked replayed, and is never executed. Copies in
    # flight are refused: the key enters its set in one step (no await between the check
    # and the add in MemoryBackend), so they get 409 while the first runs.
    found = await probe(aih)
    assert verdicts(found) == {
        "replay": "pass",
        "lost_response": "pass",
        "concurrent": "pass",
        "mismatch": "fail",
        "no_key": "inconclusive",
    }, shown(found)
    assert_one_executed(found["concurrent"])
    mismatch = found["mismatch"]
    assert mismatch.facts["statuses"] == [201, 201]
    assert (mismatch.facts["effects"], mismatch.facts["other_effects"]) == (1, 0)
    assert mismatch.facts["same_body"] is True
    assert mismatch.evidence[-3].header("idempotent-replayed") == "true"
    assert "replayed the first request's answer" in mismatch.summary
