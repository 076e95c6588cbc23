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

import importlib
import importlib.util
from typing import TYPE_CHECKING

from surefoot.metrics._specs import GROUPS, METRICS, MetricSpec, metrics_markdown

if TYPE_CHECKING:
    from surefoot.metrics._prometheus import (
        PrometheusMetrics,
        clear_multiprocess_dir,
        mark_worker_dead,
    )
    from surefoot.metrics._store import InstrumentedStore

__all__ = [
    "GROUPS",
    "METRICS",
    "InstrumentedStore",
    "MetricSpec",
    "PrometheusMetrics",
    "clear_multiprocess_dir",
    "mark_worker_dead",
    "metrics_markdown",
]

#: The names that need prometheus_client, and the private module of each.
_NEED_PROMETHEUS = {
    "InstrumentedStore": "surefoot.metrics._store",
    "PrometheusMetrics": "surefoot.metrics._prometheus",
    "clear_multiprocess_dir": "surefoot.metrics._prometheus",
    "mark_worker_dead": "surefoot.metrics._prometheus",
}


def __getattr__(name: str) -> object:
    module = _NEED_PROMETHEUS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if importlib.util.find_spec("prometheus_client") is None:
        # One line naming the extra, not the first import that fails.
        raise ImportError(
            f"surefoot.metrics.{name} needs the 'metrics' extra: pip install 'surefoot[metrics]'"
        )
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
