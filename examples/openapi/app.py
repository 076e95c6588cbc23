"""A FastAPI app whose ``/docs`` shows what surefoot's middlewares add to it.

Run it with ``uvicorn examples.openapi.app:app`` and open http://127.0.0.1:8000/docs:
``POST /charges`` asks for an ``Idempotency-Key`` header and lists the 400, 409, 413,
422, 429 and 503 problems the middlewares can answer with, and every limited operation
shows the ``RateLimit`` and ``RateLimit-Policy`` headers.
``python -m examples.openapi.app`` prints the enriched document instead.

The policies are defined once and given both to the middlewares and to ``install``, so
the document describes what the middlewares really do.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from surefoot.clock import Clock
from surefoot.idempotency import IdempotencyMiddleware, IdempotencyPolicy
from surefoot.openapi import install
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
from surefoot.storage import MemoryStore

__all__ = ["IDEMPOTENCY", "IDEMPOTENCY_ROUTES", "RATE_LIMITS", "app", "create_app"]

#: Writes need a key; the webhook receiver dedupes by event id on its own.
IDEMPOTENCY = IdempotencyPolicy(methods=frozenset({"POST", "PATCH"}))
IDEMPOTENCY_ROUTES: dict[str, IdempotencyPolicy | None] = {"POST /webhooks/{provider}": None}
RATE_LIMITS = [
    RateLimitPolicy("default", limits=["100/minute"], exempt=["GET /health"]),
    RateLimitPolicy("charges", limits=["5/minute"], routes=["POST /charges"]),
]


class ChargeRequest(BaseModel):
    amount: int = Field(gt=0, description="In the currency's smallest unit (cents).")
    currency: str = Field(pattern=r"^[a-z]{3}$", description="ISO 4217 code, lower case.")


class Charge(ChargeRequest):
    id: str


def create_app(*, clock: Clock | None = None) -> FastAPI:
    """The app, its middlewares on one ``MemoryStore`` (``clock``: for tests)."""
    api = FastAPI(title="Payments")
    charges: dict[str, Charge] = {}

    @api.post("/charges", status_code=201)
    async def create_charge(body: ChargeRequest) -> Charge:
        charge = Charge(id="ch_" + secrets.token_hex(8), **body.model_dump())
        charges[charge.id] = charge
        return charge

    @api.get("/charges/{charge_id}")
    async def get_charge(charge_id: str) -> Charge | None:
        return charges.get(charge_id)

    @api.post(
        "/charges/{charge_id}/refunds",
        status_code=201,
        responses={409: {"description": "The charge is already refunded."}},
    )
    async def refund(charge_id: str) -> dict[str, str]:
        return {"charge": charge_id, "status": "refunded"}

    @api.post("/webhooks/{provider}")
    async def webhook(provider: str) -> dict[str, str]:
        return {"received": provider}

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    install(
        api, idempotency=IDEMPOTENCY, idempotency_routes=IDEMPOTENCY_ROUTES, rate_limits=RATE_LIMITS
    )
    store = MemoryStore()
    api.add_middleware(
        IdempotencyMiddleware,
        store=store,
        policy=IDEMPOTENCY,
        routes=IDEMPOTENCY_ROUTES,
        clock=clock,
    )
    # Added last, so outermost: a refused request never reaches the idempotency layer.
    api.add_middleware(RateLimitMiddleware, store=store, policies=RATE_LIMITS, clock=clock)
    return api


app = create_app()


def main() -> None:
    schema: dict[str, Any] = app.openapi()
    print(json.dumps(schema, indent=2))


if __name__ == "__main__":
    main()
