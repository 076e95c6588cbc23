"""Small partner APIs the probe's tests run against, as real processes or in process.

``uvicorn tests.probe.targets:fik_app`` (from the repository's root) serves one of them;
``python -m tests.probe.targets NAME PORT`` does the same.

Idempotency targets (``ledger`` below, wrapped or bare):
- ``ledger_app``: ``POST /charges`` books a charge (no idempotency at all), ``GET
  /charges?customer=C`` lists that customer's charges as ``{"data": [...]}`` (the probe's
  effect check), ``GET /health``.
- ``fik_app``: the ledger behind fastapi-idempotency-key's ``IdempotencyMiddleware`` (its
  defaults, its ``MemoryBackend``).
- ``aih_app``: the ledger behind asgi-idempotency-header's ``IdempotencyHeaderMiddleware``
  (its defaults, its ``MemoryBackend``).
A charge takes ``HOLD`` seconds to book, as a real one would, so that concurrent copies of
one request are in flight together (no verdict depends on how long).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

#: Seconds a charge takes to book.
HOLD = 0.2


def ledger(*, hold: float = HOLD) -> Starlette:
    """A payments API without idempotency, with a list endpoint to count charges."""
    charges: list[dict[str, Any]] = []
    ids = itertools.count(1)

    async def create(request: Request) -> Response:
        data = await request.json()
        charge = {
            "id": f"ch_{next(ids)}",
            "amount": data.get("amount"),
            "customer": data.get("customer"),
            "reference": data.get("reference"),
        }
        charges.append(charge)
        if hold:
            await asyncio.sleep(hold)
        return JSONResponse(charge, status_code=201)

    async def listing(request: Request) -> Response:
        customer = request.query_params.get("customer")
        return JSONResponse({"data": [c for c in charges if c["customer"] == customer]})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/charges", create, methods=["POST"]),
            Route("/charges", listing, methods=["GET"]),
            Route("/health", health),
        ]
    )


def fik(app: ASGIApp) -> ASGIApp:
    """fastapi-idempotency-key around ``app``, as its README sets it up."""
    from fastapi_idempotency_key import IdempotencyMiddleware, MemoryBackend

    return IdempotencyMiddleware(app, backend=MemoryBackend())  # type: ignore[no-any-return]


def aih(app: ASGIApp) -> ASGIApp:
    """asgi-idempotency-header around ``app``, as its README sets it up."""
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends import MemoryBackend

    middleware: ASGIApp = IdempotencyHeaderMiddleware(app, backend=MemoryBackend())
    return middleware


ledger_app = ledger()
fik_app = fik(ledger())
aih_app = aih(ledger())

APPS: dict[str, ASGIApp] = {"ledger": ledger_app, "fik": fik_app, "aih": aih_app}


def main(argv: list[str]) -> None:
    import uvicorn

    name, port = argv
    uvicorn.run(APPS[name], host="127.0.0.1", port=int(port), log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])


# -- rate-limit targets (tests/probe/test_limits_targets.py) ------------------------------------


def slowapi_app() -> Starlette:
    """``GET /hello`` behind slowapi, as bench/_ratelimit_app.py sets it up: ``Limiter`` with
    ``default_limits`` and ``SlowAPIMiddleware``, keyed by the client address, its own 429
    handler. ``GET /health`` and ``GET /slow?seconds=S`` are exempt.

    A factory for ``uvicorn --factory tests.probe.targets:slowapi_app``, configured by
    ``SUREFOOT_PROBE_SLOWAPI_LIMIT`` (default ``"5/2 seconds"``) and
    ``SUREFOOT_PROBE_SLOWAPI_HEADERS`` (``1``: ``headers_enabled=True``; default off, as in
    slowapi).
    """
    import os

    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIMiddleware
    from slowapi.util import get_remote_address
    from starlette.middleware import Middleware

    limiter = Limiter(
        key_func=get_remote_address,
        default_limits=[os.environ.get("SUREFOOT_PROBE_SLOWAPI_LIMIT", "5/2 seconds")],
        headers_enabled=os.environ.get("SUREFOOT_PROBE_SLOWAPI_HEADERS") == "1",
    )

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello, world")

    @limiter.exempt
    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    @limiter.exempt
    async def slow(request: Request) -> Response:
        seconds = float(request.query_params.get("seconds", "1"))
        await asyncio.sleep(seconds)
        return JSONResponse({"slept": seconds})

    app = Starlette(
        routes=[Route("/hello", hello), Route("/health", health), Route("/slow", slow)],
        middleware=[Middleware(SlowAPIMiddleware)],
        exception_handlers={RateLimitExceeded: _rate_limit_exceeded_handler},
    )
    app.state.limiter = limiter
    return app
