"""``install``: a FastAPI app's own OpenAPI document, enriched, built once on first use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from surefoot.errors import DEFAULT_PROBLEM_BASE
from surefoot.openapi._enrich import enrich

if TYPE_CHECKING:
    from surefoot.idempotency import IdempotencyPolicy
    from surefoot.ratelimit import RateLimitPolicy

__all__ = ["install"]


def install(
    app: Any,
    *,
    idempotency: IdempotencyPolicy | None = None,
    idempotency_routes: Mapping[str, IdempotencyPolicy | None] | None = None,
    rate_limits: Sequence[RateLimitPolicy] = (),
    headers: bool = True,
    legacy_headers: bool = False,
    problem_base: str = DEFAULT_PROBLEM_BASE,
) -> None:
    """Make ``app.openapi()`` (so ``/openapi.json`` and ``/docs``) return the enriched document.

    Example:
        >>> policy = IdempotencyPolicy(ttl=7 * 86400)
        >>> limits = [RateLimitPolicy("default", limits=["100/minute"])]
        >>> app = FastAPI()
        >>> install(app, idempotency=policy, rate_limits=limits)
        >>> app.add_middleware(IdempotencyMiddleware, store=store, policy=policy)
        >>> app.add_middleware(RateLimitMiddleware, store=store, policies=limits)

    Args:
        app: a FastAPI app, or anything with an ``openapi()`` method and an
            ``openapi_schema`` attribute.
        idempotency, idempotency_routes, rate_limits, headers, legacy_headers,
            problem_base: the middlewares' settings, as ``enrich`` takes them.

    The document is built on the first call, as FastAPI builds its own, and kept in
    ``app.openapi_schema``.

    Warning:
        Pass the very policies the middlewares get: the document describes what it is
        told, and policies changed at run time (``update_policies``) are not seen.
    """
    original = app.openapi
    schema: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        nonlocal schema
        if schema is None:
            schema = enrich(
                original(),
                idempotency=idempotency,
                idempotency_routes=idempotency_routes,
                rate_limits=rate_limits,
                headers=headers,
                legacy_headers=legacy_headers,
                problem_base=problem_base,
            )
            app.openapi_schema = schema
        return schema

    app.openapi = openapi
