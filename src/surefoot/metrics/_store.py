"""``InstrumentedStore``: a store seen through ``PrometheusMetrics.instrument_store``.

Each store call is timed and each failure counted; every other attribute is the wrapped
store's own. The protocol methods come from ``surefoot.storage``'s wrapper halves
(``IdempotencyStoreWrapper``, ``RateLimitStoreWrapper``), mixed only into the wrapper classes
of stores that have them, so that the ``runtime_checkable`` checks of ``IdempotencyStore`` and
``RateLimitStore`` give the wrapped store's answer; ``around`` times each call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram

from surefoot.idempotency import IdempotencyStore
from surefoot.ratelimit import RateLimitStore
from surefoot.storage import IdempotencyStoreWrapper, RateLimitStoreWrapper

__all__ = ["InstrumentedStore", "instrumented"]

T = TypeVar("T")

#: An operation's duration histogram and error counter (label children).
_Timer = tuple[Histogram, Counter]


def instrumented(store: object, timer: Callable[[str], _Timer]) -> InstrumentedStore:
    """Wrap ``store``; ``timer(operation)`` gives each operation's metrics."""
    idempotency = isinstance(store, IdempotencyStore)
    rate_limit = isinstance(store, RateLimitStore)
    cls = _WRAPPERS[idempotency, rate_limit]
    operations = (IdempotencyStoreWrapper.OPERATIONS if idempotency else ()) + (
        RateLimitStoreWrapper.OPERATIONS if rate_limit else ()
    )
    # Made now, so that every series exists (at 0) before the first call.
    return cls(store, {operation: timer(operation) for operation in operations})


class InstrumentedStore:
    """A store seen through ``PrometheusMetrics.instrument_store``.

    Every attribute the wrapper does not time (``timeout``, ``open``, ``cache_get``...) is
    the wrapped store's own. ``aclose`` is forwarded untimed.
    """

    def __init__(self, store: object, timers: dict[str, _Timer]) -> None:
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

    async def around(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()``, timing it and counting its failure."""
        seconds, errors = self._timers[operation]
        start = time.perf_counter()
        try:
            result = await call()
        except Exception:
            seconds.observe(time.perf_counter() - start)
            errors.inc()
            raise
        seconds.observe(time.perf_counter() - start)
        return result

    def __repr__(self) -> str:
        return f"InstrumentedStore({self._store!r})"


class _InstrumentedIdempotencyStore(InstrumentedStore, IdempotencyStoreWrapper):
    pass


class _InstrumentedRateLimitStore(InstrumentedStore, RateLimitStoreWrapper):
    pass


class _InstrumentedFullStore(InstrumentedStore, IdempotencyStoreWrapper, RateLimitStoreWrapper):
    pass


#: (is an IdempotencyStore, is a RateLimitStore) -> the wrapper class.
_WRAPPERS: dict[tuple[bool, bool], type[InstrumentedStore]] = {
    (False, False): InstrumentedStore,
    (True, False): _InstrumentedIdempotencyStore,
    (False, True): _InstrumentedRateLimitStore,
    (True, True): _InstrumentedFullStore,
}
