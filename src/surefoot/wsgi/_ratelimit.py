"""``RateLimitGuard``: per-client rate limits for blocking code (WSGI, Django, Flask).

A ``SyncRateLimiter`` decides (the ``RateLimiter``'s plan, verdicts, headers, problems and
outage rules, with blocking store calls); this answers.

Rule 1: a refused request (400 ``invalid_path``, 429, 503 ``store_unavailable``) never
        reaches the view; its problem carries ``Retry-After`` and the ``RateLimit`` fields.
Rule 2: an admitted request's response carries the ``RateLimit`` fields (``added_headers``).
Rule 3: concurrency slots are freed once: when a ``bytes`` response is returned, when a
        streamed response is closed, or when the view raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

from surefoot._health import StoreHealth
from surefoot.clock import Clock
from surefoot.errors import DEFAULT_PROBLEM_BASE
from surefoot.events import EventHook
from surefoot.identity import PrincipalResolver, default_principal
from surefoot.ratelimit import (
    RateLimitPolicy,
    SyncRateLimiter,
    SyncRateLimitStore,
    TierResolver,
    Verdict,
)
from surefoot.wsgi._request import Request, Response, _text_headers, problem_response

__all__ = ["RateLimitGuard"]


class RateLimitGuard:
    """Per-client rate limits, quotas and concurrency limits, in blocking code.

    Example:
        >>> guard = RateLimitGuard(
        ...     store=sync_store_from_url("redis://127.0.0.1:6379/0"),
        ...     policies=[RateLimitPolicy("default", limits=["100/minute"])],
        ... )
        >>> response = guard.handle(Request.from_environ(environ), lambda: view(environ))

    The arguments are ``surefoot.ratelimit.RateLimitMiddleware``'s, on a
    ``SyncRateLimitStore``, with a blocking ``sleep`` and without ``store_timeout`` (a
    blocking call cannot be cut off safely: the sync stores' own timeouts bound it).
    One guard serves every thread of a process.
    """

    def __init__(
        self,
        *,
        store: SyncRateLimitStore,
        policies: Sequence[RateLimitPolicy],
        principal: PrincipalResolver = default_principal,
        tier: TierResolver | None = None,
        headers: bool = True,
        legacy_headers: bool = False,
        legacy_reset: Literal["seconds", "epoch"] = "seconds",
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        hooks: Sequence[EventHook] | None = None,
        fallback_workers: int | None = None,
        store_health: StoreHealth | None = None,
        problem_base: str = DEFAULT_PROBLEM_BASE,
        allow_method_override: bool = False,
    ) -> None:
        self.limiter = SyncRateLimiter(
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
            store_health=store_health,
        )
        self.sleep = sleep
        self.problem_base = problem_base
        self.allow_method_override = allow_method_override

    @property
    def policies(self) -> tuple[RateLimitPolicy, ...]:
        return self.limiter.policies

    @property
    def store(self) -> SyncRateLimitStore:
        return self.limiter.store

    def update_policies(self, policies: Sequence[RateLimitPolicy]) -> None:
        """Swap the policies at run time; counters of limits that kept their window carry on."""
        self.limiter.update_policies(policies)

    def check(self, request: Request) -> Verdict | Response | None:
        """Decide ``request``: None when no policy covers it, the refusal to send (Rule 1),
        or the admitting ``Verdict`` (after its ``leaky_queue`` wait). A ``Verdict`` with
        ``held`` slots must be given back to ``release``."""
        refused = request.canonicalize(allow_method_override=self.allow_method_override)
        if refused is not None:
            return problem_response(refused, request, problem_base=self.problem_base)
        verdict = self.limiter.check(request.scope)
        if verdict is None:
            return None
        if verdict.error is not None:
            return problem_response(
                verdict.error,
                request,
                problem_base=self.problem_base,
                headers=_text_headers(verdict.headers),
            )
        if verdict.delay > 0:
            self.sleep(verdict.delay)
        return verdict

    def release(self, verdict: Verdict) -> None:
        """Free the verdict's concurrency slots (a failure leaves them to their lease)."""
        if verdict.held:
            self.limiter.release(verdict)

    def handle(self, request: Request, call: Callable[[], Response]) -> Response:
        """Answer ``request``: its refusal, or ``call()``'s response with the ``RateLimit``
        fields added; concurrency slots are freed by Rule 3."""
        checked = self.check(request)
        if checked is None:
            return call()
        if isinstance(checked, Response):
            return checked
        verdict = checked
        try:
            response = call()
        except BaseException:
            self.release(verdict)
            raise
        if verdict.headers:
            response.add_headers(_text_headers(verdict.headers))
        if isinstance(response.body, bytes):
            self.release(verdict)
        else:
            response.on_close(lambda: self.release(verdict))
        return response
