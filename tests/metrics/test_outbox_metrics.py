"""The outbox's metrics: what the worker's events move, the backlog gauges, the bound on
the ``endpoint`` label, and a real worker's delivery seen in a scrape."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from _support import T0
from surefoot.metrics import METRICS, PrometheusMetrics
from surefoot.metrics import _prometheus as prometheus
from surefoot.outbox import (
    Outbox,
    OutboxBacklog,
    OutboxWorker,
    WebhookAttempted,
    WebhookDeferred,
    WebhookEndpointDisabled,
)
from surefoot.testing import ManualClock

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def samples(metrics: PrometheusMetrics) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.render()[0].decode())
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def attempted(endpoint: str, outcome: str, latency: float = 0.2) -> WebhookAttempted:
    return WebhookAttempted(
        at=T0, request_id="", endpoint=endpoint, message_id="msg_1", event_type="invoice.paid",
        attempt=1, outcome=outcome, status=200 if outcome == "delivered" else 500, error=None,
        latency=latency,
    )  # fmt: skip


def backlog(*rows: tuple[str, bool, int, int, int, float | None]) -> OutboxBacklog:
    return OutboxBacklog(at=T0, request_id="", endpoints=rows)


def test_attempts_count_by_endpoint_and_outcome_and_time_their_latency() -> None:
    metrics = PrometheusMetrics()
    for event in (
        attempted("acme", "delivered", 0.003),
        attempted("acme", "retrying", 2.0),
        attempted("acme", "retrying", 2.0),
        attempted("beta", "failed", 0.5),
    ):
        metrics(event)
    found = samples(metrics)
    sent = "surefoot_webhooks_sent_total"
    assert value(found, sent, endpoint="acme", outcome="delivered") == 1
    assert value(found, sent, endpoint="acme", outcome="retrying") == 2
    assert value(found, sent, endpoint="beta", outcome="failed") == 1
    assert value(found, sent, endpoint="beta", outcome="delivered") is None
    seconds = "surefoot_webhooks_send_duration_seconds"
    assert value(found, seconds + "_count", endpoint="acme") == 3
    assert value(found, seconds + "_sum", endpoint="acme") == pytest.approx(4.003)
    assert value(found, seconds + "_bucket", endpoint="acme", le="0.005") == 1


def test_deferrals_and_disabled_endpoints_count_by_reason() -> None:
    metrics = PrometheusMetrics()
    deferred = WebhookDeferred(
        at=T0, request_id="", endpoint="acme", message_id="msg_1", reason="rate_limited",
        retry_after=0.5,
    )  # fmt: skip
    metrics(deferred)
    metrics(deferred)
    metrics(WebhookEndpointDisabled(at=T0, request_id="", endpoint="acme", reason="gone"))
    found = samples(metrics)
    assert (
        value(found, "surefoot_webhooks_deferred_total", endpoint="acme", reason="rate_limited")
        == 2
    )
    assert (
        value(found, "surefoot_webhooks_endpoint_disabled_total", endpoint="acme", reason="gone")
        == 1
    )


def test_the_backlog_sets_the_gauges_and_drops_an_endpoint_that_left_it() -> None:
    metrics = PrometheusMetrics()
    metrics(backlog(("acme", True, 3, 2, 1, 42.5), ("beta", False, 0, 0, 4, None)))
    found = samples(metrics)
    assert value(found, "surefoot_webhooks_queued", endpoint="acme") == 5
    assert value(found, "surefoot_webhooks_oldest_undelivered_seconds", endpoint="acme") == 42.5
    assert value(found, "surefoot_webhooks_failed", endpoint="acme") == 1
    assert value(found, "surefoot_webhooks_queued", endpoint="beta") == 0
    # Nothing waits: 0, not a missing series.
    assert value(found, "surefoot_webhooks_oldest_undelivered_seconds", endpoint="beta") == 0
    assert value(found, "surefoot_webhooks_failed", endpoint="beta") == 4
    assert value(found, "surefoot_webhooks_endpoints_disabled") == 1

    metrics(backlog(("acme", True, 0, 0, 1, None)))
    found = samples(metrics)
    assert value(found, "surefoot_webhooks_queued", endpoint="acme") == 0
    assert value(found, "surefoot_webhooks_oldest_undelivered_seconds", endpoint="acme") == 0
    for name in (
        "surefoot_webhooks_queued",
        "surefoot_webhooks_oldest_undelivered_seconds",
        "surefoot_webhooks_failed",
    ):
        assert value(found, name, endpoint="beta") is None, name
    assert value(found, "surefoot_webhooks_endpoints_disabled") == 0

    # An endpoint that comes back gets its series back.
    metrics(backlog(("acme", True, 0, 0, 1, None), ("beta", True, 7, 0, 0, 3.0)))
    assert value(samples(metrics), "surefoot_webhooks_queued", endpoint="beta") == 7


def test_the_endpoint_label_is_bounded_and_other_adds_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prometheus, "MAX_OUTBOX_ENDPOINTS", 2)
    metrics = PrometheusMetrics()
    for name in ("a", "b", "c", "d"):
        metrics(attempted(name, "delivered"))
    metrics(
        backlog(
            ("a", True, 1, 0, 0, 1.0), ("b", True, 1, 0, 0, 1.0),
            ("c", True, 2, 1, 1, 30.0), ("d", False, 4, 0, 2, 60.0),
            ("e", True, 1, 0, 0, None),
        )
    )  # fmt: skip
    found = samples(metrics)
    sent = "surefoot_webhooks_sent_total"
    assert value(found, sent, endpoint="a", outcome="delivered") == 1
    assert value(found, sent, endpoint="other", outcome="delivered") == 2
    assert value(found, sent, endpoint="c", outcome="delivered") is None
    assert value(found, "surefoot_webhooks_queued", endpoint="other") == 8
    assert value(found, "surefoot_webhooks_failed", endpoint="other") == 3
    assert value(found, "surefoot_webhooks_oldest_undelivered_seconds", endpoint="other") == 60
    labels = {dict(key[1]).get("endpoint") for key in found if key[0] == "surefoot_webhooks_queued"}
    assert labels == {"a", "b", "other"}


def test_every_outbox_event_is_counted_and_its_spec_names_it() -> None:
    # The outbox's share of test_metric_table's check, which reads _support's package list.
    metrics = PrometheusMetrics()
    events = {WebhookAttempted, WebhookDeferred, WebhookEndpointDisabled, OutboxBacklog}
    assert all(metrics.wants(event) for event in events)
    fed_by = {name for spec in METRICS if spec.group == "outbox" for name in spec.fed_by}
    assert fed_by == {event.__name__ for event in events}
    for spec in METRICS:
        if "endpoint" in spec.labels and spec.group == "outbox":
            assert '"other"' in spec.help, spec.name


@pytest.mark.anyio
async def test_a_worker_s_delivery_and_backlog_reach_the_scrape(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    outbox = Outbox(url, clock=clock)
    outbox.create_tables()
    outbox.add_endpoint("acme", url="http://93.184.216.34/hooks", secrets=[SECRET])
    outbox.add_endpoint("beta", url="http://93.184.216.34/other", secrets=[SECRET])
    outbox.disable("beta")
    db = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    outbox.enqueue(db, "invoice.paid", {"invoice": 42})
    db.execute("COMMIT")
    db.close()
    received: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(204)

    metrics = PrometheusMetrics()
    worker = OutboxWorker(outbox, transport=httpx.MockTransport(answer), hooks=[metrics])
    try:
        assert await worker.run_once() == 1
    finally:
        await worker.aclose()
        outbox.close()
    assert len(received) == 1
    found = samples(metrics)
    assert value(found, "surefoot_webhooks_sent_total", endpoint="acme", outcome="delivered") == 1
    assert value(found, "surefoot_webhooks_queued", endpoint="acme") == 0
    assert value(found, "surefoot_webhooks_queued", endpoint="beta") == 0
    assert value(found, "surefoot_webhooks_endpoints_disabled") == 1


def test_the_outbox_breakers_share_the_endpoint_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from surefoot.client import BreakerStateChanged, CallNotPermitted

    monkeypatch.setattr(prometheus, "MAX_OUTBOX_ENDPOINTS", 1)
    metrics = PrometheusMetrics()
    for name in ("webhook:a", "webhook:b", "webhook:c", "payments"):
        metrics(
            BreakerStateChanged(
                at=T0, request_id="", breaker=name, from_state="closed", to_state="open",
                failure_rate=1.0, slow_call_rate=0.0,
            )
        )  # fmt: skip
        metrics(
            CallNotPermitted(at=T0, request_id="", breaker=name, state="open", retry_after=30.0)
        )
    found = samples(metrics)
    rejected = {
        dict(key[1])["breaker"]: n
        for key, n in found.items()
        if key[0] == "surefoot_breaker_rejections_total"
    }
    assert rejected == {"webhook:a": 1, "webhook:other": 2, "payments": 1}
