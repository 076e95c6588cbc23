"""``OrderingStore``: the contract every store of the ordering guard fulfils.

A store keeps ``OrderRecord`` values under ordering keys (``ordering_key``) and applies
the state machine of ``_order`` atomically: each method is one indivisible step, even
when many coroutines, threads or processes call it on the same key at once. The contract
test suite (``tests/storage/test_ordering_contract.py``) runs over every store in
``surefoot.storage``. All times are epoch seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from surefoot.webhooks._order import Claim, OrderRecord

__all__ = ["OrderingStore"]


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
