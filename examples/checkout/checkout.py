"""The ``checkout`` saga: reserve stock, charge the card, book the shipment.

A refused card (402) or a refused address (422) turns the saga back: the charge is
refunded and the stock released, in that order. Every call goes through
``AsyncResilientTransport``, which retries what is safe to retry; inside a step, the
worker's ``idempotency_scope`` gives each POST the key ``saga:<order>:<step>:1``,
``:2``..., so a step run again after a crash sends the same keys and the partners do
their work once.

When the charge's outcome is unknown (every attempt timed out, the answer was lost),
the saga does not charge again blindly: it asks payments (``GET /charges?reference=``)
whether the charge happened, and goes on with it if it did.

``build(base_url)`` makes the saga for partners at ``base_url``; ``checkout`` is the one
for ``CHECKOUT_PARTNERS`` (default ``http://127.0.0.1:8700``).
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from surefoot.client import AsyncResilientTransport, RetryPolicy
from surefoot.saga import Retry, Saga, Step, StepContext

__all__ = ["PARTNERS", "build", "checkout"]

PARTNERS = os.environ.get("CHECKOUT_PARTNERS", "http://127.0.0.1:8700")


class _Partners:
    """One HTTP client for the partners, through the resilient transport, made on first use
    (in the worker's event loop) and kept for the worker's life."""

    def __init__(
        self,
        base_url: str,
        transport: httpx.AsyncBaseTransport | None,
        retry: RetryPolicy,
    ) -> None:
        self.base_url = base_url
        self.transport = transport
        self.retry = retry
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            inner = self.transport or httpx.AsyncHTTPTransport()
            transport = AsyncResilientTransport(inner, retry=self.retry, hooks=())
            self._client = httpx.AsyncClient(transport=transport, base_url=self.base_url)
        return self._client

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(path, json=body)
        response.raise_for_status()  # 402, 422: final (the steps say so); others: retried
        answer: dict[str, Any] = response.json()
        return answer

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        response = await self.client.get(path, params=params)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer


def build(
    base_url: str = PARTNERS,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
    step_retry: Retry | None = None,
) -> Saga:
    """The ``checkout`` saga, calling the partners at ``base_url``.

    Args:
        base_url: where ``examples.checkout.partners`` listens.
        transport: the transport under the resilient one (default:
            ``httpx.AsyncHTTPTransport``).
        retry: the HTTP retries of one call (default: 3 attempts of at most 2 s each).
        step_retry: the retries of a step that failed all the same (default: 5 runs,
            backoff from 0.5 s).
    """
    partners = _Partners(
        base_url,
        transport,
        retry
        or RetryPolicy(max_attempts=3, attempt_timeout=2.0, backoff_base=0.1, backoff_max=1.0),
    )
    again = step_retry or Retry()

    async def reserve(ctx: StepContext) -> dict[str, Any]:
        order = ctx.input
        return await partners.post(
            "/stock/reservations",
            {"order": ctx.saga_id, "sku": order["sku"], "quantity": order["quantity"]},
        )

    async def release(ctx: StepContext) -> dict[str, Any]:
        # By order, not by reservation id: this also undoes a reservation whose answer was lost.
        return await partners.post("/stock/releases", {"order": ctx.saga_id})

    async def charge(ctx: StepContext) -> dict[str, Any]:
        order = ctx.input
        return await partners.post(
            "/payments/charges",
            {"reference": ctx.saga_id, "amount": order["amount"], "card": order["card"]},
        )

    async def find_charge(ctx: StepContext) -> dict[str, Any] | None:
        found = (await partners.get("/payments/charges", reference=ctx.saga_id))["data"]
        return found[0] if found else None

    async def refund(ctx: StepContext) -> list[dict[str, Any]]:
        if ctx.result is not None:
            charges = [ctx.result]
        else:  # the outcome is unknown: refund whatever was charged for this order
            charges = (await partners.get("/payments/charges", reference=ctx.saga_id))["data"]
        return [await partners.post("/payments/refunds", {"charge": c["charge"]}) for c in charges]

    async def ship(ctx: StepContext) -> dict[str, Any]:
        return await partners.post(
            "/shipping/shipments", {"order": ctx.saga_id, "address": ctx.input["address"]}
        )

    return Saga(
        "checkout",
        [
            Step("reserve", reserve, compensate=release, retry=again),
            Step(
                "charge",
                charge,
                compensate=refund,
                lookup=find_charge,
                retry=again,
                final_statuses=frozenset({402}),
            ),
            Step("ship", ship, retry=again, final_statuses=frozenset({422})),
        ],
    )


checkout = build()
