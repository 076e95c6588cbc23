from __future__ import annotations

import uuid
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

__all__ = ["aassert_idempotent", "assert_idempotent"]

# Headers that legitimately differ between a response and its replay: set per request by
# the server or by layers outside the idempotency middleware (rate limits).
_VOLATILE = frozenset(
    {
        "idempotent-replayed",
        "date",
        "server",
        "x-request-id",
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    }
)


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


class _Client(Protocol):
    def request(self, method: str, url: str, **kwargs: Any) -> Any: ...


def assert_idempotent(
    client: _Client,
    method: str,
    url: str,
    *,
    times: int = 3,
    key: str | None = None,
    header: str = "Idempotency-Key",
    **request: Any,
) -> list[Any]:
    """Send one request ``times`` times with one key and check it executed once.

    ``client`` is anything with ``request(method, url, **kwargs)`` returning a response with
    ``status_code``, ``content`` and ``headers``: ``httpx.Client``, Starlette's
    ``TestClient``. Extra keyword arguments (``json=``, ``headers=``...) go to it.

    Example:
        >>> responses = assert_idempotent(client, "POST", "/charges", json={"amount": 500})

    Checks that every response has the same status, body and headers (ignoring
    ``Date``, ``Server``, ``X-Request-Id`` and rate-limit fields), and that every one
    after the first carries ``Idempotent-Replayed: true``. Returns the responses.
    """
    args = _with_key(request, key, header)
    responses = [client.request(method, url, **args) for _ in range(times)]
    _check(responses)
    return responses


async def aassert_idempotent(
    client: _Client,
    method: str,
    url: str,
    *,
    times: int = 3,
    key: str | None = None,
    header: str = "Idempotency-Key",
    **request: Any,
) -> list[Any]:
    """``assert_idempotent`` for ``httpx.AsyncClient``: the requests are sent one after another."""
    args = _with_key(request, key, header)
    responses = []
    for _ in range(times):
        pending: Awaitable[Any] = client.request(method, url, **args)
        responses.append(await pending)
    _check(responses)
    return responses


def _with_key(request: dict[str, Any], key: str | None, header: str) -> dict[str, Any]:
    if not request.get("headers") or header.lower() not in {h.lower() for h in request["headers"]}:
        headers = dict(request.get("headers") or {})
        headers[header] = key or str(uuid.uuid4())
        request = {**request, "headers": headers}
    return request


def _check(responses: list[_Response]) -> None:
    if len(responses) < 2:
        raise ValueError("assert_idempotent needs times >= 2")
    first = responses[0]
    if first.headers.get("idempotent-replayed") == "true":
        raise AssertionError("the first response is already a replay: the key was used before")
    for n, other in enumerate(responses[1:], start=2):
        if other.status_code != first.status_code:
            raise AssertionError(
                f"response {n} has status {other.status_code}, the first had {first.status_code}"
            )
        if other.content != first.content:
            raise AssertionError(
                f"response {n} has a different body than the first:\n"
                f"  first: {first.content[:200]!r}\n  #{n}:   {other.content[:200]!r}"
            )
        if _stable(other.headers) != _stable(first.headers):
            raise AssertionError(f"response {n} has different headers than the first")
        if other.headers.get("idempotent-replayed") != "true":
            raise AssertionError(
                f"response {n} lacks 'Idempotent-Replayed: true': it was executed again"
            )


def _stable(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _VOLATILE}
