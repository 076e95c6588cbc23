"""Where surefoot keeps its state.

``MemoryStore`` (one process), ``SqliteStore`` (the embedded default: one machine, many
processes); ``store_from_url`` picks one from a URL such as ``sqlite:///idempotency.db``.
Every store is a ``Store``: it implements ``IdempotencyStore`` (whose home is
``surefoot.idempotency``) and ``RateLimitStore`` (``surefoot.ratelimit``) and passes the same
contract test suites. Store health (``StoreHealth``) is shared by both middlewares.
``StoreWrapper`` (and its parts) forwards every call of another store through one hook,
``around``: ``surefoot.metrics.InstrumentedStore`` and ``surefoot.testing.FlakyStore`` are
built on it.
``SyncMemoryStore`` and ``SyncSqliteStore`` (and ``SyncRedisStore``, ``SyncPostgresStore``
in their modules) are the same stores with blocking methods, for WSGI servers (Django,
Flask): each is a ``SyncStore`` (``SyncIdempotencyStore`` and ``SyncRateLimitStore``), and
``sync_store_from_url`` picks one from the same URLs.
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
    from surefoot.storage._registry import (
        STORES,
        SYNC_STORES,
        Store,
        SyncStore,
        check_store_url,
        store_from_url,
        sync_store_from_url,
    )
    from surefoot.storage.memory import MemoryStore, SyncMemoryStore
    from surefoot.storage.sqlite import SqliteStore, SyncSqliteStore
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.storage._registry": (
                "STORES",
                "SYNC_STORES",
                "Store",
                "SyncStore",
                "check_store_url",
                "store_from_url",
                "sync_store_from_url",
            ),
            "surefoot.storage.memory": ("MemoryStore", "SyncMemoryStore"),
            "surefoot.storage.sqlite": ("SqliteStore", "SyncSqliteStore"),
        },
    )

__all__ = [
    "STORES",
    "SYNC_STORES",
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
    "SyncMemoryStore",
    "SyncSqliteStore",
    "SyncStore",
    "check_store_url",
    "store_from_url",
    "sync_store_from_url",
]
