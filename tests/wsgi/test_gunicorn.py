"""``surefoot.wsgi`` under real gunicorn: 4 sync worker processes sharing one store.

4 client processes send 50 identical keyed POSTs each: exactly one execution, every other
answer a byte-for-byte replay or a 409 in progress. 4 clients send 50 GETs each to a route
limited to 30 a minute: exactly 30 admitted, across the workers. On SQLite (one file) and
on Redis (``SyncRedisStore``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _gunicorn_app import client

from _services import store_url_sync
from _support import gunicorn, read_ledger, storm

pytestmark = pytest.mark.slow

CLIENTS = 4
PER_CLIENT = 50
HERE = Path(__file__).parent


@pytest.fixture(params=["sqlite", "redis"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A gunicorn of 4 sync workers on a fresh store; yields its URL and the ledger."""
    ledger = tmp_path / "ledger"
    with store_url_sync(request.param, tmp_path) as url:
        if request.param == "redis":
            url += "&timeout=2"  # 4 workers and 8 clients on one test machine: no blips
        env = {
            "SUREFOOT_TEST_STORE": url,
            "SUREFOOT_TEST_LEDGER": str(ledger),
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]),
        }
        log = tmp_path / "gunicorn.log"
        with gunicorn("_gunicorn_app:app", folder=HERE, env=env, ready="/ready", log=log) as base:
            yield base, ledger


def _storm(base: str, method: str, path: str, tmp_path: Path) -> list[list[Any]]:
    return storm(client, base, method, path, tmp_path, clients=CLIENTS, each=PER_CLIENT)


def test_identical_keyed_posts_execute_once(server: tuple[str, Path], tmp_path: Path) -> None:
    base, ledger = server
    answers = _storm(base, "POST", "/charges", tmp_path)
    assert len(answers) == CLIENTS * PER_CLIENT
    assert read_ledger(ledger) == [("charge", "order-42")]
    statuses = {status for status, _, _ in answers}
    assert statuses <= {201, 409}, statuses
    bodies = {text for status, _, text in answers if status == 201}
    assert len(bodies) == 1  # the execution and every replay: the same bytes
    conflicts = {code for status, code, _ in answers if status == 409}
    assert conflicts <= {"idempotency_request_in_progress"}
    assert sum(status == 201 for status, _, _ in answers) >= PER_CLIENT


def test_a_limit_is_shared_exactly_across_workers(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    answers = _storm(base, "GET", "/limited", tmp_path)
    admitted = [a for a in answers if a[0] == 201]
    refused = [a for a in answers if a[0] == 429]
    assert len(admitted) == 30
    assert len(refused) == CLIENTS * PER_CLIENT - 30
    assert {code for _, code, _ in refused} == {"rate_limit_exceeded"}
