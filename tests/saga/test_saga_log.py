"""``SagaLog`` on SQLite and PostgreSQL: starting a saga (and refusing bad input), the
definitions it accepts, reading runs, counts and timelines, purging, and a person's
actions (retry, compensate, resolve) in the states where they apply and where they do not.

The sagas are moved along by a ``SagaWorker`` where a state needs it; the clock is a
``ManualClock`` given to the log.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from surefoot._sql import sqlite_path
from surefoot.errors import AdminNotFound, ConfigurationError, SagaActionRefused
from surefoot.events import Event
from surefoot.saga import Retry, Saga, SagaLog, SagaWorker, Step, StepContext, StepFailed
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio


def noop(ctx: StepContext) -> str:
    return f"{ctx.step} done"


def two_steps(name: str = "order") -> Saga:
    return Saga(name, [Step("reserve", noop, compensate=noop), Step("charge", noop)])


async def drive(log: SagaLog, saga: Saga, saga_id: str, events: list[Event] | None = None) -> str:
    """Run ``saga_id`` as far as it goes now; its state."""
    worker = SagaWorker(
        log, [saga], worker_id="w1", hooks=[] if events is None else [events.append]
    )
    try:
        return (await worker.execute(saga_id)).state
    finally:
        await worker.aclose()


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"database": "mysql://x"}, "SagaLog.database"),
        ({"database": 42}, "SagaLog.database"),
        ({"prefix": "Bad-Prefix"}, "SagaLog.prefix"),
        ({"prefix": "a" * 41}, "SagaLog.prefix"),
        ({"retention": 0}, "SagaLog.retention"),
        ({"retention": math.inf}, "SagaLog.retention"),
        ({"retention": "1d"}, "SagaLog.retention"),
    ],
)
def test_a_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"database": "sqlite:///x.db", **kwargs}
    database = args.pop("database")
    with pytest.raises(ConfigurationError, match=message):
        SagaLog(database, **args)


def test_the_password_stays_out_of_messages_and_repr() -> None:
    with pytest.raises(ConfigurationError) as info:
        SagaLog("mysql://user:secret@db.example/shop")
    assert "secret" not in str(info.value)
    log = SagaLog("postgresql://user:secret@db.example/shop", prefix="shop")
    assert "secret" not in repr(log)
    assert "shop_runs" in log.ddl()


def test_the_ddl_follows_the_dialect() -> None:
    log = SagaLog("sqlite:///x.db")
    assert "DOUBLE PRECISION" in log.ddl("postgresql")
    assert "DOUBLE PRECISION" not in log.ddl()
    assert "surefoot_saga_runs" in log.ddl()


# -- definitions -------------------------------------------------------------------------------


def test_a_step_name_is_defined_once() -> None:
    saga = Saga("s", [Step("a", noop)])
    with pytest.raises(ConfigurationError, match="'a' is defined twice"):
        saga.add(Step("a", noop))
    with pytest.raises(ConfigurationError, match="defined twice"):
        Saga("s", [Step("a", noop), Step("a", noop)])
    with pytest.raises(ConfigurationError, match="expected a Step"):
        saga.add(noop)  # type: ignore[arg-type]


def test_decorators_build_the_same_steps() -> None:
    saga = Saga("s")

    @saga.step("a", retry=Retry(attempts=2))
    def action(ctx: StepContext) -> None: ...

    @saga.compensation("a")
    def undo(ctx: StepContext) -> None: ...

    @saga.lookup("a")
    def look(ctx: StepContext) -> None: ...

    (step,) = saga.steps
    assert (step.action, step.compensate, step.lookup) == (action, undo, look)
    assert step.retry == Retry(attempts=2)
    assert saga.names == ("a",)
    assert repr(saga) == "Saga('s', steps=('a',))"
    plan = saga.plan()
    assert plan.steps[0].undo
    assert plan.steps[0].lookup


def test_decorators_refuse_unknown_steps_and_second_functions() -> None:
    saga = Saga("s")
    with pytest.raises(ConfigurationError, match="not defined \\(steps: none yet\\)"):
        saga.compensation("a")
    saga.step("a")(noop)
    with pytest.raises(ConfigurationError, match="'b', which is not defined \\(steps: a\\)"):
        saga.lookup("b")
    saga.compensation("a")(noop)
    with pytest.raises(ConfigurationError, match="already has a compensate function"):
        saga.compensation("a")(noop)
    saga.lookup("a")(noop)
    with pytest.raises(ConfigurationError, match="already has a lookup function"):
        saga.lookup("a")(noop)


@pytest.mark.parametrize("name", ["", " a", "a b", "-a", "a" * 65, 7, "é"])
def test_bad_names_are_refused(name: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"Step\.name"):
        Step(name, noop)
    with pytest.raises(ConfigurationError, match=r"Saga\.name"):
        Saga(name)


@pytest.mark.parametrize("deadline", [0, -1, 366 * 86400 + 1, "1h", math.nan])
def test_bad_deadlines_are_refused(deadline: Any) -> None:
    with pytest.raises(ConfigurationError, match="deadline"):
        Saga("s", deadline=deadline)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_statuses": {200}}, "final_statuses"),
        ({"final_statuses": {600}}, "final_statuses"),
        ({"final_statuses": 402}, "final_statuses"),
        ({"final_statuses": {"402"}}, "final_statuses"),
        ({"fails_on": (ValueError, "x")}, "fails_on"),
        ({"fails_on": (int,)}, "fails_on"),
        ({"fails_on": ValueError}, "fails_on: expected a tuple of exception classes"),
        ({"retry": 3}, "retry: expected a Retry"),
        ({"undo_retry": None}, "undo_retry: expected a Retry"),
        ({"compensate": "undo"}, "compensate: expected a function"),
        ({"lookup": 1}, "lookup: expected a function"),
    ],
)
def test_bad_step_options_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Step("a", noop, **kwargs)


def test_an_action_must_be_a_function() -> None:
    with pytest.raises(ConfigurationError, match="action: expected a function"):
        Step("a", None)  # type: ignore[arg-type]


def test_step_options_are_normalised() -> None:
    step = Step("a", noop, fails_on=[KeyError], final_statuses=[402, 409])
    assert step.fails_on == (KeyError,)
    assert step.final_statuses == frozenset({402, 409})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "Retry.attempts"),
        ({"attempts": 1001}, "Retry.attempts"),
        ({"attempts": 2.0}, "Retry.attempts"),
        ({"initial": -1}, "Retry.initial"),
        ({"maximum": 86401}, "Retry.maximum"),
        ({"initial": "1"}, "Retry.initial"),
        ({"initial": 10, "maximum": 5}, "at least initial"),
    ],
)
def test_bad_retries_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Retry(**kwargs)


# -- start -------------------------------------------------------------------------------------


async def test_start_records_once_and_returns_the_first_run(log: SagaLog) -> None:
    saga = two_steps()
    run, created = log.start(saga, "order-1", {"sku": "A1"})
    assert created
    assert (run.id, run.name, run.state, run.input) == (
        "order-1",
        "order",
        "running",
        {"sku": "A1"},
    )
    assert [s["name"] for s in run.steps] == ["reserve", "charge"]
    assert [s["state"] for s in run.steps] == ["pending", "pending"]
    assert run.created_at == run.due_at == log.clock.now()
    assert run.deadline_at is None
    assert run.owner is None
    assert run.error is None
    again, created = log.start(saga, "order-1", {"sku": "B2"})
    assert not created
    assert again.input == {"sku": "A1"}
    assert [r.id for r in log.runs()] == ["order-1"]
    assert [e.kind for e in log.timeline("order-1")] == ["created"]
    assert log.timeline("order-1")[0].actor == "app"


async def test_start_records_the_deadline(log: SagaLog, clock: ManualClock) -> None:
    run, _ = log.start(Saga("s", [Step("a", noop)], deadline=60), "x", actor="shop-api")
    assert run.deadline_at == clock.now() + 60
    assert log.timeline("x")[0].actor == "shop-api"


@pytest.mark.parametrize(
    ("saga_id", "input", "error", "message"),
    [
        ("", None, ValueError, "saga_id"),
        ("a b", None, ValueError, "saga_id"),
        ("x" * 201, None, ValueError, "saga_id"),
        (7, None, ValueError, "saga_id"),
        ("ok", {1, 2}, ValueError, "input: expected JSON"),
        ("ok", math.nan, ValueError, "input: expected JSON"),
        ("ok", {"n": math.inf}, ValueError, "input: expected JSON"),
        ("ok", "x" * (256 * 1024), ValueError, "at most 262144 bytes"),
    ],
)
async def test_bad_input_records_nothing(
    log: SagaLog, saga_id: Any, input: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        log.start(two_steps(), saga_id, input)
    assert log.runs() == []


async def test_a_bad_saga_or_actor_records_nothing(log: SagaLog) -> None:
    with pytest.raises(ConfigurationError, match="expected at least one step"):
        log.start(Saga("empty"), "a")
    with pytest.raises(ConfigurationError, match="expected a Saga"):
        log.start("order", "a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="actor"):
        log.start(two_steps(), "a", actor="a person")
    assert log.runs() == []


async def test_an_input_just_under_the_limit_is_kept(log: SagaLog) -> None:
    text = "x" * (256 * 1024 - 2)  # with its quotes, exactly the limit
    run, created = log.start(two_steps(), "big", text)
    assert created
    assert run.input == text


# -- reading -----------------------------------------------------------------------------------


async def test_runs_filter_by_state_name_age_and_limit(log: SagaLog, clock: ManualClock) -> None:
    order, refund = two_steps("order"), two_steps("refund")
    log.start(order, "o1")
    clock.advance(100)
    log.start(order, "o2")
    log.start(refund, "r1")
    clock.advance(100)
    assert await drive(log, order, "o2") == "completed"
    assert [r.id for r in log.runs()] == ["o1", "r1", "o2"]
    assert [r.id for r in log.runs(state="running")] == ["o1", "r1"]
    assert [r.id for r in log.runs(state="completed")] == ["o2"]
    assert [r.id for r in log.runs(name="refund")] == ["r1"]
    assert [r.id for r in log.runs(name="order", state="running")] == ["o1"]
    assert [r.id for r in log.runs(older_than=150)] == ["o1"]
    assert [r.id for r in log.runs(older_than=100)] == ["o1", "r1"]
    assert [r.id for r in log.runs(limit=1)] == ["o1"]
    assert log.runs(name="nothing") == []
    with pytest.raises(ValueError, match="state: expected one of running"):
        log.runs(state="done")
    for older_than in (-1, math.nan, "1h"):
        with pytest.raises(ValueError, match="older_than"):
            log.runs(older_than=older_than)  # type: ignore[arg-type]
    for limit in (0, 1001, 1.5):
        with pytest.raises(ValueError, match="limit"):
            log.runs(limit=limit)  # type: ignore[arg-type]
    assert log.get("nothing") is None
    whole, (summary,) = log.get("o2"), log.runs(state="completed")
    assert whole is not None
    assert all("result" in step for step in whole.steps)
    # A listing gives summaries: no input, no step results, the rest as get() has it.
    assert summary.input is None
    assert all("result" not in step for step in summary.steps)
    assert summary.state == whole.state
    assert summary.updated_at == whole.updated_at
    assert [s["state"] for s in summary.steps] == [s["state"] for s in whole.steps]
    assert log.get("o2").as_dict()["state"] == "completed"  # type: ignore[union-attr]


async def test_counts_group_by_name_and_state(log: SagaLog, clock: ManualClock) -> None:
    order = two_steps("order")
    assert log.counts() == []
    start = clock.now()
    log.start(order, "o1")
    clock.advance(10)
    log.start(order, "o2")
    log.start(order, "o3")
    log.start(two_steps("refund"), "r1")
    assert await drive(log, order, "o3") == "completed"
    assert log.counts() == [
        ("order", "completed", 1, start + 10),
        ("order", "running", 2, start),
        ("refund", "running", 1, start + 10),
    ]


async def test_the_timeline_shows_each_transition(log: SagaLog) -> None:
    saga = two_steps()
    log.start(saga, "o1")
    assert await drive(log, saga, "o1") == "completed"
    timeline = log.timeline("o1")
    assert [(e.kind, e.step, e.attempt) for e in timeline] == [
        ("created", None, None),
        ("started", "reserve", 1),
        ("succeeded", "reserve", 1),
        ("started", "charge", 1),
        ("succeeded", "charge", 1),
        ("finished", None, None),
    ]
    assert [e.seq for e in timeline] == list(range(1, 7))
    assert {e.actor for e in timeline[1:]} == {"w1"}
    assert timeline[-1].as_dict()["detail"] == "completed"
    with pytest.raises(AdminNotFound):
        log.timeline("nothing")


async def test_purge_removes_finished_sagas_past_retention_only(
    log: SagaLog, clock: ManualClock
) -> None:
    saga = two_steps()
    for saga_id in ("done", "open", "recent"):
        log.start(saga, saga_id)
    assert await drive(log, saga, "done") == "completed"
    clock.advance(3000)
    assert await drive(log, saga, "recent") == "completed"
    assert log.purge() == 0
    clock.advance(600)
    assert log.purge() == 0  # "done" finished exactly ``retention`` ago: kept
    clock.advance(1)
    assert log.purge() == 1
    assert log.get("done") is None
    with pytest.raises(AdminNotFound):
        log.timeline("done")
    mark = "%s" if log.dialect == "postgresql" else "?"
    conn = log.connect()
    with conn.transaction() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {log.prefix}_log WHERE saga_id = {mark}", ("done",))
        assert cur.fetchone()[0] == 0
    conn.close()
    clock.advance(86400 * 10)
    for batch in (0, -1, 1.5):
        with pytest.raises(ValueError, match="batch"):
            log.purge(batch=batch)  # type: ignore[arg-type]
    assert log.purge(batch=10) == 1
    assert [r.id for r in log.runs()] == ["open"]
    assert log.timeline("open")


# -- a person's actions ------------------------------------------------------------------------


def flaky_saga(failures: list[int]) -> Saga:
    """``reserve`` then ``charge``, which fails transiently while ``failures[0]`` > 0."""

    def charge(ctx: StepContext) -> str:
        if failures[0] > 0:
            failures[0] -= 1
            raise ConnectionError("card network down")
        return "charged"

    return Saga(
        "order",
        [
            Step("reserve", noop, compensate=noop),
            Step(
                "charge",
                charge,
                compensate=noop,
                retry=Retry(attempts=2, initial=100, maximum=100),
            ),
        ],
    )


async def test_actions_validate_reason_and_actor_and_find_the_saga(log: SagaLog) -> None:
    log.start(two_steps(), "o1")
    for action in (log.retry, log.compensate, log.resolve):
        with pytest.raises(AdminNotFound):
            action("nothing", reason="why", actor="ann")
        for reason in ("", "x" * 501, "tab\there", None):
            with pytest.raises(ValueError, match="reason"):
                action("o1", reason=reason, actor="ann")  # type: ignore[arg-type]
        for actor in ("", "ann smith", "a" * 65):
            with pytest.raises(ValueError, match="actor"):
                action("o1", reason="why", actor=actor)
    assert [e.kind for e in log.timeline("o1")] == ["created"]


async def test_retry_runs_a_waiting_saga_now(log: SagaLog, clock: ManualClock) -> None:
    failures = [1]
    saga = flaky_saga(failures)
    log.start(saga, "o1")
    assert await drive(log, saga, "o1") == "running"
    waiting = log.get("o1")
    assert waiting is not None
    assert waiting.due_at > clock.now()
    run = log.retry("o1", reason="card network is back", actor="ann")
    assert run.state == "running"
    assert run.due_at == clock.now()
    assert await drive(log, saga, "o1") == "completed"
    retry = [e for e in log.timeline("o1") if e.kind == "retry"]
    assert [(e.actor, e.detail) for e in retry] == [("ann", "card network is back")]


async def test_compensate_turns_a_running_saga_back(log: SagaLog) -> None:
    failures = [5]
    saga = flaky_saga(failures)
    log.start(saga, "o1")
    assert await drive(log, saga, "o1") == "running"
    run = log.compensate("o1", reason="customer cancelled", actor="bob")
    assert run.state == "compensating"
    assert run.error == "compensate (bob): customer cancelled"
    with pytest.raises(SagaActionRefused, match="already compensating"):
        log.compensate("o1", reason="again", actor="bob")
    assert await drive(log, saga, "o1") == "compensated"
    done = log.get("o1")
    assert done is not None
    # charge's outcome was unknown (it failed, maybe after reaching the bank): undone too.
    assert [s["state"] for s in done.steps] == ["compensated", "compensated"]
    kinds = [(e.kind, e.actor) for e in log.timeline("o1")]
    assert ("compensate", "bob") in kinds
    assert ("compensated", "w1") in kinds


async def test_resolve_closes_an_open_saga(log: SagaLog) -> None:
    log.start(two_steps(), "o1")
    run = log.resolve("o1", reason="settled by phone", actor="carol")
    assert run.state == "resolved"
    entry = log.timeline("o1")[-1]
    assert (entry.kind, entry.actor, entry.detail) == ("resolve", "carol", "settled by phone")
    for action in (log.retry, log.compensate, log.resolve):
        with pytest.raises(SagaActionRefused, match="the saga is resolved"):
            action("o1", reason="again", actor="carol")
    assert log.timeline("o1")[-1] == entry


async def test_finished_sagas_refuse_every_action(log: SagaLog) -> None:
    saga = two_steps()
    log.start(saga, "o1")
    assert await drive(log, saga, "o1") == "completed"
    before = log.timeline("o1")
    for action in (log.retry, log.compensate, log.resolve):
        with pytest.raises(SagaActionRefused, match="the saga is completed"):
            action("o1", reason="why", actor="ann")
    assert log.timeline("o1") == before
    assert log.get("o1").state == "completed"  # type: ignore[union-attr]


async def test_an_unknown_outcome_without_undo_can_only_be_resolved(log: SagaLog) -> None:
    def down(ctx: StepContext) -> None:
        raise TimeoutError("partner silent")

    saga = Saga("s", [Step("a", down, retry=Retry(attempts=1))])
    log.start(saga, "o1")
    assert await drive(log, saga, "o1") == "needs_attention"
    with pytest.raises(SagaActionRefused, match="nothing is left to retry"):
        log.retry("o1", reason="try again", actor="ann")
    with pytest.raises(SagaActionRefused, match="already compensating"):
        log.compensate("o1", reason="undo", actor="ann")
    assert log.resolve("o1", reason="checked by hand", actor="ann").state == "resolved"


async def test_retry_after_a_failed_compensation_finishes_it(
    log: SagaLog, clock: ManualClock
) -> None:
    broken = [True]

    def undo(ctx: StepContext) -> None:
        if broken[0]:
            raise RuntimeError("refund API down")

    def decline(ctx: StepContext) -> None:
        raise StepFailed("card declined")

    saga = Saga(
        "s",
        [Step("a", noop, compensate=undo, undo_retry=Retry(attempts=1)), Step("b", decline)],
    )
    log.start(saga, "o1")
    assert await drive(log, saga, "o1") == "needs_attention"
    assert log.get("o1").error == "a: compensation failed: RuntimeError: refund API down"  # type: ignore[union-attr]
    broken[0] = False
    run = log.retry("o1", reason="refund API fixed", actor="ann")
    assert run.state == "compensating"
    assert await drive(log, saga, "o1") == "compensated"


async def test_retry_of_a_saga_whose_lookup_failed_asks_the_lookup_again(log: SagaLog) -> None:
    calls: list[str] = []
    lookup_up = [False]

    def down(ctx: StepContext) -> str:
        calls.append("action")
        raise TimeoutError("partner silent")

    def look(ctx: StepContext) -> str:
        calls.append("lookup")
        if not lookup_up[0]:
            raise TimeoutError("lookup down")
        return "found it"

    saga = Saga("s", [Step("a", down, lookup=look, retry=Retry(attempts=1))])
    log.start(saga, "o1")
    assert await drive(log, saga, "o1") == "needs_attention"
    assert log.get("o1").error == "a: lookup failed: TimeoutError: lookup down"  # type: ignore[union-attr]
    assert calls == ["action", "lookup"]
    assert log.retry("o1", reason="lookup API back", actor="ann").state == "running"
    lookup_up[0] = True
    assert await drive(log, saga, "o1") == "completed"
    assert calls == ["action", "lookup", "lookup"]  # looked up, never run again
    assert log.get("o1").steps[0]["result"] == "found it"  # type: ignore[union-attr]


async def test_compensate_a_saga_whose_lookup_failed(log: SagaLog) -> None:
    def look(ctx: StepContext) -> None:
        raise TimeoutError("lookup down")

    saga = Saga(
        "s",
        [
            Step("a", noop, compensate=noop),
            Step("b", look, lookup=look, retry=Retry(attempts=1)),
        ],
    )
    log.start(saga, "o1")
    assert await drive(log, saga, "o1") == "needs_attention"
    assert log.compensate("o1", reason="give up", actor="ann").state == "compensating"
    # Going back, b (in doubt, with a lookup) is looked up first, with fresh attempts; it
    # still fails.
    assert await drive(log, saga, "o1") == "needs_attention"
    assert states_of(log, "o1") == ["done", "started"]


def states_of(log: SagaLog, saga_id: str) -> list[str]:
    run = log.get(saga_id)
    assert run is not None
    return [step["state"] for step in run.steps]


# -- claims and leases -------------------------------------------------------------------------


async def test_a_lease_handed_back_is_not_renewed(log: SagaLog, clock: ManualClock) -> None:
    saga = two_steps()
    log.start(saga, "o1")
    conn = log.connect()
    try:
        (claimed,) = log.claim(conn, "w1", names=["order"], limit=5, lease=60)
        assert log.claim(conn, "w2", names=["order"], limit=5, lease=60) == []
        assert log.renew(conn, claimed, clock.now() + 60)
        # w1 hands the saga back (a backoff); a renewal still in flight lands afterwards.
        plan = saga.plan()
        assert log.commit(conn, claimed, plan, claimed.record, [], lease_until=0.0, actor="w1")
        assert not log.renew(conn, claimed, clock.now() + 60)
        assert log.get("o1").owner is None  # type: ignore[union-attr]
        (again,) = log.claim(conn, "w2", names=["order"], limit=5, lease=60)
        assert again.fence == claimed.fence + 1
        assert not log.renew(conn, claimed, clock.now() + 60)
        assert not log.commit(conn, claimed, plan, claimed.record, [], lease_until=0, actor="w1")
    finally:
        conn.close()


async def test_claim_takes_only_due_sagas_of_the_names_given(
    log: SagaLog, clock: ManualClock
) -> None:
    log.start(two_steps("order"), "o1")
    log.start(two_steps("refund"), "r1")
    conn = log.connect()
    try:
        assert log.claim(conn, "w1", names=["nothing"], limit=5, lease=60) == []
        assert log.claim(conn, "w1", names=["order"], limit=5, lease=60, saga_id="r1") == []
        (claimed,) = log.claim(
            conn, "w1", names=["order", "refund"], limit=5, lease=60, saga_id="r1"
        )
        assert (claimed.id, claimed.name, claimed.names) == ("r1", "refund", ("reserve", "charge"))
        assert log.get("r1").owner == "w1"  # type: ignore[union-attr]
        clock.advance(61)
        assert log.get("r1").owner is None  # type: ignore[union-attr]
        taken = log.claim(conn, "w2", names=["order", "refund"], limit=5, lease=60)
        assert sorted(c.id for c in taken) == ["o1", "r1"]
    finally:
        conn.close()


# -- starting in the application's transaction ---------------------------------------------------


def app_connection(log: SagaLog, *, autocommit: bool = False) -> Any:
    """The application's own connection to the log's database (sqlite3 or psycopg)."""
    if log.dialect == "sqlite":
        return sqlite3.connect(sqlite_path(log.database), isolation_level=None)
    return psycopg.connect(log.database, autocommit=autocommit)


def begin(conn: Any) -> None:
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN IMMEDIATE")


async def test_start_in_the_applications_transaction(log: SagaLog) -> None:
    saga = two_steps()
    conn = app_connection(log)
    try:
        begin(conn)
        run, created = log.start(saga, "o1", {"n": 1}, conn=conn)
        assert created
        assert run.input == {"n": 1}
        if log.dialect == "postgresql":  # (SQLite: every read waits for the write lock)
            assert log.get("o1") is None  # not before the application commits
        conn.rollback()
        assert log.get("o1") is None
        begin(conn)
        assert log.start(saga, "o1", {"n": 2}, conn=conn)[1]
        conn.commit()
        assert log.get("o1").input == {"n": 2}  # type: ignore[union-attr]
        assert [e.kind for e in log.timeline("o1")] == ["created"]
        begin(conn)
        run, created = log.start(saga, "o1", {"n": 3}, conn=conn)
        conn.commit()
        assert not created
        assert run.input == {"n": 2}
    finally:
        conn.close()


async def test_start_refuses_a_connection_outside_a_transaction(log: SagaLog) -> None:
    conn = app_connection(log, autocommit=True)
    try:
        with pytest.raises(RuntimeError, match="inside a transaction"):
            log.start(two_steps(), "o1", conn=conn)
    finally:
        conn.close()
    assert log.runs() == []


def test_close_twice_is_harmless(tmp_path: Path) -> None:
    log = SagaLog(f"sqlite:///{tmp_path}/x.db")
    log.create_tables()
    assert log.runs() == []
    log.close()
    log.close()
    assert log.runs() == []  # reopened on use
    log.close()
