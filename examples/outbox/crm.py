"""The CRM's receiver, back up: it logs each delivery's id and answers 204."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = dict(scope["headers"])
    print("crm got", headers[b"webhook-id"].decode(), flush=True)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
