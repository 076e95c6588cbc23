"""``GatewayMetrics``: ``PrometheusMetrics`` plus the gateway's own metrics and events.

Every metric is described once, in ``surefoot.metrics.METRICS``; the gateway's own are
its ``gateway`` group (see ``docs/metrics.md``). On top of ``PrometheusMetrics``, the
request loop calls ``observe_upstream``, and the hook counts the gateway's events
(``UpstreamFailed``, ``RequestShed``, ``ConfigReloaded``, ``ConfigRefused``,
``OutcomeResolved``). ``surefoot serve``'s supervisor shares its workers' values through a
fresh directory (``tempfile.mkdtemp``, so there is nothing to clear) and calls
``surefoot.metrics.mark_worker_dead`` for each worker that exits (``_serve.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from surefoot.abuse import (
    AbuseRefused,
    AnomalyStarted,
    EntryAdded,
    EntryRemoved,
    FailuresCrossed,
)
from surefoot.contracts import DeprecatedCalled, VersionPinned
from surefoot.gateway._events import (
    ConfigRefused,
    ConfigReloaded,
    OutcomeResolved,
    RequestShed,
    UpstreamFailed,
)
from surefoot.metrics import METRICS, PrometheusMetrics, counted

__all__ = ["GatewayMetrics"]

_TOP = next(spec for spec in METRICS if spec.name == "surefoot_top_requests")


class GatewayMetrics(PrometheusMetrics):
    """The gateway's metrics, and the event hook that counts what its layers decide.

    Example:
        >>> metrics = GatewayMetrics()
        >>> metrics.observe_request(route="/orders/{id}", method="GET", status=200,
        ...                         seconds=0.012)
        >>> metrics.observe_upstream(outcome="2xx", seconds=0.01)
        >>> body, content_type = metrics.render()

    Args and errors are ``PrometheusMetrics``'s.
    """

    groups: ClassVar[frozenset[str]] = PrometheusMetrics.groups | {"gateway"}

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        super().__init__(registry=registry, multiprocess_dir=multiprocess_dir)
        self._upstream = self._children("surefoot_upstream_requests_total", Counter)
        self._upstream_seconds = self._metric("surefoot_upstream_duration_seconds", Histogram)
        self._upstream_failures = self._children("surefoot_upstream_failures_total", Counter)
        self._shed = self._children("surefoot_shed_total", Counter)
        self._reloads = self._children("surefoot_config_reloads_total", Counter)
        self._resolutions = self._children("surefoot_idempotency_resolutions_total", Counter)
        self._unknown_age = self._metric("surefoot_idempotency_unknown_age_seconds", Histogram)
        # In one process the in-flight gauge reads this count when scraped, so a request
        # updates no gauge; workers share their values through files, updated as they go.
        self._in_flight = 0
        if multiprocess_dir is None:
            self._inflight.set_function(lambda: self._in_flight)
        self._abuse_refused = self._children("surefoot_abuse_refused_total", Counter)
        self._abuse_added = self._children("surefoot_abuse_entries_added_total", Counter)
        self._abuse_removed = self._children("surefoot_abuse_entries_removed_total", Counter)
        self._abuse_thresholds = self._children("surefoot_abuse_thresholds_total", Counter)
        self._anomalies = self._metric("surefoot_abuse_anomalies_total", Counter)
        self._anomalous = self._metric("surefoot_abuse_anomalous_clients", Gauge)
        self._abuse_entries = self._children("surefoot_abuse_entries", Gauge)
        self._deprecated = self._children("surefoot_deprecated_requests_total", Counter)
        self._pins = self._children("surefoot_version_pins_total", Counter)
        self._top = _TopCollector()
        self._exposed.register(self._top)
        self._handlers.update(
            {
                UpstreamFailed: self._on_upstream_failed,
                RequestShed: self._on_shed,
                ConfigReloaded: self._on_reloaded,
                ConfigRefused: self._on_refused,
                OutcomeResolved: self._on_resolved,
                AbuseRefused: lambda e: self._abuse_refused(e.action).inc(),
                EntryAdded: lambda e: self._abuse_added(e.action, e.source).inc(),
                EntryRemoved: lambda e: self._abuse_removed(e.action).inc(),
                FailuresCrossed: lambda e: self._abuse_thresholds(e.rule, e.step).inc(),
                AnomalyStarted: lambda e: self._anomalies.inc(),
                DeprecatedCalled: lambda e: self._deprecated(
                    e.route, e.client or "other", e.phase
                ).inc(),
                VersionPinned: lambda e: self._pins(e.version).inc(),
            }
        )

    def set_top(self, rows: Sequence[tuple[tuple[str, str, str, str, str], float]]) -> None:
        """Set the top lists whole: ``((list, policy, item, client, window), count)`` rows; the
        rows of the last call are forgotten (a collector of this process, not a file
        of the workers': each worker answers with what it read from the store)."""
        self._top.rows = tuple(rows)

    def set_abuse_entries(self, counts: Mapping[tuple[str, str], int]) -> None:
        """The entries in force per (action, kind); a pair missing from ``counts`` is 0."""
        for action in ("ban", "allow", "limit", "challenge"):
            for kind in ("address", "network", "principal", "account"):
                self._abuse_entries(action, kind).set(counts.get((action, kind), 0))

    def set_anomalous(self, count: int) -> None:
        """How many clients this worker sees in anomaly now."""
        self._anomalous.set(count)

    def collect(self) -> Iterable[Metric]:
        """Every exposed metric now (every worker's sum in multiprocess mode)."""
        return self._exposed.collect()

    def inflight(self, delta: int) -> None:
        """Requests started (``+1``) or finished (``-1``)."""
        if self.multiprocess_dir is None:
            if counted():
                self._in_flight += delta
        else:
            super().inflight(delta)

    def observe_upstream(self, *, outcome: str, seconds: float) -> None:
        """Count one forwarded request: ``outcome`` is ``"2xx"``... or a failure's name."""
        if not counted():
            return
        self._upstream(outcome).inc()
        self._upstream_seconds.observe(seconds)

    def _on_upstream_failed(self, event: UpstreamFailed) -> None:
        self._upstream_failures(event.reason).inc()

    def _on_shed(self, event: RequestShed) -> None:
        self._shed(event.priority).inc()

    def _on_reloaded(self, event: ConfigReloaded) -> None:
        self._reloads("applied").inc()

    def _on_refused(self, event: ConfigRefused) -> None:
        self._reloads("refused").inc()

    def _on_resolved(self, event: OutcomeResolved) -> None:
        self._resolutions(event.how, event.result).inc()
        self._unknown_age.observe(event.age)


class _TopCollector:
    """``surefoot_top_requests``, from the rows ``set_top`` last gave."""

    def __init__(self) -> None:
        self.rows: tuple[tuple[tuple[str, str, str, str, str], float], ...] = ()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(_TOP.name, _TOP.help, labels=_TOP.labels)
        for labels, value in self.rows:
            family.add_metric(labels, value)
        yield family
