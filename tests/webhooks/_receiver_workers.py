"""Worker processes of ``test_receiver_processes.py``, and what they share with the parent.

Kept apart from the tests so that a spawned worker imports only what it runs (no pytest).
Each worker builds its own ``WebhookReceiver`` in front of a small ASGI app, on the
store every process opens by URL, and delivers Standard Webhooks events to it through
``httpx.ASGITransport``, signed as the sender signs them. The app records each execution
at the very end of its handler, in a ledger file opened with ``O_APPEND`` (one short line
per ``write``: lines of several processes never interleave, a line survives its writer
being killed, and a worker killed before the end of its handler records nothing).

Time never passes by sleeping: every process reads one ``SharedClock``, a ``ManualClock``
whose time is a ``multiprocessing.Value`` that only the parent moves, so the parent knows
exactly when a dead worker's lease runs out, for every process at once. The waits
(events, barriers, a condition) only order processes; their timeouts are failure guards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from _support import GUARD, problem_code, record_execution, write_result
from surefoot.storage import store_from_url
from surefoot.webhooks import (
    WEBHOOK,
    ReceivedWebhook,
    StandardWebhooks,
    WebhookEndpoint,
    WebhookReceiver,
)

PATH = "/webhooks/partner"
WHSEC = "whsec_" + base64.b64encode(b"surefoot-multiprocess-signing-k!").decode()
SCHEME = StandardWebhooks(secrets=(WHSEC,))
LEASE = 30.0
EVENT_ID = "msg_2Zq9storm"
BODY = b'{"type":"invoice.paid","data":{"id":"in_1","amount":1250}}'
#: How often a sender sends one delivery that was answered 409 again (a sender's retries).
MAX_RETRIES = 3

Pause = Callable[[], Awaitable[None]]


# -- shared by the parent and the workers ----------------------------------------------


class SharedClock:
    """A ``ManualClock`` whose time lives in shared memory: every process that was handed
    the same ``multiprocessing.Value("d")`` reads the same now; the parent moves it."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def now(self) -> float:
        return float(self.value.value)

    def set(self, now: float) -> None:
        if now < self.value.value:
            raise ValueError("time only moves forward")
        self.value.value = now


def build_receiver(
    *, store: Any, clock: SharedClock, ledger: Path, who: str, pause: Pause | None = None
) -> WebhookReceiver:
    """A receiver whose app processes an event (``pause``, if any), then records it."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        received: ReceivedWebhook = scope[WEBHOOK]
        if pause is not None:
            await pause()
        record_execution(ledger, who, received.id)  # the very end of the handler's work
        body = json.dumps({"charge": uuid.uuid4().hex, "by": who}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return WebhookReceiver(
        app,
        endpoints={PATH: WebhookEndpoint(name="partner", scheme=SCHEME, lease=LEASE)},
        store=store,
        clock=clock,
        hooks=[],  # 199 duplicates would flood stderr with log lines
    )


def client_for(app: WebhookReceiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hooks")


async def deliver(client: httpx.AsyncClient, at: float, event_id: str = EVENT_ID) -> httpx.Response:
    """One delivery of the event, signed at ``at`` as the sender signs each attempt."""
    headers = SCHEME.sign(BODY, event_id=event_id, timestamp=int(at))
    headers["content-type"] = "application/json"
    return await client.post(PATH, content=BODY, headers=headers)


def summary(response: httpx.Response) -> dict[str, Any]:
    return {
        "status": response.status_code,
        "replayed": response.headers.get("idempotent-replayed"),
        "code": problem_code(response),
        "body": response.text,
    }


# -- worker processes ----------------------------------------------------------------------


def storm_worker(
    index: int,
    url: str,
    now: Any,
    ledger: Path,
    out: Path,
    deliveries: int,
    barrier: Any,
    answered: Any,
    cond: Any,
    settled: Any,
) -> None:
    """Deliver the event ``deliveries`` times at once, right after every worker is ready,
    then send each delivery answered 409 again, at most ``MAX_RETRIES`` times.

    The handler that runs keeps the event until every other first delivery (counted over
    every worker) was answered, so each of them arrives while it is being processed; a
    retry waits until the delivery that ran had its answer (``settled``).
    """
    clock = SharedClock(now)
    total = int(barrier.parties) * deliveries

    def wait_for_the_others() -> None:
        with cond:
            # A timeout means another delivery ran too: go on, the parent will tell.
            cond.wait_for(lambda: answered.value >= total - 1, timeout=GUARD)

    async def hold() -> None:
        await asyncio.to_thread(wait_for_the_others)

    async def main() -> list[dict[str, Any]]:
        store: Any = store_from_url(url)
        app = build_receiver(
            store=store, clock=clock, ledger=ledger, who=f"worker{index}", pause=hold
        )
        ran = asyncio.Event()  # ``settled``, seen in this process

        async def watch() -> None:
            # One thread waits for the other processes (a timeout lets the retries go on:
            # the parent tells what they got).
            await asyncio.to_thread(settled.wait, GUARD)
            ran.set()

        async def one(client: httpx.AsyncClient) -> dict[str, Any]:
            response = await deliver(client, clock.now())
            first = summary(response)
            with cond:
                answered.value += 1
                cond.notify_all()
            if response.status_code == 200 and first["replayed"] is None:
                settled.set()  # the one that ran: its answer was stored before it came back
                ran.set()
            attempts = [first]
            while response.status_code == 409 and len(attempts) <= MAX_RETRIES:
                await ran.wait()
                response = await deliver(client, clock.now())
                attempts.append(summary(response))
            return {"first": first, "last": attempts[-1], "attempts": len(attempts)}

        try:
            async with client_for(app) as client:
                barrier.wait(GUARD)
                watching = asyncio.create_task(watch())
                results = await asyncio.gather(*(one(client) for _ in range(deliveries)))
                await watching
                return list(results)
        finally:
            await store.aclose()

    write_result(out, asyncio.run(main()))


def doomed_worker(url: str, now: Any, ledger: Path, started: Any) -> None:
    """Deliver the event, reach the handler, tell the parent, then hang until killed."""

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        clock = SharedClock(now)
        store: Any = store_from_url(url)
        app = build_receiver(store=store, clock=clock, ledger=ledger, who="doomed", pause=hang)
        async with client_for(app) as client:
            await deliver(client, clock.now())

    asyncio.run(main())


def sender_worker(url: str, now: Any, ledger: Path, out: Path, who: str) -> None:
    """One delivery of the event from another worker process, at the shared clock's now."""

    async def main() -> dict[str, Any]:
        clock = SharedClock(now)
        store: Any = store_from_url(url)
        app = build_receiver(store=store, clock=clock, ledger=ledger, who=who)
        try:
            async with client_for(app) as client:
                return summary(await deliver(client, clock.now()))
        finally:
            await store.aclose()

    write_result(out, asyncio.run(main()))
