"""Temporary rate-limit overrides through real ``surefoot serve --workers 2`` processes on
one SQLite store: an override made through the admin API (served by one worker) reaches
the other through the store, and ``surefoot overrides remove`` (another process) ends it on
both. Which worker served a request is found as ``test_abuse_attacks.py`` finds it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    GatewayProcess,
    Server,
    surefoot_serve,
    toml_config,
    wait_until,
)
from test_abuse_attacks import WORKERS, served_by

from _support import free_port

pytestmark = pytest.mark.slow

SUREFOOT = str(Path(sys.executable).with_name("surefoot"))
ACME_KEY = "k-acme-0123456789"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "examples.login.app:app", "--port", str(port)]
    upstream = Server([*command, "--log-level", "warning"], log=tmp_path / "upstream.log")
    body = (
        '[[rate_limit.policies]]\nname = "reads"\nlimits = ["2/hour"]\n\n'
        f'[[clients]]\nname = "acme"\napi_key = "{ACME_KEY}"\n'
    )
    config = toml_config(upstream_url, f"sqlite:///{tmp_path / 'gw.db'}", body)
    process = surefoot_serve(tmp_path, config, "--workers", str(WORKERS))
    try:
        upstream.wait_ready(upstream_url + "/orders")
        process.wait_ready()
        yield process
    finally:
        process.server.stop()
        upstream.stop()


def orders(gateway: GatewayProcess) -> tuple[int, int]:
    """One ``GET /orders`` of acme on a new connection: its status and the worker's pid."""
    with (
        httpx.Client(base_url=gateway.url, timeout=10) as client,
        client.stream("GET", "/orders", headers={"authorization": f"Bearer {ACME_KEY}"}) as answer,
    ):
        answer.read()
        sock = answer.extensions["network_stream"].get_extra_info("socket")
        return answer.status_code, served_by(sock, gateway.server.process.pid)


def on_every_worker(gateway: GatewayProcess, status: int, what: str) -> None:
    """Poll until each worker answered ``status`` (and still does, last time asked)."""
    good: set[int] = set()

    def check() -> bool:
        answered, worker = orders(gateway)
        if answered == status:
            good.add(worker)
        else:
            good.discard(worker)
        return len(good) == WORKERS

    wait_until(check, timeout=20, what=f"{what} on both workers")


def test_an_override_reaches_every_worker_and_the_cli_ends_it_everywhere(
    gateway: GatewayProcess,
) -> None:
    on_every_worker(gateway, 429, "acme at its limit")  # one counter, in the store
    made = httpx.post(
        gateway.admin + "/admin/overrides",
        headers=ADMIN_HEADERS,
        json={
            "policy": "reads",
            "client": "acme",
            "limits": ["100000/hour"],
            "for": "1h",
            "reason": "campaign",
            "by": "alice",
        },
        timeout=5,
    )
    assert made.status_code == 201, made.text
    on_every_worker(gateway, 200, "the override")
    assert [orders(gateway)[0] for _ in range(10)] == [200] * 10

    removed = subprocess.run(
        [SUREFOOT, "overrides", "remove", "--config", str(gateway.config), "--policy", "reads",
         "--client", "acme", "--reason", "campaign over", "--by", "bob"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert removed.returncode == 0, removed.stdout + removed.stderr
    on_every_worker(gateway, 429, "the override's end")
    assert [orders(gateway)[0] for _ in range(10)] == [429] * 10
    audit = gateway.admin_get("/admin/overrides?audit=1")
    assert audit["overrides"] == []
    assert [(a["change"], a["by"], a["reason"]) for a in audit["audit"]] == [
        ("added", "alice", "campaign"),
        ("removed", "bob", "campaign over"),
    ]
