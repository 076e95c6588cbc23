"""``uncharged``: a limit that admitted a request another limit refused reports the state the
refusal kept, and its ``available_after`` is never too early: a client that waits it (and
sends nothing meanwhile) finds more than the ``remaining`` it was told.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _support import T0
from surefoot.ratelimit._algorithms import ALGORITHM_BY_NAME, uncharged
from surefoot.ratelimit._limit import Limit

_TIMED = ["fixed_window", "sliding_log", "sliding_window", "token_bucket", "leaky_bucket", "gcra"]


def remaining_at(algorithm: str, state: object, now: float, limit: Limit) -> int:
    """What a cost-free look at ``state`` at ``now`` says remains (nothing is charged)."""
    decision, _ = ALGORITHM_BY_NAME[algorithm].decide(state, now, 0, limit)
    return int(decision.remaining)


@pytest.mark.parametrize("algorithm", _TIMED)
@settings(max_examples=150, deadline=None)
@given(
    amount=st.integers(1, 8),
    window=st.sampled_from([1.0, 10.0, 60.0]),
    gaps=st.lists(st.floats(0.0, 1.5), min_size=1, max_size=12),
    cost=st.integers(1, 3),
)
def test_waiting_an_uncharged_limits_t_finds_more(
    algorithm: str, amount: int, window: float, gaps: list[float], cost: int
) -> None:
    limit = Limit(amount, window, algorithm=algorithm)
    cls = ALGORITHM_BY_NAME[algorithm]
    state, now = None, T0
    for gap in gaps:  # some history, admitted or not
        now += gap * window
        _, state = cls.decide(state, now, 1, limit)
    decision, _ = cls.decide(state, now, cost, limit)
    if not decision.allowed:
        return
    # Another limit refused the request: nothing was charged, ``state`` is what stays.
    told = uncharged(decision, cost, limit)
    assert told.remaining == remaining_at(algorithm, state, now, limit)
    assert 0.0 <= told.available_after <= window + 1e-9
    if told.available_after > 0:
        later = now + told.available_after + 1e-6 * window
        assert remaining_at(algorithm, state, later, limit) > told.remaining


def test_a_leaky_queue_that_was_empty_reads_as_full_once_uncharged() -> None:
    limit = Limit(4, 1.0, algorithm="leaky_queue", max_wait=1.0)
    cls = ALGORITHM_BY_NAME["leaky_queue"]
    first, state = cls.decide(None, T0, 1, limit)
    assert first.delay == 0.0
    told = uncharged(first, 1, limit)
    assert (told.remaining, told.available_after) == (first.remaining + 1, 0.0)
    queued, _ = cls.decide(state, T0, 1, limit)
    assert queued.delay > 0.0  # the queue is not empty: what it frees is the charged state's
    assert uncharged(queued, 1, limit).available_after == queued.available_after
