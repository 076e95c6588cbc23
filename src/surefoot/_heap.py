"""The cyclic garbage collector of a server process (``surefoot serve``, ``surefoot
decide``).

A request leaves almost no cyclic garbage: what it allocates is freed by reference
counting as it ends. Yet with Python's threshold (a collection of the youngest generation
every 700 net allocations of container objects), the requests under way set collections
off all the time, and one in a hundred is a collection of the whole heap (modules,
configuration, app: about 80,000 objects, 50 to 60 ms each). Measured under wrk
(``bench/gc_collections.py``, docs/performance.md), the collector took about 5 us per
decision of ``surefoot decide`` and 23 to 30 us per request of ``surefoot serve``; at
``GC_THRESHOLD`` it did not run once in a 10-second run of either.

The cost of the threshold: cyclic garbage, where there is some, waits for up to
``GC_THRESHOLD`` net allocations before it is freed.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLD", "collect_less_often"]

#: Net allocations between two collections of the youngest generation (Python's: 700).
GC_THRESHOLD = 10_000


def collect_less_often() -> None:
    """Collect the youngest generation after ``GC_THRESHOLD`` net allocations; the older
    generations' thresholds are unchanged."""
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
