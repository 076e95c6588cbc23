"""``SagaWorker``: claims due sagas from a ``SagaLog`` and runs their steps.

One worker is one asyncio task loop in one process; run as many processes (and hosts, on
PostgreSQL) as you like: the log's claims and fences keep each saga with one worker at a
time (``_log`` Rule 1).

Theory of operation, for one claimed saga::

    next_move ─► Run / Compensate: recorded STARTED (with the previous result, one commit)
             ─► the function runs, inside ``idempotency_scope("saga:<id>:<step>")``
             ─► settle ─► next_move ...
             ─► Wait (a backoff): committed with the lease handed back; the worker wakes
                when it is due (any worker may take it then)
             ─► Done: committed; ``SagaFinished`` or ``SagaNeedsAttention``

Rule 1: a commit or a lease renewal refused (the fence moved: a person acted, or the
        lease ran out and another worker took the saga) ends this worker's run of it at
        once: a step still running is cancelled (an async one at its next ``await``; a
        sync one's thread cannot be stopped, it runs on and its result is ignored).
Rule 2: the lease of a saga whose step is running is renewed every third of ``lease``, so a
        step longer than the lease keeps its saga; a worker that stops renewing (killed,
        frozen) loses it when the lease runs out. The worker's database calls run one at
        a time in a thread of their own and sync steps in threads of theirs, so blocking
        steps cannot hold up a commit or a renewal.
Rule 3: a step function that runs longer than ``step_timeout`` fails transiently (its
        outcome is unknown: looked up or re-run under the same keys). A sync function's
        thread cannot be stopped; it runs on, and its result is ignored.
Rule 4: ``stop`` lets each saga in flight finish its current step, commits it and hands
        the saga back; nothing is left half-recorded.
Rule 5: a step's result is kept as JSON of at most ``MAX_RESULT`` bytes; a larger one
        fails the attempt transiently (the action may have had its effect: retried under
        the same keys, then compensated as of unknown outcome), never silently cut.
Rule 6: ``run`` deletes the sagas finished more than the log's ``retention`` ago, at
        start and every ``PURGE_EVERY`` seconds, in batches (``SagaLog.purge``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import random as _random
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from surefoot._sql import Connection
from surefoot.clock import Clock
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.events import EventHook, LoggingHook, emit
from surefoot.saga._core import (
    Abandon,
    Compensate,
    Entry,
    Failed,
    Found,
    Halt,
    LookUp,
    NotFound,
    Outcome,
    Plan,
    Record,
    Run,
    SagaState,
    StepState,
    Succeeded,
    Wait,
    abandon,
    halt,
    next_move,
    settle,
    started,
)
from surefoot.saga._define import Saga, StepContext, StepFunction, describe
from surefoot.saga._events import SagaFinished, SagaNeedsAttention, SagaStepFailed
from surefoot.saga.log import Claimed, SagaLog, SagaRun

try:  # the client (and httpx) is optional: without it there are no keys to derive
    from surefoot.client import idempotency_scope
except ImportError:  # pragma: no cover - only without the client extra
    idempotency_scope = None  # type: ignore[assignment]

__all__ = ["SagaWorker"]

_log = logging.getLogger("surefoot.saga")
#: Seconds between two purges of finished sagas by ``run`` (Rule 6).
PURGE_EVERY = 300.0
#: The largest result (or lookup answer) a step may return, as JSON (Rule 5).
MAX_RESULT = 64 * 1024
_T = TypeVar("_T")
_WITH_RESULT = (StepState.DONE, StepState.COMPENSATING, StepState.COMPENSATED)


class SagaWorker:
    """Runs sagas: those it is asked to (``start``, ``execute``) and those due in the log
    (``run``, ``run_once``).

    Example::

        worker = SagaWorker(log, [checkout])
        run = await worker.start(checkout, "order-1042", {"sku": "A1", "amount": 1200})
        run.state            # "completed", "compensated", "needs_attention", or "running"
                             # (waiting for a retry: a worker's run() will go on with it)

    Args:
        log: the ``SagaLog``.
        sagas: the definitions this worker can run (it claims only sagas of these names).
        concurrency: sagas run at once by this worker.
        lease: seconds a claim lasts without renewal (renewed every third of it).
        poll_interval: seconds between claims when nothing is due.
        step_timeout: seconds a step function may run (Rule 3).
        worker_id: recorded in the timeline (default: host, pid and a random suffix).
        hooks: event hooks (default: ``LoggingHook``).
        random: the jitter's random source.
    """

    def __init__(
        self,
        log: SagaLog,
        sagas: Iterable[Saga],
        *,
        concurrency: int = 16,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        step_timeout: float = 300.0,
        worker_id: str | None = None,
        hooks: Sequence[EventHook] | None = None,
        random: _random.Random | None = None,
    ) -> None:
        if not isinstance(log, SagaLog):
            raise ConfigurationError(f"SagaWorker.log: expected a SagaLog, got {log!r}")
        self._sagas: dict[str, Saga] = {}
        #: Each saga's plan, made once (a saga without steps fails here, not in the loop).
        self._plans: dict[str, Plan] = {}
        for saga in sagas:
            if not isinstance(saga, Saga):
                raise ConfigurationError(f"SagaWorker.sagas: expected Saga objects, got {saga!r}")
            if saga.name in self._sagas:
                raise ConfigurationError(f"SagaWorker.sagas: {saga.name!r} is given twice")
            self._plans[saga.name] = saga.plan()
            self._sagas[saga.name] = saga
        if not self._sagas:
            raise ConfigurationError("SagaWorker.sagas: expected at least one Saga")
        for field, value, low, high in (
            ("concurrency", concurrency, 1, 10_000),
            ("lease", lease, 1.0, 86400.0),
            ("poll_interval", poll_interval, 0.001, 3600.0),
            ("step_timeout", step_timeout, 0.001, 86400.0),
        ):
            if not isinstance(value, int | float) or not low <= value <= high:
                raise ConfigurationError(
                    f"SagaWorker.{field}: expected a number from {low} to {high}, got {value!r}"
                )
        self.log = log
        self.clock: Clock = log.clock
        self.concurrency = int(concurrency)
        self.lease = float(lease)
        self.poll_interval = float(poll_interval)
        self.step_timeout = float(step_timeout)
        self.worker_id = worker_id or (
            f"{socket.gethostname()[:32]}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        )
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self.random = random if random is not None else _random.Random()
        self._conn: Connection | None = None
        # Threads of its own (Rule 2): the database's calls one at a time in one thread,
        # sync step functions in as many as run at once; so steps that block cannot
        # starve the commits and lease renewals.
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="surefoot-saga-db")
        self._step_threads = ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="surefoot-saga-step"
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return f"SagaWorker({self.log!r}, sagas={sorted(self._sagas)!r})"

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = self.log.connect()
        return self._conn

    # -- running one saga now ----------------------------------------------------------------

    async def start(self, saga: Saga, saga_id: str, input: Any = None) -> SagaRun:
        """Record the saga (or find the first run of ``saga_id``) and run it here, now, as
        far as it goes without waiting; the run as it then stands."""
        if self._sagas.get(getattr(saga, "name", None)) is not saga:  # type: ignore[arg-type]
            raise ConfigurationError(
                f"SagaWorker.start: {getattr(saga, 'name', saga)!r} is not one of this "
                "worker's sagas"
            )
        await self._db(self.log.start, saga, saga_id, input)
        return await self.execute(saga_id)

    async def execute(self, saga_id: str) -> SagaRun:
        """Run ``saga_id`` here now if it is due and no worker holds it; the run as it
        then stands (``AdminNotFound`` for an unknown id)."""
        claimed = await self._db(
            self.log.claim,
            self.conn,
            self.worker_id,
            names=self._sagas,
            limit=1,
            lease=self.lease,
            saga_id=saga_id,
        )
        for one in claimed:
            await self._drive(one)
        run = await self._db(self.log.get, saga_id)
        if run is None:
            from surefoot.errors import AdminNotFound

            raise AdminNotFound(what=f"saga {saga_id!r}")
        return run

    # -- the loop ----------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim what is due (up to ``concurrency``) and run it as far as it goes; how
        many sagas were claimed."""
        claimed = await self._claim(self.concurrency)
        results = await asyncio.gather(
            *(self._drive(one) for one in claimed), return_exceptions=True
        )
        for one, result in zip(claimed, results, strict=True):
            if isinstance(result, BaseException):  # the others went on (Rule 1 of the log)
                _log.error("saga %s: its run failed", one.id, exc_info=result)
        return len(claimed)

    async def run(self) -> None:
        """Claim and run due sagas until ``stop`` (store outages are waited out). A ``stop``
        made before this task got to run counts: it returns at once."""
        try:
            purge_at = self.clock.now()
            while not self._stopping:
                if self.clock.now() >= purge_at:
                    purge_at = self.clock.now() + PURGE_EVERY
                    await self._purge()
                free = self.concurrency - len(self._tasks)
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except StoreUnavailable:
                        _log.warning("saga claim failed; the database is unavailable")
                for one in claimed:
                    task = asyncio.ensure_future(self._drive(one))
                    self._tasks.add(task)
                    task.add_done_callback(self._finished)
                if claimed and len(claimed) == free:
                    await asyncio.sleep(0)
                    continue
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
        finally:
            self._stopping = True
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._stopping = False  # the stop is spent: the worker may run (or execute) again

    async def _purge(self) -> None:
        """Delete the sagas finished past the log's retention (Rule 6)."""
        try:
            while await self._db(self.log.purge) > 0:
                pass
        except StoreUnavailable:
            _log.warning("saga purge failed; the database is unavailable")

    def stop(self) -> None:
        """Ask ``run`` to return once the sagas in flight finished their current step."""
        self._stopping = True
        self._wake.set()

    async def aclose(self) -> None:
        self.stop()
        if self._conn is not None:
            await self._db(self._conn.close)
            self._conn = None
        self._db_thread.shutdown(wait=False)
        self._step_threads.shutdown(wait=False)

    async def _db(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, functools.partial(call, *args, **kwargs))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            _log.error("saga run failed", exc_info=task.exception())

    async def _claim(self, limit: int) -> list[Claimed]:
        return await self._db(
            self.log.claim,
            self.conn,
            self.worker_id,
            names=self._sagas,
            limit=limit,
            lease=self.lease,
        )

    async def _keep(self, claimed: Claimed, step: asyncio.Future[Outcome]) -> None:
        """Renew the lease of a saga whose step is running (Rule 2); return once the claim
        is lost, having cancelled the step (Rule 1)."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                until = self.clock.now() + self.lease
                if not await self._db(self.log.renew, self.conn, claimed, until):
                    step.cancel()
                    return
            except StoreUnavailable:
                _log.warning("saga lease renewal failed; the database is unavailable")

    def _wake_at(self, when: float) -> None:
        delay = max(0.0, when - self.clock.now())
        asyncio.get_running_loop().call_later(delay, self._wake.set)

    # -- one saga ----------------------------------------------------------------------------

    async def _drive(self, claimed: Claimed) -> None:
        saga = self._sagas[claimed.name]
        plan = self._plans[claimed.name]
        record = claimed.record
        pending: list[Entry] = []
        if claimed.names != saga.names:
            reason = (
                f"the definition changed: stored steps {', '.join(claimed.names)}, "
                f"defined {', '.join(saga.names)}"
            )
            record = replace(record, state=SagaState.NEEDS_ATTENTION, error=reason)
            pending.append(Entry("needs_attention", None, None, reason))
            plan = claimed.plan  # its steps as stored: the record is written back with them
        while True:
            now = self.clock.now()
            move = next_move(plan, record, now)
            if isinstance(move, Abandon | Halt):
                if isinstance(move, Abandon):
                    record, entries = abandon(plan, record, move.reason)
                else:
                    record, entries = halt(record, move.reason)
                pending += entries
                continue
            if isinstance(move, Run | Compensate) and not self._stopping:
                record, entries = started(plan, record, move)
                pending += entries
            acting = isinstance(move, Run | Compensate | LookUp) and not self._stopping
            if pending or not acting:
                lease_until = now + self.lease if acting else 0.0
                committed = await self._db(
                    self.log.commit,
                    self.conn,
                    claimed,
                    plan,
                    record,
                    pending,
                    lease_until=lease_until,
                    actor=self.worker_id,
                )
                if not committed:
                    _log.info("saga %s was taken from this worker", claimed.id)
                    return
                self._report(claimed, record, pending)
                pending = []
            if not acting:
                if isinstance(move, Wait) and not self._stopping:
                    self._wake_at(move.until)
                return
            assert isinstance(move, Run | Compensate | LookUp)
            step = asyncio.ensure_future(self._perform(saga, claimed, record, move))
            keeper = asyncio.ensure_future(self._keep(claimed, step))
            try:
                outcome = await step
            except asyncio.CancelledError:
                if keeper.done() and not keeper.cancelled():
                    _log.info("saga %s was taken from this worker mid-step", claimed.id)
                    return
                raise
            finally:
                keeper.cancel()
            record, entries = settle(
                plan, record, move, outcome, self.clock.now(), self.random.random()
            )
            pending += entries

    async def _perform(
        self, saga: Saga, claimed: Claimed, record: Record, move: Run | Compensate | LookUp
    ) -> Outcome:
        steps = saga.steps
        step = steps[move.index]
        state = record.steps[move.index]
        # A lookup is read-only: its calls take no keys, but it is given the action's stem
        # (it may ask the partner for what was sent under saga:<id>:<step>:1...).
        key = f"saga:{claimed.id}:{step.name}"
        if isinstance(move, Compensate):
            function, kind, attempt = step.compensate, "compensation", state.undo_attempts
            key += ":undo"
        elif isinstance(move, LookUp):
            function, kind, attempt = step.lookup, "lookup", state.attempts
        else:
            function, kind, attempt = step.action, "action", state.attempts
        assert function is not None
        results = {
            s.name: r.result
            for s, r in zip(steps, record.steps, strict=True)
            if r.state in _WITH_RESULT
        }
        context = StepContext(
            claimed.id, saga.name, step.name, attempt, claimed.input, results, key
        )
        try:
            scope = (
                idempotency_scope(key)
                if not isinstance(move, LookUp) and idempotency_scope is not None
                else contextlib.nullcontext()
            )
            with scope:
                result = await asyncio.wait_for(self._call(function, context), self.step_timeout)
            stored = _storable(result)
        except Exception as exc:
            # A result too large to keep is never final: the action may have had its
            # effect, so it is retried, then compensated as of unknown outcome.
            final = isinstance(move, Run) and not isinstance(exc, _ResultTooLarge)
            failed = step.judge(exc) if final else Failed(describe(exc))
            emit(
                self.hooks,
                SagaStepFailed(
                    at=self.clock.now(),
                    request_id=claimed.id,
                    saga=saga.name,
                    step=step.name,
                    function=kind,
                    attempt=attempt,
                    final=failed.final,
                    error=failed.error,
                ),
            )
            return failed
        if isinstance(move, LookUp):
            return NotFound() if stored is None else Found(stored)
        return Succeeded(stored)

    async def _call(self, function: StepFunction, context: StepContext) -> Any:
        """Run a step function: awaited when async, in one of the worker's step threads
        when not (the thread sees the caller's context variables, such as the idempotency
        scope)."""
        if inspect.iscoroutinefunction(function):
            return await function(context)
        loop = asyncio.get_running_loop()
        run = contextvars.copy_context().run
        result = await loop.run_in_executor(self._step_threads, run, function, context)
        if inspect.isawaitable(result):
            return await result
        return result

    def _report(self, claimed: Claimed, record: Record, entries: list[Entry]) -> None:
        if not any(entry.kind in ("finished", "needs_attention") for entry in entries):
            return
        now = self.clock.now()
        if record.state is SagaState.NEEDS_ATTENTION:
            event: SagaFinished | SagaNeedsAttention = SagaNeedsAttention(
                at=now, request_id=claimed.id, saga=claimed.name, error=record.error or ""
            )
        else:
            event = SagaFinished(
                at=now, request_id=claimed.id, saga=claimed.name, state=record.state.value
            )
        emit(self.hooks, event)


class _ResultTooLarge(Exception):
    pass


def _storable(result: Any) -> Any:
    """The result as JSON will give it back (what is not JSON becomes its ``str``);
    ``_ResultTooLarge`` past ``MAX_RESULT`` bytes (Rule 5)."""
    text = json.dumps(result, default=str)
    if len(text) > MAX_RESULT:
        raise _ResultTooLarge(
            f"the result is {len(text)} bytes of JSON, more than {MAX_RESULT}: return an id "
            "and look the rest up"
        )
    return json.loads(text)
