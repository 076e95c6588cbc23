"""PrometheusMetrics as a middleware user meets it: an ASGI app, the middlewares, a scrape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from _support import T0
from surefoot.client import CircuitBreaker
from surefoot.errors import CircuitOpen
from surefoot.events import EventHook, LoggingHook
from surefoot.idempotency import IdempotencyMiddleware, IdempotencyStore
from surefoot.metrics import InstrumentedStore, PrometheusMetrics
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy, RateLimitStore
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def service(metrics: PrometheusMetrics, clock: ManualClock) -> tuple[Any, list[int]]:
    """A small service: /metrics, and the rest behind a rate limit and idempotency keys."""
    executions: list[int] = []

    async def orders(scope: Any, receive: Any, send: Any) -> None:
        executions.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    store = metrics.instrument_store(MemoryStore(), name="primary")
    hooks: list[EventHook] = [LoggingHook(), metrics]
    idempotent = IdempotencyMiddleware(orders, store=store, clock=clock, hooks=hooks)
    policy = RateLimitPolicy("per-client", limits=["3/minute"])
    limited = RateLimitMiddleware(
        idempotent, store=store, policies=[policy], clock=clock, hooks=hooks
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/metrics":
            await limited(scope, receive, send)
            return
        body, content_type = metrics.render()
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app, executions


@pytest.mark.anyio
async def test_a_service_with_both_middlewares_counts_what_they_decide() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    app, executions = service(metrics, ManualClock(T0))
    transport = httpx.ASGITransport(app, client=("203.0.113.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        first = await client.post("/orders", headers={"Idempotency-Key": "key-1"})
        again = await client.post("/orders", headers={"Idempotency-Key": "key-1"})
        reused = await client.post("/orders", headers={"Idempotency-Key": "key-1"}, json={})
        over = await client.post("/orders", headers={"Idempotency-Key": "key-2"})
        scraped = await client.get("/metrics")
    assert [r.status_code for r in (first, again, reused, over)] == [201, 201, 422, 429]
    assert len(executions) == 1
    assert scraped.headers["content-type"].startswith("text/plain; version=")

    # What /metrics answered is what the registry the user passed holds.
    for text in (scraped.text, generate_latest(registry).decode()):
        values = samples(text)

        def value(name: str, **labels: str) -> float | None:
            return values.get((name, frozenset(labels.items())))  # noqa: B023

        decisions = "surefoot_ratelimit_decisions_total"
        assert value(decisions, policy="per-client", outcome="allowed") == 3
        assert value(decisions, policy="per-client", outcome="rejected") == 1
        assert value("surefoot_idempotency_executions_total") == 1
        assert value("surefoot_idempotency_replays_total") == 1
        assert value("surefoot_idempotency_mismatches_total") == 1
        seconds = "surefoot_store_operation_duration_seconds_count"
        assert value(seconds, store="primary", operation="acquire") == 4
        assert value(seconds, store="primary", operation="begin") == 3
        assert value("surefoot_store_errors_total", store="primary", operation="begin") == 0
    # The gateway's own metrics are not there.
    assert not any(name.startswith("surefoot_upstream") for name, _ in samples(scraped.text))


def test_the_default_registry_is_the_instance_s_own() -> None:
    one, two = PrometheusMetrics(), PrometheusMetrics()
    assert one.registry is not two.registry
    one.inflight(1)
    assert one.registry.get_sample_value("surefoot_inflight_requests") == 1
    assert two.registry.get_sample_value("surefoot_inflight_requests") == 0
    assert repr(one) == "PrometheusMetrics()"


def test_a_registry_takes_one_instance() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusMetrics(registry=registry)


def test_a_circuit_breaker_reports_through_the_hook() -> None:
    metrics = PrometheusMetrics()
    breaker = CircuitBreaker(
        name="partner", minimum_calls=1, window_size=1, open_wait=30, clock=ManualClock(T0),
        hooks=[metrics],
    )  # fmt: skip
    metrics.set_breaker_state("partner", breaker.state)
    breaker.on_result(breaker.acquire(), failed=True, duration=0.1)
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    registry = metrics.registry
    state = "surefoot_breaker_state"
    assert registry.get_sample_value(state, {"breaker": "partner", "state": "open"}) == 1
    assert registry.get_sample_value(state, {"breaker": "partner", "state": "closed"}) == 0
    rejections = "surefoot_breaker_rejections_total"
    assert registry.get_sample_value(rejections, {"breaker": "partner"}) == 1


def test_a_wrapped_store_keeps_its_protocols() -> None:
    store = PrometheusMetrics().instrument_store(MemoryStore(), name="m")
    assert isinstance(store, InstrumentedStore)
    assert isinstance(store, IdempotencyStore)
    assert isinstance(store, RateLimitStore)
