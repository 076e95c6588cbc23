"""Processes of ``test_saga_processes.py``: saga workers that die where they are told to.

Kept apart from the tests so that a spawned process imports only what it runs (no pytest).

The saga is ``checkout``: ``reserve`` (undone by ``release``), ``charge`` (``refund``),
``ship`` (``cancel``). Each function POSTs to the partner (``Partner``, an HTTP server in
the test process) through httpx and ``AsyncResilientTransport``, so each request carries
the worker's idempotency key (``saga:<id>:<step>:1``, ``saga:<id>:<step>:undo:1``).

The saga's input says what goes wrong with it:

- ``fail``: the step whose action the partner refuses for good (402), or None.
- ``broken``: the undo (``release``, ``refund``, ``cancel``) the partner always answers
  with a 500 (no effect, nothing kept under the key), or None: its retries run out and
  the saga needs attention.
- ``crash``: crash points ``"<function>:<where>"`` (function: ``reserve``, ``charge``,
  ``ship``, ``release``, ``refund``, ``cancel``; where: ``before`` the function runs,
  ``inside`` it, once the partner answered and before the function returns, ``after`` it
  returned or raised, before the worker records it). Each point fires once, in whichever
  worker reaches it first (a marker file created with ``O_EXCL`` in ``crash_dir``): that
  worker process kills itself with ``SIGKILL``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

STEPS = ("reserve", "charge", "ship")
UNDO = {"reserve": "release", "charge": "refund", "ship": "cancel"}
FUNCTIONS = (*STEPS, *UNDO.values())
WHERE = ("before", "inside", "after")
SAGA = "checkout"


def crash_marker(crash_dir: Path, saga_id: str, point: str) -> Path:
    """The file that says ``point`` of ``saga_id`` has fired."""
    return crash_dir / f"{saga_id}.{point.replace(':', '.')}"


def _maybe_crash(crash_dir: Path | None, context: Any, function: str, where: str) -> None:
    """Kill this process if ``function:where`` is one of the saga's crash points that has
    not fired yet."""
    point = f"{function}:{where}"
    if crash_dir is None or point not in (context.input or {}).get("crash", ()):
        return
    try:
        fd = os.open(crash_marker(crash_dir, context.saga_id, point), os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return  # fired already, in this worker's predecessor
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def build_saga(client: Any = None, crash_dir: Path | None = None) -> Any:
    """The ``checkout`` saga; its functions POST with ``client`` (an ``httpx.AsyncClient``
    whose base URL is the partner's). The test process builds it without a client, only
    to start sagas."""
    from surefoot.saga import Retry, Saga, Step, StepContext

    def call(function: str, undo: bool) -> Callable[[StepContext], Awaitable[Any]]:
        async def post(context: StepContext) -> Any:
            _maybe_crash(crash_dir, context, function, "before")
            try:
                given = context.input or {}
                fail = not undo and given.get("fail") == context.step
                broken = undo and given.get("broken") == function
                body = {"saga": context.saga_id, "fail": fail, "broken": broken}
                response = await client.post(f"/{function}", json=body)
                _maybe_crash(crash_dir, context, function, "inside")
                response.raise_for_status()
                return response.json()
            finally:
                _maybe_crash(crash_dir, context, function, "after")

        post.__name__ = function
        return post

    return Saga(
        SAGA,
        [
            Step(
                name,
                call(name, undo=False),
                compensate=call(UNDO[name], undo=True),
                retry=Retry(attempts=5, initial=0.05, maximum=0.2),
                undo_retry=Retry(attempts=5, initial=0.05, maximum=0.2),
                final_statuses=frozenset({402}),
            )
            for name in STEPS
        ],
    )


def saga_worker(
    database: str,
    prefix: str,
    partner: str,
    crash_dir: Path,
    settings: dict[str, Any],
    ready: Any = None,
) -> None:
    """``SagaWorker(...).run()`` over ``database`` until killed (by the test, or by itself
    at one of a saga's crash points); ``settings`` are the worker's keyword arguments.
    Sets the event ``ready`` (if given) as it starts claiming."""
    import httpx

    from surefoot.client import AsyncResilientTransport, RetryPolicy
    from surefoot.saga import SagaLog, SagaWorker

    async def main() -> None:
        transport = AsyncResilientTransport(
            httpx.AsyncHTTPTransport(),
            retry=RetryPolicy(
                max_attempts=2, deadline=10.0, attempt_timeout=5.0, retry_statuses={503}
            ),
            hooks=[],
        )
        async with httpx.AsyncClient(transport=transport, base_url=partner) as client:
            log = SagaLog(database, prefix=prefix)
            worker = SagaWorker(log, [build_saga(client, crash_dir)], hooks=[], **settings)
            if ready is not None:
                ready.set()
            await worker.run()

    asyncio.run(main())
