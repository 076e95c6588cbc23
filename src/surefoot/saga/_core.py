"""The pure core of sagas: what each step's outcome does to a saga's record, and what
runs next. No I/O, no clock: ``now`` and the jitter's random draw are parameters.

A saga is a list of steps; each step has an action and may have a compensation (its
*undo*) and a *lookup* (a read-only question to the partner: did my action happen?).
A saga's record holds its state, its direction and one record per step::

    saga:   RUNNING ──every step DONE──► COMPLETED
            RUNNING ──a business failure, retries exhausted, the deadline, a person──►
                      COMPENSATING (direction backward)
            COMPENSATING ──every step that needs it undone──► COMPENSATED
            COMPENSATING ──an undo exhausted its retries; a step of unknown outcome with
                           nothing to undo it──► NEEDS_ATTENTION
            RUNNING ──lookups exhausted──► NEEDS_ATTENTION
            NEEDS_ATTENTION ──retry (a person)──► RUNNING or COMPENSATING, as it was
            any state but COMPLETED / COMPENSATED ──resolve (a person)──► RESOLVED

    step:   PENDING ──run──► STARTED ──result──► DONE
            STARTED ──transient failure──► STARTED (again after a backoff: a lookup first
                                            when the step has one, else a re-run)
            STARTED ──business failure──► FAILED
            STARTED ──lookup: found──► DONE;   ──lookup: not found──► PENDING (or FAILED
                                                   when its attempts are spent)
            STARTED ──retries exhausted, no lookup──► UNKNOWN
            DONE / UNKNOWN ──undo──► COMPENSATING ──result──► COMPENSATED

Rule 1: a step is recorded STARTED before its action runs, in the same write as the
        previous step's result. A saga found with a STARTED step (its worker died, or the
        last attempt failed in a way that may have reached the partner) asks the lookup
        first when the step has one; otherwise it re-runs the action, under the same
        idempotency keys, which a partner that honours keys answers without a second
        effect.
Rule 2: a transient failure (a timeout, a 5xx, a 429, a broken connection, any
        unexpected exception) is retried with exponential backoff and jitter, up to the
        step's ``attempts``; a business failure (an exception the step declares final,
        a status it marks final) is never retried: the saga turns back.
Rule 3: going back, the steps are undone in reverse order, each at most once to
        completion: DONE steps, and UNKNOWN ones (their undo must accept that there may
        be nothing to undo). A step without an undo is skipped, except an UNKNOWN one:
        the saga then ends NEEDS_ATTENTION, never COMPENSATED, because its effect may
        stand.
Rule 4: an undo is retried with backoff up to ``undo_attempts``; then the saga is
        NEEDS_ATTENTION with the last error. Nothing is dropped silently: the only way
        out of NEEDS_ATTENTION is a person (retry, compensate, resolve with a reason).
Rule 5: past its deadline a running saga starts no new step: it turns back (a STARTED
        step is looked up first when it can be, else it is UNKNOWN).
Rule 6: a saga's steps never change order, and a DONE step is never run again.
Rule 7: runs that never finish (the worker dies inside the step each time) count as
        attempts: a step without a lookup whose attempts are spent so turns the saga back
        (the step is UNKNOWN), and an undo whose attempts are spent so stops it for a
        person, so that a step that kills its worker cannot loop forever.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from surefoot.errors import ConfigurationError

__all__ = [
    "Abandon",
    "Compensate",
    "Done",
    "Entry",
    "Failed",
    "Found",
    "Halt",
    "LookUp",
    "Move",
    "NotFound",
    "Plan",
    "PlanStep",
    "Record",
    "Retry",
    "Run",
    "SagaState",
    "StepRecord",
    "StepState",
    "Succeeded",
    "Wait",
    "OPEN",
    "abandon",
    "halt",
    "next_move",
    "settle",
    "start",
    "started",
    "take_over",
]


class SagaState(enum.Enum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    NEEDS_ATTENTION = "needs_attention"
    RESOLVED = "resolved"

    @property
    def finished(self) -> bool:
        """True when no worker will touch the saga again (a person may, except after
        COMPLETED, COMPENSATED and RESOLVED)."""
        return self not in (SagaState.RUNNING, SagaState.COMPENSATING)


class StepState(enum.Enum):
    PENDING = "pending"
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


#: States a saga can be closed from by a person.
OPEN = frozenset(
    {SagaState.RUNNING, SagaState.COMPENSATING, SagaState.NEEDS_ATTENTION}
)  # fmt: skip
_UNDOABLE = (StepState.DONE, StepState.UNKNOWN, StepState.COMPENSATING)


@dataclass(frozen=True, slots=True)
class Retry:
    """Exponential backoff with equal jitter: attempt ``n`` (from 1) failing waits
    ``min(maximum, initial * 2**(n-1))`` times a factor between 0.5 and 1.

    Args:
        attempts: how many times an action (or an undo) runs before it is given up.
        initial: the first wait, in seconds.
        maximum: the longest wait, in seconds.
    """

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or not 1 <= self.attempts <= 1000:
            raise ConfigurationError(
                f"Retry.attempts: expected an integer from 1 to 1000, got {self.attempts!r}"
            )
        for field in ("initial", "maximum"):
            value = getattr(self, field)
            if not isinstance(value, int | float) or not 0 <= value <= 86400:
                raise ConfigurationError(
                    f"Retry.{field}: expected seconds from 0 to 86400, got {value!r}"
                )
        if self.maximum < self.initial:
            raise ConfigurationError(
                f"Retry.maximum: expected at least initial ({self.initial}), got {self.maximum}"
            )

    def delay(self, failures: int, draw: float) -> float:
        """The wait after the ``failures``-th failure; ``draw`` is uniform in [0, 1)."""
        base = min(self.maximum, self.initial * 2.0 ** min(failures - 1, 60))
        return base * (0.5 + draw / 2)


@dataclass(frozen=True, slots=True)
class PlanStep:
    """What the core knows of a step: its name, whether it has an undo and a lookup, and
    its retry policies."""

    name: str
    undo: bool
    lookup: bool
    retry: Retry
    undo_retry: Retry


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[PlanStep, ...]


@dataclass(frozen=True, slots=True)
class StepRecord:
    state: StepState = StepState.PENDING
    attempts: int = 0
    lookups: int = 0
    undo_attempts: int = 0
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A saga's progress, as stored."""

    state: SagaState
    forward: bool
    steps: tuple[StepRecord, ...]
    due_at: float
    deadline_at: float | None = None
    error: str | None = None


class Entry(NamedTuple):
    """One line of a saga's timeline: ``kind`` (``started``, ``succeeded``, ``failed``,
    ``found``, ``not_found``, ``given_up``, ``compensating``, ``compensated``,
    ``undo_failed``, ``turned_back``, ``finished``, ``retry``, ``resolve``...), the step it
    concerns (``None`` for the saga), the attempt and a detail (an error, a reason)."""

    kind: str
    step: str | None
    attempt: int | None
    detail: str | None


# -- moves: what the runner does next --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    index: int


@dataclass(frozen=True, slots=True)
class LookUp:
    index: int


@dataclass(frozen=True, slots=True)
class Compensate:
    index: int


@dataclass(frozen=True, slots=True)
class Wait:
    until: float


@dataclass(frozen=True, slots=True)
class Abandon:
    """Turn back (``abandon``): the deadline passed, or a step's attempts are spent by
    runs that never finished (Rule 7)."""

    reason: str = "deadline passed"


@dataclass(frozen=True, slots=True)
class Halt:
    """Stop for a person (``halt``): an undo's attempts are spent by runs that never
    finished (Rule 7)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    """The saga is finished, or waits for a person."""


Move = Run | LookUp | Compensate | Wait | Abandon | Halt | Done


# -- outcomes: what the runner saw -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Succeeded:
    result: Any = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The action, undo or lookup raised; ``final`` for a business failure."""

    error: str
    final: bool = False


@dataclass(frozen=True, slots=True)
class Found:
    result: Any = None


@dataclass(frozen=True, slots=True)
class NotFound:
    pass


Outcome = Succeeded | Failed | Found | NotFound


# -- transitions -----------------------------------------------------------------------------


def start(plan: Plan, now: float, deadline_at: float | None) -> tuple[Record, list[Entry]]:
    """A new saga's record: RUNNING, every step PENDING, due now."""
    steps = tuple(StepRecord() for _ in plan.steps)
    record = Record(SagaState.RUNNING, True, steps, now, deadline_at)
    return record, [Entry("created", None, None, None)]


def next_move(plan: Plan, record: Record, now: float) -> Move:
    """What to do with ``record`` at ``now`` (Rules 1, 3 and 5)."""
    if record.state not in (SagaState.RUNNING, SagaState.COMPENSATING):
        return Done()
    if record.due_at > now:
        return Wait(record.due_at)
    steps = record.steps
    if record.forward:
        if record.deadline_at is not None and now >= record.deadline_at:
            return Abandon()
        index = next(i for i, step in enumerate(steps) if step.state is not StepState.DONE)
        spec = plan.steps[index]
        if steps[index].state is StepState.STARTED:
            if spec.lookup:
                return LookUp(index)
            if steps[index].attempts >= spec.retry.attempts:
                return Abandon(f"{spec.name}: attempts spent, the last one never finished")
        return Run(index)
    for index, step in enumerate(steps):
        if step.state is StepState.STARTED:  # only with a lookup: see _turn_back
            return LookUp(index)
    for index in range(len(steps) - 1, -1, -1):
        spec = plan.steps[index]
        if steps[index].state in _UNDOABLE and spec.undo:
            if (
                steps[index].state is StepState.COMPENSATING
                and steps[index].undo_attempts >= spec.undo_retry.attempts
            ):
                return Halt(
                    f"{spec.name}: compensation attempts spent, the last one never finished"
                )
            return Compensate(index)
    raise AssertionError("a compensating saga with nothing left to undo is finished")


def started(plan: Plan, record: Record, move: Run | Compensate) -> tuple[Record, list[Entry]]:
    """Record that ``move`` is about to run (Rule 1): written before the call."""
    index = move.index
    step = record.steps[index]
    name = plan.steps[index].name
    if isinstance(move, Run):
        step = replace(step, state=StepState.STARTED, attempts=step.attempts + 1)
        entry = Entry("started", name, step.attempts, None)
    else:
        step = replace(step, state=StepState.COMPENSATING, undo_attempts=step.undo_attempts + 1)
        entry = Entry("compensating", name, step.undo_attempts, None)
    return _with_step(record, index, step), [entry]


def settle(
    plan: Plan,
    record: Record,
    move: Run | LookUp | Compensate,
    outcome: Outcome,
    now: float,
    draw: float,
) -> tuple[Record, list[Entry]]:
    """Apply what ``move`` produced; ``draw`` (uniform in [0, 1)) jitters a backoff."""
    index = move.index
    spec = plan.steps[index]
    step = record.steps[index]
    if isinstance(move, Run):
        return _after_run(plan, record, index, outcome, now, draw)
    if isinstance(move, LookUp):
        if isinstance(outcome, Found):
            done = replace(step, state=StepState.DONE, result=outcome.result, error=None)
            new = _with_step(record, index, done)
            return _normalised(plan, new, [Entry("found", spec.name, step.attempts, None)])
        if isinstance(outcome, NotFound):
            spent = step.attempts >= spec.retry.attempts or not record.forward
            state = StepState.FAILED if spent else StepState.PENDING
            new = _with_step(record, index, replace(step, state=state, lookups=0))
            entries = [Entry("not_found", spec.name, step.attempts, None)]
            if spent and record.forward:
                return _turn_back(plan, new, entries, step.error or "attempts exhausted")
            return _normalised(plan, new, entries)
        assert isinstance(outcome, Failed)
        lookups = step.lookups + 1
        new = _with_step(record, index, replace(step, lookups=lookups, error=outcome.error))
        entries = [Entry("lookup_failed", spec.name, lookups, outcome.error)]
        if lookups >= spec.retry.attempts:
            return _attention(new, entries, f"{spec.name}: lookup failed: {outcome.error}")
        return replace(new, due_at=now + spec.retry.delay(lookups, draw)), entries
    if isinstance(outcome, Succeeded):
        undone = replace(step, state=StepState.COMPENSATED, error=None)
        new = _with_step(record, index, undone)
        return _normalised(plan, new, [Entry("compensated", spec.name, step.undo_attempts, None)])
    assert isinstance(outcome, Failed)
    error = outcome.error
    new = _with_step(record, index, replace(step, error=error))
    entries = [Entry("undo_failed", spec.name, step.undo_attempts, error)]
    if step.undo_attempts >= spec.undo_retry.attempts:
        return _attention(new, entries, f"{spec.name}: compensation failed: {error}")
    return replace(new, due_at=now + spec.undo_retry.delay(step.undo_attempts, draw)), entries


def _after_run(
    plan: Plan, record: Record, index: int, outcome: Outcome, now: float, draw: float
) -> tuple[Record, list[Entry]]:
    spec = plan.steps[index]
    step = record.steps[index]
    if isinstance(outcome, Succeeded | Found):
        done = replace(step, state=StepState.DONE, result=outcome.result, error=None)
        entries = [Entry("succeeded", spec.name, step.attempts, None)]
        return _normalised(plan, _with_step(record, index, done), entries)
    assert isinstance(outcome, Failed)
    if outcome.final:
        failed = replace(step, state=StepState.FAILED, error=outcome.error)
        entries = [Entry("failed", spec.name, step.attempts, outcome.error)]
        return _turn_back(plan, _with_step(record, index, failed), entries, outcome.error)
    new = _with_step(record, index, replace(step, error=outcome.error))
    entries = [Entry("failed", spec.name, step.attempts, outcome.error)]
    if step.attempts < spec.retry.attempts:
        return replace(new, due_at=now + spec.retry.delay(step.attempts, draw)), entries
    # Spent: a lookup decides (next_move asks it), else the outcome stays unknown.
    if spec.lookup:
        return new, [*entries, Entry("given_up", spec.name, step.attempts, "looking it up")]
    entries.append(Entry("given_up", spec.name, step.attempts, "outcome unknown"))
    unknown = _with_step(record, index, replace(step, state=StepState.UNKNOWN, error=outcome.error))
    return _turn_back(plan, unknown, entries, outcome.error)


def abandon(plan: Plan, record: Record, reason: str) -> tuple[Record, list[Entry]]:
    """Turn a running saga back now (Rule 5, and a person's "compensate")."""
    return _turn_back(plan, record, [], reason)


def halt(record: Record, reason: str) -> tuple[Record, list[Entry]]:
    """Stop for a person (Rule 7)."""
    return _attention(record, [], reason)


def _turn_back(
    plan: Plan, record: Record, entries: list[Entry], reason: str
) -> tuple[Record, list[Entry]]:
    steps = list(record.steps)
    for index, step in enumerate(steps):
        if step.state is StepState.STARTED and not plan.steps[index].lookup:
            steps[index] = replace(step, state=StepState.UNKNOWN)
        elif step.state is StepState.PENDING and step.attempts:
            steps[index] = replace(step, state=StepState.FAILED)
    new = replace(
        record,
        state=SagaState.COMPENSATING,
        forward=False,
        steps=tuple(steps),
        error=reason,
    )
    return _normalised(plan, new, [*entries, Entry("turned_back", None, None, reason)])


def _normalised(plan: Plan, record: Record, entries: list[Entry]) -> tuple[Record, list[Entry]]:
    """Due now, and finished when nothing is left to do (Rule 3)."""
    record = replace(record, due_at=0.0)
    steps = record.steps
    if record.forward:
        if all(step.state is StepState.DONE for step in steps):
            finished = replace(record, state=SagaState.COMPLETED, error=None)
            return finished, [*entries, Entry("finished", None, None, "completed")]
        return record, entries
    if any(step.state is StepState.STARTED for step in steps):
        return record, entries
    if any(s.state in _UNDOABLE and p.undo for s, p in zip(steps, plan.steps, strict=True)):
        return record, entries
    stranded = [
        p.name
        for s, p in zip(steps, plan.steps, strict=True)
        if s.state is StepState.UNKNOWN and not p.undo
    ]
    if stranded:
        reason = f"{', '.join(stranded)}: outcome unknown and no compensation"
        return _attention(record, entries, reason)
    finished = replace(record, state=SagaState.COMPENSATED)
    return finished, [*entries, Entry("finished", None, None, "compensated")]


def _attention(record: Record, entries: list[Entry], reason: str) -> tuple[Record, list[Entry]]:
    new = replace(record, state=SagaState.NEEDS_ATTENTION, error=reason)
    return new, [*entries, Entry("needs_attention", None, None, reason)]


def take_over(plan: Plan, record: Record) -> tuple[Record, list[Entry]]:
    """A person's retry: the saga goes on in its direction now, with the attempts of the
    step at hand counted afresh (an UNKNOWN step going forward is looked up or re-run).
    A saga that only waits for a person to accept an unknown outcome stays
    NEEDS_ATTENTION: the caller refuses the retry."""
    state = SagaState.RUNNING if record.forward else SagaState.COMPENSATING
    steps = tuple(
        replace(step, attempts=0, lookups=0, undo_attempts=0)
        if step.state in (StepState.STARTED, StepState.PENDING, StepState.COMPENSATING)
        or (step.state is StepState.UNKNOWN and record.forward)
        else step
        for step in record.steps
    )
    steps = tuple(
        replace(step, state=StepState.STARTED)
        if step.state is StepState.UNKNOWN and record.forward
        else step
        for step in steps
    )
    new = replace(record, state=state, steps=steps, deadline_at=None, error=None)
    return _normalised(plan, new, [])


def _with_step(record: Record, index: int, step: StepRecord) -> Record:
    steps = list(record.steps)
    steps[index] = step
    return replace(record, steps=tuple(steps))
