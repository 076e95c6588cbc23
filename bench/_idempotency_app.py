"""The server side of ``bench/idempotency.py``: a minimal Starlette app, bare or protected.

The environment picks the configuration when uvicorn imports ``app``:
- ``SUREFOOT_BENCH_STORE``: empty or unset serves the bare app; a store URL
  (``memory://``, ``sqlite:////tmp/x.db``, ``redis://127.0.0.1:6390/0?prefix=run-1:``)
  wraps it in ``IdempotencyMiddleware`` with that store and the default policy.
- ``SUREFOOT_BENCH_PREFILL``: completed records written to the store before serving, so a
  run measures the steady state of a long-running server (the ``memory://?on_full=evict``
  store of ``bench/idempotency.py`` is full at 10,000 records, and evicts) rather than an
  empty store. A Redis client belongs to the event loop that opened its connections, so a
  Redis store is prefilled through a second store on the same URL, closed before uvicorn's
  loop starts.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from surefoot.idempotency import (
    Begin,
    IdempotencyMiddleware,
    IdempotencyPolicy,
    Outcome,
    Reserved,
    Step,
    StoredResponse,
    scoped_key,
)
from surefoot.storage import IdempotencyStore, store_from_url

_ids = itertools.count(1)


async def create_charge(request: Request) -> Response:
    data = await request.json()
    charge = {"id": f"ch_{next(_ids)}", "amount": data["amount"], "status": "succeeded"}
    return JSONResponse(charge, status_code=201)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def prefill(store: IdempotencyStore, count: int) -> None:
    """Write ``count`` completed records, as served requests of another client would."""
    policy = IdempotencyPolicy()
    body = b'{"id":"ch_0","amount":1000,"status":"succeeded"}'
    headers = ((b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)))
    done = Outcome(Step.COMPLETE, StoredResponse(201, headers, body))
    now = time.time()
    for i in range(count):
        key = scoped_key("addr:192.0.2.1", f"prefill-{i}")
        token = f"prefill-{i}"
        request = Begin(
            fingerprint=f"{i:064x}",
            token=token,
            lease=policy.lease,
            ttl=policy.ttl,
            on_lease_expiry=policy.on_lease_expiry,
        )
        if isinstance(await store.begin(key, request, now), Reserved):
            await store.finish(key, token, done, now)


app: ASGIApp
bare = Starlette(
    routes=[Route("/charges", create_charge, methods=["POST"]), Route("/health", health)]
)

STORE_URL = os.environ.get("SUREFOOT_BENCH_STORE", "")
PREFILL = int(os.environ.get("SUREFOOT_BENCH_PREFILL", "0"))


async def prefill_apart(url: str, count: int) -> None:
    other = store_from_url(url)
    try:
        await prefill(other, count)
    finally:
        await other.aclose()


if STORE_URL:
    store = store_from_url(STORE_URL)
    if STORE_URL.startswith(("redis", "rediss")):
        asyncio.run(prefill_apart(STORE_URL, PREFILL))
    else:
        asyncio.run(prefill(store, PREFILL))
    # wrk is one client sending every key: no quota of records, or its keys past the
    # 10,000th would be refused (429 idempotency_records_exceeded).
    app = IdempotencyMiddleware(
        bare, store=store, policy=IdempotencyPolicy(max_records_per_principal=None)
    )
else:
    app = bare
