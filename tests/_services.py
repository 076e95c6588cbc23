"""Real servers for the tests: where to find them, and what to do when one is missing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

#: Where the tests find real servers (the machine's defaults; .ci/run starts them).
SERVICES = {
    "redis": ("SUREFOOT_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "redis_cluster": ("SUREFOOT_REDIS_CLUSTER_URL", "redis+cluster://127.0.0.1:7000"),
    "postgres": ("SUREFOOT_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
}


def service_url(name: str) -> str:
    """The URL of a real server the test needs: skipped when it is not running, a failure
    instead when ``SUREFOOT_REQUIRE_SERVICES=1`` (as in CI)."""
    variable, default = SERVICES[name]
    url = os.environ.get(variable, default)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 0
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({variable}): {exc}"
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url


def promtool() -> str:
    """The path of Prometheus's ``promtool`` (Debian package ``prometheus``; .ci/run
    installs it): skipped when it is not installed, a failure instead when
    ``SUREFOOT_REQUIRE_SERVICES=1`` (as in CI)."""
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package prometheus)"
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def prometheus() -> str:
    """The path of the Prometheus server (Debian package ``prometheus``, as ``promtool``;
    .ci/run installs it): skipped when it is not installed, a failure instead when
    ``SUREFOOT_REQUIRE_SERVICES=1`` (as in CI)."""
    path = shutil.which("prometheus")
    if path is None:
        message = "prometheus is not installed (Debian package prometheus)"
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


class PrometheusServer:
    """A Prometheus server of a test's own, on a free port of 127.0.0.1 with its storage in
    a temporary folder, scraping every target and evaluating every rule each second;
    killed, and its folder removed, on exit.

    ``scrape_configs`` are Prometheus's own (``job_name``, ``static_configs``...);
    ``rule_files`` are paths of rules files.
    """

    def __init__(
        self, scrape_configs: Sequence[Mapping[str, Any]], rule_files: Sequence[Path] = ()
    ) -> None:
        self.executable = prometheus()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="surefoot-prometheus-"))
        self.log = self.folder / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": list(scrape_configs),
        }
        # JSON is YAML: nothing in a path or a label can break the file.
        (self.folder / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.executable, f"--config.file={self.folder / 'prometheus.yml'}"]
        command += [f"--storage.tsdb.path={self.folder / 'data'}"]
        command += [f"--web.listen-address=127.0.0.1:{self.port}"]
        with self.log.open("wb") as output:
            process = self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:  # until it is ready; a failure guard, not a wait for time
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not start:\n{self.tail()}")
            time.sleep(0.05)

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of ``GET /api/v1/PATH?params``, checked to be a success."""
        query = f"?{urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> PrometheusServer:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


#: Store kinds the suites run over; the network ones need their server.
STORE_KINDS = ["memory", "sqlite", "redis", "redis_cluster", "postgres"]


@contextlib.asynccontextmanager
async def store_url(
    kind: str, tmp_path: Path, *, clock: str = "caller", options: str = ""
) -> AsyncIterator[str]:
    """The URL of a fresh, empty store of ``kind`` (its own SQLite file, Redis key prefix or
    PostgreSQL schema), dropped afterwards. ``options`` are extra URL query options."""
    extra = f"&{options}" if options else ""
    if kind == "memory":
        yield "memory://" + (f"?{options}" if options else "")
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db" + (f"?{options}" if options else "")
    elif kind in ("redis", "redis_cluster"):
        url = service_url(kind)
        prefix = f"test:{uuid.uuid4().hex[:12]}:"
        try:
            yield f"{url}?prefix={prefix}&clock={clock}{extra}"
        finally:
            await _drop_redis_prefix(url, prefix)
    elif kind == "postgres":
        from surefoot.storage.postgres import migrate

        dsn = service_url("postgres")
        schema = f"surefoot_test_{uuid.uuid4().hex[:12]}"
        await migrate(dsn, schema=schema)
        try:
            yield f"{dsn}?schema={schema}&clock={clock}{extra}"
        finally:
            import psycopg

            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    else:  # pragma: no cover
        raise AssertionError(kind)


@contextlib.contextmanager
def store_url_sync(kind: str, tmp_path: Path, **kwargs: str) -> Iterator[str]:
    """``store_url`` for synchronous tests (those that spawn processes)."""
    with asyncio.Runner() as runner:  # one loop: asyncio.run would finalise the generator
        manager = store_url(kind, tmp_path, **kwargs)
        url = runner.run(manager.__aenter__())
        try:
            yield url
        finally:
            runner.run(manager.__aexit__(None, None, None))


async def _drop_redis_prefix(url: str, prefix: str) -> None:
    from redis.asyncio import Redis, RedisCluster

    client: Any
    if url.startswith("redis+cluster://"):
        client = RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"))
        nodes = client.get_primaries()
    else:
        client, nodes = Redis.from_url(url), [None]
    try:
        for node in nodes:
            extra = {} if node is None else {"target_nodes": node}
            keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000, **extra)]
            for key in keys:
                await client.delete(key)
    finally:
        await client.aclose()


class RedisServer:
    """A redis-server of a test's own, on a free port of 127.0.0.1 and in a folder of its
    own, nothing saved; it can be killed and started again on the same port."""

    def __init__(self, *options: str) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed")
        self.executable = executable
        self.options = options
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.folder = tempfile.mkdtemp(prefix="surefoot-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", self.folder, *self.options]
        process = self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:  # until it accepts connections; a failure guard, not a wait for time
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
