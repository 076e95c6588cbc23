"""``surefoot envoy``: the rate-limit service as a real process, asked by a gRPC client
built from Envoy's own protos (no Envoy binary runs here)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from _support import free_port
from surefoot.gateway import SharedOverrides, TemporaryOverride
from surefoot.storage import store_from_url

pytestmark = pytest.mark.slow

SUREFOOT = str(Path(sys.executable).with_name("surefoot"))


def ask() -> rls_pb2.RateLimitRequest:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[
            entry(key="generic_key", value="api"),
            entry(key="remote_address", value="10.0.0.7"),
        ]
    )
    return rls_pb2.RateLimitRequest(domain="edge", descriptors=[descriptor])


def add_override(url: str) -> None:
    """What ``surefoot overrides`` or the gateway's admin API writes: "api" at 1/minute."""

    async def add() -> None:
        store = store_from_url(url)
        now = time.time()
        try:
            await SharedOverrides(store).add(
                TemporaryOverride(
                    id=uuid.uuid4().hex,
                    policy="api",
                    client=None,
                    limits=("1/minute",),
                    starts_at=now,
                    expires_at=now + 3600,
                    by="ops",
                    reason="incident 12",
                )
            )
        finally:
            await store.aclose()

    asyncio.run(add())


@pytest.mark.parametrize(("overridden", "admitted"), [(False, 2), (True, 1)])
def test_the_command_serves_the_policies_then_stops_on_sigterm(
    tmp_path: Path, overridden: bool, admitted: int
) -> None:
    if overridden:
        add_override(f"sqlite:///{tmp_path / 'store.db'}")
    path = tmp_path / "policy.toml"
    path.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n[admin]\nenabled = false\n'
        f'[stores]\ndefault = "sqlite:///{tmp_path / "store.db"}"\n'
        '[[rate_limit.policies]]\nname = "api"\nlimits = ["2/minute"]\n'
    )
    port = free_port()
    process = subprocess.Popen(
        [SUREFOOT, "envoy", "--config", str(path), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # printed once the port is bound
        assert line.strip() == f"Envoy rate-limit service on 127.0.0.1:{port}"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            codes = [stub.ShouldRateLimit(ask(), timeout=10).overall_code for _ in range(3)]
        ok, over = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
        assert codes == [ok] * admitted + [over] * (3 - admitted)
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(15)
        if process.stderr is not None:
            process.stderr.close()
    assert status == 0


def test_an_invalid_file_is_refused_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[upstream]\nurl = "http://127.0.0.1:9"\n[server]\nport = "x"\n')
    result = subprocess.run(
        [SUREFOOT, "envoy", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert f"{path}:4: server.port:" in result.stderr
