"""``RateLimitMiddleware``: pure ASGI, per-client limits from policies.

Per HTTP request: ask the ``RateLimiter`` for a verdict. Refused: answer the problem
(429, with ``Retry-After`` and the ``RateLimit`` fields, or 503 ``store_unavailable``
when the store is down and a policy fails closed) and never call the app.
Admitted: wait if a ``leaky_queue`` limit asks to, call the app adding the ``RateLimit``
fields to its response, and free concurrency slots when it returns, raises, or the
client goes away (the release is shielded from cancellation; a crashed worker's slots
come back when their lease expires).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from surefoot._asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    canonicalize,
    request_id,
    send_problem,
)
from surefoot._health import StoreHealth
from surefoot.clock import Clock
from surefoot.errors import DEFAULT_PROBLEM_BASE
from surefoot.events import EventHook
from surefoot.identity import PrincipalResolver, default_principal
from surefoot.ratelimit._limiter import RateLimiter, TierResolver
from surefoot.ratelimit._policy import RateLimitPolicy
from surefoot.ratelimit._store import RateLimitStore

__all__ = ["RateLimitMiddleware"]

_releasing: set[asyncio.Task[None]] = set()


class RateLimitMiddleware:
    """Per-client rate limits, quotas and concurrency limits for any ASGI app.

    Example:
        >>> app = RateLimitMiddleware(
        ...     app,
        ...     store=store_from_url("memory://"),
        ...     policies=[RateLimitPolicy("default", limits=["100/minute", "10/second"])],
        ... )

    Put it outside ``IdempotencyMiddleware`` (rate limit first): a 429 then never reaches
    the idempotency layer, and never counts as an execution.

    Args:
        app: the ASGI app to protect.
        store: where counters live (``MemoryStore``, ``SqliteStore``...); it must support
            every algorithm the policies use.
        policies: the policies; ``update_policies`` swaps them at run time.
        principal: who is calling (default: hashed API key or ``Authorization`` header, the
            authenticated user, or the client address; ``surefoot.identity.Identity``
            reads forwarding headers from trusted proxies).
        tier: ``(scope, principal) -> tier name or None``, selecting a policy's ``tiers``.
        headers: add ``RateLimit-Policy`` and ``RateLimit`` to every limited response.
        legacy_headers: also add ``X-RateLimit-Limit/Remaining/Reset``; ``legacy_reset``
            says whether the reset is in seconds from now or an epoch time (GitHub's way).
        clock, sleep: time (tests inject ``ManualClock`` and its ``sleep``).
        hooks: event hooks; default: one ``LoggingHook``.
        fallback_workers: how many worker processes, on every host, share the store. While
            it is down, each ``local_fallback`` policy admits per process each limit's
            amount divided by this, rounded down, at least 1. Required when a policy uses
            ``local_fallback``: it is a fact of the deployment, not of the policy.
        store_timeout: seconds to wait for the store before treating it as down (a guard
            behind the store's own, shorter timeout; None: no guard). A ``MemoryStore``
            never waits and is not guarded.
        store_health: tracks the store's outages (default: a ``StoreHealth`` of its own).
            Pass one ``StoreHealth`` to this and to ``IdempotencyMiddleware`` when they
            share a store, so that an outage one finds spares the other the wait.
        problem_base: base URI of the problem ``type`` members.
        allow_method_override: keep the ``X-HTTP-Method-Override``, ``X-Method-Override``
            and ``X-HTTP-Method`` headers (the app honours them), and match a POST's routes
            on the method they name; by default they are removed before the app sees them.

    The path is made canonical before any policy's routes are matched, and the app gets
    that form; a path that cannot be is refused (400 ``invalid_path``) without calling the
    app (``docs/ratelimit.md``, "Paths").

    Warning:
        While the store is down, ``fail_open`` policies limit nothing, and
        ``local_fallback`` counters start from zero, knowing nothing of what the store
        had counted: a quota may be spent again, up to its share per process.
    """

    def __init__(
        self,
        app: ASGIApp,
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
        problem_base: str = DEFAULT_PROBLEM_BASE,
        allow_method_override: bool = False,
    ) -> None:
        self.app = app
        self.allow_method_override = allow_method_override
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
        self.problem_base = problem_base

    @property
    def policies(self) -> tuple[RateLimitPolicy, ...]:
        return self.limiter.policies

    @property
    def store(self) -> RateLimitStore:
        return self.limiter.store

    def update_policies(self, policies: Sequence[RateLimitPolicy]) -> None:
        """Swap the policies at run time; counters of limits that kept their window carry on."""
        self.limiter.update_policies(policies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = canonicalize(scope, allow_method_override=self.allow_method_override)
        if refused is not None:
            await send_problem(send, refused, request_id=request_id(scope), base=self.problem_base)
            return
        verdict = await self.limiter.check(scope)
        if verdict is None:
            await self.app(scope, receive, send)
            return
        if verdict.error is not None:
            await send_problem(
                send,
                verdict.error,
                request_id=request_id(scope),
                base=self.problem_base,
                headers=verdict.headers,
            )
            return
        if verdict.delay > 0:
            await self.sleep(verdict.delay)
        if verdict.headers:
            send = _with_headers(send, verdict.headers)
        if not verdict.held:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            task = asyncio.ensure_future(self.limiter.release(verdict))
            _releasing.add(task)
            task.add_done_callback(_releasing.discard)
            await asyncio.shield(task)


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return wrapped
