"""Where surefoot keeps its state.

``MemoryStore`` (one process), ``SqliteStore`` (the embedded default: one machine, many
processes); ``store_from_url`` picks one from a URL such as ``sqlite:///idempotency.db``.
Every store implements ``IdempotencyStore`` and ``RateLimitStore`` and passes the same
contract test suites.
"""

from __future__ import annotations

from surefoot.storage._health import HealthState, StoreDown, StoreHealth, StoreRecovered
from surefoot.storage._protocol import IdempotencyStore, RateLimitStore
from surefoot.storage._registry import STORES, store_from_url
from surefoot.storage.memory import MemoryStore
from surefoot.storage.sqlite import SqliteStore

__all__ = [
    "STORES",
    "HealthState",
    "IdempotencyStore",
    "MemoryStore",
    "RateLimitStore",
    "SqliteStore",
    "StoreDown",
    "StoreHealth",
    "StoreRecovered",
    "store_from_url",
]
