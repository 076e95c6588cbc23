"""``PrometheusMetrics``: surefoot's Prometheus metrics, fed by events and by calls.

The metrics come from the table in ``_specs.py`` (see ``docs/metrics.md``). They are fed
three ways: the layers emit events, which the instance receives as an ``EventHook`` (it
*is* the hook); a request loop calls ``observe_request`` and ``inflight``; stores wrapped
by ``instrument_store`` time each call. ``render()`` gives the exposition body and content
type for ``GET /metrics``. ``GatewayMetrics`` (``surefoot.gateway``) adds the gateway's own
metrics and events to this class.

Rule 1: by default every instance has its own ``CollectorRegistry``; nothing touches the
        global one unless it is passed, so tests and reloads may make as many instances
        as they like (but see Rule 4).
Rule 2: the hot path builds no dict: label children are looked up by position in a cache
        made on first use, and ``wants`` says no to every event type that is not counted,
        so those events are never built.
Rule 3: event types are matched exactly, never by subclass.
Rule 4: with ``multiprocess_dir`` (several worker processes), each worker writes its
        values to files in that directory and ``render()`` adds up every worker's files.
        prometheus_client decides this when it is *imported*, from the environment
        variable ``PROMETHEUS_MULTIPROC_DIR``: the process that starts the workers sets it
        to the same directory (``clear_multiprocess_dir`` first) before they start, and
        the constructor refuses to start with a ``ConfigurationError`` otherwise.
        Make one instance per worker: two in one process would write the same file entries.
Rule 5: in multiprocess mode, counters and histograms are summed over workers, including
        workers that have exited; gauges follow their spec's ``multiprocess_mode``.
        "Live" needs the supervisor to call ``mark_worker_dead`` when a worker exits.
Rule 6: the circuit breaker's events live in ``surefoot.client`` (the ``client`` extra);
        without it no breaker exists to emit them, and they are not counted.
Rule 7: the outbox's ``endpoint`` label is bounded (Rule 2 of ``_specs``): an instance
        gives its first ``MAX_OUTBOX_ENDPOINTS`` endpoint names their own series and labels
        every later one ``"other"``, whose backlog gauges add up (the oldest age: the
        largest) over the endpoints it stands for. An ``OutboxBacklog`` is the whole
        backlog: the gauges of a label it no longer holds (a removed endpoint) are removed,
        or set to 0 in multiprocess mode, where prometheus_client cannot remove a series.
        The outbox worker's per-endpoint breakers (``webhook:NAME``) share the bound:
        a breaker of an endpoint beyond it is counted as ``webhook:other``.
Rule 8: the saga gauges are set whole by ``set_saga_counts`` (the sweeper calls it with
        ``SagaLog.counts()``); their ``saga`` label is bounded the same way, by
        ``MAX_SAGA_NAMES``, and a (state, saga) pair no longer counted is set to 0.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from surefoot.errors import ConfigurationError
from surefoot.events import Event, EventHook
from surefoot.idempotency import (
    ExecutedUnprotected,
    KeyReserved,
    KeyReused,
    OutcomeUnknown,
    RequestInProgress,
    ResponseReplayed,
    StoreBypassed,
    StoreFailed,
)
from surefoot.metrics._specs import MAX_OUTBOX_ENDPOINTS, MAX_SAGA_NAMES, METRICS, MetricSpec
from surefoot.metrics._store import InstrumentedStore, instrumented
from surefoot.metrics._uncounted import counted
from surefoot.outbox import (
    OutboxBacklog,
    WebhookAttempted,
    WebhookDeferred,
    WebhookEndpointDisabled,
)
from surefoot.ratelimit import (
    RateLimitAllowed,
    RateLimitRejected,
    RateLimitShadowRejected,
    RateLimitStoreBypassed,
    RateLimitStoreFailed,
)
from surefoot.storage import StoreDown
from surefoot.webhooks import (
    WebhookBusy,
    WebhookDuplicate,
    WebhookFailed,
    WebhookProcessed,
    WebhookReceiverEvent,
    WebhookRefused,
    WebhookReplayed,
    WebhookStale,
)

_HAS_CLIENT = importlib.util.find_spec("httpx") is not None
if _HAS_CLIENT:
    from surefoot.client import BreakerState, BreakerStateChanged, CallNotPermitted

__all__ = ["PrometheusMetrics", "clear_multiprocess_dir", "mark_worker_dead"]

M = TypeVar("M", bound=MetricWrapperBase)

#: How ``OutboxWorker`` names an endpoint's circuit breaker.
_OUTBOX_BREAKER = "webhook:"
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_BREAKER_STATES = tuple(state.value for state in BreakerState) if _HAS_CLIENT else ()


class _Children(Generic[M]):
    """A labelled metric's children, cached by label values (given by position)."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._cache: dict[tuple[object, ...], M] = {}

    def __call__(self, *label_values: object) -> M:
        child = self._cache.get(label_values)
        if child is None:
            child = self._cache[label_values] = self._metric.labels(*label_values)
        return child

    def remove(self, *label_values: object) -> None:
        """Drop the series of ``label_values`` (it comes back, from 0, on its next use)."""
        self._cache.pop(label_values, None)
        self._metric.remove(*label_values)


def _new(metric: MetricSpec, registry: CollectorRegistry) -> MetricWrapperBase:
    """The prometheus_client metric ``metric`` describes, registered in ``registry``."""
    if metric.kind == "counter":
        return Counter(metric.name, metric.help, metric.labels, registry=registry)
    if metric.kind == "histogram":
        return Histogram(
            metric.name, metric.help, metric.labels, buckets=metric.buckets, registry=registry
        )
    return Gauge(
        metric.name,
        metric.help,
        metric.labels,
        registry=registry,
        multiprocess_mode=metric.multiprocess_mode,
    )


class PrometheusMetrics(EventHook):
    """surefoot's Prometheus metrics, and the event hook that counts what its layers decide.

    Example:
        >>> metrics = PrometheusMetrics()
        >>> app = IdempotencyMiddleware(app, store=store, hooks=[LoggingHook(), metrics])
        >>> app = RateLimitMiddleware(app, store=store, policies=policies, hooks=[metrics])
        >>> body, content_type = metrics.render()  # the answer to GET /metrics

    Args:
        registry: where the metrics are registered (default: a new ``CollectorRegistry``
            of this instance's own; pass ``prometheus_client.REGISTRY`` to expose them
            with the rest of the process's metrics).
        multiprocess_dir: the directory worker processes share their values through
            (``None``: one process).

    Raises:
        ConfigurationError: ``multiprocess_dir`` is given but is not a directory, or
            ``PROMETHEUS_MULTIPROC_DIR`` did not name it when prometheus_client was imported.

    Warning:
        In multiprocess mode, set ``PROMETHEUS_MULTIPROC_DIR`` to ``multiprocess_dir`` in
        the workers' environment before they start (prometheus_client reads it at import),
        wipe the directory before the first worker starts (``clear_multiprocess_dir``:
        old files would be added to the new counts) and make one instance per worker.
    """

    #: The groups of the metric table this class exposes (``GatewayMetrics`` adds one).
    groups: ClassVar[frozenset[str]] = frozenset(
        ("requests", "ratelimit", "idempotency", "webhooks", "outbox", "breaker", "store", "saga")
    )

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        if multiprocess_dir is not None:
            _check_multiprocess(multiprocess_dir, type(self).__name__)
        self.multiprocess_dir = multiprocess_dir
        registry = self.registry = registry if registry is not None else CollectorRegistry()
        if multiprocess_dir is None:
            self._exposed = registry
        else:
            # The workers' values live in files: expose their sum, not this process's own.
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        # In the table's order, which is the exposition's.
        self._metrics = {m.name: _new(m, registry) for m in METRICS if m.group in self.groups}

        self._requests = self._children("surefoot_http_requests_total", Counter)
        self._request_seconds = self._children("surefoot_http_request_duration_seconds", Histogram)
        self._inflight = self._metric("surefoot_inflight_requests", Gauge)
        self._decisions = self._children("surefoot_ratelimit_decisions_total", Counter)
        self._ratelimit_store_errors = self._children(
            "surefoot_ratelimit_store_errors_total", Counter
        )
        self._ratelimit_store_bypassed = self._children(
            "surefoot_ratelimit_store_bypassed_total", Counter
        )
        self._executions = self._metric("surefoot_idempotency_executions_total", Counter)
        self._replays = self._metric("surefoot_idempotency_replays_total", Counter)
        self._conflicts = self._metric("surefoot_idempotency_conflicts_total", Counter)
        self._mismatches = self._metric("surefoot_idempotency_mismatches_total", Counter)
        self._unknown = self._children("surefoot_idempotency_unknown_total", Counter)
        self._unknown_keys = self._metric("surefoot_idempotency_unknown_keys", Gauge)
        self._idempotency_store_errors = self._children(
            "surefoot_idempotency_store_errors_total", Counter
        )
        self._idempotency_store_bypassed = self._children(
            "surefoot_idempotency_store_bypassed_total", Counter
        )
        self._unprotected = self._children("surefoot_idempotency_unprotected_total", Counter)
        self._transitions = self._children("surefoot_breaker_transitions_total", Counter)
        self._breaker_state = self._children("surefoot_breaker_state", Gauge)
        self._rejections = self._children("surefoot_breaker_rejections_total", Counter)
        self._outages = self._children("surefoot_store_outages_total", Counter)
        self._store_seconds = self._metric("surefoot_store_operation_duration_seconds", Histogram)
        self._store_errors = self._metric("surefoot_store_errors_total", Counter)
        self._webhooks = self._children("surefoot_webhooks_received_total", Counter)
        self._webhooks_refused = self._children("surefoot_webhooks_refused_total", Counter)
        self._sent = self._children("surefoot_webhooks_sent_total", Counter)
        self._send_seconds = self._children("surefoot_webhooks_send_duration_seconds", Histogram)
        self._deferred = self._children("surefoot_webhooks_deferred_total", Counter)
        self._disabled = self._children("surefoot_webhooks_endpoint_disabled_total", Counter)
        self._queued = self._children("surefoot_webhooks_queued", Gauge)
        self._oldest = self._children("surefoot_webhooks_oldest_undelivered_seconds", Gauge)
        self._failed = self._children("surefoot_webhooks_failed", Gauge)
        self._endpoints_disabled = self._metric("surefoot_webhooks_endpoints_disabled", Gauge)
        # Rule 7: the endpoint names with series of their own, and the labels the last
        # backlog report set.
        self._outbox_names: set[str] = set()
        self._backlog_labels: set[str] = set()
        # The saga names with series of their own (bounded like the outbox's endpoints),
        # and the (state, saga) labels the last count set.
        self._sagas = self._children("surefoot_sagas", Gauge)
        self._saga_oldest = self._children("surefoot_saga_oldest_seconds", Gauge)
        self._saga_names: set[str] = set()
        self._saga_labels: set[tuple[str, str]] = set()

        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            RateLimitAllowed: self._on_allowed,
            RateLimitRejected: self._on_rejected,
            RateLimitShadowRejected: self._on_shadow_rejected,
            RateLimitStoreFailed: self._on_ratelimit_store_failed,
            RateLimitStoreBypassed: self._on_ratelimit_store_bypassed,
            KeyReserved: self._on_reserved,
            ResponseReplayed: self._on_replayed,
            RequestInProgress: self._on_in_progress,
            KeyReused: self._on_key_reused,
            OutcomeUnknown: self._on_unknown,
            StoreFailed: self._on_idempotency_store_failed,
            StoreBypassed: self._on_idempotency_store_bypassed,
            ExecutedUnprotected: self._on_unprotected,
            StoreDown: self._on_store_down,
            WebhookProcessed: partial(self._on_webhook, "processed"),
            WebhookStale: partial(self._on_webhook, "stale"),
            WebhookBusy: partial(self._on_webhook, "busy"),
            WebhookFailed: partial(self._on_webhook, "failed"),
            WebhookDuplicate: self._on_webhook_duplicate,
            WebhookRefused: self._on_webhook_refused,
            WebhookReplayed: partial(self._on_webhook, "replayed"),
            WebhookAttempted: self._on_webhook_attempted,
            WebhookDeferred: self._on_webhook_deferred,
            WebhookEndpointDisabled: self._on_webhook_endpoint_disabled,
            OutboxBacklog: self._on_outbox_backlog,
        }
        if _HAS_CLIENT:
            self._handlers[BreakerStateChanged] = self._on_breaker_changed
            self._handlers[CallNotPermitted] = self._on_not_permitted

    def _metric(self, name: str, kind: type[M]) -> M:
        """The metric of the table named ``name``, which must be a ``kind``."""
        made = self._metrics[name]
        if not isinstance(made, kind):  # pragma: no cover - a table that disagrees with the code
            raise TypeError(f"{name}: expected a {kind.__name__}, got {made!r}")
        return made

    def _children(self, name: str, kind: type[M]) -> _Children[M]:
        """``_metric``, with its label children cached (Rule 2)."""
        return _Children(self._metric(name, kind))

    # -- calls ------------------------------------------------------------------------------

    def observe_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration.

        ``route`` must be the matched route template or ``"other"``, never the raw path.
        """
        if not counted():
            return
        if method not in _METHODS:
            method = "other"
        self._requests(route, method, status).inc()
        self._request_seconds(route, method).observe(seconds)

    def inflight(self, delta: int) -> None:
        """Requests started (``+1``) or finished (``-1``)."""
        if counted():
            self._inflight.inc(delta)

    def set_unknown_keys(self, count: int) -> None:
        """The reconciler's latest count of keys whose outcome is unknown."""
        self._unknown_keys.set(count)

    def set_breaker_state(self, breaker: str, state: str | BreakerState) -> None:
        """Record ``breaker``'s current state (at start; transitions then come as events).

        Raises:
            ValueError: ``state`` is not a ``BreakerState`` value.
        """
        value = state if isinstance(state, str) else state.value
        if value not in _BREAKER_STATES:
            raise ValueError(f"breaker state: expected one of {_BREAKER_STATES}, got {state!r}")
        for known in _BREAKER_STATES:
            self._breaker_state(breaker, known).set(1.0 if known == value else 0.0)

    def instrument_store(self, store: object, *, name: str) -> InstrumentedStore:
        """Wrap ``store`` so that each call is timed and each failure counted.

        Example:
            >>> store = metrics.instrument_store(store_from_url(url), name="primary")
            >>> app = IdempotencyMiddleware(app, store=store)

        The wrapper is an ``IdempotencyStore`` / a ``RateLimitStore`` exactly when
        ``store`` is; every other attribute is read from ``store``.

        Warning:
            The wrapper is not an instance of the store's class: ``RateLimiter`` skips
            its store timeout guard only for a bare ``MemoryStore``, so it guards a
            wrapped one (a few microseconds a request).
        """
        return instrumented(
            store,
            lambda operation: (
                self._store_seconds.labels(name, operation),
                self._store_errors.labels(name, operation),
            ),
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition body (every worker's sum in multiprocess mode) and its content type."""
        return generate_latest(self._exposed), CONTENT_TYPE_LATEST

    def __repr__(self) -> str:
        name = type(self).__name__
        if self.multiprocess_dir is None:
            return f"{name}()"
        return f"{name}(multiprocess_dir={self.multiprocess_dir!r})"

    # -- the event hook ---------------------------------------------------------------------

    def wants(self, event_type: type[Event]) -> bool:
        """True for the event types counted here (exact types, not subclasses)."""
        return event_type in self._handlers

    def __call__(self, event: Event, /) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None and counted():
            handler(event)

    def _on_allowed(self, event: RateLimitAllowed) -> None:
        for policy in event.policies:
            self._decisions(policy, "allowed").inc()

    def _on_rejected(self, event: RateLimitRejected) -> None:
        self._decisions(event.policy, "rejected").inc()

    def _on_shadow_rejected(self, event: RateLimitShadowRejected) -> None:
        self._decisions(event.policy, "shadow_rejected").inc()

    def _on_ratelimit_store_failed(self, event: RateLimitStoreFailed) -> None:
        self._ratelimit_store_errors(event.action, event.error).inc()

    def _on_ratelimit_store_bypassed(self, event: RateLimitStoreBypassed) -> None:
        self._ratelimit_store_bypassed(event.action).inc()

    def _on_reserved(self, event: KeyReserved) -> None:
        self._executions.inc()

    def _on_replayed(self, event: ResponseReplayed) -> None:
        self._replays.inc()

    def _on_in_progress(self, event: RequestInProgress) -> None:
        self._conflicts.inc()

    def _on_key_reused(self, event: KeyReused) -> None:
        self._mismatches.inc()

    def _on_unknown(self, event: OutcomeUnknown) -> None:
        self._unknown(event.reason).inc()

    def _on_idempotency_store_failed(self, event: StoreFailed) -> None:
        self._idempotency_store_errors(event.phase, event.action, event.error).inc()

    def _on_idempotency_store_bypassed(self, event: StoreBypassed) -> None:
        self._idempotency_store_bypassed(event.phase, event.action).inc()

    def _on_unprotected(self, event: ExecutedUnprotected) -> None:
        self._unprotected(event.reason).inc()

    def _on_breaker_changed(self, event: BreakerStateChanged) -> None:
        breaker = self._breaker_label(event.breaker)
        self._transitions(breaker, event.from_state, event.to_state).inc()
        self.set_breaker_state(breaker, event.to_state)

    def _on_not_permitted(self, event: CallNotPermitted) -> None:
        self._rejections(self._breaker_label(event.breaker)).inc()

    def _breaker_label(self, name: str) -> str:
        """An outbox worker's per-endpoint breaker (``webhook:NAME``) under the outbox's
        bound on endpoint names (Rule 7); any other breaker by its name."""
        endpoint = name.removeprefix(_OUTBOX_BREAKER)
        return name if endpoint == name else _OUTBOX_BREAKER + self._outbox_endpoint(endpoint)

    def _on_store_down(self, event: StoreDown) -> None:
        self._outages(event.layer).inc()

    def _on_webhook(self, outcome: str, event: WebhookReceiverEvent) -> None:
        self._webhooks(event.endpoint, outcome).inc()

    def _on_webhook_duplicate(self, event: WebhookDuplicate) -> None:
        self._webhooks(event.endpoint, "in_progress" if event.in_progress else "duplicate").inc()

    def _on_webhook_refused(self, event: WebhookRefused) -> None:
        self._webhooks(event.endpoint, "refused").inc()
        self._webhooks_refused(event.endpoint, event.code).inc()

    def _outbox_endpoint(self, name: str) -> str:
        """``name``, or ``"other"`` once ``MAX_OUTBOX_ENDPOINTS`` others have a series (Rule 7)."""
        if name in self._outbox_names:
            return name
        if len(self._outbox_names) >= MAX_OUTBOX_ENDPOINTS:
            return "other"
        self._outbox_names.add(name)
        return name

    def _on_webhook_attempted(self, event: WebhookAttempted) -> None:
        endpoint = self._outbox_endpoint(event.endpoint)
        self._sent(endpoint, event.outcome).inc()
        self._send_seconds(endpoint).observe(event.latency)

    def _on_webhook_deferred(self, event: WebhookDeferred) -> None:
        self._deferred(self._outbox_endpoint(event.endpoint), event.reason).inc()

    def _on_webhook_endpoint_disabled(self, event: WebhookEndpointDisabled) -> None:
        self._disabled(self._outbox_endpoint(event.endpoint), event.reason).inc()

    def _on_outbox_backlog(self, event: OutboxBacklog) -> None:
        queued: dict[str, int] = {}
        failed: dict[str, int] = {}
        oldest: dict[str, float] = {}
        disabled = 0
        for name, enabled, pending, sending, failures, age in event.endpoints:
            label = self._outbox_endpoint(name)
            queued[label] = queued.get(label, 0) + pending + sending
            failed[label] = failed.get(label, 0) + failures
            oldest[label] = max(oldest.get(label, 0.0), age or 0.0)
            disabled += not enabled
        for label in queued:
            self._queued(label).set(queued[label])
            self._failed(label).set(failed[label])
            self._oldest(label).set(oldest[label])
        self._endpoints_disabled.set(disabled)
        for label in self._backlog_labels - queued.keys():
            for gauge in (self._queued, self._failed, self._oldest):
                if _can_remove_series():
                    gauge.remove(label)
                else:
                    gauge(label).set(0)
        self._backlog_labels = set(queued)

    def set_saga_counts(self, counts: Iterable[tuple[str, str, int, float]], *, now: float) -> None:
        """Set the saga gauges from ``SagaLog.counts()`` (``(name, state, how many, oldest
        updated_at)``) as of ``now``; a saga name past the first ``MAX_SAGA_NAMES`` is
        ``"other"``, and a label no longer counted goes back to 0."""
        from surefoot.saga import SagaState

        totals: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {state.value: 0.0 for state in SagaState}
        for name, state, count, updated_at in counts:
            if name not in self._saga_names and len(self._saga_names) < MAX_SAGA_NAMES:
                self._saga_names.add(name)
            label = (state, name if name in self._saga_names else "other")
            totals[label] = totals.get(label, 0) + count
            oldest[state] = max(oldest.get(state, 0.0), max(0.0, now - updated_at))
        for label, total in totals.items():
            self._sagas(*label).set(total)
        for label in self._saga_labels - totals.keys():
            self._sagas(*label).set(0)
        self._saga_labels |= set(totals)
        for state, age in oldest.items():
            self._saga_oldest(state).set(age)


def _can_remove_series() -> bool:
    """Whether prometheus_client removes a series here (it warns and leaves it in the
    files when its multiprocess variable is set, as it checks)."""
    return not any(
        v in os.environ for v in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
    )


def _check_multiprocess(path: str, owner: str) -> None:
    if not os.path.isdir(path):
        raise ConfigurationError(
            f"{owner}.multiprocess_dir: expected an existing directory, got {path!r}"
        )
    env = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if env is None or not os.path.isdir(env) or not os.path.samefile(env, path):
        raise ConfigurationError(
            f"{owner}.multiprocess_dir: expected PROMETHEUS_MULTIPROC_DIR={path!r} in "
            f"the environment (prometheus_client writes where it says), got {env!r}"
        )
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigurationError(
            f"{owner}.multiprocess_dir: prometheus_client was imported before "
            "PROMETHEUS_MULTIPROC_DIR was set, so this process keeps its values in memory; "
            "set it in the worker processes' environment before they start"
        )


def clear_multiprocess_dir(path: str) -> None:
    """Make ``path`` an empty metrics directory: call it before the first worker starts.

    Values left by an earlier run would otherwise be added to the new ones.
    """
    os.makedirs(path, exist_ok=True)
    for file in glob.glob(os.path.join(path, "*.db")):
        os.remove(file)


def mark_worker_dead(pid: int, *, multiprocess_dir: str) -> None:
    """The supervisor's report that worker ``pid`` exited: its live gauges are dropped.

    Its counters and histograms stay in the sums (counters never go down).
    """
    mark_process_dead(pid, multiprocess_dir)  # type: ignore[no-untyped-call]
