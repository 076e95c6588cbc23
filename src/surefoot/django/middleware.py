"""Django middlewares: idempotency keys and rate limits from ``settings.SUREFOOT``.

``RateLimitMiddleware`` goes before ``IdempotencyMiddleware`` (a refused request never
reserves a key), both after ``AuthenticationMiddleware`` (so an authenticated user is a
principal)::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "surefoot.django.RateLimitMiddleware",
        "surefoot.django.IdempotencyMiddleware",
        ...,
    ]

Rule 1: each middleware is the ``surefoot.wsgi`` guard of the settings (one per process);
        a middleware whose settings protect nothing raises ``MiddlewareNotUsed``, so Django
        leaves it out of the chain.
Rule 2: refusals (400, 409, 413, 422, 429, 503) are ``application/problem+json``
        ``HttpResponse``s from the one catalogue, answered without calling the view.
Rule 3: an admitted request's concurrency slots are freed once: after a plain response,
        or when Django closes a streamed one (its closers); also when the view raises.
Rule 4: the order is checked: with ``django.contrib.auth`` installed, the system check
        ``surefoot.E002`` refuses these middlewares before ``AuthenticationMiddleware``,
        and a request reaching them without ``request.user`` is refused with a
        ``ConfigurationError`` (500), never counted or keyed by its address alone.
Rule 5: a key is stored only for an answer of the view: ``process_view`` marks that the
        view was reached; an answer made before it (a CSRF 403, an ``APPEND_SLASH``
        redirect, a 404 of an unknown URL) releases the reservation (``NOT_EXECUTED``).
        So ``IdempotencyMiddleware`` goes after ``CsrfViewMiddleware``.
Rule 6: ``ProblemMiddleware`` answers a ``SurefootError`` a view raised (for example from
        ``transactional_claim``) with its problem response; other exceptions are Django's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpResponseBase, StreamingHttpResponse

from surefoot._asgi import IDEMPOTENCY_POLICY, NOT_EXECUTED
from surefoot.django._responses import from_django, request_of, synced, to_django
from surefoot.django._settings import cached
from surefoot.errors import ConfigurationError, SurefootError
from surefoot.wsgi import IdempotencyGuard, RateLimitGuard, Response, problem_response

__all__ = [
    "IdempotencyMiddleware",
    "ProblemMiddleware",
    "RateLimitHeadersMiddleware",
    "RateLimitMiddleware",
]

GetResponse = Callable[[Any], HttpResponseBase]
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"

#: Set on a request this middleware reserved a key for: ``@idempotent`` then leaves it to it.
GUARDED_ATTRIBUTE = "_surefoot_idempotency"
#: Where ``SurefootThrottle`` leaves the ``RateLimit`` fields for ``RateLimitHeadersMiddleware``.
HEADERS_ATTRIBUTE = "_surefoot_ratelimit_headers"


def authenticated(request: Any) -> None:
    """Refuse a request that reached surefoot without ``request.user`` while
    ``django.contrib.auth`` is installed (Rule 4): every user would be its address."""
    if "user" in vars(getattr(request, "_request", request)):
        return
    from django.apps import apps

    if apps.is_installed("django.contrib.auth"):
        raise ConfigurationError(
            "settings.MIDDLEWARE: surefoot's middlewares go after "
            f"{AUTHENTICATION} (request.user is missing, so every user behind one "
            "address would be one principal and share idempotency keys)"
        )


def idempotency_guard() -> IdempotencyGuard | None:
    """The process's ``IdempotencyGuard`` of ``settings.SUREFOOT`` (None: nothing protected)."""
    return cached("idempotency", lambda settings: settings.idempotency_guard())


def rate_limit_guard() -> RateLimitGuard | None:
    """The process's ``RateLimitGuard`` of ``settings.SUREFOOT`` (None: no policies)."""
    return cached("rate_limit", lambda settings: settings.rate_limit_guard())


class IdempotencyMiddleware:
    """Retried writes execute once and replay the first response (``[idempotency]`` and
    ``[[routes]]`` of ``settings.SUREFOOT``).

    Example:
        >>> MIDDLEWARE = [..., "surefoot.django.IdempotencyMiddleware"]
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        if self.guard() is None:
            raise MiddlewareNotUsed("settings.SUREFOOT protects no route with idempotency keys")

    def guard(self) -> IdempotencyGuard | None:
        """The guard of each request: the process's one of ``settings.SUREFOOT`` (a
        subclass may return its own, built with other arguments)."""
        return idempotency_guard()

    def __call__(self, request: Any) -> HttpResponseBase:
        guard = self.guard()
        if guard is None:  # the settings changed (tests): nothing is protected now
            return self.get_response(request)

        req = request_of(request)
        canonical = req.canonicalize(allow_method_override=guard.allow_method_override) is None
        if canonical and guard.select(req.scope) is None:  # not protected: no guard work
            synced(request)
            return self.get_response(request)
        authenticated(request)

        def call() -> Response:
            if req.scope.get(IDEMPOTENCY_POLICY) is not None:  # a key is reserved
                setattr(request, GUARDED_ATTRIBUTE, True)  # @idempotent steps aside
                req.scope[NOT_EXECUTED] = True  # until process_view (Rule 5)
            synced(request)
            return from_django(self.get_response(request))

        return to_django(guard.handle(req, call))

    def process_view(self, request: Any, view: Any, args: Any, kwargs: Any) -> None:
        """The view is reached: its answer is the one to store (Rule 5)."""
        scope = request.META.get("surefoot.scope")
        if isinstance(scope, dict):
            scope.pop(NOT_EXECUTED, None)


class RateLimitMiddleware:
    """Per-client rate limits (``[rate_limit]`` of ``settings.SUREFOOT``): 429 problems with
    ``Retry-After``, and the ``RateLimit`` fields on every response.

    Example:
        >>> MIDDLEWARE = [..., "surefoot.django.RateLimitMiddleware", ...]
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        if self.guard() is None:
            raise MiddlewareNotUsed("settings.SUREFOOT has no rate-limit policies")

    def guard(self) -> RateLimitGuard | None:
        """The guard of each request: the process's one of ``settings.SUREFOOT`` (a
        subclass may return its own, built with other arguments)."""
        return rate_limit_guard()

    def __call__(self, request: Any) -> HttpResponseBase:
        guard = self.guard()
        if guard is None:
            return self.get_response(request)
        authenticated(request)
        return limited(guard, request, self.get_response)


def limited(guard: RateLimitGuard, request: Any, view: GetResponse) -> HttpResponseBase:
    """``view(request)`` under ``guard``: refused, or answered with the ``RateLimit``
    fields added and the slots freed by Rule 3."""
    checked = guard.check(request_of(request, body=False))
    if checked is None:
        synced(request)
        return view(request)
    if isinstance(checked, Response):
        return to_django(checked)
    verdict = checked
    try:
        synced(request)
        response = view(request)
    except BaseException:
        guard.release(verdict)
        raise
    for name, value in verdict.headers:
        response[name.decode("latin-1")] = value.decode("latin-1")
    if verdict.held:
        if isinstance(response, StreamingHttpResponse):
            response._resource_closers.append(lambda: guard.release(verdict))
        else:
            guard.release(verdict)
    return response


class RateLimitHeadersMiddleware:
    """Adds the ``RateLimit`` fields ``SurefootThrottle`` decided to DRF's responses,
    its 429s included (DRF's throttles cannot touch the response themselves).

    Example:
        >>> MIDDLEWARE = [..., "surefoot.django.RateLimitHeadersMiddleware"]
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> HttpResponseBase:
        response = self.get_response(request)
        for name, value in getattr(request, HEADERS_ATTRIBUTE, ()):
            if name not in response:
                response[name] = value
        return response


class ProblemMiddleware:
    """Answers a ``SurefootError`` raised by a view (``transactional_claim``'s 400, 409,
    422, 503) with its ``application/problem+json`` response (Rule 6).

    Example:
        >>> MIDDLEWARE = [..., "surefoot.django.ProblemMiddleware"]
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: Any, exception: Exception) -> HttpResponseBase | None:
        if not isinstance(exception, SurefootError):
            return None
        return to_django(problem_response(exception, request_of(request, body=False)))
