"""Per-endpoint limits in FastAPI, with the same engine as the middleware.

Example:
    >>> from fastapi import Depends, FastAPI
    >>> from surefoot.ratelimit import RateLimitDependency, RateLimitPolicy, install_problem_handler
    >>> app = FastAPI()
    >>> install_problem_handler(app)
    >>> search_limit = RateLimitDependency(
    ...     store=store, policies=[RateLimitPolicy("search", limits=["30/minute"])]
    ... )
    >>> @app.get("/search", dependencies=[Depends(search_limit)])
    ... async def search(q: str): ...

A refused request raises ``RateLimited``; ``install_problem_handler`` turns it (and every
``SurefootError``) into the problem+json response with its headers. Admitted responses
get the ``RateLimit`` fields, and concurrency slots are freed after the response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

from surefoot._asgi import request_id
from surefoot._health import StoreHealth
from surefoot.clock import Clock
from surefoot.errors import DEFAULT_PROBLEM_BASE, PROBLEM_CONTENT_TYPE, SurefootError, problem_body
from surefoot.events import EventHook
from surefoot.identity import PrincipalResolver, default_principal
from surefoot.ratelimit._limiter import RateLimiter, TierResolver
from surefoot.ratelimit._policy import RateLimitPolicy
from surefoot.ratelimit._store import RateLimitStore

try:  # FastAPI reads the parameter annotations to inject the request and response.
    from starlette.requests import Request
    from starlette.responses import Response
except ImportError:  # pragma: no cover - without Starlette there is no FastAPI to use this
    Request = Response = Any  # type: ignore[misc,assignment]

__all__ = ["RateLimitDependency", "RateLimited", "install_problem_handler"]


class RateLimited(Exception):
    """Raised by the dependency when a request is refused; carries the problem and headers."""

    def __init__(self, error: SurefootError, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(error.detail)
        self.error = error
        self.headers = headers


class RateLimitDependency:
    """A FastAPI dependency applying rate-limit policies to the endpoints that use it.

    Takes the same arguments as ``RateLimitMiddleware`` (without ``app``), including
    ``fallback_workers``, ``store_timeout`` and ``store_health`` for store outages. The
    policies' ``routes`` still filter: leave them empty to cover every endpoint using the
    dependency.
    """

    def __init__(
        self,
        *,
        store: RateLimitStore,
        policies: Sequence[RateLimitPolicy],
        principal: PrincipalResolver = default_principal,
        tier: TierResolver | None = None,
        headers: bool = True,
        legacy_headers: bool = False,
        legacy_reset: Literal["seconds", "epoch"] = "seconds",
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        hooks: Sequence[EventHook] | None = None,
        fallback_workers: int | None = None,
        store_timeout: float | None = 1.0,
        store_health: StoreHealth | None = None,
    ) -> None:
        self.limiter = RateLimiter(
            store=store,
            policies=policies,
            principal=principal,
            tier=tier,
            headers=headers,
            legacy_headers=legacy_headers,
            legacy_reset=legacy_reset,
            clock=clock,
            hooks=hooks,
            fallback_workers=fallback_workers,
            store_timeout=store_timeout,
            store_health=store_health,
        )
        self.sleep = sleep

    async def __call__(self, request: Request, response: Response) -> AsyncIterator[None]:
        verdict = await self.limiter.check(request.scope)
        if verdict is None:
            yield
            return
        if verdict.error is not None:
            raise RateLimited(verdict.error, verdict.headers)
        if verdict.delay > 0:
            await self.sleep(verdict.delay)
        for name, value in verdict.headers:
            response.headers.append(name.decode("latin-1"), value.decode("latin-1"))
        try:
            yield
        finally:
            if verdict.held:
                await asyncio.shield(self.limiter.release(verdict))


def install_problem_handler(app: Any, *, problem_base: str = DEFAULT_PROBLEM_BASE) -> None:
    """Render ``RateLimited`` and every ``SurefootError`` as problem+json in a FastAPI app."""

    def render(request: Request, exc: Exception) -> Response:
        error = exc.error if isinstance(exc, RateLimited) else exc
        assert isinstance(error, SurefootError)
        rid = request_id(request.scope)
        headers = {"x-request-id": rid}
        retry_after = error.fields.get("retry_after")
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        response = Response(
            problem_body(error, request_id=rid, base=problem_base),
            status_code=error.status,
            media_type=PROBLEM_CONTENT_TYPE,
            headers=headers,
        )
        if isinstance(exc, RateLimited):
            for name, value in exc.headers:
                response.headers.append(name.decode("latin-1"), value.decode("latin-1"))
        return response

    app.add_exception_handler(RateLimited, render)
    app.add_exception_handler(SurefootError, render)
