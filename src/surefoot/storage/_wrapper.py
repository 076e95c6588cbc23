"""Store wrappers: a store that wraps another and passes each of its calls through one hook.

``StoreWrapper`` is a ``Store`` built on another: each method of ``IdempotencyStore``,
``RateLimitStore`` and ``OrderingStore`` (``surefoot.webhooks``) forwards to the wrapped store
through ``around(operation, call)``, the one method a subclass overrides to time, count, trace
or fail the calls (``surefoot.metrics``'s ``InstrumentedStore`` and ``surefoot.testing``'s
``FlakyStore`` are such subclasses). Its parts, ``IdempotencyStoreWrapper``,
``RateLimitStoreWrapper`` and ``OrderingStoreWrapper``, serve a wrapper that must be an
``IdempotencyStore``, a ``RateLimitStore`` or an ``OrderingStore`` exactly when its store is:
the protocols are ``runtime_checkable``, so what a wrapper passes is decided by which methods
its class has.

Rule 1: ``operation`` is the store method's name (a part's ``OPERATIONS``); ``call()`` makes
the wrapped store's call, so a hook that refuses a call never starts it.
Rule 2: ``aclose`` and ``rate_limit_algorithms`` go to the wrapped store without the hook.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from surefoot.idempotency import Begin, Decision, Outcome, Record, State, StoredResponse
    from surefoot.ratelimit import Item, RateLimitDecision
    from surefoot.webhooks import Claim, OrderRecord

__all__ = [
    "IdempotencyStoreWrapper",
    "OrderingStoreWrapper",
    "RateLimitStoreWrapper",
    "StoreWrapper",
]

T = TypeVar("T")


class _Wrapper:
    """What both halves share: the wrapped store and the hook."""

    def __init__(self, store: Any) -> None:
        self._store: Any = store

    @property
    def wrapped(self) -> Any:
        """The store behind the wrapper."""
        return self._store

    async def around(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()``, the wrapped store's ``operation``; here, as it is."""
        return await call()

    async def aclose(self) -> None:
        await self._store.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r})"


class IdempotencyStoreWrapper(_Wrapper):
    """An ``IdempotencyStore`` whose calls go to another through ``around``."""

    OPERATIONS: ClassVar[tuple[str, ...]] = (
        "begin",
        "finish",
        "resolve",
        "forget",
        "get",
        "records",
        "purge",
    )

    async def begin(self, key: str, request: Begin, now: float) -> Decision:
        return await self.around("begin", lambda: self._store.begin(key, request, now))

    async def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        return await self.around("finish", lambda: self._store.finish(key, token, outcome, now))

    async def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        return await self.around("resolve", lambda: self._store.resolve(key, response, now))

    async def forget(self, key: str, now: float) -> bool:
        return await self.around("forget", lambda: self._store.forget(key, now))

    async def get(self, key: str, now: float) -> Record | None:
        return await self.around("get", lambda: self._store.get(key, now))

    async def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        return await self.around(
            "records", lambda: self._store.records(now, state=state, limit=limit)
        )

    async def purge(self, now: float, *, limit: int = 500) -> int:
        return await self.around("purge", lambda: self._store.purge(now, limit=limit))


class RateLimitStoreWrapper(_Wrapper):
    """A ``RateLimitStore`` whose calls go to another through ``around``."""

    OPERATIONS: ClassVar[tuple[str, ...]] = ("acquire", "release")

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
        return await self.around("acquire", lambda: self._store.acquire(items, now))

    async def release(self, key: str, token: str, now: float) -> None:
        await self.around("release", lambda: self._store.release(key, token, now))


class OrderingStoreWrapper(_Wrapper):
    """An ``OrderingStore`` whose calls go to another through ``around``."""

    OPERATIONS: ClassVar[tuple[str, ...]] = ("order_claim", "order_settle", "order_get")

    async def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        return await self.around(
            "order_claim",
            lambda: self._store.order_claim(
                key, version=version, token=token, now=now, lease=lease, retention=retention
            ),
        )

    async def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        await self.around(
            "order_settle",
            lambda: self._store.order_settle(
                key, token=token, version=version, ok=ok, now=now, retention=retention
            ),
        )

    async def order_get(self, key: str, now: float) -> OrderRecord | None:
        return await self.around("order_get", lambda: self._store.order_get(key, now))


class StoreWrapper(IdempotencyStoreWrapper, RateLimitStoreWrapper, OrderingStoreWrapper):
    """A ``Store`` whose calls go to another through ``around``.

    Example:
        >>> class CountedStore(StoreWrapper):
        ...     def __init__(self, store: Store) -> None:
        ...         super().__init__(store)
        ...         self.calls: Counter[str] = Counter()
        ...
        ...     async def around(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        ...         self.calls[operation] += 1
        ...         return await call()
        >>> store = CountedStore(MemoryStore())

    ``around(operation, call)`` is called once per call of a store method; ``operation`` is
    one of ``OPERATIONS``, ``call()`` makes the wrapped store's call, and what ``around``
    returns (or raises) is the answer. Every other attribute is the wrapper's own.
    """

    OPERATIONS: ClassVar[tuple[str, ...]] = (
        IdempotencyStoreWrapper.OPERATIONS
        + RateLimitStoreWrapper.OPERATIONS
        + OrderingStoreWrapper.OPERATIONS
    )
