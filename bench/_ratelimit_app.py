"""The app that ``bench/ratelimit_http.py`` serves: GET /hello, bare or rate limited.

Environment:

- ``SUREFOOT_BENCH_RATELIMIT``: ``bare`` (default), ``surefoot`` (``RateLimitMiddleware``
  with a ``MemoryStore``, one policy, its default algorithm, headers and hooks),
  ``surefoot-nohooks`` (the same with ``hooks=[]``: what events cost),
  ``slowapi`` (slowapi's ``Limiter`` with ``default_limits`` and ``SlowAPIMiddleware``,
  keyed by the remote address, as its documentation shows) or ``slowapi-asgi`` (the
  same with ``SlowAPIASGIMiddleware``, its pure ASGI variant); ``surefoot-redis`` and
  ``slowapi-asgi-redis``: ``surefoot`` and ``slowapi-asgi`` with their counters on Redis.
- ``SUREFOOT_BENCH_REDIS_URL`` and ``SUREFOOT_BENCH_REDIS_PREFIX`` (the ``-redis`` modes):
  the server, and a prefix new for each server start, so every run counts from zero.
  surefoot's store comes from ``store_from_url(URL?prefix=PREFIX:&OPTIONS)``, where
  ``SUREFOOT_BENCH_REDIS_OPTIONS`` (empty by default: the store's defaults, ``clock=server``
  and coalescing on) may add options such as ``timeout=0.5``; slowapi's from
  ``storage_uri=URL`` (``limits``' sync Redis storage) with ``key_prefix=PREFIX``.
- ``SUREFOOT_BENCH_LIMIT``: the one limit, ``"1000000/minute"`` unless set (the driver
  sets ``"3/minute"`` once, to check that each limiter does reject).

Each configuration builds its own ``Starlette`` app around the same endpoint.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello, world")


def make_app(mode: str, limit: str) -> ASGIApp:
    routes = [Route("/hello", hello)]
    if mode == "bare":
        return Starlette(routes=routes)
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


def _redis() -> tuple[str, str]:
    return os.environ["SUREFOOT_BENCH_REDIS_URL"], os.environ["SUREFOOT_BENCH_REDIS_PREFIX"]


app = make_app(
    os.environ.get("SUREFOOT_BENCH_RATELIMIT", "bare"),
    os.environ.get("SUREFOOT_BENCH_LIMIT", "1000000/minute"),
)
