"""``SagaWorker`` in-process on SQLite and PostgreSQL: steps sync and async, results,
business and transient failures, lookups, compensations, deadlines, idempotency keys,
a crash mid-step taken over by another worker, fences, events, and ``run``/``stop``.

Time is a ``ManualClock`` given to the log; a backoff is waited out by advancing it and
calling ``execute`` or ``run_once`` again. A crash is a step raising ``Crash`` (a
``BaseException``, which the worker does not catch), leaving the saga as a killed
process would: its step recorded STARTED, its lease running.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from _support import GUARD, of
from surefoot.client import AsyncResilientTransport, ResilientTransport
from surefoot.errors import AdminNotFound, ConfigurationError, StoreUnavailable
from surefoot.events import Event
from surefoot.saga import (
    Retry,
    Saga,
    SagaFinished,
    SagaLog,
    SagaNeedsAttention,
    SagaStepFailed,
    SagaWorker,
    Step,
    StepContext,
    StepFailed,
)
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

LEASE = 60.0


class Crash(BaseException):
    """The process dies here (a ``BaseException``: nothing in the worker catches it)."""


@pytest.fixture
async def workers(log: SagaLog, events: list[Event]) -> AsyncIterator[Callable[..., SagaWorker]]:
    """Make workers (``w1``, ``w2``... reporting to ``events``); closed afterwards."""
    made: list[SagaWorker] = []

    def make(*sagas: Saga, **kwargs: Any) -> SagaWorker:
        kwargs.setdefault("worker_id", f"w{len(made) + 1}")
        kwargs.setdefault("hooks", [events.append])
        kwargs.setdefault("lease", LEASE)
        worker = SagaWorker(log, sagas, **kwargs)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.aclose()


class Partner:
    """An HTTP partner behind ``httpx.MockTransport``: records each request's key."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("idempotency-key"))
        self.paths.append(request.url.path)
        return httpx.Response(201, json={"id": len(self.keys)})

    def client(self) -> httpx.AsyncClient:
        transport = AsyncResilientTransport(
            httpx.MockTransport(self), hooks=[], random=random.Random(7)
        )
        return httpx.AsyncClient(transport=transport, base_url="https://partner.example")


def states(log: SagaLog, saga_id: str) -> list[str]:
    run = log.get(saga_id)
    assert run is not None
    return [step["state"] for step in run.steps]


def kinds(log: SagaLog, saga_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.step) for e in log.timeline(saga_id)]


# -- steps, results, failures ------------------------------------------------------------------


async def test_sync_and_async_steps_pass_their_results_on(
    log: SagaLog, workers: Callable[..., SagaWorker], events: list[Event]
) -> None:
    seen: list[tuple[str, dict[str, Any], Any]] = []

    def reserve(ctx: StepContext) -> dict[str, str]:
        seen.append((ctx.step, dict(ctx.results), ctx.input))
        return {"reservation": f"R-{ctx.input['sku']}"}

    async def charge(ctx: StepContext) -> str:
        seen.append((ctx.step, dict(ctx.results), ctx.input))
        assert (ctx.saga_id, ctx.saga, ctx.attempt, ctx.key) == ("o1", "order", 1, "saga:o1:charge")
        return "ch_1"

    def ship(ctx: StepContext) -> Any:
        seen.append((ctx.step, dict(ctx.results), None))

        async def later() -> str:  # a sync function handing back an awaitable
            return "parcel-9"

        return later()

    saga = Saga("order", [Step("reserve", reserve), Step("charge", charge), Step("ship", ship)])
    run = await workers(saga).start(saga, "o1", {"sku": "A1"})
    assert run.state == "completed"
    assert seen == [
        ("reserve", {}, {"sku": "A1"}),
        ("charge", {"reserve": {"reservation": "R-A1"}}, {"sku": "A1"}),
        ("ship", {"reserve": {"reservation": "R-A1"}, "charge": "ch_1"}, None),
    ]
    assert [s["result"] for s in run.steps] == [{"reservation": "R-A1"}, "ch_1", "parcel-9"]
    assert [(type(e), getattr(e, "state", None)) for e in events] == [(SagaFinished, "completed")]
    assert events[0].request_id == "o1"  # type: ignore[attr-defined]


async def test_a_result_that_is_not_json_is_stored_as_text(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    saga = Saga("s", [Step("a", lambda ctx: {"when": Path("/x"), "n": (1, 2)})])
    run = await workers(saga).start(saga, "o1")
    assert run.steps[0]["result"] == {"when": "/x", "n": [1, 2]}


@pytest.mark.parametrize("how", ["StepFailed", "fails_on", "status"])
async def test_a_business_failure_compensates_in_reverse_order(
    log: SagaLog, workers: Callable[..., SagaWorker], events: list[Event], how: str
) -> None:
    undone: list[tuple[str, Any]] = []

    def undo(ctx: StepContext) -> None:
        undone.append((ctx.step, ctx.result))

    async def fail(ctx: StepContext) -> None:
        if how == "StepFailed":
            raise StepFailed("card declined")
        if how == "fails_on":
            raise KeyError("no such card")
        request = httpx.Request("POST", "https://bank.example/charges")
        response = httpx.Response(402, request=request)
        response.raise_for_status()

    saga = Saga(
        "order",
        [
            Step("reserve", lambda ctx: "R1", compensate=undo),
            Step("note", lambda ctx: "N1"),  # nothing to undo
            Step("hold", lambda ctx: "H1", compensate=undo),
            Step("charge", fail, compensate=undo, fails_on=(KeyError,), final_statuses={402}),
            Step("ship", lambda ctx: "never"),
        ],
    )
    run = await workers(saga).start(saga, "o1")
    assert run.state == "compensated"
    assert undone == [("hold", "H1"), ("reserve", "R1")]  # charge FAILED: nothing to undo
    assert [s["state"] for s in run.steps] == [
        "compensated",
        "done",
        "compensated",
        "failed",
        "pending",
    ]
    assert run.steps[3]["attempts"] == 1
    (failed,) = of(events, SagaStepFailed)
    assert (failed.step, failed.function, failed.attempt, failed.final) == (
        "charge",
        "action",
        1,
        True,
    )
    assert of(events, SagaFinished)[0].state == "compensated"
    assert ("turned_back", None) in kinds(log, "o1")


async def test_a_transient_failure_is_retried_after_a_backoff(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock, events: list[Event]
) -> None:
    calls: list[int] = []

    def charge(ctx: StepContext) -> str:
        calls.append(ctx.attempt)
        if len(calls) < 3:
            raise httpx.ConnectError("bank unreachable")
        return "ch_1"

    saga = Saga("s", [Step("charge", charge, retry=Retry(attempts=3, initial=10, maximum=10))])
    worker = workers(saga)
    run = await worker.start(saga, "o1")
    assert (run.state, calls) == ("running", [1])
    assert clock.now() + 5 <= run.due_at <= clock.now() + 10  # 10 s, jittered down to half
    assert run.owner is None  # handed back while it waits
    clock.advance(4.9)
    assert (await worker.execute("o1")).state == "running"
    assert await worker.run_once() == 0
    assert calls == [1]
    clock.advance(5.1)
    assert await worker.run_once() == 1
    assert calls == [1, 2]
    clock.advance(10)
    assert (await worker.execute("o1")).state == "completed"
    assert calls == [1, 2, 3]
    assert [(e.attempt, e.final) for e in of(events, SagaStepFailed)] == [(1, False), (2, False)]
    assert "ConnectError: bank unreachable" in of(events, SagaStepFailed)[0].error


async def test_a_step_past_its_timeout_fails_transiently(
    log: SagaLog, workers: Callable[..., SagaWorker], events: list[Event]
) -> None:
    async def hang(ctx: StepContext) -> None:
        await asyncio.Event().wait()

    saga = Saga("s", [Step("a", hang, compensate=lambda ctx: None, retry=Retry(attempts=1))])
    run = await workers(saga, step_timeout=0.001).start(saga, "o1")
    assert run.state == "compensated"
    assert [s["state"] for s in run.steps] == ["compensated"]
    assert "TimeoutError" in of(events, SagaStepFailed)[0].error


@pytest.mark.parametrize("undo", [True, False])
async def test_retries_exhausted_without_lookup_leave_the_outcome_unknown(
    log: SagaLog,
    workers: Callable[..., SagaWorker],
    clock: ManualClock,
    events: list[Event],
    undo: bool,
) -> None:
    undone: list[Any] = []

    def down(ctx: StepContext) -> None:
        raise TimeoutError("partner silent")

    saga = Saga(
        "s",
        [
            Step("a", lambda ctx: "A1", compensate=lambda ctx: undone.append(ctx.result)),
            Step(
                "b",
                down,
                compensate=(lambda ctx: undone.append(ctx.result)) if undo else None,
                retry=Retry(attempts=2, initial=1, maximum=1),
            ),
        ],
    )
    worker = workers(saga)
    assert (await worker.start(saga, "o1")).state == "running"
    clock.advance(1)
    run = await worker.execute("o1")
    assert ("given_up", "b") in kinds(log, "o1")
    if undo:
        assert run.state == "compensated"
        assert undone == [None, "A1"]  # b's undo sees no result: its outcome is unknown
        assert [s["state"] for s in run.steps] == ["compensated", "compensated"]
    else:
        assert run.state == "needs_attention"
        assert run.error == "b: outcome unknown and no compensation"
        assert undone == ["A1"]
        assert [s["state"] for s in run.steps] == ["compensated", "unknown"]
        (attention,) = of(events, SagaNeedsAttention)
        assert attention.error == run.error


@pytest.mark.parametrize("found", [True, False])
async def test_a_lookup_decides_a_step_whose_retries_ran_out(
    log: SagaLog, workers: Callable[..., SagaWorker], found: bool
) -> None:
    undone: list[str] = []
    asked: list[str] = []

    def down(ctx: StepContext) -> None:
        raise TimeoutError("partner silent")

    partner = Partner()

    async def look(ctx: StepContext) -> Any:
        asked.append(ctx.key)
        async with partner.client() as client:  # a search: read-only, so it takes no key
            await client.post("/charges/search", json={"key": f"{ctx.key}:1"})
        return {"charge": "ch_1"} if found else None

    saga = Saga(
        "s",
        [
            Step("a", lambda ctx: "A1", compensate=lambda ctx: undone.append(ctx.step)),
            Step("b", down, lookup=look, retry=Retry(attempts=1)),
            Step("c", lambda ctx: ctx.results["b"]),
        ],
    )
    run = await workers(saga).start(saga, "o1")
    assert asked == ["saga:o1:b"]  # the action's stem, to ask the partner what it got
    assert partner.keys == [None]
    if found:
        assert run.state == "completed"
        assert run.steps[1]["result"] == {"charge": "ch_1"}
        assert run.steps[2]["result"] == {"charge": "ch_1"}
        assert ("found", "b") in kinds(log, "o1")
    else:
        assert run.state == "compensated"
        assert undone == ["a"]
        assert [s["state"] for s in run.steps] == ["compensated", "failed", "pending"]
        assert ("not_found", "b") in kinds(log, "o1")


async def test_a_lookup_not_found_with_attempts_left_runs_the_step_again(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    calls: list[int] = []

    def flaky(ctx: StepContext) -> str:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise Crash
        return "ok"

    saga = Saga("s", [Step("a", flaky, lookup=lambda ctx: None, retry=Retry(attempts=3))])
    with pytest.raises(Crash):
        await workers(saga).start(saga, "o1")
    clock.advance(LEASE + 1)
    assert await workers(saga).run_once() == 1
    assert calls == [1, 2]
    assert states(log, "o1") == ["done"]
    assert ("not_found", "a") in kinds(log, "o1")


async def test_a_failing_compensation_ends_needing_attention(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock, events: list[Event]
) -> None:
    def undo(ctx: StepContext) -> None:
        raise RuntimeError("refund API down")

    def decline(ctx: StepContext) -> None:
        raise StepFailed("declined")

    saga = Saga(
        "s",
        [
            Step("a", lambda ctx: 1, compensate=undo, undo_retry=Retry(2, initial=1, maximum=1)),
            Step("b", decline),
        ],
    )
    worker = workers(saga)
    assert (await worker.start(saga, "o1")).state == "compensating"
    clock.advance(1)
    run = await worker.execute("o1")
    assert run.state == "needs_attention"
    assert run.error == "a: compensation failed: RuntimeError: refund API down"
    assert run.steps[0]["undo_attempts"] == 2
    undo_failures = [e for e in of(events, SagaStepFailed) if e.function == "compensation"]
    assert [e.attempt for e in undo_failures] == [1, 2]
    (attention,) = of(events, SagaNeedsAttention)
    assert attention.error == run.error
    assert of(events, SagaFinished) == []


async def test_past_its_deadline_a_saga_turns_back(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    ran: list[str] = []

    def slow(ctx: StepContext) -> str:
        ran.append(ctx.step)
        clock.advance(61)
        return "A1"

    saga = Saga(
        "s",
        [Step("a", slow, compensate=lambda ctx: ran.append("undo a")), Step("b", ran.append)],
        deadline=60,
    )
    run = await workers(saga).start(saga, "o1")
    assert run.state == "compensated"
    assert ran == ["a", "undo a"]
    assert run.error == "deadline passed"
    assert ("turned_back", None) in kinds(log, "o1")


async def test_a_changed_definition_needs_attention(
    log: SagaLog, workers: Callable[..., SagaWorker], events: list[Event]
) -> None:
    ran: list[str] = []
    old = Saga("s", [Step("a", ran.append), Step("b", ran.append)])
    new = Saga("s", [Step("a", ran.append), Step("c", ran.append)])
    log.start(old, "o1")
    run = await workers(new).execute("o1")
    assert run.state == "needs_attention"
    assert run.error == "the definition changed: stored steps a, b, defined a, c"
    assert ran == []
    assert of(events, SagaNeedsAttention)[0].error == run.error


# -- idempotency keys and crashes --------------------------------------------------------------


async def test_outbound_calls_carry_keys_that_a_rerun_repeats(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    partner = Partner()
    crash = [True]

    async def book(ctx: StepContext) -> int:
        async with partner.client() as client:
            await client.post("/holds", json={})
            response = await client.post("/bookings", json={})
        if crash[0]:
            crash[0] = False
            raise Crash
        return int(response.json()["id"])

    async def cancel(ctx: StepContext) -> None:
        async with partner.client() as client:
            await client.post("/cancellations", json={"booking": ctx.result})

    def decline(ctx: StepContext) -> None:
        raise StepFailed("declined")

    saga = Saga("s", [Step("book", book, compensate=cancel), Step("pay", decline)])
    with pytest.raises(Crash):
        await workers(saga).start(saga, "o1")
    assert states(log, "o1") == ["started", "pending"]
    run = log.get("o1")
    assert run is not None
    assert run.owner == "w1"
    second = workers(saga)
    assert await second.run_once() == 0  # w1's lease still holds
    clock.advance(LEASE + 1)
    assert await second.run_once() == 1
    assert partner.keys == [
        "saga:o1:book:1",
        "saga:o1:book:2",
        "saga:o1:book:1",
        "saga:o1:book:2",
        "saga:o1:book:undo:1",
    ]
    assert partner.paths[-1] == "/cancellations"
    assert log.get("o1").state == "compensated"  # type: ignore[union-attr]
    assert log.get("o1").steps[0]["attempts"] == 2  # type: ignore[union-attr]
    actors = {e.actor for e in log.timeline("o1") if e.kind == "compensated"}
    assert actors == {"w2"}


async def test_a_sync_step_sends_keys_through_the_sync_client(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    partner = Partner()

    def book(ctx: StepContext) -> int:
        transport = ResilientTransport(httpx.MockTransport(partner), hooks=[])
        with httpx.Client(transport=transport, base_url="https://partner.example") as client:
            client.post("/holds", json={})
            return int(client.post("/bookings", json={}).json()["id"])

    saga = Saga("s", [Step("book", book)])
    run = await workers(saga).start(saga, "o1")
    assert run.steps[0]["result"] == 2
    assert partner.keys == ["saga:o1:book:1", "saga:o1:book:2"]


async def test_a_crashed_step_with_a_lookup_is_looked_up_not_rerun(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    calls: list[str] = []

    def charge(ctx: StepContext) -> None:
        calls.append("charge")
        raise Crash

    def find(ctx: StepContext) -> str:
        calls.append("find")
        return "ch_1"

    saga = Saga("s", [Step("charge", charge, lookup=find), Step("ship", lambda ctx: "P1")])
    with pytest.raises(Crash):
        await workers(saga).start(saga, "o1")
    clock.advance(LEASE + 1)
    assert (await workers(saga).execute("o1")).state == "completed"
    assert calls == ["charge", "find"]
    assert states(log, "o1") == ["done", "done"]
    assert log.get("o1").steps[0]["result"] == "ch_1"  # type: ignore[union-attr]


async def test_a_cancelled_worker_leaves_the_step_to_another(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    entered = asyncio.Event()
    calls: list[str] = []

    async def step(ctx: StepContext) -> str:
        calls.append(ctx.key)
        if len(calls) == 1:
            entered.set()
            await asyncio.Event().wait()
        return "ok"

    saga = Saga("s", [Step("a", step)])
    log.start(saga, "o1")
    task = asyncio.ensure_future(workers(saga).execute("o1"))
    await asyncio.wait_for(entered.wait(), GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.advance(LEASE + 1)
    assert (await workers(saga).execute("o1")).state == "completed"
    assert calls == ["saga:o1:a", "saga:o1:a"]


# -- fences ------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["retry", "compensate", "resolve"])
async def test_a_persons_action_cuts_the_worker_off(
    log: SagaLog, workers: Callable[..., SagaWorker], action: str
) -> None:
    ran: list[str] = []

    def a(ctx: StepContext) -> str:
        ran.append("a")
        getattr(log, action)(ctx.saga_id, reason="taking over", actor="ann")
        return "A1"

    saga = Saga("s", [Step("a", a, compensate=lambda ctx: ran.append("undo")), Step("b", a)])
    worker = workers(saga)
    run = await worker.start(saga, "o1")
    assert ran == ["a"]  # the worker's result was not written, b did not start
    expected = {"retry": "running", "compensate": "compensating", "resolve": "resolved"}
    assert run.state == expected[action]
    assert states(log, "o1")[1] == "pending"
    assert all(e.kind not in ("succeeded",) for e in log.timeline("o1"))


async def test_a_worker_past_its_lease_loses_the_saga(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    calls: Counter[str] = Counter()
    saga: Saga

    async def a(ctx: StepContext) -> str:
        calls["a"] += 1
        if calls["a"] == 1:  # w1 stalls past its lease; w2 takes the saga and finishes it
            clock.advance(LEASE + 1)
            assert await second.run_once() == 1
        return "A1"

    saga = Saga("s", [Step("a", a), Step("b", lambda ctx: calls.update(["b"]))])
    first, second = workers(saga), workers(saga)
    run = await first.start(saga, "o1")
    assert run.state == "completed"
    assert calls == {"a": 2, "b": 1}
    assert {e.actor for e in log.timeline("o1") if e.kind == "finished"} == {"w2"}


async def test_two_workers_never_run_the_same_saga(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    calls: Counter[str] = Counter()

    async def a(ctx: StepContext) -> None:
        calls[ctx.saga_id] += 1
        await asyncio.sleep(0)

    saga = Saga("s", [Step("a", a)])
    ids = [f"o{n}" for n in range(20)]
    for saga_id in ids:
        log.start(saga, saga_id)
    first, second = workers(saga, concurrency=15), workers(saga, concurrency=15)
    claimed = await asyncio.gather(first.run_once(), second.run_once())
    assert sum(claimed) == 20
    assert calls == dict.fromkeys(ids, 1)
    assert {r.state for r in log.runs()} == {"completed"}


# -- configuration, run and stop ---------------------------------------------------------------


async def test_bad_worker_configuration_is_refused(log: SagaLog) -> None:
    saga = Saga("s", [Step("a", print)])
    with pytest.raises(ConfigurationError, match="expected a SagaLog"):
        SagaWorker("sqlite:///x.db", [saga])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="expected Saga objects"):
        SagaWorker(log, ["s"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="given twice"):
        SagaWorker(log, [saga, Saga("s", [Step("b", print)])])
    with pytest.raises(ConfigurationError, match="at least one step"):
        SagaWorker(log, [Saga("empty")])
    with pytest.raises(ConfigurationError, match="at least one Saga"):
        SagaWorker(log, [])
    for field, value in (
        ("concurrency", 0),
        ("lease", 0.5),
        ("poll_interval", 0),
        ("step_timeout", "1"),
    ):
        with pytest.raises(ConfigurationError, match=f"SagaWorker.{field}"):
            SagaWorker(log, [saga], **{field: value})
    worker = SagaWorker(log, [saga])
    assert worker.worker_id.count(".") >= 1
    assert "'s'" in repr(worker)
    await worker.aclose()  # never connected: nothing to close


async def test_start_and_execute_refuse_what_the_worker_cannot_run(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    saga = Saga("s", [Step("a", print)])
    worker = workers(saga)
    with pytest.raises(ConfigurationError, match="not one of this worker's sagas"):
        await worker.start(Saga("s", [Step("a", print)]), "o1")
    with pytest.raises(ConfigurationError, match="not one of this worker's sagas"):
        await worker.start("s", "o1")  # type: ignore[arg-type]
    with pytest.raises(AdminNotFound):
        await worker.execute("nothing")
    assert log.runs() == []


async def wait_for(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds (a failure after ``GUARD`` seconds)."""
    deadline = time.monotonic() + GUARD
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_run_works_through_due_sagas_until_stopped(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    failures = Counter[str]()

    def a(ctx: StepContext) -> str:
        if ctx.saga_id == "o2" and not failures["o2"]:
            failures["o2"] += 1
            raise ConnectionError("blip")
        return ctx.saga_id

    saga = Saga("s", [Step("a", a, retry=Retry(attempts=2, initial=0, maximum=0))])
    worker = workers(saga, poll_interval=0.01, concurrency=2)
    task = asyncio.ensure_future(worker.run())
    for n in range(5):
        log.start(saga, f"o{n}")

    def all_completed() -> bool:
        return [r.state for r in log.runs()] == ["completed"] * 5

    await wait_for(all_completed)
    worker.stop()
    await asyncio.wait_for(task, GUARD)
    assert failures["o2"] == 1


@pytest.mark.parametrize("mode", ["execute", "run"])
async def test_a_long_step_keeps_its_lease(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock, mode: str
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []
    renewals: list[tuple[float, bool]] = []
    renew = log.renew

    def spy(conn: Any, claimed: Any, lease_until: float) -> bool:
        renewed = renew(conn, claimed, lease_until)
        renewals.append((lease_until, renewed))
        return renewed

    log.renew = spy  # type: ignore[method-assign]

    async def long(ctx: StepContext) -> str:
        calls.append(ctx.saga_id)
        entered.set()
        await release.wait()
        return "done"

    saga = Saga("s", [Step("a", long)])
    worker = workers(saga, lease=1.0, poll_interval=0.01)
    log.start(saga, "o1")
    if mode == "run":
        task = asyncio.ensure_future(worker.run())
    else:
        task = asyncio.ensure_future(worker.execute("o1"))
    await asyncio.wait_for(entered.wait(), GUARD)
    start = clock.now()
    clock.advance(0.9)  # within the first lease; renewed from here it runs to start + 1.9
    await wait_for(lambda: (start + 1.9, True) in renewals)
    clock.advance(0.5)  # past the first lease
    assert await workers(saga).run_once() == 0
    assert log.get("o1").owner == "w1"  # type: ignore[union-attr]
    release.set()
    await wait_for(lambda: log.get("o1").state == "completed")  # type: ignore[union-attr]
    worker.stop()
    await asyncio.wait_for(task, GUARD)
    assert calls == ["o1"]


async def test_stop_lets_the_step_in_flight_finish_and_hands_the_saga_back(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def a(ctx: StepContext) -> str:
        entered.set()
        await release.wait()
        return "A1"

    saga = Saga("s", [Step("a", a), Step("b", lambda ctx: "B1")])
    worker = workers(saga, poll_interval=0.01)
    log.start(saga, "o1")
    task = asyncio.ensure_future(worker.run())
    await asyncio.wait_for(entered.wait(), GUARD)
    worker.stop()
    release.set()
    await asyncio.wait_for(task, GUARD)
    run = log.get("o1")
    assert run is not None
    assert (run.state, run.owner) == ("running", None)
    assert [s["state"] for s in run.steps] == ["done", "pending"]
    assert (await workers(saga).execute("o1")).state == "completed"


async def test_run_waits_out_an_unavailable_database(
    log: SagaLog,
    workers: Callable[..., SagaWorker],
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outages = Counter[str]()
    claim, commit = log.claim, log.commit

    def failing_claim(*args: Any, **kwargs: Any) -> Any:
        if not outages["claim"]:
            outages["claim"] += 1
            raise StoreUnavailable(retry_after=1)
        return claim(*args, **kwargs)

    def failing_commit(*args: Any, **kwargs: Any) -> Any:
        if not outages["commit"]:
            outages["commit"] += 1
            raise StoreUnavailable(retry_after=1)
        return commit(*args, **kwargs)

    log.claim = failing_claim  # type: ignore[method-assign]
    log.commit = failing_commit  # type: ignore[method-assign]
    calls: list[str] = []
    saga = Saga("s", [Step("a", lambda ctx: calls.append(ctx.step))])
    worker = workers(saga, poll_interval=0.01)
    log.start(saga, "o1")
    task = asyncio.ensure_future(worker.run())
    await wait_for(lambda: any(r.getMessage() == "saga run failed" for r in caplog.records))
    run = log.get("o1")
    assert run is not None
    assert (run.state, run.owner) == ("running", "w1")  # its claim stands until the lease ends
    clock.advance(LEASE + 1)
    await wait_for(lambda: log.get("o1").state == "completed")  # type: ignore[union-attr]
    worker.stop()
    await asyncio.wait_for(task, GUARD)
    assert calls == ["a"]
    messages = [r.getMessage() for r in caplog.records]
    assert "saga claim failed; the database is unavailable" in messages


async def test_a_failed_renewal_is_logged_and_the_step_goes_on(
    log: SagaLog, workers: Callable[..., SagaWorker], caplog: pytest.LogCaptureFixture
) -> None:
    tried: list[float] = []

    def down(conn: Any, claimed: Any, lease_until: float) -> bool:
        tried.append(lease_until)
        raise StoreUnavailable(retry_after=1)

    log.renew = down  # type: ignore[method-assign]

    async def long(ctx: StepContext) -> str:
        await wait_for(lambda: len(tried) >= 2)
        return "done"

    saga = Saga("s", [Step("a", long)])
    assert (await workers(saga, lease=1.0).start(saga, "o1")).state == "completed"
    messages = [r.getMessage() for r in caplog.records]
    assert "saga lease renewal failed; the database is unavailable" in messages


async def test_a_stop_before_run_started_is_kept_and_the_worker_runs_again(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    calls: list[str] = []
    saga = Saga("s", [Step("a", lambda ctx: calls.append(ctx.saga_id))])
    worker = workers(saga, poll_interval=0.01)
    task = asyncio.ensure_future(worker.run())
    worker.stop()  # before the task ran a line
    await asyncio.wait_for(task, GUARD)
    log.start(saga, "o1")
    assert (await worker.execute("o1")).state == "completed"  # the stop was spent
    task = asyncio.ensure_future(worker.run())
    log.start(saga, "o2")
    await wait_for(lambda: log.get("o2").state == "completed")  # type: ignore[union-attr]
    worker.stop()
    await asyncio.wait_for(task, GUARD)
    assert calls == ["o1", "o2"]


@pytest.mark.parametrize("found", [True, False])
async def test_past_the_deadline_a_step_in_doubt_is_looked_up_then_undone(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock, found: bool
) -> None:
    undone: list[tuple[str, Any]] = []
    ran: list[str] = []

    def charge(ctx: StepContext) -> None:
        ran.append(ctx.step)
        raise TimeoutError("bank silent")

    saga = Saga(
        "s",
        [
            Step(
                "reserve", lambda ctx: "R1", compensate=lambda c: undone.append((c.step, c.result))
            ),
            Step(
                "charge",
                charge,
                compensate=lambda c: undone.append((c.step, c.result)),
                lookup=lambda ctx: "ch_1" if found else None,
                retry=Retry(attempts=5, initial=30, maximum=30),
            ),
            Step("ship", ran.append),
        ],
        deadline=60,
    )
    worker = workers(saga)
    assert (await worker.start(saga, "o1")).state == "running"
    clock.advance(61)
    run = await worker.execute("o1")
    assert run.state == "compensated"
    assert run.error == "deadline passed"
    assert ran == ["charge"]  # not run again past the deadline
    if found:
        assert undone == [("charge", "ch_1"), ("reserve", "R1")]
        assert [s["state"] for s in run.steps] == ["compensated", "compensated", "pending"]
    else:
        assert undone == [("reserve", "R1")]
        assert [s["state"] for s in run.steps] == ["compensated", "failed", "pending"]


async def test_a_persons_action_keeps_a_live_lease_and_the_running_step_is_cancelled(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    """Turning a saga back while its charge runs: no worker may undo (or look up) the
    charge while the worker running it may still make it; that worker learns at its
    next renewal that the saga is no longer its own and stops the step."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def charge(ctx: StepContext) -> str:
        started.set()
        try:
            await asyncio.sleep(GUARD)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    undone: list[str] = []
    saga = Saga("s", [Step("charge", charge, compensate=lambda ctx: undone.append("refund"))])
    first, second = workers(saga, lease=1.0), workers(saga, lease=1.0)
    log.start(saga, "o1")
    running = asyncio.ensure_future(first.execute("o1"))
    await asyncio.wait_for(started.wait(), GUARD)
    assert log.compensate("o1", reason="customer cancelled", actor="ann").state == "compensating"
    assert await second.run_once() == 0  # the first worker's lease still holds
    await asyncio.wait_for(cancelled.wait(), GUARD)  # its next renewal was refused
    await asyncio.wait_for(running, GUARD)
    assert undone == []
    clock.advance(1.5)  # the lease runs out
    assert (await second.execute("o1")).state == "compensated"
    assert undone == ["refund"]
    assert "succeeded" not in [e.kind for e in log.timeline("o1")]


async def test_blocking_sync_steps_run_in_threads_of_the_worker_as_many_as_its_concurrency(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    """Eight sync steps that each wait for all eight: asyncio's default pool has fewer
    threads on a small machine, so this passes only with the worker's own threads."""
    import threading

    barrier = threading.Barrier(8, timeout=GUARD)

    def wait_for_all(ctx: StepContext) -> str:
        barrier.wait()
        return "together"

    saga = Saga("s", [Step("a", wait_for_all, retry=Retry(attempts=1))])
    for n in range(8):
        log.start(saga, f"o{n}")
    worker = workers(saga, concurrency=8)
    assert await worker.run_once() == 8
    assert {run.state for run in log.runs()} == {"completed"}


async def test_a_saga_id_leaves_room_for_its_keys(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    partner = Partner()
    client = partner.client()

    async def post(ctx: StepContext) -> None:
        await client.post("/charges")

    name = "s" * 64
    saga = Saga("s", [Step(name, post, compensate=post), Step("b", lambda ctx: None)])
    longest = "o" * 120
    with pytest.raises(ValueError, match="saga_id: expected 1-120 printable"):
        log.start(saga, longest + "o")
    assert (await workers(saga).start(saga, longest)).state == "completed"
    assert partner.keys == [f"saga:{longest}:{name}:1"]
    assert len(f"saga:{longest}:{name}:undo:1") <= 200
    await client.aclose()


async def test_an_id_of_another_saga_is_refused(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    first = Saga("first", [Step("a", lambda ctx: None)])
    other = Saga("other", [Step("a", lambda ctx: None)])
    log.start(first, "o1")
    with pytest.raises(ValueError, match="'o1' is a 'first' saga, not a 'other'"):
        log.start(other, "o1")


async def test_a_connection_of_the_wrong_kind_is_refused(log: SagaLog) -> None:
    import sqlite3

    saga = Saga("s", [Step("a", lambda ctx: None)])
    wrong: object = object() if log.dialect == "sqlite" else sqlite3.connect(":memory:")
    expected = "sqlite3.Connection" if log.dialect == "sqlite" else "psycopg.Connection"
    with pytest.raises(ConfigurationError, match=f"expected a .*{expected}"):
        log.start(saga, "o1", conn=wrong)
    assert log.runs() == []


async def test_an_error_with_control_characters_is_recorded_escaped(
    log: SagaLog, workers: Callable[..., SagaWorker]
) -> None:
    def refuse(ctx: StepContext) -> None:
        raise StepFailed("bad\x00byte\x1b[31m")

    saga = Saga("s", [Step("a", refuse)])
    assert (await workers(saga).start(saga, "o1")).state == "compensated"
    failed = [e.detail for e in log.timeline("o1") if e.kind == "failed"]
    assert failed == ["StepFailed: bad\\x00byte\\x1b[31m"]


def test_a_logs_repr_and_errors_show_no_password() -> None:
    url = "postgresql://bob:s3cret@db.example/shop?password=s3cret"
    assert "s3cret" not in repr(SagaLog(url))
    with pytest.raises(ConfigurationError) as raised:
        SagaLog("mysql://bob:s3cret@db.example/shop")
    assert "s3cret" not in str(raised.value)


async def test_a_result_too_large_to_keep_is_retried_then_compensated_never_cut(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    from surefoot.saga.worker import MAX_RESULT

    undone: list[object] = []

    def big(ctx: StepContext) -> str:
        return "x" * MAX_RESULT  # with its quotes, two bytes over

    saga = Saga(
        "s",
        [
            Step(
                "a",
                big,
                compensate=lambda ctx: undone.append(ctx.result),
                retry=Retry(attempts=2, initial=0, maximum=0),
                fails_on=(Exception,),  # even so: the effect may stand, so never final
            )
        ],
    )
    worker = workers(saga)
    run = await worker.start(saga, "o1")
    while run.state == "running" or run.state == "compensating":
        run = await worker.execute("o1")
    assert run.state == "compensated"
    assert undone == [None]  # undone as of unknown outcome: no result was kept
    failures = [e.detail for e in log.timeline("o1") if e.kind == "failed"]
    assert len(failures) == 2
    assert all(f"more than {MAX_RESULT}" in (detail or "") for detail in failures)


@pytest.mark.parametrize("defined", [["a", "b", "c"], ["a"]])
async def test_a_definition_with_more_or_fewer_steps_needs_attention_too(
    log: SagaLog, workers: Callable[..., SagaWorker], defined: list[str]
) -> None:
    ran: list[str] = []
    log.start(Saga("s", [Step("a", ran.append), Step("b", ran.append)]), "o1")
    new = Saga("s", [Step(name, ran.append) for name in defined])
    run = await workers(new).execute("o1")
    assert run.state == "needs_attention"
    assert run.error == f"the definition changed: stored steps a, b, defined {', '.join(defined)}"
    assert [step["name"] for step in run.steps] == ["a", "b"]  # written back as stored
    assert ran == []


async def test_run_purges_the_sagas_finished_past_the_retention(
    log: SagaLog, workers: Callable[..., SagaWorker], clock: ManualClock
) -> None:
    saga = Saga("s", [Step("a", lambda ctx: None)])
    worker = workers(saga, poll_interval=0.01)
    assert (await worker.start(saga, "old")).state == "completed"
    clock.advance(log.retention + 1)
    assert (await worker.start(saga, "recent")).state == "completed"
    running = asyncio.ensure_future(worker.run())
    deadline = time.monotonic() + GUARD
    while log.get("old") is not None:
        assert time.monotonic() < deadline, "run() never purged the old saga"
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(running, GUARD)
    assert log.get("recent") is not None


def test_a_sqlite_url_with_options_is_refused_as_the_outbox_does() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^SagaLog.database: expected a sqlite:///path without \?options"
    ):
        SagaLog("sqlite:///app.db?mode=ro")
