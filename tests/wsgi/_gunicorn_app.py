"""The WSGI app ``test_gunicorn.py`` runs under real gunicorn sync workers, and its clients.

Configured by environment variables (each worker process builds its own middlewares and
its own store client, as a deployment does): ``SUREFOOT_TEST_STORE`` (a sync store URL)
and ``SUREFOOT_TEST_LEDGER`` (a file where every execution appends one line).
``POST /charges`` is protected by an idempotency key; ``GET /limited`` by a limit of 30
a minute (sliding log: exact), shared by every worker through the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from _support import record_execution, write_result
from surefoot.idempotency import IdempotencyPolicy
from surefoot.ratelimit import Limit, RateLimitPolicy
from surefoot.storage import sync_store_from_url
from surefoot.wsgi import IdempotencyMiddleware, RateLimitMiddleware

LIMIT = Limit(30, 60, algorithm="sliding_window")


def _backend(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/charges":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        record_execution(Path(os.environ["SUREFOOT_TEST_LEDGER"]), "charge", body.decode())
        payload = b'{"charged":true,"pid":%d}' % os.getpid()
    else:
        payload = b'{"ok":true}'
    start_response("201 Created", [("Content-Type", "application/json")])

    def stream() -> Iterable[bytes]:  # streamed, to go through the capture path
        yield payload[:5]
        yield payload[5:]

    return stream()


def make_app() -> Any:
    store = sync_store_from_url(os.environ["SUREFOOT_TEST_STORE"])
    app: Any = IdempotencyMiddleware(
        _backend,
        store=store,
        routes={"POST /charges": IdempotencyPolicy(wait=0), "/limited": None},
        hooks=[],
    )
    return RateLimitMiddleware(
        app,
        store=store,
        policies=[RateLimitPolicy("shared", limits=[LIMIT], routes=["GET /limited"])],
        hooks=[],
    )


app = make_app() if "SUREFOOT_TEST_STORE" in os.environ else None


def client(base: str, method: str, path: str, count: int, result: str) -> None:
    """One client process: ``count`` identical requests, one after another; writes the
    (status, problem code, body) of each to ``result``."""
    out = []
    with httpx.Client(base_url=base, timeout=30) as http:
        for _ in range(count):
            headers = {"Idempotency-Key": "order-42"} if method == "POST" else {}
            response = http.request(method, path, content=b"order-42", headers=headers)
            code = None
            if response.headers.get("content-type") == "application/problem+json":
                code = response.json()["code"]
            out.append([response.status_code, code, response.text])
    write_result(Path(result), out)
