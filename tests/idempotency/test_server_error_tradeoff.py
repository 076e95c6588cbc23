"""DESIGN.md contract 5, measured: a handler that commits and then fails.

200 payments, each retried (same key) until it gets an answer that is not a 5xx or 409,
at most 4 attempts; the handler writes its ledger row and then answers 500 on a seeded
30% of its executions. ``release`` re-executes those, so it duplicates charges;
``store`` and ``unknown`` never execute a key twice.
"""

from __future__ import annotations

import random

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from surefoot.idempotency import IdempotencyMiddleware, IdempotencyPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio


async def run(mode: str) -> tuple[int, int]:
    """Returns (ledger rows, distinct payments charged)."""
    ledger: list[str] = []
    rng = random.Random(7)

    async def charge(request: Request) -> Response:
        payment = (await request.json())["payment"]
        ledger.append(payment)  # committed...
        if rng.random() < 0.3:
            return JSONResponse({"error": "lost after commit"}, status_code=500)  # ...then fails
        return JSONResponse({"payment": payment}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/charges", charge, methods=["POST"])]),
        store=MemoryStore(),
        policy=IdempotencyPolicy(on_server_error=mode),  # type: ignore[arg-type]
        clock=ManualClock(),
        hooks=[],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        for n in range(200):
            for _ in range(4):
                r = await client.post(
                    "/charges", json={"payment": f"p{n}"}, headers={"Idempotency-Key": f"k{n}"}
                )
                if r.status_code < 500 and r.status_code != 409:
                    break
    return len(ledger), len(set(ledger))


@pytest.mark.parametrize(
    ("mode", "duplicates"), [("release", True), ("store", False), ("unknown", False)]
)
async def test_only_release_duplicates_commit_then_fail_charges(
    mode: str, duplicates: bool
) -> None:
    rows, payments = await run(mode)
    assert payments == 200
    if duplicates:
        assert rows - payments > 40  # roughly 30% of 200, plus retries failing again
    else:
        assert rows == payments
