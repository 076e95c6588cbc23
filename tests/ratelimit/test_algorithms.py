"""The rate-limit algorithms and ``plan``, step by step, against hand-computed decisions.

Each scenario threads one key's state through ``decide`` and compares every field of
every decision (``allowed, remaining, reset_after, retry_after, available_after`` and, for
``leaky_queue``, ``delay``) with values worked out by hand in the comments. A scenario
reports all of its mismatching steps at once, so one wrong field does not hide the others.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from surefoot.errors import ConfigurationError
from surefoot.ratelimit._algorithms import (
    ALGORITHM_BY_NAME,
    Concurrency,
    ListLog,
    LogEntry,
    RateLimitDecision,
    quota_period,
)
from surefoot.ratelimit._core import Item, Write, plan
from surefoot.ratelimit._limit import Limit

INF = math.inf
T, F = True, False
HOUR, DAY = 3600.0, 86400.0

# (now, cost, (allowed, remaining, reset_after, retry_after, available_after[, delay]))
Step = tuple[float, int, tuple[Any, ...]]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def same(got: float, want: float) -> bool:
    if math.isinf(want):
        return got == want
    return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-9)


def mismatch(decision: RateLimitDecision, want: tuple[Any, ...]) -> bool:
    allowed, remaining, reset_after, retry_after, available_after, *delay = want
    if (decision.allowed, decision.remaining) != (allowed, remaining):
        return True
    times = zip(
        (decision.reset_after, decision.retry_after, decision.available_after, decision.delay),
        (reset_after, retry_after, available_after, delay[0] if delay else 0.0),
        strict=True,
    )
    return not all(same(got, wanted) for got, wanted in times)


def run(algorithm: str, limit: Limit, steps: list[Step]) -> None:
    """Thread one key's state through ``steps``; fail listing every step that differs."""
    algo = ALGORITHM_BY_NAME[algorithm]
    state: Any = None
    wrong = []
    for i, (now, cost, want) in enumerate(steps):
        decision, state = algo.decide(state, now, cost, limit)
        if mismatch(decision, want):
            wrong.append(f"step {i} (now={now}, cost={cost}): expected {want}, got {decision}")
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------- tables

SCENARIOS: list[Any] = [
    pytest.param(
        "fixed_window",
        Limit(3, 10),
        [
            # More is available exactly when the window ends: available == reset.
            (0, 1, (T, 2, 10, 0, 10)),
            (1, 2, (T, 0, 9, 0, 9)),
            (2, 1, (F, 0, 8, 8, 8)),  # full until the window ends at 10
            (9.5, 1, (F, 0, 0.5, 0.5, 0.5)),
            (10, 1, (T, 2, 10, 0, 10)),  # a new window starts at exactly 10
            (15, 3, (F, 2, 5, 5, 5)),  # 1 + 3 > 3: next window
            (15, 4, (F, 2, 5, INF, 5)),  # 4 > 3: never
            (15, 2, (T, 0, 5, 0, 5)),
            (1000, 3, (T, 0, 10, 0, 10)),  # long after: a fresh window, state forgotten
        ],
        id="fixed_window",
    ),
    pytest.param(
        "fixed_window",
        Limit(3, 10),
        [
            (9.9, 3, (T, 0, 0.1, 0, 0.1)),
            (9.9, 1, (F, 0, 0.1, 0.1, 0.1)),
            (10, 3, (T, 0, 10, 0, 10)),  # the documented edge burst: 2A within 0.1 s
        ],
        id="fixed_window-edge-burst",
    ),
    pytest.param(
        "fixed_window",
        Limit(3, 10),
        [
            (5, 4, (F, 3, 5, INF, 0)),  # nothing counted: nothing to come back
        ],
        id="fixed_window-full",
    ),
    pytest.param(
        "sliding_log",
        Limit(3, 10),
        [
            # available: the oldest entry leaves; reset: the newest one does.
            (0, 1, (T, 2, 10, 0, 10)),
            (2, 1, (T, 1, 10, 0, 8)),
            (4, 1, (T, 0, 10, 0, 6)),
            # reset: the newest entry (4) leaves at 14; retry: the oldest (0) at 10.
            (5, 1, (F, 0, 9, 5, 5)),
            (5, 2, (F, 0, 9, 7, 5)),  # two entries must leave: 0 (at 10) and 2 (at 12)
            (5, 4, (F, 0, 9, INF, 5)),
            (10, 1, (T, 0, 10, 0, 2)),  # the entry at 0 leaves the window at exactly 10
            (10, 1, (F, 0, 10, 2, 2)),
            (12, 2, (F, 1, 8, 2, 2)),  # live: 4, 10; needs the entry at 4 gone (at 14)
            (14, 2, (T, 0, 10, 0, 6)),  # live: 10, 14
        ],
        id="sliding_log",
    ),
    pytest.param(
        "sliding_log",
        Limit(3, 10),
        [
            (0, 4, (F, 3, 0, INF, 0)),  # nothing counted: already full, never admitted
            (0, 1, (T, 2, 10, 0, 10)),
            (20, 4, (F, 3, 0, INF, 0)),  # the entry at 0 has left: the log is empty again
        ],
        id="sliding_log-over-capacity-on-empty-log",
    ),
    pytest.param(
        "sliding_window",
        Limit(10, 10),
        [
            # Full again a window after the last admission: every request it counted
            # has left the last 10 s by then, whatever the weighting supposes.
            # available: the next window weighs the 5 by 1 - (t - 10) / 10; 5 * 0.8 = 4
            # leaves 6 at 12.
            (5, 5, (T, 5, 10, 0, 7)),
            # 10 * (1 - (t - 10) / 10) <= 9 from t = 11.
            (8, 5, (T, 0, 10, 0, 3)),
            # 10 + 1 > 10; next window: 10 * (1 - (t - 10) / 10) + 1 <= 10 from t = 11.
            # Full at 18, a window after the last admission (at 8).
            (9, 1, (F, 0, 9, 2, 2)),
            # At 11: 10 * 0.9 + 0 = 9, + 1 = 10 <= 10. One more once 10 * (1 - (t-10)/10)
            # + 1 <= 9: at 12.
            (11, 1, (T, 0, 10, 0, 1)),
            # At 12: 10 * 0.8 + 1 = 9, + 2 > 10; in this window 10 * (1 - (t-10)/10) + 3
            # <= 10 from t = 13, and 2 are left once the estimate is 8, also at 13.
            (12, 2, (F, 1, 9, 1, 1)),
            (13, 2, (T, 0, 10, 0, 1)),  # 10 * 0.7 + 1 + 2 = 10; 9 at 14
            (13, 11, (F, 0, 10, INF, 1)),
            # At 25: nothing was admitted since 13, a window ago: a fresh start.
            (25, 1, (T, 9, 10, 0, 10)),
            # At 34: 1 * 0.6 + 0 + 9 <= 10: left 0 (floor of 0.4). The estimate is 9 (one
            # more) once the 1 of [20, 30) has slid out, at 40.
            (34, 9, (T, 0, 10, 0, 6)),
            (45, 1, (T, 9, 10, 0, 10)),  # a window after the last admission: fresh again
        ],
        id="sliding_window",
    ),
    pytest.param(
        "sliding_window",
        Limit(5, 10),
        [
            # A burst at the very start of a window: the weighting alone would free one
            # unit at 12 (5 * (1 - (t - 10) / 10) <= 4), more than a window away; every
            # one of them has left the last 10 s at 10, and 10 is the answer.
            (0, 5, (T, 0, 10, 0, 10)),
            (0, 1, (F, 0, 10, 10, 10)),
            (9.5, 1, (F, 0, 0.5, 0.5, 0.5)),
            (10, 5, (T, 0, 10, 0, 10)),
            (10, 6, (F, 0, 10, INF, 10)),  # 6 > 5: never
            (30, 6, (F, 5, 0, INF, 0)),  # nothing counts any more: nothing to come back
        ],
        id="sliding_window-burst-at-window-start",
    ),
    pytest.param(
        "token_bucket",
        Limit(2, 10, burst=4),  # 0.2 tokens/s, holds 4: one more token every 5 s
        [
            (0, 1, (T, 3, 5, 0, 5)),
            (0, 3, (T, 0, 20, 0, 5)),
            (0, 1, (F, 0, 20, 5, 5)),
            (5, 2, (F, 1, 15, 5, 5)),  # 1 token, needs 2
            (7.5, 1, (T, 0, 17.5, 0, 2.5)),  # 1.5 tokens, 0.5 left: a whole one at 10
            (10, 2, (F, 1, 15, 5, 5)),
            (10, 5, (F, 1, 15, INF, 5)),  # more than the bucket holds
            (100, 4, (T, 0, 20, 0, 5)),  # refilled to 4, not to 18
            (100, 5, (F, 0, 20, INF, 5)),
            (200, 5, (F, 4, 0, INF, 0)),  # full: nothing to come back
        ],
        id="token_bucket",
    ),
    pytest.param(
        "token_bucket",
        Limit(2, 10),  # burst defaults to amount
        [
            (0, 1, (T, 1, 5, 0, 5)),
            (0, 1, (T, 0, 10, 0, 5)),
            (0, 1, (F, 0, 10, 5, 5)),
            (0, 3, (F, 0, 10, INF, 5)),
        ],
        id="token_bucket-default-burst",
    ),
    pytest.param(
        "leaky_bucket",
        Limit(2, 10, burst=4),  # leaks 0.2/s, holds 4: room for one more every 5 s
        [
            (0, 1, (T, 3, 5, 0, 5)),
            (0, 3, (T, 0, 20, 0, 5)),
            (0, 1, (F, 0, 20, 5, 5)),
            (5, 2, (F, 1, 15, 5, 5)),  # level 3: 3 + 2 > 4 until the level is 2
            (7.5, 1, (T, 0, 17.5, 0, 2.5)),  # level 3.5: down to 3 at 10
            (10, 2, (F, 1, 15, 5, 5)),
            (10, 5, (F, 1, 15, INF, 5)),
            (100, 4, (T, 0, 20, 0, 5)),
            (200, 5, (F, 4, 0, INF, 0)),  # empty: nothing to come back
        ],
        id="leaky_bucket",
    ),
    pytest.param(
        "gcra",
        Limit(2, 10, burst=4),  # emission interval 5 s, tolerance 20 s
        [
            (0, 1, (T, 3, 5, 0, 5)),  # TAT 5: back to 4 left at 5
            (0, 3, (T, 0, 20, 0, 5)),  # TAT 20
            (0, 1, (F, 0, 20, 5, 5)),  # would make TAT 25: allowed from 25 - 20 = 5
            (5, 2, (F, 1, 15, 5, 5)),
            (7.5, 1, (T, 0, 17.5, 0, 2.5)),  # TAT 25: one left from 25 - 20 + 5 = 10
            (10, 2, (F, 1, 15, 5, 5)),
            (10, 5, (F, 1, 15, INF, 5)),
            (100, 4, (T, 0, 20, 0, 5)),
            (200, 5, (F, 4, 0, INF, 0)),  # TAT in the past: nothing to come back
        ],
        id="gcra",
    ),
    pytest.param(
        "leaky_queue",
        Limit(2, 10, max_wait=10),  # one unit every 5 s, waits up to 10 s
        [
            # remaining: how many more unit requests would be queued now; available: when
            # the queue has moved on enough for one more.
            (0, 1, (T, 2, 5, 0, 5, 0)),
            (0, 1, (T, 1, 10, 0, 5, 5)),
            (0, 1, (T, 0, 15, 0, 5, 10)),
            (0, 1, (F, 0, 15, 5, 5, 0)),  # would wait 15 > 10: retry once it is 10
            (5, 1, (T, 0, 15, 0, 5, 10)),  # starts at 15, the queue is free at 20
            # Starts at 20, takes 15 s: free at 35. A unit request waits 10 s at most: one
            # fits from 25, 13 s away (a request costing more than A occupies the queue
            # for longer than the window).
            (12, 3, (T, 0, 23, 0, 13, 8)),
            (40, 1, (T, 2, 5, 0, 5, 0)),  # the queue drained
            (40, 9, (T, 0, 50, 0, 40, 5)),  # any cost is queued while the wait is short
            (41, 1, (F, 0, 49, 39, 39, 0)),
        ],
        id="leaky_queue",
    ),
    pytest.param(
        "leaky_queue",
        Limit(2, 10, max_wait=0),
        [
            (0, 1, (T, 0, 5, 0, 5, 0)),
            (1, 1, (F, 0, 4, 4, 4, 0)),
            (5, 1, (T, 0, 5, 0, 5, 0)),
        ],
        id="leaky_queue-no-wait",
    ),
]


@pytest.mark.parametrize(("algorithm", "limit", "steps"), SCENARIOS)
def test_decisions(algorithm: str, limit: Limit, steps: list[Step]) -> None:
    run(algorithm, limit, steps)


@pytest.mark.parametrize("algorithm", ["token_bucket", "leaky_bucket", "gcra"])
def test_burst_smaller_than_amount(algorithm: str) -> None:
    # 10 per 10 s (one per second) but at most one at a time: no burst at all.
    run(
        algorithm,
        Limit(10, 10, burst=1),
        [
            (0, 1, (T, 0, 1, 0, 1)),
            (0, 1, (F, 0, 1, 1, 1)),
            (0.5, 1, (F, 0, 0.5, 0.5, 0.5)),
            (1, 1, (T, 0, 1, 0, 1)),
            (1, 2, (F, 0, 1, INF, 1)),  # 2 <= amount, but the bucket never holds 2
            (11, 1, (T, 0, 1, 0, 1)),  # a long pause refills up to burst only
            (11, 1, (F, 0, 1, 1, 1)),
        ],
    )


@pytest.mark.parametrize("algorithm", ["token_bucket", "leaky_bucket", "gcra"])
def test_burst_larger_than_amount(algorithm: str) -> None:
    # 1 per 10 s on average, but 3 at once after a quiet spell.
    run(
        algorithm,
        Limit(1, 10, burst=3),
        [
            # One unit more every 10 s: never more than the window, however deep the bucket.
            (0, 3, (T, 0, 30, 0, 10)),
            (0, 1, (F, 0, 30, 10, 10)),
            (10, 1, (T, 0, 30, 0, 10)),
            (10, 4, (F, 0, 30, INF, 10)),
            (40, 2, (T, 1, 20, 0, 10)),
        ],
    )


@pytest.mark.parametrize(
    ("algorithm", "limit", "expires"),
    [
        ("fixed_window", Limit(2, 10), 10.0),  # end of the window [0, 10)
        ("sliding_log", Limit(2, 10), 13.0),  # the entry at 3 leaves the log
        ("sliding_window", Limit(2, 10), 13.0),  # a window after the last admission
        ("token_bucket", Limit(2, 10), 8.0),  # 1 token missing, 0.2/s
        ("leaky_bucket", Limit(2, 10), 8.0),  # level 1 leaks out
        ("leaky_queue", Limit(2, 10), 8.0),  # the queue is free again
        ("gcra", Limit(2, 10), 8.0),  # TAT
        ("quota", Limit(2, DAY, algorithm="quota"), DAY),  # UTC midnight
    ],
)
def test_expires_at_is_when_the_state_is_forgettable(
    algorithm: str, limit: Limit, expires: float
) -> None:
    algo = ALGORITHM_BY_NAME[algorithm]
    decision, state = algo.decide(None, 3.0, 1, limit)
    assert decision.allowed
    assert algo.expires_at(state, limit) == pytest.approx(expires)
    # Right then, the kept state decides exactly like a key never seen.
    at = expires + 1e-6
    assert algo.decide(state, at, 1, limit)[0] == algo.decide(None, at, 1, limit)[0]


def test_sliding_window_reads_a_state_kept_by_an_older_surefoot() -> None:
    # (window start, previous count, current count), without the time of the last
    # admission: the end of its window stands in for it, so it decides as it always did.
    sliding = ALGORITHM_BY_NAME["sliding_window"]
    limit = Limit(10, 10)
    old = (10.0, 4, 6)
    decision, state = sliding.decide(old, 15.0, 1, limit)  # 4 * 0.5 + 6 + 1 = 9
    # Full at 30, as before; two left once 4 * (1 - (t - 10) / 10) + 7 = 8, at 17.5.
    assert decision == RateLimitDecision(True, 1, 15.0, 0.0, 0.0, 2.5)
    assert state == (10.0, 4, 7, 20.0)
    assert sliding.decide(old, 25.0, 1, limit)[0].remaining == 6  # 6 * 0.5 + 1 = 4
    assert sliding.decide(old, 30.0, 1, limit)[0].remaining == 9  # forgotten


@pytest.mark.parametrize(
    ("algorithm", "kept"),
    [
        ("fixed_window", (20.0, 2)),
        ("sliding_window", (20.0, 1, 1, 21.0)),  # its last admission is within W of now
        ("sliding_window", (20.0, 1, 1)),  # kept by an older surefoot
    ],
)
def test_a_state_from_a_window_not_yet_begun_counts_nothing(
    algorithm: str, kept: tuple[Any, ...]
) -> None:
    # The clock stepped back (or a host whose clock runs ahead wrote the state): a state
    # neither of now's window nor of the one before decides like a key never seen.
    algo = ALGORITHM_BY_NAME[algorithm]
    limit = Limit(2, 10)
    assert algo.decide(kept, 15.0, 1, limit) == algo.decide(None, 15.0, 1, limit)
    assert algo.decide(kept, 15.0, 1, limit)[0].remaining == 1


# --------------------------------------------------------------------------- concurrency


def test_concurrency_acquire_release_and_lease_expiry() -> None:
    limit = Limit(2, 1, algorithm="concurrency", lease=30)
    assert ALGORITHM_BY_NAME["concurrency"] is Concurrency

    decision, state = Concurrency.decide(None, 0.0, 1, limit, "a")
    assert decision == RateLimitDecision(True, 1, 0.0, 0.0)
    assert state == ("a", 30.0, 1)
    decision, state = Concurrency.decide(state, 1.0, 1, limit, "b")
    assert decision == RateLimitDecision(True, 0, 0.0, 0.0)

    # Full: a suggested wait (when a slot frees is unknown); too big: never.
    decision, refused = Concurrency.decide(state, 2.0, 1, limit, "c")
    assert decision == RateLimitDecision(False, 0, 0.0, Concurrency.RETRY_AFTER)
    assert refused == state
    decision, _ = Concurrency.decide(state, 2.0, 3, limit, "c")
    assert decision == RateLimitDecision(False, 0, 0.0, INF)

    state = Concurrency.release(state, "a", 3.0)
    assert state == ("b", 31.0, 1)
    decision, state = Concurrency.decide(state, 3.0, 1, limit, "c")
    assert decision.allowed
    assert Concurrency.expires_at(state, limit) == 33.0

    # b's worker died without releasing: its slot comes back when its lease ends.
    decision, _ = Concurrency.decide(state, 30.5, 1, limit, "d")
    assert not decision.allowed
    decision, state = Concurrency.decide(state, 31.0, 1, limit, "d")
    assert decision == RateLimitDecision(True, 0, 0.0, 0.0)
    assert state == ("c", 33.0, 1, "d", 61.0, 1)

    assert Concurrency.release(state, "unknown", 32.0) == state
    state = Concurrency.release(state, "c", 32.0)
    assert Concurrency.release(state, "d", 32.0) is None


def test_concurrency_cost_takes_several_slots() -> None:
    limit = Limit(3, 1, algorithm="concurrency", lease=10)
    decision, state = Concurrency.decide(None, 0.0, 2, limit, "big")
    assert decision == RateLimitDecision(True, 1, 0.0, 0.0)
    decision, state = Concurrency.decide(state, 0.0, 2, limit, "other")
    assert decision == RateLimitDecision(False, 1, 0.0, Concurrency.RETRY_AFTER)
    state = Concurrency.release(state, "big", 1.0)
    decision, _ = Concurrency.decide(state, 1.0, 3, limit, "other")
    assert decision == RateLimitDecision(True, 0, 0.0, 0.0)


def test_concurrency_release_frees_only_its_own_slot() -> None:
    limit = Limit(3, 1, algorithm="concurrency", lease=10)
    state: Any = None
    for token in ("a", "b", "c"):
        _, state = Concurrency.decide(state, 0.0, 1, limit, token)
    state = Concurrency.release(state, "b", 1.0)
    assert state == ("a", 10.0, 1, "c", 10.0, 1)
    decision, _ = Concurrency.decide(state, 1.0, 2, limit, "d")
    assert decision == RateLimitDecision(False, 1, 0.0, Concurrency.RETRY_AFTER)


def test_concurrency_release_drops_expired_slots() -> None:
    limit = Limit(2, 1, algorithm="concurrency", lease=5)
    _, state = Concurrency.decide(None, 0.0, 1, limit, "a")
    _, state = Concurrency.decide(state, 1.0, 1, limit, "b")
    assert Concurrency.release(state, "b", 5.0) is None  # a expired at 5


# --------------------------------------------------------------------------- quota

PARIS_DAY = Limit(2, DAY, algorithm="quota", period="day", timezone="Europe/Paris")
PARIS_MONTH = Limit(2, 30 * DAY, algorithm="quota", period="month", timezone="Europe/Paris")

# A quota has more once its period ends: available == reset in every step.
QUOTAS: list[Any] = [
    pytest.param(
        PARIS_DAY,
        [
            (utc(2026, 3, 28, 22, 30), 2, (T, 0, 1800, 0, 1800)),  # Sat 23:30 CET
            (utc(2026, 3, 28, 22, 59, 59), 1, (F, 0, 1, 1, 1)),
            # Sunday 29 March starts at 00:00 CET and lasts 23 hours (02:00 -> 03:00).
            (utc(2026, 3, 28, 23), 1, (T, 1, 23 * HOUR, 0, 23 * HOUR)),
            (utc(2026, 3, 29, 1), 1, (T, 0, 21 * HOUR, 0, 21 * HOUR)),  # 03:00 CEST
            (utc(2026, 3, 29, 21), 1, (F, 0, HOUR, HOUR, HOUR)),  # 23:00 CEST
            (utc(2026, 3, 29, 21), 3, (F, 0, HOUR, INF, HOUR)),
            (utc(2026, 3, 29, 22), 1, (T, 1, 24 * HOUR, 0, 24 * HOUR)),  # Monday 00:00 CEST
        ],
        id="day-spring-forward",
    ),
    pytest.param(
        PARIS_DAY,
        [
            (utc(2026, 10, 24, 21, 59), 2, (T, 0, 60, 0, 60)),  # Sat 23:59 CEST
            # Sunday 25 October starts at 00:00 CEST and lasts 25 hours (03:00 -> 02:00).
            (utc(2026, 10, 24, 22), 1, (T, 1, 25 * HOUR, 0, 25 * HOUR)),
            (utc(2026, 10, 25, 0, 30), 1, (T, 0, 22.5 * HOUR, 0, 22.5 * HOUR)),  # 02:30 CEST
            # 02:30 CET, the second time:
            (utc(2026, 10, 25, 1, 30), 1, (F, 0, 21.5 * HOUR, 21.5 * HOUR, 21.5 * HOUR)),
            (utc(2026, 10, 25, 23), 1, (T, 1, 24 * HOUR, 0, 24 * HOUR)),  # Monday 00:00 CET
        ],
        id="day-fall-back",
    ),
    pytest.param(
        PARIS_MONTH,
        [
            (utc(2026, 2, 28, 22, 59), 2, (T, 0, 60, 0, 60)),  # 28 Feb 23:59 CET
            # March: 31 days less the hour lost on the 29th.
            (utc(2026, 2, 28, 23), 1, (T, 1, 31 * DAY - HOUR, 0, 31 * DAY - HOUR)),
            (utc(2026, 3, 31, 21, 59, 59), 1, (T, 0, 1, 0, 1)),  # 31 Mar 23:59:59 CEST
            (utc(2026, 3, 31, 21, 59, 59), 1, (F, 0, 1, 1, 1)),
            (utc(2026, 3, 31, 22), 1, (T, 1, 30 * DAY, 0, 30 * DAY)),  # 1 April 00:00 CEST
        ],
        id="month-spring-forward",
    ),
    pytest.param(
        PARIS_MONTH,
        [
            # October: 31 days and the hour gained on the 25th.
            (utc(2026, 9, 30, 22), 1, (T, 1, 31 * DAY + HOUR, 0, 31 * DAY + HOUR)),
            (utc(2026, 10, 31, 22, 59), 1, (T, 0, 60, 0, 60)),  # 31 Oct 23:59 CET
            (utc(2026, 10, 31, 22, 59), 3, (F, 0, 60, INF, 60)),
            (utc(2026, 10, 31, 23), 2, (T, 0, 30 * DAY, 0, 30 * DAY)),  # 1 November 00:00 CET
        ],
        id="month-fall-back",
    ),
    pytest.param(
        Limit(2, DAY, algorithm="quota"),  # period "day", time zone UTC by default
        [
            (utc(2026, 1, 1, 23, 59), 2, (T, 0, 60, 0, 60)),
            (utc(2026, 1, 1, 23, 59), 1, (F, 0, 60, 60, 60)),
            (utc(2026, 1, 2), 1, (T, 1, DAY, 0, DAY)),
        ],
        id="day-utc-default",
    ),
]


@pytest.mark.parametrize(("limit", "steps"), QUOTAS)
def test_quota_decisions(limit: Limit, steps: list[Step]) -> None:
    run("quota", limit, steps)


@pytest.mark.parametrize(
    ("now", "period", "zone", "bounds"),
    [
        (utc(2026, 3, 29, 12), "day", "Europe/Paris", ((2026, 3, 28, 23), (2026, 3, 29, 22))),
        (utc(2026, 10, 25, 1, 30), "day", "Europe/Paris", ((2026, 10, 24, 22), (2026, 10, 25, 23))),
        # December rolls over into January of the next year.
        (utc(2026, 12, 31, 22), "month", "Europe/Paris", ((2026, 11, 30, 23), (2026, 12, 31, 23))),
        (utc(2026, 12, 31, 23), "month", "Europe/Paris", ((2026, 12, 31, 23), (2027, 1, 31, 23))),
        # Havana springs forward at midnight: 8 March has no 00:00 and starts at 01:00 CDT.
        (utc(2026, 3, 8, 12), "day", "America/Havana", ((2026, 3, 8, 5), (2026, 3, 9, 4))),
        (utc(2026, 1, 15), "day", "UTC", ((2026, 1, 15), (2026, 1, 16))),
    ],
)
def test_quota_period(
    now: float, period: str, zone: str, bounds: tuple[tuple[int, ...], tuple[int, ...]]
) -> None:
    start, end = bounds
    assert quota_period(now, period, zone) == (utc(*start), utc(*end))


@pytest.mark.parametrize("period", ["day", "month"])
@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris"])
def test_an_instant_a_hair_before_midnight_is_in_the_day_that_ends_there(
    period: str, zone: str
) -> None:
    # datetime.fromtimestamp rounds to the microsecond: 2**-22 s before midnight would
    # otherwise be taken for midnight itself, in the next period that has not begun.
    _, end = quota_period(utc(2026, 1, 15), period, zone)
    before = end - math.ulp(end)
    quota_period(utc(2020, 1, 1), period, zone)  # nothing remembered of that period
    start, following = quota_period(before, period, zone)
    assert start <= before < following == end


@pytest.mark.parametrize("period", ["day", "month"])
def test_quota_period_in_the_repeated_hour_after_midnight(period: str) -> None:
    # Havana falls back at 01:00 CDT to 00:00 CST on 1 November 2026: 00:00-01:00 happens
    # twice, and both times belong to the day (and month) that began at the first
    # midnight, 04:00 UTC. Any earlier instant is decided first so that nothing computed
    # for this day is remembered from before.
    quota_period(utc(2026, 10, 20), period, "America/Havana")
    second_half_past_midnight = utc(2026, 11, 1, 5, 30)  # 00:30 CST, the second time
    start, _ = quota_period(second_half_past_midnight, period, "America/Havana")
    assert start == utc(2026, 11, 1, 4)


def test_quota_counts_the_repeated_hour_after_midnight_in_the_same_day() -> None:
    limit = Limit(1, DAY, algorithm="quota", period="day", timezone="America/Havana")
    quota = ALGORITHM_BY_NAME["quota"]
    _, state = quota.decide(None, utc(2026, 11, 1, 4, 30), 1, limit)  # 00:30 CDT
    # The next request is served by a worker whose last quota decision was another day.
    quota_period(utc(2026, 10, 20), "day", "America/Havana")
    decision, _ = quota.decide(state, utc(2026, 11, 1, 5, 30), 1, limit)  # 00:30 CST
    assert not decision.allowed


def test_quota_day_is_calendar_not_24_hours() -> None:
    # The documented edge burst is 2A across one midnight; a 23-hour day puts two
    # midnights within 24 hours, so a 24-hour span can see three whole quotas.
    quota = ALGORITHM_BY_NAME["quota"]
    state: Any = None
    admitted = 0
    for now in (utc(2026, 3, 28, 22, 59), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)):
        for _ in range(3):
            decision, state = quota.decide(state, now, 1, PARIS_DAY)
            admitted += decision.allowed
    assert admitted == 6  # 3A, all within 23 hours and 1 minute


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd", "UTC "])
def test_quota_invalid_time_zone(zone: str) -> None:
    limit = Limit(5, DAY, algorithm="quota", period="day", timezone=zone)
    with pytest.raises(ConfigurationError, match=r"Limit\.timezone") as raised:
        ALGORITHM_BY_NAME["quota"].decide(None, 0.0, 1, limit)
    assert repr(zone) in str(raised.value)


# --------------------------------------------------------------------------- plan

PER_SECOND = Limit(2, 1)
PER_HOUR = Limit(3, 3600)


def second(key: str = "s", **kwargs: Any) -> Item:
    return Item(key, "fixed_window", PER_SECOND, **kwargs)


def hour(key: str = "h", **kwargs: Any) -> Item:
    return Item(key, "sliding_log", PER_HOUR, **kwargs)


FULL_SECOND = (0.0, 2)  # fixed window [0, 1) with 2 of 2 used


def log(*times: float) -> ListLog:
    """A sliding log of unit requests at ``times``."""
    return ListLog([LogEntry(t, n, 1) for n, t in enumerate(times, 1)])


def test_plan_admits_and_commits_every_item() -> None:
    admitted, decisions, writes = plan([None, None], [second(), hour()], 0.5)
    assert admitted
    assert [d.allowed for d in decisions] == [True, True]
    assert writes == [Write("s", (0.0, 1), 1.0), Write("h", log(0.5), 3600.5)]


def test_plan_refused_request_commits_nothing() -> None:
    admitted, decisions, writes = plan([FULL_SECOND, None], [second(), hour()], 0.5)
    assert not admitted
    assert [d.allowed for d in decisions] == [False, True]
    assert decisions[0].retry_after == pytest.approx(0.5)
    assert writes == []  # the hour limit said yes but is not charged


def test_plan_refused_for_good_commits_nothing() -> None:
    admitted, decisions, writes = plan([None, None], [second(cost=3), hour(cost=3)], 0.5)
    assert not admitted
    assert decisions[0].retry_after == INF
    assert decisions[1].allowed
    assert writes == []


def test_plan_shadow_refusal_neither_blocks_nor_commits() -> None:
    items = [second(enforce=False), hour()]
    admitted, decisions, writes = plan([FULL_SECOND, None], items, 0.5)
    assert admitted
    assert [d.allowed for d in decisions] == [False, True]
    assert writes == [Write("h", log(0.5), 3600.5)]


def test_plan_shadow_that_allows_is_committed_with_the_request() -> None:
    admitted, _, writes = plan([None, None], [second(enforce=False), hour()], 0.5)
    assert admitted
    assert [w.key for w in writes] == ["s", "h"]


def test_plan_shadow_that_allows_is_not_committed_when_refused() -> None:
    items = [second(enforce=False), hour()]
    full_hour = log(0.0, 0.0, 0.0)
    admitted, decisions, writes = plan([None, full_hour], items, 0.5)
    assert not admitted
    assert [d.allowed for d in decisions] == [True, False]
    assert writes == []


def test_plan_only_shadow_items_never_refuse() -> None:
    items = [second(enforce=False), hour(enforce=False)]
    admitted, decisions, writes = plan([FULL_SECOND, log(0.0, 0.0, 0.0)], items, 0.5)
    assert admitted
    assert [d.allowed for d in decisions] == [False, False]
    assert writes == []


def test_plan_concurrency_item_holds_its_token() -> None:
    slots = Item("c", "concurrency", Limit(1, 1, algorithm="concurrency", lease=30), token="t1")
    admitted, _, writes = plan([None, None], [slots, hour()], 2.0)
    assert admitted
    assert writes[0] == Write("c", ("t1", 32.0, 1), 32.0)
    admitted, _, writes = plan([writes[0].state, None], [slots, hour()], 3.0)
    assert not admitted
    assert writes == []


def test_plan_over_a_store_charges_only_admitted_requests() -> None:
    # 2/second and 3/hour: requests turned away by the per-second limit do not use up
    # the hourly allowance.
    store: dict[str, Any] = {}
    items = [second(), hour()]

    def request(now: float) -> bool:
        admitted, _, writes = plan([store.get(i.key) for i in items], items, now)
        for write in writes:
            store[write.key] = write.state
        return admitted

    assert [request(0.0) for _ in range(5)] == [True, True, False, False, False]
    assert [request(1.0) for _ in range(3)] == [True, False, False]
    assert store["h"] == log(0.0, 0.0, 1.0)
    assert request(2.0) is False  # now the hour is used up
