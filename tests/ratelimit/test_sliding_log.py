"""The sliding log's ``ListLog``: shared entries, dropped states, forks, bounded memory."""

from __future__ import annotations

import pytest
from tests._support import T0

from surefoot.ratelimit import ALGORITHM_BY_NAME, Limit, ListLog, LogEntry

SlidingLog = ALGORITHM_BY_NAME["sliding_log"]
INF = float("inf")


def admit(state: ListLog | None, now: float, limit: Limit, cost: int = 1) -> ListLog:
    decision, new = SlidingLog.decide(state, now, cost, limit)
    assert decision.allowed
    assert isinstance(new, ListLog)
    return new


def test_a_state_the_store_drops_leaves_nothing_behind() -> None:
    limit = Limit(3, 10)
    kept = admit(None, T0, limit)
    dropped = admit(kept, T0 + 1, limit)  # say another limit refused this request
    assert list(dropped) == [LogEntry(T0, 1, 1), LogEntry(T0 + 1, 2, 1)]
    again = admit(kept, T0 + 2, limit)  # the same key's next request, from the kept state
    assert list(again) == [LogEntry(T0, 1, 1), LogEntry(T0 + 2, 2, 1)]
    assert list(kept) == [LogEntry(T0, 1, 1)]


def test_two_states_decided_from_one_keep_their_own_entries() -> None:
    limit = Limit(3, 10)
    root = admit(None, T0, limit)
    left, right = admit(root, T0 + 1, limit), admit(root, T0 + 2, limit)
    left_next = admit(left, T0 + 3, limit)  # left's entry goes into the shared list
    right_next = admit(right, T0 + 4, limit)  # right's does not fit there: a copy
    assert [e.time for e in left_next] == [T0, T0 + 1, T0 + 3]
    assert [e.time for e in right_next] == [T0, T0 + 2, T0 + 4]
    assert [e.time for e in left] == [T0, T0 + 1]
    assert [e.time for e in root] == [T0]
    twin = admit(root, T0 + 1, limit)  # the same request as left's: its entry is there
    assert [e.time for e in admit(twin, T0 + 5, limit)] == [T0, T0 + 1, T0 + 5]
    assert [e.time for e in left_next] == [T0, T0 + 1, T0 + 3]


def test_reading_a_state_twice_adds_its_entry_once() -> None:
    limit = Limit(5, 10)
    state = admit(admit(None, T0, limit), T0 + 1, limit)
    first, _ = SlidingLog.decide(state, T0 + 2, 1, limit)
    second, _ = SlidingLog.decide(state, T0 + 2, 1, limit)
    assert first == second
    assert first.remaining == 2
    assert state.held == 2


def test_a_clock_that_steps_back_logs_at_the_newest_time() -> None:
    limit = Limit(3, 10)
    state = admit(None, T0 + 5, limit)
    decision, state = SlidingLog.decide(state, T0, 1, limit)
    assert decision.allowed
    assert [e.time for e in state] == [T0 + 5, T0 + 5]
    assert decision.reset_after == pytest.approx(15.0)  # the entry leaves at T0 + 15
    assert SlidingLog.expires_at(state, limit) == T0 + 15


def test_entries_that_left_the_window_are_let_go() -> None:
    # A key that stays busy keeps about twice its live entries at most, however long
    # it lives: the entries that left the window are dropped once they are the majority.
    limit = Limit(10, 1.0)
    state: ListLog | None = None
    held = []
    for i in range(5_000):
        state = admit(state, T0 + i * 0.25, limit)  # 4 live entries at any time
        held.append(state.held)
    assert max(held) <= 2 * 4 + 34


def test_a_long_log_is_neither_copied_nor_walked() -> None:
    # 60,000 live entries: an admission appends to the one shared list, a refusal finds
    # its answer by binary search, and neither makes a copy of the log.
    limit = Limit(60_000, 3600.0)
    state = ListLog([LogEntry(T0 + i * 0.01, i + 1, 1) for i in range(59_999)])
    entries = state._entries  # the list that must not be copied
    now = T0 + 600.0
    state = admit(state, now, limit)
    decision, same = SlidingLog.decide(state, now, 1, limit)
    assert not decision.allowed
    assert decision.retry_after == pytest.approx(3000.0)  # the entry at T0 leaves
    assert same is state
    assert state.held == 60_000
    assert state._entries is entries


def test_nothing_live_and_a_cost_above_the_amount_is_refused_for_good() -> None:
    limit = Limit(3, 10)
    decision, state = SlidingLog.decide(None, T0, 4, limit)
    assert (decision.allowed, decision.remaining, decision.retry_after) == (False, 3, INF)
    assert list(state) == []
    assert SlidingLog.expires_at(state, limit) == 0.0
    assert SlidingLog.expires_at(None, limit) == 0.0


def test_a_log_equals_a_log_of_the_same_entries_only() -> None:
    entries = [LogEntry(T0, 1, 1)]
    assert ListLog(list(entries)) == ListLog(list(entries))
    assert ListLog(list(entries)) != entries
    assert repr(ListLog(list(entries))) == f"ListLog({entries!r})"


def test_a_request_that_costs_nothing_leaves_no_entry() -> None:
    limit = Limit(3, 10)
    state = admit(None, T0, limit)
    decision, same = SlidingLog.decide(state, T0 + 1, 0, limit)
    assert (decision.allowed, decision.remaining) == (True, 2)
    assert same is state
    assert list(same) == [LogEntry(T0, 1, 1)]


def test_appending_after_an_entry_found_elsewhere_lets_go_of_what_came_before() -> None:
    log = ListLog([LogEntry(T0, 1, 1), LogEntry(T0 + 1, 2, 1), LogEntry(T0 + 2, 3, 1)])
    appended = log.appended(LogEntry(T0 + 3, 4, 1), LogEntry(T0 + 1, 2, 1))  # an equal copy
    assert list(appended) == [
        LogEntry(T0 + 1, 2, 1),
        LogEntry(T0 + 2, 3, 1),
        LogEntry(T0 + 3, 4, 1),
    ]
