"""The Django project under real gunicorn: 4 sync worker processes sharing one store, on
SQLite (one file) and Redis (``SyncRedisStore``).

4 client processes send 50 identical keyed POSTs each: exactly one execution, every other
answer a byte-for-byte replay or a 409 in progress. 4 clients send 50 GETs each to a route
limited to 30 a minute (``RateLimitMiddleware``), and to a DRF view throttled to 30 a minute
(``SurefootThrottle``): exactly 30 admitted across the workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _django_client import client

from _services import store_url_sync
from _support import gunicorn, read_ledger, storm

pytestmark = pytest.mark.slow

CLIENTS = 4
PER_CLIENT = 50
HERE = Path(__file__).parent


@pytest.fixture(params=["sqlite", "redis"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """gunicorn with 4 sync workers running the project on a fresh store; yields its URL
    and the ledger of executions."""
    ledger = tmp_path / "ledger"
    with store_url_sync(request.param, tmp_path) as url:
        if request.param == "redis":
            url += "&timeout=2"  # 4 workers and 8 clients on one test machine: no blips
        env = {
            "DJANGO_SETTINGS_MODULE": "_django_settings",
            "SUREFOOT_TEST_STORE": url,
            "SUREFOOT_TEST_DATABASE": str(tmp_path / "db.sqlite3"),
            "SUREFOOT_TEST_LEDGER": str(ledger),
            "SUREFOOT_TEST_DRF_RATE": "30/minute",
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]),
        }
        log = tmp_path / "gunicorn.log"
        # Ready when Django answers anything, a 404 included.
        app = "_django_wsgi:application"
        with gunicorn(app, folder=HERE, env=env, ready="/nowhere", log=log) as base:
            yield base, ledger


def _storm(base: str, method: str, path: str, tmp_path: Path) -> list[list[Any]]:
    return storm(client, base, method, path, tmp_path, clients=CLIENTS, each=PER_CLIENT)


def test_identical_keyed_posts_execute_once(server: tuple[str, Path], tmp_path: Path) -> None:
    base, ledger = server
    answers = _storm(base, "POST", "/charges", tmp_path)
    assert len(answers) == CLIENTS * PER_CLIENT
    assert read_ledger(ledger) == [("charge", "order-42")]
    statuses = {a[0] for a in answers}
    assert statuses <= {201, 409}, statuses
    bodies = {a[2] for a in answers if a[0] == 201}
    assert len(bodies) == 1  # the execution and every replay: the same bytes
    assert {a[1] for a in answers if a[0] == 409} <= {"idempotency_request_in_progress"}
    assert sum(a[0] == 201 for a in answers) >= PER_CLIENT


def test_a_limit_is_shared_exactly_across_workers(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    answers = _storm(base, "GET", "/limited", tmp_path)
    admitted = [a for a in answers if a[0] == 201]
    refused = [a for a in answers if a[0] == 429]
    assert len(admitted) == 30
    assert len(refused) == CLIENTS * PER_CLIENT - 30
    assert {a[1] for a in refused} == {"rate_limit_exceeded"}
    assert all(f"t={a[3]}" in a[4] for a in refused)


def test_a_drf_throttle_is_shared_exactly_across_workers(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    base, _ = server
    answers = _storm(base, "GET", "/drf/items", tmp_path)
    admitted = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    assert len(admitted) == 30
    assert len(refused) == CLIENTS * PER_CLIENT - 30
    assert all(a[4] is not None for a in admitted)
    for _, _, body, retry_after, ratelimit in refused:
        assert json.loads(body)["detail"].startswith("Request was throttled.")
        assert ratelimit == f'"drf.ItemsThrottle";r=0;t={retry_after}'
