"""Per-client anomaly detection of request rate: "a partner sends ten times its usual
traffic overnight" is seen within a minute, a steady daily rhythm never is. Pure, sans-I/O:
every method takes ``now`` (epoch seconds); no clock is read; the same calls give the same
answers.

Theory of operation. ``observe`` only counts a client's requests into step buckets.
``evaluate`` closes the buckets that ended, one step at a time per client: the windowed rate
is compared with ``factor`` times the client's baseline (an exponentially weighted moving
average of its step rates, raised to ``min_rate`` and to what the same hour of yesterday
saw), and a sustained excess is reported as an ``Anomaly``.

Rule 1: buckets are aligned on multiples of ``step``: bucket ``b = floor(now / step)`` spans
        ``[b * step, (b + 1) * step)`` and is closed by the first ``evaluate(now)`` with
        ``now >= (b + 1) * step``; its time is its end, ``(b + 1) * step``. ``observe`` is
        O(1): it only adds ``count`` to the client's bucket for ``now``. A bucket already
        closed (the caller's clock went back) is never reopened: the count goes to the
        client's first open bucket. ``evaluate`` with a ``now`` whose bucket is not later
        than the last one it closed does nothing and returns ``[]``.
Rule 2: a client's buckets are closed in order, from the bucket of its first observation
        on, none skipped: a bucket without requests is a zero rate. At each, the step rate is
        ``count / step`` and the windowed rate ``rate(client)`` is the sum of the counts of
        the last ``window / step`` closed buckets over ``window`` (buckets before the
        client's first count as zero).
Rule 3: the EWMA learns each step rate with ``alpha = 1 - 2 ** (-step / half_life)``; the
        client's first closed bucket initialises it. The effective baseline of a bucket is
        ``max(ewma, min_rate, yesterday)``, where ``yesterday`` (only when ``seasonal``) is
        the requests counted in the buckets that started in the same clock hour 24 h
        earlier, over 3600 s; one mean per hour of day is kept, with the hour it belongs to,
        so an older one is never used. ``baseline(client)`` is the effective baseline the
        next bucket will be compared with.
Rule 4: a client is in excess at a step when it has been tracked (from the start of its
        first bucket to the step's end) for at least ``warmup`` and its windowed rate is
        above ``factor`` times the effective baseline (computed before that step is learnt).
        An anomaly starts, reported once with ``started=True``, at the first step where the
        excess has lasted ``sustain`` seconds (from the step where it was first seen, its
        ``since``); it ends, reported with ``started=False`` and ``since`` its start, at the
        first step without excess. ``evaluate`` returns the changes ordered by ``at``
        (then client).
Rule 5: the EWMA does not learn a step whose own rate is above ``factor`` times the
        baseline, nor any step while the client is in excess (anomalous or not yet): an
        attack never becomes the norm, nor raises the bar it must pass before ``sustain``;
        once the anomaly has lasted ``adapt_after`` it learns again, so a real new level is
        accepted and the anomaly ends by itself. The hourly means always learn:
        what came at this hour yesterday is not flagged at this hour today.
Rule 6: a gap costs O(window / step) per client, not one step per missed bucket: once the
        window holds only zeros (and so no excess nor anomaly can remain), the rest of the
        gap decays the EWMA in closed form, ``ewma *= (1 - alpha) ** n``.
Rule 7: at most ``max_clients`` are tracked: a new client beyond it forgets the least
        recently observed one (even an anomalous one, without an end report). ``evaluate``
        forgets a client idle (no ``observe``) for more than a day whose window is empty
        and whose EWMA is below ``QUIET``; it is then unknown, and learnt afresh (warmup
        included) if it comes back.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["IDLE", "QUIET", "Anomaly", "AnomalyDetector", "AnomalySettings"]

#: Seconds without ``observe`` after which a quiet client is forgotten (Rule 7).
IDLE = 86_400.0
#: Requests/s: an EWMA below this is "zero" for forgetting a client (Rule 7).
QUIET = 1e-3
_HOUR = 3600.0
_DAY_HOURS = 24


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    """How request rates are judged (Rules 1 to 7).

    Example:
        ``AnomalySettings(factor=10.0, warmup=3600.0)``: flag ten times the usual rate, and
        learn a new client for an hour first.

    Attributes:
        factor: anomalous when the windowed rate is above ``factor`` times the baseline.
        sustain: ... for at least this many seconds (0: at the first step in excess).
        window: the current rate is the mean over the last ``window`` seconds.
        step: the bucket width, in seconds; ``window`` is a whole multiple of it.
        half_life: the EWMA half-life of the baseline, in seconds.
        min_rate: requests/s the baseline is never below (no alarm on tiny clients).
        warmup: a client seen for less than this is learnt, never flagged.
        seasonal: the baseline is at least the rate of the same hour of the previous day.
        adapt_after: an anomaly lasting this long is accepted: the baseline learns again.
        max_clients: the most clients tracked; the least recently seen is forgotten beyond.

    Raises:
        ValueError: naming the field, for a value out of range.
    """

    factor: float = 5.0
    sustain: float = 10.0
    window: float = 60.0
    step: float = 10.0
    half_life: float = 3600.0
    min_rate: float = 1.0
    warmup: float = 600.0
    seasonal: bool = True
    adapt_after: float = 3600.0
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        # `not x > 0` rather than `x <= 0`, so NaN is refused too.
        checks = (
            ("factor", self.factor, self.factor > 1, "> 1"),
            ("sustain", self.sustain, self.sustain >= 0, ">= 0"),
            ("window", self.window, 0 < self.window < math.inf, "> 0 and finite"),
            ("step", self.step, 0 < self.step < math.inf, "> 0 and finite"),
            ("half_life", self.half_life, self.half_life > 0, "> 0"),
            ("min_rate", self.min_rate, self.min_rate >= 0, ">= 0"),
            ("warmup", self.warmup, self.warmup >= 0, ">= 0"),
            ("adapt_after", self.adapt_after, self.adapt_after > 0, "> 0"),
            ("max_clients", self.max_clients, self.max_clients >= 1, ">= 1"),
        )
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        buckets = round(self.window / self.step)
        if buckets < 1 or not math.isclose(buckets * self.step, self.window, rel_tol=1e-9):
            raise ValueError(
                f"window must be a whole multiple of step, got window={self.window!r} "
                f"and step={self.step!r}"
            )


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A change of a client's state, reported by ``AnomalyDetector.evaluate``.

    Attributes:
        client: the client.
        started: True when the anomaly began at ``at``; False when it ended at ``at``.
        at: the end of the step at which the change was seen.
        rate: requests/s over the window at that step.
        baseline: the effective baseline at that step (after ``min_rate`` and seasonality).
        since: for a start, when the excess was first seen; for an end, when the anomaly began.
    """

    client: str
    started: bool
    at: float
    rate: float
    baseline: float
    since: float


class _Client:
    """One client's counts and learnt state (the detector's, never shared)."""

    __slots__ = (
        "anomaly",
        "ewma",
        "excess",
        "first",
        "hour",
        "hour_count",
        "hours",
        "last",
        "next",
        "pending",
        "ring",
        "steps",
        "total",
    )

    def __init__(self, bucket: int, step: float, buckets: int, now: float) -> None:
        #: The first bucket not closed yet.
        self.next = bucket
        #: When tracking began: the start of the first bucket.
        self.first = bucket * step
        #: The ``now`` of the last ``observe``.
        self.last = now
        #: Counts of buckets not closed yet, by bucket.
        self.pending: dict[int, int] = {}
        #: The last closed buckets' counts, bucket ``b`` at ``b % buckets``; their sum.
        self.ring = [0] * buckets
        self.total = 0
        self.steps = 0
        self.ewma = 0.0
        #: The hour (since the epoch) being counted, and its count so far.
        self.hour = math.floor(self.first / _HOUR)
        self.hour_count = 0
        #: Hour of day -> (hour since the epoch, mean rate of that hour).
        self.hours: dict[int, tuple[int, float]] = {}
        #: When the current excess was first seen, or None.
        self.excess: float | None = None
        #: The start of the current anomaly, or None.
        self.anomaly: Anomaly | None = None


class AnomalyDetector:
    """Flags clients whose request rate jumps well above their own usual rate.

    Example:
        >>> detector = AnomalyDetector(AnomalySettings(warmup=0.0))
        >>> detector.observe("partner", 0.0, count=10)
        >>> detector.evaluate(10.0)
        []
        >>> detector.rate("partner")
        0.16666666666666666

    Warning:
        Anomalies are seen only when ``evaluate`` is called; call it every ``step``
        seconds (a late call catches up, Rule 6, but reports late).
    """

    def __init__(self, settings: AnomalySettings = AnomalySettings()) -> None:
        self._settings = settings
        self._buckets = round(settings.window / settings.step)
        self._alpha = 1.0 - 2.0 ** (-settings.step / settings.half_life)
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        #: The first bucket not closed yet by ``evaluate``, None before the first call.
        self._horizon: int | None = None

    @property
    def settings(self) -> AnomalySettings:
        """What this detector was made with."""
        return self._settings

    def observe(self, client: str, now: float, count: int = 1) -> None:
        """Counts ``count`` requests of ``client`` at ``now`` (Rule 1). O(1).

        Raises:
            ValueError: for a negative count.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        bucket = math.floor(now / self._settings.step)
        state = self._clients.get(client)
        if state is None:
            if self._horizon is not None and bucket < self._horizon:
                bucket = self._horizon
            state = _Client(bucket, self._settings.step, self._buckets, now)
            self._clients[client] = state
            if len(self._clients) > self._settings.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
            bucket = max(bucket, state.next)
        state.pending[bucket] = state.pending.get(bucket, 0) + count
        state.last = now

    def evaluate(self, now: float) -> list[Anomaly]:
        """Closes every bucket that ended by ``now``; returns the changes in time order.

        A ``now`` that is not in a later bucket than the last call's does nothing (Rule 1).
        """
        target = math.floor(now / self._settings.step)
        if self._horizon is not None and target <= self._horizon:
            return []
        self._horizon = target
        events: list[Anomaly] = []
        for name, state in list(self._clients.items()):
            self._close(name, state, target, events)
            if (
                not state.total
                and not state.pending
                and state.ewma < QUIET
                and now - state.last > IDLE
            ):
                del self._clients[name]
        events.sort(key=lambda event: (event.at, event.client))
        return events

    def rate(self, client: str) -> float:
        """The client's windowed rate, requests/s, at the last closed step (0.0 if unknown)."""
        state = self._clients.get(client)
        return 0.0 if state is None else state.total / self._settings.window

    def baseline(self, client: str) -> float:
        """The effective baseline the client's next step is compared with (0.0 if unknown)."""
        state = self._clients.get(client)
        return 0.0 if state is None else self._effective(state, state.next)

    def anomalous(self) -> dict[str, Anomaly]:
        """The clients in anomaly now, each with the report of its start."""
        return {
            name: state.anomaly
            for name, state in self._clients.items()
            if state.anomaly is not None
        }

    def __len__(self) -> int:
        return len(self._clients)

    def _close(self, name: str, state: _Client, target: int, events: list[Anomaly]) -> None:
        """Closes the client's buckets before ``target``, in order (Rule 2)."""
        if state.next >= target:
            return
        bucket = state.next
        for due in sorted(b for b in state.pending if b < target):
            self._idle(name, state, bucket, due - bucket, events)
            self._step(name, state, due, state.pending.pop(due), events)
            bucket = due + 1
        self._idle(name, state, bucket, target - bucket, events)
        state.next = target

    def _idle(self, name: str, state: _Client, bucket: int, n: int, events: list[Anomaly]) -> None:
        """Closes ``n`` empty buckets from ``bucket`` on, in closed form once the window is
        empty (Rule 6)."""
        # An empty window means the last step had no excess, so no anomaly either.
        while n and state.total:
            self._step(name, state, bucket, 0, events)
            bucket += 1
            n -= 1
        if n:
            state.ewma *= (1.0 - self._alpha) ** n
            state.steps += n
            self._count_hour(state, bucket + n - 1, 0)

    def _step(
        self, name: str, state: _Client, bucket: int, count: int, events: list[Anomaly]
    ) -> None:
        """Closes one bucket (Rules 2 to 5)."""
        s = self._settings
        slot = bucket % self._buckets
        state.total += count - state.ring[slot]
        state.ring[slot] = count
        rate = state.total / s.window
        step_rate = count / s.step
        if not state.steps:
            state.ewma = step_rate
        state.steps += 1
        base = self._effective(state, bucket)
        at = (bucket + 1) * s.step
        if at - state.first >= s.warmup and rate > s.factor * base:
            if state.excess is None:
                state.excess = at
            if state.anomaly is None and at - state.excess >= s.sustain:
                state.anomaly = Anomaly(name, True, at, rate, base, state.excess)
                events.append(state.anomaly)
        else:
            state.excess = None
            if state.anomaly is not None:
                events.append(Anomaly(name, False, at, rate, base, state.anomaly.at))
                state.anomaly = None
        anomaly = state.anomaly
        calm = state.excess is None and step_rate <= s.factor * base
        if calm or (anomaly is not None and at - anomaly.at >= s.adapt_after):
            state.ewma += self._alpha * (step_rate - state.ewma)
        self._count_hour(state, bucket, count)

    def _count_hour(self, state: _Client, bucket: int, count: int) -> None:
        """Adds a closed bucket to its hour's count, keeping the finished hour's mean."""
        hour = math.floor(bucket * self._settings.step / _HOUR)
        if hour != state.hour:
            state.hours[state.hour % _DAY_HOURS] = (state.hour, state.hour_count / _HOUR)
            state.hour = hour
            state.hour_count = 0
        state.hour_count += count

    def _effective(self, state: _Client, bucket: int) -> float:
        """The effective baseline of ``bucket`` (Rule 3)."""
        base = max(state.ewma, self._settings.min_rate)
        if self._settings.seasonal:
            hour = math.floor(bucket * self._settings.step / _HOUR)
            known = state.hours.get(hour % _DAY_HOURS)
            if known is not None and known[0] == hour - _DAY_HOURS:
                base = max(base, known[1])
        return base
