"""``BoardStore``: a small key space that every store shares between workers and hosts.

A *board* is a named set of *slots*; each slot holds a bytes value until its expiry
(epoch seconds). The gateway merges the workers' top-k summaries through it (one slot
per worker, overwritten at each flush), shares silences, and makes sure that one worker
sends each alert notification (``board_claim`` of the notification's fingerprint).

Rule 1: a slot is live while ``now < expires_at``; an expired slot is never returned,
        never counts, and is as good as absent to ``board_claim``. Expired slots do not
        accumulate: a store drops them lazily (on a put or a read) or with its purge,
        and a board whose slots have all expired disappears.
Rule 2: ``board_put`` sets or overwrites a slot (idempotent: a worker writing its own
        slot again replaces its value, never adds to it).
Rule 3: ``board_claim`` sets a slot only if it has no live value, and says whether this
        call set it. It is atomic across coroutines, threads, processes and hosts sharing
        the store: of many concurrent claims of one free slot, exactly one returns True.
        A claim that raises ``StoreUnavailable`` may still have been made (its reply was
        lost): its caller decides whether to act as if it held the slot.
Rule 4: bounds, checked by every store before it writes (``ValueError`` naming what is
        wrong; ``surefoot._board``): names are 1 to 256 printable ASCII characters; a
        value is ``bytes`` of at most 1 MiB; ``expires_at`` is a finite time after
        ``now``; a board holds at most 10,000 live slots (a put or a claim of a new slot
        beyond that raises, overwriting a live one never does).
Rule 5: times are the caller's. A network store on its own clock (``clock="server"``)
        keeps a slot for ``expires_at - now`` seconds of its clock, and decides whether
        it is live on that clock.

The contract suite, ``tests/storage/test_board_contract.py``, runs over every store.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["BoardStore"]


@runtime_checkable
class BoardStore(Protocol):
    """Named boards of slots; each slot a bytes value with an expiry (unix seconds)."""

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        """Set or overwrite the slot (Rule 2)."""
        ...

    async def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        """Set the slot only if it has no live value; True if this call set it (Rule 3)."""
        ...

    async def board_read(self, board: str, now: float) -> dict[str, bytes]:
        """Every live slot of the board; ``{}`` for an unknown board."""
        ...

    async def board_delete(self, board: str, slot: str, now: float) -> bool:
        """Remove the slot; True if it was live."""
        ...
