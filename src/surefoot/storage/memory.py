"""``MemoryStore``: idempotency records and rate-limit counters in this process's memory.

``SyncMemoryStore`` is its twin with blocking methods (Invariant 8).

For tests, development and single-process deployments. Records vanish with the process,
and each process has its own: use ``SqliteStore`` for several workers on one machine.

Invariants:
1. Every step runs without awaiting between its read and its write, under a lock, so it
   is atomic for coroutines and threads alike.
2. The store holds at most ``max_records``. When full, it first drops an expired record.
   With ``on_full="refuse"`` (the default) that is all: a live record is never dropped
   inside its TTL (a dropped completed record lets its retry execute twice), and with
   nothing expired a new key is refused with ``StoreCapacityExceeded`` (503), executing
   nothing. With ``on_full="evict"`` it drops the least recently written completed record
   instead of refusing. It never evicts an in-flight reservation or an unknown outcome
   (either would let a request execute twice). A refusal's ``retry_after`` is the time
   until the first live record expires (the earliest a place frees up, unless one is
   released or forgotten first), found by the scan that looked for an expired record:
   O(``max_records``), paid only by a refused key.
3. Rate-limit counters are bounded by ``max_counters``: past the bound the least recently
   used key is dropped (its client starts afresh: the price of bounded memory).
4. Cache entries (``StaleCache``'s ``CacheStore`` contract) are bounded by ``max_records``,
   least recently used first out, and read as absent once ``expires_at`` has passed.
5. Per-principal quotas (``_core`` Rule 7): each owner's records are tallied as they are
   written and dropped (its keys, how many are unknown, a lower bound of their first
   expiry), so a begin reads its owner's usage in constant time. Only an owner at its
   quota whose first record may have expired has its records scanned: expired ones are
   dropped, and the bounds become exact.
6. Ordering records (``surefoot.webhooks``' ``OrderingStore``) apply ``_order``'s
   ``claim`` and ``settle`` under the lock, and are bounded by ``max_records`` apart from
   the idempotency records: when full, an expired one is dropped first; then with
   ``on_full="evict"`` the least recently written one that no lease holds, else a new
   key is refused with ``StoreCapacityExceeded`` (as Invariant 2). ``purge`` drops the
   expired ones too.
7. Boards (``surefoot.metrics``' ``BoardStore``) are dicts of slots (value, expires_at),
   bounded by ``surefoot._board`` (checked before anything changes). A read drops the
   board's expired slots (and the board once empty); a put or a claim sweeps every board,
   at most once every ``BOARD_SWEEP`` seconds (of its ``now``), and ``purge`` drops
   expired slots too, so boards nobody reads again (one per minute of top-k summaries)
   do not pile up. A new slot on a board of ``MAX_SLOTS`` slots first drops that board's
   expired ones: O(``MAX_SLOTS``), paid only at the bound.
8. ``SyncMemoryStore`` is the same store with blocking methods (for WSGI servers): both
   share the state and the steps' logic (``_Memory``), and its methods are generated from
   ``MemoryStore``'s by ``scripts/unasync.py`` (no step awaits, so each is the same code).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from surefoot import idempotency, webhooks
from surefoot._board import MAX_SLOTS, board_full, check_board, check_slot, check_slot_name
from surefoot.errors import ConfigurationError, StoreCapacityExceeded
from surefoot.idempotency import (
    Begin,
    Decision,
    Outcome,
    Record,
    State,
    StoredResponse,
    Usage,
    key_owner,
)
from surefoot.ratelimit import (
    ALGORITHM_BY_NAME,
    ALGORITHMS,
    Concurrency,
    CounterState,
    Item,
    RateLimitDecision,
    plan,
)
from surefoot.webhooks import Claim, OrderRecord, OrderState

__all__ = ["MemoryStore", "SyncMemoryStore"]

#: Seconds between two sweeps of every board for expired slots (Invariant 7).
BOARD_SWEEP = 60.0


class _Tally:
    """One owner's live (or not yet dropped) records (Invariant 5)."""

    __slots__ = ("first_expiry", "first_unknown_expiry", "keys", "unknown")

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.unknown = 0
        # Lower bounds: no record of the owner (no unknown one) expires before them.
        self.first_expiry = math.inf
        self.first_unknown_expiry = math.inf


class _Memory:
    """What ``MemoryStore`` and ``SyncMemoryStore`` share (Invariant 8): the state, its
    bounds and the steps' logic, all synchronous."""

    def __init__(
        self,
        *,
        max_records: int = 10_000,
        max_counters: int = 100_000,
        on_full: Literal["refuse", "evict"] = "refuse",
    ) -> None:
        for name, value in (("max_records", max_records), ("max_counters", max_counters)):
            if value < 1:
                raise ConfigurationError(
                    f"{type(self).__name__}.{name}: expected a positive integer, got {value!r}"
                )
        if on_full not in ("refuse", "evict"):
            raise ConfigurationError(
                f"{type(self).__name__}.on_full: expected 'refuse' or 'evict', got {on_full!r}"
            )
        self.max_records = max_records
        self.max_counters = max_counters
        self.on_full = on_full
        # Rate-limit states, least recently used first. An old state needs no expiry check:
        # each algorithm reads a stale state exactly as a fresh key (its Rule 3).
        self._counters: OrderedDict[str, CounterState] = OrderedDict()
        # Ordered by last write: the front holds the records most likely to have expired.
        self._records: OrderedDict[str, Record] = OrderedDict()
        # Cache entries (value, expires_at), least recently used first.
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._owners: dict[str, _Tally] = {}
        # Ordering records (Invariant 6), least recently written first.
        self._orders: OrderedDict[str, OrderRecord] = OrderedDict()
        # Boards (Invariant 7): board -> slot -> (value, expires_at).
        self._boards: dict[str, dict[str, tuple[bytes, float]]] = {}
        self._next_board_sweep = -math.inf
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def _put(self, key: str, record: Record | None, now: float) -> None:
        if record is None:
            self._drop(key)
            return
        old = self._records.get(key)
        if old is None and len(self._records) >= self.max_records:
            self._make_room(now)
        self._records[key] = record
        self._records.move_to_end(key)
        owner = key_owner(key)
        if owner:
            tally = self._owners.get(owner)
            if tally is None:
                tally = self._owners[owner] = _Tally()
            tally.keys.add(key)
            tally.unknown += (record.state is State.UNKNOWN) - (
                old is not None and old.state is State.UNKNOWN
            )
            tally.first_expiry = min(tally.first_expiry, record.expires_at)
            if record.state is State.UNKNOWN:
                tally.first_unknown_expiry = min(tally.first_unknown_expiry, record.expires_at)

    def _drop(self, key: str) -> None:
        """Delete the record under ``key``, and its owner's count of it."""
        old = self._records.pop(key, None)
        owner = key_owner(key) if old is not None else ""
        if owner:
            tally = self._owners[owner]
            tally.keys.discard(key)
            tally.unknown -= old is not None and old.state is State.UNKNOWN
            if not tally.keys:
                del self._owners[owner]

    def _make_room(self, now: float) -> None:
        # The front holds the least recently written records (the likeliest to have
        # expired); in-flight and unknown ones are skipped, so with on_full="evict" this
        # stops at once unless the front is full of them.
        evict = self.on_full == "evict"
        first_expiry = math.inf
        for key, record in self._records.items():
            if now >= record.expires_at or (evict and record.state is State.COMPLETED):
                self._drop(key)
                return
            first_expiry = min(first_expiry, record.expires_at)
        # Every record was seen (Invariant 2): the first to expire frees the first place.
        raise StoreCapacityExceeded(retry_after=max(1, math.ceil(first_expiry - now)))

    def _usage(self, owner: str, request: Begin, now: float) -> Usage:
        """What ``owner`` holds at ``now`` (Invariant 5)."""
        tally = self._owners.get(owner)
        if tally is None:
            return Usage(0, 0, math.inf, math.inf)
        full = (request.max_records and len(tally.keys) >= request.max_records) or (
            request.max_unknown and tally.unknown >= request.max_unknown
        )
        if full and now >= tally.first_expiry:
            # Some of the owner's records may have expired: drop them, and learn the
            # exact first expiries for the answer's retry_after.
            for key in list(tally.keys):
                if now >= self._records[key].expires_at:
                    self._drop(key)
            live = [self._records[key] for key in tally.keys]
            tally.first_expiry = min((r.expires_at for r in live), default=math.inf)
            tally.first_unknown_expiry = min(
                (r.expires_at for r in live if r.state is State.UNKNOWN), default=math.inf
            )
        return Usage(len(tally.keys), tally.unknown, tally.first_expiry, tally.first_unknown_expiry)

    def _purge(self, now: float, *, limit: int) -> int:
        expired = [k for k, r in self._records.items() if now >= r.expires_at][:limit]
        for key in expired:
            self._drop(key)
        orders = [k for k, r in self._orders.items() if now >= r.expires][: limit - len(expired)]
        for key in orders:
            del self._orders[key]
        deleted = len(expired) + len(orders)
        return deleted + self._sweep_boards(now, limit=limit - deleted)

    # -- boards (Invariant 7) -------------------------------------------------------------

    def _board_write(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float, *, claim: bool
    ) -> bool:
        if now >= self._next_board_sweep:
            self._next_board_sweep = now + BOARD_SWEEP
            self._sweep_boards(now, limit=None)
        slots = self._boards.setdefault(board, {})
        old = slots.get(slot)
        if old is not None and now < old[1]:
            if claim:
                return False
        elif len(slots) >= MAX_SLOTS:
            _drop_expired(slots, now)
            if len(slots) >= MAX_SLOTS:
                raise board_full(board)
        slots[slot] = (value, expires_at)
        return True

    def _sweep_boards(self, now: float, *, limit: int | None) -> int:
        """Drop expired slots (up to ``limit``) and the boards left empty; how many went."""
        deleted = 0
        for board, slots in list(self._boards.items()):
            if limit is not None and deleted >= limit:
                break
            gone = [slot for slot, (_, expires_at) in slots.items() if now >= expires_at]
            if limit is not None:
                gone = gone[: limit - deleted]
            for slot in gone:
                del slots[slot]
            deleted += len(gone)
            if not slots:
                del self._boards[board]
        return deleted

    # -- ordering records ----------------------------------------------------------------

    def _put_order(self, key: str, record: OrderRecord | None, now: float) -> None:
        orders = self._orders
        if record is None:
            orders.pop(key, None)
            return
        if key not in orders and len(orders) >= self.max_records:
            first_expiry = math.inf
            for old_key, old in orders.items():
                state = webhooks.order_state(old, now)
                if state is OrderState.ABSENT or (
                    self.on_full == "evict" and state is OrderState.FREE
                ):
                    del orders[old_key]
                    break
                first_expiry = min(first_expiry, old.expires)
            else:
                raise StoreCapacityExceeded(retry_after=max(1, math.ceil(first_expiry - now)))
        orders[key] = record
        orders.move_to_end(key)

    # -- rate limits ---------------------------------------------------------------------

    rate_limit_algorithms = ALGORITHMS

    def acquire_now(
        self, items: Sequence[Item], now: float
    ) -> tuple[bool, list[RateLimitDecision]]:
        """``acquire`` without the coroutine, for synchronous callers."""
        counters = self._counters
        if len(items) == 1:
            # The common case, without the bookkeeping of plan(): one limit decides alone.
            key, algorithm, limit, cost, enforce, _ = items[0]
            if algorithm != "concurrency":
                decide = ALGORITHM_BY_NAME[algorithm].decide
                with self._lock:
                    state = counters.get(key)
                    decision, new = decide(state, now, cost, limit)
                    if decision.allowed:
                        counters[key] = new
                    if state is not None:
                        counters.move_to_end(key)  # used, even if refused: keep it
                    elif len(counters) > self.max_counters:
                        counters.popitem(last=False)
                return decision.allowed or not enforce, [decision]
        with self._lock:
            states = []
            for item in items:
                state = counters.get(item.key)
                if state is not None:
                    counters.move_to_end(item.key)
                states.append(state)
            admitted, decisions, writes = plan(states, items, now)
            for w in writes:
                counters[w.key] = w.state
            while len(counters) > self.max_counters:
                # Least recently used first: the keys least likely to be near their limit.
                counters.popitem(last=False)
            return admitted, decisions

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_records={self.max_records}, "
            f"max_counters={self.max_counters}, on_full={self.on_full!r})"
        )


class SyncMemoryStore(_Memory):
    """``MemoryStore`` with blocking methods, for WSGI servers (``surefoot.wsgi``, Django,
    Flask): a ``SyncIdempotencyStore`` and a ``SyncRateLimitStore`` (with ordering records,
    boards and cache entries too), with ``MemoryStore``'s arguments, bounds and answers.
    Its methods are safe to call from several threads at once.

    Example:
        >>> store = SyncMemoryStore(max_records=50_000)
    """

    # ---- generated by scripts/unasync.py from the async source below: do not edit ----
    def begin(self, key: str, request: Begin, now: float) -> Decision:
        with self._lock:
            record = self._records.get(key)
            owner = key_owner(key)
            usage = None
            if owner and idempotency.charges_quota(record, request, now):
                usage = self._usage(owner, request, now)
            decision, new = idempotency.begin(record, request, now, usage)
            if new is not record:
                self._put(key, new, now)
            return decision

    def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        with self._lock:
            record = self._records.get(key)
            accepted, new = idempotency.finish(record, token, outcome, now)
            if new is not record:
                self._put(key, new, now)
            return accepted

    def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        with self._lock:
            accepted, new = idempotency.resolve(self._records.get(key), response, now)
            if accepted:
                self._put(key, new, now)
            return accepted

    def forget(self, key: str, now: float) -> bool:
        with self._lock:
            accepted, _ = idempotency.forget(self._records.get(key), now)
            self._drop(key)
            return accepted

    def get(self, key: str, now: float) -> Record | None:
        record = self._records.get(key)
        return None if idempotency.classify(record, now) is State.ABSENT else record

    def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        with self._lock:
            items = list(self._records.items())
        out: list[tuple[str, Record]] = []
        for key, record in items:
            observed = idempotency.classify(record, now)
            if observed is not State.ABSENT and state in (None, observed):
                out.append((key, record))
                if len(out) >= limit:
                    break
        return out

    def purge(self, now: float, *, limit: int = 500) -> int:
        with self._lock:
            return self._purge(now, limit=limit)

    # -- boards (Invariant 7) -------------------------------------------------------------

    def board_put(self, board: str, slot: str, value: bytes, expires_at: float, now: float) -> None:
        check_slot(board, slot, value, expires_at, now)
        with self._lock:
            self._board_write(board, slot, value, expires_at, now, claim=False)

    def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        check_slot(board, slot, value, expires_at, now)
        with self._lock:
            return self._board_write(board, slot, value, expires_at, now, claim=True)

    def board_read(self, board: str, now: float) -> dict[str, bytes]:
        check_board(board)
        with self._lock:
            slots = self._boards.get(board)
            if slots is None:
                return {}
            _drop_expired(slots, now)
            if not slots:
                del self._boards[board]
            return {slot: value for slot, (value, _) in slots.items()}

    def board_delete(self, board: str, slot: str, now: float) -> bool:
        check_slot_name(board, slot)
        with self._lock:
            slots = self._boards.get(board)
            found = None if slots is None else slots.pop(slot, None)
            if slots is not None and not slots:
                del self._boards[board]
            return found is not None and now < found[1]

    # -- ordering records ----------------------------------------------------------------

    def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        with self._lock:
            record = self._orders.get(key)
            new, answer = webhooks.claim(
                record, version=version, token=token, now=now, lease=lease, retention=retention
            )
            if new is not record:
                self._put_order(key, new, now)
            return answer

    def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        with self._lock:
            record = self._orders.get(key)
            new = webhooks.settle(
                record, token=token, version=version, ok=ok, now=now, retention=retention
            )
            if new is not record:
                self._put_order(key, new, now)

    def order_get(self, key: str, now: float) -> OrderRecord | None:
        record = self._orders.get(key)
        return webhooks.live_order(record, now)

    # -- rate limits ---------------------------------------------------------------------

    def acquire(self, items: Sequence[Item], now: float) -> tuple[bool, list[RateLimitDecision]]:
        return self.acquire_now(items, now)

    def release(self, key: str, token: str, now: float) -> None:
        with self._lock:
            state = self._counters.get(key)
            if state is None:
                return
            new = Concurrency.release(state, token, now)
            if new is None:
                del self._counters[key]
            else:
                self._counters[key] = new

    # -- cache entries -----------------------------------------------------------------------

    def cache_get(self, key: str, now: float) -> bytes | None:
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                return None
            if now > found[1]:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return found[0]

    def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        with self._lock:
            self._cache[key] = (value, expires_at)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_records:
                self._cache.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            self._records.clear()
            self._owners.clear()
            self._orders.clear()
            self._boards.clear()
            self._counters.clear()
            self._cache.clear()

    # ---- end ----


class MemoryStore(_Memory):
    """In-process idempotency store, bounded by ``max_records``.

    Example:
        >>> store = MemoryStore(max_records=50_000)

    Args:
        max_records: idempotency records (and cache entries) kept at most.
        max_counters: rate-limit counters kept at most.
        on_full: when ``max_records`` are live, ``"refuse"`` new keys (503
            ``store_capacity_exceeded``, ``retry_after`` until the first record
            expires) or ``"evict"`` the least recently written completed record, inside
            its TTL.

    Warning:
        ``on_full="evict"`` lets whoever sends many new keys push other clients' completed
        records out before their TTL ends; a retry of an evicted request executes again.
    """

    # ---- async source of the generated code above (scripts/unasync.py) ----
    async def begin(self, key: str, request: Begin, now: float) -> Decision:
        with self._lock:
            record = self._records.get(key)
            owner = key_owner(key)
            usage = None
            if owner and idempotency.charges_quota(record, request, now):
                usage = self._usage(owner, request, now)
            decision, new = idempotency.begin(record, request, now, usage)
            if new is not record:
                self._put(key, new, now)
            return decision

    async def finish(self, key: str, token: str, outcome: Outcome, now: float) -> bool:
        with self._lock:
            record = self._records.get(key)
            accepted, new = idempotency.finish(record, token, outcome, now)
            if new is not record:
                self._put(key, new, now)
            return accepted

    async def resolve(self, key: str, response: StoredResponse, now: float) -> bool:
        with self._lock:
            accepted, new = idempotency.resolve(self._records.get(key), response, now)
            if accepted:
                self._put(key, new, now)
            return accepted

    async def forget(self, key: str, now: float) -> bool:
        with self._lock:
            accepted, _ = idempotency.forget(self._records.get(key), now)
            self._drop(key)
            return accepted

    async def get(self, key: str, now: float) -> Record | None:
        record = self._records.get(key)
        return None if idempotency.classify(record, now) is State.ABSENT else record

    async def records(
        self, now: float, *, state: State | None = None, limit: int = 100
    ) -> list[tuple[str, Record]]:
        with self._lock:
            items = list(self._records.items())
        out: list[tuple[str, Record]] = []
        for key, record in items:
            observed = idempotency.classify(record, now)
            if observed is not State.ABSENT and state in (None, observed):
                out.append((key, record))
                if len(out) >= limit:
                    break
        return out

    async def purge(self, now: float, *, limit: int = 500) -> int:
        with self._lock:
            return self._purge(now, limit=limit)

    # -- boards (Invariant 7) -------------------------------------------------------------

    async def board_put(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> None:
        check_slot(board, slot, value, expires_at, now)
        with self._lock:
            self._board_write(board, slot, value, expires_at, now, claim=False)

    async def board_claim(
        self, board: str, slot: str, value: bytes, expires_at: float, now: float
    ) -> bool:
        check_slot(board, slot, value, expires_at, now)
        with self._lock:
            return self._board_write(board, slot, value, expires_at, now, claim=True)

    async def board_read(self, board: str, now: float) -> dict[str, bytes]:
        check_board(board)
        with self._lock:
            slots = self._boards.get(board)
            if slots is None:
                return {}
            _drop_expired(slots, now)
            if not slots:
                del self._boards[board]
            return {slot: value for slot, (value, _) in slots.items()}

    async def board_delete(self, board: str, slot: str, now: float) -> bool:
        check_slot_name(board, slot)
        with self._lock:
            slots = self._boards.get(board)
            found = None if slots is None else slots.pop(slot, None)
            if slots is not None and not slots:
                del self._boards[board]
            return found is not None and now < found[1]

    # -- ordering records ----------------------------------------------------------------

    async def order_claim(
        self, key: str, *, version: float, token: str, now: float, lease: float, retention: float
    ) -> Claim:
        with self._lock:
            record = self._orders.get(key)
            new, answer = webhooks.claim(
                record, version=version, token=token, now=now, lease=lease, retention=retention
            )
            if new is not record:
                self._put_order(key, new, now)
            return answer

    async def order_settle(
        self, key: str, *, token: str, version: float, ok: bool, now: float, retention: float
    ) -> None:
        with self._lock:
            record = self._orders.get(key)
            new = webhooks.settle(
                record, token=token, version=version, ok=ok, now=now, retention=retention
            )
            if new is not record:
                self._put_order(key, new, now)

    async def order_get(self, key: str, now: float) -> OrderRecord | None:
        record = self._orders.get(key)
        return webhooks.live_order(record, now)

    # -- rate limits ---------------------------------------------------------------------

    async def acquire(
        self, items: Sequence[Item], now: float
    ) -> tuple[bool, list[RateLimitDecision]]:
        return self.acquire_now(items, now)

    async def release(self, key: str, token: str, now: float) -> None:
        with self._lock:
            state = self._counters.get(key)
            if state is None:
                return
            new = Concurrency.release(state, token, now)
            if new is None:
                del self._counters[key]
            else:
                self._counters[key] = new

    # -- cache entries -----------------------------------------------------------------------

    async def cache_get(self, key: str, now: float) -> bytes | None:
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                return None
            if now > found[1]:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return found[0]

    async def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        with self._lock:
            self._cache[key] = (value, expires_at)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_records:
                self._cache.popitem(last=False)

    async def aclose(self) -> None:
        with self._lock:
            self._records.clear()
            self._owners.clear()
            self._orders.clear()
            self._boards.clear()
            self._counters.clear()
            self._cache.clear()

    # ---- end ----


def _drop_expired(slots: dict[str, tuple[bytes, float]], now: float) -> None:
    for slot in [slot for slot, (_, expires_at) in slots.items() if now >= expires_at]:
        del slots[slot]
