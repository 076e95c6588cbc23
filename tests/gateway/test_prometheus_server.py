"""A real Prometheus server scrapes ``surefoot serve`` (three workers, whose admin port
serves one ``/metrics`` for all) and evaluates the rules ``surefoot alerts --prometheus``
writes from the same policy file: a burst of replayed idempotency keys after a quiet
baseline fires ``SurefootDuplicateKeysSpike``, which was not firing before.

``[alerts]`` has the smallest windows the schema allows (``window`` 60 s, ``baseline``
1 h) and no hold. The rule's usual rate is ``avg_over_time`` over a subquery whose points
fall on the minutes of the clock; Prometheus averages the points it has, so the usual rate
is known (0: no replay yet) from the first minute boundary after two scrapes, not after an
hour. A burst then is far above it, until the next boundary adds a point that contains the
burst; the test waits for the first boundary (at most about a minute) and sends the burst
at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import ADMIN_TOKEN, settled, surefoot_serve, toml_config, wait_until

from _services import PrometheusServer
from _services import prometheus as prometheus_path
from _support import http_server

pytestmark = pytest.mark.slow

RULE = "SurefootDuplicateKeysSpike"
ALERTS = """
[alerts]
window = 60
baseline = 3600
hold = 0
spike_factor = 4
min_rate = 0.1
runbook_base = "https://example.test/observability"
"""
#: The rule's usual rate, as written from ``ALERTS``: known once it has a point.
USUAL = "sum(avg_over_time(rate(surefoot_idempotency_replays_total[1m])[1h:1m]))"
#: Requests with keys of their own during the baseline (none is a replay).
ORDINARY = 10
#: Replays in the burst: far above the floor (``min_rate``) over a one-minute window.
REPLAYS = 40


class _Upstream(BaseHTTPRequestHandler):
    """Answers every request 201 with a small JSON body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"path": self.path}).encode()
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    with http_server(_Upstream) as url:
        yield url


def _post(url: str, key: str) -> httpx.Response:
    """``POST /orders`` with ``key``, on a connection of its own (so that the workers
    share the requests)."""
    headers = {"Idempotency-Key": key}
    return httpx.post(f"{url}/orders", json={"order": key}, headers=headers, timeout=10)


def _rule(prometheus: PrometheusServer) -> dict[str, Any]:
    """The rule as ``/api/v1/rules`` shows it."""
    groups = prometheus.api("rules", type="alert")["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r["name"] == RULE]
    return dict(rule)


def _alerts(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    """The rule's active alerts (pending or firing) as ``/api/v1/alerts`` shows them."""
    alerts = prometheus.api("alerts")["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == RULE]


def _replays(prometheus: PrometheusServer) -> float | None:
    """The replays counter as Prometheus last scraped it (None before the first scrape)."""
    result = prometheus.api("query", query="surefoot_idempotency_replays_total")["result"]
    return float(result[0]["value"][1]) if result else None


def test_a_burst_of_replays_fires_the_duplicate_keys_alert(tmp_path: Path, upstream: str) -> None:
    prometheus_path()  # skipped, or failed in CI, before anything starts
    config = toml_config(upstream, f"sqlite:///{tmp_path}/store.db", ALERTS)
    gateway = surefoot_serve(tmp_path, config, "--workers", "3")
    try:
        gateway.wait_ready()
        rules = tmp_path / "rules.yml"
        command = [str(Path(sys.executable).with_name("surefoot")), "alerts", "--prometheus"]
        command += ["--config", str(gateway.config), "-o", str(rules)]
        written = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert written.returncode == 0, written.stderr
        target = gateway.admin.removeprefix("http://")
        scrape = {
            "job_name": "surefoot",
            "authorization": {"credentials": ADMIN_TOKEN},
            "static_configs": [{"targets": [target]}],
        }
        with PrometheusServer([scrape], [rules]) as prometheus:
            # The quiet baseline: requests are served, none repeats a key.
            ordinary = [_post(gateway.url, f"ordinary-{n}") for n in range(ORDINARY)]
            assert [r.status_code for r in ordinary] == [201] * ORDINARY
            assert all("idempotent-replayed" not in r.headers for r in ordinary)

            def baseline_known() -> tuple[float, float] | None:
                """When the usual rate was first known, and its value."""
                result = prometheus.api("query", query=USUAL)["result"]
                if not result:
                    return None
                timestamp, value = result[0]["value"]
                return float(timestamp), float(value)

            known_at, usual = wait_until(
                baseline_known, timeout=90, what="the first point of the baseline"
            )
            assert usual == 0

            def evaluated_since() -> dict[str, Any] | None:
                rule = _rule(prometheus)
                last = datetime.fromisoformat(rule["lastEvaluation"]).timestamp()
                return rule if last > known_at else None

            before = wait_until(evaluated_since, timeout=10, what="an evaluation of the rule")
            assert USUAL in before["query"], before
            assert before["health"] == "ok", before
            assert before["state"] == "inactive", before
            assert _alerts(prometheus) == []
            assert _replays(prometheus) == 0

            # The burst: one key executed once, then sent again and again.
            first = _post(gateway.url, "burst")
            assert first.status_code == 201
            replayed = [settled(lambda: _post(gateway.url, "burst"))]
            replayed += [_post(gateway.url, "burst") for _ in range(REPLAYS - 1)]
            assert [r.status_code for r in replayed] == [201] * REPLAYS
            assert all(r.headers["idempotent-replayed"] == "true" for r in replayed)
            assert all(r.content == first.content for r in replayed)

            def firing() -> list[dict[str, Any]] | None:
                alerts = [a for a in _alerts(prometheus) if a["state"] == "firing"]
                return alerts or None

            try:
                fired = wait_until(firing, timeout=30, what=f"{RULE} to fire")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {_rule(prometheus)}") from None

            def scraped() -> float | None:
                value = _replays(prometheus)
                return value if value is not None and value >= REPLAYS else None

            # Every worker's replays, added up on the one /metrics Prometheus scrapes.
            assert wait_until(scraped, timeout=10, what="the burst to be scraped") == REPLAYS
    finally:
        gateway.server.stop()

    (alert,) = fired
    assert alert["labels"] == {"alertname": RULE, "severity": "warning"}
    assert alert["annotations"]["runbook_url"] == (
        "https://example.test/observability#surefootduplicatekeysspike"
    )
    assert float(alert["value"]) > 0.1
