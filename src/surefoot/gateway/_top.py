"""``TopTracker``: who is refused most, who uses their quota most, per policy, merged
across workers and hosts through a store's board (``[top]``).

Each worker counts into Space-Saving summaries (``surefoot.metrics.SpaceSaving``: ``k``
counters, whatever the number of clients) and writes them to the store every
``flush_every`` seconds; a read merges every worker's summaries of the window.

Lists: ``refused`` (per policy: the principals refused with 429), ``admitted`` (per
policy: the principals admitted, so the heaviest users of their quota), ``shadow`` (per
policy: the principals a policy in shadow or rolled out would have refused, once per
request, so those a stricter stage would break), ``reused`` (the idempotency keys sent
again with another request, as ``principal store_key``), ``unknown`` (the principals
whose requests ended with an unknown outcome) and ``deprecated`` (per route: the
principals still calling a route deprecated for them, ``surefoot.contracts``).

Rule 1: a worker's summary of one list, policy and minute (and one of the hour) is one
        slot of the board ``top:LIST:POLICY:mMINUTE`` (``...:hHOUR``), the slot named by
        the worker. A flush overwrites the worker's own slots, so writing the same counts
        twice never counts them twice, and a worker that dies leaves what it counted.
        A count goes to the minute's summary only; the hour's is the merge of its minutes
        (each merged in when it is over, the current one when the hour is written).
Rule 2: a window of minutes (``1m`` to ``1h``) merges the boards of its last minutes,
        the current one included; a window of hours (``6h``, ``24h``) merges whole hours,
        the current one included. Minute boards expire after 2 hours, hour boards after
        25 hours.
Rule 3: a merged list keeps the summaries' guarantee: each count is at most ``error``
        above the true count, and ``error`` is at most ``total / k``; every principal
        with more than ``total / k`` is listed.
Rule 4: an item is cut to ``MAX_ITEM_KEPT`` characters, and ``k`` is at most ``MAX_K``, so
        every summary fits in a board's slot. A read merges at the smallest ``k``
        of the summaries it finds (workers started with another ``k``), which keeps the
        guarantee of Rule 3 for that ``k``.
Rule 5: test traffic (``surefoot.metrics.uncounted``) is not counted; a summary that
        cannot be written stays to be written at the next flush (a failing store loses
        nothing a worker has counted, except when the worker dies), until its board
        has expired: then it is dropped (its counts are in the hour's summary, for 25
        hours). A count made while its summary is being written is written next time.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from surefoot.clock import Clock
from surefoot.contracts import DeprecatedCalled
from surefoot.events import Event
from surefoot.idempotency import KeyReused, OutcomeUnknown
from surefoot.metrics import BoardStore, SpaceSaving, counted, merge
from surefoot.ratelimit import RateLimitAllowed, RateLimitRejected, RateLimitShadowRejected

__all__ = ["DEPRECATED", "LISTS", "WINDOWS", "TopTracker", "deprecated_key", "top_lists"]

_log = logging.getLogger("surefoot.gateway")

#: The lists, and whether each is per policy.
LISTS: dict[str, bool] = {
    "refused": True,
    "admitted": True,
    "shadow": True,
    "reused": False,
    "unknown": False,
}
#: The list of who calls each deprecated route (per route, not per policy: read by
#: ``/admin/deprecations``, not one of ``LISTS``).
DEPRECATED = "deprecated"


@functools.lru_cache(maxsize=1024)
def deprecated_key(route: str) -> str:
    """The ``deprecated`` list's key of ``route``: a short hash, since a route template may
    be long or hold characters a board's name may not (``surefoot._board`` Rule 1)."""
    return hashlib.blake2b(route.encode(), digest_size=8).hexdigest()


#: The windows a read may ask for, in seconds.
WINDOWS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "1h": 3600,
    "6h": 6 * 3600,
    "24h": 24 * 3600,
}
#: Items are cut to this length, so that a summary of at most ``MAX_K`` items stays under
#: the board's ``MAX_VALUE`` (Rule 4).
MAX_ITEM_KEPT = 256
MAX_K = 2000
_MINUTE_TTL = 2 * 3600
_HOUR_TTL = 25 * 3600


def top_lists(policies: Iterable[str]) -> list[tuple[str, str]]:
    """Every (list, policy) pair: the lists per policy for each of ``policies``, the
    others with the policy ``""``."""
    policies = list(policies)
    return [
        (name, policy)
        for name, per_policy in LISTS.items()
        for policy in (policies if per_policy else [""])
    ]


@dataclass(slots=True)
class _Slot:
    """One summary a worker counts into, and whether it changed since it was written.

    An hour's slot holds the minutes that are over, and ``minute``: the slot of its last
    minute, merged in when written (so that a count is one addition, not two).
    """

    board: str
    expires_at: float
    summary: SpaceSaving
    dirty: bool = True
    minute: _Slot | None = None

    def value(self) -> bytes:
        if self.minute is None:
            return self.summary.encode()
        return merge([self.summary, self.minute.summary], self.summary.k).encode()


class TopTracker:
    """The event hook that counts, the flush that writes, the read that merges.

    Args:
        board: the store holding the boards (``[top]``'s ``store``).
        k: counters per summary.
        clock: when each event is counted.
        worker: this worker's name in the boards (default: host, process and a random part).
        fresh: seconds a read's merged list is kept and answered again (the dashboard and
            every scrape ask often; the store is read once per ``fresh`` seconds).
    """

    def __init__(
        self,
        board: BoardStore,
        *,
        k: int,
        clock: Clock,
        worker: str | None = None,
        fresh: float = 0.0,
    ) -> None:
        self.board = board
        self.k = k
        self.clock = clock
        host = socket.gethostname()[:64]
        self.worker = worker or f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fresh = fresh
        self._slots: dict[str, _Slot] = {}
        # Per list and policy: the minute, and its minute's and hour's summaries.
        self._current: dict[tuple[str, str], tuple[int, _Slot, _Slot]] = {}
        self._read: dict[tuple[str, str, str], tuple[float, SpaceSaving]] = {}
        # The request, policy and limits of the last shadow refusal: a request refused by
        # several limits of one policy is counted once (its events come one after another).
        self._shadowed: tuple[str, str, set[str]] = ("", "", set())
        self._handlers: dict[type[Event], Any] = {
            RateLimitRejected: self._on_rejected,
            RateLimitShadowRejected: self._on_shadow,
            RateLimitAllowed: self._on_allowed,
            KeyReused: self._on_reused,
            OutcomeUnknown: self._on_unknown,
            DeprecatedCalled: self._on_deprecated,
        }

    # -- counting ----------------------------------------------------------------------------

    def wants(self, event_type: type[Event]) -> bool:
        return event_type in self._handlers

    def __call__(self, event: Event, /) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None and counted():
            handler(event)

    def _on_rejected(self, event: RateLimitRejected) -> None:
        self.count("refused", event.policy, event.principal)

    def _on_shadow(self, event: RateLimitShadowRejected) -> None:
        request, policy, limits = self._shadowed
        if (request, policy) == (event.request_id, event.policy) and event.limit not in limits:
            limits.add(event.limit)  # another limit of the same request and policy
            return
        self._shadowed = (event.request_id, event.policy, {event.limit})
        self.count("shadow", event.policy, event.principal)

    def _on_allowed(self, event: RateLimitAllowed) -> None:
        for policy in event.policies:
            self.count("admitted", policy, event.principal)

    def _on_reused(self, event: KeyReused) -> None:
        self.count("reused", "", f"{event.principal} {event.store_key or ''}".rstrip())

    def _on_unknown(self, event: OutcomeUnknown) -> None:
        self.count("unknown", "", event.principal)

    def _on_deprecated(self, event: DeprecatedCalled) -> None:
        self.count(DEPRECATED, deprecated_key(event.route), event.principal)

    def count(self, name: str, policy: str, item: str, weight: float = 1.0) -> None:
        """Count ``item`` once in the list ``name`` of ``policy`` (``""``: not per policy)."""
        minute = int(self.clock.now() // 60)
        current = self._current.get((name, policy))
        if current is not None and minute < current[0]:
            minute = current[0]  # the clock stepped back: counted in the latest minute
        if current is None or current[0] != minute:  # once a minute: find the summaries
            if current is not None:  # the minute that is over joins its hour's summary
                _, last, its_hour = current
                its_hour.summary = merge([its_hour.summary, last.summary], self.k)
                its_hour.minute = None
            hour = minute // 60
            current = self._current[name, policy] = (
                minute,
                self._slot(f"top:{name}:{policy}:m{minute}", (minute + 1) * 60 + _MINUTE_TTL),
                self._slot(f"top:{name}:{policy}:h{hour}", (hour + 1) * 3600 + _HOUR_TTL),
            )
            current[2].minute = current[1]
        current[1].summary.add(item[:MAX_ITEM_KEPT], weight)
        current[1].dirty = current[2].dirty = True

    def _slot(self, board: str, expires_at: float) -> _Slot:
        slot = self._slots.get(board)
        if slot is None:
            slot = self._slots[board] = _Slot(board, expires_at, SpaceSaving(self.k))
        return slot

    # -- writing -----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every summary changed since it was last written (Rule 1); forget those
        whose minute or hour is over once written, or once their board has expired
        (Rule 5)."""
        now = self.clock.now()
        minute, hour = int(now // 60), int(now // 3600)
        failing = False
        for key, slot in list(self._slots.items()):
            if slot.expires_at <= now:  # unwritten through a long outage: too late
                del self._slots[key]
                continue
            if slot.dirty and not failing:
                # Marked clean before the write: a count made while it is in flight
                # marks it again, for the next flush.
                slot.dirty = False
                try:
                    await self.board.board_put(
                        slot.board, self.worker, slot.value(), slot.expires_at, now
                    )
                except Exception as exc:  # Rule 5: written at the next flush
                    slot.dirty = True
                    failing = True
                    _log.warning(
                        "top offenders: writing to the store failed: %s", type(exc).__name__
                    )
            if not slot.dirty and not _current(key, minute, hour):
                del self._slots[key]

    async def run(self, every: float) -> None:
        """Flush every ``every`` seconds, until cancelled (a last flush then)."""
        try:
            while True:
                await asyncio.sleep(every)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    # -- reading -----------------------------------------------------------------------------

    async def read(self, name: str, policy: str, window: str) -> SpaceSaving:
        """Every worker's counts of the list over ``window`` (a key of ``WINDOWS``), merged
        (Rules 2 and 3)."""
        now = self.clock.now()
        seconds = WINDOWS[window]
        if seconds <= 3600:
            last, unit, prefix = int(now // 60), 60, "m"
        else:
            last, unit, prefix = int(now // 3600), 3600, "h"
        boards = [
            f"top:{name}:{policy}:{prefix}{at}"
            for at in range(last - seconds // unit + 1, last + 1)
        ]
        cached = self._read.get((name, policy, window))
        if cached is not None and now - cached[0] < self.fresh:
            return cached[1]
        slots = await asyncio.gather(*(self.board.board_read(board, now) for board in boards))
        summaries = list(_decoded(value for found in slots for value in found.values()))
        # A worker started with a smaller k (a rolling restart): merged at its k.
        merged = merge(summaries, min([self.k, *(summary.k for summary in summaries)]))
        self._read[name, policy, window] = (now, merged)
        return merged


def _current(board: str, minute: int, hour: int) -> bool:
    """Whether ``board``'s minute or hour is the current one."""
    at = board.rpartition(":")[2]
    return int(at[1:]) >= (minute if at[0] == "m" else hour)


def _decoded(values: Iterable[bytes]) -> Iterable[SpaceSaving]:
    """The summaries among ``values``; one another program wrote wrong is logged and
    skipped."""
    for value in values:
        try:
            yield SpaceSaving.decode(value)
        except ValueError as exc:
            _log.warning("top offenders: a summary in the store is unreadable: %s", exc)
