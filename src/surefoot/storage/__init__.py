"""Where surefoot keeps its state.

``MemoryStore`` (one process), ``SqliteStore`` (the embedded default: one machine, many
processes); ``store_from_url`` picks one from a URL such as ``sqlite:///idempotency.db``.
Every store is a ``Store``: it implements ``IdempotencyStore`` (whose home is
``surefoot.idempotency``) and ``RateLimitStore`` (``surefoot.ratelimit``) and passes the same
contract test suites. Store health (``StoreHealth``) is shared by both middlewares.
``StoreWrapper`` (and its parts) forwards every call of another store through one hook,
``around``: ``surefoot.metrics.InstrumentedStore`` and ``surefoot.testing.FlakyStore`` are
built on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._health import HealthState, StoreDown, StoreHealth, StoreRecovered
from surefoot._lazy import lazy_names
from surefoot.idempotency import IdempotencyStore
from surefoot.ratelimit import RateLimitStore
from surefoot.storage._wrapper import (
    IdempotencyStoreWrapper,
    OrderingStoreWrapper,
    RateLimitStoreWrapper,
    StoreWrapper,
)

# The stores load asyncio and sqlite3 on first use, not for the interfaces and the wrappers.
if TYPE_CHECKING:
    from surefoot.storage._registry import STORES, Store, store_from_url
    from surefoot.storage.memory import MemoryStore
    from surefoot.storage.sqlite import SqliteStore
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.storage._registry": ("STORES", "Store", "store_from_url"),
            "surefoot.storage.memory": ("MemoryStore",),
            "surefoot.storage.sqlite": ("SqliteStore",),
        },
    )

__all__ = [
    "STORES",
    "HealthState",
    "IdempotencyStore",
    "IdempotencyStoreWrapper",
    "MemoryStore",
    "OrderingStoreWrapper",
    "RateLimitStore",
    "RateLimitStoreWrapper",
    "SqliteStore",
    "Store",
    "StoreDown",
    "StoreHealth",
    "StoreRecovered",
    "StoreWrapper",
    "store_from_url",
]
