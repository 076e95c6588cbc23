"""``InstrumentedStore``: a store seen through ``PrometheusMetrics.instrument_store``.

Each store call is timed and each failure counted; every other attribute is the wrapped
store's own. The protocol methods are defined only on the wrapper classes of stores that
have them, so that the ``runtime_checkable`` checks of ``IdempotencyStore`` and
``RateLimitStore`` give the wrapped store's answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter, Histogram

from surefoot.idempotency import IdempotencyStore
from surefoot.ratelimit import RateLimitStore

if TYPE_CHECKING:
    from surefoot.idempotency import Begin, Decision, Outcome, Record, State, StoredResponse
    from surefoot.ratelimit import Item, RateLimitDecision

__all__ = ["InstrumentedStore", "instrumented"]

T = TypeVar("T")

#: An operation's duration histogram and error counter (label children).
_Timer = tuple[Histogram, Counter]

_IDEMPOTENCY_OPERATIONS = ("begin", "finish", "resolve", "forget", "get", "records", "purge")
_RATE_LIMIT_OPERATIONS = ("acquire", "release")


def instrumented(store: object, timer: Callable[[str], _Timer]) -> InstrumentedStore:
    """Wrap ``store``; ``timer(operation)`` gives each operation's metrics."""
    idempotency = isinstance(store, IdempotencyStore)
    rate_limit = isinstance(store, RateLimitStore)
    cls = _WRAPPERS[idempotency, rate_limit]
    operations = (_IDEMPOTENCY_OPERATIONS if idempotency else ()) + (
        _RATE_LIMIT_OPERATIONS if rate_limit else ()
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
