"""Django's requests and responses as ``surefoot.wsgi``'s ``Request`` and ``Response``.

Rule 1: the view's own response object goes back to Django whenever the guard passed it
        through: the guard's headers (``RateLimit``, ``RateLimit-Policy``,
        ``Idempotency-Status``) are added to it, a streamed body is swapped for the guard's
        wrapper and ``Response.close`` joins its closers, so Django's WSGI handler settles
        the record and frees the slots when the server closes the response.
Rule 2: a response of the guard's own (a replay, a problem) becomes an ``HttpResponse``
        with exactly its status, reason, headers and body: no default ``Content-Type`` is
        added, and ``Set-Cookie`` lines are kept one by one.
Rule 3: the body is read from Django's request (``request.body``) and only when a guard
        needs it: ``wsgi.input`` in ``request.META`` is replaced by a reader of
        ``request.body``, since Django reads the request from its own stream.
Rule 4: what the guard canonicalised is what Django routes: ``request.path_info`` and
        ``request.path`` are set from the environ the guard rewrote, before the view runs.
"""

from __future__ import annotations

import io
from typing import Any

from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse

from surefoot.django._settings import user_of
from surefoot.wsgi import Request, Response

__all__ = ["from_django", "request_of", "synced", "to_django"]


class _BodyReader(io.RawIOBase):
    """``request.body`` as a file, read on first use (Rule 3)."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self._stream: io.BytesIO | None = None

    def readable(self) -> bool:
        return True

    def _open(self) -> io.BytesIO:
        if self._stream is None:
            self._stream = io.BytesIO(self._request.body)
        return self._stream

    def read(self, size: int | None = -1) -> bytes:
        return self._open().read(-1 if size is None else size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def request_of(request: Any, *, body: bool = True) -> Request:
    """The guard's view of a Django ``HttpRequest`` (or DRF ``Request``)."""
    django_request = getattr(request, "_request", request)
    meta = django_request.META
    if body and not isinstance(meta.get("wsgi.input"), _BodyReader):
        # Whatever the server gave (even a BytesIO), Django reads it through its own
        # stream: the guard must read request.body, never the server's input.
        meta["wsgi.input"] = _BodyReader(django_request)
    return Request.from_environ(meta, user=user_of(request))


def synced(request: Any) -> None:
    """Route the path the guard canonicalised (Rule 4)."""
    meta = request.META
    path_info = meta.get("PATH_INFO")
    if path_info is None:
        return
    text = path_info.encode("latin-1", "replace").decode("utf-8", "replace") or "/"
    if text != request.path_info:
        script = meta.get("SCRIPT_NAME", "")
        request.path_info = text
        request.path = (
            script.encode("latin-1", "replace").decode("utf-8", "replace").rstrip("/") + text
        )


def _headers(response: HttpResponseBase) -> list[tuple[str, str]]:
    headers = [(str(k), str(v)) for k, v in response.items()]
    headers.extend(("Set-Cookie", c.output(header="").strip()) for c in response.cookies.values())
    return headers


def from_django(response: HttpResponseBase) -> Response:
    """A view's response as the guard's ``Response``, the original kept as ``origin``."""
    reason = response.reason_phrase
    if isinstance(response, StreamingHttpResponse):
        return Response(
            response.status_code,
            _headers(response),
            response.streaming_content,
            reason=reason,
            origin=response,
        )
    content = response.content if isinstance(response, HttpResponse) else b""
    return Response(
        response.status_code, _headers(response), content, reason=reason, origin=response
    )


def to_django(response: Response) -> HttpResponseBase:
    """The guard's answer as the response Django sends (Rules 1 and 2)."""
    origin = response.origin
    if isinstance(origin, HttpResponseBase) and not response.replayed and response.error is None:
        for name, value in response.added_headers:
            origin[name] = value
        if isinstance(origin, StreamingHttpResponse) and not isinstance(response.body, bytes):
            origin.streaming_content = response.body
            origin._resource_closers.append(response.close)
        return origin
    body = response.body
    out: HttpResponseBase
    if isinstance(body, bytes):
        out = HttpResponse(body, status=response.status, reason=response.reason)
    else:  # pragma: no cover - a guard's own answers are bytes
        out = StreamingHttpResponse(body, status=response.status, reason=response.reason)
        out._resource_closers.append(response.close)
    del out["Content-Type"]  # Django's default: the guard's headers say what it is
    for name, value in response.headers:
        if name.lower() == "set-cookie":
            out.cookies.load(value)
        elif name in out:
            out[name] = f"{out[name]}, {value}"
        else:
            out[name] = value
    return out
