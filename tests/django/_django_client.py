"""A client process of ``test_django_gunicorn.py`` (importable by spawned processes)."""

from __future__ import annotations

from pathlib import Path

import httpx

from _support import write_result


def client(base: str, method: str, path: str, count: int, result: str) -> None:
    """``count`` identical requests one after another; writes, for each, the status, the
    problem code, the body, ``Retry-After`` and ``RateLimit``."""
    out = []
    with httpx.Client(base_url=base, timeout=30) as http:
        for _ in range(count):
            headers = {"Idempotency-Key": "order-42"} if method == "POST" else {}
            response = http.request(method, path, content=b'{"order": 42}', headers=headers)
            code = None
            if response.headers.get("content-type") == "application/problem+json":
                code = response.json()["code"]
            out.append(
                [
                    response.status_code,
                    code,
                    response.text,
                    response.headers.get("retry-after"),
                    response.headers.get("ratelimit"),
                ]
            )
    write_result(Path(result), out)
