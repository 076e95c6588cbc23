"""Running a Flask view under an ``IdempotencyGuard``: the view's answer as the guard's
``Response``, and the guard's answer back as Flask's.

Rule 1: the body is read once, within ``max_request_body`` (and Flask's own
        ``MAX_CONTENT_LENGTH``), through ``request.get_data(cache=True)``: the view reads
        it again from Flask's cache, ``request.form`` and ``request.json`` included. A
        body whose ``Content-Length`` is over the bound is not read at all (413); a body
        without one (chunked) is read up to one byte past the bound, and that byte means
        413, never a truncated body. A body werkzeug cannot read (bad chunks) is the
        catalogue's 400. The extension reads it in its first ``before_request`` hook,
        before another hook can parse a form and leave no raw bytes to fingerprint.
Rule 2: the view's answer is what Flask would send: its return value through
        ``make_response``, an exception through the app's error handlers
        (``handle_user_exception``: ``abort(404)`` is a stored 404). An exception no
        handler takes goes on to Flask (a 500) after the guard settled the key.
Rule 3: a streamed view (a generator, ``stream_with_context``) stays streamed: its chunks
        (``str`` encoded as UTF-8) go through the guard, which settles the key when the
        last one is handed out or the response is closed; ``Response.close`` is
        registered with ``call_on_close``, so the server's ``close()`` reaches it.
Rule 4: the view's own response object goes out when the guard let the view answer (with
        the headers the guard added); a replay or a refusal is built from the guard's
        answer, and a refusal is raised as an ``HTTPProblem`` (Flask's error handling).
Rule 5: one reservation per request: a guard reached while another holds this request's
        key (a view wrapped twice) runs the view inside the outer one.
Rule 6: what settles a streamed answer is also kept in ``g`` (``pending``) until the
        response is closed, so the teardown can settle it when the response never went out
        (an ``after_request`` hook raised). werkzeug never closes a ``direct_passthrough``
        response (``send_file``), only its body: ``hold`` chains onto the body's ``close``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from flask import Flask, g, request
from flask import Response as FlaskResponse
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import BadRequest as WerkzeugBadRequest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import ClosingIterator

from surefoot.errors import BadRequest, RequestBodyTooLarge, SurefootError
from surefoot.flask._problem import HTTPProblem, flask_response
from surefoot.wsgi import IdempotencyGuard, Request, Response, problem_response

__all__ = ["abandon", "as_exception", "hold", "protect", "read_body"]

View = Callable[[], ResponseReturnValue]
#: ``g`` attributes: the request's key is held (Rule 5); closers not run yet (Rule 6).
_HOLDING = "_surefoot_holding"
_PENDING = "_surefoot_pending"


def as_exception(app: Flask, problem: Response) -> HTTPProblem:
    """The ``HTTPProblem`` to raise for a guard's problem response."""
    return HTTPProblem.of(problem, app.response_class)


def pending() -> list[Callable[[], object]]:
    """This request's closers not run yet (Rule 6)."""
    closers: list[Callable[[], object]] | None = g.get(_PENDING)
    if closers is None:
        closers = []
        setattr(g, _PENDING, closers)
    return closers


def abandon() -> None:
    """Run the closers of a response that never went out (Rule 6)."""
    closers = pending()
    while closers:
        closers.pop()()


def hold(
    response: FlaskResponse,
    close: Callable[[], None],
    abandoned: Callable[[], object] | None = None,
) -> None:
    """Run ``close`` when ``response`` is closed, or ``abandoned`` (default: ``close``) at
    a teardown with an exception if it never is (Rule 6)."""
    closers = pending()
    entry: Callable[[], object] = close if abandoned is None else abandoned
    closers.append(entry)

    def closed() -> None:
        if entry in closers:
            closers.remove(entry)
        close()

    if not response.direct_passthrough:
        response.call_on_close(closed)
        return
    # werkzeug hands a direct_passthrough body (send_file's file wrapper) to the server
    # as it is and never calls Response.close: the body's own close() must do it.
    body = response.response
    previous = getattr(body, "close", None)

    def chained() -> None:
        try:
            if previous is not None:
                previous()
        finally:
            closed()

    try:
        body.close = chained  # type: ignore[union-attr]  # keeps the server's sendfile
    except AttributeError:
        response.response = ClosingIterator(cast("Iterable[bytes]", body), [closed])


def protect(
    app: Flask,
    guard: IdempotencyGuard,
    view: View,
    *,
    user: object | None = None,
    vet: Callable[[Request], None] | None = None,
) -> ResponseReturnValue:
    """Run ``view`` once under ``guard`` (or not at all: a replay, a refusal).

    ``user``: the authenticated user, in the scope the principal resolver reads;
    ``vet``: called with a protected request before its key is reserved (it may raise).
    """
    if g.get(_HOLDING):
        return view()  # Rule 5
    req = Request.from_environ(request.environ, user=user)
    refused = req.canonicalize(allow_method_override=guard.allow_method_override)
    if refused is not None:
        raise as_exception(app, problem_response(refused, req, problem_base=guard.problem_base))
    selected = guard.select(req.scope)
    if selected is None:
        return view()
    if isinstance(selected, SurefootError):  # pragma: no cover - canonicalized above
        raise as_exception(app, problem_response(selected, req, problem_base=guard.problem_base))
    if vet is not None:
        vet(req)
    try:
        body = read_body(guard.max_request_body)
    except SurefootError as exc:
        raise as_exception(
            app, problem_response(exc, req, problem_base=guard.problem_base)
        ) from None
    req = Request.from_environ(request.environ, body)
    made: list[FlaskResponse] = []
    chunks: list[_Chunks] = []

    def call() -> Response:
        response = _respond(app, view)
        made.append(response)
        guarded = _as_guarded(response)
        if isinstance(guarded.body, _Chunks):
            chunks.append(guarded.body)
        return guarded

    setattr(g, _HOLDING, True)
    try:
        result = guard.handle(req, call)
    finally:
        setattr(g, _HOLDING, False)
    if made and result.origin is made[0] and result.error is None and not result.replayed:
        response = made[0]
        for name, value in result.added_headers:
            response.headers.add(name, value)
        if not isinstance(result.body, bytes):
            response.response = result.body

            def abandoned() -> None:
                # Once sent, the body settles itself: a stream_with_context generator
                # tears the request down from inside, and must not be closed from there.
                if not (chunks and chunks[0].iterator is not None):
                    result.close()

            hold(response, result.close, abandoned)
        return response
    if result.error is not None:
        raise as_exception(app, result)
    return flask_response(result, app.response_class)


def read_body(limit: int) -> bytes | None:
    """The body within ``limit`` (Rule 1); None when its length says it is over it.

    Raises:
        RequestBodyTooLarge: the body is over ``limit`` (or ``MAX_CONTENT_LENGTH``).
        BadRequest: werkzeug cannot read it (a malformed chunked body).
    """
    length = request.content_length
    if length is not None and length > limit:
        return None  # the guard answers 413 from CONTENT_LENGTH, reading nothing
    bound = request.max_content_length
    if bound is not None and bound < limit:
        limit = bound
    if length is None:
        # werkzeug cuts a body without a length at max_content_length, silently: one
        # byte more than the bound tells a body over it from one that fits.
        request.max_content_length = limit + 1
    try:
        data = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise RequestBodyTooLarge(limit=limit) from None
    except WerkzeugBadRequest as exc:
        raise BadRequest(reason=_reason(exc)) from None
    if len(data) > limit:
        raise RequestBodyTooLarge(limit=limit)
    return data


def _reason(exc: WerkzeugBadRequest) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(cause) if cause is not None else ""
    return text.rstrip(".") or "the body could not be read"


def _respond(app: Flask, view: View) -> FlaskResponse:
    """What Flask would send for ``view`` (Rule 2)."""
    try:
        value = view()
    except Exception as exc:
        value = app.handle_user_exception(exc)  # re-raises what no handler takes
    return app.make_response(value)


def _as_guarded(response: FlaskResponse) -> Response:
    """A Flask response as the guard's ``Response`` (Rule 3)."""
    headers = response.headers.to_wsgi_list()
    body: bytes | Iterable[bytes] = (
        _Chunks(response.response) if response.is_streamed else response.get_data()
    )
    return Response(response.status_code, headers, body, origin=response)


class _Chunks:
    """A streamed Flask body as bytes chunks, its ``close`` passed on."""

    __slots__ = ("iterable", "iterator")

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.iterable = iterable
        self.iterator: Iterator[Any] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.iterator is None:
            self.iterator = iter(self.iterable)
        chunk = next(self.iterator)
        if isinstance(chunk, str):
            return chunk.encode("utf-8")
        return chunk if isinstance(chunk, bytes) else bytes(chunk)

    def close(self) -> None:
        close = getattr(self.iterable, "close", None)
        if close is not None:
            close()
