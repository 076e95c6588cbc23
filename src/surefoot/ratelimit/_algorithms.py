"""Rate-limit algorithms as pure functions: ``(state, now, cost, limit) -> (decision, state)``.

No I/O, no clock: ``now`` is a parameter and states are plain tuples that any store can
keep (JSON in SQLite, a hash in Redis). ``None`` is the state of a key never seen (or
expired). Every decision says whether the request is allowed, how much is left, when more
becomes available (``available_after``: ``RateLimit``'s ``t``), when the limit is back to
full (``reset_after``) and, when refused, when this very request would be allowed
(``retry_after``; ``inf`` if its cost exceeds what the limit can ever admit).

Burst at window edges, per algorithm (``A`` = amount, ``W`` = window, ``B`` = burst):

=============== ===========================================================================
fixed_window    counts per aligned window; up to 2A in any W straddling a boundary
sliding_log     exact: at most A in any W; a log of at most A entries, O(log A) a decision
sliding_window  weighted previous + current window; at most 2A in any W in the worst
                case (all of the previous window's traffic at its very end), close to A
                for smooth traffic
token_bucket    at most B + A*T/W in any span T; refills continuously
leaky_bucket    (meter) the mirror image of the token bucket: the same bound
leaky_queue     no burst: requests are spaced W/A apart, delayed up to ``max_wait``
gcra            the token bucket's bound, with one timestamp of state
concurrency     at most A in flight at any moment; slots return on release or lease expiry
quota           fixed window on calendar days or months of a time zone; 2A across midnight
                (a 23-hour daylight-saving day is shorter: 3A can fit in 23 h 01 min)
=============== ===========================================================================

Rule 1: a refused request changes no state (it is not counted), except where time alone
        moved the state forward (which changes no decision).
Rule 2: ``remaining`` is never negative and ``retry_after`` is 0 exactly when allowed.
Rule 3: ``expires_at(state, limit)`` is when the state becomes equivalent to ``None``, so
        stores may forget the key then.
Rule 4: ``available_after`` is 0 exactly when ``remaining`` cannot grow (nothing is used),
        else the least wait after which, with no request meanwhile, ``remaining`` is
        larger: a client that waits it can spend one unit more. It is measured on the
        state the decision leaves (this request charged if allowed), and is at most the
        window: a window's end, the oldest entry leaving, one unit refilled or leaked
        (W/A). The exceptions are a ``leaky_queue`` that queued a request costing more
        than A (its units drain for longer than W) and a calendar ``quota`` (its period,
        not the nominal window: a 31-day month). ``concurrency`` says 0: a slot frees when
        a response ends, which no clock predicts.
Rule 5: ``sliding_window`` forgets its counts once nothing was admitted for a whole window
        (every request it counted has left the last W, whatever the weighting supposes),
        so that a burst at a window's start frees up W later, not up to W + W/A later.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import lru_cache, partial
from operator import attrgetter
from typing import Any, ClassVar, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from surefoot.errors import ConfigurationError
from surefoot.ratelimit._limit import Limit

__all__ = [
    "ALGORITHM_BY_NAME",
    "Algorithm",
    "Concurrency",
    "ListLog",
    "Log",
    "LogEntry",
    "RateLimitDecision",
    "quota_period",
    "uncharged",
]

INF = math.inf
# Float slack: a bucket refilled to 0.9999999999 tokens holds one token.
_EPS = 1e-9


def _slack(now: float, steps: int) -> float:
    """Rounding slack for a timestamp advanced ``steps`` times by a step that is not a
    binary fraction: near 1.7e9 a float is only precise to ~2.4e-7 s, and each step can
    round the same way, so the error grows with the number of steps."""
    return (steps + 2) * math.ulp(now) + _EPS


class RateLimitDecision(NamedTuple):
    """The answer of one limit for one request (immutable; a named tuple because one is
    built per limit per request, and a frozen dataclass costs several times more)."""

    allowed: bool
    remaining: int
    reset_after: float
    retry_after: float
    #: ``leaky_queue`` only: how long the request must wait before it proceeds.
    delay: float = 0.0
    #: Seconds until ``remaining`` grows, with no request meanwhile; 0 when it cannot
    #: (nothing used). What ``RateLimit``'s ``t`` reports (Rule 4).
    available_after: float = 0.0


# RateLimitDecision((allowed, remaining, reset_after, retry_after, delay, available_after)),
# every field given: a named tuple's own __new__ is a Python call, and a decision is the
# hot path of every request (one in ten of its instructions went there).
_decision = partial(tuple.__new__, RateLimitDecision)

CounterState = Any  # a tuple of numbers (and strings for concurrency), or None


class Algorithm(Protocol):
    name: ClassVar[str]

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]: ...

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float: ...


def _count_in(
    state: CounterState, start: float, end: float, now: float, cost: int, limit: Limit
) -> tuple[RateLimitDecision, int]:
    """A counter over the aligned period [start, end): fixed windows and quotas."""
    count = state[1] if state is not None and state[0] == start else 0
    reset = end - now
    if count + cost <= limit.amount:
        left = limit.amount - count - cost
        return _decision((True, left, reset, 0.0, 0.0, reset)), count + cost
    retry = reset if cost <= limit.amount else INF
    # Nothing counted (only a cost above the amount was refused): nothing to come back.
    available = reset if count else 0.0
    return _decision((False, limit.amount - count, reset, retry, 0.0, available)), count


class FixedWindow:
    name = "fixed_window"

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]:
        start = now - now % limit.window
        decision, count = _count_in(state, start, start + limit.window, now, cost, limit)
        return decision, (start, count)

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float:
        return float(state[0] + limit.window)


class LogEntry(NamedTuple):
    """One admission of a sliding log: its time, the running total of cost admitted
    under the key up to and including it, and its own cost."""

    time: float
    total: int
    cost: int


class Log(Protocol):
    """A sliding log as a store keeps it: entries oldest first, times never decreasing,
    totals strictly increasing (every cost is at least 1). Each lookup costs O(log n)
    or less, so a decision never walks or copies the whole log."""

    def oldest_after(self, horizon: float) -> LogEntry | None:
        """The oldest entry later than ``horizon``, if any."""

    def newest(self) -> LogEntry | None:
        """The newest entry, live or not."""

    def reaching(self, total: int) -> LogEntry:
        """The oldest entry whose running total is at least ``total`` (there is one)."""

    def appended(self, entry: LogEntry, oldest: LogEntry | None) -> Log:
        """The log with ``entry`` added: a new state, which a store commits or drops.
        Entries older than ``oldest`` (all of them if ``None``) may be forgotten."""


class ListLog:
    """The in-memory ``Log``: ``entries[start:end]``, then ``pending`` if any.

    Successive states of one key share one list. ``appended`` touches no list: it
    returns a state holding the new entry as ``pending``, so a state a store drops
    (its request was refused by another limit) leaves nothing behind. Reading a
    state first moves its pending entry into the list: at the list's end when that
    is where the state ends (the usual case: it is the state the store kept), a
    no-op when another reading of the same state did it already, and into a copy
    of the live entries when the list has grown another way (a state decided from
    twice, as tests do). The entries before ``start`` are dropped once they
    outnumber the rest, so a key holds at most about twice its live entries (at
    most ``amount``, every cost being at least 1) plus 32.
    """

    __slots__ = ("_end", "_entries", "_found", "_pending", "_start")

    def __init__(
        self,
        entries: list[LogEntry] | None = None,
        start: int = 0,
        end: int | None = None,
        pending: LogEntry | None = None,
    ) -> None:
        self._entries = [] if entries is None else entries
        self._start = start
        self._end = len(self._entries) if end is None else end
        self._pending = pending
        self._found = -1  # where oldest_after found its entry last

    def _settle(self) -> list[LogEntry]:
        entries, end, pending = self._entries, self._end, self._pending
        if pending is not None:
            if len(entries) == end:
                entries.append(pending)
            elif entries[end] != pending:
                entries = self._entries = [*entries[self._start : end], pending]
                self._start, end = 0, end - self._start
            self._end, self._pending = end + 1, None
        if self._start > 32 and 2 * self._start > self._end:
            entries = self._entries = entries[self._start : self._end]
            self._start, self._end = 0, len(entries)
        return entries

    def oldest_after(self, horizon: float) -> LogEntry | None:
        entries = self._settle()
        i = self._found = bisect_right(entries, horizon, self._start, self._end, key=_time)
        return entries[i] if i < self._end else None

    def newest(self) -> LogEntry | None:
        if self._pending is not None:
            return self._pending
        return self._entries[self._end - 1] if self._end else None

    def reaching(self, total: int) -> LogEntry:
        entries = self._settle()
        return entries[bisect_left(entries, total, self._start, self._end, key=_total)]

    def appended(self, entry: LogEntry, oldest: LogEntry | None) -> ListLog:
        entries = self._settle()
        if oldest is None:
            start = self._end
        elif 0 <= self._found < self._end and entries[self._found] is oldest:
            start = self._found  # decide's case: no second search
        else:
            start = bisect_left(entries, oldest.total, self._start, self._end, key=_total)
        return ListLog(entries, start, self._end, entry)

    @property
    def held(self) -> int:
        """Entries this state keeps in memory, live or not (its pending one included)."""
        return len(self._settle()) - self._start

    def __iter__(self) -> Iterator[LogEntry]:
        entries = self._settle()
        return iter(entries[self._start : self._end])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ListLog) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ListLog({list(self)!r})"


_entry = partial(tuple.__new__, LogEntry)  # as _decision: LogEntry((time, total, cost))
_time = attrgetter("time")
_total = attrgetter("total")


class SlidingLog:
    """Exact: the cost admitted in ``(now - W, now]``, from a log of admissions.

    An admission is logged at ``now``, or at the newest entry's time if that is later
    (a caller's clock that stepped back), so times never decrease and every lookup is
    a binary search (``Log``). The state is a ``Log`` (``ListLog`` in memory; the SQL
    stores keep a table of entries, Redis a sorted set).
    """

    name = "sliding_log"

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]:
        log: Log = ListLog() if state is None else state
        window = limit.window
        oldest = log.oldest_after(now - window)
        newest = log.newest()
        used = 0 if oldest is None or newest is None else newest.total - oldest.total + oldest.cost
        if used + cost <= limit.amount:
            at = now if newest is None or newest.time < now else newest.time
            entry = _entry((at, (0 if newest is None else newest.total) + cost, cost))
            # More is available when the oldest entry leaves the window.
            first = entry if oldest is None else oldest
            reset = window if at == now else at + window - now
            available = first.time + window - now
            decision = _decision((True, limit.amount - used - cost, reset, 0.0, 0.0, available))
            # A request that costs nothing (a read of the limit) leaves no entry.
            return decision, log.appended(entry, oldest) if cost else log
        if oldest is None or newest is None:  # nothing live: the cost exceeds the amount
            return _decision((False, limit.amount, 0.0, INF, 0.0, 0.0)), log
        reset = newest.time + window - now
        available = oldest.time + window - now
        if cost > limit.amount:
            retry = INF
        else:
            # Wait until enough of the oldest entries leave the window.
            excess = used + cost - limit.amount
            retry = log.reaching(oldest.total - oldest.cost + excess).time + window - now
        return _decision((False, limit.amount - used, reset, retry, 0.0, available)), log

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float:
        newest = None if state is None else state.newest()
        return 0.0 if newest is None else float(newest.time + limit.window)


class SlidingWindow:
    name = "sliding_window"

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]:
        window, amount = limit.window, limit.amount
        start = now - now % window
        # state: (window start, previous count, current count, last admission). A state
        # kept by an older surefoot has no last admission: its window's end bounds it.
        prev = curr = 0
        last = -INF  # the last admission that still counts (Rule 5)
        if state is not None:
            seen = state[3] if len(state) > 3 else state[0] + window
            if seen + window > now:
                if state[0] == start:
                    prev, curr, last = state[1], state[2], seen
                elif state[0] == start - window:
                    prev, last = state[2], seen
        weight = 1.0 - (now - start) / window
        estimate = prev * weight + curr
        if estimate + cost <= amount + _EPS:
            left = max(0, math.floor(amount - estimate - cost + _EPS))
            last = max(last, now)
            # Nothing this request joins counts once a window has passed since the last
            # admission (Rule 5): back to full then.
            quiet = last + window
            available = _sliding_available(prev, curr + cost, left, start, quiet, now, limit)
            decision = _decision((True, left, quiet - now, 0.0, 0.0, available))
            return decision, (start, prev, curr + cost, last)
        left = max(0, math.floor(amount - estimate + _EPS))
        if last == -INF:
            # Nothing counts: only a cost above the amount is refused, for good.
            return _decision((False, left, 0.0, INF, 0.0, 0.0)), None
        quiet = last + window
        if cost > amount:
            retry = INF
        else:
            if curr + cost <= amount:
                # Within this window, once enough of the previous window has slid out.
                at = start + window * (1.0 - (amount - curr - cost) / prev)
            else:
                # Next window: the current count becomes the weighted previous one.
                at = start + window + window * (1.0 - (amount - cost) / curr)
            retry = max(min(at, quiet) - now, _EPS)
        available = _sliding_available(prev, curr, left, start, quiet, now, limit)
        decision = _decision((False, left, quiet - now, retry, 0.0, available))
        return decision, (start, prev, curr, last)

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float:
        return float(state[3] + limit.window)


def _sliding_available(
    prev: int, curr: int, left: int, start: float, quiet: float, now: float, limit: Limit
) -> float:
    """When a sliding window leaving ``left`` units has one more: its estimate has dropped
    to ``amount - left - 1`` (or nothing counts any more, at ``quiet``)."""
    window, amount = limit.window, limit.amount
    if left >= amount:
        return 0.0
    target = amount - left - 1
    if curr <= target:
        # Within this window, once enough of the previous window has slid out.
        at = start + window * (1.0 - (target - curr) / prev)
    else:
        # Next window, as the current count (then the previous one) slides out.
        at = start + window + window * (1.0 - target / curr)
    return max(min(at, quiet) - now, _EPS)


class TokenBucket:
    name = "token_bucket"

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]:
        capacity = limit.capacity
        rate = limit.amount / limit.window
        if state is None:
            tokens = float(capacity)
        else:
            tokens = state[0] + (now - state[1]) * rate
            if tokens >= capacity - rate * _slack(now, 2):
                tokens = float(capacity)  # full: exactly as a fresh key, whatever the rounding
        allowed = tokens + _EPS >= cost
        if allowed:
            tokens = max(0.0, tokens - cost)
            retry = 0.0
        else:
            retry = (cost - tokens) / rate if cost <= capacity else INF
        left = math.floor(tokens + _EPS)
        reset = (capacity - tokens) / rate
        # One whole token more: the next unit refilled.
        available = 0.0 if left >= capacity else (left + 1 - tokens) / rate
        return _decision((allowed, left, reset, retry, 0.0, available)), (tokens, now)

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float:
        rate = limit.amount / limit.window
        return float(state[1] + (limit.capacity - state[0]) / rate)


class LeakyBucket:
    name = "leaky_bucket"

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]:
        capacity = limit.capacity
        rate = limit.amount / limit.window
        level = 0.0 if state is None else state[0] - (now - state[1]) * rate
        if level <= rate * _slack(now, 2):
            level = 0.0  # empty: exactly as a fresh key, whatever the rounding
        allowed = level + cost <= capacity + _EPS
        if allowed:
            level = min(float(capacity), level + cost)
            retry = 0.0
        else:
            retry = (level + cost - capacity) / rate if cost <= capacity else INF
        left = math.floor(capacity - level + _EPS)
        # Room for one more: the next unit leaked.
        available = 0.0 if left >= capacity else (level - (capacity - left - 1)) / rate
        return _decision((allowed, left, level / rate, retry, 0.0, available)), (level, now)

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float:
        return float(state[1] + state[0] / (limit.amount / limit.window))


class LeakyQueue:
    name = "leaky_queue"

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]:
        interval = limit.window / limit.amount
        # state: (the time the queue is free again,)
        start = now if state is None else max(now, state[0])
        delay = start - now
        slack = _slack(now, math.ceil(limit.max_wait / interval) + cost)
        if delay <= limit.max_wait + slack:
            free_at = start + cost * interval
            left = max(0, math.floor((limit.max_wait - (free_at - now) + slack) / interval) + 1)
            # One more fits once the queue has moved on by one interval past the last that
            # fits (a queue that just took a request is never empty: never 0).
            available = free_at - now - limit.max_wait + left * interval
            decision = _decision((True, left, free_at - now, 0.0, delay, available))
            return decision, (free_at,)
        retry = delay - limit.max_wait
        return _decision((False, 0, start - now, retry, 0.0, retry)), (start,)

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float:
        return float(state[0])


class Gcra:
    name = "gcra"

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]:
        interval = limit.window / limit.amount
        tolerance = interval * limit.capacity
        tat = now if state is None else max(state[0], now)
        new_tat = tat + cost * interval
        allow_at = new_tat - tolerance
        slack = _slack(now, limit.capacity + cost)
        allowed = now + slack >= allow_at
        if allowed:
            tat, retry = new_tat, 0.0
        else:
            retry = allow_at - now if cost <= limit.capacity else INF
        left = max(0, math.floor((tolerance - (tat - now) + slack) / interval))
        # One more unit once the theoretical arrival time is an interval closer.
        available = 0.0 if left >= limit.capacity else tat - tolerance + (left + 1) * interval - now
        return _decision((allowed, left, tat - now, retry, 0.0, available)), (tat,)

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float:
        return float(state[0])


class Quota:
    name = "quota"

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit
    ) -> tuple[RateLimitDecision, CounterState]:
        start, end = quota_period(now, limit.period or "day", limit.timezone)
        decision, count = _count_in(state, start, end, now, cost, limit)
        return decision, (start, count, end)

    @staticmethod
    def expires_at(state: CounterState, limit: Limit) -> float:
        return float(state[2])


class Concurrency:
    """In-flight requests: ``acquire`` takes ``cost`` slots under a token, ``release`` frees them.

    Its state: a flat tuple ``(token1, expires1, cost1, token2, ...)``; a slot whose lease has
    expired (its worker crashed) is free again.
    """

    name = "concurrency"
    #: Suggested wait when full: the time a slot frees is unknown.
    RETRY_AFTER = 1.0

    @staticmethod
    def decide(
        state: CounterState, now: float, cost: int, limit: Limit, token: str = ""
    ) -> tuple[RateLimitDecision, CounterState]:
        held = Concurrency._live(state, now)
        used = sum(held[2::3])
        if used + cost <= limit.amount:
            new = (*held, token, now + limit.lease, cost)
            return _decision((True, limit.amount - used - cost, 0.0, 0.0, 0.0, 0.0)), new
        retry = Concurrency.RETRY_AFTER if cost <= limit.amount else INF
        return _decision((False, limit.amount - used, 0.0, retry, 0.0, 0.0)), held

    @staticmethod
    def release(state: CounterState, token: str, now: float) -> CounterState:
        held = Concurrency._live(state, now)
        out: tuple[Any, ...] = ()
        for i in range(0, len(held), 3):
            if held[i] != token:
                out += held[i : i + 3]
        return out or None

    @staticmethod
    def expires_at(state: CounterState, limit: Limit | None = None) -> float:
        return float(max(state[1::3])) if state else 0.0

    @staticmethod
    def _live(state: CounterState, now: float) -> tuple[Any, ...]:
        if not state:
            return ()
        out: tuple[Any, ...] = ()
        for i in range(0, len(state), 3):
            if state[i + 1] > now:
                out += tuple(state[i : i + 3])
        return out


ALGORITHM_BY_NAME: dict[str, Any] = {
    cls.name: cls
    for cls in (
        FixedWindow,
        SlidingLog,
        SlidingWindow,
        TokenBucket,
        LeakyBucket,
        LeakyQueue,
        Gcra,
        Concurrency,
        Quota,
    )
}


def uncharged(decision: RateLimitDecision, cost: int, limit: Limit) -> RateLimitDecision:
    """An allowed decision as it reads when another limit refused its request, which then
    charges nothing: ``cost`` more units remain, and none come back if none are used.

    Its ``available_after`` is otherwise the charged state's, which is never sooner than
    the uncharged one's for a window, a log or a bucket (the charge does not move what frees
    the next unit), so a client that waits it still finds more. A sliding window is the
    exception: the more its estimate holds, the sooner one unit frees, so the charged state
    frees one early. Its honest bound without the uncharged state is the window (Rule 5:
    nothing counts once a window has passed since the last admission, and this request
    was not admitted).
    """
    remaining = decision.remaining + cost
    if limit.algorithm == "leaky_queue":
        full = decision.delay == 0.0  # the request found the queue empty
    else:
        buckets = ("token_bucket", "leaky_bucket", "gcra")
        full = remaining >= (limit.capacity if limit.algorithm in buckets else limit.amount)
    if full:
        available = 0.0
    elif limit.algorithm == "sliding_window":
        available = limit.window
    else:
        available = decision.available_after
    return decision._replace(remaining=remaining, available_after=available)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"Limit.timezone: expected an IANA time zone such as 'Europe/Paris', got {name!r}"
        ) from None


_period_cache: dict[tuple[str, str], tuple[float, float]] = {}


def quota_period(now: float, period: str, timezone: str) -> tuple[float, float]:
    """The (start, end) epoch seconds of the calendar day or month containing ``now``."""
    cached = _period_cache.get((period, timezone))
    if cached is not None and cached[0] <= now < cached[1]:
        return cached
    bounds = _period_bounds(now, period, _zone(timezone))
    if now < bounds[0]:
        # ``fromtimestamp`` rounds to the microsecond: an instant a hair before midnight
        # came out as midnight, in the next period. A period lasts 23 hours or more, so a
        # second before that one's start is in the period that holds ``now``.
        bounds = _period_bounds(bounds[0] - 1.0, period, _zone(timezone))
    _period_cache[(period, timezone)] = bounds
    return bounds


def _period_bounds(now: float, period: str, zone: ZoneInfo) -> tuple[float, float]:
    local = datetime.fromtimestamp(now, zone)
    if period == "day":
        first = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
        following = (first + timedelta(days=1)).replace(tzinfo=None)
    else:
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0, fold=0)
        year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
        following = first.replace(year=year, month=month, tzinfo=None)
    # Re-attach the zone so each boundary gets its own UTC offset (DST changes).
    return (
        first.replace(tzinfo=None).replace(tzinfo=zone).timestamp(),
        following.replace(tzinfo=zone).timestamp(),
    )
