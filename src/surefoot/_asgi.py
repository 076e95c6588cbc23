"""ASGI plumbing shared by surefoot's middlewares: types, headers, request ids, problems,
and the one canonical form of a request's path and method (``canonicalize``)."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from surefoot._paths import CanonicalPath, canonical_path, quote_path
from surefoot.errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    InvalidPath,
    SurefootError,
    problem_body,
)

__all__ = [
    "CANONICAL",
    "IDEMPOTENCY_POLICY",
    "NOT_EXECUTED",
    "ROUTE_METHOD",
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "adopt_request_id",
    "canonicalize",
    "header_values",
    "new_request_id",
    "problem_parts",
    "request_id",
    "route_method",
    "send_problem",
    "split_root",
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
#: Scope key ``canonicalize`` sets to True once the scope's path is canonical and its
#: method-override headers dealt with: an inner layer does not do the work again.
CANONICAL = "surefoot.canonical"
#: Scope key ``canonicalize`` sets, on a POST whose method override is allowed, to the
#: method routes are matched on (see ``route_method``).
ROUTE_METHOD = "surefoot.route_method"

_METHOD_OVERRIDES = frozenset({b"x-http-method-override", b"x-method-override", b"x-http-method"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# A made-up request id is a random version 4 UUID in hex, as ``uuid.uuid4().hex`` makes
# it, from random bytes read 64 ids at a time (one system call, not one per request).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)
_fresh_ids: list[str] = []
if hasattr(os, "register_at_fork"):  # a forked worker never hands out its parent's ids
    os.register_at_fork(after_in_child=_fresh_ids.clear)


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of the header ``name`` (ASGI servers give names in lower case)."""
    return [v for k, v in scope["headers"] if k == name]


def canonicalize(scope: Scope, *, allow_method_override: bool) -> SurefootError | None:
    """Put an HTTP scope's path and method in the one form every layer matches routes on.

    The path (``raw_path``, else ``path`` encoded again) becomes its canonical form in
    both ``path`` and ``raw_path`` (``surefoot._paths``), so the app or the upstream gets
    exactly what the routes matched. The method-override headers
    (``X-HTTP-Method-Override``, ``X-Method-Override``, ``X-HTTP-Method``) are removed,
    so that nothing behind honours a method the routes did not see; when
    ``allow_method_override``, a POST's are kept instead and the POST is matched on the
    method they name (``route_method``); on any other method they are removed all the same.
    Done once per scope: a later call returns at once.

    When the app is mounted under a prefix (``root_path``, which ``path`` starts with, as
    ASGI says), only the part after the prefix is made canonical and the prefix is kept
    as sent: a ``..`` that would climb out of it (``/app/../charges``) is refused, as a
    path that leaves the mount would reach a route no rule was written for. A
    ``raw_path`` without the prefix (a server that leaves it out) is taken as the part
    after it, and stays without it; a ``raw_path`` that is neither (it and ``path``
    disagree) is refused.

    Returns:
        None, or the error to answer without calling the app: ``InvalidPath``, or
        ``BadRequest`` when allowed override headers name no single method.
    """
    if scope.get(CANONICAL):
        return None
    try:
        canonical = _canonical(scope)
    except InvalidPath as exc:
        return exc
    scope["path"] = canonical.path
    scope["raw_path"] = canonical.raw
    headers = scope["headers"]
    for name, _ in headers:
        if name in _METHOD_OVERRIDES:
            # Only a POST's override is honoured (as frameworks do); on another method the
            # headers are dropped, or something behind might honour what no route saw.
            if not allow_method_override or scope["method"] != "POST":
                scope["headers"] = [(k, v) for k, v in headers if k not in _METHOD_OVERRIDES]
                break
            named = {v.strip().upper() for k, v in headers if k in _METHOD_OVERRIDES}
            method = named.pop()
            if named or not _TOKEN.fullmatch(method):
                return BadRequest(reason="the method-override headers do not name one method")
            scope[ROUTE_METHOD] = method.decode("ascii")
            break
    scope[CANONICAL] = True
    return None


def _canonical(scope: Scope) -> CanonicalPath:
    """The canonical path of ``scope``, its mount prefix (``root_path``) kept as sent."""
    raw: bytes | None = scope.get("raw_path")
    path: str = scope["path"]
    root: str = (scope.get("root_path") or "").rstrip("/")
    if not root or not (path == root or path.startswith(root + "/")):
        return canonical_path(raw if raw else quote_path(path))
    rest = path[len(root) :]
    if raw:
        split = split_root(raw, root)
        decoded = _decoded(raw)
        if split is not None and decoded != rest:
            prefix, raw_rest = split
        elif decoded == rest:  # the server's raw_path leaves the prefix out
            prefix, raw_rest = b"", raw
        else:  # raw_path and path disagree: which one would the app read?
            raise InvalidPath(reason="its raw form and its decoded form differ")
    else:
        prefix, raw_rest = quote_path(root), quote_path(rest)
    if not raw_rest:
        return CanonicalPath(root, prefix)
    tail = canonical_path(raw_rest)  # a ".." that climbs out of the prefix is refused
    return CanonicalPath(root + tail.path, prefix + tail.raw)


def _decoded(raw: bytes) -> str:
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def split_root(raw: bytes, root: str) -> tuple[bytes, bytes] | None:
    """``raw`` (percent-encoded) as the bytes of the mount prefix ``root`` (decoded, no
    trailing slash) and the rest (empty, or from a ``/`` on), or None when ``raw`` does
    not start with ``root``.

    Example:
        >>> split_root(b"/%61pp/charges", "/app")
        (b'/%61pp', b'/charges')
    """
    depth = root.count("/")
    parts = raw.split(b"/", depth + 1)
    if len(parts) < depth + 1:
        return None
    prefix = b"/".join(parts[: depth + 1])
    # A server may send the prefix as configured (uvicorn's --root-path /%7Euser): as is.
    if _decoded(prefix) != root and prefix != root.encode("utf-8"):
        return None
    return prefix, raw[len(prefix) :]


def route_method(scope: Scope) -> str:
    """The method routes are matched on: a POST's allowed override, else the request's."""
    method: str = scope.get(ROUTE_METHOD) or scope["method"]
    return method


def request_id(scope: Scope) -> str:
    """The request's id: kept in ``scope["state"]``, taken from a well-formed
    ``X-Request-Id`` header or made up, so every layer reports the same one."""
    state = scope.get("state")
    if state is not None:
        rid: str | None = state.get("request_id")
        if rid is not None:
            return rid
    given = next((v for k, v in scope["headers"] if k == _REQUEST_ID_HEADER), None)
    return adopt_request_id(scope, given)


def adopt_request_id(scope: Scope, given: bytes | None) -> str:
    """``request_id`` for a caller that already found the first ``X-Request-Id`` value
    (``given``; None: the request has none), without a second look at the headers."""
    state = scope.setdefault("state", {})
    rid: str | None = state.get("request_id")
    if rid is None:
        if given is not None and _VALID_REQUEST_ID.fullmatch(given):
            rid = given.decode("ascii")
        else:
            rid = new_request_id()
        state["request_id"] = rid
    return rid


def new_request_id() -> str:
    """A fresh request id: a random UUID (version 4) as 32 hex digits."""
    if not _fresh_ids:
        raw = os.urandom(16 * 64)
        _fresh_ids.extend(
            f"{int.from_bytes(raw[i : i + 16]) & _UUID4_CLEAR | _UUID4_SET:032x}"
            for i in range(0, len(raw), 16)
        )
    return _fresh_ids.pop()


async def send_problem(
    send: Send,
    error: SurefootError,
    *,
    request_id: str,
    base: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with ``error`` as an RFC 9457 problem document."""
    out, body = problem_parts(error, request_id=request_id, base=base, headers=headers)
    await send({"type": "http.response.start", "status": error.status, "headers": out})
    await send({"type": "http.response.body", "body": body})


def problem_parts(
    error: SurefootError,
    *,
    request_id: str,
    base: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of ``error``'s problem response (``send_problem`` sends them;
    ``surefoot.wsgi`` answers them through WSGI): its status is ``error.status``."""
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
    return out, body
