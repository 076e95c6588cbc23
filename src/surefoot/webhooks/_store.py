"""``OrderingStore`` and ``EventArchive``: what the receiver asks of its store.

``EventArchive`` is where an endpoint with ``archive=True`` keeps each delivery it handed
to the app, for ``WebhookReceiver.replay``: opaque bytes under a key, until a time. It is
the same pair of methods ``surefoot.client``'s ``CacheStore`` asks for (``MemoryStore``,
``SqliteStore`` and ``RedisStore`` have them; ``PostgresStore`` does not yet), declared
here because webhooks sits below ``client`` in the layers.

An ``OrderingStore`` keeps ``OrderRecord`` values under ordering keys (``ordering_key``) and applies
the state machine of ``_order`` atomically: each method is one indivisible step, even
when many coroutines, threads or processes call it on the same key at once. The contract
test suite (``tests/storage/test_ordering_contract.py``) runs over every store in
``surefoot.storage``. All times are epoch seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from surefoot.webhooks._order import Claim, OrderRecord

__all__ = ["EventArchive", "OrderingStore"]


@runtime_checkable
class OrderingStore(Protocol):
    """Home of the ordering guard's records, one per (endpoint, object)."""

    async def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        """Claim the object under ``key`` for an event of ``version`` (``_order.claim``)."""
        ...

    async def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        """The holder of ``token`` is done with its event (``_order.settle``)."""
        ...

    async def order_get(self, key: str, now: float) -> OrderRecord | None:
        """The live record under ``key``, if any (on the caller's clock)."""
        ...


@runtime_checkable
class EventArchive(Protocol):
    """Home of archived deliveries: bytes under a key until ``expires_at`` (best effort:
    a ``MemoryStore`` drops its least recently used entries beyond its bound)."""

    async def cache_get(self, key: str, now: float) -> bytes | None:
        """The bytes under ``key`` unless absent or expired at ``now``."""
        ...

    async def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        """Keep ``value`` under ``key`` until ``expires_at``, replacing any."""
        ...
