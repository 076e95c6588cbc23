"""``Request`` and ``Response``: one request and its answer, seen from a WSGI environ.

Rule 1: one rule for both stacks. A ``Request`` carries the ASGI-shaped ``scope`` every
        surefoot helper reads (identity, canonical paths, routes, request ids, limits,
        fingerprints), built once per environ and kept in it (``"surefoot.scope"``): the
        layers of one request share it, as ASGI layers share theirs.
Rule 2: what the routes matched is what the view sees. Routes match the full path,
        ``SCRIPT_NAME`` + ``PATH_INFO`` (the scope's ``root_path`` is ``SCRIPT_NAME``, as
        ASGI's ``path`` includes its ``root_path``). After ``canonicalize`` the environ's
        ``PATH_INFO`` is the canonical path after the mount prefix, its bytes as
        PEP 3333 says (latin-1); ``SCRIPT_NAME`` is never changed, and a path that leaves
        it is refused (``InvalidPath``). Method-override headers the scope dropped are
        dropped from the environ.
Rule 3: a body is read at most once, within its bound (``RequestBodyTooLarge``), from
        ``wsgi.input`` (``CONTENT_LENGTH``, or to the end when the server marks the input
        terminated or the request is chunked); it is then put back as ``io.BytesIO`` so
        the view reads it again.
Rule 4: a ``Response`` whose body is an iterable is settled by iterating it and calling
        ``close()``; ``close`` runs every closer once, each even when another raises.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes
from wsgiref.util import is_hop_by_hop

from surefoot._asgi import CANONICAL, Scope, canonicalize, problem_parts, request_id, split_root
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    BadRequest,
    InvalidPath,
    RequestBodyTooLarge,
    SurefootError,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment as Environ

__all__ = ["Request", "Response", "problem_response"]

_SCOPE_KEY = "surefoot.scope"
_CHUNK = 64 * 1024
_OVERRIDES = ("HTTP_X_HTTP_METHOD_OVERRIDE", "HTTP_X_METHOD_OVERRIDE", "HTTP_X_HTTP_METHOD")
# What stays raw when a decoded PATH_INFO is encoded again: as ``surefoot._paths.quote_path``,
# so that what canonicalize refuses raw (";", "\\") is still there to refuse.
_PATH_SAFE = "/!$&'()*+,=:@;\\"


def _latin1(text: str) -> bytes:
    return text.encode("latin-1", "replace")


class Request:
    """One request: its WSGI environ, the ASGI-shaped scope built from it, and its body.

    Example:
        >>> req = Request.from_environ(environ)  # Django: request.META; Flask: request.environ
        >>> req = Request.from_environ(request.META, request.body, user=request.user)

    Attributes:
        environ: the WSGI environ.
        scope: what every surefoot helper reads (``type``, ``method``, ``path``,
            ``raw_path``, ``query_string``, ``headers``, ``client``, ``server``,
            ``scheme``, ``state``, ``user`` when given, and ``"wsgi.environ"``); an adapter
            may add keys for its own resolvers.
        body: the body, or None until a guard needs it (then read from ``wsgi.input``).
    """

    __slots__ = ("body", "environ", "scope")

    def __init__(self, environ: Environ, scope: Scope, body: bytes | None = None) -> None:
        self.environ = environ
        self.scope = scope
        self.body = body

    @classmethod
    def from_environ(
        cls, environ: Environ, body: bytes | None = None, *, user: object | None = None
    ) -> Request:
        """The request of ``environ``; ``body`` when the framework has read it already,
        ``user``: an authenticated user (``is_authenticated`` and ``identity`` or
        ``display_name``) for ``Identity(use_user=True)``."""
        scope = environ.get(_SCOPE_KEY)
        if scope is None:
            scope = environ[_SCOPE_KEY] = _scope(environ)
        if user is not None:
            scope["user"] = user
        if body is None:
            body = scope.get("surefoot.body")
        return cls(environ, scope, body)

    @property
    def request_id(self) -> str:
        """The request's id, shared by every layer (taken from ``X-Request-Id`` or made up)."""
        return request_id(self.scope)

    def canonicalize(self, *, allow_method_override: bool) -> SurefootError | None:
        """``surefoot._asgi.canonicalize`` on the scope, written back to the environ."""
        scope = self.scope
        if scope.get(CANONICAL):  # an outer layer did it, and wrote the environ back
            return None
        headers = scope["headers"]
        refused = canonicalize(scope, allow_method_override=allow_method_override)
        if refused is not None:
            return refused
        environ = self.environ
        raw: bytes = scope["raw_path"]
        root: str = scope["root_path"]
        split = split_root(raw, root) if root else (b"", raw)
        if split is None:  # SCRIPT_NAME and PATH_INFO do not join at a "/"
            return InvalidPath(reason="it does not continue its mount prefix with '/'")
        path_info = unquote_to_bytes(split[1]).decode("latin-1")  # PEP 3333: bytes as latin-1
        if environ.get("PATH_INFO", "") != path_info:
            environ["PATH_INFO"] = path_info
        if scope["headers"] is not headers:  # override headers were dropped
            for name in _OVERRIDES:
                environ.pop(name, None)
        return None

    def read_body(self, limit: int) -> bytes:
        """The body, read at most once and within ``limit`` bytes (Rule 3).

        Raises:
            RequestBodyTooLarge: the body is longer than ``limit``.
            BadRequest: the body ended before its ``Content-Length``, or could not be read.
        """
        if self.body is not None:
            if len(self.body) > limit:
                raise RequestBodyTooLarge(limit=limit)
            return self.body
        environ = self.environ
        stream = environ.get("wsgi.input")
        length_text = str(environ.get("CONTENT_LENGTH") or "").strip()
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        try:
            if length_text and not chunked:
                if not length_text.isdigit():
                    raise BadRequest(reason="the Content-Length is not a number")
                length = int(length_text)
                if length > limit:
                    raise RequestBodyTooLarge(limit=limit)
                body = _read_exactly(stream, length)
            elif stream is not None and (chunked or environ.get("wsgi.input_terminated")):
                body = _read_to_end(stream, limit)
            else:
                body = b""  # no length and an unterminated input: PEP 3333 says no body
        except (RequestBodyTooLarge, BadRequest):
            raise
        except Exception:  # the server's own error for a client gone mid-body
            raise BadRequest(reason="the request body could not be read") from None
        self.body = body
        self.scope["surefoot.body"] = body
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return body


def _read_exactly(stream: Any, length: int) -> bytes:
    chunks: list[bytes] = []
    left = length
    while left > 0:
        chunk = stream.read(min(left, _CHUNK)) if stream is not None else b""
        if not chunk:
            raise BadRequest(reason="the body ended before its Content-Length")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_to_end(stream: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise RequestBodyTooLarge(limit=limit)
        chunks.append(chunk)


#: Environ keys and the header names they carry (``b""``: none), at most ``_NAMES_KEPT``.
_NAMES: dict[str, bytes] = {
    # Some servers copy these; CONTENT_TYPE and CONTENT_LENGTH are the ones (read below).
    "HTTP_CONTENT_TYPE": b"",
    "HTTP_CONTENT_LENGTH": b"",
}
_NAMES_KEPT = 1024


def _header_name(key: str) -> bytes:
    """The header name an environ key carries, remembered (clients choose header names:
    past ``_NAMES_KEPT`` keys, a new one is worked out each time and not kept)."""
    name = _latin1(key[5:].replace("_", "-").lower()) if key.startswith("HTTP_") else b""
    if len(_NAMES) < _NAMES_KEPT:
        _NAMES[key] = name
    return name


def _scope(environ: Environ) -> Scope:
    """The ASGI-shaped scope of a WSGI environ (Rule 1)."""
    headers: list[tuple[bytes, bytes]] = []
    names = _NAMES
    for key, value in environ.items():
        name = names.get(key)
        if name is None:
            name = _header_name(key)
        if name:
            text = value if type(value) is str else str(value)
            headers.append((name, text.encode("latin-1", "replace")))
    for key, header in (("CONTENT_TYPE", b"content-type"), ("CONTENT_LENGTH", b"content-length")):
        value = environ.get(key)
        if value:
            headers.append((header, _latin1(str(value))))
    script = str(environ.get("SCRIPT_NAME", "")).rstrip("/")
    path_info = str(environ.get("PATH_INFO", ""))
    path = _latin1(script + path_info).decode("utf-8", "replace") or "/"
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")).partition("/")[2] or "1.1",
        "method": str(environ.get("REQUEST_METHOD", "GET")).upper(),
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": path,
        "query_string": _latin1(environ.get("QUERY_STRING", "")),
        "root_path": _latin1(script).decode("utf-8", "replace"),
        "raw_path": _raw_path(environ, script, path_info),
        "headers": headers,
        "state": {},
        "wsgi.environ": environ,
    }
    address = environ.get("REMOTE_ADDR")
    if address:
        try:
            port = int(environ.get("REMOTE_PORT") or 0)
        except ValueError:
            port = 0
        scope["client"] = (address, port)
    server = environ.get("SERVER_NAME")
    if server:
        try:
            scope["server"] = (server, int(environ.get("SERVER_PORT") or 0))
        except ValueError:
            scope["server"] = (server, None)
    return scope


def _raw_path(environ: Environ, script: str, path_info: str) -> bytes:
    """The path as the client sent it, when the server tells (gunicorn: ``RAW_URI``; uWSGI,
    mod_wsgi: ``REQUEST_URI``) and it is the path of ``SCRIPT_NAME`` + ``PATH_INFO``:
    canonicalize works on those bytes, as on ASGI's ``raw_path``, and so sees an encoded
    slash. A raw URI without the mount prefix that spells ``PATH_INFO`` (a proxy stripped
    the prefix, and ``ProxyFix`` put it in ``SCRIPT_NAME``) is the part after it. Otherwise
    (no raw URI, or one outside the mount that an earlier layer's rewrite left behind)
    ``PATH_INFO``'s bytes encoded again: ``%2F`` cannot be told from ``/`` then."""
    full = _latin1(script + path_info)
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        sent = _latin1(raw.partition("?")[0])
        if not script:
            return sent
        decoded = unquote_to_bytes(sent)
        if decoded == full:
            return sent
        if decoded == _latin1(path_info):
            return quote(_latin1(script), safe=_PATH_SAFE).encode("ascii") + sent
        if split_root(sent, _latin1(script).decode("utf-8", "replace")) is not None:
            return sent
    return quote(full, safe=_PATH_SAFE).encode("ascii")


class Response:
    """A status, headers and a body: what a view answered, or what a guard answers.

    Example:
        >>> Response(201, [("Content-Type", "application/json")], b'{"id": 1}')
        >>> Response(200, [("Content-Type", "text/plain")], iter([b"a", b"b"]))  # streamed

    Attributes:
        status, headers, body, reason: the response (``headers`` as WSGI's ``str`` pairs;
            ``body`` bytes, or an iterable of bytes to stream and then ``close()``).
        origin: the adapter's own response object, passed through untouched.
        error: the problem a guard answered with (None for the view's own response).
        added_headers: headers a guard appended to the view's response (also in ``headers``).
        replayed: True for a stored response replayed (``Idempotent-Replayed: true``).

    Warning:
        A streamed body settles its idempotency record when it is exhausted or closed,
        and frees concurrency slots on ``close()``: whoever sends it must call ``close()``
        (a WSGI server does, on the iterable a middleware returns).
    """

    __slots__ = (
        "_closed",
        "_closers",
        "added_headers",
        "body",
        "error",
        "headers",
        "origin",
        "reason",
        "replayed",
        "status",
    )

    def __init__(
        self,
        status: int,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | Iterable[bytes] = b"",
        *,
        reason: str | None = None,
        origin: object | None = None,
    ) -> None:
        self.status = status
        self.headers: list[tuple[str, str]] = list(headers)
        self.body = body
        if not reason:  # a status line needs a reason phrase (wsgiref asserts it)
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = "Unknown"
        self.reason = reason
        self.origin = origin
        self.error: SurefootError | None = None
        self.added_headers: list[tuple[str, str]] = []
        self.replayed = False
        self._closers: list[Callable[[], None]] = []
        self._closed = False

    @property
    def status_line(self) -> str:
        """The WSGI status line (``"201 Created"``)."""
        return f"{self.status} {self.reason}".rstrip()

    def add_headers(self, headers: Iterable[tuple[str, str]]) -> None:
        """Append headers a guard adds to the view's response."""
        for pair in headers:
            self.headers.append(pair)
            self.added_headers.append(pair)

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` on ``close()`` (after the body's own ``close``)."""
        self._closers.append(closer)

    def close(self) -> None:
        """Close the body and run the closers, once; each runs even if one raises."""
        if self._closed:
            return
        self._closed = True
        body = self.body
        calls: list[Callable[[], None]] = []
        close = None if isinstance(body, bytes) else getattr(body, "close", None)
        if close is not None:
            calls.append(close)
        calls.extend(self._closers)
        _run_all(calls)

    def __iter__(self) -> Iterator[bytes]:
        """The body's chunks (one for a ``bytes`` body)."""
        body = self.body
        if isinstance(body, bytes):
            return iter((body,))
        return iter(body)

    def __repr__(self) -> str:
        return f"<Response {self.status_line}>"


def _run_all(calls: list[Callable[[], None]]) -> None:
    """Call each, even when one raises; the first exception is raised at the end."""
    if not calls:
        return
    try:
        calls[0]()
    finally:
        _run_all(calls[1:])


def problem_response(
    error: SurefootError,
    request: Request,
    *,
    problem_base: str = DEFAULT_PROBLEM_BASE,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """``error`` as the problem response the ASGI middlewares send (same body, same headers).

    Example:
        >>> problem_response(IdempotencyKeyMissing(method="POST", path="/charges",
        ...     header="Idempotency-Key"), Request.from_environ(environ))
        <Response 400 Bad Request>
    """
    extra = [(_latin1(k.lower()), _latin1(v)) for k, v in headers]
    raw, body = problem_parts(
        error, request_id=request.request_id, base=problem_base, headers=extra
    )
    response = Response(error.status, _text_headers(raw), body)
    response.error = error
    return response


def _text_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """ASGI's byte pairs as WSGI's ``str`` pairs, without the hop-by-hop headers that a
    WSGI app must never set (PEP 3333)."""
    out = []
    for name, value in headers:
        text = name.decode("latin-1")
        if not is_hop_by_hop(text):
            out.append((text, value.decode("latin-1")))
    return out


def _byte_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """WSGI's ``str`` pairs as ASGI's lower-case byte pairs (what a record stores)."""
    return [(_latin1(name.lower()), _latin1(value)) for name, value in headers]
