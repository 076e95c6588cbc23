"""GatewayMetrics as Prometheus sees it: every value is read back from ``render()``."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from _support import T0, public_event_types
from surefoot.client import BreakerState, CircuitBreaker
from surefoot.errors import CircuitOpen, ConfigurationError, StoreCapacityExceeded
from surefoot.events import Event, LoggingHook, emit, wanted
from surefoot.gateway import (
    ConfigRefused,
    ConfigReloaded,
    GatewayEvent,
    GatewayMetrics,
    OutcomeResolved,
    RequestShed,
    UpstreamFailed,
)
from surefoot.idempotency import (
    Begin,
    ExecutedUnprotected,
    IdempotencyMiddleware,
    KeyReserved,
    KeyReused,
    LeaseExpired,
    Outcome,
    OutcomeUnknown,
    RequestInProgress,
    ResponseReplayed,
    ResponseStored,
    Step,
    StoreBypassed,
    StoredResponse,
    StoreFailed,
)
from surefoot.metrics import (
    METRICS,
    InstrumentedStore,
    PrometheusMetrics,
    clear_multiprocess_dir,
    mark_worker_dead,
)
from surefoot.ratelimit import (
    Item,
    RateLimitAllowed,
    RateLimitMiddleware,
    RateLimitPolicy,
    RateLimitRejected,
    RateLimitShadowRejected,
    RateLimitStoreBypassed,
    RateLimitStoreFailed,
    parse_limit,
)
from surefoot.storage import (
    IdempotencyStore,
    MemoryStore,
    RateLimitStore,
    SqliteStore,
    StoreDown,
    StoreRecovered,
)
from surefoot.testing import ManualClock

SPECS = {spec.name: spec for spec in METRICS}


class Scrape:
    """The samples of one ``render()``, by name and labels."""

    def __init__(self, metrics: GatewayMetrics | str) -> None:
        if isinstance(metrics, str):
            text = metrics
        else:
            body, self.content_type = metrics.render()
            text = body.decode()
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in self.families.values()
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def scrape(metrics: GatewayMetrics) -> Scrape:
    return Scrape(metrics)


# -- the request loop ------------------------------------------------------------------------


def test_render_gives_text_exposition_of_surefoot_metrics_only() -> None:
    scraped = scrape(GatewayMetrics())
    assert scraped.content_type.startswith("text/plain; version=")
    assert scraped.families
    assert all(name.startswith("surefoot_") for name in scraped.families)
    # Unlabelled metrics exist before anything is counted (rate() needs a 0 to start from).
    assert scraped.value("surefoot_idempotency_replays_total") == 0
    assert scraped.value("surefoot_inflight_requests") == 0


def test_the_gateway_exposes_the_whole_table_and_counts_what_feeds_it() -> None:
    gateway = GatewayMetrics()
    families = [family.name for family in gateway.registry.collect()]
    # In the table's order; prometheus_client names a counter's family without its _total.
    assert families == [spec.name.removesuffix("_total") for spec in METRICS]
    fed_by = {name for spec in METRICS for name in spec.fed_by}
    counted = {event.__name__ for event in public_event_types() if gateway.wants(event)}
    assert {name for name in fed_by if name[0].isupper()} == counted
    assert all(callable(getattr(gateway, name)) for name in fed_by if name[0].islower())


def test_the_gateway_events_are_the_gateway_s_own() -> None:
    plain = PrometheusMetrics()
    gateway_events = (UpstreamFailed, RequestShed, ConfigReloaded, ConfigRefused, OutcomeResolved)
    for event_type in gateway_events:
        assert GatewayMetrics().wants(event_type)
        assert not plain.wants(event_type)


def test_instances_have_their_own_registries_and_never_the_global_one() -> None:
    one, two = GatewayMetrics(), GatewayMetrics()
    one.observe_request(route="/a", method="GET", status=200, seconds=0.01)
    labels = {"route": "/a", "method": "GET", "status": "200"}
    assert scrape(one).value("surefoot_http_requests_total", **labels) == 1
    assert scrape(two).value("surefoot_http_requests_total", **labels) is None
    assert REGISTRY.get_sample_value("surefoot_http_requests_total", labels) is None


def test_requests_are_counted_and_timed_by_route_method_and_status() -> None:
    metrics = GatewayMetrics()
    metrics.observe_request(route="/orders/{id}", method="GET", status=200, seconds=0.004)
    metrics.observe_request(route="/orders/{id}", method="GET", status=200, seconds=0.2)
    metrics.observe_request(route="/orders/{id}", method="GET", status=404, seconds=0.002)
    metrics.observe_request(route="other", method="POST", status=502, seconds=31.0)
    scraped = scrape(metrics)
    total = "surefoot_http_requests_total"
    assert scraped.series(total) == {
        frozenset({"route": "/orders/{id}", "method": "GET", "status": "200"}.items()): 2,
        frozenset({"route": "/orders/{id}", "method": "GET", "status": "404"}.items()): 1,
        frozenset({"route": "other", "method": "POST", "status": "502"}.items()): 1,
    }
    hist = "surefoot_http_request_duration_seconds"
    get = {"route": "/orders/{id}", "method": "GET"}
    assert scraped.value(f"{hist}_count", **get) == 3
    assert scraped.value(f"{hist}_sum", **get) == pytest.approx(0.206)
    assert scraped.value(f"{hist}_bucket", le="0.001", **get) == 0
    assert scraped.value(f"{hist}_bucket", le="0.005", **get) == 2
    assert scraped.value(f"{hist}_bucket", le="0.25", **get) == 3
    post = {"route": "other", "method": "POST"}
    assert scraped.value(f"{hist}_bucket", le="30.0", **post) == 0  # the last finite bucket
    assert scraped.value(f"{hist}_bucket", le="+Inf", **post) == 1
    bounds = {
        float(dict(labels)["le"])
        for labels in scraped.series(f"{hist}_bucket")
        if dict(labels)["method"] == "GET"
    }
    buckets = SPECS[hist].buckets
    assert bounds == {*map(float, buckets), float("inf")}
    assert min(bounds) == 0.001


def test_an_unknown_method_is_counted_as_other() -> None:
    metrics = GatewayMetrics()
    for method in ("BREW", "get", "X" * 100):
        metrics.observe_request(route="other", method=method, status=405, seconds=0.001)
    scraped = scrape(metrics)
    assert scraped.series("surefoot_http_requests_total") == {
        frozenset({"route": "other", "method": "other", "status": "405"}.items()): 3
    }


def test_upstream_requests_are_counted_by_outcome_and_timed() -> None:
    metrics = GatewayMetrics()
    metrics.observe_upstream(outcome="2xx", seconds=0.05)
    metrics.observe_upstream(outcome="2xx", seconds=0.07)
    metrics.observe_upstream(outcome="timeout", seconds=10.0)
    scraped = scrape(metrics)
    assert scraped.value("surefoot_upstream_requests_total", outcome="2xx") == 2
    assert scraped.value("surefoot_upstream_requests_total", outcome="timeout") == 1
    assert scraped.value("surefoot_upstream_duration_seconds_count") == 3
    assert scraped.value("surefoot_upstream_duration_seconds_sum") == pytest.approx(10.12)


def test_gauges_follow_inflight_requests_and_unknown_keys() -> None:
    metrics = GatewayMetrics()
    metrics.inflight(1)
    metrics.inflight(1)
    metrics.inflight(-1)
    metrics.set_unknown_keys(7)
    metrics.set_unknown_keys(4)
    scraped = scrape(metrics)
    assert scraped.value("surefoot_inflight_requests") == 1
    assert scraped.value("surefoot_idempotency_unknown_keys") == 4


# -- events ------------------------------------------------------------------------------------

REQ: dict[str, Any] = {"at": T0, "request_id": "r-1"}
RL: dict[str, Any] = {**REQ, "method": "POST", "path": "/orders", "principal": "k:abc"}
IDEM: dict[str, Any] = {**RL, "store_key": "k:abc:key-1"}
GW: dict[str, Any] = {**REQ, "method": "POST", "path": "/orders/7", "route": "/orders/{id}"}

#: (event, metric, labels): the event adds 1 to that series.
COUNTED: list[tuple[Event, str, dict[str, str]]] = [
    (
        RateLimitRejected(**RL, policy="per-key", limit="10/minute", retry_after=3.0),
        "surefoot_ratelimit_decisions_total",
        {"policy": "per-key", "outcome": "rejected"},
    ),
    (
        RateLimitShadowRejected(**RL, policy="trial", limit="1/second", retry_after=1.0),
        "surefoot_ratelimit_decisions_total",
        {"policy": "trial", "outcome": "shadow_rejected"},
    ),
    (
        RateLimitStoreFailed(**RL, action="fail_open", error="TimeoutError"),
        "surefoot_ratelimit_store_errors_total",
        {"action": "fail_open", "error": "TimeoutError"},
    ),
    (
        RateLimitStoreBypassed(**RL, action="local_fallback"),
        "surefoot_ratelimit_store_bypassed_total",
        {"action": "local_fallback"},
    ),
    (
        KeyReserved(**IDEM, generation=1, took_over=False),
        "surefoot_idempotency_executions_total",
        {},
    ),
    (ResponseReplayed(**IDEM, status=201), "surefoot_idempotency_replays_total", {}),
    (RequestInProgress(**IDEM, waited=0.5), "surefoot_idempotency_conflicts_total", {}),
    (KeyReused(**IDEM), "surefoot_idempotency_mismatches_total", {}),
    (
        OutcomeUnknown(**IDEM, reason="lease_expired"),
        "surefoot_idempotency_unknown_total",
        {"reason": "lease_expired"},
    ),
    (
        StoreFailed(**IDEM, phase="begin", action="fail_closed", error="ConnectionError"),
        "surefoot_idempotency_store_errors_total",
        {"phase": "begin", "action": "fail_closed", "error": "ConnectionError"},
    ),
    (
        StoreBypassed(**IDEM, phase="begin", action="fail_open"),
        "surefoot_idempotency_store_bypassed_total",
        {"phase": "begin", "action": "fail_open"},
    ),
    (
        ExecutedUnprotected(**IDEM, reason="store_down"),
        "surefoot_idempotency_unprotected_total",
        {"reason": "store_down"},
    ),
    (
        OutcomeResolved(**REQ, store_key="k", how="reconciler", result="found", age=42.0),
        "surefoot_idempotency_resolutions_total",
        {"how": "reconciler", "result": "found"},
    ),
    (
        StoreDown(**REQ, store="RedisStore", layer="ratelimit", error="ConnectionError"),
        "surefoot_store_outages_total",
        {"layer": "ratelimit"},
    ),
    (
        UpstreamFailed(**GW, reason="reset", status=None, reached=True),
        "surefoot_upstream_failures_total",
        {"reason": "reset"},
    ),
    (
        RequestShed(**GW, priority="normal", in_flight=100, limit=100),
        "surefoot_shed_total",
        {"priority": "normal"},
    ),
    (
        ConfigReloaded(**REQ, source="gateway.toml", generation=3),
        "surefoot_config_reloads_total",
        {"result": "applied"},
    ),
    (
        ConfigRefused(**REQ, source="gateway.toml", error="line 3: unknown key"),
        "surefoot_config_reloads_total",
        {"result": "refused"},
    ),
]


@pytest.mark.parametrize(
    ("event", "name", "labels"), COUNTED, ids=[type(e).__name__ for e, _, _ in COUNTED]
)
def test_each_counted_event_adds_one_to_its_series(
    event: Event, name: str, labels: dict[str, str]
) -> None:
    metrics = GatewayMetrics()
    assert metrics.wants(type(event))
    assert wanted([metrics], type(event))
    before = scrape(metrics).value(name, **labels) or 0
    emit([metrics], event)
    emit([metrics], event)
    assert scrape(metrics).value(name, **labels) == before + 2


def test_an_allowed_request_counts_once_per_policy() -> None:
    metrics = GatewayMetrics()
    metrics(RateLimitAllowed(**RL, policies=("per-key", "global"), delay=0.0))
    metrics(RateLimitAllowed(**RL, policies=("global",), delay=0.0))
    metrics(RateLimitAllowed(**RL, policies=(), delay=0.0))  # no policy covered it
    assert scrape(metrics).series("surefoot_ratelimit_decisions_total") == {
        frozenset({"policy": "per-key", "outcome": "allowed"}.items()): 1,
        frozenset({"policy": "global", "outcome": "allowed"}.items()): 2,
    }


def test_a_resolved_outcome_records_how_long_it_was_unknown() -> None:
    metrics = GatewayMetrics()
    for age in (0.5, 40.0, 7200.0):
        metrics(OutcomeResolved(**REQ, store_key="k", how="lookup", result="found", age=age))
    scraped = scrape(metrics)
    age_metric = "surefoot_idempotency_unknown_age_seconds"
    assert scraped.value(f"{age_metric}_count") == 3
    assert scraped.value(f"{age_metric}_sum") == pytest.approx(7240.5)
    assert scraped.value(f"{age_metric}_bucket", le="1.0") == 1
    assert scraped.value(f"{age_metric}_bucket", le="60.0") == 2
    assert scraped.value(f"{age_metric}_bucket", le="14400.0") == 3


@dataclass(frozen=True, kw_only=True, slots=True)
class _CustomShed(RequestShed):
    name: ClassVar[str] = "test.custom_shed"


@pytest.mark.parametrize(
    "event_type",
    [
        Event,
        GatewayEvent,
        LeaseExpired,
        ResponseStored,
        StoreRecovered,
        _CustomShed,  # counted types are matched exactly, not by subclass
    ],
)
def test_events_not_counted_are_not_wanted(event_type: type[Event]) -> None:
    metrics = GatewayMetrics()
    assert not metrics.wants(event_type)
    assert not wanted([metrics], event_type)


def test_an_event_not_counted_changes_nothing() -> None:
    metrics = GatewayMetrics()
    before = scrape(metrics).samples
    metrics(LeaseExpired(**IDEM, action="unknown"))
    metrics(ResponseStored(**IDEM, status=201, body_stored=True))
    metrics(_CustomShed(**GW, priority="normal", in_flight=1, limit=1))
    after = scrape(metrics).samples
    assert {k: v for k, v in after.items() if not k[0].endswith("_created")} == {
        k: v for k, v in before.items() if not k[0].endswith("_created")
    }


def test_the_event_fields_of_every_counted_type_exist() -> None:
    """The handlers read the fields they label by; a renamed field must fail here."""
    metrics = GatewayMetrics()
    for event, _, _ in COUNTED:
        metrics(event)  # a missing attribute would raise AttributeError


# -- circuit breakers --------------------------------------------------------------------------


def breaker_states(scraped: Scrape, breaker: str) -> dict[str, float]:
    return {
        dict(labels)["state"]: value
        for labels, value in scraped.series("surefoot_breaker_state").items()
        if dict(labels)["breaker"] == breaker
    }


def test_a_real_breaker_reports_transitions_state_and_rejections() -> None:
    metrics = GatewayMetrics()
    clock = ManualClock(T0)
    breaker = CircuitBreaker(
        name="shipping", minimum_calls=2, window_size=2, open_wait=30, clock=clock,
        hooks=[LoggingHook(), metrics],
    )  # fmt: skip
    metrics.set_breaker_state("shipping", breaker.state.value)
    closed = {state.value: 0.0 for state in BreakerState} | {"closed": 1.0}
    assert breaker_states(scrape(metrics), "shipping") == closed

    for _ in range(2):
        breaker.on_result(breaker.acquire(), failed=True, duration=0.1)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    with pytest.raises(CircuitOpen):
        breaker.acquire()

    scraped = scrape(metrics)
    opened = {state.value: 0.0 for state in BreakerState} | {"open": 1.0}
    assert breaker_states(scraped, "shipping") == opened
    transitions = "surefoot_breaker_transitions_total"
    labels = {"breaker": "shipping", "from_state": "closed", "to_state": "open"}
    assert scraped.value(transitions, **labels) == 1
    assert scraped.value("surefoot_breaker_rejections_total", breaker="shipping") == 2

    clock.advance(31)
    breaker.acquire()  # the first probe: OPEN -> HALF_OPEN
    scraped = scrape(metrics)
    half = {"breaker": "shipping", "from_state": "open", "to_state": "half_open"}
    assert scraped.value(transitions, **half) == 1
    assert breaker_states(scraped, "shipping")["half_open"] == 1
    assert breaker_states(scraped, "shipping")["open"] == 0


def test_set_breaker_state_takes_an_enum_and_refuses_an_unknown_state() -> None:
    metrics = GatewayMetrics()
    metrics.set_breaker_state("a", BreakerState.FORCED_OPEN)
    metrics.set_breaker_state("b", "disabled")
    scraped = scrape(metrics)
    assert breaker_states(scraped, "a")["forced_open"] == 1
    assert sum(breaker_states(scraped, "a").values()) == 1
    assert breaker_states(scraped, "b")["disabled"] == 1
    with pytest.raises(ValueError, match="half_open"):
        metrics.set_breaker_state("a", "ajar")


# -- stores ------------------------------------------------------------------------------------


def begin(token: str) -> Begin:
    return Begin(fingerprint="fp", token=token, lease=30, ttl=600, on_lease_expiry="unknown")


def ops(scraped: Scrape, metric: str, store: str) -> dict[str, float]:
    return {
        dict(labels)["operation"]: value
        for labels, value in scraped.series(metric).items()
        if dict(labels)["store"] == store
    }


OP_SECONDS = "surefoot_store_operation_duration_seconds_count"
OP_ERRORS = "surefoot_store_errors_total"
ALL_OPS = {
    *("begin", "finish", "resolve", "forget", "get", "records", "purge"),  # IdempotencyStore
    *("acquire", "release"),  # RateLimitStore
    *("order_claim", "order_get", "order_settle"),  # OrderingStore (webhooks)
}


@pytest.mark.anyio
async def test_a_wrapped_memory_store_times_every_call_and_counts_failures() -> None:
    metrics = GatewayMetrics()
    memory = MemoryStore(max_records=1)
    store: Any = metrics.instrument_store(memory, name="memory")
    assert isinstance(store, InstrumentedStore)
    assert isinstance(store, IdempotencyStore)
    assert isinstance(store, RateLimitStore)
    assert store.wrapped is memory
    # Every series exists from the start, at 0.
    assert ops(scrape(metrics), OP_ERRORS, "memory") == dict.fromkeys(ALL_OPS, 0)

    assert (await store.begin("k1", begin("t1"), T0)).__class__.__name__ == "Reserved"
    with pytest.raises(StoreCapacityExceeded):  # the one slot is in flight: a real failure
        await store.begin("k2", begin("t2"), T0)
    done = Outcome(Step.COMPLETE, StoredResponse(201, (), b"ok"))
    assert await store.finish("k1", "t1", done, T0)
    assert (await store.get("k1", T0)) is not None
    assert [key for key, _ in await store.records(T0)] == ["k1"]
    assert not await store.resolve("k1", StoredResponse(200, (), b""), T0)  # not unknown
    assert await store.forget("k1", T0)
    assert await store.purge(T0 + 10_000) == 0
    limit = parse_limit("2/minute")
    admitted, _ = await store.acquire([Item("rl:a", "fixed_window", limit)], T0)
    assert admitted
    await store.release("rl:a", "", T0)
    await store.aclose()

    scraped = scrape(metrics)
    assert ops(scraped, OP_SECONDS, "memory") == dict.fromkeys(ALL_OPS, 0) | {
        "begin": 2, "finish": 1, "get": 1, "records": 1, "resolve": 1, "forget": 1,
        "purge": 1, "acquire": 1, "release": 1,
    }  # fmt: skip
    assert ops(scraped, OP_ERRORS, "memory") == dict.fromkeys(ALL_OPS, 0) | {"begin": 1}
    # aclose is forwarded, not timed.
    assert "aclose" not in ops(scraped, OP_SECONDS, "memory")


@pytest.mark.anyio
async def test_a_failing_call_is_reraised_as_is_and_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = GatewayMetrics()
    memory = MemoryStore()
    boom = ConnectionError("store went away")

    async def release(key: str, token: str, now: float) -> None:
        raise boom

    monkeypatch.setattr(memory, "release", release)
    store: Any = metrics.instrument_store(memory, name="flaky")
    with pytest.raises(ConnectionError) as raised:
        await store.release("k", "t", T0)
    assert raised.value is boom
    scraped = scrape(metrics)
    assert scraped.value(OP_ERRORS, store="flaky", operation="release") == 1
    assert scraped.value(OP_SECONDS, store="flaky", operation="release") == 1


@pytest.mark.anyio
async def test_a_wrapped_sqlite_store_works_and_keeps_its_attributes(tmp_path: Path) -> None:
    metrics = GatewayMetrics()
    sqlite = SqliteStore(tmp_path / "s.db", lock_timeout=2.0)
    wrapper = metrics.instrument_store(sqlite, name="sqlite")
    assert isinstance(wrapper, IdempotencyStore)
    assert isinstance(wrapper, RateLimitStore)
    store: Any = wrapper
    try:
        assert store.path == str(tmp_path / "s.db")
        assert store.lock_timeout == 2.0
        assert store.rate_limit_algorithms == sqlite.rate_limit_algorithms
        await store.begin("k", begin("t"), T0)
        record = await store.get("k", T0)
        assert record is not None
        assert record.token == "t"
        await store.cache_put("c", b"v", T0 + 60, T0)  # not timed, but forwarded
        assert await store.cache_get("c", T0) == b"v"
    finally:
        await store.aclose()
    scraped = scrape(metrics)
    assert ops(scraped, OP_SECONDS, "sqlite") == dict.fromkeys(ALL_OPS, 0) | {
        "begin": 1,
        "get": 1,
    }


class OnlyRateLimits:
    """A store with the rate-limit half of the contract only."""

    rate_limit_algorithms = frozenset({"fixed_window"})
    timeout = 0.25

    async def acquire(self, items: Any, now: float) -> tuple[bool, list[Any]]:
        return True, []

    async def release(self, key: str, token: str, now: float) -> None:
        return None

    async def aclose(self) -> None:
        return None


class NoClose(OnlyRateLimits):
    aclose = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("store", "idempotency", "rate_limit"),
    [
        (MemoryStore(), True, True),
        (OnlyRateLimits(), False, True),
        (NoClose(), False, False),
        (object(), False, False),
    ],
    ids=["memory", "rate-limits-only", "no-aclose", "object"],
)
def test_the_wrapper_passes_the_protocol_checks_its_store_passes(
    store: object, idempotency: bool, rate_limit: bool
) -> None:
    assert isinstance(store, IdempotencyStore) is idempotency
    assert isinstance(store, RateLimitStore) is rate_limit
    wrapper = GatewayMetrics().instrument_store(store, name="s")
    assert isinstance(wrapper, IdempotencyStore) is idempotency
    assert isinstance(wrapper, RateLimitStore) is rate_limit
    assert hasattr(wrapper, "begin") is idempotency


@pytest.mark.anyio
async def test_a_rate_limit_only_store_is_timed_and_forwards_its_attributes() -> None:
    metrics = GatewayMetrics()
    inner = OnlyRateLimits()
    store: Any = metrics.instrument_store(inner, name="rl")
    assert store.timeout == 0.25
    assert store.rate_limit_algorithms == frozenset({"fixed_window"})
    store.rate_limit_algorithms = frozenset({"gcra"})  # the store's attribute, not a copy
    assert inner.rate_limit_algorithms == frozenset({"gcra"})
    assert await store.acquire([], T0) == (True, [])
    await store.aclose()
    assert ops(scrape(metrics), OP_SECONDS, "rl") == {"acquire": 1, "release": 0}
    with pytest.raises(AttributeError):
        store.no_such_attribute  # noqa: B018


def test_a_wrapper_copies_and_shows_its_store() -> None:
    memory = MemoryStore()
    wrapper = GatewayMetrics().instrument_store(memory, name="m")
    assert copy.copy(wrapper).wrapped is memory  # no endless __getattr__ on a bare copy
    assert repr(wrapper) == f"InstrumentedStore({memory!r})"
    assert repr(GatewayMetrics()) == "GatewayMetrics()"


@pytest.mark.anyio
async def test_middlewares_over_a_wrapped_store_feed_the_metrics() -> None:
    """The gateway's stack in small: rate limit, then idempotency, one wrapped store."""
    metrics = GatewayMetrics()
    clock = ManualClock(T0)
    store = metrics.instrument_store(MemoryStore(), name="primary")
    executions = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal executions
        executions += 1
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    idempotent = IdempotencyMiddleware(app, store=store, clock=clock, hooks=[metrics])
    policy = RateLimitPolicy("per-client", limits=["2/minute"])
    limited = RateLimitMiddleware(
        idempotent, store=store, policies=[policy], clock=clock, hooks=[metrics]
    )
    transport = httpx.ASGITransport(limited, client=("203.0.113.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        first = await client.post("/orders", headers={"Idempotency-Key": "key-1"})
        again = await client.post("/orders", headers={"Idempotency-Key": "key-1"})
        third = await client.post("/orders", headers={"Idempotency-Key": "key-2"})
    assert (first.status_code, again.status_code, third.status_code) == (201, 201, 429)
    assert executions == 1

    scraped = scrape(metrics)
    decisions = "surefoot_ratelimit_decisions_total"
    assert scraped.value(decisions, policy="per-client", outcome="allowed") == 2
    assert scraped.value(decisions, policy="per-client", outcome="rejected") == 1
    assert scraped.value("surefoot_idempotency_executions_total") == 1
    assert scraped.value("surefoot_idempotency_replays_total") == 1
    timed = ops(scraped, OP_SECONDS, "primary")
    assert (timed["acquire"], timed["begin"], timed["finish"]) == (3, 2, 1)


# -- several worker processes ------------------------------------------------------------------

WORKER = """
import os, sys
from surefoot.gateway import GatewayMetrics, RequestShed

metrics = GatewayMetrics(multiprocess_dir=sys.argv[1])
for seconds in (0.002, 0.02, 2.0):
    metrics.observe_request(route="/orders", method="POST", status=201, seconds=seconds)
metrics(RequestShed(at=0.0, request_id="r", method="POST", path="/orders", route="/orders",
                    priority="normal", in_flight=8, limit=8))
metrics.inflight(1)
metrics.set_breaker_state("up", "closed")
metrics.set_unknown_keys(9)
print(os.getpid())
"""

RENDERER = """
import sys
from surefoot.gateway import GatewayMetrics

metrics = GatewayMetrics(multiprocess_dir=sys.argv[1])
metrics.set_unknown_keys(int(sys.argv[2]))
body, content_type = metrics.render()
sys.stdout.write(body.decode())
"""


def run_python(code: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


@pytest.mark.slow
def test_worker_processes_are_added_up_by_render(tmp_path: Path) -> None:
    shared = str(tmp_path / "metrics")
    clear_multiprocess_dir(shared)
    # Only the child processes see the variable: prometheus_client reads it at import.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": shared}
    workers = [run_python(WORKER, shared, env=env) for _ in range(2)]
    pids = [int(finish(worker)) for worker in workers]
    scraped = Scrape(finish(run_python(RENDERER, shared, "3", env=env)))

    post = {"route": "/orders", "method": "POST"}
    assert scraped.value("surefoot_http_requests_total", status="201", **post) == 6
    hist = "surefoot_http_request_duration_seconds"
    assert scraped.value(f"{hist}_count", **post) == 6
    assert scraped.value(f"{hist}_bucket", le="0.005", **post) == 2
    assert scraped.value(f"{hist}_sum", **post) == pytest.approx(4.044)
    assert scraped.value("surefoot_shed_total", priority="normal") == 2
    assert scraped.value("surefoot_inflight_requests") == 2  # summed over the workers
    assert breaker_states(scraped, "up")["closed"] == 2  # two workers see it closed
    assert breaker_states(scraped, "up")["open"] == 0
    assert scraped.value("surefoot_idempotency_unknown_keys") == 3  # the latest report

    # A worker exits: its live gauges go, its counts stay.
    mark_worker_dead(pids[0], multiprocess_dir=shared)
    scraped = Scrape(finish(run_python(RENDERER, shared, "3", env=env)))
    assert scraped.value("surefoot_inflight_requests") == 1
    assert breaker_states(scraped, "up")["closed"] == 1
    assert scraped.value("surefoot_http_requests_total", status="201", **post) == 6

    clear_multiprocess_dir(shared)
    assert list(Path(shared).glob("*.db")) == []


def test_multiprocess_mode_refuses_a_process_not_set_up_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="existing directory"):
        GatewayMetrics(multiprocess_dir=missing)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(ConfigurationError, match="PROMETHEUS_MULTIPROC_DIR"):
        GatewayMetrics(multiprocess_dir=str(tmp_path))
    # Set after prometheus_client was imported (as in this process): too late.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError, match="imported before"):
        GatewayMetrics(multiprocess_dir=str(tmp_path))
    assert list(tmp_path.glob("*.db")) == []


def test_clear_multiprocess_dir_creates_the_directory_and_drops_old_values(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "new" / "metrics"
    clear_multiprocess_dir(str(shared))
    assert shared.is_dir()
    (shared / "counter_123.db").write_bytes(b"old")
    (shared / "keep.txt").write_text("not ours")
    clear_multiprocess_dir(str(shared))
    assert sorted(p.name for p in shared.iterdir()) == ["keep.txt"]
