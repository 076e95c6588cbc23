"""Hypothesis: every algorithm against a brute-force reference model.

A reference keeps nothing but the history of admitted ``(time, cost)`` and recomputes
each decision from it, in exact rationals, with formulas written apart from the
implementation's:

- fixed_window: the cost admitted in the aligned window ``floor(t / W)``;
- sliding_log: the cost admitted in ``(now - W, now]``;
- sliding_window: the previous aligned window's cost, weighted by how much of it the
  last ``W`` still overlaps, plus the current window's, counting only the admissions
  since the last pause of a whole ``W`` without any (none while such a pause lasts);
- token_bucket, leaky_bucket, gcra (one system, seen as tokens, a level or a theoretical
  arrival time): the level as Reich's formula gives it from the history,
  ``max(0, max over admitted s of (cost admitted at or after s) - rate * (now - s))``;
  room for ``cost`` while ``level + cost <= B``;
- leaky_queue: the time the queue is free, unrolled from the history,
  ``max(now, max over admitted j of (t_j + W/A * cost admitted from j on))``;
- quota: the cost admitted on the same calendar day (month), read with ``zoneinfo``;
- concurrency: the slots acquired, neither released nor past their lease.

Properties, for each request of a random sequence (times non-decreasing, with bursts at
identical times; costs mostly 1..3, sometimes above capacity), the implementation threading
its own state:

1. ``allowed`` and ``remaining`` equal the reference's;
2. ``retry_after == 0`` exactly when allowed, ``inf`` exactly when the cost is above what
   the limit can ever admit;
3. ``remaining`` is what it says: that many more unit requests at the same instant are
   allowed, and the next one is not;
4. refused with a finite ``retry_after``: from the same state, the same request is
   allowed at ``now + retry_after`` and refused at ``now + retry_after - EARLY * W``;
5. at ``now + reset_after`` and at ``expires_at(state)`` the state decides like a key
   never seen (the limit is back to full, the store may forget it);
6. Rule 1: a refused request changes no later decision;
7. the documented bound: the admitted cost in any window ``[s, s + W)`` starting at an
   admitted request is at most A (sliding_log) or 2A (fixed_window, sliding_window); in
   any span ``[s, t]`` at most ``B + A * (t - s) / W`` (buckets, gcra); leaky_queue starts
   requests at least ``W/A`` per unit of cost apart, never after ``max_wait``; a quota's
   cost in any span shorter than its shortest period is at most 2A; at most A in flight;
8. ``available_after`` (``RateLimit``'s ``t``), asked of the reference over the history
   the decision leaves: 0 exactly when the remaining units can never grow; else they
   have grown at ``now + available_after`` and not yet at ``now + available_after -
   EARLY * W``; and it is at most W (a leaky_queue that queued a request costing more
   than A: that request's cost in intervals; a quota: the period's end).

Float slack, and why it is safe:

- Request times are multiples of ``W / 32`` from 0 or from a whole epoch second (quota:
  multiples of 450 s or 6 h from a whole second), so each is exact as a float and as a
  ``Fraction``. With ``A <= 7``, ``B <= 9`` and ``max_wait`` a multiple of ``W / 8`` or of
  ``W / A`` (the reference recovers the intended rational from the float with
  ``limit_denominator``), every quantity compared with a limit (a count, a weighted
  estimate, a level, a queue delay, a number of intervals) is a multiple of at least
  ``1 / 224`` of a unit or of a second, unless it is exactly on the limit. The
  implementation's own slack (1e-9, or a few float steps at epoch times: ~1e-5 s)
  therefore only ever decides exact ties, which the references decide as allowed
  (``<=``), like the implementation.
- ``PROBE * W`` (1e-5 W) is how far past ``now + retry_after``, ``now + reset_after`` and
  ``expires_at`` a probe is made, and the tolerance on compared durations: above float
  rounding (sequences start at 0 or at an epoch time near 1.8e9, where floats are 2.4e-7 s
  apart, so PROBE is at least 40 of those steps), far below anything else that could
  change a decision.
- ``EARLY * W`` (1e-3 W): how much earlier than ``retry_after`` the request must still be
  refused. By then every limit is at least 1e-3 units away from admitting it.
- ``BOUND_SLACK`` (1e-6 cost units): a bucket admits when the level is within 1e-9 of
  room, so 40 admissions can exceed the exact bound by at most 4e-8.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.ratelimit._algorithms import (
    ALGORITHM_BY_NAME,
    Concurrency,
    RateLimitDecision,
    quota_period,
)
from surefoot.ratelimit._limit import Limit

Q = Fraction
GRID = 32  # request times are multiples of W / GRID
PROBE = 1e-5
EARLY = 1e-3
BOUND_SLACK = 1e-6
PROPERTY = settings(max_examples=200, deadline=None)
EPOCH = Q(1_776_000_000)  # April 2026: real clocks give times this large

BUCKETS = ("token_bucket", "leaky_bucket", "gcra")
WINDOWED = ("fixed_window", "sliding_log", "sliding_window")

History = list[tuple[Q, int]]  # admitted (time, cost), in order
# (limit, history, now, cost) -> (allowed, remaining, delay)
Reference = Callable[[Limit, History, Q, int], tuple[bool, int, Q]]


# --------------------------------------------------------------------------- references


def verdict(room: Q | int, cost: int) -> tuple[bool, int, Q]:
    """Allowed when ``cost`` fits in ``room``; remaining: whole units left after."""
    allowed = cost <= room
    return allowed, max(0, math.floor(room - (cost if allowed else 0))), Q(0)


def fixed_window(limit: Limit, history: History, now: Q, cost: int) -> tuple[bool, int, Q]:
    w = Q(limit.window)
    here = math.floor(now / w)
    used = sum(c for t, c in history if math.floor(t / w) == here)
    return verdict(limit.amount - used, cost)


def sliding_log(limit: Limit, history: History, now: Q, cost: int) -> tuple[bool, int, Q]:
    used = sum(c for t, c in history if t > now - Q(limit.window))
    return verdict(limit.amount - used, cost)


def sliding_window(limit: Limit, history: History, now: Q, cost: int) -> tuple[bool, int, Q]:
    w = Q(limit.window)
    session: History = []
    for t, c in history:
        if session and t - session[-1][0] >= w:
            session = []  # a whole window without an admission: every count has left
        session.append((t, c))
    if session and now - session[-1][0] >= w:
        session = []
    here = math.floor(now / w)
    previous = sum(c for t, c in session if math.floor(t / w) == here - 1)
    current = sum(c for t, c in session if math.floor(t / w) == here)
    overlap = 1 - (now - here * w) / w  # share of the previous window still in (now - W, now]
    return verdict(limit.amount - previous * overlap - current, cost)


def bucket_level(limit: Limit, history: History, now: Q) -> Q:
    rate = Q(limit.amount) / Q(limit.window)
    level, since = Q(0), 0
    for t, c in reversed(history):
        since += c
        level = max(level, since - rate * (now - t))
    return level


def bucket(limit: Limit, history: History, now: Q, cost: int) -> tuple[bool, int, Q]:
    return verdict(limit.capacity - bucket_level(limit, history, now), cost)


def queue_free_at(limit: Limit, history: History, now: Q) -> Q:
    interval = Q(limit.window) / limit.amount
    free, since = now, 0
    for t, c in reversed(history):
        since += c
        free = max(free, t + interval * since)
    return free


def intended(seconds: float) -> Q:
    """The rational a float stands for: ``1 / 3`` for ``0.333...``, ``5 / 8`` for 0.625."""
    return Q(seconds).limit_denominator(10_000)


def leaky_queue(limit: Limit, history: History, now: Q, cost: int) -> tuple[bool, int, Q]:
    interval = Q(limit.window) / limit.amount
    max_wait = intended(limit.max_wait)
    delay = queue_free_at(limit, history, now) - now
    if delay > max_wait:
        return False, 0, Q(0)
    # How many unit requests could still be queued: the k-th waits wait_after + k - 1 units.
    wait_after = delay + cost * interval
    return True, max(0, math.floor((max_wait - wait_after) / interval) + 1), delay


def calendar(limit: Limit, t: float) -> tuple[int, ...]:
    local = datetime.fromtimestamp(t, ZoneInfo(limit.timezone))
    return (
        (local.year, local.month, local.day) if limit.period == "day" else (local.year, local.month)
    )


def quota(limit: Limit, history: History, now: Q, cost: int) -> tuple[bool, int, Q]:
    here = calendar(limit, float(now))
    used = sum(c for t, c in history if calendar(limit, float(t)) == here)
    return verdict(limit.amount - used, cost)


REFERENCES: dict[str, Reference] = {
    "fixed_window": fixed_window,
    "sliding_log": sliding_log,
    "sliding_window": sliding_window,
    "token_bucket": bucket,
    "leaky_bucket": bucket,
    "gcra": bucket,
    "leaky_queue": leaky_queue,
    "quota": quota,
}


# --------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Admitted:
    at: Q
    cost: int
    delay: float


def most_in_windows(admitted: list[Admitted], length: Q) -> int:
    """The largest cost admitted in any ``[s, s + length)`` starting at an admitted time."""
    return max(sum(b.cost for b in admitted if a.at <= b.at < a.at + length) for a in admitted)


def check_bound(algorithm: str, limit: Limit, admitted: list[Admitted]) -> None:
    if not admitted:
        return
    w, amount = Q(limit.window), limit.amount
    if algorithm == "sliding_log":
        assert most_in_windows(admitted, w) <= amount
    elif algorithm in ("fixed_window", "sliding_window"):
        assert most_in_windows(admitted, w) <= 2 * amount
    elif algorithm in BUCKETS:
        rate = Q(amount) / w
        for i, first in enumerate(admitted):
            total = 0
            for last in admitted[i:]:
                total += last.cost
                assert total <= limit.capacity + rate * (last.at - first.at) + BOUND_SLACK
    elif algorithm == "leaky_queue":
        interval = limit.window / amount
        for a, b in itertools.pairwise(admitted):
            gap = float(b.at) + b.delay - (float(a.at) + a.delay)
            assert gap >= a.cost * interval - PROBE * limit.window
        assert all(0 <= a.delay <= limit.max_wait + PROBE * limit.window for a in admitted)


# --------------------------------------------------------------------------- driver


def capacity(algorithm: str, limit: Limit) -> float:
    if algorithm == "leaky_queue":
        return math.inf  # any cost is queued, provided the wait is short enough
    return limit.capacity if algorithm in BUCKETS else limit.amount


def same_as_fresh(algo: Any, state: Any, at: float, limit: Limit) -> bool:
    """At ``at``, ``state`` decides a unit request like a key never seen."""
    kept, _ = algo.decide(state, at, 1, limit)
    fresh, _ = algo.decide(None, at, 1, limit)
    return (kept.allowed, kept.remaining, kept.delay) == (
        fresh.allowed,
        fresh.remaining,
        fresh.delay,
    ) and math.isclose(kept.reset_after, fresh.reset_after, abs_tol=PROBE * limit.window)


def unit_requests_allowed(algo: Any, state: Any, now: float, limit: Limit, most: int) -> int:
    """How many unit requests in a row are allowed at ``now`` (counting up to ``most``)."""
    for n in range(most):
        decision, state = algo.decide(state, now, 1, limit)
        if not decision.allowed:
            return n
    return most


def drive(
    algorithm: str,
    limit: Limit,
    requests: list[tuple[Q, int]],
    check: Callable[[RateLimitDecision, float], None] | None = None,
    prepare: Callable[[float], None] | None = None,
) -> list[Admitted]:
    algo = ALGORITHM_BY_NAME[algorithm]
    reference = REFERENCES[algorithm]
    w = limit.window
    state: Any = None
    admitted: list[Admitted] = []
    for now_q, cost in requests:
        now = float(now_q)
        history = [(a.at, a.cost) for a in admitted]
        allowed, remaining, delay = reference(limit, history, now_q, cost)
        if prepare is not None:
            prepare(now)
        decision, new_state = algo.decide(state, now, cost, limit)
        where = f"{limit}, at {now} cost {cost} after {[(float(t), c) for t, c in history]}"

        # 1. The reference's decision.
        assert decision.allowed is allowed, f"{where}: {decision}"
        assert decision.remaining == remaining, f"{where}: {decision}"
        assert decision.delay == pytest.approx(float(delay), abs=PROBE * w), f"{where}: {decision}"
        # 2. retry_after: 0 iff allowed, inf iff never.
        assert (decision.retry_after == 0) is decision.allowed, f"{where}: {decision}"
        never = cost > capacity(algorithm, limit)
        assert math.isinf(decision.retry_after) is (not decision.allowed and never), where
        # 3. remaining, by asking.
        got = unit_requests_allowed(algo, new_state, now, limit, decision.remaining + 1)
        assert got == decision.remaining, f"{where}: {decision}, then {got} unit requests"
        # 5. Back to full after reset_after; forgettable at expires_at.
        reset_at = now + decision.reset_after + PROBE * w
        assert same_as_fresh(algo, new_state, reset_at, limit), f"{where}: {decision} not reset"
        if decision.allowed:
            expires = algo.expires_at(new_state, limit) + PROBE * w
            assert same_as_fresh(algo, new_state, expires, limit), f"{where}: expires too early"
            admitted.append(Admitted(now_q, cost, decision.delay))
        else:
            # 4. retry_after is exact, from the same state.
            retry = decision.retry_after
            if math.isfinite(retry):
                later, _ = algo.decide(state, now + retry + PROBE * w, cost, limit)
                assert later.allowed, f"{where}: {decision}, refused again: {later}"
                if retry > EARLY * w:
                    sooner, _ = algo.decide(state, now + retry - EARLY * w, cost, limit)
                    assert not sooner.allowed, f"{where}: {decision}, allowed sooner: {sooner}"
            # 6. Rule 1: the refused request left no trace.
            for t in (now, now + w / 3, now + w):
                before, _ = algo.decide(state, t, 1, limit)
                after, _ = algo.decide(new_state, t, 1, limit)
                assert (before.allowed, before.remaining) == (after.allowed, after.remaining), (
                    f"{where}: refusal changed the decision at {t}"
                )
        # 8. available_after: when the reference has more left, with no request meanwhile.
        left = [(a.at, a.cost) for a in admitted]
        check_available(algorithm, limit, left, now_q, decision, reference)
        if check is not None:
            check(decision, now)
        state = new_state
    return admitted


def check_available(
    algorithm: str, limit: Limit, history: History, now_q: Q, decision: Any, reference: Reference
) -> None:
    """Property 8, over the history the decision left (this request in it if admitted)."""
    w, available = limit.window, decision.available_after
    where = f"{limit}, at {float(now_q)} after {[(float(t), c) for t, c in history]}: {decision}"

    def left_at(seconds: float) -> int:
        return reference(limit, history, now_q + Q(seconds), 0)[1]

    assert left_at(0) == decision.remaining, where
    assert available >= 0, where
    if available == 0:
        # Nothing used: as many as ever, however long one waits.
        assert left_at(10 * w if algorithm != "quota" else 40 * 86400) == decision.remaining, where
        return
    assert left_at(available + PROBE * w) > decision.remaining, f"{where}: not grown by then"
    if available > EARLY * w:
        assert left_at(available - EARLY * w) == decision.remaining, f"{where}: grew sooner"
    if algorithm == "quota":
        assert available == decision.reset_after, where  # the period's end
    elif algorithm == "leaky_queue":
        biggest = max((c for _, c in history), default=1)
        assert available <= w * max(1, Fraction(biggest, limit.amount)) + PROBE * w, where
    else:
        assert available <= w + PROBE * w, where


# --------------------------------------------------------------------------- strategies

costs = st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(4, 10))
gaps = st.one_of(st.just(0), st.integers(1, 4), st.integers(1, 3 * GRID))


@st.composite
def limits(draw: st.DrawFn, algorithm: str) -> Limit:
    amount = draw(st.integers(1, 7))
    window = float(draw(st.sampled_from([1, 2, 3, 10])))
    if algorithm in BUCKETS:
        burst = draw(st.none() | st.integers(1, 9))
        return Limit(amount, window, algorithm=algorithm, burst=burst)
    if algorithm == "leaky_queue":
        # Either a multiple of W/8, or a whole number of intervals W/A (ties galore).
        max_wait = draw(
            st.one_of(
                st.integers(0, 16).map(lambda m: m * window / 8),
                st.integers(0, 8).map(lambda j: j * window / amount),
            )
        )
        return Limit(amount, window, algorithm=algorithm, max_wait=max_wait)
    return Limit(amount, window, algorithm=algorithm)


@st.composite
def requests(draw: st.DrawFn, tick: Q, origin: Q) -> list[tuple[Q, int]]:
    ticks = draw(st.integers(0, 4 * GRID))
    out = []
    for gap, cost in draw(st.lists(st.tuples(gaps, costs), min_size=1, max_size=40)):
        ticks += gap
        out.append((origin + ticks * tick, cost))
    return out


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("algorithm", [*WINDOWED, *BUCKETS, "leaky_queue"])
@PROPERTY
@given(data=st.data())
def test_matches_reference_and_bound(algorithm: str, data: st.DataObject) -> None:
    limit = data.draw(limits(algorithm), label="limit")
    origin = data.draw(st.sampled_from([Q(0), EPOCH, EPOCH + 12345]), label="origin")
    sequence = data.draw(requests(Q(limit.window) / GRID, origin), label="requests")
    admitted = drive(algorithm, limit, sequence)
    check_bound(algorithm, limit, admitted)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> Q:
    return Q(int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()))


# Clock changes (UTC) that make a day other than 24 hours long.
DST_CHANGES = [
    ("Europe/Paris", utc(2026, 3, 29, 1)),  # 02:00 CET -> 03:00 CEST: a 23-hour Sunday
    ("Europe/Paris", utc(2026, 10, 25, 1)),  # 03:00 CEST -> 02:00 CET: a 25-hour Sunday
    ("America/New_York", utc(2026, 3, 8, 7)),
    ("America/New_York", utc(2026, 11, 1, 6)),
    ("America/Havana", utc(2026, 3, 8, 5)),  # 00:00 CST -> 01:00 CDT: no midnight
    ("America/Havana", utc(2026, 11, 1, 5)),  # 01:00 CDT -> 00:00 CST: midnight twice
    ("America/Santiago", utc(2026, 4, 5, 3)),  # 24:00 -> 23:00: the hour before midnight twice
    ("America/Santiago", utc(2026, 9, 6, 4)),  # 24:00 -> 01:00: no midnight
    ("Australia/Lord_Howe", utc(2026, 4, 4, 15)),  # half an hour back
    ("Australia/Lord_Howe", utc(2026, 10, 3, 15, 30)),  # half an hour forward
    ("UTC", utc(2026, 1, 1)),
]
SHORTEST_DAY = Q(23 * 3600)  # no zone above loses more than an hour
SHORTEST_MONTH = Q(28 * 86400 - 3600)  # February, and a margin


@pytest.mark.parametrize("period", ["day", "month"])
@PROPERTY
@given(data=st.data())
def test_quota_matches_reference_and_bound(period: str, data: st.DataObject) -> None:
    zone, change = data.draw(st.sampled_from(DST_CHANGES), label="zone")
    amount = data.draw(st.integers(1, 4), label="amount")
    window = 86400.0 if period == "day" else 30 * 86400.0
    limit = Limit(amount, window, algorithm="quota", period=period, timezone=zone)  # type: ignore[arg-type]
    # day: steps of 7.5 minutes (gaps up to 12 h); month: steps of 6 hours (up to 24 days).
    tick = Q(450) if period == "day" else Q(6 * 3600)
    sequence = data.draw(requests(tick, change - 4 * GRID * tick), label="requests")
    # Each request may be served by a worker that last computed another period.
    fresh = data.draw(st.lists(st.booleans(), min_size=len(sequence), max_size=len(sequence)))
    elsewhere = iter(zip(fresh, sequence, strict=True))

    def worker(now: float) -> None:
        is_fresh, (at, _) = next(elsewhere)
        assert float(at) == now
        if is_fresh:
            quota_period(now - 400 * 86400, period, zone)

    def reset_is_the_period_end(decision: RateLimitDecision, now: float) -> None:
        # The period ends at now + reset_after: a second before it is the same day
        # (month), a second after it the next one.
        end = now + decision.reset_after
        assert calendar(limit, end - 1) == calendar(limit, now), (now, decision)
        assert calendar(limit, end + 1) != calendar(limit, now), (now, decision)

    admitted = drive("quota", limit, sequence, reset_is_the_period_end, worker)
    if admitted:
        if period == "month":
            span = SHORTEST_MONTH
        elif zone == "UTC":
            span = Q(86400)
        else:
            span = SHORTEST_DAY
        # 2A across one boundary; a span longer than the shortest period could hold a
        # whole period and two edges of others (see test_algorithms.py).
        assert most_in_windows(admitted, span) <= 2 * amount


@PROPERTY
@given(
    change=st.sampled_from(DST_CHANGES),
    offset=st.one_of(st.integers(-7200, 7200), st.integers(-3 * 86400, 3 * 86400)),
    period=st.sampled_from(["day", "month"]),
)
def test_quota_period_is_the_calendar_period(
    change: tuple[str, Q], offset: int, period: str
) -> None:
    zone, instant = change
    limit = Limit(1, 86400, algorithm="quota", period=period, timezone=zone)  # type: ignore[arg-type]
    now = float(instant + offset)
    # A worker whose last request fell in another period: nothing useful is remembered.
    quota_period(now - 400 * 86400, period, zone)
    start, end = quota_period(now, period, zone)
    here = calendar(limit, now)
    assert start <= now < end
    # The first and last second of the local day (month) containing now.
    assert calendar(limit, start - 1) != here, (start, end)
    assert calendar(limit, start) == here, (start, end)
    assert calendar(limit, end - 1) == here, (start, end)
    assert calendar(limit, end) != here, (start, end)


@dataclass
class Slot:
    token: str
    at: Q
    cost: int
    step: int
    released: int | None = None  # the step that released it


@PROPERTY
@given(
    amount=st.integers(1, 4),
    lease=st.sampled_from([Q(1), Q(5, 2), Q(10)]),
    ops=st.lists(
        st.tuples(
            st.one_of(st.just(0), st.integers(1, 12)),  # gap, in eighths of a second
            st.sampled_from(["acquire", "acquire", "release"]),
            st.integers(0, 1000),  # which earlier slot to release
            costs,
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_concurrency_matches_reference_and_bound(
    amount: int, lease: Q, ops: list[tuple[int, str, int, int]]
) -> None:
    limit = Limit(amount, 1, algorithm="concurrency", lease=float(lease))
    state: Any = None
    slots: list[Slot] = []
    now_q = Q(0)
    for step, (gap, op, pick, cost) in enumerate(ops):
        now_q += Q(gap, 8)
        now = float(now_q)
        if op == "release":
            if slots:
                # Mostly a slot still held; sometimes one already released or expired.
                candidates = [s for s in slots if s.released is None] if pick % 4 else slots
                slot = (candidates or slots)[pick % len(candidates or slots)]
                state = Concurrency.release(state, slot.token, now)
                if slot.released is None:
                    slot.released = step
            continue
        held = [s for s in slots if s.released is None and now_q < s.at + lease]
        used = sum(s.cost for s in held)
        token = f"t{step}"
        decision, new_state = Concurrency.decide(state, now, cost, limit, token)
        where = f"{limit} at {now} cost {cost}, held {held}: {decision}"
        assert decision.allowed is (used + cost <= amount), where
        assert decision.remaining == amount - used - (cost if decision.allowed else 0), where
        assert (decision.retry_after == 0) is decision.allowed, where
        assert math.isinf(decision.retry_after) is (not decision.allowed and cost > amount), where
        if decision.allowed:
            assert Concurrency.expires_at(new_state, limit) == float(
                max(s.at for s in [*held, Slot(token, now_q, cost, step)]) + lease
            )
            slots.append(Slot(token, now_q, cost, step))
        elif cost <= amount:
            # The wait is a suggestion: when a worker releases is unknown. With no
            # release at all, the request is allowed exactly when enough leases end.
            assert decision.retry_after == Concurrency.RETRY_AFTER, where
            freed, free_at = 0, now_q
            for s in sorted(held, key=lambda s: s.at):
                if used - freed + cost <= amount:
                    break
                freed, free_at = freed + s.cost, s.at + lease
            later, _ = Concurrency.decide(state, float(free_at) + PROBE, cost, limit, token)
            assert later.allowed, where
            sooner, _ = Concurrency.decide(state, float(free_at) - EARLY, cost, limit, token)
            assert not sooner.allowed, where
        state = new_state

    # At most A in flight when each slot was taken (in-flight only grows then).
    for slot in slots:
        in_flight = sum(
            other.cost
            for other in slots
            if other.step <= slot.step
            and (other.released is None or other.released > slot.step)
            and slot.at < other.at + lease
        )
        assert in_flight <= amount
