"""A third stack for the WSGI conformance table (``tests/wsgi/test_conformance.py``): the
table's backend as a Django view, behind ``surefoot.django``'s middlewares with the guards
each test asks for, served by Django's own ``WSGIHandler`` (also its URL conf)."""

from __future__ import annotations

from typing import Any

import httpx
from _wsgi_stacks import Backend, SyncFlakyStore  # tests/wsgi: on sys.path (conftest)
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.test.utils import override_settings
from django.urls import re_path

from surefoot.django import IdempotencyMiddleware, RateLimitMiddleware
from surefoot.storage import SyncMemoryStore
from surefoot.testing import ManualClock
from surefoot.wsgi import IdempotencyGuard, RateLimitGuard

#: What the current test's middlewares and view use.
CURRENT: dict[str, Any] = {}


class StackIdempotencyMiddleware(IdempotencyMiddleware):
    def guard(self) -> IdempotencyGuard | None:
        guard: IdempotencyGuard | None = CURRENT.get("idempotency")
        return guard


class StackRateLimitMiddleware(RateLimitMiddleware):
    def guard(self) -> RateLimitGuard | None:
        guard: RateLimitGuard | None = CURRENT.get("rate_limit")
        return guard


def backend_view(request: Any) -> HttpResponseBase:
    backend: Backend = CURRENT["backend"]
    status, headers, chunks = backend.handle(request.method, request.path, request.body)
    response: HttpResponseBase
    if isinstance(chunks, bytes):
        response = HttpResponse(chunks, status=status)
    else:
        response = StreamingHttpResponse(chunks, status=status)
    del response["Content-Type"]
    for name, value in headers:
        response[name] = value
    return response


urlpatterns = [re_path(r"", backend_view)]


class DjangoStack:
    """``_wsgi_stacks.Stack``'s interface, for ``kind="django"``."""

    kind = "django"

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.store: Any = None
        self.events: list[Any] = []
        self._settings = override_settings(
            ROOT_URLCONF="_django_stack",
            DEBUG_PROPAGATE_EXCEPTIONS=True,
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
                "_django_stack.StackRateLimitMiddleware",
                "_django_stack.StackIdempotencyMiddleware",
            ],
        )

    def take_down(self) -> None:
        self.store.down()

    def client(
        self,
        backend: Backend,
        *,
        idempotency: dict[str, Any] | None = None,
        ratelimit: dict[str, Any] | None = None,
        flaky: bool = False,
    ) -> httpx.Client:
        self.store = store = SyncFlakyStore() if flaky else SyncMemoryStore()
        common = {"clock": self.clock, "hooks": [self.events.append], "sleep": self.clock.advance}
        CURRENT.clear()
        CURRENT["backend"] = backend
        if idempotency is not None:
            CURRENT["idempotency"] = IdempotencyGuard(store=store, **common, **idempotency)
        if ratelimit is not None:
            CURRENT["rate_limit"] = RateLimitGuard(store=store, **common, **ratelimit)
        handler = WSGIHandler()
        return httpx.Client(
            transport=httpx.WSGITransport(app=handler), base_url="http://testserver"
        )

    def __enter__(self) -> DjangoStack:
        self._settings.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self._settings.disable()
        CURRENT.clear()
