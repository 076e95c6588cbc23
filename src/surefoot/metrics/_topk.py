"""The heaviest items of a stream in fixed memory: weighted Space-Saving (Metwally,
Agrawal and El Abbadi, 2005), mergeable as in Agarwal et al., "Mergeable summaries"
(2012). Pure: no I/O, no clock.

A ``SpaceSaving(k)`` holds at most ``k`` items, each with a ``count`` and an ``error``.
``add(item, weight)`` adds to a held item's count; an item not held takes a free place,
or else the place of the held item of least count ``m`` (the least item first on a tie),
with count ``m + weight`` and error ``m``. ``merge(summaries, k)`` sums the summaries'
counters, an item that a full summary does not hold counting that summary's least count
in both its count and its error, and keeps the ``k`` largest; each summary merged must
have a ``k`` at least as large.

An item's *true count* is the sum of the weights added for it, in every summary merged
in; ``total`` is the sum of all the weights. For a summary made by ``add`` and ``merge``
(and ``decode`` of what ``encode`` gave):

Rule 1: every item whose true count is more than ``total / k`` is held.
Rule 2: for each held item, ``count - error <= true count <= count``.
Rule 3: for each held item, ``error <= total / k``.
Rule 4: ``len(summary) <= k`` whatever the stream: memory is fixed once ``k`` items
        are held.
Rule 5: ``add`` of a held item is O(1); of another item O(log k) amortised.
Rule 6: ``decode`` checks all the proof below rests on that it can see (not true
        counts): ``k`` in 1..10,000, at most ``k`` items of at most 1,024 characters,
        finite non-negative numbers, no item twice, no error above its count, counts
        summing to at most ``total``, no error while fewer than ``k`` items are held
        and none above the least count once ``k`` are. Anything else is a
        ``ValueError`` saying what is wrong.

The bounds are exact for integer weights (sums below 2**53); other weights are subject
to floating-point rounding.

Why. A summary's *floor* m is its least count when it holds ``k`` items, else 0.
  A. An item not held has true count <= m. Adds: an item leaves only as the least, with
     true count <= its count = m, and m never decreases (counts only grow; the newcomer
     has m + weight). Below ``k`` items nothing has left: an item not held was never
     added.
  B. A held item has 0 <= error <= m <= count. The newcomer's error is m; its true count
     is at most m (A) plus the weight, which is its count, and at least the weight,
     which is count - error; later adds raise its count and true count alike. Below
     ``k`` items nothing has left, so every error is 0.
  C. The counts sum to at most ``total``: an add raises both by its weight (taking the
     place of m gives m + weight). So k * m <= total, and Rules 1 and 3 follow from A
     and B; Rule 2 is B.
  D. Merge, each summary s with floor m_s and k_s >= k. Per s, an item counts (count,
     error) if s holds it, else (m_s, m_s), which by A and B bound its true count in s
     from above and (count - error) from below; the sums C(x) and E(x) so keep Rule 2.
     Every C(x) >= M, the sum of the m_s, >= every E(x). An item in no summary has true
     count <= M; one summed but not kept has C(x) <= the least kept: A holds, with the
     least kept as floor when k items are kept, and then E(x) <= M <= the floor gives B.
     Fewer than k are kept only when fewer than k items are held in all, so no summary
     is full (k_s >= k): every m_s and every error is 0, and an item in no summary was
     never added. C: per s, the kept items' counts in s (or m_s) sum to at most what s
     holds, since when m_s > 0, s holds k_s >= k items, as many left out as there are
     kept items it does not hold, or more, each of count >= m_s; summed over s, the kept
     counts are at most the total.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_ITEM", "MAX_K", "Counted", "SpaceSaving", "merge"]

#: The largest ``k``.
MAX_K = 10_000
#: The longest item, in characters.
MAX_ITEM = 1024
#: Slack for the check that a decoded summary's counts sum to at most its total: the
#: sums are rounded in a different order than the total was.
_ROUNDING = 1e-6


@dataclass(frozen=True, slots=True)
class Counted:
    """One held item: its true count is in ``[count - error, count]``."""

    item: str
    count: float
    error: float


class SpaceSaving:
    """A summary of the heaviest items of a stream, holding at most ``k`` of them.

    Example:
        >>> top = SpaceSaving(2)
        >>> for client in ["a", "b", "a", "c"]:
        ...     top.add(client)
        >>> [(c.item, c.count, c.error) for c in top.top()]
        [('a', 2.0, 0.0), ('c', 2.0, 1.0)]
    """

    __slots__ = ("_heap", "_held", "_k", "_total")

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer in 1..{MAX_K}, not {k!r}")
        self._k = k
        self._total = 0.0
        #: item -> [count, error]
        self._held: dict[str, list[float]] = {}
        #: One (count, item) per held item; its count may be below the item's (an add
        #: to a held item leaves it), and is brought up to date when it comes to the top.
        self._heap: list[tuple[float, str]] = []

    @property
    def k(self) -> int:
        """The most items held."""
        return self._k

    @property
    def total(self) -> float:
        """The sum of the weights added, merged summaries' included."""
        return self._total

    def __len__(self) -> int:
        return len(self._held)

    def add(self, item: str, weight: float = 1.0) -> None:
        """Count ``weight`` (finite, > 0) more for ``item`` (at most 1,024 characters)."""
        if not 0.0 < weight < math.inf:
            raise ValueError(f"weight must be finite and > 0, not {weight!r}")
        total = self._total + weight
        if total == math.inf:
            raise ValueError("the total of the weights is no longer finite")
        held = self._held.get(item)
        if held is not None:
            held[0] += weight
            self._total = total
            return
        _check_item(item)
        self._total = total
        if len(self._held) < self._k:
            self._held[item] = [float(weight), 0.0]
            heapq.heappush(self._heap, (float(weight), item))
            return
        # The held item of least count (least item on a tie) leaves; the heap's top is
        # brought up to date until it is that item.
        heap = self._heap
        least, victim = heap[0]
        while (current := self._held[victim][0]) != least:
            heapq.heapreplace(heap, (current, victim))
            least, victim = heap[0]
        del self._held[victim]
        self._held[item] = [least + weight, least]
        heapq.heapreplace(heap, (least + weight, item))

    def top(self, n: int | None = None) -> list[Counted]:
        """The ``n`` (all when None) items of largest count, then least item first."""
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        ranked = sorted(self._held.items(), key=lambda pair: (-pair[1][0], pair[0]))
        return [Counted(item, c, e) for item, (c, e) in ranked[:n]]

    def floor(self) -> float:
        """The most an item not held may have been counted: the least count once ``k``
        items are held, else 0 (below ``k``, every item ever added is held)."""
        if len(self._held) < self._k:
            return 0.0
        return min(count for count, _ in self._held.values())

    def encode(self) -> bytes:
        """Compact JSON, ``{"k":..,"total":..,"items":[[item,count,error],..]}``."""
        items = [[c.item, c.count, c.error] for c in self.top()]
        document = {"k": self._k, "total": self._total, "items": items}
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> SpaceSaving:
        """The summary ``encode`` gave; ``ValueError`` naming what is wrong otherwise."""
        try:
            document = json.loads(data, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as problem:
            raise ValueError(f"top-k summary is not JSON: {problem}") from None
        if not isinstance(document, dict) or set(document) != {"k", "total", "items"}:
            raise ValueError('top-k summary must be an object of "k", "total" and "items"')
        k = document["k"]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"top-k summary's k must be an integer in 1..{MAX_K}")
        summary = cls(k)
        summary._total = _number(document["total"], "total")
        items = document["items"]
        if not isinstance(items, list) or len(items) > k:
            raise ValueError(f"top-k summary's items must be a list of at most k={k}")
        for entry in items:
            if not isinstance(entry, list) or len(entry) != 3:
                raise ValueError("top-k summary's items must be [item, count, error]")
            item, count, error = entry
            if not isinstance(item, str):
                raise ValueError("top-k summary's items must be strings")
            _check_item(item)
            count = _number(count, "count")
            error = _number(error, "error")
            if error > count:
                raise ValueError(f"top-k summary's error {error} is above its count {count}")
            if item in summary._held:
                raise ValueError(f"top-k summary holds {item[:64]!r} twice")
            summary._held[item] = [count, error]
            summary._heap.append((count, item))
        heapq.heapify(summary._heap)
        counts = math.fsum(count for count, _ in summary._held.values())
        if counts > summary._total * (1 + _ROUNDING):
            raise ValueError(f"top-k summary's counts sum to {counts}, above its total")
        errors = max((error for _, error in summary._held.values()), default=0.0)
        if errors > summary.floor():
            raise ValueError(
                "top-k summary has an error above its least count"
                if len(summary) == k
                else "top-k summary has an error while holding fewer than k items"
            )
        return summary


def merge(summaries: Iterable[SpaceSaving], k: int) -> SpaceSaving:
    """One summary of ``k`` items of the streams of all ``summaries``, each of which must
    have a ``k`` at least as large (a summary of fewer items cannot bound the rest)."""
    parts = list(summaries)
    result = SpaceSaving(k)
    for part in parts:
        if part.k < k:
            raise ValueError(f"cannot merge a summary of k={part.k} into k={k}")
    floors = [part.floor() for part in parts]
    everywhere = math.fsum(floors)
    # item -> [sum of (count - floor), sum of (error - floor)] over the parts holding it:
    # the first is >= 0 and the second <= 0, so an error is never above any count.
    above: dict[str, list[float]] = {}
    for part, floor in zip(parts, floors, strict=True):
        for item, (count, error) in part._held.items():
            sums = above.setdefault(item, [0.0, 0.0])
            sums[0] += count - floor
            sums[1] += error - floor
    kept = heapq.nsmallest(k, above.items(), key=lambda pair: (-pair[1][0], pair[0]))
    for item, (count, error) in kept:
        merged = everywhere + count
        result._held[item] = [merged, max(0.0, everywhere + error)]
        result._heap.append((merged, item))
    heapq.heapify(result._heap)
    result._total = math.fsum(part.total for part in parts)
    return result


def _check_item(item: str) -> None:
    if len(item) > MAX_ITEM:
        raise ValueError(f"a top-k item is at most {MAX_ITEM} characters, not {len(item)}")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"top-k summary's {name} must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the floats
        number = math.inf
    if not 0.0 <= number < math.inf:
        raise ValueError(f"top-k summary's {name} must be finite and >= 0, not {number!r}")
    return number


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")
