"""Prometheus metrics for surefoot's middlewares, stores, circuit breakers and gateway.

``PrometheusMetrics`` is an event hook: give it to ``IdempotencyMiddleware``,
``RateLimitMiddleware`` or a ``CircuitBreaker`` (``hooks=[metrics]``) and it counts what
they decide; ``instrument_store`` times a store's calls; ``render()`` answers
``GET /metrics``. Every metric is described once, in the table ``METRICS`` of
``MetricSpec`` values, from which the metrics are made and ``docs/metrics.md`` is
generated (``surefoot metrics --markdown``). See ``docs/metrics.md``.

The table needs nothing more than surefoot; ``PrometheusMetrics`` and its helpers need
the ``metrics`` extra (``prometheus_client``), and importing them without it fails with
one line that names it.

Errors raised (``surefoot.errors``)::

    ConfigurationError   multiprocess mode asked for in a process not set up for it
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.metrics._alert import Alert, Labels, labels_of
from surefoot.metrics._board import BoardStore
from surefoot.metrics._notify import (
    Dispatcher,
    Matcher,
    Notification,
    Route,
    Silence,
    silenced_by,
    slack_payload,
)
from surefoot.metrics._rules import (
    Condition,
    CountsAbove,
    Evaluator,
    GaugeAbove,
    LabelMatcher,
    RateAbove,
    Ratio,
    RuleSpec,
    Samples,
    Series,
    Spike,
    promql_duration,
    render,
)
from surefoot.metrics._specs import GROUPS, METRICS, MetricSpec, metrics_markdown
from surefoot.metrics._topk import Counted, SpaceSaving, merge
from surefoot.metrics._uncounted import counted, uncounted

if TYPE_CHECKING:
    from surefoot.metrics._prometheus import (
        PrometheusMetrics,
        clear_multiprocess_dir,
        mark_worker_dead,
    )
    from surefoot.metrics._store import InstrumentedStore
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.metrics._prometheus": (
                "PrometheusMetrics",
                "clear_multiprocess_dir",
                "mark_worker_dead",
            ),
            "surefoot.metrics._store": ("InstrumentedStore",),
        },
        extra=("prometheus_client", "metrics"),
    )

__all__ = [
    "GROUPS",
    "METRICS",
    "Alert",
    "BoardStore",
    "Condition",
    "Counted",
    "CountsAbove",
    "Dispatcher",
    "Evaluator",
    "GaugeAbove",
    "InstrumentedStore",
    "LabelMatcher",
    "Labels",
    "Matcher",
    "MetricSpec",
    "Notification",
    "PrometheusMetrics",
    "RateAbove",
    "Ratio",
    "Route",
    "RuleSpec",
    "Samples",
    "Series",
    "Silence",
    "SpaceSaving",
    "Spike",
    "clear_multiprocess_dir",
    "counted",
    "labels_of",
    "mark_worker_dead",
    "merge",
    "promql_duration",
    "render",
    "metrics_markdown",
    "silenced_by",
    "slack_payload",
    "uncounted",
]
