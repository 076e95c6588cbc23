"""``HTTPProblem``: a surefoot problem as the ``HTTPException`` Flask's error handling expects.

A guard's refusal (409, 422, 400, 413, 429, 503) and a ``SurefootError`` a view raises
both travel through Flask's own error handling as an ``HTTPProblem``: an instance of a
subclass of ``HTTPProblem`` and of werkzeug's exception for the status
(``TooManyRequests`` for 429, ``Conflict`` for 409...), so ``@app.errorhandler(429)`` and
``@app.errorhandler(TooManyRequests)`` receive it.

Rule 1: without a handler of the app's, the answer is the problem+json response the
        ASGI middlewares send (same body, same headers): ``get_response()`` returns it.
Rule 2: a handler of the app's sees the catalogue error (``.error``), its problem
        response (``.problem``, ``.get_response()``) and its headers (``.headers``).
Rule 3: a problem is never rendered from another exception's text (the catalogue's Rule 1):
        ``description`` is the catalogue's ``detail``.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from flask import Response as FlaskResponse
from werkzeug.exceptions import HTTPException, default_exceptions

from surefoot.errors import SurefootError
from surefoot.wsgi import Response

__all__ = ["HTTPProblem", "flask_response"]


class HTTPProblem(HTTPException):
    """A surefoot problem raised through Flask's error handling.

    Example:
        >>> @app.errorhandler(429)
        ... def too_many(e):
        ...     if isinstance(e, HTTPProblem):
        ...         wait = e.error.fields["retry_after"]
        ...         return render_template("slow_down.html", wait=wait), 429, e.headers
        ...     return e

    Attributes:
        error: the catalogue error (``RateLimitExceeded``, ``IdempotencyKeyReused``...).
        problem: the problem response (``surefoot.wsgi.Response``).
        headers: its headers (``Retry-After``, ``RateLimit``, ``X-Request-Id``...),
            without ``Content-Type`` and ``Content-Length``, to put on a page of one's own.
        code: its HTTP status.

    A handler's response keeps the problem's ``Retry-After``, ``RateLimit`` and
    ``X-Request-Id`` headers unless it sets them itself (``Surefoot``'s ``after_request``).
    """

    code: int | None = 500
    _classes: ClassVar[dict[int, type[HTTPProblem]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, problem: Response, response: FlaskResponse) -> None:
        error = problem.error
        if error is None:
            raise TypeError("HTTPProblem needs a problem response (a guard's refusal)")
        super().__init__(description=error.detail, response=response)
        self.error: SurefootError = error
        self.problem = problem
        self.code = problem.status

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The problem's headers, without those of its body."""
        return [
            (name, value)
            for name, value in self.problem.headers
            if name.lower() not in ("content-type", "content-length")
        ]

    @classmethod
    def of(cls, problem: Response, response_class: type[FlaskResponse]) -> HTTPProblem:
        """The ``HTTPProblem`` of a guard's problem response, of the class for its status."""
        kind = cls._class_for(problem.status)
        return kind(problem, flask_response(problem, response_class))

    @classmethod
    def _class_for(cls, status: int) -> type[HTTPProblem]:
        kind = cls._classes.get(status)
        if kind is None:
            with cls._lock:
                kind = cls._classes.get(status)
                if kind is None:
                    base = default_exceptions.get(status)
                    bases: tuple[type[Any], ...] = (cls,) if base is None else (cls, base)
                    name = f"HTTPProblem{status}" if base is None else f"{base.__name__}Problem"
                    kind = type(name, bases, {"code": status, "__module__": __name__})
                    cls._classes[status] = kind
        return kind

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.code} {self.error.code}>"


def flask_response(answer: Response, response_class: type[FlaskResponse]) -> FlaskResponse:
    """A guard's own answer (a problem or a replay) as a Flask response, headers in order."""
    body = answer.body if isinstance(answer.body, bytes) else b"".join(answer.body)
    return response_class(body, status=answer.status, headers=answer.headers)
