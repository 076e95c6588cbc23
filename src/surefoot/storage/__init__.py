"""Where surefoot keeps its state.

``MemoryStore`` (one process), ``SqliteStore`` (the embedded default: one machine, many
processes); ``store_from_url`` picks one from a URL such as ``sqlite:///idempotency.db``.
Every store is a ``Store``: it implements ``IdempotencyStore`` (whose home is
``surefoot.idempotency``) and ``RateLimitStore`` (``surefoot.ratelimit``) and passes the same
contract test suites. Store health (``StoreHealth``) is shared by both middlewares.
"""

from __future__ import annotations

from surefoot._health import HealthState, StoreDown, StoreHealth, StoreRecovered
from surefoot.idempotency import IdempotencyStore
from surefoot.ratelimit import RateLimitStore
from surefoot.storage._registry import STORES, Store, store_from_url
from surefoot.storage.memory import MemoryStore
from surefoot.storage.sqlite import SqliteStore

__all__ = [
    "STORES",
    "HealthState",
    "IdempotencyStore",
    "MemoryStore",
    "RateLimitStore",
    "SqliteStore",
    "Store",
    "StoreDown",
    "StoreHealth",
    "StoreRecovered",
    "store_from_url",
]
