"""surefoot.saga._core: the saga state machine's pure transitions.

Table-driven over the module docstring's diagram and Rules 1-6 (``start``, ``next_move``,
``started``, ``settle`` for each move and outcome, ``abandon``, ``take_over``, ``Retry``),
then Hypothesis driving random plans through random outcomes and
crashes with a small driver that stores the record the way a worker does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.errors import ConfigurationError
from surefoot.saga._core import (
    OPEN,
    Abandon,
    Compensate,
    Done,
    Entry,
    Failed,
    Found,
    Halt,
    LookUp,
    Move,
    NotFound,
    Plan,
    PlanStep,
    Record,
    Retry,
    Run,
    SagaState,
    StepRecord,
    StepState,
    Succeeded,
    Wait,
    abandon,
    halt,
    next_move,
    settle,
    start,
    started,
    take_over,
)

Outcome = Succeeded | Failed | Found | NotFound
RUNNING, COMPENSATING = SagaState.RUNNING, SagaState.COMPENSATING
COMPLETED, COMPENSATED = SagaState.COMPLETED, SagaState.COMPENSATED
NEEDS_ATTENTION, RESOLVED = SagaState.NEEDS_ATTENTION, SagaState.RESOLVED
PENDING, STARTED, DONE = StepState.PENDING, StepState.STARTED, StepState.DONE
FAILED, UNKNOWN = StepState.FAILED, StepState.UNKNOWN
UNDOING, UNDONE = StepState.COMPENSATING, StepState.COMPENSATED

NOW = 1000.0
#: A draw of 0.5 makes every backoff 3/4 of its base.
DRAW = 0.5


def _step(
    name: str, *, undo: bool = True, lookup: bool = False, attempts: int = 3, undos: int = 2
) -> PlanStep:
    return PlanStep(
        name,
        undo=undo,
        lookup=lookup,
        retry=Retry(attempts=attempts, initial=1.0, maximum=8.0),
        undo_retry=Retry(attempts=undos, initial=2.0, maximum=16.0),
    )


def _plan(*steps: PlanStep) -> Plan:
    return Plan(tuple(steps))


def _record(
    *steps: StepRecord | StepState,
    state: SagaState | None = None,
    forward: bool = True,
    due_at: float = 0.0,
    deadline_at: float | None = None,
    error: str | None = None,
) -> Record:
    records = tuple(s if isinstance(s, StepRecord) else StepRecord(state=s) for s in steps)
    if state is None:
        state = RUNNING if forward else COMPENSATING
    return Record(state, forward, records, due_at, deadline_at, error)


def _kinds(entries: list[Entry]) -> list[str]:
    return [entry.kind for entry in entries]


def _states(record: Record) -> list[StepState]:
    return [step.state for step in record.steps]


def _run(plan: Plan, record: Record, index: int, outcome: Any) -> tuple[Record, list[Entry]]:
    """``started`` then ``settle`` for ``Run(index)``, as a worker does."""
    assert next_move(plan, record, NOW) == Run(index)
    record, first = started(plan, record, Run(index))
    record, rest = settle(plan, record, Run(index), outcome, NOW, DRAW)
    return record, [*first, *rest]


def _undo(plan: Plan, record: Record, index: int, outcome: Any) -> tuple[Record, list[Entry]]:
    assert next_move(plan, record, NOW) == Compensate(index)
    record, first = started(plan, record, Compensate(index))
    record, rest = settle(plan, record, Compensate(index), outcome, NOW, DRAW)
    return record, [*first, *rest]


# --- start and next_move ----------------------------------------------------------------------


def test_start_makes_a_running_record_with_every_step_pending_and_due_now() -> None:
    plan = _plan(_step("a"), _step("b"))
    record, entries = start(plan, NOW, NOW + 60)
    assert record == Record(RUNNING, True, (StepRecord(), StepRecord()), NOW, NOW + 60, None)
    assert entries == [Entry("created", None, None, None)]
    assert next_move(plan, record, NOW) == Run(0)


@pytest.mark.parametrize("state", [COMPLETED, COMPENSATED, NEEDS_ATTENTION, RESOLVED])
def test_a_finished_saga_has_nothing_to_do(state: SagaState) -> None:
    plan = _plan(_step("a"))
    assert next_move(plan, _record(PENDING, state=state), NOW) == Done()
    assert state.finished
    # A person can still close a flagged saga, never a finished one.
    assert (state in OPEN) is (state is NEEDS_ATTENTION)


@pytest.mark.parametrize("state", [RUNNING, COMPENSATING])
def test_a_running_or_compensating_saga_is_not_finished(state: SagaState) -> None:
    assert not state.finished
    assert state in OPEN


PLAN_NEXT = _plan(_step("a"), _step("b", lookup=True), _step("c", undo=False), _step("d"))


@pytest.mark.parametrize(
    ("record", "now", "move"),
    [
        # Not due yet: wait, whichever the direction.
        (_record(DONE, PENDING, PENDING, PENDING, due_at=NOW + 5), NOW, Wait(NOW + 5)),
        (
            _record(UNDOING, PENDING, PENDING, PENDING, forward=False, due_at=NOW + 1),
            NOW,
            Wait(NOW + 1),
        ),
        # Due: the first step that is not DONE (Rule 6).
        (_record(PENDING, PENDING, PENDING, PENDING, due_at=NOW), NOW, Run(0)),
        (_record(DONE, PENDING, PENDING, PENDING), NOW, Run(1)),
        (_record(DONE, DONE, DONE, PENDING), NOW, Run(3)),
        # A STARTED step is looked up when it can be, else re-run (Rule 1).
        (_record(DONE, STARTED, PENDING, PENDING), NOW, LookUp(1)),
        (_record(STARTED, PENDING, PENDING, PENDING), NOW, Run(0)),
        (_record(DONE, DONE, STARTED, PENDING), NOW, Run(2)),
        # Past the deadline (or at it) no step starts, a STARTED one included (Rule 5).
        (_record(DONE, PENDING, PENDING, PENDING, deadline_at=NOW), NOW, Abandon()),
        (_record(DONE, STARTED, PENDING, PENDING, deadline_at=NOW - 1), NOW, Abandon()),
        (_record(DONE, PENDING, PENDING, PENDING, deadline_at=NOW + 1), NOW, Run(1)),
        # The deadline does not hold a compensating saga.
        (
            _record(DONE, FAILED, PENDING, PENDING, forward=False, deadline_at=0.0),
            NOW,
            Compensate(0),
        ),
        # Backward: a STARTED step (it has a lookup) is looked up before any undo.
        (_record(DONE, STARTED, PENDING, PENDING, forward=False), NOW, LookUp(1)),
        # Backward: undo from the last step that needs it (Rule 3).
        (_record(DONE, DONE, DONE, DONE, forward=False), NOW, Compensate(3)),
        (_record(DONE, DONE, DONE, UNDONE, forward=False), NOW, Compensate(1)),
        (_record(DONE, UNKNOWN, PENDING, PENDING, forward=False), NOW, Compensate(1)),
        (_record(DONE, DONE, DONE, UNDOING, forward=False), NOW, Compensate(3)),
        (_record(DONE, UNDONE, DONE, FAILED, forward=False), NOW, Compensate(0)),
        (_record(UNDOING, UNDONE, DONE, FAILED, forward=False), NOW, Compensate(0)),
    ],
)
def test_next_move(record: Record, now: float, move: Move) -> None:
    assert next_move(PLAN_NEXT, record, now) == move


def test_next_move_refuses_a_compensating_saga_with_nothing_left_to_undo() -> None:
    # _normalised never leaves such a record: it is COMPENSATED or NEEDS_ATTENTION.
    record = _record(UNDONE, FAILED, DONE, PENDING, forward=False)
    with pytest.raises(AssertionError, match="nothing left to undo"):
        next_move(PLAN_NEXT, record, NOW)


# --- started (Rule 1) -----------------------------------------------------------------------


def test_started_records_a_run_before_it_happens() -> None:
    plan = _plan(_step("a"), _step("b"))
    record = _record(DONE, StepRecord(PENDING, attempts=1, error="timeout"))
    new, entries = started(plan, record, Run(1))
    assert new.steps[1] == StepRecord(STARTED, attempts=2, error="timeout")
    assert new.steps[0] == record.steps[0]
    assert (new.state, new.forward, new.due_at) == (RUNNING, True, record.due_at)
    assert entries == [Entry("started", "b", 2, None)]


def test_started_records_an_undo_before_it_happens() -> None:
    plan = _plan(_step("a"), _step("b"))
    record = _record(StepRecord(DONE, attempts=1), FAILED, forward=False)
    new, entries = started(plan, record, Compensate(0))
    assert new.steps[0] == StepRecord(UNDOING, attempts=1, undo_attempts=1)
    assert entries == [Entry("compensating", "a", 1, None)]
    again, entries = started(plan, new, Compensate(0))
    assert again.steps[0].undo_attempts == 2
    assert entries == [Entry("compensating", "a", 2, None)]


# --- settle: Run ----------------------------------------------------------------------------


def test_a_run_that_succeeds_is_done_and_the_next_step_is_due_now() -> None:
    plan = _plan(_step("a"), _step("b"))
    record, _ = start(plan, NOW, None)
    record, entries = _run(plan, record, 0, Succeeded({"id": 7}))
    assert record.steps[0] == StepRecord(DONE, attempts=1, result={"id": 7})
    assert (record.state, record.due_at) == (RUNNING, 0.0)
    assert entries == [Entry("started", "a", 1, None), Entry("succeeded", "a", 1, None)]
    assert next_move(plan, record, NOW) == Run(1)


def test_the_last_step_done_completes_the_saga() -> None:
    plan = _plan(_step("a"), _step("b"))
    record = _record(DONE, StepRecord(PENDING, attempts=1, error="timeout"), error="x")
    record, entries = _run(plan, record, 1, Found("r"))  # a Found result counts as success
    assert record.state is COMPLETED
    assert record.error is None
    assert record.steps[1] == StepRecord(DONE, attempts=2, result="r")
    assert _kinds(entries) == ["started", "succeeded", "finished"]
    assert entries[-1] == Entry("finished", None, None, "completed")
    assert next_move(plan, record, NOW) == Done()


@pytest.mark.parametrize("failures", [1, 2])
def test_a_transient_failure_is_retried_after_a_backoff(failures: int) -> None:
    plan = _plan(_step("a", attempts=3))
    record = _record(StepRecord(PENDING, attempts=failures - 1))
    record, entries = _run(plan, record, 0, Failed("503"))
    delay = plan.steps[0].retry.delay(failures, DRAW)
    assert delay == 0.75 * 2.0 ** (failures - 1)
    assert record.steps[0] == StepRecord(STARTED, attempts=failures, error="503")
    assert (record.state, record.due_at) == (RUNNING, NOW + delay)
    assert entries[-1] == Entry("failed", "a", failures, "503")
    assert next_move(plan, record, NOW) == Wait(NOW + delay)
    # Due again: a STARTED step without a lookup is run again (Rule 1).
    assert next_move(plan, record, NOW + delay) == Run(0)


def test_a_transient_failure_of_a_step_with_a_lookup_is_looked_up_first() -> None:
    plan = _plan(_step("a", lookup=True, attempts=3))
    record, _ = _run(plan, _record(PENDING), 0, Failed("timeout"))
    assert next_move(plan, record, record.due_at) == LookUp(0)


@pytest.mark.parametrize(
    ("failures", "draw", "low", "high"),
    [
        (1, 0.0, 0.5, 0.5),
        (1, 0.999, 0.5, 1.0),
        (3, 0.0, 2.0, 2.0),
        (4, 0.5, 6.0, 6.0),  # 4 * 2**(4-1) would be 32: the maximum, 8, bounds it
        (100, 0.0, 4.0, 4.0),
        (100, 0.999, 4.0, 8.0),
    ],
)
def test_retry_delay_table(failures: int, draw: float, low: float, high: float) -> None:
    delay = Retry(attempts=3, initial=1.0, maximum=8.0).delay(failures, draw)
    assert low <= delay <= high


@given(
    failures=st.integers(1, 1000),
    draw=st.floats(0, 1, exclude_max=True),
    initial=st.floats(0, 100),
    extra=st.floats(0, 1000),
)
def test_retry_delay_is_between_half_and_all_of_the_capped_exponential(
    failures: int, draw: float, initial: float, extra: float
) -> None:
    retry = Retry(attempts=3, initial=initial, maximum=initial + extra)
    base = min(retry.maximum, initial * 2.0 ** min(failures - 1, 60))
    delay = retry.delay(failures, draw)
    assert base * 0.5 <= delay <= base


def test_spent_attempts_with_a_lookup_ask_the_lookup() -> None:
    plan = _plan(_step("a"), _step("b", lookup=True, attempts=2))
    record = _record(DONE, StepRecord(PENDING, attempts=1, error="timeout"), due_at=NOW - 1)
    record, entries = _run(plan, record, 1, Failed("timeout again"))
    assert record.steps[1] == StepRecord(STARTED, attempts=2, error="timeout again")
    assert (record.state, record.forward, record.due_at) == (RUNNING, True, NOW - 1)
    assert entries[-1] == Entry("given_up", "b", 2, "looking it up")
    assert next_move(plan, record, NOW) == LookUp(1)


def test_spent_attempts_without_a_lookup_leave_the_step_unknown_and_undo_it() -> None:
    plan = _plan(_step("a"), _step("b", attempts=1))
    record = _record(DONE, PENDING)
    record, entries = _run(plan, record, 1, Failed("timeout"))
    assert record.steps[1] == StepRecord(UNKNOWN, attempts=1, error="timeout")
    assert (record.state, record.forward, record.error) == (COMPENSATING, False, "timeout")
    assert _kinds(entries) == ["started", "failed", "given_up", "turned_back"]
    assert entries[2] == Entry("given_up", "b", 1, "outcome unknown")
    # Rule 3: the UNKNOWN step is undone first (its undo accepts there may be nothing).
    record, _ = _undo(plan, record, 1, Succeeded())
    record, entries = _undo(plan, record, 0, Succeeded())
    assert record.state is COMPENSATED
    assert _states(record) == [UNDONE, UNDONE]
    assert entries[-1] == Entry("finished", None, None, "compensated")


def test_an_unknown_step_without_undo_ends_needs_attention_after_the_other_undos() -> None:
    plan = _plan(_step("a"), _step("b", undo=False, attempts=1))
    record, entries = _run(plan, _record(DONE, PENDING), 1, Failed("timeout"))
    assert record.state is COMPENSATING
    record, entries = _undo(plan, record, 0, Succeeded())
    assert _states(record) == [UNDONE, UNKNOWN]
    assert record.state is NEEDS_ATTENTION
    assert record.error == "b: outcome unknown and no compensation"
    assert entries[-1] == Entry("needs_attention", None, None, record.error)
    assert next_move(plan, record, NOW) == Done()


def test_an_unknown_first_step_without_undo_needs_attention_at_once() -> None:
    plan = _plan(_step("a", undo=False, attempts=1), _step("b"))
    record, entries = _run(plan, _record(PENDING, PENDING), 0, Failed("timeout"))
    assert record.state is NEEDS_ATTENTION
    assert record.error == "a: outcome unknown and no compensation"
    assert _kinds(entries) == ["started", "failed", "given_up", "turned_back", "needs_attention"]


def test_a_business_failure_undoes_done_steps_in_reverse_order_skipping_those_without_undo() -> (
    None
):
    plan = _plan(_step("a"), _step("b", undo=False), _step("c"), _step("d"), _step("e"))
    record = _record(DONE, DONE, DONE, PENDING, PENDING)
    record, entries = _run(plan, record, 3, Failed("card declined", final=True))
    assert record.steps[3] == StepRecord(FAILED, attempts=1, error="card declined")
    assert (record.state, record.forward, record.error) == (COMPENSATING, False, "card declined")
    assert record.due_at == 0.0
    assert entries[-2:] == [
        Entry("failed", "d", 1, "card declined"),
        Entry("turned_back", None, None, "card declined"),
    ]
    order = []
    while (move := next_move(plan, record, NOW)) != Done():
        assert isinstance(move, Compensate)
        order.append(move.index)
        record, entries = _undo(plan, record, move.index, Succeeded())
        assert entries[-1].kind in ("compensated", "finished")
    assert order == [2, 0]
    assert _states(record) == [UNDONE, DONE, UNDONE, FAILED, PENDING]
    assert record.state is COMPENSATED
    assert record.error == "card declined"  # why it turned back stays on the record


def test_a_business_failure_of_the_first_step_is_compensated_at_once() -> None:
    plan = _plan(_step("a"), _step("b"))
    record, entries = _run(plan, _record(PENDING, PENDING), 0, Failed("no", final=True))
    assert record.state is COMPENSATED
    assert _states(record) == [FAILED, PENDING]
    assert _kinds(entries) == ["started", "failed", "turned_back", "finished"]


def test_a_business_failure_is_never_retried_even_with_attempts_left() -> None:
    plan = _plan(_step("a", lookup=True, attempts=5), _step("b"))
    record, _ = _run(plan, _record(PENDING, PENDING), 0, Failed("no", final=True))
    assert record.steps[0].state is FAILED
    assert next_move(plan, record, NOW) == Done()


# --- settle: Compensate (Rule 4) ------------------------------------------------------------


def test_an_undo_failure_is_retried_then_the_saga_needs_attention() -> None:
    plan = _plan(_step("a", undos=2), _step("b"))
    record = _record(DONE, FAILED, forward=False, error="declined")
    record, entries = _undo(plan, record, 0, Failed("refund refused"))
    delay = plan.steps[0].undo_retry.delay(1, DRAW)
    assert delay == 1.5
    assert record.steps[0] == StepRecord(UNDOING, undo_attempts=1, error="refund refused")
    assert (record.state, record.due_at) == (COMPENSATING, NOW + delay)
    assert entries[-1] == Entry("undo_failed", "a", 1, "refund refused")
    assert next_move(plan, record, NOW) == Wait(NOW + delay)
    record = replace(record, due_at=0.0)
    record, entries = _undo(plan, record, 0, Failed("refund refused again"))
    assert record.state is NEEDS_ATTENTION
    assert record.error == "a: compensation failed: refund refused again"
    assert record.steps[0] == StepRecord(UNDOING, undo_attempts=2, error="refund refused again")
    assert _kinds(entries) == ["compensating", "undo_failed", "needs_attention"]


def test_an_undo_that_succeeds_after_a_failure_clears_the_error() -> None:
    plan = _plan(_step("a"), _step("b"))
    record = _record(DONE, DONE, forward=False)
    record, _ = _undo(plan, record, 1, Failed("busy"))
    record, entries = _undo(plan, replace(record, due_at=0.0), 1, Succeeded())
    assert record.steps[1] == StepRecord(UNDONE, undo_attempts=2)
    assert entries[-1] == Entry("compensated", "b", 2, None)
    assert next_move(plan, record, NOW) == Compensate(0)


# --- settle: LookUp -------------------------------------------------------------------------


def _looked_up(plan: Plan, record: Record, index: int, outcome: Any) -> tuple[Record, list[Entry]]:
    assert next_move(plan, record, NOW) == LookUp(index)
    return settle(plan, record, LookUp(index), outcome, NOW, DRAW)


PLAN_LOOKUP = _plan(_step("a"), _step("b", lookup=True, attempts=2), _step("c"))


def test_lookup_found_forward_is_done_and_goes_on() -> None:
    record = _record(DONE, StepRecord(STARTED, attempts=1, lookups=1, error="timeout"), PENDING)
    record, entries = _looked_up(PLAN_LOOKUP, record, 1, Found("ch_1"))
    assert record.steps[1] == StepRecord(DONE, attempts=1, lookups=1, result="ch_1")
    assert (record.state, record.due_at) == (RUNNING, 0.0)
    assert entries == [Entry("found", "b", 1, None)]
    assert next_move(PLAN_LOOKUP, record, NOW) == Run(2)


def test_lookup_found_on_the_last_step_completes() -> None:
    plan = _plan(_step("a", lookup=True))
    record, entries = _looked_up(plan, _record(StepRecord(STARTED, attempts=1)), 0, Found())
    assert record.state is COMPLETED
    assert _kinds(entries) == ["found", "finished"]


def test_lookup_not_found_forward_with_attempts_left_runs_the_step_again() -> None:
    record = _record(DONE, StepRecord(STARTED, attempts=1, lookups=1, error="timeout"), PENDING)
    record, entries = _looked_up(PLAN_LOOKUP, record, 1, NotFound())
    assert record.steps[1] == StepRecord(PENDING, attempts=1, lookups=0, error="timeout")
    assert (record.state, record.due_at) == (RUNNING, 0.0)
    assert entries == [Entry("not_found", "b", 1, None)]
    record, entries = _run(PLAN_LOOKUP, record, 1, Succeeded())
    assert record.steps[1].attempts == 2


@pytest.mark.parametrize(
    ("error", "reason"), [("timeout", "timeout"), (None, "attempts exhausted")]
)
def test_lookup_not_found_forward_with_attempts_spent_fails_the_step_and_turns_back(
    error: str | None, reason: str
) -> None:
    record = _record(DONE, StepRecord(STARTED, attempts=2, error=error), PENDING)
    record, entries = _looked_up(PLAN_LOOKUP, record, 1, NotFound())
    assert record.steps[1] == StepRecord(FAILED, attempts=2, error=error)
    assert (record.state, record.forward, record.error) == (COMPENSATING, False, reason)
    assert entries == [
        Entry("not_found", "b", 2, None),
        Entry("turned_back", None, None, reason),
    ]
    assert next_move(PLAN_LOOKUP, record, NOW) == Compensate(0)


def test_lookup_found_backward_undoes_the_step() -> None:
    record = _record(DONE, StepRecord(STARTED, attempts=1), PENDING, forward=False)
    record, entries = _looked_up(PLAN_LOOKUP, record, 1, Found())
    assert _states(record) == [DONE, DONE, PENDING]
    assert record.state is COMPENSATING
    assert entries == [Entry("found", "b", 1, None)]
    assert next_move(PLAN_LOOKUP, record, NOW) == Compensate(1)


def test_lookup_found_backward_without_undo_is_skipped() -> None:
    plan = _plan(_step("a", undo=False), _step("b", lookup=True, undo=False))
    record = _record(DONE, StepRecord(STARTED, attempts=1), forward=False)
    record, entries = _looked_up(plan, record, 1, Found())
    assert record.state is COMPENSATED
    assert _kinds(entries) == ["found", "finished"]


def test_lookup_not_found_backward_fails_the_step_even_with_attempts_left() -> None:
    record = _record(DONE, StepRecord(STARTED, attempts=1, lookups=1), PENDING, forward=False)
    record, entries = _looked_up(PLAN_LOOKUP, record, 1, NotFound())
    assert record.steps[1] == StepRecord(FAILED, attempts=1, lookups=0)
    assert (record.state, record.forward) == (COMPENSATING, False)
    assert entries == [Entry("not_found", "b", 1, None)]  # no second "turned_back"
    assert next_move(PLAN_LOOKUP, record, NOW) == Compensate(0)


def test_lookup_not_found_backward_with_nothing_to_undo_is_compensated() -> None:
    record = _record(StepRecord(STARTED, attempts=1), forward=False)
    plan = _plan(_step("a", lookup=True))
    record, entries = _looked_up(plan, record, 0, NotFound())
    assert record.state is COMPENSATED
    assert _kinds(entries) == ["not_found", "finished"]


@pytest.mark.parametrize("forward", [True, False])
def test_lookup_failures_are_retried_then_the_saga_needs_attention(forward: bool) -> None:
    record = _record(
        DONE, StepRecord(STARTED, attempts=2, error="timeout"), PENDING, forward=forward
    )
    record, entries = _looked_up(PLAN_LOOKUP, record, 1, Failed("lookup 503"))
    delay = PLAN_LOOKUP.steps[1].retry.delay(1, DRAW)
    assert record.steps[1] == StepRecord(STARTED, attempts=2, lookups=1, error="lookup 503")
    assert (record.state, record.due_at) == (RUNNING if forward else COMPENSATING, NOW + delay)
    assert entries == [Entry("lookup_failed", "b", 1, "lookup 503")]
    assert next_move(PLAN_LOOKUP, record, NOW) == Wait(NOW + delay)
    record, entries = _looked_up(PLAN_LOOKUP, replace(record, due_at=0.0), 1, Failed("still 503"))
    assert record.state is NEEDS_ATTENTION
    assert record.forward is forward
    assert record.error == "b: lookup failed: still 503"
    assert record.steps[1].lookups == 2
    assert entries == [
        Entry("lookup_failed", "b", 2, "still 503"),
        Entry("needs_attention", None, None, "b: lookup failed: still 503"),
    ]


# --- abandon (Rule 5) -----------------------------------------------------------------------


def test_past_the_deadline_the_saga_turns_back() -> None:
    plan = _plan(_step("a"), _step("b", lookup=True), _step("c"), _step("d"), _step("e"))
    record = _record(
        DONE,
        StepRecord(STARTED, attempts=1),
        PENDING,
        PENDING,
        PENDING,
        deadline_at=NOW,
    )
    assert next_move(plan, record, NOW) == Abandon()
    new, entries = abandon(plan, record, "deadline passed")
    assert (new.state, new.forward, new.error, new.due_at) == (
        COMPENSATING,
        False,
        "deadline passed",
        0.0,
    )
    assert entries == [Entry("turned_back", None, None, "deadline passed")]
    # The STARTED step with a lookup is looked up, then the DONE one undone.
    assert next_move(plan, new, NOW) == LookUp(1)


def test_abandon_marks_a_started_step_without_lookup_unknown_and_a_retried_pending_one_failed() -> (
    None
):
    plan = _plan(_step("a"), _step("b"), _step("c"))
    record = _record(DONE, StepRecord(STARTED, attempts=1), PENDING)
    new, _ = abandon(plan, record, "operator")
    assert _states(new) == [DONE, UNKNOWN, PENDING]
    assert next_move(plan, new, NOW) == Compensate(1)
    record = _record(DONE, StepRecord(PENDING, attempts=1), PENDING)
    new, _ = abandon(plan, record, "operator")
    assert _states(new) == [DONE, FAILED, PENDING]
    assert next_move(plan, new, NOW) == Compensate(0)


def test_abandon_with_nothing_done_is_compensated() -> None:
    plan = _plan(_step("a"), _step("b"))
    new, entries = abandon(plan, _record(PENDING, PENDING), "deadline")
    assert new.state is COMPENSATED
    assert _kinds(entries) == ["turned_back", "finished"]


# --- take_over (a person's retry) -----------------------------------------------------------


def test_take_over_forward_after_lookups_failed_looks_up_again_with_fresh_counts() -> None:
    record = _record(
        DONE,
        StepRecord(STARTED, attempts=2, lookups=2, error="x"),
        PENDING,
        state=NEEDS_ATTENTION,
        deadline_at=NOW - 100,
        error="b: lookup failed: x",
        due_at=NOW + 50,
    )
    new, entries = take_over(PLAN_LOOKUP, record)
    assert entries == []
    assert (new.state, new.forward, new.deadline_at, new.error, new.due_at) == (
        RUNNING,
        True,
        None,
        None,
        0.0,
    )
    assert new.steps[0] == record.steps[0]
    assert new.steps[1] == StepRecord(STARTED, error="x")
    assert next_move(PLAN_LOOKUP, new, NOW) == LookUp(1)


def test_take_over_forward_turns_an_unknown_step_into_a_started_one() -> None:
    plan = _plan(_step("a"), _step("b"), _step("c", lookup=True))
    record = _record(
        StepRecord(DONE, attempts=3),
        StepRecord(UNKNOWN, attempts=3),
        StepRecord(PENDING, attempts=1),
        state=NEEDS_ATTENTION,
        error="e",
    )
    new, _ = take_over(plan, record)
    assert new.steps == (
        StepRecord(DONE, attempts=3),
        StepRecord(STARTED),
        StepRecord(PENDING),
    )
    assert next_move(plan, new, NOW) == Run(1)


def test_take_over_backward_retries_the_undo_with_fresh_counts() -> None:
    plan = _plan(_step("a"), _step("b"), _step("c"))
    record = _record(
        StepRecord(DONE, attempts=1),
        StepRecord(UNDOING, attempts=1, undo_attempts=2, error="refused"),
        StepRecord(FAILED, attempts=1),
        forward=False,
        state=NEEDS_ATTENTION,
        error="b: compensation failed: refused",
    )
    new, entries = take_over(plan, record)
    assert entries == []
    assert (new.state, new.forward, new.error) == (COMPENSATING, False, None)
    assert new.steps[1] == StepRecord(UNDOING, attempts=0, error="refused")
    assert new.steps[0] == record.steps[0]
    assert new.steps[2] == record.steps[2]
    assert next_move(plan, new, NOW) == Compensate(1)


def test_take_over_backward_keeps_unknown_steps_unknown() -> None:
    plan = _plan(_step("a"), _step("b", lookup=True))
    record = _record(
        StepRecord(UNKNOWN, attempts=3),
        StepRecord(STARTED, attempts=1, lookups=3),
        forward=False,
        state=NEEDS_ATTENTION,
        error="b: lookup failed: x",
    )
    new, _ = take_over(plan, record)
    assert new.steps == (StepRecord(UNKNOWN, attempts=3), StepRecord(STARTED))
    assert next_move(plan, new, NOW) == LookUp(1)


def test_take_over_of_a_stranded_saga_stays_needs_attention() -> None:
    plan = _plan(_step("a"), _step("b", undo=False, attempts=1))
    record, _ = _run(plan, _record(DONE, PENDING), 1, Failed("timeout"))
    record, _ = _undo(plan, record, 0, Succeeded())
    assert record.state is NEEDS_ATTENTION
    new, entries = take_over(plan, record)
    assert new.state is NEEDS_ATTENTION
    assert new.error == "b: outcome unknown and no compensation"
    assert _states(new) == [UNDONE, UNKNOWN]
    assert _kinds(entries) == ["needs_attention"]
    assert next_move(plan, new, NOW) == Done()


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "Retry.attempts: expected an integer from 1 to 1000, got 0"),
        ({"attempts": 1001}, "Retry.attempts: expected an integer from 1 to 1000, got 1001"),
        ({"attempts": 2.0}, "Retry.attempts: expected an integer from 1 to 1000, got 2.0"),
        ({"attempts": "3"}, "Retry.attempts: expected an integer from 1 to 1000, got '3'"),
        ({"initial": -0.1}, "Retry.initial: expected seconds from 0 to 86400, got -0.1"),
        ({"initial": "1"}, "Retry.initial: expected seconds from 0 to 86400, got '1'"),
        ({"initial": math.nan}, "Retry.initial: expected seconds from 0 to 86400, got nan"),
        ({"maximum": 86401}, "Retry.maximum: expected seconds from 0 to 86400, got 86401"),
        ({"maximum": math.inf}, "Retry.maximum: expected seconds from 0 to 86400, got inf"),
        ({"initial": 5, "maximum": 2}, "Retry.maximum: expected at least initial (5), got 2"),
    ],
)
def test_retry_refuses_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Retry(**kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"attempts": 1}, {"attempts": 1000}, {"initial": 0, "maximum": 0}, {"maximum": 86400}],
)
def test_retry_accepts_the_bounds(kwargs: dict[str, Any]) -> None:
    retry = Retry(**kwargs)
    assert retry.attempts >= 1


# --- Hypothesis: a driver that stores like a worker and crashes -----------------------------

MAX_MOVES = 400
MAX_CRASHES = 6


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    steps = []
    for i in range(draw(st.integers(1, 5))):
        initial = draw(st.sampled_from([0.0, 0.5, 1.0]))
        steps.append(
            PlanStep(
                f"s{i}",
                undo=draw(st.booleans()),
                lookup=draw(st.booleans()),
                retry=Retry(attempts=draw(st.integers(1, 3)), initial=initial, maximum=4.0),
                undo_retry=Retry(attempts=draw(st.integers(1, 3)), initial=initial, maximum=4.0),
            )
        )
    return Plan(tuple(steps))


@dataclass
class Trace:
    """What the driver saw, for the properties."""

    undone: list[int] = field(default_factory=list)  # indexes whose undo Succeeded, in order
    ever_done: set[int] = field(default_factory=set)
    ever_undoable: set[int] = field(default_factory=set)  # ever DONE or UNKNOWN
    entries: list[Entry] = field(default_factory=list)
    #: What the driver knows of each step's effect at the partner: ``done`` (a success or
    #: a lookup found it), ``maybe`` (it started, then failed transiently or crashed),
    #: ``none`` (a business failure, or a lookup did not find it).
    effect: dict[int, str] = field(default_factory=dict)


def _observe(trace: Trace, record: Record) -> None:
    for index, step in enumerate(record.steps):
        if step.state is DONE:
            trace.ever_done.add(index)
        if step.state in (DONE, UNKNOWN):
            trace.ever_undoable.add(index)


def drive(plan: Plan, data: st.DataObject, deadline: float | None) -> tuple[Record, Trace]:
    """Run ``plan`` to its end with outcomes drawn from ``data``; the record is "stored"
    after ``started`` and after ``settle``, and a crash loses what was not stored."""
    now = 0.0
    trace = Trace()
    record, entries = start(plan, now, deadline)
    stored = record
    trace.entries += entries
    crashes = 0

    def crash() -> bool:
        return crashes < MAX_CRASHES and data.draw(st.integers(0, 9), label="crash") == 9

    for _ in range(MAX_MOVES):
        _observe(trace, record)
        move = next_move(plan, record, now)
        if isinstance(move, Done):
            return record, trace
        if isinstance(move, Wait):
            assert move.until > now
            now = move.until
            continue
        if isinstance(move, Halt):
            record, entries = halt(record, move.reason)
            stored = record
            trace.entries += entries
            continue
        if isinstance(move, Abandon):
            assert (record.deadline_at is not None and now >= record.deadline_at) or (
                "attempts spent" in move.reason
            )
            record, entries = abandon(plan, record, move.reason)
            stored = record
            trace.entries += entries
            continue
        index = move.index
        if isinstance(move, Run):
            # Rule 6: only after every previous step is DONE, never after its own DONE.
            assert record.forward
            assert all(step.state is DONE for step in record.steps[:index])
            assert index not in trace.ever_done
            trace.effect[index] = "maybe"
        elif isinstance(move, Compensate):
            assert not record.forward
            assert plan.steps[index].undo
            assert index in trace.ever_undoable
        else:
            assert plan.steps[index].lookup
        if isinstance(move, Run | Compensate):
            record, entries = started(plan, record, move)
            stored = record
            trace.entries += entries
        if crash():
            crashes += 1
            record = stored
            continue
        choices: list[Outcome]
        if isinstance(move, Run):
            # Success is drawn twice as often, so that sagas get far before they turn back.
            choices = [Succeeded(index), Succeeded(index), Failed("timeout")]
            choices.append(Failed("declined", final=True))
        elif isinstance(move, Compensate):
            choices = [Succeeded(), Succeeded(), Failed("undo refused")]
        else:
            choices = [Found(index), NotFound(), Failed("503")]
        outcome = data.draw(st.sampled_from(choices), label=type(move).__name__)
        jitter = data.draw(st.floats(0, 1, exclude_max=True), label="draw")
        before = record.steps[index].state
        record, entries = settle(plan, record, move, outcome, now, jitter)
        stored = record
        trace.entries += entries
        if isinstance(move, Run | LookUp) and isinstance(outcome, Succeeded | Found):
            trace.effect[index] = "done"
        elif isinstance(outcome, NotFound) or (isinstance(outcome, Failed) and outcome.final):
            trace.effect[index] = "none"
        if isinstance(move, Compensate) and isinstance(outcome, Succeeded):
            assert before is UNDOING
            assert index not in trace.undone  # Rule 3: at most once to completion
            trace.undone.append(index)
    raise AssertionError(f"no end after {MAX_MOVES} moves: {record}")


@settings(max_examples=1000, deadline=None)
@given(
    plan=plans(),
    deadline=st.none() | st.floats(0, 30),
    data=st.data(),
)
def test_any_saga_ends_completed_compensated_or_flagged(
    plan: Plan, deadline: float | None, data: st.DataObject
) -> None:
    record, trace = drive(plan, data, deadline)
    assert record.state in (COMPLETED, COMPENSATED, NEEDS_ATTENTION)
    states = _states(record)
    if record.state is COMPLETED:
        assert all(state is DONE for state in states)
        assert trace.undone == []
    if record.state is COMPENSATED:
        for state, spec in zip(states, plan.steps, strict=True):
            assert state in (PENDING, FAILED, UNDONE) or (state is DONE and not spec.undo)
        # Nothing that may have happened at the partner is left standing silently: it was
        # undone, or it certainly happened and has no undo (Rule 3).
        for index, effect in trace.effect.items():
            if plan.steps[index].undo and effect != "none":
                assert index in trace.undone, (index, effect)
            assert effect != "maybe" or plan.steps[index].undo, (index, effect)
    if record.state is NEEDS_ATTENTION:
        assert isinstance(record.error, str)
        assert record.error
        assert trace.entries[-1] == Entry("needs_attention", None, None, record.error)
    # Compensations run in reverse order of the steps (Rule 3).
    assert trace.undone == sorted(trace.undone, reverse=True)
    assert len(set(trace.undone)) == len(trace.undone)
    # Every completed undo left a COMPENSATED step: no step was undone, then re-run.
    for index in trace.undone:
        assert states[index] is UNDONE
    # Nothing ran once the saga had turned back, and the timeline says how it ended.
    kinds = _kinds(trace.entries)
    assert kinds[0] == "created"
    assert kinds.count("turned_back") <= 1
    if record.state is not NEEDS_ATTENTION:
        assert trace.entries[-1] == Entry(
            "finished", None, None, "completed" if record.state is COMPLETED else "compensated"
        )


@settings(max_examples=200, deadline=None)
@given(plan=plans(), data=st.data())
def test_a_person_taking_over_a_flagged_saga_never_reruns_a_done_step(
    plan: Plan, data: st.DataObject
) -> None:
    record, trace = drive(plan, data, None)
    if record.state is not NEEDS_ATTENTION:
        return
    new, _ = take_over(plan, record)
    assert new.forward is record.forward
    assert new.state in (RUNNING, COMPENSATING, NEEDS_ATTENTION, COMPLETED, COMPENSATED)
    if new.state is NEEDS_ATTENTION:
        # Only a stranded saga (an unknown outcome with no undo) refuses the retry.
        assert not new.forward
        assert "outcome unknown and no compensation" in (new.error or "")
        return
    move = next_move(plan, new, 0.0)
    # A flagged saga going forward waits on a lookup (its attempts at the step were
    # spent), so a retry asks the lookup again, never runs an action; going back, it
    # undoes (or looks up) a step not undone yet.
    assert isinstance(move, LookUp | Compensate), move
    assert new.steps[move.index].state is not DONE or isinstance(move, Compensate)
    if isinstance(move, Compensate):
        assert move.index not in trace.undone


def test_rule_7_a_step_whose_runs_never_finish_turns_the_saga_back_once_spent() -> None:
    spec = PlanStep("charge", undo=True, lookup=False, retry=Retry(2), undo_retry=Retry(2))
    plan = _plan(spec)
    running = _record(StepRecord(STARTED, attempts=1))
    assert next_move(plan, running, NOW) == Run(0)
    spent = _record(StepRecord(STARTED, attempts=2))
    move = next_move(plan, spent, NOW)
    assert move == Abandon("charge: attempts spent, the last one never finished")
    back, _ = abandon(plan, spent, move.reason)
    assert back.steps[0].state is UNKNOWN
    assert next_move(plan, back, NOW) == Compensate(0)


def test_rule_7_an_undo_whose_runs_never_finish_stops_for_a_person_once_spent() -> None:
    spec = PlanStep("charge", undo=True, lookup=False, retry=Retry(2), undo_retry=Retry(2))
    plan = _plan(spec)
    undoing = _record(
        StepRecord(StepState.COMPENSATING, attempts=1, undo_attempts=1), forward=False
    )
    assert next_move(plan, undoing, NOW) == Compensate(0)
    spent = _record(StepRecord(StepState.COMPENSATING, attempts=1, undo_attempts=2), forward=False)
    move = next_move(plan, spent, NOW)
    assert move == Halt("charge: compensation attempts spent, the last one never finished")
    stopped, entries = halt(spent, move.reason)
    assert stopped.state is SagaState.NEEDS_ATTENTION
    assert stopped.error == move.reason
    assert entries[-1].kind == "needs_attention"
