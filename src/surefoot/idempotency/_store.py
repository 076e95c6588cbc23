"""``IdempotencyStore`` and ``SyncIdempotencyStore``: the contract every idempotency store fulfils.

A store keeps ``Record`` values under scoped keys and applies the state machine of
``_core`` atomically: each method is one indivisible step, even when many coroutines,
threads or processes call it on the same key at once. The contract test suite
(``tests/storage/test_contract.py``) runs over every store in ``surefoot.storage``.
``SyncIdempotencyStore`` is the same contract with blocking methods, for WSGI servers
(``surefoot.wsgi``, Django, Flask): each method is the same one atomic step, and
``close`` replaces ``aclose``. The same suite runs over every sync store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from surefoot.idempotency._core import (
        Begin,
        Decision,
        Outcome,
        Record,
        State,
        StoredResponse,
    )

__all__ = ["IdempotencyStore", "SyncIdempotencyStore"]


@runtime_checkable
class IdempotencyStore(Protocol):
    """Durable (or not) home of idempotency records. All times are epoch seconds."""

    async def begin(self, key: str, request: Begin, now: float) -> Decision:
        """Reserve ``key`` or report why not, in one atomic step."""
        ...

    async def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        """Settle the reservation held with ``token``; False if fenced out."""
        ...

    async def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        """Operator: record the outcome of an unknown or abandoned execution."""
        ...

    async def forget(self, key: str, now: float) -> bool:
        """Operator: delete the record so that the next request executes."""
        ...

    async def get(self, key: str, now: float) -> Record | None:
        """The live record under ``key``, if any."""
        ...

    async def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        """Live records, optionally only those in ``state`` (for operators)."""
        ...

    async def purge(self, now: float, *, limit: int = 500) -> int:
        """Delete up to ``limit`` expired records; returns how many went."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...


@runtime_checkable
class SyncIdempotencyStore(Protocol):
    """``IdempotencyStore`` with blocking methods (WSGI workers, Django, Flask).

    Each method is the same atomic step as its async twin's, with the same results.
    """

    def begin(self, key: str, request: Begin, now: float) -> Decision:
        """Reserve ``key`` or report why not, in one atomic step."""
        ...

    def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        """Settle the reservation held with ``token``; False if fenced out."""
        ...

    def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        """Operator: record the outcome of an unknown or abandoned execution."""
        ...

    def forget(self, key: str, now: float) -> bool:
        """Operator: delete the record so that the next request executes."""
        ...

    def get(self, key: str, now: float) -> Record | None:
        """The live record under ``key``, if any."""
        ...

    def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        """Live records, optionally only those in ``state`` (for operators)."""
        ...

    def purge(self, now: float, *, limit: int = 500) -> int:
        """Delete up to ``limit`` expired records; returns how many went."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
