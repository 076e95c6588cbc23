"""``InstrumentedStore``: a store seen through ``PrometheusMetrics.instrument_store``.

Each store call is timed and each failure counted; every other attribute is the wrapped
store's own. The protocol methods come from ``surefoot.storage``'s wrapper parts
(``IdempotencyStoreWrapper``, ``RateLimitStoreWrapper``, ``OrderingStoreWrapper``), mixed only
into the wrapper classes of stores that have them, so that the ``runtime_checkable`` checks of
``IdempotencyStore``, ``RateLimitStore`` and ``surefoot.webhooks``' ``OrderingStore`` give the
wrapped store's answer; ``around`` times each call.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram

from surefoot.idempotency import IdempotencyStore
from surefoot.ratelimit import RateLimitStore
from surefoot.storage import (
    IdempotencyStoreWrapper,
    OrderingStoreWrapper,
    RateLimitStoreWrapper,
)
from surefoot.webhooks import OrderingStore

__all__ = ["InstrumentedStore", "instrumented"]

T = TypeVar("T")

#: An operation's duration histogram and error counter (label children).
_Timer = tuple[Histogram, Counter]


def instrumented(store: object, timer: Callable[[str], _Timer]) -> InstrumentedStore:
    """Wrap ``store``; ``timer(operation)`` gives each operation's metrics."""
    parts = tuple(part for part, protocol in _PARTS if isinstance(store, protocol))
    cls = _wrapper_class(parts)
    operations = tuple(operation for part in parts for operation in part.OPERATIONS)
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


_Part = type[IdempotencyStoreWrapper] | type[RateLimitStoreWrapper] | type[OrderingStoreWrapper]

#: Each wrapper part, and the protocol a store has when the part's methods apply to it.
_PARTS: tuple[tuple[_Part, type], ...] = (
    (IdempotencyStoreWrapper, IdempotencyStore),
    (RateLimitStoreWrapper, RateLimitStore),
    (OrderingStoreWrapper, OrderingStore),
)


@functools.cache
def _wrapper_class(parts: tuple[_Part, ...]) -> type[InstrumentedStore]:
    """The wrapper class of a store that is the protocols of ``parts``, made once."""
    if not parts:
        return InstrumentedStore
    name = "_Instrumented" + "".join(part.__name__.removesuffix("Wrapper") for part in parts)
    return type(name, (InstrumentedStore, *parts), {})
