"""The alerting rules' native evaluation: increases over snapshots (resets, missing
series), selection and grouping, each condition, the pending/firing state machine, the
annotation templates, and the gateway's rules evaluated natively on promtool's cases."""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _support import T0
from surefoot.gateway import load_config
from surefoot.gateway._alerts import rule_specs
from surefoot.metrics._alert import Labels, labels_of
from surefoot.metrics._rules import (
    CountsAbove,
    Evaluator,
    GaugeAbove,
    LabelMatcher,
    RateAbove,
    Ratio,
    RuleSpec,
    Samples,
    Series,
    Spike,
    promql_duration,
    render,
)

DAY = 86400.0
CALLS = "calls_total"


def series(name: str = CALLS, **labels: str) -> Series:
    return (name, labels_of(**labels))


def history(
    columns: dict[Series, list[float | None]], every: float = 60.0, retention: float = DAY
) -> Samples:
    """Snapshots every ``every`` seconds from ``T0``: one per position of the columns,
    ``None`` where a series is missing from a snapshot."""
    samples = Samples(retention)
    length = max(len(values) for values in columns.values())
    for index in range(length):
        snapshot = {
            key: value
            for key, values in columns.items()
            if index < len(values) and (value := values[index]) is not None
        }
        samples.add(T0 + every * index, snapshot)
    return samples


def at(minute: float) -> float:
    return T0 + 60 * minute


# --- durations and matchers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.9, "0s"), (45, "45s"), (90, "90s"), (120, "2m"), (3600, "1h"), (86400, "1d")],
)
def test_promql_duration(seconds: float, text: str) -> None:
    assert promql_duration(seconds) == text


@pytest.mark.parametrize(
    ("matcher", "labels", "matches"),
    [
        (LabelMatcher("state", "=", "open"), {"state": "open"}, True),
        (LabelMatcher("state", "=", "open"), {"state": "opened"}, False),
        (LabelMatcher("state", "=", ""), {}, True),  # a missing label is ""
        (LabelMatcher("state", "=~", "open|forced_open"), {"state": "forced_open"}, True),
        (LabelMatcher("state", "=~", "open|forced_open"), {"state": "reopen"}, False),
        (LabelMatcher("state", "=~", "open|forced_open"), {"state": "opened"}, False),
        (LabelMatcher("state", "=~", "open|forced_open"), {}, False),
        (LabelMatcher("state", "=~", ".*"), {}, True),
    ],
)
def test_label_matchers_are_fully_anchored(
    matcher: LabelMatcher, labels: dict[str, str], matches: bool
) -> None:
    assert matcher.matches(labels) is matches


def test_label_matcher_promql_quotes_the_value() -> None:
    assert LabelMatcher("a", "=", 'x"y\\z').promql() == 'a="x\\"y\\\\z"'
    assert LabelMatcher("a", "=~", "b|c").promql() == 'a=~"b|c"'


def test_label_matcher_refuses_a_bad_op_or_regex() -> None:
    with pytest.raises(ValueError, match="op must be"):
        LabelMatcher("a", "!=", "b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a=~'\\(': "):
        LabelMatcher("a", "=~", "(")


def test_equal_matchers_are_equal_and_hash_alike() -> None:
    one, two = LabelMatcher("a", "=~", "b+"), LabelMatcher("a", "=~", "b+")
    assert one == two
    assert hash(one) == hash(two)


# --- samples ----------------------------------------------------------------------------


def test_samples_refuse_a_retention_of_zero_and_a_snapshot_not_after_the_last() -> None:
    with pytest.raises(ValueError, match="retention must be > 0"):
        Samples(0)
    samples = Samples(60)
    samples.add(T0, {})
    with pytest.raises(ValueError, match="not after the last one"):
        samples.add(T0, {})


def test_samples_keep_the_retention_only() -> None:
    samples = Samples(retention=300)
    for index in range(100):
        samples.add(T0 + 60 * index, {series(): float(index)})
    # Snapshots 5 minutes apart at most: the retention over the interval, plus one.
    assert len(samples) == 6
    assert samples.span(at(99)) == 300
    assert [t for t, _ in samples.snapshots(0, at(1000))] == [at(m) for m in range(94, 100)]


def test_samples_snapshots_latest_and_span() -> None:
    samples = history({series(): [1, 2, 3, 4]})
    assert samples.snapshots(at(1), at(2)) == [(at(1), {series(): 2}), (at(2), {series(): 3})]
    assert samples.latest(at(2.5)) == {series(): 3}
    assert samples.latest(at(-1)) == {}
    assert samples.span(at(10)) == 600
    assert samples.span(at(-1)) == 0
    assert Samples(60).span(T0) == 0


def test_snapshots_hold_the_series_present_in_each() -> None:
    early, late = series(kind="early"), series(kind="late")
    samples = history({early: [1, None, 3], late: [None, None, None, 9]})
    assert samples.snapshots(T0, at(2)) == [(T0, {early: 1}), (at(1), {}), (at(2), {early: 3})]
    assert samples.snapshots(at(3), at(3)) == [(at(3), {late: 9})]
    assert samples.snapshots(at(2), at(1)) == []


def test_samples_copy_what_they_are_given() -> None:
    values = {series(): 1.0}
    samples = Samples(60)
    samples.add(T0, values)
    values[series()] = 5.0
    assert samples.latest(T0) == {series(): 1.0}


def test_series_that_go_away_are_forgotten_once_their_last_value_expired() -> None:
    samples = Samples(retention=90)
    many = {series(client=str(n)): 1.0 for n in range(200)}
    samples.add(T0, many | {series(): 0.0, series("other_total"): 1.0})
    samples.add(at(1), {series(): 10.0})  # the 200 clients and other_total are gone
    assert len(samples._columns[CALLS]) == 201  # their values at T0 are still kept
    assert samples.increase(CALLS, (), (), T0, at(1)) == {(): 10.0}
    samples.add(at(2), {series(): 25.0, series(client="new"): 2.0})  # T0 expired
    assert list(samples._columns) == [CALLS]
    assert list(samples._columns[CALLS]) == [labels_of(), labels_of(client="new")]
    assert samples.increase(CALLS, (), ("client",), T0, at(2)) == {
        (): 15.0,
        labels_of(client="new"): 2.0,
    }


def test_a_nan_value_is_an_absent_one() -> None:
    samples = history({series(): [0, 10, math.nan, 4]})
    assert samples.latest(at(2)) == {}
    assert samples.snapshots(at(2), at(2)) == [(at(2), {})]
    assert samples.increase(CALLS, (), (), T0, at(3)) == {(): 14}
    assert samples.increase(CALLS, (), (), at(1), at(2)) == {}


# --- increase ---------------------------------------------------------------------------

Column = list[float | None]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 10, 20, 30], 30),
        ([5, 5, 5, 5], 0),
        ([0, 10, 3, 5], 15),  # reset: 3 counts whole
        ([0, 10, 0, 0], 10),  # reset to 0
        ([None, None, 5, 7], 7),  # appears: counts from 0
        ([0, 10, None, 4], 14),  # gone for a snapshot, back from 0
        ([0, 10, None, None], 10),  # gone
        ([100, 50, 200], 200),  # 50 is a reset, then +150
    ],
)
def test_increase_sums_deltas_and_counts_resets(values: Column, expected: float) -> None:
    samples = history({series(): values})
    assert samples.increase(CALLS, (), (), T0, at(len(values))) == {(): expected}


def test_increase_inside_a_gap_and_across_it() -> None:
    samples = history({series(): [0, 10, None, None, None, 20, None, 25]})
    assert samples.increase(CALLS, (), (), at(1), at(4)) == {}  # absent after the first
    assert samples.increase(CALLS, (), (), at(3), at(4)) == {}
    assert samples.increase(CALLS, (), (), at(1), at(5)) == {(): 20}  # back: from 0
    assert samples.increase(CALLS, (), (), at(5), at(7)) == {(): 25}
    assert samples.increase(CALLS, (), (), at(6), at(7)) == {(): 25}
    assert samples.increase(CALLS, (), (), T0, at(9)) == {(): 55}


def test_increase_needs_two_snapshots_in_the_span() -> None:
    samples = history({series(): [0, 10, 20]})
    assert samples.increase(CALLS, (), (), at(2), at(5)) == {}
    assert samples.increase(CALLS, (), (), at(1), at(2)) == {(): 10}  # both ends included
    assert samples.increase("other_total", (), (), T0, at(2)) == {}


def test_increase_only_in_the_snapshot_before_the_span_counts_nothing() -> None:
    samples = history({series(): [0, 100, None], series(kind="b"): [None, None, 7]})
    assert samples.increase(CALLS, (), ("kind",), at(1), at(2)) == {labels_of(kind="b"): 7}


def test_increase_groups_selects_and_leaves_out_missing_labels() -> None:
    samples = history(
        {
            series(policy="a", outcome="rejected"): [0, 6],
            series(policy="a", outcome="allowed"): [0, 100],
            series(policy="b", outcome="rejected"): [0, 3],
            series(policy="b", outcome="rejected", worker="2"): [0, 4],
            series(outcome="rejected"): [0, 1],
            series(policy="", outcome="rejected"): [0, 2],
            series("other_total", policy="a", outcome="rejected"): [0, 50],
        }
    )
    rejected = (LabelMatcher("outcome", "=", "rejected"),)
    assert samples.increase(CALLS, rejected, ("policy",), T0, at(1)) == {
        labels_of(policy="a"): 6,
        labels_of(policy="b"): 7,
        (): 3,  # no policy label, or an empty one: left out of the group
    }
    assert samples.increase(CALLS, rejected, (), T0, at(1)) == {(): 16}
    regex = (LabelMatcher("policy", "=~", "a|b"), LabelMatcher("outcome", "=~", "rej.*"))
    assert samples.increase(CALLS, regex, ("policy", "outcome"), T0, at(1)) == {
        labels_of(policy="a", outcome="rejected"): 6,
        labels_of(policy="b", outcome="rejected"): 7,
    }


def test_groups_are_sorted_labels_whatever_order_the_series_gave() -> None:
    unsorted: Series = (CALLS, (("policy", "a"), ("outcome", "rejected")))
    samples = history({unsorted: [0, 5]})
    assert samples.increase(CALLS, (), ("policy", "outcome"), T0, at(1)) == {
        (("outcome", "rejected"), ("policy", "a")): 5
    }


@st.composite
def counter_runs(draw: st.DrawFn) -> tuple[list[float], float, bool]:
    """A counter sampled once a step: each step adds events, sometimes after a restart
    (the value starts again from 0); the true number of events; whether every restart
    shows as a drop."""
    steps = draw(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), min_size=1, max_size=30))
    value = float(draw(st.integers(0, 1000)))
    values, true, visible = [value], 0.0, True
    for restart, events in steps:
        if restart:
            # A restart shows when the value drops; one from 0 loses nothing anyway.
            visible = visible and (events < value or value == 0)
            value = 0.0
        value += events
        true += events
        values.append(value)
    return values, true, visible


@given(counter_runs())
def test_increase_counts_every_event_when_each_restart_shows(
    run: tuple[list[float], float, bool],
) -> None:
    values, true, visible = run
    samples = history({series(): list(values)}, every=15.0)
    found = samples.increase(CALLS, (), (), T0, T0 + 15.0 * len(values)).get((), 0.0)
    if visible:
        assert found == true
    else:
        assert found < true  # a restart that does not drop hides the count before it


@given(st.lists(st.integers(0, 100), min_size=3, max_size=20), st.data())
def test_increase_adds_up_over_adjacent_spans(steps: list[int], data: st.DataObject) -> None:
    values = [float(sum(steps[: i + 1])) for i in range(len(steps))]
    samples = history({series(): list(values)})
    middle = at(data.draw(st.integers(0, len(values) - 1)))
    end = at(len(values))
    whole = samples.increase(CALLS, (), (), T0, end).get((), 0.0)
    parts = samples.increase(CALLS, (), (), T0, middle).get((), 0.0)
    parts += samples.increase(CALLS, (), (), middle, end).get((), 0.0)
    assert whole == parts == values[-1] - values[0]


class Reference:
    """Rules 1 and 2 as written: every kept snapshot as a dict, the increase summed over
    each two consecutive snapshots of the span."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self.kept: list[tuple[float, dict[Series, float]]] = []

    def add(self, t: float, values: dict[Series, float]) -> None:
        self.kept = [(u, v) for u, v in [*self.kept, (t, values)] if u >= t - self.retention]

    def increase(
        self,
        metric: str,
        match: tuple[LabelMatcher, ...],
        by: tuple[str, ...],
        start: float,
        end: float,
    ) -> dict[Labels, float]:
        span = [values for t, values in self.kept if start <= t <= end]
        totals: dict[Labels, float] = {}
        for before, after in itertools.pairwise(span):
            for (name, labels), value in after.items():
                if name != metric or not all(m.matches(dict(labels)) for m in match):
                    continue
                group = tuple(sorted((k, v) for k, v in labels if k in by and v))
                previous = before.get((name, labels))
                delta = value if previous is None or value < previous else value - previous
                totals[group] = totals.get(group, 0.0) + delta
        return totals


KEYS = (
    series(kind="a"),
    series(kind="a", worker="2"),
    series(kind="b"),
    series("other_total", kind="a"),
)
QUERIES = [
    (CALLS, (), ()),
    (CALLS, (), ("kind",)),
    (CALLS, (LabelMatcher("kind", "=", "a"),), ("worker",)),
    ("other_total", (), ("kind",)),
]


@st.composite
def snapshot_runs(draw: st.DrawFn) -> tuple[int, list[tuple[int, dict[Series, float]]]]:
    """A retention and snapshots (seconds since the last one, values): each series is
    absent, or counts up from its last value, or restarts from 0."""
    retention = draw(st.integers(1, 240))
    last = dict.fromkeys(KEYS, 0.0)
    runs = []
    for _ in range(draw(st.integers(1, 40))):
        values = {}
        for key in KEYS:
            cell = draw(st.none() | st.tuples(st.booleans(), st.integers(0, 30)))
            if cell is not None:
                restart, events = cell
                values[key] = last[key] = (0.0 if restart else last[key]) + events
        runs.append((draw(st.integers(1, 60)), values))
    return retention, runs


@given(snapshot_runs(), st.data())
def test_samples_agree_with_the_snapshots_as_written(
    run: tuple[int, list[tuple[int, dict[Series, float]]]], data: st.DataObject
) -> None:
    """After every add (expiry and compaction included): the same snapshots, and every
    increase equal to the one summed over them (gaps, resets, spans at and between
    snapshots, empty and reversed spans)."""
    retention, steps = run
    samples, reference = Samples(retention), Reference(retention)
    t = T0
    for interval, values in steps:
        t += interval
        samples.add(t, values)
        reference.add(t, values)
        assert samples.snapshots(-math.inf, math.inf) == reference.kept
        assert len(samples) == len(reference.kept)
        assert samples.span(t) == t - reference.kept[0][0]
        when = t - data.draw(st.integers(-5, retention + 60))
        before = [values for u, values in reference.kept if u <= when]
        assert samples.latest(when) == (before[-1] if before else {})
        start = t - data.draw(st.integers(-5, retention + 60))
        end = start + data.draw(st.integers(-10, retention + 60))
        assert samples.snapshots(start, end) == [
            (u, values) for u, values in reference.kept if start <= u <= end
        ]
        for metric, match, by in QUERIES:
            expected = reference.increase(metric, match, by, start, end)
            assert samples.increase(metric, match, by, start, end) == expected


# --- conditions -------------------------------------------------------------------------


def _steady_then(rate: float, minutes: int, then: float, for_minutes: int) -> list[float | None]:
    """A counter at ``rate``/s for ``minutes``, then at ``then``/s, sampled every minute."""
    values: list[float | None] = [rate * 60 * m for m in range(minutes + 1)]
    last = rate * 60 * minutes
    values += [last + then * 60 * m for m in range(1, for_minutes + 1)]
    return values


def test_rate_above() -> None:
    condition = RateAbove(CALLS, (), ("store",), 60, 0.5)
    samples = history({series(store="a"): [0, 60, 90], series(store="b"): [0, 0, 120]})
    assert condition.evaluate(samples, at(1)) == {labels_of(store="a"): 1.0}
    assert condition.evaluate(samples, at(2)) == {labels_of(store="b"): 2.0}  # a: 0.5, not above
    assert condition.promql() == "sum by (store) (rate(calls_total[1m])) > 0.5"
    overall = RateAbove(CALLS, (LabelMatcher("x", "=", "y"),), (), 90, 0)
    assert overall.promql() == 'sum(rate(calls_total{x="y"}[90s])) > 0'
    assert (condition.metrics, condition.history) == ((CALLS,), 60)
    with pytest.raises(ValueError, match="window must be > 0"):
        RateAbove(CALLS, (), (), 0, 1)


def _spike(**overrides: float) -> Spike:
    settings = {"window": 60.0, "baseline": 3600.0, "factor": 4.0, "min_rate": 0.1} | overrides
    return Spike(CALLS, (), ("policy",), **settings)


def test_spike_fires_above_factor_times_the_baseline_and_the_floor() -> None:
    # 1/s for two hours, then 10/s (promtool's case for the refusals rule).
    samples = history({series(policy="charges"): _steady_then(1, 120, 10, 5)}, retention=7200)
    spike = _spike()
    assert spike.evaluate(samples, at(120)) == {}
    assert spike.evaluate(samples, at(121)) == {labels_of(policy="charges"): 10.0}
    assert spike.evaluate(samples, at(125)) == {labels_of(policy="charges"): 10.0}
    # The mean is the last hour's (6300/3600 = 1.75/s at minute 125), not the whole
    # history's (10200/7500 = 1.36/s): 10/s is not 6 times it.
    assert _spike(factor=6).evaluate(samples, at(125)) == {}
    assert _spike(factor=5.7).evaluate(samples, at(125)) == {labels_of(policy="charges"): 10.0}


def test_spike_under_the_floor_never_fires() -> None:
    samples = history({series(policy="a"): [0.0] * 121 + [3.0 * m for m in range(1, 10)]})
    assert _spike().evaluate(samples, at(125)) == {}  # 0.05/s against 0: under 0.1/s
    assert _spike(min_rate=0.01).evaluate(samples, at(125)) == {labels_of(policy="a"): 0.05}


def test_spike_needs_two_windows_of_history_then_uses_what_there_is() -> None:
    samples = Samples(DAY)
    for seconds, value in ((0, 0), (30, 0), (90, 600), (150, 1200)):
        samples.add(T0 + seconds, {series(policy="a"): value})
    spike = _spike(factor=1.2)
    # 90 s of history: 10/s is above 1.2 times the mean over them (6.7/s), but too soon.
    assert spike.evaluate(samples, T0 + 90) == {}
    # 150 s: 10/s against 1200/150 s = 8/s.
    assert spike.evaluate(samples, T0 + 150) == {labels_of(policy="a"): 10.0}
    assert spike.evaluate(Samples(60), T0) == {}


def test_spike_with_a_baseline_shorter_than_two_windows() -> None:
    samples = history({series(policy="a"): [0, 0, 0, 600]}, retention=7200)
    short = _spike(window=60, baseline=90)
    # 90 s of history are enough: 10/s against a mean of 600/90 s (6.7/s) times 1.2.
    assert _spike(window=60, baseline=90, factor=1.2).evaluate(samples, at(3)) == {
        labels_of(policy="a"): 10.0
    }
    assert short.evaluate(samples, at(3)) == {}
    assert short.evaluate(samples, T0 + 60) == {}  # 60 s of history: not yet


def test_spike_promql_and_bounds() -> None:
    spike = Spike("x_total", (LabelMatcher("p", "=", "a"),), ("p",), 90, 7200, 6.5, 0.25)
    now = 'sum by (p) (rate(x_total{p="a"}[90s]))'
    usual = 'sum by (p) (avg_over_time(rate(x_total{p="a"}[90s])[2h:90s]))'
    assert spike.promql() == f"{now} > 6.5 * {usual} and {now} > 0.25"
    plain = Spike("x_total", (), (), 60, 3600, 4, 0.1).promql()
    assert plain.startswith("sum (rate(x_total[1m])) > 4 * sum (avg_over_time(")
    assert (spike.metrics, spike.history) == (("x_total",), 7200)
    for window, baseline in ((0, 60), (120, 60)):
        with pytest.raises(ValueError, match="window <= baseline"):
            Spike("x_total", (), (), window, baseline, 4, 0.1)


def test_gauge_above_reads_the_latest_snapshot() -> None:
    samples = history(
        {
            series("breaker_state", breaker="pay", state="open"): [0, 1, 1],
            series("breaker_state", breaker="pay", state="closed"): [1, 0, 0],
            series("breaker_state", breaker="led", state="forced_open"): [1, 1, 0],
        }
    )
    opened = GaugeAbove(
        "breaker_state", (LabelMatcher("state", "=~", "open|forced_open"),), ("breaker",), 0
    )
    assert opened.evaluate(samples, at(0)) == {labels_of(breaker="led"): 1}
    assert opened.evaluate(samples, at(1.5)) == {
        labels_of(breaker="led"): 1,
        labels_of(breaker="pay"): 1,
    }
    assert opened.evaluate(samples, at(2)) == {labels_of(breaker="pay"): 1}
    assert opened.evaluate(Samples(60), T0) == {}
    assert opened.promql() == 'max by (breaker) (breaker_state{state=~"open|forced_open"}) > 0'
    assert (opened.metrics, opened.history) == (("breaker_state",), 0)


def test_gauge_above_max_or_sum() -> None:
    samples = history(
        {
            series("sagas", saga="refund", state="needs_attention", worker="1"): [2],
            series("sagas", saga="refund", state="needs_attention", worker="2"): [3],
            series("sagas", saga="refund", state="completed"): [50],
        }
    )
    attention = (LabelMatcher("state", "=", "needs_attention"),)
    summed = GaugeAbove("sagas", attention, ("saga",), 0, aggregate="sum")
    assert summed.evaluate(samples, T0) == {labels_of(saga="refund"): 5}
    assert summed.promql() == 'sum by (saga) (sagas{state="needs_attention"}) > 0'
    highest = GaugeAbove("sagas", attention, (), 2.5)
    assert highest.evaluate(samples, T0) == {(): 3}
    assert highest.promql() == 'max(sagas{state="needs_attention"}) > 2.5'
    assert GaugeAbove("sagas", attention, (), 3).evaluate(samples, T0) == {}
    with pytest.raises(ValueError, match="aggregate must be"):
        GaugeAbove("sagas", (), (), 0, aggregate="min")  # type: ignore[arg-type]


def test_ratio() -> None:
    shed = series("shed_total", priority="normal")
    requests = series("requests_total", status="201")
    ratio = Ratio("shed_total", "requests_total", 60, 0.1)
    samples = history({shed: [0, 12, 15, 15], requests: [0, 60, 120, 120]})
    assert ratio.evaluate(samples, at(1)) == {(): pytest.approx(0.2)}
    assert ratio.evaluate(samples, at(2)) == {}  # 0.05
    assert ratio.evaluate(samples, at(3)) == {}  # nothing at all: 0 / 1e-9
    # Shed while nothing else was counted: the divisor is 1e-9.
    alone = history({shed: [0, 6], requests: [0, 0]})
    assert ratio.evaluate(alone, at(1)) == {(): pytest.approx(0.1 / 1e-9)}
    # Without one of the two metrics, no ratio (as PromQL's empty vector).
    assert ratio.evaluate(history({shed: [0, 6]}), at(1)) == {}
    assert ratio.evaluate(history({requests: [0, 6]}), at(1)) == {}
    assert ratio.promql() == (
        "sum(rate(shed_total[1m])) / clamp_min(sum(rate(requests_total[1m])), 1e-9) > 0.1"
    )
    assert (ratio.metrics, ratio.history) == (("shed_total", "requests_total"), 60)
    with pytest.raises(ValueError, match="window must be > 0"):
        Ratio("a", "b", -1, 0)


# --- the state machine ------------------------------------------------------------------


def _rule(hold: float = 120, **changes: object) -> RuleSpec:
    fields: dict[str, object] = {
        "alert": "Busy",
        "condition": RateAbove(CALLS, (), ("store",), 60, 0),
        "hold": hold,
        "severity": "warning",
        "summary": "Store {{ $labels.store }} is busy",
        "description": "{{ $value | humanize }} calls/s on {{ $labels.store }}",
        "labels": (("team", "payments"),),
        "runbook_url": "https://example.test/runbook#busy",
    } | changes
    return RuleSpec(**fields)  # type: ignore[arg-type]


def _states(evaluator: Evaluator, rules: list[RuleSpec], samples: Samples, minute: float) -> list:
    return [
        (dict(alert.labels).get("store"), alert.state, (alert.active_since - T0) / 60)
        for alert in evaluator.evaluate(rules, samples, at(minute))
    ]


def test_pending_until_held_then_firing_then_gone() -> None:
    # Store a: calls in minutes 2 to 6, then none; store b: calls from minute 4.
    samples = history(
        {
            series(store="a"): [0, 0, 5, 10, 15, 20, 25, 25, 25, 25, 30],
            series(store="b"): [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7],
        }
    )
    evaluator, rules = Evaluator(), [_rule(hold=120)]
    timeline = [_states(evaluator, rules, samples, minute) for minute in range(11)]
    assert timeline == [
        [],
        [],
        [("a", "pending", 2)],
        [("a", "pending", 2)],
        [("a", "firing", 2), ("b", "pending", 4)],  # held 2 minutes: fires
        [("a", "firing", 2), ("b", "pending", 4)],
        [("a", "firing", 2), ("b", "firing", 4)],
        [("b", "firing", 4)],  # a stopped: gone at once
        [("b", "firing", 4)],
        [("b", "firing", 4)],
        [("a", "pending", 10), ("b", "firing", 4)],  # a again: pending anew
    ]


def test_a_hold_of_zero_fires_at_once_and_a_rule_left_out_forgets() -> None:
    samples = history({series(store="a"): [0, 5, 10, 15]})
    evaluator, quick, slow = Evaluator(), _rule(hold=0), _rule(hold=600, alert="Slow")
    assert _states(evaluator, [quick, slow], samples, 1) == [
        ("a", "firing", 1),
        ("a", "pending", 1),
    ]
    assert _states(evaluator, [quick], samples, 2) == [("a", "firing", 1)]
    assert _states(evaluator, [quick, slow], samples, 3) == [
        ("a", "firing", 1),
        ("a", "pending", 3),  # Slow was not evaluated at minute 2: its state went
    ]


def test_an_equal_rule_keeps_the_state() -> None:
    """A reloaded file gives new but equal rules: their alerts stay as they were."""
    samples = history({series(store="a"): [0, 5, 10, 15]})
    evaluator = Evaluator()
    evaluator.evaluate([_rule()], samples, at(1))
    assert _states(evaluator, [_rule()], samples, 3) == [("a", "firing", 1)]


def test_alert_labels_value_and_rendered_annotations() -> None:
    samples = history({series(store="main"): [0, 1500]})
    rule = _rule(labels=(("team", "payments"), ("store", "overridden")))
    (alert,) = Evaluator().evaluate([rule], samples, at(1))
    assert alert.labels == labels_of(
        alertname="Busy", severity="warning", store="overridden", team="payments"
    )
    assert alert.name == "Busy"
    assert alert.value == 25
    # The templates see the group's labels, as Prometheus's $labels are the result's.
    assert alert.annotations == (
        ("summary", "Store main is busy"),
        ("description", "25 calls/s on main"),
        ("runbook_url", "https://example.test/runbook#busy"),
    )


# --- templates --------------------------------------------------------------------------

LABELS: Labels = labels_of(policy="charges", endpoint="billing")


@pytest.mark.parametrize(
    ("template", "value", "text"),
    [
        ("Policy {{ $labels.policy }}", 1, "Policy charges"),
        ("{{$labels.endpoint}}/{{  $labels.policy  }}", 1, "billing/charges"),
        ("[{{ $labels.missing }}]", 1, "[]"),
        ("{{ $value }} keys", 3, "3 keys"),
        ("{{ $value | humanize }}/s", 10, "10/s"),
        ("{{$value|humanizePercentage}}", 0.2, "20%"),
        ("{{ $value | humanizeDuration }}", 780, "13m 0s"),
        # Anything else is left as written.
        ('{{ $value | printf "%.2f" }}', 1, '{{ $value | printf "%.2f" }}'),
        ("{{ $labels.policy | toUpper }}", 1, "{{ $labels.policy | toUpper }}"),
        (
            "{{ .Labels.policy }} {{ $externalLabels.x }}",
            1,
            "{{ .Labels.policy }} {{ $externalLabels.x }}",
        ),
        ("{{ $value | humanize1024 }}", 1, "{{ $value | humanize1024 }}"),
        ("{ $value } {{ $value", 1, "{ $value } {{ $value"),
    ],
)
def test_render(template: str, value: float, text: str) -> None:
    assert render(template, LABELS, value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "-0"),
        (3.0, "3"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (100.0, "100"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00012, "0.00012"),
        (1e-05, "1e-05"),
        (1.5e-07, "1.5e-07"),
        (1e21, "1e+21"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_value_prints_as_go_prints_a_float(value: float, text: str) -> None:
    assert render("{{ $value }}", (), value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (10.0, "10"),
        (999.0, "999"),
        (1500.0, "1.5k"),
        (-1500.0, "-1.5k"),
        (1234567.0, "1.235M"),
        (1e30, "1e+06Y"),
        (0.5, "500m"),
        (0.0012, "1.2m"),
        (1e-30, "1e-06y"),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
    ],
)
def test_humanize(value: float, text: str) -> None:
    assert render("{{ $value | humanize }}", (), value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0s"),
        (1.5, "1.5s"),
        (59.99, "59.99s"),
        (780.0, "13m 0s"),
        (899.99, "14m 59s"),
        (3700.0, "1h 1m 40s"),
        (90061.0, "1d 1h 1m 1s"),
        (-65.0, "-1m 5s"),
        (-2.0, "-2s"),
        (0.012, "12ms"),
        (0.5, "500ms"),
        (1e-30, "1e-06ys"),
        (math.inf, "+Inf"),
        (math.nan, "NaN"),
    ],
)
def test_humanize_duration(value: float, text: str) -> None:
    assert render("{{ $value | humanizeDuration }}", (), value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(0.2, "20%"), (0.1234567, "12.35%"), (1.0, "100%"), (0.0, "0%")]
)
def test_humanize_percentage(value: float, text: str) -> None:
    assert render("{{ $value | humanizePercentage }}", (), value) == text


# --- the gateway's rules, evaluated natively on promtool's cases --------------------------


def _promtool_cases() -> ModuleType:
    """tests/gateway/test_alert_rules.py, whose cases promtool checks the PromQL against."""
    path = Path(__file__).resolve().parents[1] / "gateway" / "test_alert_rules.py"
    spec = importlib.util.spec_from_file_location("_promtool_rule_cases", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _promtool_cases()


def _expand(notation: str) -> list[float]:
    """promtool's ``a+bxN`` notation: ``a``, then ``N`` more values each ``b`` apart."""
    values: list[float] = []
    for part in notation.split():
        found = re.fullmatch(r"(-?[\d.]+)(?:([+-])([\d.]+))?x(\d+)", part)
        assert found is not None, part
        start, sign, step, count = found.groups()
        delta = float(step or 0) * (-1 if sign == "-" else 1)
        values += [float(start) + delta * i for i in range(int(count) + 1)]
    return values


def _series(text: str) -> Series:
    name, _, rest = text.partition("{")
    return (name, labels_of(**dict(re.findall(r'(\w+)="([^"]*)"', rest))))


@pytest.fixture(scope="module")
def gateway_rules(tmp_path_factory: pytest.TempPathFactory) -> list[RuleSpec]:
    folder = tmp_path_factory.mktemp("native")
    text = CASES.UPSTREAM + CASES.POLICIES + CASES.EVERYTHING_ELSE + CASES.ALERTS
    path = folder / "gateway.toml"
    path.write_text(text.format(folder=folder), encoding="utf-8")
    return rule_specs(load_config(str(path)))


def test_rule_specs_are_the_rules_file(gateway_rules: list[RuleSpec]) -> None:
    names = [rule.alert for rule in gateway_rules]
    assert set(names) == CASES.ALL_RULES
    assert names.count("SurefootRateLimitRefusalsSpike") == 2
    for rule in gateway_rules:
        assert rule.runbook_url == f"https://example.test/observability#{rule.alert.lower()}"


@pytest.mark.parametrize(
    ("name", "case"),
    [(name, case) for name, cases in sorted(CASES.RULE_CASES.items()) for case in cases],
)
def test_native_evaluation_agrees_with_promtool(
    name: str, case: str, gateway_rules: list[RuleSpec]
) -> None:
    """Each case promtool runs on the rules file: the same alerts fire at the same
    minutes, with the same labels and the same rendered annotations."""
    inputs, checks = CASES.RULE_CASES[name][case]
    samples = history({_series(key): _expand(values) for key, values in inputs.items()})
    evaluator = Evaluator()
    expected_at = {minute: (expected, value) for minute, expected, value in checks}
    for minute in range(max(expected_at) + 1):
        alerts = evaluator.evaluate(gateway_rules, samples, at(minute))
        if minute not in expected_at:
            continue
        expected, value = expected_at[minute]
        firing = [alert for alert in alerts if alert.name == name and alert.state == "firing"]
        assert len(firing) == len(expected), minute
        for alert, labels in zip(firing, expected, strict=True):
            spec = _spec(gateway_rules, name, labels)
            rule_labels = {"alertname": name, "severity": spec.severity, **dict(spec.labels)}
            assert dict(alert.labels) == rule_labels | labels, minute
            templates = {
                "annotations": {
                    "summary": spec.summary,
                    "description": spec.description,
                    "runbook_url": spec.runbook_url,
                }
            }
            assert dict(alert.annotations) == CASES._annotations(templates, labels, value)


def _spec(rules: list[RuleSpec], name: str, labels: dict[str, str]) -> RuleSpec:
    """The rule ``name`` whose own labels agree with ``labels`` (one per policy)."""
    (spec,) = [
        rule
        for rule in rules
        if rule.alert == name and all(labels.get(k, v) == v for k, v in rule.labels)
    ]
    return spec


def _counts(**overrides: float) -> CountsAbove:
    settings = {"window": 300.0, "baseline": 86400.0, "factor": 4.0, "min_rate": 0.1}
    return CountsAbove(
        "top",
        (LabelMatcher("list", "=", "refused"),),
        ("client",),
        LabelMatcher("window", "=", "5m"),
        LabelMatcher("window", "=", "24h"),
        **(settings | overrides),
    )


def _top(client: str, window: str, list_: str = "refused") -> Series:
    return series("top", list=list_, client=client, window=window)


def test_counts_above_compares_a_recent_count_with_the_usual_one() -> None:
    condition = _counts()
    samples = history(
        {
            _top("acme", "5m"): [600.0],  # 2/s against 0.2/s over the day
            _top("acme", "24h"): [17280.0],
            _top("globex", "5m"): [60.0],  # 0.2/s: its usual rate
            _top("globex", "24h"): [17280.0],
            _top("initech", "5m"): [15.0],  # new today, but 0.05/s: under the floor
            _top("initech", "24h"): [15.0],
            _top("hooli", "5m"): [900.0],  # no usual series: left out
            _top("umbrella", "5m", "admitted"): [9000.0],
            _top("umbrella", "24h", "admitted"): [9.0],
        }
    )
    assert condition.evaluate(samples, T0) == {labels_of(client="acme"): 2.0}
    assert (condition.metrics, condition.history) == (("top",), 0)
    assert condition.promql() == (
        'max by (client) (top{list="refused",window="5m"}) / 300 > 4 * '
        'max by (client) (top{list="refused",window="24h"}) / 86400 and '
        'max by (client) (top{list="refused",window="5m"}) / 300 > 0.1'
    )
    with pytest.raises(ValueError, match="window and baseline must be > 0"):
        _counts(baseline=0)
