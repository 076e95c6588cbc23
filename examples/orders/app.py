"""A tiny orders API (pure ASGI, no dependency) whose contract evolves: what docs/contracts.md
deprecates, browns out, retires and versions through the gateway.

- ``GET /v1/orders``: the first design, amounts in cents, deprecated for ``GET /v2/orders``.
- ``GET /v1/customers``: retired (the gateway answers 410 ``route_retired`` for it).
- ``GET /v2/orders``: branches on the API version the gateway forwards in
  ``surefoot-version``, as Stripe's API does: before ``2025-03-10`` an amount is a whole
  number of cents; from it on, an object with a decimal string and a currency.
- ``GET /calls``: how many requests reached this process, per path (the tests read it to
  see what the gateway let through).

Run it alone with ``uvicorn examples.orders.app:app --port 9000``, or behind
``surefoot serve --config examples/orders/gateway.toml``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

ORDERS = [{"id": "ord_1", "cents": 1250}, {"id": "ord_2", "cents": 990}]
#: The version from which amounts are objects.
MONEY = "2025-03-10"


class OrdersApp:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.calls[path] += 1
        version = dict(scope["headers"]).get(b"surefoot-version", b"").decode()
        status, answer = 200, self.answer(path, version)
        if answer is None:
            status, answer = 404, {"error": "not found"}
        content = json.dumps(answer).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(content)),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def answer(self, path: str, version: str) -> Any:
        if path == "/v1/orders":
            return {"orders": [{"id": o["id"], "amount_cents": o["cents"]} for o in ORDERS]}
        if path == "/v1/customers":
            return {"customers": []}
        if path == "/v2/orders":
            return {"api_version": version or None, "data": [_order(o, version) for o in ORDERS]}
        if path == "/calls":
            return dict(self.calls)
        return None


def _order(order: dict[str, Any], version: str) -> dict[str, Any]:
    cents = order["cents"]
    if version and version >= MONEY:
        return {"id": order["id"], "amount": {"value": f"{cents / 100:.2f}", "currency": "EUR"}}
    return {"id": order["id"], "amount": cents}


app = OrdersApp()
