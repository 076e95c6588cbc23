"""The chaos proxy on real sockets: each fault against the legacy payments API, the control
API, and a duplicate that runs twice without surefoot and once through the gateway."""

from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from examples.legacy_payments.app import create_app

from surefoot.chaos import (
    CHAOS_HEADER,
    Abort,
    ChaosControl,
    ChaosProxy,
    Delay,
    Duplicate,
    FailAfter,
    FaultInjected,
    FaultPlan,
    Hang,
    Reset,
    Rule,
    SlowBody,
)
from surefoot.cli import main
from surefoot.errors import ConfigurationError
from surefoot.gateway import Gateway, config_from_dict
from surefoot.testing import CapturedEvents

pytestmark = pytest.mark.slow

CHARGE = {"amount": 1999, "currency": "eur", "customer": "cus_1"}


@pytest.fixture
def serve() -> Iterator[Any]:
    """Starts ASGI apps with uvicorn in threads; each call gives the app's base URL."""
    running: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(app: Any) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # connections wait here until uvicorn accepts: no start-up race
        config = uvicorn.Config(
            app, lifespan="auto", log_level="critical", access_log=False, ws="none"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def upstream(serve: Any, tmp_path: Path) -> str:
    return str(serve(create_app(str(tmp_path / "ledger.db"))))


def audit(base_url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(base_url + "/audit").json()
    return result


def proxy_for(base_url: str, *rules: Rule, **options: Any) -> ChaosProxy:
    return ChaosProxy(upstream=base_url, plan=FaultPlan(rules, seed=3), hooks=[], **options)


def charge(url: str, reference: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url + "/charges", json={**CHARGE, "reference": reference}, **kwargs)


def test_no_rules_forwards_untouched_and_keeps_the_connection(upstream: str) -> None:
    with proxy_for(upstream).running() as proxy, httpx.Client(base_url=proxy.url) as client:
        for n in range(3):  # one kept-alive connection
            response = client.post("/charges", json={**CHARGE, "reference": f"r{n}"})
            assert response.status_code == 201
            assert response.json()["reference"] == f"r{n}"
        assert client.get("/charges/by-reference/r1").json()["reference"] == "r1"
        assert client.get("/charges/by-reference/nope").status_code == 404
    assert audit(upstream)["charges"] == 3


def test_reset_cuts_the_connection_before_forwarding(upstream: str) -> None:
    rule = Rule(name="cut", fault=Reset(), methods=("POST",))
    with proxy_for(upstream, rule).running() as proxy:
        with pytest.raises(httpx.TransportError):
            charge(proxy.url, "r1")
        assert proxy.plan.counts() == {"cut": 1}
    assert audit(upstream)["charges"] == 0


@pytest.mark.parametrize(
    ("lose", "error"),
    [("reset", httpx.TransportError), ("truncate", httpx.RemoteProtocolError)],
)
def test_fail_after_loses_an_answer_the_upstream_gave(
    upstream: str, lose: str, error: type[Exception]
) -> None:
    rule = Rule(name="lost", fault=FailAfter(lose=lose), methods=("POST",))  # type: ignore[arg-type]
    with proxy_for(upstream, rule).running() as proxy, pytest.raises(error):
        charge(proxy.url, "r1")
    # The upstream did the work: the charge is in the ledger.
    assert httpx.get(upstream + "/charges/by-reference/r1").status_code == 200


def test_fail_after_502_answers_instead_of_the_upstream(upstream: str) -> None:
    rule = Rule(name="lost", fault=FailAfter(lose="502"), methods=("POST",))
    with proxy_for(upstream, rule).running() as proxy:
        response = charge(proxy.url, "r1")
    assert response.status_code == 502
    assert response.headers[CHAOS_HEADER] == "lost"
    assert audit(upstream)["charges"] == 1


@pytest.mark.parametrize("concurrent", [False, True])
def test_duplicate_executes_twice_on_a_plain_api(upstream: str, concurrent: bool) -> None:
    rule = Rule(name="dup", fault=Duplicate(concurrent=concurrent), methods=("POST",))
    with proxy_for(upstream, rule).running() as proxy:
        response = charge(proxy.url, "r1")
    assert response.status_code == 201
    assert audit(upstream) == {"charges": 2, "references": 1, "duplicated_references": ["r1"]}


def test_duplicate_executes_once_behind_the_gateway(serve: Any, upstream: str) -> None:
    config = config_from_dict(
        {
            "upstream": {"url": upstream},
            "stores": {"default": "memory://"},
            "admin": {"enabled": False},
        }
    )
    gateway = serve(Gateway(config, hooks=[]))
    rule = Rule(name="dup", fault=Duplicate(), methods=("POST",))
    with proxy_for(gateway, rule).running() as proxy:
        response = charge(proxy.url, "r1", headers={"Idempotency-Key": "k1"})
    assert response.status_code == 201
    assert response.headers["idempotent-replayed"] == "true"  # the copy got the replay
    assert audit(upstream)["charges"] == 1


def test_abort_answers_without_forwarding(upstream: str) -> None:
    rule = Rule(name="down", fault=Abort(status=503, retry_after=2), methods=("POST",))
    with proxy_for(upstream, rule).running() as proxy:
        response = charge(proxy.url, "r1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.headers[CHAOS_HEADER] == "down"
    assert audit(upstream)["charges"] == 0


def test_hang_answers_nothing_until_the_client_gives_up(upstream: str) -> None:
    rule = Rule(name="stall", fault=Hang(), methods=("POST",))
    with proxy_for(upstream, rule).running() as proxy, pytest.raises(httpx.ReadTimeout):
        charge(proxy.url, "r1", timeout=0.3)
    assert audit(upstream)["charges"] == 0


def test_hang_ends_after_hang_max(upstream: str) -> None:
    rule = Rule(name="stall", fault=Hang(), methods=("POST",))
    proxy = proxy_for(upstream, rule, hang_max=0.1)
    with proxy.running(), pytest.raises(httpx.RemoteProtocolError):
        charge(proxy.url, "r1", timeout=10)


def test_delay_and_slow_body_deliver_everything(upstream: str) -> None:
    events = CapturedEvents()
    rules = [
        Rule(name="late", fault=Delay(seconds=0.01, jitter=0.01), methods=("POST",)),
        Rule(name="drip", fault=SlowBody(bytes_per_second=20_000), methods=("GET",)),
    ]
    plan = FaultPlan(rules, seed=3)
    with ChaosProxy(upstream=upstream, plan=plan, hooks=[events]).running() as proxy:
        assert charge(proxy.url, "r1").status_code == 201
        response = httpx.get(proxy.url + "/charges/by-reference/r1")
    assert response.json()["reference"] == "r1"
    assert plan.counts("kind") == {"delay": 1, "slow_body": 1}
    injected = events.of(FaultInjected)
    assert [(e.rule, e.method, e.path) for e in injected] == [
        ("late", "POST", "/charges"),
        ("drip", "GET", "/charges/by-reference/r1"),
    ]


def test_an_unreachable_upstream_gives_502() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with proxy_for(f"http://127.0.0.1:{port}").running() as proxy:
        assert httpx.get(proxy.url + "/anything").status_code == 502


def test_the_control_api_switches_faults_between_steps(upstream: str) -> None:
    with proxy_for(upstream).running() as proxy, ChaosControl(proxy.url) as chaos:
        assert chaos.plan() == {"seed": 3, "paused": False, "rules": []}
        assert charge(proxy.url, "r1").status_code == 201

        rule = Rule(name="down", fault=Abort(status=503), methods=("POST",))
        shown = chaos.replace([rule, {"name": "slow", "fault": "delay", "seconds": 0.01}])
        assert [r["name"] for r in shown["rules"]] == ["down", "slow"]
        assert shown["rules"][0] == rule.to_dict()
        assert charge(proxy.url, "r2").status_code == 503

        assert chaos.pause()["paused"] is True
        assert charge(proxy.url, "r3").status_code == 201
        assert chaos.resume()["paused"] is False
        assert charge(proxy.url, "r4").status_code == 503
        assert chaos.counts() == {"by_rule": {"down": 2}, "by_kind": {"abort": 2}}

        with pytest.raises(ConfigurationError, match=r"chaos.rules\[0\].fault"):
            chaos.replace([{"name": "x", "fault": "nope"}])
        assert [r["name"] for r in chaos.plan()["rules"]] == ["down", "slow"]  # unchanged

    with proxy_for(upstream).running() as proxy:
        missing = httpx.get(proxy.url + "/__chaos/nothing")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["code"] == "admin_not_found"
        bad = httpx.put(proxy.url + "/__chaos/plan", content=b"[1]")
        assert (bad.status_code, bad.json()["code"]) == (400, "admin_bad_request")
    assert audit(upstream)["charges"] == 2


def test_cli_refuses_a_bad_plan_and_a_missing_upstream(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["chaos"])
    assert result.exit_code == 2
    assert "--upstream is required" in result.output
    plan = tmp_path / "plan.toml"
    plan.write_text('[chaos]\nseed = 1\n[[chaos.rules]]\nname = "x"\nfault = "nope"\n')
    result = runner.invoke(main, ["chaos", "--upstream", "http://x", "--plan", str(plan)])
    assert result.exit_code == 1
    assert f"{plan}:5: chaos.rules[0].fault" in result.output


class _Teapot(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a reason phrase of its own."""

    def do_GET(self) -> None:
        self.send_response(418, "I Am A Teapot Indeed")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def teapot() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Teapot)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def status_line(url: str, path: str) -> bytes:
    """The status line a raw HTTP/1.1 client reads for ``GET path``."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    return received.split(b"\r\n", 1)[0]


def test_the_proxy_keeps_reason_phrases(teapot: str) -> None:
    rules = [
        Rule(name="late", fault=Delay(seconds=0.0), path="/late"),
        Rule(name="drip", fault=SlowBody(bytes_per_second=1000), path="/drip"),
        Rule(name="down", fault=Abort(status=503), path="/down"),
        Rule(name="lost", fault=FailAfter(lose="502"), path="/lost"),
    ]
    with proxy_for(teapot, *rules).running() as proxy:
        lines = {path: status_line(proxy.url, path) for path in ("/", "/late", "/drip")}
        made_up = {path: status_line(proxy.url, path) for path in ("/down", "/lost")}

    assert set(lines.values()) == {b"HTTP/1.1 418 I Am A Teapot Indeed"}
    assert made_up == {
        "/down": b"HTTP/1.1 503 Service Unavailable",
        "/lost": b"HTTP/1.1 502 Bad Gateway",
    }


def test_surefoot_chaos_logs_each_fault_at_warning(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('[chaos]\nseed = 1\n[[chaos.rules]]\nname = "down"\nfault = "abort"\n')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "surefoot", "chaos", "--listen", f"127.0.0.1:{port}"]
    command += ["--upstream", "http://127.0.0.1:9", "--plan", str(plan)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30  # a guard against a proxy that never starts
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/charges%0Aforged")
                break
            except httpx.ConnectError:
                assert process.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)

    assert answer.status_code == 503
    [line] = [line for line in stderr.splitlines() if "chaos.fault_injected" in line]
    assert " WARNING surefoot.chaos: chaos.fault_injected " in line
    assert "path=/charges%0Aforged rule=down kind=abort detail=503" in line
