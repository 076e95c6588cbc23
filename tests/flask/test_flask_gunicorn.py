"""The extension under real gunicorn, four sync worker processes sharing one store (SQLite,
Redis): one execution for 4 x 50 identical keyed requests, and one limit counted exactly
across the workers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import httpx
import pytest
from _flask_gunicorn_workers import CALLS, get_limited, post_charges

from _services import store_url_sync
from _support import GUARD, SPAWN, free_port, join_all, read_ledger

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
CLIENTS = 4


@contextlib.contextmanager
def gunicorn(store: str, ledger: Path, log: Path) -> Iterator[str]:
    """gunicorn with 4 sync workers serving ``_flask_gunicorn_app``; its base URL."""
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS / "flask"), str(TESTS), str(ROOT / "src")]),
        SUREFOOT_TEST_STORE=store,
        SUREFOOT_TEST_LEDGER=str(ledger),
    )
    command = [
        sys.executable, "-m", "gunicorn", "--workers", "4", "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "_flask_gunicorn_app:app",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + GUARD
        while len(pids) < 4:  # until every worker answers; a failure guard, not a wait for time
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "gunicorn's workers did not all start"
            try:
                pids.add(httpx.get(f"{base}/health", timeout=1).json()["pid"])
            except httpx.HTTPError:
                time.sleep(0.05)  # not listening yet: poll again, not in a busy loop
        yield base
    finally:
        process.terminate()
        process.wait(GUARD)


def run_clients(
    spawn: Callable[..., BaseProcess], target: Callable[..., None], base: str, tmp_path: Path
) -> list[object]:
    barrier = SPAWN.Barrier(CLIENTS)
    outs = [tmp_path / f"client-{i}.json" for i in range(CLIENTS)]
    join_all([spawn(target, base, barrier, out) for out in outs])
    return [json.loads(out.read_text()) for out in outs]


class Server:
    def __init__(self, base: str, ledger: Path) -> None:
        self.base = base
        self.ledger = ledger


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One gunicorn per store kind for the module's tests (each uses its own key or route)."""
    folder = tmp_path_factory.mktemp(request.param)
    ledger = folder / "ledger"
    with (
        store_url_sync(request.param, folder) as url,
        gunicorn(url, ledger, folder / "log") as base,
    ):
        yield Server(base, ledger)


def test_identical_keyed_posts_from_4_clients_execute_once(
    server: Server, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    results = run_clients(spawn, post_charges, server.base, tmp_path)
    answers = [answer for result in results for answer in result]  # type: ignore[attr-defined]
    assert len(answers) == CLIENTS * CALLS
    assert read_ledger(server.ledger) == [("charge", "order-42")]
    bodies = {body for status, body, _ in answers if status == 201}
    assert len(bodies) == 1  # every 201 is the one execution's response, byte for byte
    kinds = {(status, body if status == 409 else None) for status, body, _ in answers}
    assert kinds <= {(201, None), (409, "idempotency_request_in_progress")}
    originals = [a for a in answers if a[0] == 201 and a[2] is None]
    assert len(originals) == 1


def test_a_limit_is_shared_exactly_across_workers(
    server: Server, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    results = run_clients(spawn, get_limited, server.base, tmp_path)
    statuses = Counter(status for result in results for status in result)  # type: ignore[attr-defined]
    assert statuses == {200: 30, 429: CLIENTS * CALLS - 30}
