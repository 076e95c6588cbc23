"""The path-and-credential bypass matrix through a real ``surefoot serve``, as exact bytes on
raw sockets: every spelling of a path times every spelling of one API key, on every kind of
route template, with the key listed as a client and without a client list.

Each request is counted against the route's one limit for the one client, or needs the
route's key, or is refused with a 400 problem; the upstream sees only what was admitted, and
a key never runs twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _gateway_helpers import surefoot_serve, toml_config
from test_paths_e2e import Upstream, raw_request

from test_bypass_matrix import KEY, LIMIT, ROUTE_KINDS, combinations

pytestmark = pytest.mark.slow


def policies(listed: bool) -> str:
    text = "[idempotency]\nrequired = false\n"
    for index, (template, _) in enumerate(ROUTE_KINDS):
        text += (
            f'\n[[rate_limit.policies]]\nname = "limit-{index}"\n'
            f'limits = ["{LIMIT}/hour"]\nroutes = ["POST /l{template}"]\n'
            f'\n[[routes]]\nmatch = "POST /k{template}"\n[routes.idempotency]\nrequired = true\n'
        )
    if listed:
        text += f'\n[[clients]]\nname = "matrix"\napi_key = "{KEY}"\n'
    return text


@dataclass
class Running:
    upstream: Upstream
    address: tuple[str, int]


@pytest.fixture(scope="module", params=["listed", "unlisted"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    tmp: Path = tmp_path_factory.mktemp("matrix")
    upstream = Upstream()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    config = toml_config(upstream.url, "memory://", policies(request.param == "listed"))
    process = surefoot_serve(tmp, config)
    try:
        process.wait_ready()
        yield Running(upstream, ("127.0.0.1", int(process.url.rpartition(":")[2])))
    finally:
        process.server.stop()
        upstream.shutdown()
        upstream.server_close()
        thread.join(5)


@pytest.mark.parametrize(("template", "path"), ROUTE_KINDS)
def test_no_spelling_of_path_or_credential_buys_a_second_bucket(
    gateway: Running, template: str, path: str
) -> None:
    probe = f"limit {template} {id(gateway)}"
    admitted = 0
    for index, (raw, same, creds) in enumerate(combinations("/l" + path)):
        headers = [
            (b"X-Probe", probe.encode()),
            *creds,
            (b"Idempotency-Key", f"{probe} {index}".replace(" ", "_").encode()),
        ]
        answer = raw_request(gateway.address, "POST", raw, headers, b"{}")
        if not same:
            assert (answer.status, answer.code) == (400, "invalid_path"), raw
        elif answer.status == 200:
            admitted += 1
        else:
            assert (answer.status, answer.code) == (429, "rate_limit_exceeded"), (raw, answer)

    assert admitted == LIMIT
    assert len(gateway.upstream.probed(probe)) == LIMIT


@pytest.mark.parametrize(("template", "path"), ROUTE_KINDS)
def test_no_spelling_skips_the_key_requirement_or_runs_a_key_twice(
    gateway: Running, template: str, path: str
) -> None:
    probe = f"key {template} {id(gateway)}"
    cases = combinations("/k" + path)
    for raw, same, creds in cases:
        headers = [(b"X-Probe", probe.encode()), *creds]
        keyless = raw_request(gateway.address, "POST", raw, headers, b"{}")
        expected = "idempotency_key_missing" if same else "invalid_path"
        assert (keyless.status, keyless.code) == (400, expected), raw
    assert gateway.upstream.probed(probe) == []

    key = probe.replace(" ", "_").encode()
    for raw, _, creds in cases:
        headers = [(b"X-Probe", probe.encode()), *creds, (b"Idempotency-Key", key)]
        answer = raw_request(gateway.address, "POST", raw, headers, b"{}")
        # The first run, its replays, a refusal, or another request under the same key (a
        # spelling whose forwarded path differs in case or trailing slash): never a second run.
        assert answer.status in (200, 400, 422), (raw, answer)
    assert len(gateway.upstream.probed(probe)) == 1
