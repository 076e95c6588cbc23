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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _django_client import client

from _services import store_url_sync
from _support import GUARD, SPAWN, free_port, join_all, read_ledger

pytestmark = pytest.mark.slow

WORKERS = 4
CLIENTS = 4
PER_CLIENT = 50
HERE = Path(__file__).parent
GUNICORN = Path(sys.executable).parent / "gunicorn"


@pytest.fixture(params=["sqlite", "redis"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """gunicorn with 4 sync workers running the project on a fresh store; yields its URL
    and the ledger of executions."""
    ledger = tmp_path / "ledger"
    with store_url_sync(request.param, tmp_path) as url:
        if request.param == "redis":
            url += "&timeout=2"  # 4 workers and 8 clients on one test machine: no blips
        port = free_port()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "_django_settings",
            "SUREFOOT_TEST_STORE": url,
            "SUREFOOT_TEST_DATABASE": str(tmp_path / "db.sqlite3"),
            "SUREFOOT_TEST_LEDGER": str(ledger),
            "SUREFOOT_TEST_DRF_RATE": "30/minute",
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]),
        }
        log = tmp_path / "gunicorn.log"
        command = [str(GUNICORN), "--workers", str(WORKERS), "--worker-class", "sync"]
        command += ["--bind", f"127.0.0.1:{port}", "--chdir", str(HERE), "_django_wsgi:application"]
        with log.open("wb") as output:
            process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base, process, log)
            yield base, ledger
        finally:
            process.terminate()
            try:
                process.wait(GUARD)
            except subprocess.TimeoutExpired:  # pragma: no cover
                process.kill()
                process.wait(GUARD)


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + GUARD
    while True:  # until it answers; a failure guard, not a wait for time
        try:
            with urllib.request.urlopen(f"{base}/nowhere", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # a 404: Django answers
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"gunicorn did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def _storm(base: str, method: str, path: str, tmp_path: Path) -> list[list[Any]]:
    name = path.strip("/").replace("/", "-")
    results = [tmp_path / f"{method}-{name}-{i}.json" for i in range(CLIENTS)]
    processes = [
        SPAWN.Process(target=client, args=(base, method, path, PER_CLIENT, str(result)))
        for result in results
    ]
    for process in processes:
        process.start()
    join_all(processes)
    out: list[list[Any]] = []
    for result in results:
        out += json.loads(result.read_text())
    return out


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
