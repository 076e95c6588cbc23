"""surefoot.storage.StoreWrapper: every store call goes to the wrapped store through one hook."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from _support import T0
from surefoot.idempotency import Begin, IdempotencyStore, Reserved
from surefoot.ratelimit import Item, Limit, RateLimitStore
from surefoot.storage import (
    IdempotencyStoreWrapper,
    MemoryStore,
    OrderingStoreWrapper,
    RateLimitStoreWrapper,
    Store,
    StoreWrapper,
)
from surefoot.webhooks import OrderingStore

T = TypeVar("T")

pytestmark = pytest.mark.anyio


def _begin() -> Begin:
    return Begin(fingerprint="fp", token="t1", lease=30, ttl=3600, on_lease_expiry="unknown")


class Recording(StoreWrapper):
    """Records each operation; refuses the ones in ``refused`` without calling the store."""

    def __init__(self, store: Store, refused: tuple[str, ...] = ()) -> None:
        super().__init__(store)
        self.seen: list[str] = []
        self.refused = refused

    async def around(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        self.seen.append(operation)
        if operation in self.refused:
            raise RuntimeError(f"{operation} refused")
        return await call()


async def test_each_call_goes_through_the_hook_to_the_wrapped_store() -> None:
    memory = MemoryStore()
    store = Recording(memory)
    assert isinstance(store, Store)
    decision = await store.begin("k", _begin(), T0)
    assert isinstance(decision, Reserved)
    assert await memory.get("k", T0) == await store.get("k", T0)
    item = Item("rl:a", "concurrency", Limit(1, 1, algorithm="concurrency"), token="t1")
    assert (await store.acquire([item], T0))[0]
    await store.release("rl:a", "t1", T0)
    assert store.seen == ["begin", "get", "acquire", "release"]
    assert store.wrapped is memory
    assert repr(store) == f"Recording({memory!r})"


async def test_a_refused_call_never_reaches_the_store() -> None:
    memory = MemoryStore()
    store = Recording(memory, refused=("begin",))
    with pytest.raises(RuntimeError, match="begin refused"):
        await store.begin("k", _begin(), T0)
    assert await memory.get("k", T0) is None


async def test_aclose_and_the_algorithms_bypass_the_hook() -> None:
    memory = MemoryStore()
    store = Recording(memory)
    store.rate_limit_algorithms = frozenset({"gcra"})
    assert memory.rate_limit_algorithms == store.rate_limit_algorithms == {"gcra"}
    await store.aclose()
    assert store.seen == []


def test_each_half_is_the_protocol_its_methods_make() -> None:
    halves = IdempotencyStoreWrapper(MemoryStore()), RateLimitStoreWrapper(MemoryStore())
    assert [isinstance(h, IdempotencyStore) for h in halves] == [True, False]
    assert [isinstance(h, RateLimitStore) for h in halves] == [False, True]
    assert StoreWrapper.OPERATIONS == (
        IdempotencyStoreWrapper.OPERATIONS
        + RateLimitStoreWrapper.OPERATIONS
        + OrderingStoreWrapper.OPERATIONS
    )
    ordering = OrderingStoreWrapper(MemoryStore())
    assert isinstance(ordering, OrderingStore)
    assert not isinstance(ordering, IdempotencyStore)
    assert not any(isinstance(h, OrderingStore) for h in halves)
    assert {*StoreWrapper.OPERATIONS} == {
        name for name in dir(StoreWrapper) if not name.startswith("_")
    } - {"OPERATIONS", "around", "aclose", "rate_limit_algorithms", "wrapped"}
