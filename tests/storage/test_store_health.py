"""StoreHealth, the outage tracker the middlewares share (sans-I/O): its transition
table, backoff, jitter and properties against any sequence of calls."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _support import T0
from surefoot._health import HealthChange, HealthState, Permit, StoreHealth
from surefoot.errors import ConfigurationError


def tracker(state: HealthState, **options: Any) -> tuple[StoreHealth, Permit]:
    """A tracker in ``state`` at T0 (no jitter: waits are exact), and its last call permit.

    DOWN: the store failed at T0 (first probe due at T0 + 0.5). PROBING: the probe went
    out at T0 + 0.5.
    """
    options.setdefault("jitter", 0)
    health = StoreHealth(**options)
    permit = health.permit(T0)
    if state is not HealthState.HEALTHY:
        health.failed(permit, T0)
    if state is HealthState.PROBING:
        permit = health.permit(T0 + 0.5)
    assert health.state is state
    return health, permit


def ask(at: float) -> Callable[[StoreHealth, Permit], object]:
    def step(health: StoreHealth, permit: Permit) -> object:
        new = health.permit(at)
        return (new.call, new.probe)

    return step


def report(outcome: str, at: float) -> Callable[[StoreHealth, Permit], object]:
    def step(health: StoreHealth, permit: Permit) -> object:
        if outcome == "succeeded":
            return health.succeeded(permit, at)
        if outcome == "failed":
            return health.failed(permit, at)
        health.abandoned(permit, at)
        return None

    return step


CALL, SKIP, PROBE = (True, False), (False, False), (True, True)

# (start state, input, expected state, expected output): the transition table, written out.
TRANSITIONS = [
    (HealthState.HEALTHY, ask(T0 + 1), HealthState.HEALTHY, CALL),
    (HealthState.HEALTHY, report("succeeded", T0 + 1), HealthState.HEALTHY, None),
    (
        HealthState.HEALTHY,
        report("failed", T0 + 1),
        HealthState.DOWN,
        HealthChange(HealthState.DOWN, T0 + 1, 0.0, 0),
    ),
    (HealthState.HEALTHY, report("abandoned", T0 + 1), HealthState.HEALTHY, None),
    (HealthState.DOWN, ask(T0 + 0.499), HealthState.DOWN, SKIP),
    (HealthState.DOWN, ask(T0 + 0.5), HealthState.PROBING, PROBE),
    # The wall clock went back by more than max_backoff: the probe is not postponed.
    (HealthState.DOWN, ask(T0 - 31), HealthState.PROBING, PROBE),
    (HealthState.PROBING, ask(T0 + 1), HealthState.PROBING, SKIP),
    # The probe out has been silent for max_backoff: presumed lost, a new one goes.
    (HealthState.PROBING, ask(T0 + 30.5), HealthState.PROBING, PROBE),
    (
        HealthState.PROBING,
        report("succeeded", T0 + 2),
        HealthState.HEALTHY,
        HealthChange(HealthState.HEALTHY, T0, 2.0, 0),
    ),
    (HealthState.PROBING, report("failed", T0 + 0.6), HealthState.DOWN, None),
    (HealthState.PROBING, report("abandoned", T0 + 0.6), HealthState.DOWN, None),
]


@pytest.mark.parametrize(("start", "step", "state", "output"), TRANSITIONS)
def test_transition_table(
    start: HealthState,
    step: Callable[[StoreHealth, Permit], object],
    state: HealthState,
    output: object,
) -> None:
    health, permit = tracker(start)
    assert step(health, permit) == output
    assert health.state is state


def test_a_failed_probe_doubles_the_wait_and_an_abandoned_one_lets_the_next_probe_at_once() -> None:
    health, probe = tracker(HealthState.PROBING)
    health.failed(probe, T0 + 0.5)  # the wait doubles: next probe at T0 + 1.5
    assert not health.permit(T0 + 1.499).call
    probe = health.permit(T0 + 1.5)
    assert probe.probe
    health.abandoned(probe, T0 + 1.6)
    assert health.permit(T0 + 1.6).probe  # no wait, no doubling


def test_backoff_doubles_up_to_the_maximum_and_recovery_resets_it() -> None:
    health, _ = tracker(HealthState.DOWN)  # failed at T0
    now, waits = T0, []
    for _ in range(9):
        wait = health.retry_after(now)
        waits.append(wait)
        now += wait
        probe = health.permit(now)
        assert probe.probe
        health.failed(probe, now)
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    now += health.retry_after(now)
    change = health.succeeded(health.permit(now), now)
    assert change == HealthChange(HealthState.HEALTHY, T0, now - T0, 9)
    down = health.failed(health.permit(now), now)
    assert down == HealthChange(HealthState.DOWN, now, 0.0, 0)
    assert health.retry_after(now) == 0.5


def test_jitter_shortens_waits_within_its_share_and_comes_from_the_given_random() -> None:
    waits = []
    for seed in range(50):
        health, _ = tracker(HealthState.DOWN, jitter=0.5, random=random.Random(seed))
        waits.append(health.retry_after(T0))
    assert all(0.25 <= w <= 0.5 for w in waits)
    assert len(set(waits)) > 40  # spread, not in step
    again, _ = tracker(HealthState.DOWN, jitter=0.5, random=random.Random(7))
    assert again.retry_after(T0) == waits[7]  # reproducible


def test_calls_in_flight_when_the_store_fails_start_one_outage_and_old_news_changes_nothing() -> (
    None
):
    health = StoreHealth(jitter=0)
    permits = [health.permit(T0) for _ in range(5)]
    changes = [health.failed(p, T0 + 0.05) for p in permits]
    assert changes == [HealthChange(HealthState.DOWN, T0 + 0.05, 0.0, 0), None, None, None, None]
    # A slow success from before the outage does not end it.
    early = StoreHealth(jitter=0)
    slow, fast = early.permit(T0), early.permit(T0)
    early.failed(fast, T0)
    assert early.succeeded(slow, T0 + 0.1) is None
    assert early.state is HealthState.DOWN
    # A lost probe that reports after its replacement went out is ignored too.
    health, lost = tracker(HealthState.PROBING)
    replacement = health.permit(T0 + 30.5)
    assert health.succeeded(lost, T0 + 31) is None
    assert health.failed(lost, T0 + 31) is None
    assert health.state is HealthState.PROBING
    assert health.succeeded(replacement, T0 + 31) is not None
    assert repr(health) == (
        "StoreHealth(state=healthy, initial_backoff=0.5, max_backoff=30.0, jitter=0.0)"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial_backoff": 0}, "StoreHealth.initial_backoff: expected seconds > 0, got 0"),
        (
            {"initial_backoff": 2, "max_backoff": 1},
            "StoreHealth.max_backoff: expected seconds >= initial_backoff (2), got 1",
        ),
        ({"jitter": 1}, "StoreHealth.jitter: expected a share from 0 up to"),
    ],
)
def test_tracker_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        StoreHealth(**options)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0, 40)),
        st.tuples(st.just("ask"), st.just(0)),
        st.tuples(st.sampled_from(["succeeded", "failed", "abandoned"]), st.integers(0, 20)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, seed=st.integers(0, 2**32 - 1))
def test_tracker_properties(ops: list[tuple[str, float]], seed: int) -> None:
    """Against any sequence: outages alternate with recoveries, nothing calls the store
    while it is down but one probe at a time, and no probe comes before its backoff."""
    health = StoreHealth(jitter=0.5, random=random.Random(seed))
    now = T0
    out: list[tuple[Permit, float]] = []  # permits to call, not yet reported
    changes: list[HealthState] = []
    down_at = None
    for op, arg in ops:
        if op == "advance":
            now += arg
        elif op == "ask":
            state = health.state
            wait = health.retry_after(now)
            permit = health.permit(now)
            if state is HealthState.HEALTHY:
                assert permit.call
                assert not permit.probe
            elif permit.call:
                assert permit.probe
                assert wait == 0
                # One probe at a time, unless the one out has been silent for max_backoff.
                live = [t for p, t in out if p.probe and p.generation == permit.generation - 1]
                assert all(now - t >= health.max_backoff for t in live)
                assert down_at is not None
                assert now - down_at >= health.initial_backoff * 0.5 or not changes
            if permit.call:
                out.append((permit, now))
        elif out:
            permit, _ = out.pop(int(arg) % len(out))
            if op == "succeeded":
                change = health.succeeded(permit, now)
            elif op == "failed":
                change = health.failed(permit, now)
            else:
                health.abandoned(permit, now)
                change = None
            if change is not None:
                changes.append(change.state)
                if change.state is HealthState.DOWN:
                    down_at = now
    expected = [HealthState.DOWN, HealthState.HEALTHY] * len(changes)
    assert changes == expected[: len(changes)]
