"""ASGI plumbing shared by surefoot's middlewares: types, headers, request ids, problems."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from surefoot.errors import PROBLEM_CONTENT_TYPE, SurefootError, problem_body

__all__ = [
    "IDEMPOTENCY_POLICY",
    "NOT_EXECUTED",
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "header_values",
    "request_id",
    "send_problem",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Scope key an inner app sets to True when it answered without doing any of the request's
#: work (the gateway's upstream was never reached): an idempotency reservation is then
#: released whatever the response's status, so the client's retry can run.
NOT_EXECUTED = "surefoot.not_executed"
#: Scope key ``IdempotencyMiddleware`` sets, on a request it executes under a key, to the
#: route's ``IdempotencyPolicy`` (an inner app can tell the client whether a retry is safe).
IDEMPOTENCY_POLICY = "surefoot.idempotency_policy"

_REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of the header ``name`` (ASGI servers give names in lower case)."""
    return [v for k, v in scope["headers"] if k == name]


def request_id(scope: Scope) -> str:
    """The request's id: kept in ``scope["state"]``, taken from a well-formed
    ``X-Request-Id`` header or made up, so every layer reports the same one."""
    state = scope.setdefault("state", {})
    rid: str | None = state.get("request_id")
    if rid is None:
        given = header_values(scope, _REQUEST_ID_HEADER)
        if given and _VALID_REQUEST_ID.fullmatch(given[0]):
            rid = given[0].decode("ascii")
        else:
            rid = uuid.uuid4().hex
        state["request_id"] = rid
    return rid


async def send_problem(
    send: Send,
    error: SurefootError,
    *,
    request_id: str,
    base: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with ``error`` as an RFC 9457 problem document."""
    body = problem_body(error, request_id=request_id, base=base)
    out = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *headers,
    ]
    retry_after = error.fields.get("retry_after")
    if retry_after is not None:
        out.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": out})
    await send({"type": "http.response.body", "body": body})
