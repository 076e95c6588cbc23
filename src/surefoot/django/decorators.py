"""``@idempotent`` and ``@rate_limit``: surefoot's guards around one Django view.

Rule 1: a decorator builds its policy when it decorates (a bad limit or field is a
        ``ConfigurationError`` at import) and its guard on the first request, from
        ``settings.SUREFOOT``'s stores and identity (one guard per view and process).
Rule 2: ``@idempotent`` steps aside for a request ``IdempotencyMiddleware`` reserved a key
        for already: one key is reserved once, never twice (which would answer 409). A
        request the middleware let through without a key (a laxer policy) meets the
        decorator's own policy.
Rule 3: ``@rate_limit`` counts under its own policy name (by default the view's
        ``module.qualname``), also with ``policy=``: the settings' policy's limits, routes
        and tiers under the view's name, so two decorated views, or a decorated view and
        ``RateLimitMiddleware``, never share counters unless they name the same policy.
Rule 4: ``@idempotent`` reads the body from ``request.body``: a view behind a middleware
        that read a multipart form first (``CsrfViewMiddleware`` reads ``request.POST``)
        cannot be protected by the decorator, and says so (a ``ConfigurationError``, 500);
        ``IdempotencyMiddleware`` reads the body before any view middleware.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.http import HttpResponseBase

from surefoot.django._responses import from_django, request_of, synced, to_django
from surefoot.django._settings import cached
from surefoot.django.middleware import GUARDED_ATTRIBUTE, limited
from surefoot.errors import ConfigurationError
from surefoot.idempotency import IdempotencyPolicy
from surefoot.ratelimit import RateLimitPolicy
from surefoot.wsgi import IdempotencyGuard, RateLimitGuard, Response

__all__ = ["idempotent", "rate_limit"]

View = TypeVar("View", bound=Callable[..., HttpResponseBase])
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def idempotent(policy: IdempotencyPolicy | None = None, **fields: Any) -> Callable[[View], View]:
    """Protect one view with idempotency keys.

    Example:
        >>> @idempotent(required=True, ttl=86400)
        ... def create_charge(request): ...

    Args:
        policy: the ``IdempotencyPolicy``; or its fields as keywords (``required``,
            ``ttl``, ``methods``, ``on_server_error``...), the in-process defaults otherwise.

    The store and the principal are ``settings.SUREFOOT``'s (``[idempotency] store``).
    """
    if policy is not None and fields:
        raise ConfigurationError("idempotent: expected a policy or its fields, not both")
    chosen = policy if policy is not None else IdempotencyPolicy(**fields)

    def decorate(view: View) -> View:
        def guard() -> IdempotencyGuard:
            def build(settings: Any) -> IdempotencyGuard:
                built: IdempotencyGuard = settings.idempotency_guard(policy=chosen, routes={})
                return built

            return cached(("idempotent", id(wrapper)), build)

        @functools.wraps(view)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if getattr(request, GUARDED_ATTRIBUTE, False):  # Rule 2
                return view(request, *args, **kwargs)
            if str(request.method).upper() in chosen.methods:
                _readable(request, view)  # Rule 4

            def call() -> Response:
                synced(request)
                return from_django(view(request, *args, **kwargs))

            return to_django(guard().handle(request_of(request), call))

        return wrapper  # type: ignore[return-value]

    return decorate


def _readable(request: Any, view: Callable[..., Any]) -> None:
    """Raise when ``request.body`` was consumed before the guard could read it (Rule 4)."""
    from django.http.request import RawPostDataException

    django_request = getattr(request, "_request", request)
    try:
        django_request.body  # noqa: B018 - read and kept by Django
    except RawPostDataException:
        raise ConfigurationError(
            f"@idempotent on {view.__qualname__}: the request body was read as a form "
            "before the view (CsrfViewMiddleware reads request.POST), so the key cannot be "
            "checked against it; protect the route with IdempotencyMiddleware in "
            "settings.SUREFOOT's routes, or read request.body in a middleware before "
            "CsrfViewMiddleware"
        ) from None


def rate_limit(
    *limits: str,
    policy: str | None = None,
    name: str | None = None,
    algorithm: str = "sliding_window",
    **options: Any,
) -> Callable[[View], View]:
    """Limit one view per client.

    Example:
        >>> @rate_limit("10/minute", "2/second")
        ... def search(request): ...
        >>> @rate_limit(policy="api")  # a policy of settings.SUREFOOT, by its name
        ... def export(request): ...

    Args:
        limits: ``"AMOUNT/UNIT"`` strings, all of which must allow a request.
        policy: the name of a ``[[rate_limit.policies]]`` policy of ``settings.SUREFOOT``
            instead of ``limits`` (its routes, tiers and overrides apply).
        name: the policy's name in headers, problems and counters (default: the view's
            ``module.qualname``).
        algorithm: the algorithm of the limits.
        options: more ``RateLimitPolicy`` fields (``per_route``, ``tiers``, ``shadow``...).
    """
    if (policy is None) == (not limits):
        raise ConfigurationError(
            "rate_limit: expected limits such as '10/minute', or policy= naming a policy "
            "of settings.SUREFOOT, not both"
        )

    def decorate(view: View) -> View:
        built: RateLimitPolicy | None = None
        default = f"{getattr(view, '__module__', 'view')}.{view.__qualname__}"
        counted = name or _UNSAFE.sub("_", default)
        if limits:
            built = RateLimitPolicy(
                counted,
                limits=list(limits),
                algorithm=algorithm,
                **options,
            )

        def guard() -> RateLimitGuard:
            def build(settings: Any) -> RateLimitGuard:
                policies: Sequence[RateLimitPolicy]
                if built is not None:
                    policies = [built]
                else:
                    policies = [
                        dataclasses.replace(p, name=counted)  # Rule 3
                        for p in settings.rate_limit_policies
                        if p.name == policy
                    ]
                    if not policies:
                        names = [p.name for p in settings.rate_limit_policies]
                        raise ConfigurationError(
                            f"rate_limit: policy {policy!r} is not in settings.SUREFOOT's "
                            f"rate_limit.policies (they are {names})"
                        )
                made: RateLimitGuard = settings.rate_limit_guard(policies=policies)
                return made

            return cached(("rate_limit", id(wrapper)), build)

        @functools.wraps(view)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
            return limited(guard(), request, lambda r: view(r, *args, **kwargs))

        return wrapper  # type: ignore[return-value]

    return decorate
