"""The app that ``bench/ratelimit_http.py`` serves: GET /hello, bare or rate limited.

Environment:

- ``SUREFOOT_BENCH_RATELIMIT``: ``bare`` (default), ``surefoot`` (``RateLimitMiddleware``
  with a ``MemoryStore``, one policy, its default algorithm, headers and hooks),
  ``surefoot-nohooks`` (the same with ``hooks=[]``: what events cost),
  ``floor`` (``FloorLimiter`` below: the least a correct limiter can cost),
  ``slowapi`` (slowapi's ``Limiter`` with ``default_limits`` and ``SlowAPIMiddleware``,
  keyed by the remote address, as its documentation shows) or ``slowapi-asgi`` (the
  same with ``SlowAPIASGIMiddleware``, its pure ASGI variant); ``fastapi`` (the same
  endpoint in a FastAPI app, no limiter) and ``throttled`` (that app with throttled-py's
  FastAPI integration: its ``Limiter`` and ``@limiter.limit()`` on the route, keyed by
  the remote address, its 429 handler; ``sliding_window``, surefoot's default);
  ``surefoot-redis``, ``floor-redis``, ``slowapi-asgi-redis`` and ``throttled-redis``: the
  same with their counters on Redis.
- ``SUREFOOT_BENCH_REDIS_URL`` and ``SUREFOOT_BENCH_REDIS_PREFIX`` (the ``-redis`` modes):
  the server, and a prefix new for each server start, so every run counts from zero.
  surefoot's store comes from ``store_from_url(URL?prefix=PREFIX:&OPTIONS)``, where
  ``SUREFOOT_BENCH_REDIS_OPTIONS`` (empty by default: the store's defaults, ``clock=server``
  and coalescing on) may add options such as ``timeout=0.5``; slowapi's from
  ``storage_uri=URL`` (``limits``' sync Redis storage) with ``key_prefix=PREFIX``; the
  floor's keys are ``PREFIX:floor:ADDRESS``; throttled-py's FastAPI ``Limiter`` takes no
  key prefix, so its keys are ``throttled:...`` with ``PREFIX:ADDRESS`` as the principal.
- ``SUREFOOT_BENCH_LIMIT``: the one limit, ``"1000000/minute"`` unless set (the driver
  sets ``"3/minute"`` once, to check that each limiter does reject).

Each configuration builds its own app around the same endpoint: Starlette's, or FastAPI's
for ``fastapi`` and the ``throttled`` modes.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Protocol
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: the seconds of a limit's unit, as in "3/minute"
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello, world")


# -- the floor --------------------------------------------------------------------------------


class Counter(Protocol):
    async def hit(self, key: str, now: float) -> tuple[int, float]:
        """Count one hit of ``key``: the count in its window, and the seconds it has left."""


class MemoryWindows:
    """Fixed windows aligned on multiples of ``window``: one dict of counts, new each window
    (so it holds the clients of one window at most)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.number = -1
        self.counts: dict[str, int] = {}

    async def hit(self, key: str, now: float) -> tuple[int, float]:
        number = int(now // self.window)
        if number != self.number:
            self.number, self.counts = number, {}
        count = self.counts.get(key, 0) + 1
        self.counts[key] = count
        return count, (number + 1) * self.window - now


#: INCR, and the window's expiry set by its first hit: one round trip.
FLOOR_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"""


class RedisWindows:
    """A fixed window per key from its first hit: one EVALSHA per hit."""

    def __init__(self, url: str, prefix: str, window: float) -> None:
        import redis.asyncio

        self.script = redis.asyncio.Redis.from_url(url).register_script(FLOOR_SCRIPT)
        self.prefix = f"{prefix}:floor:"
        self.ms = int(window * 1000)

    async def hit(self, key: str, now: float) -> tuple[int, float]:
        count, left = await self.script(keys=[self.prefix + key], args=[self.ms])
        return int(count), int(left) / 1000


class FloorLimiter:
    """The least a correct rate limiter costs, in pure ASGI.

    One fixed window of ``amount`` requests per client address; past it, 429 with
    ``Retry-After``; the ``RateLimit-Policy`` and ``RateLimit`` fields on every answer.
    Not done: policies, routes, identities other than the address, other algorithms,
    events, problem+json answers, a fallback when the store fails.
    """

    def __init__(self, app: ASGIApp, counter: Counter, amount: int, window: float) -> None:
        self.app, self.counter, self.amount = app, counter, amount
        self.policy = (b"ratelimit-policy", b'"default";q=%d;w=%d' % (amount, window))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        count, left = await self.counter.hit(client[0] if client else "", time.time())
        remaining, reset = self.amount - count, math.ceil(left)
        fields = [self.policy, (b"ratelimit", b'"default";r=%d;t=%d' % (max(remaining, 0), reset))]
        if remaining < 0:
            fields.append((b"retry-after", b"%d" % reset))
            start = {"type": "http.response.start", "status": 429, "headers": fields}
            await send(start)
            await send({"type": "http.response.body", "body": b"rate limited"})
            return

        async def send_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *fields]}
            await send(message)

        await self.app(scope, receive, send_fields)


# -- the configurations -----------------------------------------------------------------------


def make_app(mode: str, limit: str) -> ASGIApp:
    routes = [Route("/hello", hello)]
    if mode == "bare":
        return Starlette(routes=routes)
    if mode in ("floor", "floor-redis"):
        amount, unit = limit.split("/")
        window = float(UNITS[unit])
        counter: Counter = MemoryWindows(window)
        if mode == "floor-redis":
            counter = RedisWindows(*_redis(), window)
        return FloorLimiter(Starlette(routes=routes), counter, int(amount), window)
    if mode in ("fastapi", "throttled", "throttled-redis"):
        return _fastapi(mode, limit)
    if mode in ("surefoot", "surefoot-nohooks", "surefoot-redis"):
        from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
        from surefoot.storage import MemoryStore, store_from_url

        if mode == "surefoot-redis":
            url, prefix = _redis()
            query = "&".join(
                q
                for q in (
                    urlencode({"prefix": prefix + ":"}),
                    os.environ.get("SUREFOOT_BENCH_REDIS_OPTIONS", ""),
                )
                if q
            )
            store: Any = store_from_url(f"{url}{'&' if '?' in url else '?'}{query}")
        else:
            store = MemoryStore()
        return RateLimitMiddleware(
            Starlette(routes=routes),
            store=store,
            policies=[RateLimitPolicy("default", limits=[limit])],
            hooks=[] if mode == "surefoot-nohooks" else None,
        )
    if mode in ("slowapi", "slowapi-asgi", "slowapi-asgi-redis"):
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
        from slowapi.util import get_remote_address

        middleware = SlowAPIMiddleware if mode == "slowapi" else SlowAPIASGIMiddleware
        app = Starlette(
            routes=routes,
            middleware=[Middleware(middleware)],
            exception_handlers={RateLimitExceeded: _rate_limit_exceeded_handler},
        )
        storage: dict[str, Any] = {}
        if mode == "slowapi-asgi-redis":
            url, prefix = _redis()
            storage = {"storage_uri": url, "storage_options": {"key_prefix": prefix}}
        app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[limit], **storage)
        return app
    raise ValueError(f"SUREFOOT_BENCH_RATELIMIT: unknown mode {mode!r}")


def _fastapi(mode: str, limit: str) -> ASGIApp:
    from fastapi import FastAPI

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    if mode == "fastapi":
        app.get("/hello")(hello)
        return app
    from throttled.asyncio import MemoryStore, RedisStore
    from throttled.asyncio.contrib.fastapi import (
        Limiter,
        RateLimitExceededError,
        get_remote_address,
        rate_limit_exceeded_handler,
    )

    key_func = get_remote_address
    store: Any = MemoryStore()
    if mode == "throttled-redis":
        url, prefix = _redis()
        store = RedisStore(server=url)

        def key_func(request: Request) -> str:  # the run's prefix: its keys are its own
            return f"{prefix}:{get_remote_address(request)}"

    limiter = Limiter(limit, store=store, using="sliding_window", key_func=key_func)
    app.add_exception_handler(RateLimitExceededError, rate_limit_exceeded_handler)
    app.get("/hello")(limiter.limit()(hello))
    return app


def _redis() -> tuple[str, str]:
    return os.environ["SUREFOOT_BENCH_REDIS_URL"], os.environ["SUREFOOT_BENCH_REDIS_PREFIX"]


app = make_app(
    os.environ.get("SUREFOOT_BENCH_RATELIMIT", "bare"),
    os.environ.get("SUREFOOT_BENCH_LIMIT", "1000000/minute"),
)
