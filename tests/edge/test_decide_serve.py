"""``surefoot decide`` as real processes: two decision services of two workers each, on one
SQLite or Redis store, admit exactly the limit together; one process reloads its file on
``SIGHUP``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _edge_helpers import unix_client, unix_listening
from tests.gateway._gateway_helpers import wait_until

from _services import _drop_redis_prefix
from _support import free_port

pytestmark = pytest.mark.slow

SUREFOOT = str(Path(sys.executable).with_name("surefoot"))
LIMIT = 12
KEY = "Bearer k-edge-0123456789"


def policy_file(folder: Path, store: str, limit: int = LIMIT) -> Path:
    path = folder / "policy.toml"
    path.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n\n'
        f'[stores]\ndefault = "{store}"\n\n'
        "[admin]\nenabled = false\n\n"
        '[server]\ntrusted_proxies = ["127.0.0.1"]\n\n'
        f'[[rate_limit.policies]]\nname = "reads"\nlimits = ["{limit}/hour"]\n'
    )
    return path


class Decide:
    """One ``surefoot decide`` process on a free port, its output in a log file."""

    def __init__(self, config: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.parent / f"decide-{self.port}.log"
        self.output = self.log.open("wb")
        command = [SUREFOOT, "decide", "--config", str(config), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *options], stdout=self.output, stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"surefoot decide exited:\n{self.log.read_text()}")
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=30, what=f"{self.url}/readyz")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.output.close()


@pytest.fixture
def started() -> Iterator[list[Decide]]:
    processes: list[Decide] = []
    yield processes
    for process in processes:
        process.stop()


async def answers(urls: list[str], count: int, key: str = KEY) -> list[httpx.Response]:
    """``count`` decisions for one client, spread over ``urls`` and sent concurrently."""
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/orders?page=2", "Authorization": key}
    async with httpx.AsyncClient(timeout=20) as client:
        return await asyncio.gather(
            *(client.get(urls[i % len(urls)] + "/decide", headers=headers) for i in range(count))
        )


def decisions(urls: list[str], count: int, key: str = KEY) -> list[int]:
    return [answer.status_code for answer in asyncio.run(answers(urls, count, key))]


def two_services_admit_exactly_the_limit(config: Path, started: list[Decide]) -> None:
    started += [Decide(config, "--workers", "2"), Decide(config, "--workers", "2")]
    for process in started:
        process.wait_ready()
    codes = decisions([p.url for p in started], 3 * LIMIT)
    assert codes.count(200) == LIMIT, codes
    assert codes.count(429) == 2 * LIMIT, codes


def test_two_services_on_sqlite_admit_exactly_the_limit_together(
    tmp_path: Path, started: list[Decide]
) -> None:
    config = policy_file(tmp_path, f"sqlite:///{tmp_path / 'counters.db'}")
    two_services_admit_exactly_the_limit(config, started)


def test_two_services_on_redis_admit_exactly_the_limit_together(
    tmp_path: Path, started: list[Decide], redis_url: str
) -> None:
    prefix = f"surefoot-test-{uuid.uuid4().hex}:"
    separator = "&" if "?" in redis_url else "?"
    config = policy_file(tmp_path, f"{redis_url}{separator}prefix={prefix}")
    try:
        two_services_admit_exactly_the_limit(config, started)
    finally:
        asyncio.run(_drop_redis_prefix(redis_url, prefix))


def test_sighup_reloads_the_policy_file_and_the_counters_carry_on(
    tmp_path: Path, started: list[Decide]
) -> None:
    config = policy_file(tmp_path, f"sqlite:///{tmp_path / 'counters.db'}", limit=4)
    started.append(Decide(config, "--workers", "1"))
    service = started[0]
    service.wait_ready()
    assert decisions([service.url], 2) == [200, 200]
    policy_file(tmp_path, f"sqlite:///{tmp_path / 'counters.db'}", limit=2)
    os.kill(service.process.pid, signal.SIGHUP)

    def reloaded() -> bool:  # asked for other clients, so that KEY's count stays at 2
        (answer,) = asyncio.run(answers([service.url], 1, key=f"Bearer {uuid.uuid4()}"))
        return answer.headers["ratelimit-policy"].startswith('"reads";q=2;')

    wait_until(reloaded, timeout=30, what="the reloaded limit")
    assert decisions([service.url], 1) == [429]  # the 2 counted before fill the new limit
    assert service.process.poll() is None


def test_the_decision_service_bounds_the_head_as_the_gateway_does(
    tmp_path: Path, started: list[Decide]
) -> None:
    config = policy_file(tmp_path, f"sqlite:///{tmp_path / 'counters.db'}")
    text = config.read_text().replace(
        "[server]\n", "[server]\nmax_header_size = 2048\nheader_timeout = 0.5\n"
    )
    config.write_text(text)
    started.append(Decide(config))
    decide = started[-1]
    decide.wait_ready()
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/orders", "X-Big": "x" * 4096}
    refused = httpx.get(decide.url + "/decide", headers=headers, timeout=10)
    assert refused.status_code == 431
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/request-headers-too-large")
    # A head that never ends (slowloris) is answered 408 after header_timeout, then closed.
    with socket.create_connection(("127.0.0.1", decide.port), timeout=10) as sock:
        sock.sendall(b"GET /decide HTTP/1.1\r\nHost: edge\r\nX-Original-Method: GET\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request-timeout" in answer


def test_on_a_unix_socket_a_stale_file_is_replaced_and_the_edge_is_believed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "decide.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(path))  # what a service killed without its cleanup leaves
    config = policy_file(tmp_path, f"sqlite:///{tmp_path / 'counters.db'}", limit=1)
    command = [SUREFOOT, "decide", "--config", str(config), "--uds", str(path)]
    log = tmp_path / "decide.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            assert process.poll() is None, log.read_text()
            return unix_listening(path)

        wait_until(ready, timeout=30, what=f"surefoot decide on {path}")
        described = {"X-Original-Method": "GET", "X-Original-URI": "/orders"}
        with unix_client(path) as http:
            codes = [
                http.get("/decide", headers={**described, "X-Forwarded-For": f"198.51.100.{n}"})
                for n in (1, 1, 2)
            ]
        # The peer has no address: it is the edge, and each forwarded address counts alone.
        assert [c.status_code for c in codes] == [200, 429, 200]
        assert f"/decide on unix:{path}" in log.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
    assert not path.exists()  # removed as it stops


def test_a_unix_socket_another_process_listens_on_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "decide.sock"
    config = policy_file(tmp_path, f"sqlite:///{tmp_path / 'counters.db'}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen()
        done = subprocess.run(
            [SUREFOOT, "decide", "--config", str(config), "--uds", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert path.exists()
    assert done.returncode != 0
    assert f"cannot listen on unix:{path}" in done.stderr
