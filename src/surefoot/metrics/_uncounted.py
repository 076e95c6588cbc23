"""Traffic the metrics leave out: test requests ("do not pollute your metrics with test
traffic"). Inside ``uncounted()``, ``PrometheusMetrics`` ignores the events it would count
and the observations made for the request; the gateway enters it for a request carrying
``[server] test_traffic_header`` from an address of ``test_traffic_from``.

Rule 1: the mark is a context variable, so it follows the request's task and the tasks it
        starts, and never another request served by the same connection after it.
Rule 2: only what describes traffic is left out (requests, decisions, replays, upstream
        calls): a store's operation metrics still count a test request's operations,
        which load the store like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["counted", "uncounted"]

_UNCOUNTED: ContextVar[bool] = ContextVar("surefoot_uncounted", default=False)


@contextlib.contextmanager
def uncounted() -> Iterator[None]:
    """Leave what happens inside out of the metrics (test traffic)."""
    token = _UNCOUNTED.set(True)
    try:
        yield
    finally:
        _UNCOUNTED.reset(token)


def counted() -> bool:
    """False inside ``uncounted()``."""
    return not _UNCOUNTED.get()
