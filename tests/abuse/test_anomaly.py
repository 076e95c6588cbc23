"""Per-client rate anomaly detection: the Rules of surefoot.abuse._anomaly, on simulated
traffic with injected time, and against a brute-force reference model."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.abuse._anomaly import IDLE, Anomaly, AnomalyDetector, AnomalySettings

DAY = 86_400
HOUR = 3600

Rate = Callable[[int], float]


def noisy(rate: float, rng: random.Random) -> int:
    """A Poisson-ish count for one second: mean ``rate``, +-30% jitter, random rounding."""
    return int(rate * (0.7 + 0.6 * rng.random()) + rng.random())


def run(
    detector: AnomalyDetector,
    rates: Mapping[str, Rate],
    start: int,
    end: int,
    rng: random.Random | None,
) -> list[Anomaly]:
    """Observes each client once a second over ``[start, end)`` (``rate(t)`` requests, with
    noise when ``rng`` is given), evaluating at every 10 s boundary; returns the changes."""
    events: list[Anomaly] = []
    for t in range(start, end):
        for client, rate in rates.items():
            r = rate(t)
            count = noisy(r, rng) if rng is not None else round(r)
            if count:
                detector.observe(client, t, count)
        if (t + 1) % 10 == 0:
            events += detector.evaluate(t + 1)
    return events


def constant(level: float) -> Rate:
    return lambda t: level


def jump(before: float, after: float, at: int, until: float = math.inf) -> Rate:
    return lambda t: after if at <= t < until else before


def sine(t: int) -> float:
    return 5 + 4 * math.sin(2 * math.pi * t / DAY)


def business(night: float, peak: float = 20.0) -> Rate:
    """``night`` until 08:00, a 2 h ramp to ``peak``, ``peak`` until 18:00, a 2 h ramp down."""

    def rate(t: int) -> float:
        h = (t % DAY) / HOUR
        if h < 8 or h >= 20:
            return night
        if h < 10:
            return night + (peak - night) * (h - 8) / 2
        if h < 18:
            return peak
        return peak - (peak - night) * (h - 18) / 2

    return rate


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"factor": 1.0}, "factor"),
        ({"factor": 0.5}, "factor"),
        ({"factor": math.nan}, "factor"),
        ({"sustain": -1.0}, "sustain"),
        ({"window": 0.0}, "window"),
        ({"window": -60.0}, "window"),
        ({"window": math.inf}, "window"),
        ({"step": 0.0}, "step"),
        ({"step": -10.0}, "step"),
        ({"step": math.nan}, "step"),
        ({"window": 65.0}, "window must be a whole multiple of step"),
        ({"window": 5.0}, "window must be a whole multiple of step"),
        ({"half_life": 0.0}, "half_life"),
        ({"min_rate": -0.1}, "min_rate"),
        ({"warmup": -1.0}, "warmup"),
        ({"adapt_after": 0.0}, "adapt_after"),
        ({"max_clients": 0}, "max_clients"),
    ],
)
def test_settings_refused(changes: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        AnomalySettings(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"window": 1.0, "step": 0.1},
        {"window": 10.0, "step": 10.0, "sustain": 0.0, "warmup": 0.0, "min_rate": 0.0},
        {"factor": 1.01, "max_clients": 1, "seasonal": False},
    ],
)
def test_settings_accepted(changes: dict[str, float]) -> None:
    AnomalyDetector(AnomalySettings(**changes))  # type: ignore[arg-type]


def test_negative_count_refused() -> None:
    with pytest.raises(ValueError, match="count"):
        AnomalyDetector().observe("a", 0.0, -1)


# -- detection ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tenfold_spike_is_caught_within_a_minute(seed: int) -> None:
    detector = AnomalyDetector()
    spike = 2 * HOUR
    events = run(detector, {"p": jump(5, 50, spike)}, 0, spike + 600, random.Random(seed))
    assert events, "the spike was not reported"
    first = events[0]
    assert first.client == "p"
    assert first.started
    assert spike < first.at <= spike + 60
    assert spike < first.since <= first.at
    assert first.rate > 5 * first.baseline
    assert 4 < first.baseline < 6
    assert detector.anomalous() == {"p": first}
    assert len(events) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tenfold_spike_overnight_is_caught_within_a_minute(seed: int) -> None:
    detector = AnomalyDetector()
    night = business(2.0)
    spike = DAY + 3 * HOUR
    traffic = {"p": lambda t: 20.0 if t >= spike else night(t)}
    events = run(detector, traffic, 0, spike + 300, random.Random(seed))
    assert [e.started for e in events] == [True]
    assert spike < events[0].at <= spike + 60


def test_no_false_alarm_over_seven_days_of_daily_rhythm() -> None:
    detector = AnomalyDetector()
    office = business(1.0)
    rng = random.Random(7)
    draw = rng.random
    events: list[Anomaly] = []
    # run() inlined, with each rate read once per step: this is 1.2 million observations.
    for step in range(0, 7 * DAY, 10):
        a, b = sine(step), office(step)
        for t in range(step, step + 10):
            detector.observe("sine", t, int(a * (0.7 + 0.6 * draw()) + draw()))
            detector.observe("office", t, int(b * (0.7 + 0.6 * draw()) + draw()))
        events += detector.evaluate(step + 10)
    assert events == []
    assert len(detector) == 2
    # Not vacuous: the same detector flags a tenfold jump of the steadier client.
    later = run(detector, {"sine": constant(10 * sine(7 * DAY))}, 7 * DAY, 7 * DAY + 120, None)
    assert [(e.client, e.started) for e in later] == [("sine", True)]


def test_anomaly_ends_when_the_spike_stops() -> None:
    detector = AnomalyDetector()
    spike, stop = 2 * HOUR, 2 * HOUR + 600
    events = run(detector, {"p": jump(5, 50, spike, stop)}, 0, stop + 300, random.Random(4))
    start, end = events
    assert start.started
    assert not end.started
    assert stop < end.at <= stop + 60
    assert end.since == start.at
    assert end.rate <= 5 * end.baseline
    assert detector.anomalous() == {}
    # The attack did not become the norm.
    assert detector.baseline("p") < 6


def test_a_lasting_new_level_is_accepted_after_adapt_after() -> None:
    detector = AnomalyDetector()
    spike = 2 * HOUR
    events = run(detector, {"p": jump(5, 50, spike)}, 0, spike + 3 * HOUR, None)
    start, end = events
    assert start.started
    assert not end.started
    # Learning resumes adapt_after into the anomaly; it ends once the baseline reaches a fifth.
    assert start.at + 3600 < end.at < start.at + 2 * 3600
    assert end.rate == 50
    assert detector.baseline("p") > 10


def test_an_attack_is_not_learnt_before_adapt_after() -> None:
    detector = AnomalyDetector(AnomalySettings(adapt_after=1e9))
    spike = 2 * HOUR
    events = run(detector, {"p": jump(5, 50, spike)}, 0, spike + 60, None)
    assert [e.started for e in events] == [True]
    learnt = detector.baseline("p")
    assert learnt < 5.5  # the few steps before the start, in excess or not, were learnt
    events = run(detector, {"p": constant(50)}, spike + 60, spike + 3 * HOUR, None)
    assert events == []
    assert detector.baseline("p") == learnt
    assert detector.rate("p") == 50


@pytest.mark.parametrize(("sustain", "steps"), [(0.0, 1), (10.0, 2), (20.0, 3), (25.0, 4)])
def test_sustain(sustain: float, steps: int) -> None:
    settings_ = AnomalySettings(sustain=sustain, warmup=0.0, window=10.0)
    detector = AnomalyDetector(settings_)
    events = run(detector, {"p": jump(2, 40, 600)}, 0, 700, None)
    assert [(e.started, e.at, e.since) for e in events] == [(True, 600 + 10 * steps, 610)]


@pytest.mark.parametrize(
    ("sustain", "counts", "expected"),
    [
        # One step of 50 over a baseline of min_rate, 1 req/s: 5 req/s is not above 5 * 1.
        (0.0, [0] * 10 + [50, 0], []),
        (0.0, [0] * 10 + [51, 0], [(True, 110, 110), (False, 120, 110)]),
        # An interrupted excess starts over: 20 s are needed without a break.
        (20.0, [10] * 10 + [200, 200, 10, 200, 200, 10], []),
        (
            20.0,
            [10] * 10 + [200, 200, 10, 200, 200, 200, 10],
            [(True, 160, 140), (False, 170, 160)],
        ),
    ],
)
def test_excess_is_strictly_above_and_unbroken(
    sustain: float, counts: list[int], expected: list[tuple[bool, int, int]]
) -> None:
    detector = AnomalyDetector(AnomalySettings(warmup=0.0, window=10.0, sustain=sustain))
    events: list[Anomaly] = []
    for i, count in enumerate(counts):
        detector.observe("a", 10 * i, count)
        events += detector.evaluate(10 * i + 10)
    assert [(e.started, e.at, e.since) for e in events] == expected


@pytest.mark.parametrize(("warmup", "at"), [(60.0, 60), (65.0, 70), (0.0, 60)])
def test_warmup_counts_from_the_first_bucket(warmup: float, at: int) -> None:
    detector = AnomalyDetector(AnomalySettings(warmup=warmup, window=10.0, sustain=0.0))
    events = run(detector, {"a": jump(1, 100, 50)}, 3, 100, None)
    assert events[0].at == at


@pytest.mark.parametrize(("warmup", "flagged"), [(600.0, False), (0.0, True), (200.0, True)])
def test_a_new_client_is_learnt_during_warmup(warmup: float, flagged: bool) -> None:
    detector = AnomalyDetector(AnomalySettings(warmup=warmup))
    # 2 req/s for five minutes, then 100 req/s until the end of the first ten minutes.
    events = run(detector, {"new": jump(2, 100, 300, 600)}, 0, 600, None)
    assert bool(events) is flagged
    assert all(e.at >= warmup for e in events)


@pytest.mark.parametrize(("min_rate", "flagged"), [(1.0, False), (0.0, True), (0.5, True)])
def test_min_rate_spares_tiny_clients(min_rate: float, flagged: bool) -> None:
    # One request every ten seconds: 0.1 req/s.
    detector = AnomalyDetector(AnomalySettings(min_rate=min_rate))
    events: list[Anomaly] = []
    for t in range(0, HOUR, 10):
        detector.observe("tiny", t)
        events += detector.evaluate(t + 10)
    assert events == []
    assert detector.baseline("tiny") == max(min_rate, 0.1)
    events += run(detector, {"tiny": constant(3)}, HOUR, HOUR + 300, None)
    assert bool(events) is flagged


def seasonal_days(detector: AnomalyDetector, second_day: int) -> list[Anomaly]:
    """Day 0: 2 req/s, 8 req/s from 10:00 to 11:00 (a fourfold rise: not flagged).
    Day ``second_day``, after an idle gap if it is not day 1: 2 req/s from 09:00, 12 req/s
    from 10:00 to 10:30."""
    events = run(detector, {"c": jump(2, 8, 10 * HOUR, 11 * HOUR)}, 0, DAY, None)
    assert events == []
    day = second_day * DAY
    start = day if second_day == 1 else day + 9 * HOUR
    rise = jump(2, 12, day + 10 * HOUR)
    return run(detector, {"c": rise}, start, day + 10 * HOUR + 1800, None)


def test_yesterdays_rise_at_the_same_hour_is_not_flagged() -> None:
    detector = AnomalyDetector()
    assert seasonal_days(detector, 1) == []
    assert detector.baseline("c") == 8


def test_without_seasonal_the_same_rise_is_flagged() -> None:
    detector = AnomalyDetector(AnomalySettings(seasonal=False))
    events = seasonal_days(detector, 1)
    assert [e.started for e in events] == [True]
    assert events[0].baseline < 3


def test_an_hour_from_two_days_ago_is_not_used() -> None:
    # Idle all of day 1 (no evaluate, so the client is not forgotten): on day 2 the 10:00 mean
    # kept is day 0's, two days old.
    detector = AnomalyDetector()
    events = seasonal_days(detector, 2)
    assert [e.started for e in events] == [True]
    assert events[0].baseline < 3


# -- time: late calls, a clock going back, gaps -------------------------------------------------


def test_a_clock_going_back_is_ignored() -> None:
    detector = AnomalyDetector(AnomalySettings(warmup=0.0))
    detector.observe("a", 5.0, 10)
    assert detector.evaluate(30.0) == []
    assert detector.rate("a") == 10 / 60
    assert detector.evaluate(20.0) == []
    assert detector.evaluate(39.0) == []  # the same bucket: nothing closes
    # Counted in the first open bucket, [30, 40), not in the closed ones.
    detector.observe("a", 12.0, 6)
    detector.observe("late", 1.0, 3)
    assert detector.rate("a") == 10 / 60
    assert detector.evaluate(20.0) == []
    assert detector.rate("a") == 10 / 60
    assert detector.evaluate(40.0) == []
    assert detector.rate("a") == 16 / 60
    assert detector.rate("late") == 3 / 60
    assert detector.evaluate(90.0) == []
    assert detector.rate("a") == 6 / 60  # [0, 10) left the window
    assert detector.rate("late") == 3 / 60  # counted in [30, 40) too, a new client or not


def test_an_observation_ahead_of_evaluate_waits_for_its_bucket() -> None:
    detector = AnomalyDetector()
    detector.observe("a", 0.0, 1)
    detector.observe("ahead", 100.0, 5)
    detector.observe("a", 100.0, 7)
    assert detector.evaluate(50.0) == []
    assert detector.rate("ahead") == 0.0
    assert detector.baseline("ahead") == 1.0
    assert detector.rate("a") == 1 / 60
    assert detector.evaluate(110.0) == []
    assert detector.rate("ahead") == 5 / 60
    assert detector.rate("a") == 7 / 60


def test_a_late_evaluate_reports_start_and_end_in_time_order() -> None:
    # A one-step window: the windowed rate is the step's rate.
    s = AnomalySettings(warmup=0.0, sustain=0.0, window=10.0)
    late = AnomalyDetector(s)
    for t in range(600):
        late.observe("a", t, 2)
        late.observe("b", t, 2)
    for t in range(600, 630):
        late.observe("b", t, 40)
    for t in range(600, 640):
        late.observe("a", t, 40)
    events = late.evaluate(10 * DAY)
    assert [(e.client, e.started, e.at) for e in events] == [
        ("a", True, 610),
        ("b", True, 610),
        ("b", False, 640),
        ("a", False, 650),
    ]
    assert late.rate("a") == 0.0
    assert late.anomalous() == {}


def test_a_gap_is_closed_without_a_step_per_bucket() -> None:
    detector = AnomalyDetector(AnomalySettings(half_life=1e15))
    run(detector, {"a": constant(5)}, 0, 600, None)
    # A billion empty steps: one per bucket would not finish.
    assert detector.evaluate(600 + 1e10) == []
    assert detector.rate("a") == 0.0
    assert 4.9 < detector.baseline("a") < 5


@pytest.mark.parametrize("gap", [70, 3 * HOUR, 20 * HOUR])
def test_a_late_evaluate_learns_as_evaluating_every_step(gap: int) -> None:
    on_time, late = AnomalyDetector(), AnomalyDetector()
    run(on_time, {"a": constant(5)}, 0, HOUR, None)
    run(late, {"a": constant(5)}, 0, HOUR, None)
    for t in range(HOUR + 10, HOUR + gap + 10, 10):
        on_time.evaluate(t)
    late.evaluate(HOUR + gap)
    assert late.rate("a") == on_time.rate("a") == 0.0
    assert late.baseline("a") == pytest.approx(on_time.baseline("a"), rel=1e-9)
    assert late.baseline("a") == pytest.approx(max(1.0, 5 * 2 ** (-gap / HOUR)), rel=0.01)


# -- memory: forgetting and eviction ----------------------------------------------------------


def test_an_idle_quiet_client_is_forgotten_after_a_day() -> None:
    detector = AnomalyDetector()
    run(detector, {"a": constant(5), "b": constant(5)}, 0, HOUR, None)
    detector.observe("b", HOUR + IDLE - 100)
    detector.evaluate(HOUR - 1 + IDLE)  # "a" last observed at HOUR - 1
    assert len(detector) == 2  # idle for exactly a day: kept
    detector.evaluate(HOUR - 1 + IDLE + 10)
    assert len(detector) == 1
    assert detector.rate("a") == detector.baseline("a") == 0.0
    assert detector.baseline("b") == 1.0


def test_an_idle_client_with_a_remembered_rate_is_kept() -> None:
    detector = AnomalyDetector(AnomalySettings(half_life=30 * DAY))
    run(detector, {"a": constant(5)}, 0, HOUR, None)
    detector.evaluate(10 * DAY)
    assert len(detector) == 1
    assert detector.baseline("a") > 3


def test_least_recently_observed_client_is_evicted() -> None:
    detector = AnomalyDetector(AnomalySettings(max_clients=2))
    detector.observe("a", 0.0)
    detector.observe("b", 1.0)
    detector.observe("a", 2.0)
    detector.observe("c", 3.0)
    assert len(detector) == 2
    detector.evaluate(10.0)
    assert detector.rate("b") == 0.0
    assert detector.rate("a") == 2 / 60
    assert detector.rate("c") == 1 / 60


def test_unknown_client() -> None:
    detector = AnomalyDetector()
    assert detector.rate("nobody") == 0.0
    assert detector.baseline("nobody") == 0.0
    assert detector.anomalous() == {}
    assert len(detector) == 0


# -- properties ---------------------------------------------------------------------------------

Op = tuple[str, int, str, int]  # ("observe", dt, client, count) or ("evaluate", dt, "", 0)

gaps = st.one_of(st.integers(0, 25), st.sampled_from([59, 600, 3 * HOUR, DAY + 7, 3 * DAY]))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("observe"), gaps, st.sampled_from("abc"), st.integers(0, 50)),
        st.tuples(st.just("evaluate"), gaps, st.just(""), st.just(0)),
    ),
    max_size=60,
)
shapes = st.sampled_from([(10.0, 60.0), (10.0, 10.0), (1.0, 5.0), (2.5, 7.5), (60.0, 120.0)])


def reference_rates(
    trace: Sequence[Op], step: float, window: float
) -> tuple[dict[str, float], float | None]:
    """The windowed rate of each client observed: with ``T = floor(now / step)`` for the
    last ``evaluate(now)`` (times never go back here), the counts observed at a time ``t``
    with ``T - window / step <= floor(t / step) < T``, summed, over ``window``."""
    now = 0
    observed: list[tuple[str, int, int]] = []
    last_evaluate: float | None = None
    for kind, dt, client, count in trace:
        now += dt
        if kind == "observe":
            observed.append((client, now, count))
        else:
            last_evaluate = now
    sums = dict.fromkeys("abc", 0)
    if last_evaluate is not None:
        end = math.floor(last_evaluate / step)
        start = end - round(window / step)
        for client, t, count in observed:
            if start <= math.floor(t / step) < end:
                sums[client] += count
    return {c: total / window for c, total in sums.items()}, last_evaluate


@settings(max_examples=300, deadline=None)
@given(trace=ops, shape=shapes)
def test_rate_is_the_windowed_mean_of_closed_buckets(
    trace: list[Op], shape: tuple[float, float]
) -> None:
    step, window = shape
    detector = AnomalyDetector(AnomalySettings(step=step, window=window, warmup=0.0))
    now = 0
    for kind, dt, client, count in trace:
        now += dt
        if kind == "observe":
            detector.observe(client, now, count)
        else:
            detector.evaluate(now)
    expected, _ = reference_rates(trace, step, window)
    assert {c: detector.rate(c) for c in "abc"} == expected
    assert len(detector) <= 3


spiky = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 12), st.sampled_from([120, 900])),
        st.sampled_from("ab"),
        st.one_of(st.integers(0, 5), st.integers(50, 400)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    trace=spiky,
    sustain=st.sampled_from([0.0, 10.0, 20.0]),
    evaluate_at=st.sets(st.integers(0, 80), max_size=5),
)
def test_evaluating_late_reports_what_evaluating_on_time_does(
    trace: list[tuple[int, str, int]], sustain: float, evaluate_at: set[int]
) -> None:
    s = AnomalySettings(
        sustain=sustain, warmup=30.0, half_life=300.0, adapt_after=120.0, min_rate=0.5
    )
    on_time, late = AnomalyDetector(s), AnomalyDetector(s)
    on_time_events: list[Anomaly] = []
    late_events: list[Anomaly] = []
    now = 0
    for i, (dt, client, count) in enumerate(trace):
        now += dt
        on_time_events += on_time.evaluate(now)
        if i in evaluate_at:
            late_events += late.evaluate(now)
        on_time.observe(client, now, count)
        late.observe(client, now, count)
    on_time_events += on_time.evaluate(now + 1000)
    late_events += late.evaluate(now + 1000)

    def key(e: Anomaly) -> tuple[str, bool, float, float, float]:
        return (e.client, e.started, e.at, e.rate, e.since)

    assert [key(e) for e in late_events] == [key(e) for e in on_time_events]
    for a, b in zip(late_events, on_time_events, strict=True):
        assert a.baseline == pytest.approx(b.baseline, rel=1e-9)
    for client in "ab":
        assert late.rate(client) == on_time.rate(client)
        assert late.baseline(client) == pytest.approx(on_time.baseline(client), rel=1e-9)
    assert late.anomalous().keys() == on_time.anomalous().keys()
