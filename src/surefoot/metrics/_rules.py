"""Alerting rules evaluated in the process: the rules ``surefoot alerts --prometheus``
writes, each a condition with a PromQL text for Prometheus and a native evaluation over
snapshots of the process's own metrics, so a gateway with no Prometheus still alerts.

Pure: no I/O, no clock (every time is passed in, in unix seconds).

Rule 1: history. ``Samples`` keeps snapshots ``(t, {series: value})`` with ``t`` strictly
        increasing; adding one at ``t`` drops those older than ``t - retention``. It holds
        at most ``retention / (smallest interval between adds) + 1`` snapshots, in arrays
        of floats: the times, and per series, from its first kept value to its last, its
        values (NaN where it is absent: a NaN value is an absent one) and its running
        increase (Rule 2). That is 16 bytes per series per snapshot (and 16 per run of
        snapshots a series is absent from), plus at most 1/16 for expired snapshots not
        yet compacted (the arrays are copied once more than 1/16 of them is expired, so
        no add walks the history) and 1/16 of growth margin. A series costs its arrays
        until its last value expires: feed it only the metrics the rules read (each
        condition's ``metrics``), a set of series that seldom changes, and a retention of
        at least their longest ``history``.
Rule 2: increase. A counter's increase over ``[start, end]`` sums, over each two
        consecutive snapshots in that span, ``later - earlier`` when it is >= 0, else
        ``later`` (a drop is a reset: the counter started again from 0); a series missing
        from the earlier snapshot counts from 0 (a labelled counter appears at its first
        increment), one missing from the later adds nothing. A group exists once one of
        its series is in a snapshot after the span's first. ``rate = increase / window``.
        Each series keeps that sum from its first value on (its running increase), so a
        span's increase is the difference of two of its entries, found by bisection:
        O(log n) per series. It is exact while the values are integers and each running
        increase is below 2**53.
Rule 3: selection. A series is selected by its metric name and every label matcher:
        ``=`` (equal) or ``=~`` (regex, fully anchored, as Prometheus's); a label the
        series lacks is the empty string. Groups are the ``by`` labels; a label a series
        lacks (or has empty) is left out of its group, as Prometheus leaves it out.
Rule 4: conditions. ``evaluate(samples, now)`` gives each active group and its value:
        ``RateAbove``, the rate over ``window`` above ``threshold``; ``Spike``, the rate
        over ``window`` above ``factor`` times the mean rate over ``baseline``, that window
        included (or over the history there is, which must cover ``min(2 * window,
        baseline)`` before it may fire) and above ``min_rate``; ``GaugeAbove``, the max
        (or sum) of the latest snapshot's values above ``threshold``; ``Ratio``, one rate
        over another (the divisor at least 1e-9) above ``threshold``, when both metrics
        have series; ``CountsAbove``, a gauge of counts over a recent window above
        ``factor`` times its counts over a usual period (both as rates) and above
        ``min_rate``, group by group.
        ``promql()`` is the same condition for Prometheus.
Rule 5: state. ``Evaluator`` keeps, per (rule's name and labels, group), when the
        condition started to hold (so a reload that changes a rule's threshold keeps its state):
        an alert is ``pending`` until it has held for the rule's ``hold``, then ``firing``
        (Prometheus's ``for:``), and gone at the first evaluation where its condition does
        not hold; rules not passed to ``evaluate`` lose their state.
Rule 6: annotations. Each alert carries ``summary``, ``description`` and ``runbook_url``,
        rendered as Prometheus renders them for the group's labels and the value, for the
        forms ``{{ $labels.NAME }}`` and ``{{ $value }}`` piped or not to ``humanize``,
        ``humanizePercentage`` or ``humanizeDuration``; anything else is left as written.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from surefoot.metrics._alert import Alert, Labels

__all__ = [
    "Condition",
    "Evaluator",
    "GaugeAbove",
    "LabelMatcher",
    "Ratio",
    "RateAbove",
    "RuleSpec",
    "Samples",
    "Series",
    "Spike",
    "promql_duration",
    "render",
]

#: A metric's name as exposed (``surefoot_ratelimit_decisions_total``) and its labels.
Series = tuple[str, Labels]

#: The divisor of a ratio is never below this (PromQL's ``clamp_min(..., 1e-9)``).
_SMALLEST_DIVISOR = 1e-9
#: ``Samples`` compacts its arrays once more than one entry in this many is expired (Rule 1).
_COMPACT = 16


def promql_duration(seconds: float) -> str:
    """A Prometheus duration of whole seconds: ``90s``, ``10m``, ``1h``, ``1d``, ``0s``."""
    value = int(seconds)
    if value == 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}s"


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """One label matcher: ``op`` ``=`` (equal) or ``=~`` (regex, fully anchored) (Rule 3)."""

    name: str
    op: Literal["=", "=~"]
    value: str
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.op == "=~":
            try:
                object.__setattr__(self, "_regex", re.compile(self.value))
            except re.error as exc:
                raise ValueError(f"label matcher {self.name}=~{self.value!r}: {exc}") from None
        elif self.op != "=":
            raise ValueError(f"label matcher {self.name}: op must be '=' or '=~', not {self.op!r}")

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self._regex is None:
            return value == self.value
        return self._regex.fullmatch(value) is not None

    def promql(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


Match = tuple[LabelMatcher, ...]


def _selector(metric: str, match: Match) -> str:
    if not match:
        return metric
    return metric + "{" + ",".join(matcher.promql() for matcher in match) + "}"


def _selected(labels: Labels, match: Match) -> bool:
    pairs = dict(labels)
    return all(matcher.matches(pairs) for matcher in match)


def _group(labels: Labels, by: tuple[str, ...]) -> Labels:
    return tuple(sorted((name, value) for name, value in labels if name in by and value))


def _grouping(by: tuple[str, ...]) -> str:
    return f" by ({', '.join(by)})" if by else ""


class _Column:
    """One series' values in the snapshots from the absolute index ``begin`` to its last
    value (Rules 1 and 2)."""

    __slots__ = ("begin", "gap_ends", "gap_starts", "running", "values")

    def __init__(self, begin: int, value: float) -> None:
        self.begin = begin
        self.values = array("d", (value,))
        # The running increase: the first value counts whole (from 0, Rule 2).
        self.running = array("d", (value,))
        # The runs of snapshots the series is absent from (absolute indices, both
        # included, oldest first), so presence in a span is a bisect, not a walk.
        self.gap_starts = array("q")
        self.gap_ends = array("q")

    @property
    def end(self) -> int:
        """The absolute index after the last value, which is never absent."""
        return self.begin + len(self.values)

    def add(self, index: int, value: float) -> None:
        """The series' value in the snapshot at the absolute ``index`` (>= ``end``)."""
        end, previous, total = self.end, self.values[-1], self.running[-1]
        if index > end:
            # Absent from end to index - 1: a gap, after which the value counts whole.
            missing = index - end
            self.values.extend(array("d", (math.nan,)) * missing)
            self.running.extend(array("d", (total,)) * missing)
            self.gap_starts.append(end)
            self.gap_ends.append(index - 1)
            delta = value
        else:
            delta = value if value < previous else value - previous
        self.values.append(value)
        self.running.append(total + delta)

    def total(self, index: int) -> float:
        """The running increase at the absolute ``index`` (0 before the first value)."""
        if index < self.begin:
            return 0.0
        return self.running[min(index, self.end - 1) - self.begin]

    def present(self, first: int, last: int) -> bool:
        """Whether the series has a value in a snapshot from ``first`` to ``last``."""
        first, last = max(first, self.begin), min(last, self.end - 1)
        if first > last:
            return False
        run = bisect_left(self.gap_ends, last)  # the first gap that ends at last or later
        return run == len(self.gap_ends) or self.gap_starts[run] > first

    def drop(self, index: int) -> None:
        """Forget the snapshots before the absolute ``index`` (``begin < index < end``)."""
        cut = index - self.begin
        del self.values[:cut], self.running[:cut]
        self.begin = index
        runs = bisect_left(self.gap_ends, index)
        del self.gap_starts[:runs], self.gap_ends[:runs]


class Samples:
    """Snapshots of metric values over the last ``retention`` seconds (Rules 1 and 2)."""

    def __init__(self, retention: float) -> None:
        if not retention > 0:
            raise ValueError(f"Samples: retention must be > 0 seconds, not {retention!r}")
        self.retention = retention
        # Snapshots are numbered from 0 as they are added (absolute indices):
        # _times[i] is the time of snapshot _base + i, and the snapshots before
        # _start are expired, kept until the next compaction.
        self._times = array("d")
        self._base = 0
        self._start = 0
        # Each metric's columns by labels: a rule reads only its metric.
        self._columns: dict[str, dict[Labels, _Column]] = {}

    def __len__(self) -> int:
        return self._base + len(self._times) - self._start

    def add(self, t: float, values: Mapping[Series, float]) -> None:
        """Add the snapshot taken at ``t`` (after the last one) and drop the expired ones."""
        if self._times and t <= self._times[-1]:
            raise ValueError(
                f"Samples: snapshot at {t} is not after the last one ({self._times[-1]})"
            )
        index = self._base + len(self._times)
        self._times.append(t)
        for (name, labels), value in values.items():
            if math.isnan(value):
                continue  # no value: absent (Rule 1)
            series = self._columns.setdefault(name, {})
            column = series.get(labels)
            if column is None:
                series[labels] = _Column(index, value)
            else:
                column.add(index, value)
        expired = bisect_left(self._times, t - self.retention, self._start - self._base)
        self._start = self._base + expired
        if expired * _COMPACT > len(self._times):
            self._compact()

    def _compact(self) -> None:
        """Forget the expired snapshots, and the series with no value after them."""
        start = self._start
        del self._times[: start - self._base]
        self._base = start
        for name, series in list(self._columns.items()):
            for labels, column in list(series.items()):
                if column.end <= start:
                    del series[labels]
                elif column.begin < start:
                    column.drop(start)
            if not series:
                del self._columns[name]

    def span(self, now: float) -> float:
        """Seconds of history at ``now``: from the first snapshot to ``now`` (0 without any)."""
        if not self._times:
            return 0.0
        return max(now - self._times[self._start - self._base], 0.0)

    def snapshots(self, start: float, end: float) -> list[tuple[float, dict[Series, float]]]:
        """The snapshots taken from ``start`` to ``end``, both included, oldest first."""
        first, last = self._range(start, end)
        times = self._times[first - self._base : last - self._base]
        found: list[dict[Series, float]] = [{} for _ in times]
        for name, series in self._columns.items():
            for labels, column in series.items():
                lo, hi = max(first, column.begin), min(last, column.end)
                if lo >= hi:
                    continue
                key = (name, labels)
                values = column.values[lo - column.begin : hi - column.begin]
                for snapshot, value in zip(found[lo - first : hi - first], values, strict=True):
                    if value == value:  # not NaN: present
                        snapshot[key] = value
        return list(zip(times, found, strict=True))

    def latest(self, now: float) -> dict[Series, float]:
        """The last snapshot taken at or before ``now`` (empty without any)."""
        index = self._base + bisect_right(self._times, now, self._start - self._base) - 1
        if index < self._start:
            return {}
        return {
            (name, labels): value
            for name, series in self._columns.items()
            for labels, column in series.items()
            if column.begin <= index < column.end
            and (value := column.values[index - column.begin]) == value
        }

    def increase(
        self, metric: str, match: Match, by: tuple[str, ...], start: float, end: float
    ) -> dict[Labels, float]:
        """Each group's increase from ``start`` to ``end`` (Rule 2)."""
        first, last = self._range(start, end)
        totals: dict[Labels, float] = {}
        for labels, column in self._columns.get(metric, {}).items():
            if column.present(first + 1, last - 1) and _selected(labels, match):
                group = _group(labels, by)
                increase = column.total(last - 1) - column.total(first)
                totals[group] = totals.get(group, 0.0) + increase
        return totals

    def _range(self, start: float, end: float) -> tuple[int, int]:
        """The absolute indices of the first snapshot at or after ``start`` and of the
        first after ``end``, among the kept ones."""
        kept = self._start - self._base
        first = bisect_left(self._times, start, kept)
        last = bisect_right(self._times, end, kept)
        return self._base + first, self._base + last


@dataclass(frozen=True, slots=True)
class Spike:
    """``metric``'s rate over ``window`` above ``factor`` times its mean rate over
    ``baseline`` and above ``min_rate`` events per second (Rule 4)."""

    metric: str
    match: Match
    by: tuple[str, ...]
    window: float
    baseline: float
    factor: float
    min_rate: float

    def __post_init__(self) -> None:
        if not 0 < self.window <= self.baseline:
            raise ValueError(
                f"Spike: need 0 < window <= baseline, got {self.window} and {self.baseline}"
            )

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)

    @property
    def history(self) -> float:
        return self.baseline

    def promql(self) -> str:
        window = promql_duration(self.window)
        baseline = promql_duration(self.baseline)
        selector = _selector(self.metric, self.match)
        grouping = _grouping(self.by)
        now = f"sum{grouping} (rate({selector}[{window}]))"
        usual = f"sum{grouping} (avg_over_time(rate({selector}[{window}])[{baseline}:{window}]))"
        return f"{now} > {self.factor:g} * {usual} and {now} > {self.min_rate:g}"

    def evaluate(self, samples: Samples, now: float) -> dict[Labels, float]:
        length = min(self.baseline, samples.span(now))
        if length < min(2 * self.window, self.baseline):
            return {}
        current = samples.increase(self.metric, self.match, self.by, now - self.window, now)
        usual = samples.increase(self.metric, self.match, self.by, now - length, now)
        active: dict[Labels, float] = {}
        for group, increase in current.items():
            rate = increase / self.window
            if rate > self.factor * usual[group] / length and rate > self.min_rate:
                active[group] = rate
        return active


@dataclass(frozen=True, slots=True)
class RateAbove:
    """``metric``'s rate over ``window`` above ``threshold`` per second (Rule 4)."""

    metric: str
    match: Match
    by: tuple[str, ...]
    window: float
    threshold: float

    def __post_init__(self) -> None:
        if not self.window > 0:
            raise ValueError(f"RateAbove: window must be > 0, not {self.window}")

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)

    @property
    def history(self) -> float:
        return self.window

    def promql(self) -> str:
        selector = _selector(self.metric, self.match)
        rate = f"rate({selector}[{promql_duration(self.window)}])"
        aggregated = f"sum{_grouping(self.by)} ({rate})" if self.by else f"sum({rate})"
        return f"{aggregated} > {self.threshold:g}"

    def evaluate(self, samples: Samples, now: float) -> dict[Labels, float]:
        increases = samples.increase(self.metric, self.match, self.by, now - self.window, now)
        rates = {group: increase / self.window for group, increase in increases.items()}
        return {group: rate for group, rate in rates.items() if rate > self.threshold}


@dataclass(frozen=True, slots=True)
class GaugeAbove:
    """The ``aggregate`` (max or sum) of ``metric``'s latest values above ``threshold``
    (Rule 4)."""

    metric: str
    match: Match
    by: tuple[str, ...]
    threshold: float
    aggregate: Literal["max", "sum"] = "max"

    def __post_init__(self) -> None:
        if self.aggregate not in ("max", "sum"):
            raise ValueError(
                f"GaugeAbove: aggregate must be 'max' or 'sum', not {self.aggregate!r}"
            )

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)

    @property
    def history(self) -> float:
        return 0.0

    def promql(self) -> str:
        selector = _selector(self.metric, self.match)
        aggregated = (
            f"{self.aggregate}{_grouping(self.by)} ({selector})"
            if self.by
            else f"{self.aggregate}({selector})"
        )
        return f"{aggregated} > {self.threshold:g}"

    def evaluate(self, samples: Samples, now: float) -> dict[Labels, float]:
        values: dict[Labels, list[float]] = {}
        for (name, labels), value in samples.latest(now).items():
            if name == self.metric and _selected(labels, self.match):
                values.setdefault(_group(labels, self.by), []).append(value)
        combine = max if self.aggregate == "max" else math.fsum
        totals = {group: combine(found) for group, found in values.items()}
        return {group: total for group, total in totals.items() if total > self.threshold}


@dataclass(frozen=True, slots=True)
class Ratio:
    """``numerator``'s rate over ``denominator``'s, both over ``window``, above
    ``threshold`` (Rule 4)."""

    numerator: str
    denominator: str
    window: float
    threshold: float

    def __post_init__(self) -> None:
        if not self.window > 0:
            raise ValueError(f"Ratio: window must be > 0, not {self.window}")

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.numerator, self.denominator)

    @property
    def history(self) -> float:
        return self.window

    def promql(self) -> str:
        window = promql_duration(self.window)
        return (
            f"sum(rate({self.numerator}[{window}])) "
            f"/ clamp_min(sum(rate({self.denominator}[{window}])), 1e-9) "
            f"> {self.threshold:g}"
        )

    def evaluate(self, samples: Samples, now: float) -> dict[Labels, float]:
        start = now - self.window
        numerator = samples.increase(self.numerator, (), (), start, now)
        denominator = samples.increase(self.denominator, (), (), start, now)
        if () not in numerator or () not in denominator:
            return {}
        divisor = max(denominator[()] / self.window, _SMALLEST_DIVISOR)
        ratio = numerator[()] / self.window / divisor
        return {(): ratio} if ratio > self.threshold else {}


@dataclass(frozen=True, slots=True)
class CountsAbove:
    """A gauge of counts: its ``recent`` series (counts over ``window`` seconds) against its
    ``usual`` ones (counts over ``baseline`` seconds), group by group: the recent rate
    above ``factor`` times the usual rate and above ``min_rate`` (Rule 4). The groups
    without a usual series are left out, as Prometheus's vector matching leaves them."""

    metric: str
    match: Match
    by: tuple[str, ...]
    recent: LabelMatcher
    usual: LabelMatcher
    window: float
    baseline: float
    factor: float
    min_rate: float

    def __post_init__(self) -> None:
        if not (self.window > 0 and self.baseline > 0):
            raise ValueError("CountsAbove: window and baseline must be > 0")

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)

    @property
    def history(self) -> float:
        return 0.0

    def promql(self) -> str:
        grouping = _grouping(self.by)
        recent = f"max{grouping} ({_selector(self.metric, (*self.match, self.recent))})"
        usual = f"max{grouping} ({_selector(self.metric, (*self.match, self.usual))})"
        rate = f"{recent} / {self.window:g}"
        return (
            f"{rate} > {self.factor:g} * {usual} / {self.baseline:g} and {rate} > {self.min_rate:g}"
        )

    def evaluate(self, samples: Samples, now: float) -> dict[Labels, float]:
        recent: dict[Labels, float] = {}
        usual: dict[Labels, float] = {}
        for (name, labels), value in samples.latest(now).items():
            if name != self.metric or not _selected(labels, self.match):
                continue
            pairs = dict(labels)
            for matcher, found in ((self.recent, recent), (self.usual, usual)):
                if matcher.matches(pairs):
                    group = _group(labels, self.by)
                    found[group] = max(found.get(group, value), value)
        rates = {group: count / self.window for group, count in recent.items()}
        return {
            group: rate
            for group, rate in rates.items()
            if group in usual
            and rate > self.factor * usual[group] / self.baseline
            and rate > self.min_rate
        }


Condition = Spike | RateAbove | GaugeAbove | Ratio | CountsAbove


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One alerting rule: ``alert`` is its name, ``hold`` its ``for:`` in seconds; the
    summary and description are Prometheus templates (Rule 6)."""

    alert: str
    condition: Condition
    hold: float
    severity: str
    summary: str
    description: str
    labels: Labels = ()
    runbook_url: str = ""


class Evaluator:
    """Pending and firing state of rules over successive evaluations (Rule 5)."""

    def __init__(self) -> None:
        self._since: dict[tuple[str, Labels], float] = {}

    def evaluate(self, rules: Sequence[RuleSpec], samples: Samples, now: float) -> list[Alert]:
        """The alerts at ``now``: rule by rule, each rule's groups in label order."""
        since: dict[tuple[str, Labels], float] = {}
        alerts: list[Alert] = []
        for rule in rules:
            active = rule.condition.evaluate(samples, now)
            for group in sorted(active):
                value = active[group]
                # By name: a reload that changes a rule's thresholds keeps its alerts.
                key = (rule.alert, (*group, *rule.labels))
                started = since[key] = self._since.get(key, now)
                labels = {**dict(group), **dict(rule.labels)}
                labels.update(severity=rule.severity, alertname=rule.alert)
                annotations = (
                    ("summary", render(rule.summary, group, value)),
                    ("description", render(rule.description, group, value)),
                    ("runbook_url", rule.runbook_url),
                )
                alerts.append(
                    Alert(
                        labels=tuple(sorted(labels.items())),
                        state="firing" if now - started >= rule.hold else "pending",
                        active_since=started,
                        value=value,
                        annotations=annotations,
                    )
                )
        self._since = since
        return alerts


# --- templates (Rule 6) -----------------------------------------------------------------

_TEMPLATE = re.compile(
    r"\{\{\s*(?:\$labels\.(?P<label>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\$value\s*(?:\|\s*(?P<pipe>humanizePercentage|humanizeDuration|humanize)\s*)?)\s*\}\}"
)
_BIG = ("k", "M", "G", "T", "P", "E", "Z", "Y")
_SMALL = ("m", "u", "n", "p", "f", "a", "z", "y")


def render(template: str, labels: Labels, value: float) -> str:
    """``template`` as Prometheus renders it for an alert of ``labels`` and ``value``; a
    missing label is empty (Prometheus's ``missingkey=zero``)."""
    pairs = dict(labels)

    def replace(found: re.Match[str]) -> str:
        label, pipe = found.group("label"), found.group("pipe")
        if label is not None:
            return pairs.get(label, "")
        if pipe == "humanize":
            return _humanize(value)
        if pipe == "humanizePercentage":
            return _g4(value * 100) + "%"
        if pipe == "humanizeDuration":
            return _humanize_duration(value)
        return _go_float(value)

    return _TEMPLATE.sub(replace, template)


def _special(value: float) -> str | None:
    """Go's spelling of NaN and the infinities, None for a finite number."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return None


def _g4(value: float) -> str:
    """Go's ``%.4g``."""
    return _special(value) or format(value, ".4g")


def _go_float(value: float) -> str:
    """Go's ``%v`` of a float64: the shortest digits, exponent form below 1e-4 and from 1e6."""
    special = _special(value)
    if special is not None:
        return special
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    point = len(mantissa) + int(exponent)  # digits before the decimal point
    prefix = "-" if sign else ""
    if not -4 <= point - 1 < 6:
        fraction = f".{mantissa[1:]}" if len(mantissa) > 1 else ""
        return f"{prefix}{mantissa[0]}{fraction}e{point - 1:+03d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{mantissa}"
    if point >= len(mantissa):
        return f"{prefix}{mantissa}{'0' * (point - len(mantissa))}"
    return f"{prefix}{mantissa[:point]}.{mantissa[point:]}"


def _humanize(value: float) -> str:
    """Prometheus's ``humanize``: SI prefixes, 4 significant digits."""
    if value == 0 or not math.isfinite(value):
        return _g4(value)
    prefix = ""
    if abs(value) >= 1:
        for unit in _BIG:
            if abs(value) < 1000:
                break
            prefix, value = unit, value / 1000
        return _g4(value) + prefix
    for unit in _SMALL:
        if abs(value) >= 1:
            break
        prefix, value = unit, value * 1000
    return _g4(value) + prefix


def _humanize_duration(value: float) -> str:
    """Prometheus's ``humanizeDuration``: ``1d 2h 3m 4s`` down to ``12.5ms``."""
    if not math.isfinite(value):
        return _g4(value)
    if value == 0:
        return _g4(value) + "s"
    if abs(value) >= 1:
        sign = "-" if value < 0 else ""
        value = abs(value)
        whole = int(value)
        seconds, minutes = whole % 60, whole // 60 % 60
        hours, days = whole // 3600 % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(value)}s"
    prefix = ""
    for unit in _SMALL:
        if abs(value) >= 1:
            break
        prefix, value = unit, value * 1000
    return f"{_g4(value)}{prefix}s"
