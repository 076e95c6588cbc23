"""The floor of a decision service, for ``bench/edge.py``'s ``nginx+floor``.

``surefoot decide``'s HTTP server (the gateway's head-only protocol, with the policy file's
``[server]`` limits, on uvicorn as ``surefoot decide`` runs it) serving an app that decides
nothing: every request is answered 200 with the fields an allowed decision carries
(``X-Request-Id``, ``RateLimit-Policy``, ``RateLimit``), fixed, and no store is asked. It
is what NGINX through the edge would reach if a decision cost nothing but its HTTP
exchange: a target above it is out of reach of any decision served by this HTTP server.

Usage: ``python bench/_decide_floor.py POLICY_FILE PORT``
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from surefoot.gateway import head_only_protocol, load_config

Message = MutableMapping[str, Any]

#: An allowed decision of bench/edge.py's policy, as ``surefoot decide`` answers it.
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-length", b"0"),
        (b"x-request-id", b"7006285f25414c68951daed727dacc11"),
        (b"ratelimit-policy", b'"bench-1s";q=1000000;w=1, "bench-3600s";q=1000000000;w=3600'),
        (b"ratelimit", b'"bench-1s";r=999999;t=1, "bench-3600s";r=999999999;t=3600'),
    ],
}
BODY = {"type": "http.response.body", "body": b""}


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "http":
        await send(START)
        await send(BODY)


def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    protocol = head_only_protocol(load_config(path).root.server.limits(), app)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol,
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
