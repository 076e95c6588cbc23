"""The chaos proxy on real sockets: each fault against the legacy payments API, the control
API, and a duplicate that runs twice without surefoot and once through the gateway."""

from __future__ import annotations

import socket
import threading
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
