"""Version pins through real ``surefoot serve --workers 2`` processes, across a restart, on
SQLite and Redis (issue 20): a client's first requests, sent at once on connections that
either worker may take, pin it to one version, which every later request is served as.

Clients are ``[[clients]]`` with API keys (only they are pinned), one connection per
request, so both workers see every client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from _gateway_helpers import surefoot_serve, toml_config

from _services import store_url_sync

pytestmark = pytest.mark.slow

VERSIONS = ["2024-01-15", "2025-03-10", "2026-06-01"]
CLIENTS = 12
BODY = f'[versions]\ndates = {VERSIONS}\n\n[[routes]]\nmatch = "GET /v2/orders"\n\n' + "".join(
    f'[[clients]]\nname = "c{n}"\napi_key = "k-client-{n}"\n\n' for n in range(CLIENTS + 1)
)


def ask(url: str, source: str, version: str | None = None) -> str:
    """The version the upstream saw for one request of client ``source`` (a new connection)."""
    headers = {"x-api-key": f"k-client-{source}"}
    if version:
        headers["surefoot-version"] = version
    with httpx.Client(base_url=url, timeout=10, verify=False) as client:
        response = client.get("/v2/orders", headers=headers)
    assert response.status_code == 200, response.text
    seen: str = response.json()["api_version"]
    assert response.headers["surefoot-version"] == seen
    return seen


@contextlib.contextmanager
def serving(tmp: Path, store: str) -> Iterator[str]:
    config = toml_config("http://unused.invalid", store, BODY).replace(
        'url = "http://unused.invalid"', 'app = "examples.orders.app:app"'
    )
    gateway = surefoot_serve(tmp, config, "--workers", "2")
    try:
        gateway.wait_ready()
        yield gateway.url
    finally:
        gateway.server.stop()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_first_requests_at_once_pin_each_client_once_for_every_worker_and_restart(
    tmp_path: Path, kind: str
) -> None:
    sources = [str(n) for n in range(CLIENTS)]
    last = str(CLIENTS)
    with store_url_sync(kind, tmp_path) as store:
        with serving(tmp_path, store) as url, ThreadPoolExecutor(8) as pool:
            # Each client's first two requests at once: one names the oldest version, one
            # names none (it would be pinned to the latest). Whichever is recorded first
            # is the client's pin; the other request is served as it asked.
            firsts = {
                source: (
                    pool.submit(ask, url, source, VERSIONS[0]),
                    pool.submit(ask, url, source),
                )
                for source in sources
            }
            pins = {}
            for named, _ in firsts.values():
                assert named.result() == VERSIONS[0]  # a named version is always served
            for source in sources:
                later = list(pool.map(ask, [url] * 6, [source] * 6))
                assert len(set(later)) == 1, later  # one pin, whichever worker answers
                pins[source] = later[0]
            # A client whose first request named a version stays on it.
            assert ask(url, last, VERSIONS[1]) == VERSIONS[1]
            pins[last] = VERSIONS[1]
            assert set(pool.map(ask, [url] * 6, [last] * 6)) == {VERSIONS[1]}
            # The request naming no version was served as the pin, whichever of the two
            # recorded it: a client never sees the pin change under it.
            assert {s: pins[s] for s in sources} == {
                source: plain.result() for source, (_, plain) in firsts.items()
            }
            assert {pins[s] for s in sources} <= {VERSIONS[0], VERSIONS[-1]}
        with serving(tmp_path, store) as url:  # a restart: the pins are the store's
            assert {source: ask(url, source) for source in pins} == pins
