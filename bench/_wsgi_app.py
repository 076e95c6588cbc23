"""The WSGI apps that ``bench/wsgi.py`` serves under gunicorn: bare, or rate limited, or
idempotent, on Flask or Django.

Environment:

- ``SUREFOOT_BENCH_WSGI``: the configuration, ``FRAMEWORK[+LAYER-STORE]``:

  - ``flask``: a Flask app, ``GET /hello`` (a small JSON document) and ``POST /charges``
    (reads a small JSON body, answers 201 with a JSON document whose id is new for every
    execution);
  - ``flask+surefoot-STORE``: that app with ``app.wsgi_app`` wrapped in
    ``surefoot.wsgi.RateLimitMiddleware`` (one policy of one limit, its default algorithm,
    principal, headers and hooks), on ``sync_store_from_url(URL)``, STORE ``memory``,
    ``sqlite`` or ``redis``;
  - ``flask+idempotency-STORE``: that app with ``app.wsgi_app`` wrapped in
    ``surefoot.wsgi.IdempotencyMiddleware`` (its default policy, but no quota of records
    per principal: wrk is one client sending every key);
  - ``flask+redis-ping``: that app behind one ``PING`` to Redis per request on a socket of
    the worker's own, nothing else: the least that any layer asking Redis once per
    request adds (a blocking round trip, and the switch to another worker while it waits);
  - ``flask-limiter-memory``, ``flask-limiter-redis``: that app with Flask-Limiter,
    ``Limiter(get_remote_address, app=app, default_limits=[LIMIT], storage_uri=...)``, its
    defaults otherwise (fixed window, no header fields);
  - ``django``: a Django app, ``GET /hello`` answering the same JSON document from a plain
    view (``JsonResponse``), no middleware (``MIDDLEWARE = []``), no database;
  - ``django+surefoot-STORE``: that app (Django's WSGI handler) wrapped in
    ``surefoot.wsgi.RateLimitMiddleware``, as for Flask;
  - ``django-ratelimit-locmem``, ``django-ratelimit-redis``: that view decorated with
    django-ratelimit's ``@ratelimit(key="ip", rate=LIMIT, block=True)``, on Django's cache
    (``LocMemCache``, or ``django.core.cache.backends.redis.RedisCache``);
  - ``drf``: the same document from a Django REST framework ``APIView`` without
    authentication, permission or throttle classes, rendered by ``JSONRenderer``;
  - ``drf-throttle-locmem``, ``drf-throttle-redis``: that view with
    ``throttle_classes = [AnonRateThrottle]`` (``rate = LIMIT``), on Django's cache as above.

- ``SUREFOOT_BENCH_LIMIT``: the one limit, ``"1000000/minute"`` unless set (the driver sets
  ``"3/minute"`` once per configuration, to check that each limiter does refuse).
- ``SUREFOOT_BENCH_REDIS_URL``, ``SUREFOOT_BENCH_PREFIX``: the Redis server and a prefix new
  for each server start (surefoot's store ``?prefix=``, Flask-Limiter's ``key_prefix``,
  Django's cache ``KEY_PREFIX``); ``SUREFOOT_BENCH_SQLITE``: the SQLite file of the
  ``-sqlite`` configurations.

gunicorn imports this module in each worker after the fork (no ``--preload``), so every
worker has its own store client, and ``memory``/``locmem`` count per worker.
"""

from __future__ import annotations

import importlib
import itertools
import os
from typing import Any

MODE = os.environ.get("SUREFOOT_BENCH_WSGI", "flask")
LIMIT = os.environ.get("SUREFOOT_BENCH_LIMIT", "1000000/minute")
REDIS_URL = os.environ.get("SUREFOOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SUREFOOT_BENCH_PREFIX", "sfbench-wsgi")
SQLITE = os.environ.get("SUREFOOT_BENCH_SQLITE", "/tmp/sfbench-wsgi.db")

ANSWER = {"id": "item_1", "name": "bench", "price": 1000}
_ids = itertools.count(1)


def store_url(store: str) -> str:
    """The URL of surefoot's sync store ``store`` (memory, sqlite, redis)."""
    if store == "memory":
        # Unique idempotency keys fill a memory store: make room as a long-running server must.
        return "memory://?on_full=evict"
    if store == "sqlite":
        return f"sqlite:///{SQLITE}"
    if store == "redis":
        sep = "&" if "?" in REDIS_URL else "?"
        return f"{REDIS_URL}{sep}prefix={PREFIX}:"
    raise ValueError(f"unknown store {store!r}")


def surefoot_ratelimit(app: Any, store: str) -> Any:
    from surefoot.ratelimit import RateLimitPolicy
    from surefoot.storage import sync_store_from_url
    from surefoot.wsgi import RateLimitMiddleware

    return RateLimitMiddleware(
        app,
        store=sync_store_from_url(store_url(store)),
        policies=[RateLimitPolicy("bench", limits=[LIMIT])],
    )


def redis_ping(app: Any) -> Any:
    """``app`` behind one raw ``PING`` per request (``flask+redis-ping``)."""
    import socket
    from urllib.parse import urlsplit

    target = urlsplit(REDIS_URL)
    sock = socket.create_connection((target.hostname or "127.0.0.1", target.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pinged(environ: Any, start_response: Any) -> Any:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = sock.recv(64)
        if reply != b"+PONG\r\n":
            raise RuntimeError(f"Redis answered PING with {reply!r}")
        return app(environ, start_response)

    return pinged


def surefoot_idempotency(app: Any, store: str) -> Any:
    from surefoot.idempotency import IdempotencyPolicy
    from surefoot.storage import sync_store_from_url
    from surefoot.wsgi import IdempotencyMiddleware

    return IdempotencyMiddleware(
        app,
        store=sync_store_from_url(store_url(store)),
        policy=IdempotencyPolicy(max_records_per_principal=None),
    )


# -- Flask ------------------------------------------------------------------------------------


def flask_app(mode: str) -> Any:
    from flask import Flask, request

    app = Flask("bench")

    @app.get("/hello")
    def hello() -> Any:
        return ANSWER

    @app.post("/charges")
    def charges() -> Any:
        data = request.get_json()
        charge = {"id": f"ch_{os.getpid()}_{next(_ids)}", "amount": data["amount"]}
        return {**charge, "status": "succeeded"}, 201

    if mode == "flask":
        return app
    if mode.startswith("flask+surefoot-"):
        store = mode.removeprefix("flask+surefoot-")
        app.wsgi_app = surefoot_ratelimit(app.wsgi_app, store)  # type: ignore[method-assign]
        return app
    if mode == "flask+redis-ping":
        app.wsgi_app = redis_ping(app.wsgi_app)  # type: ignore[method-assign]
        return app
    if mode.startswith("flask+idempotency-"):
        store = mode.removeprefix("flask+idempotency-")
        app.wsgi_app = surefoot_idempotency(app.wsgi_app, store)  # type: ignore[method-assign]
        return app
    if mode.startswith("flask-limiter-"):
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        store = mode.removeprefix("flask-limiter-")
        Limiter(
            get_remote_address,
            app=app,
            default_limits=[LIMIT],
            storage_uri="memory://" if store == "memory" else REDIS_URL,
            key_prefix=PREFIX,
        )
        return app
    raise ValueError(f"unknown configuration {mode!r}")


# -- Django -----------------------------------------------------------------------------------

#: Django's ROOT_URLCONF is this module: ``django_app`` fills it.
urlpatterns: list[Any] = []


def load(module: str) -> Any:
    """``module``, imported: Django, django-ratelimit and DRF ship no types (read as Any)."""
    return importlib.import_module(module)


def django_app(mode: str) -> Any:
    django = load("django")
    settings = load("django.conf").settings

    if mode.endswith("-redis"):
        cache = {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": PREFIX,
        }
    else:
        cache = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        CACHES={"default": cache},
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [],
            "DEFAULT_PERMISSION_CLASSES": [],
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
            "UNAUTHENTICATED_USER": None,
        },
    )
    django.setup()
    json_response = load("django.http").JsonResponse

    def hello(request: Any) -> Any:
        return json_response(ANSWER)

    view: Any = hello
    if mode.startswith("django-ratelimit-"):
        ratelimit = load("django_ratelimit.decorators").ratelimit
        amount, unit = LIMIT.split("/")
        view = ratelimit(key="ip", rate=f"{amount}/{unit[0]}", block=True)(hello)
    elif mode == "drf" or mode.startswith("drf-throttle-"):
        drf_response = load("rest_framework.response").Response
        anon = load("rest_framework.throttling").AnonRateThrottle
        api_view = load("rest_framework.views").APIView
        throttle = type("Throttle", (anon,), {"rate": LIMIT})

        def get(self: Any, request: Any) -> Any:
            return drf_response(ANSWER)

        throttles = [throttle] if mode.startswith("drf-throttle-") else []
        hello_view: Any = type("Hello", (api_view,), {"throttle_classes": throttles, "get": get})
        view = hello_view.as_view()
    elif mode != "django" and not mode.startswith("django+surefoot-"):
        raise ValueError(f"unknown configuration {mode!r}")
    urlpatterns.append(load("django.urls").path("hello", view))
    app = load("django.core.wsgi").get_wsgi_application()
    if mode.startswith("django+surefoot-"):
        return surefoot_ratelimit(app, mode.removeprefix("django+surefoot-"))
    return app


def make_app(mode: str) -> Any:
    if mode.startswith("flask"):
        return flask_app(mode)
    if mode.startswith(("django", "drf")):
        return django_app(mode)
    raise ValueError(f"unknown configuration {mode!r}")


app = make_app(MODE)
