"""The app that ``bench/ratelimit_http.py`` serves: GET /hello, bare or rate limited.

Environment:

- ``SUREFOOT_BENCH_RATELIMIT``: ``bare`` (default), ``surefoot`` (``RateLimitMiddleware``
  with a ``MemoryStore``, one policy, its default algorithm, headers and hooks),
  ``surefoot-nohooks`` (the same with ``hooks=[]``: what events cost),
  ``slowapi`` (slowapi's ``Limiter`` with ``default_limits`` and ``SlowAPIMiddleware``,
  keyed by the remote address, as its documentation shows) or ``slowapi-asgi`` (the
  same with ``SlowAPIASGIMiddleware``, its pure ASGI variant).
- ``SUREFOOT_BENCH_LIMIT``: the one limit, ``"1000000/minute"`` unless set (the driver
  sets ``"3/minute"`` once, to check that each limiter does reject).

Each configuration builds its own ``Starlette`` app around the same endpoint.
"""

from __future__ import annotations

import os

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
    if mode in ("surefoot", "surefoot-nohooks"):
        from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
        from surefoot.storage import MemoryStore

        return RateLimitMiddleware(
            Starlette(routes=routes),
            store=MemoryStore(),
            policies=[RateLimitPolicy("default", limits=[limit])],
            hooks=[] if mode == "surefoot-nohooks" else None,
        )
    if mode in ("slowapi", "slowapi-asgi"):
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
        app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[limit])
        return app
    raise ValueError(f"SUREFOOT_BENCH_RATELIMIT: unknown mode {mode!r}")


app = make_app(
    os.environ.get("SUREFOOT_BENCH_RATELIMIT", "bare"),
    os.environ.get("SUREFOOT_BENCH_LIMIT", "1000000/minute"),
)
