"""``RateLimitStore``: the contract every rate-limit store fulfils.

The contract test suite (``tests/storage/test_ratelimit_contract.py``) runs over every
store in ``surefoot.storage``; ``SyncRateLimitStore`` is the same contract with blocking
methods (WSGI workers), and the same suite runs over every sync store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from surefoot.ratelimit._algorithms import RateLimitDecision
    from surefoot.ratelimit._core import Item

__all__ = ["RateLimitStore", "SyncRateLimitStore"]


@runtime_checkable
class RateLimitStore(Protocol):
    """Home of rate-limit counters.

    A store applies ``_core.plan`` atomically over all the keys of one
    request and says which algorithms it can run in ``rate_limit_algorithms``.
    """

    rate_limit_algorithms: frozenset[str]

    async def acquire(
        self, items: Sequence[Item], now: float
    ) -> tuple[bool, list[RateLimitDecision]]:
        """Decide one request against ``items``, all or nothing: (admitted, decisions)."""
        ...

    async def release(self, key: str, token: str, now: float) -> None:
        """Free the concurrency slot held under ``token``."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...


@runtime_checkable
class SyncRateLimitStore(Protocol):
    """``RateLimitStore`` with blocking methods (WSGI workers, Django, Flask)."""

    rate_limit_algorithms: frozenset[str]

    def acquire(self, items: Sequence[Item], now: float) -> tuple[bool, list[RateLimitDecision]]:
        """Decide one request against ``items``, all or nothing: (admitted, decisions)."""
        ...

    def release(self, key: str, token: str, now: float) -> None:
        """Free the concurrency slot held under ``token``."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
