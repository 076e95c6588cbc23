"""``GatewayMetrics``: the gateway's Prometheus metrics, fed by calls and by events.

The gateway reports three ways: its request loop calls ``observe_request``,
``observe_upstream`` and ``inflight``; the layers it composes emit events, which the
metrics instance receives as an ``EventHook`` (it *is* the hook); and its stores are
wrapped by ``instrument_store``, which times each call. ``render()`` gives the exposition
body and content type for ``GET /metrics``.

Metrics (every name carries the ``surefoot_`` prefix; durations are in seconds)::

    name{labels}                                               type       fed by
    surefoot_http_requests_total{route,method,status}          counter    observe_request
    surefoot_http_request_duration_seconds{route,method}       histogram  observe_request
    surefoot_inflight_requests                                 gauge      inflight
    surefoot_upstream_requests_total{outcome}                  counter    observe_upstream
    surefoot_upstream_duration_seconds                         histogram  observe_upstream
    surefoot_upstream_failures_total{reason}                   counter    UpstreamFailed
    surefoot_shed_total{priority}                              counter    RequestShed
    surefoot_config_reloads_total{result}                      counter    ConfigReloaded,
                                                                          ConfigRefused
    surefoot_ratelimit_decisions_total{policy,outcome}         counter    RateLimitAllowed,
                                                                          RateLimitRejected,
                                                                          RateLimitShadowRejected
    surefoot_ratelimit_store_errors_total{action,error}        counter    RateLimitStoreFailed
    surefoot_ratelimit_store_bypassed_total{action}            counter    RateLimitStoreBypassed
    surefoot_idempotency_executions_total                      counter    KeyReserved
    surefoot_idempotency_replays_total                         counter    ResponseReplayed
    surefoot_idempotency_conflicts_total                       counter    RequestInProgress
    surefoot_idempotency_mismatches_total                      counter    KeyReused
    surefoot_idempotency_unknown_total{reason}                 counter    OutcomeUnknown
    surefoot_idempotency_resolutions_total{how,result}         counter    OutcomeResolved
    surefoot_idempotency_unknown_age_seconds                   histogram  OutcomeResolved
    surefoot_idempotency_unknown_keys                          gauge      set_unknown_keys
    surefoot_idempotency_store_errors_total{phase,action,error}
                                                               counter    StoreFailed
    surefoot_idempotency_store_bypassed_total{phase,action}    counter    StoreBypassed
    surefoot_idempotency_unprotected_total{reason}             counter    ExecutedUnprotected
    surefoot_breaker_transitions_total{breaker,from_state,to_state}
                                                               counter    BreakerStateChanged
    surefoot_breaker_state{breaker,state}                      gauge      BreakerStateChanged,
                                                                          set_breaker_state
    surefoot_breaker_rejections_total{breaker}                 counter    CallNotPermitted
    surefoot_store_outages_total{layer}                        counter    StoreDown
    surefoot_store_operation_duration_seconds{store,operation} histogram  instrument_store
    surefoot_store_errors_total{store,operation}               counter    instrument_store

Label values:

- ``route``: the matched route template, or ``"other"``; ``method``: an HTTP method, or
  ``"other"``; ``status``: the status code sent.
- ``outcome`` of ``surefoot_upstream_requests_total``: a status class (``"2xx"``...),
  ``"connect_error"``, ``"timeout"`` or ``"reset"``.
- ``outcome`` of ``surefoot_ratelimit_decisions_total``: ``allowed`` (once per policy in
  ``RateLimitAllowed.policies``), ``rejected`` or ``shadow_rejected``.
- ``result`` of ``surefoot_config_reloads_total``: ``applied`` or ``refused``.
- ``state``: a ``BreakerState`` value (``closed``, ``open``, ``half_open``,
  ``forced_open``, ``disabled``); the gauge has one series per state, 1 for the current one.
- ``store``: the name given to ``instrument_store``; ``operation``: the store method
  (``begin``, ``finish``, ``resolve``, ``forget``, ``get``, ``records``, ``purge``,
  ``acquire``, ``release``).
- every other label is the event field of the same name (``error`` is an exception's
  class name, never its text).

Rule 1: every instance has its own ``CollectorRegistry``; nothing touches the global one,
        so tests and reloads may make as many instances as they like (but see Rule 4).
Rule 2: no label takes a raw path, a key, a principal or an error text: every label value
        comes from configuration (routes, policies, breakers, stores) or a short fixed
        set, so the number of series stays bounded.
Rule 3: the hot path builds no dict: label children are looked up by position in a cache
        made on first use, and ``wants`` says no to every event type that is not counted,
        so those events are never built.
Rule 4: with ``multiprocess_dir`` (several worker processes), each worker writes its
        values to files in that directory and ``render()`` adds up every worker's files.
        prometheus_client decides this when it is *imported*, from the environment
        variable ``PROMETHEUS_MULTIPROC_DIR``: the process that starts the workers sets it
        to the same directory (``clear_multiprocess_dir`` first) before they start, and
        ``GatewayMetrics`` refuses to start with a ``ConfigurationError`` otherwise.
        Make one instance per worker: two in one process would write the same file entries.
Rule 5: in multiprocess mode, counters and histograms are summed over workers, including
        workers that have exited; gauges are: ``surefoot_inflight_requests`` the sum over
        live workers, ``surefoot_breaker_state`` how many live workers see each breaker in
        each state (each worker has its own breaker), ``surefoot_idempotency_unknown_keys``
        the most recent report. "Live" needs the supervisor to call ``mark_worker_dead``
        when a worker exits.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

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

from surefoot.client._breaker import BreakerState, BreakerStateChanged, CallNotPermitted
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.gateway._events import (
    ConfigRefused,
    ConfigReloaded,
    OutcomeResolved,
    RequestShed,
    UpstreamFailed,
)
from surefoot.idempotency._events import (
    ExecutedUnprotected,
    KeyReserved,
    KeyReused,
    OutcomeUnknown,
    RequestInProgress,
    ResponseReplayed,
    StoreBypassed,
    StoreFailed,
)
from surefoot.ratelimit._events import (
    RateLimitAllowed,
    RateLimitRejected,
    RateLimitShadowRejected,
    RateLimitStoreBypassed,
    RateLimitStoreFailed,
)
from surefoot.storage._health import StoreDown
from surefoot.storage._protocol import IdempotencyStore, RateLimitStore

if TYPE_CHECKING:
    from surefoot.idempotency._core import (
        Begin,
        Decision,
        Outcome,
        Record,
        State,
        StoredResponse,
    )
    from surefoot.ratelimit._algorithms import RateLimitDecision
    from surefoot.ratelimit._core import Item

__all__ = [
    "GatewayMetrics",
    "InstrumentedStore",
    "clear_multiprocess_dir",
    "mark_worker_dead",
]

T = TypeVar("T")
M = TypeVar("M", bound=MetricWrapperBase)

#: A proxy's requests: from a cached answer (1 ms) to a slow upstream (30 s).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: A store call: from an in-memory step (0.1 ms) to a timeout (5 s).
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1, 2.5, 5)  # fmt: skip
#: How long an outcome stayed unknown: from a quick retry (1 s) to a week.
UNKNOWN_AGE_BUCKETS = (1, 5, 30, 60, 300, 900, 3600, 14400, 86400, 604800)

_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_BREAKER_STATES = tuple(state.value for state in BreakerState)
_IDEMPOTENCY_OPERATIONS = ("begin", "finish", "resolve", "forget", "get", "records", "purge")
_RATE_LIMIT_OPERATIONS = ("acquire", "release")


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


class GatewayMetrics:
    """The gateway's metrics, and the event hook that counts what its layers decide.

    Example:
        >>> metrics = GatewayMetrics()
        >>> app = RateLimitMiddleware(app, store=store, policies=policies,
        ...                           hooks=[LoggingHook(), metrics])
        >>> metrics.observe_request(route="/orders/{id}", method="GET", status=200,
        ...                         seconds=0.012)
        >>> body, content_type = metrics.render()

    Args:
        multiprocess_dir: the directory the gateway's worker processes share their
            values through (``None``: one process).

    Raises:
        ConfigurationError: ``multiprocess_dir`` is given but is not a directory, or
            ``PROMETHEUS_MULTIPROC_DIR`` did not name it when prometheus_client was imported.

    Warning:
        In multiprocess mode, set ``PROMETHEUS_MULTIPROC_DIR`` to ``multiprocess_dir`` in
        the workers' environment before they start (prometheus_client reads it at import),
        wipe the directory before the first worker starts (``clear_multiprocess_dir``:
        old files would be added to the new counts) and make one instance per worker.
    """

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is not None:
            _check_multiprocess(multiprocess_dir)
        self.multiprocess_dir = multiprocess_dir
        registry = self._registry = CollectorRegistry()
        if multiprocess_dir is None:
            self._exposed = registry
        else:
            # The workers' values live in files: expose their sum, not this process's own.
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=multiprocess_dir)  # type: ignore[no-untyped-call]

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        # -- the request loop ----------------------------------------------------------
        self._requests = _Children(
            counter(
                "surefoot_http_requests_total",
                "Requests answered by the gateway.",
                ("route", "method", "status"),
            )
        )
        self._request_seconds = _Children(
            Histogram(
                "surefoot_http_request_duration_seconds",
                "Time from a request's arrival to the end of its response.",
                ("route", "method"),
                buckets=REQUEST_BUCKETS,
                registry=registry,
            )
        )
        self._inflight = Gauge(
            "surefoot_inflight_requests",
            "Requests the gateway is handling now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._upstream = _Children(
            counter(
                "surefoot_upstream_requests_total",
                "Requests forwarded upstream, by outcome (status class or failure).",
                ("outcome",),
            )
        )
        self._upstream_seconds = Histogram(
            "surefoot_upstream_duration_seconds",
            "Time the upstream took to answer a forwarded request (or to fail).",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        # -- events of the gateway -----------------------------------------------------
        self._upstream_failures = _Children(
            counter(
                "surefoot_upstream_failures_total",
                "Forwarded requests the upstream did not answer properly.",
                ("reason",),
            )
        )
        self._shed = _Children(
            counter(
                "surefoot_shed_total",
                "Requests refused with 503 at the upstream's concurrency limit.",
                ("priority",),
            )
        )
        self._reloads = _Children(
            counter(
                "surefoot_config_reloads_total",
                "Configuration reloads, applied or refused.",
                ("result",),
            )
        )
        # -- rate limits -----------------------------------------------------------------
        self._decisions = _Children(
            counter(
                "surefoot_ratelimit_decisions_total",
                "Rate-limit decisions, one per policy that covered the request.",
                ("policy", "outcome"),
            )
        )
        self._ratelimit_store_errors = _Children(
            counter(
                "surefoot_ratelimit_store_errors_total",
                "Requests whose rate-limit store call failed, by what their policies chose.",
                ("action", "error"),
            )
        )
        self._ratelimit_store_bypassed = _Children(
            counter(
                "surefoot_ratelimit_store_bypassed_total",
                "Requests decided without the rate-limit store while it was down.",
                ("action",),
            )
        )
        # -- idempotency -------------------------------------------------------------------
        self._executions = counter(
            "surefoot_idempotency_executions_total", "Idempotent requests that executed."
        )
        self._replays = counter(
            "surefoot_idempotency_replays_total", "Duplicates answered with the stored response."
        )
        self._conflicts = counter(
            "surefoot_idempotency_conflicts_total",
            "Duplicates that arrived while the original was executing.",
        )
        self._mismatches = counter(
            "surefoot_idempotency_mismatches_total",
            "Keys reused with a different request (422).",
        )
        self._unknown = _Children(
            counter(
                "surefoot_idempotency_unknown_total",
                "Keys whose outcome became unknown.",
                ("reason",),
            )
        )
        self._resolutions = _Children(
            counter(
                "surefoot_idempotency_resolutions_total",
                "Unknown outcomes settled, by how and with what result.",
                ("how", "result"),
            )
        )
        self._unknown_age = Histogram(
            "surefoot_idempotency_unknown_age_seconds",
            "How long an outcome had been unknown when it was settled.",
            buckets=UNKNOWN_AGE_BUCKETS,
            registry=registry,
        )
        self._unknown_keys = Gauge(
            "surefoot_idempotency_unknown_keys",
            "Keys whose outcome is unknown, as last counted by the reconciler.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self._idempotency_store_errors = _Children(
            counter(
                "surefoot_idempotency_store_errors_total",
                "Requests whose idempotency store call failed, by phase and what followed.",
                ("phase", "action", "error"),
            )
        )
        self._idempotency_store_bypassed = _Children(
            counter(
                "surefoot_idempotency_store_bypassed_total",
                "Requests that skipped the idempotency store while it was down.",
                ("phase", "action"),
            )
        )
        self._unprotected = _Children(
            counter(
                "surefoot_idempotency_unprotected_total",
                "Requests executed without idempotency protection (the store was down).",
                ("reason",),
            )
        )
        # -- circuit breakers and stores -------------------------------------------------
        self._transitions = _Children(
            counter(
                "surefoot_breaker_transitions_total",
                "Circuit breaker state changes.",
                ("breaker", "from_state", "to_state"),
            )
        )
        self._breaker_state = _Children(
            Gauge(
                "surefoot_breaker_state",
                "1 for a circuit breaker's current state, 0 for the others.",
                ("breaker", "state"),
                registry=registry,
                multiprocess_mode="livesum",
            )
        )
        self._rejections = _Children(
            counter(
                "surefoot_breaker_rejections_total",
                "Calls refused because the circuit breaker was open.",
                ("breaker",),
            )
        )
        self._outages = _Children(
            counter("surefoot_store_outages_total", "Store outages that began.", ("layer",))
        )
        self._store_seconds = Histogram(
            "surefoot_store_operation_duration_seconds",
            "Time a store call took (failed calls included).",
            ("store", "operation"),
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self._store_errors = counter(
            "surefoot_store_errors_total",
            "Store calls that raised.",
            ("store", "operation"),
        )
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
            OutcomeResolved: self._on_resolved,
            BreakerStateChanged: self._on_breaker_changed,
            CallNotPermitted: self._on_not_permitted,
            StoreDown: self._on_store_down,
            UpstreamFailed: self._on_upstream_failed,
            RequestShed: self._on_shed,
            ConfigReloaded: self._on_reloaded,
            ConfigRefused: self._on_refused,
        }

    # -- the request loop ------------------------------------------------------------------

    def observe_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration.

        ``route`` must be the matched route template or ``"other"``, never the raw path.
        """
        if method not in _METHODS:
            method = "other"
        self._requests(route, method, status).inc()
        self._request_seconds(route, method).observe(seconds)

    def observe_upstream(self, *, outcome: str, seconds: float) -> None:
        """Count one forwarded request: ``outcome`` is ``"2xx"``... or a failure's name."""
        self._upstream(outcome).inc()
        self._upstream_seconds.observe(seconds)

    def inflight(self, delta: int) -> None:
        """Requests started (``+1``) or finished (``-1``)."""
        self._inflight.inc(delta)

    def set_unknown_keys(self, count: int) -> None:
        """The reconciler's latest count of keys whose outcome is unknown."""
        self._unknown_keys.set(count)

    def set_breaker_state(self, breaker: str, state: str | BreakerState) -> None:
        """Record ``breaker``'s current state (at start; transitions then come as events).

        Raises:
            ValueError: ``state`` is not a ``BreakerState`` value.
        """
        value = state.value if isinstance(state, BreakerState) else state
        if value not in _BREAKER_STATES:
            raise ValueError(f"breaker state: expected one of {_BREAKER_STATES}, got {state!r}")
        for known in _BREAKER_STATES:
            self._breaker_state(breaker, known).set(1.0 if known == value else 0.0)

    # -- the event hook -------------------------------------------------------------------

    def wants(self, event_type: type[Event]) -> bool:
        """True for the event types counted here (exact types, not subclasses)."""
        return event_type in self._handlers

    def __call__(self, event: Event, /) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
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

    def _on_resolved(self, event: OutcomeResolved) -> None:
        self._resolutions(event.how, event.result).inc()
        self._unknown_age.observe(event.age)

    def _on_breaker_changed(self, event: BreakerStateChanged) -> None:
        self._transitions(event.breaker, event.from_state, event.to_state).inc()
        self.set_breaker_state(event.breaker, event.to_state)

    def _on_not_permitted(self, event: CallNotPermitted) -> None:
        self._rejections(event.breaker).inc()

    def _on_store_down(self, event: StoreDown) -> None:
        self._outages(event.layer).inc()

    def _on_upstream_failed(self, event: UpstreamFailed) -> None:
        self._upstream_failures(event.reason).inc()

    def _on_shed(self, event: RequestShed) -> None:
        self._shed(event.priority).inc()

    def _on_reloaded(self, event: ConfigReloaded) -> None:
        self._reloads("applied").inc()

    def _on_refused(self, event: ConfigRefused) -> None:
        self._reloads("refused").inc()

    # -- stores and exposition -------------------------------------------------------------

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
        idempotency = isinstance(store, IdempotencyStore)
        rate_limit = isinstance(store, RateLimitStore)
        cls = _WRAPPERS[idempotency, rate_limit]
        operations = (_IDEMPOTENCY_OPERATIONS if idempotency else ()) + (
            _RATE_LIMIT_OPERATIONS if rate_limit else ()
        )
        timers = {
            operation: (
                self._store_seconds.labels(name, operation),
                self._store_errors.labels(name, operation),
            )
            for operation in operations
        }
        return cls(store, timers)

    def render(self) -> tuple[bytes, str]:
        """The exposition body (every worker's sum in multiprocess mode) and its content type."""
        return generate_latest(self._exposed), CONTENT_TYPE_LATEST

    def __repr__(self) -> str:
        if self.multiprocess_dir is None:
            return "GatewayMetrics()"
        return f"GatewayMetrics(multiprocess_dir={self.multiprocess_dir!r})"


def _check_multiprocess(path: str) -> None:
    if not os.path.isdir(path):
        raise ConfigurationError(
            f"GatewayMetrics.multiprocess_dir: expected an existing directory, got {path!r}"
        )
    env = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if env is None or not os.path.isdir(env) or not os.path.samefile(env, path):
        raise ConfigurationError(
            f"GatewayMetrics.multiprocess_dir: expected PROMETHEUS_MULTIPROC_DIR={path!r} in "
            f"the environment (prometheus_client writes where it says), got {env!r}"
        )
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigurationError(
            "GatewayMetrics.multiprocess_dir: prometheus_client was imported before "
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


# -- the store wrapper ---------------------------------------------------------------------

_Timers = dict[str, tuple[Histogram, Counter]]


class InstrumentedStore:
    """A store seen through ``GatewayMetrics.instrument_store``.

    Every attribute the wrapper does not time (``timeout``, ``open``, ``cache_get``...) is
    the wrapped store's own. ``aclose`` is forwarded untimed.
    """

    def __init__(self, store: object, timers: _Timers) -> None:
        self._store: Any = store
        self._timers = timers

    @property
    def wrapped(self) -> object:
        """The store behind the wrapper."""
        return self._store

    def __getattr__(self, name: str) -> Any:
        if name in ("_store", "_timers"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._store, name)

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        seconds, errors = self._timers[operation]
        start = time.perf_counter()
        try:
            result = await call
        except Exception:
            seconds.observe(time.perf_counter() - start)
            errors.inc()
            raise
        seconds.observe(time.perf_counter() - start)
        return result

    def __repr__(self) -> str:
        return f"InstrumentedStore({self._store!r})"


# The protocol methods are defined only on the wrapper classes of stores that have them,
# so that runtime_checkable isinstance checks give the wrapped store's answer.


class _InstrumentedIdempotencyStore(InstrumentedStore):
    async def begin(self, key: str, request: Begin, now: float) -> Decision:
        return await self._timed("begin", self._store.begin(key, request, now))

    async def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        return await self._timed("finish", self._store.finish(key, token, outcome, now))

    async def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        return await self._timed("resolve", self._store.resolve(key, response, now))

    async def forget(self, key: str, now: float) -> bool:
        return await self._timed("forget", self._store.forget(key, now))

    async def get(self, key: str, now: float) -> Record | None:
        return await self._timed("get", self._store.get(key, now))

    async def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        return await self._timed("records", self._store.records(now, state=state, limit=limit))

    async def purge(self, now: float, *, limit: int = 500) -> int:
        return await self._timed("purge", self._store.purge(now, limit=limit))

    async def aclose(self) -> None:
        await self._store.aclose()


class _InstrumentedRateLimitStore(InstrumentedStore):
    @property
    def rate_limit_algorithms(self) -> frozenset[str]:
        algorithms: frozenset[str] = self._store.rate_limit_algorithms
        return algorithms

    @rate_limit_algorithms.setter
    def rate_limit_algorithms(self, algorithms: frozenset[str]) -> None:
        self._store.rate_limit_algorithms = algorithms

    async def acquire(
        self, items: Sequence[Item], now: float
    ) -> tuple[bool, list[RateLimitDecision]]:
        return await self._timed("acquire", self._store.acquire(items, now))

    async def release(self, key: str, token: str, now: float) -> None:
        await self._timed("release", self._store.release(key, token, now))

    async def aclose(self) -> None:
        await self._store.aclose()


class _InstrumentedFullStore(_InstrumentedIdempotencyStore, _InstrumentedRateLimitStore):
    pass


#: (is an IdempotencyStore, is a RateLimitStore) -> the wrapper class.
_WRAPPERS: dict[tuple[bool, bool], type[InstrumentedStore]] = {
    (False, False): InstrumentedStore,
    (True, False): _InstrumentedIdempotencyStore,
    (False, True): _InstrumentedRateLimitStore,
    (True, True): _InstrumentedFullStore,
}
