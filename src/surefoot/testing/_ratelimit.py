from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Mapping
from typing import Any

__all__ = ["aassert_rate_limited", "assert_rate_limited"]

_CODES = {"rate_limit_exceeded", "quota_exceeded", "concurrency_limit_exceeded"}
# One RateLimit list member: "name";r=N;t=N (parameters in any order, others allowed).
_MEMBER = re.compile(r'^\s*"((?:[^"\\]|\\.)*)"((?:;[a-z*][a-z0-9_.*-]*=[^;,]+)*)\s*$')


def assert_rate_limited(
    client: Any,
    method: str,
    url: str,
    *,
    limit: int,
    principal: str | Mapping[str, str] | None = None,
    **request: Any,
) -> list[Any]:
    """Send ``limit + 1`` requests: the first ``limit`` must pass, the last must be a 429.

    Example:
        >>> assert_rate_limited(client, "GET", "/search", limit=30, principal="key-123")

    ``principal`` identifies the client: a string is sent as ``X-API-Key``, a mapping as
    headers. The 429 must be problem+json with a rate-limit code, an integer
    ``Retry-After`` equal to the problem's ``retry_after``, and well-formed
    ``RateLimit`` / ``RateLimit-Policy`` fields whose violated limit has ``r=0``.
    Returns the responses.
    """
    args = _with_principal(request, principal)
    responses = [client.request(method, url, **args) for _ in range(limit + 1)]
    _check(responses, limit)
    return responses


async def aassert_rate_limited(
    client: Any,
    method: str,
    url: str,
    *,
    limit: int,
    principal: str | Mapping[str, str] | None = None,
    **request: Any,
) -> list[Any]:
    """``assert_rate_limited`` for ``httpx.AsyncClient``."""
    args = _with_principal(request, principal)
    responses = []
    for _ in range(limit + 1):
        pending: Awaitable[Any] = client.request(method, url, **args)
        responses.append(await pending)
    _check(responses, limit)
    return responses


def _with_principal(
    request: dict[str, Any], principal: str | Mapping[str, str] | None
) -> dict[str, Any]:
    if principal is None:
        return request
    extra = {"X-API-Key": principal} if isinstance(principal, str) else dict(principal)
    return {**request, "headers": {**dict(request.get("headers") or {}), **extra}}


def _check(responses: list[Any], limit: int) -> None:
    for n, response in enumerate(responses[:limit], start=1):
        if response.status_code == 429:
            raise AssertionError(f"request {n} of {limit} allowed ones was refused with 429")
    last = responses[-1]
    if last.status_code != 429:
        raise AssertionError(f"request {limit + 1} got {last.status_code}, expected 429")
    if not last.headers.get("content-type", "").startswith("application/problem+json"):
        raise AssertionError("the 429 is not application/problem+json")
    doc = json.loads(last.content)
    if doc.get("code") not in _CODES:
        raise AssertionError(f"the 429's code is {doc.get('code')!r}, not a rate-limit code")
    retry_after = last.headers.get("retry-after", "")
    if not retry_after.isdigit() or int(retry_after) < 1:
        raise AssertionError(f"Retry-After must be whole seconds >= 1, got {retry_after!r}")
    if doc.get("retry_after") != int(retry_after):
        raise AssertionError("the problem's retry_after differs from Retry-After")
    policies = _members(last.headers.get("ratelimit-policy"), "RateLimit-Policy", "q")
    states = _members(last.headers.get("ratelimit"), "RateLimit", "r")
    if set(states) != set(policies):
        raise AssertionError("RateLimit and RateLimit-Policy name different limits")
    violated = doc.get("violated-policies") or []
    for name in violated:
        if states.get(name, {}).get("r") != "0":
            raise AssertionError(f"violated limit {name!r} does not report r=0")


def _members(value: str | None, field: str, required: str) -> dict[str, dict[str, str]]:
    if not value:
        raise AssertionError(f"the 429 has no {field} field")
    out: dict[str, dict[str, str]] = {}
    for member in value.split(","):
        match = _MEMBER.match(member)
        if match is None:
            raise AssertionError(f"malformed {field} member: {member!r}")
        params = dict(p.split("=", 1) for p in match.group(2).split(";")[1:])
        if not params.get(required, "").isdigit():
            raise AssertionError(f"{field} member {member!r} lacks an integer {required}")
        out[match.group(1)] = params
    return out
