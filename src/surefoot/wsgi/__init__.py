"""WSGI support: the idempotency and rate-limit middlewares for any WSGI app, and the
framework-neutral guards under them that Django and Flask adapters call.

``Request`` builds, from a WSGI environ, the same ``scope`` the ASGI middlewares read, so
identity, canonical paths, routes, request ids, limits and fingerprints are computed by the
same code on both stacks. ``IdempotencyGuard`` drives the ASGI middleware's decisions
(``surefoot.idempotency.middleware.Exchange``) with blocking store calls;
``RateLimitGuard`` drives ``SyncRateLimiter``, the ``RateLimiter``'s twin. The stores are the
synchronous ones (``surefoot.storage.SyncMemoryStore``, ``SyncSqliteStore``,
``sync_store_from_url``).
"""

from __future__ import annotations

from surefoot.ratelimit import SyncRateLimiter
from surefoot.wsgi._idempotency import IdempotencyGuard
from surefoot.wsgi._ratelimit import RateLimitGuard
from surefoot.wsgi._request import Request, Response, problem_response
from surefoot.wsgi.middleware import IdempotencyMiddleware, RateLimitMiddleware

__all__ = [
    "IdempotencyGuard",
    "IdempotencyMiddleware",
    "RateLimitGuard",
    "RateLimitMiddleware",
    "Request",
    "Response",
    "SyncRateLimiter",
    "problem_response",
]
