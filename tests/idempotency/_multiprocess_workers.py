"""Worker processes of ``test_multiprocess.py``, and what they share with the parent.

Kept apart from the tests so that a spawned worker imports only what it runs (no
pytest). Each worker builds a Starlette app behind ``IdempotencyMiddleware`` on the
shared ``SqliteStore`` and sends requests through ``httpx.ASGITransport``. Handlers
record every execution in a ledger file opened with ``O_APPEND`` (one short line per
``write``, so lines from several processes never interleave, and a line survives its
writer being killed).

Time never passes by sleeping: every process uses a ``ManualClock`` started at ``T0``,
so the parent knows exactly when a child's lease runs out. The waits (events, barriers,
a condition) only order processes; their timeouts are failure guards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support import (
    GUARD,
    T0,
    record_execution,
    write_result,
)
from surefoot.errors import SurefootError
from surefoot.idempotency import Begin, IdempotencyMiddleware, IdempotencyPolicy, scoped_key
from surefoot.storage import SqliteStore, store_from_url
from surefoot.testing import ManualClock

LEASE = 30.0
KEY = "charge-7f3a9c"
BODY = b'{"amount": 1250, "currency": "eur"}'
# httpx.ASGITransport reports the client as ("127.0.0.1", 123).
PRINCIPAL = "addr:127.0.0.1"

AfterRecord = Callable[[], Awaitable[None]]


# -- shared by the parent and the workers ----------------------------------------------


def build_app(
    *,
    store: SqliteStore,
    clock: ManualClock,
    ledger: Path,
    who: str,
    on_lease_expiry: Literal["reexecute", "unknown"] = "unknown",
    after_record: AfterRecord | None = None,
    hooks: list[Any] | None = None,
) -> IdempotencyMiddleware:
    """A charge endpoint that logs each execution, then optionally waits on ``after_record``."""

    async def charge(request: Request) -> JSONResponse:
        key = request.headers["idempotency-key"]
        record_execution(ledger, who, key)
        if after_record is not None:
            await after_record()
        return JSONResponse({"id": uuid.uuid4().hex, "by": who}, status_code=201)

    return IdempotencyMiddleware(
        Starlette(routes=[Route("/charges", charge, methods=["POST"])]),
        store=store,
        policy=IdempotencyPolicy(lease=LEASE, on_lease_expiry=on_lease_expiry),
        clock=clock,
        hooks=hooks,
    )


def client_for(app: IdempotencyMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def post(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(
        "/charges",
        content=BODY,
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )


def summary(response: httpx.Response) -> dict[str, Any]:
    return {
        "status": response.status_code,
        "replayed": response.headers.get("idempotent-replayed"),
        "body": response.text,
    }


# -- worker processes ----------------------------------------------------------------------


def storm_worker(
    index: int,
    url: str,
    ledger: Path,
    out: Path,
    keys: list[str],
    barrier: Any,
    answered: Any,
    cond: Any,
    hold_until: int,
) -> None:
    """Fire one request per key, all at once, right after every worker is ready.

    With ``hold_until`` > 0, a handler keeps its reservation until that many other
    responses (counted over every worker) were received, so every duplicate is sure to
    arrive while the original is in flight.
    """

    def wait_for_others() -> None:
        with cond:
            # A timeout means another request executed too: go on, the parent will tell.
            cond.wait_for(lambda: answered.value >= hold_until, timeout=GUARD)

    async def hold() -> None:
        await asyncio.to_thread(wait_for_others)

    async def main() -> list[dict[str, Any]]:
        store: Any = store_from_url(url)
        app = build_app(
            store=store,
            clock=ManualClock(T0),
            ledger=ledger,
            who=f"worker{index}",
            after_record=hold if hold_until else None,
            hooks=[],  # 199 conflicts would flood stderr with warnings
        )

        async def one(key: str) -> dict[str, Any]:
            response = await post(client, key)
            with cond:
                answered.value += 1
                cond.notify_all()
            return summary(response)

        try:
            async with client_for(app) as client:
                barrier.wait(GUARD)
                return list(await asyncio.gather(*(one(k) for k in keys)))
        finally:
            await store.aclose()

    write_result(out, asyncio.run(main()))


def doomed_worker(
    db: Path, ledger: Path, on_lease_expiry: Literal["reexecute", "unknown"], started: Any
) -> None:
    """Reserve ``KEY``, record the start, tell the parent, then hang until killed."""

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        app = build_app(
            store=SqliteStore(db),
            clock=ManualClock(T0),
            ledger=ledger,
            who="doomed",
            on_lease_expiry=on_lease_expiry,
            after_record=hang,
        )
        async with client_for(app) as client:
            await post(client, KEY)

    asyncio.run(main())


def late_worker(db: Path, ledger: Path, out: Path, started: Any, release: Any) -> None:
    """Reserve ``KEY``, stall until released, then finish long after its lease ran out."""
    clock = ManualClock(T0)

    async def stall() -> None:
        started.set()
        if not await asyncio.to_thread(release.wait, GUARD):
            raise TimeoutError("the parent never released the late worker")
        clock.set(T0 + 2 * LEASE + 10)  # past the lease and the successor's lease too

    async def main() -> dict[str, Any]:
        events: list[Any] = []
        store = SqliteStore(db)
        app = build_app(
            store=store,
            clock=clock,
            ledger=ledger,
            who="late",
            on_lease_expiry="reexecute",
            after_record=stall,
            hooks=[events.append],
        )
        try:
            async with client_for(app) as client:
                response = await post(client, KEY)
        finally:
            await store.aclose()
        return {**summary(response), "events": [type(e).__name__ for e in events]}

    write_result(out, asyncio.run(main()))


def startup_worker(paths: list[Path], barrier: Any, out: Path) -> None:
    """For each path, together with the other workers: open the store and begin ``KEY``."""

    async def main() -> list[str]:
        results: list[str] = []
        for path in paths:
            barrier.wait(GUARD)
            try:
                store = SqliteStore(path)
            except SurefootError as exc:
                results.append(f"open failed: {exc!r} from {exc.__cause__!r}")
                continue
            request = Begin(
                fingerprint="fp",
                token=uuid.uuid4().hex,
                lease=LEASE,
                ttl=86400.0,
                on_lease_expiry="unknown",
            )
            try:
                decision = await store.begin(scoped_key(PRINCIPAL, KEY), request, T0)
                results.append(type(decision).__name__)
            except SurefootError as exc:
                results.append(f"begin failed: {exc!r} from {exc.__cause__!r}")
            finally:
                await store.aclose()
        return results

    write_result(out, asyncio.run(main()))
