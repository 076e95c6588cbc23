"""``IdempotencyMiddleware`` and ``RateLimitMiddleware`` for any WSGI app (PEP 3333).

Each is a guard (``IdempotencyGuard``, ``RateLimitGuard``) with WSGI plumbing around it:

Rule 1: the app is called with the environ the guard prepared (canonical ``PATH_INFO``,
        the buffered body in ``wsgi.input``) and a ``start_response`` of ours; its status
        and headers are known once it has called it, which a generator app does on its
        first chunk, so that chunk is pulled before the guard sees the response.
Rule 2: data an app passes to ``write()`` (PEP 3333's legacy path) is sent before its
        iterable, as the server would, and counts as the body.
Rule 3: the iterable handed to the server streams the response chunk by chunk; its
        ``close()`` (the server calls it, even when the client went away) closes the app's
        iterable, settles the idempotency record and frees concurrency slots.
Rule 4: an app that raises, before or while streaming, has its reservation settled by
        ``on_server_error`` and its slots freed; the exception goes on to the server (a
        500 of the app's own, as under ASGI). A client's mistake is always a 4xx problem.
Rule 5: ``RateLimitMiddleware`` needs neither the app's status nor its body: an admitted
        request gets the app's own iterable, the ``RateLimit`` fields added to the headers
        the app passes to ``start_response`` (after them, as ``Response.add_headers``
        does); only a verdict holding concurrency slots wraps the iterable, to free them
        on ``close()`` (Rule 3) or when the app raises (Rule 4).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from surefoot._health import StoreHealth
from surefoot.clock import Clock
from surefoot.errors import DEFAULT_PROBLEM_BASE
from surefoot.events import EventHook
from surefoot.idempotency import IdempotencyPolicy, SyncIdempotencyStore
from surefoot.idempotency.middleware import MiB
from surefoot.identity import PrincipalResolver, default_principal
from surefoot.ratelimit import (
    RateLimitPolicy,
    SyncRateLimiter,
    SyncRateLimitStore,
    TierResolver,
    Verdict,
)
from surefoot.wsgi._idempotency import IdempotencyGuard
from surefoot.wsgi._ratelimit import RateLimitGuard
from surefoot.wsgi._request import Request, Response, _run_all, _text_headers

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["IdempotencyMiddleware", "RateLimitMiddleware"]


class IdempotencyMiddleware:
    """Makes retried writes to a WSGI app execute once and replay the same response.

    Example:
        >>> app = IdempotencyMiddleware(
        ...     flask_app.wsgi_app,
        ...     store=sync_store_from_url("sqlite:///surefoot.db"),
        ...     routes={"POST /v1/charges": IdempotencyPolicy(), "/health": None},
        ... )

    The arguments are ``IdempotencyGuard``'s (``surefoot.idempotency.IdempotencyMiddleware``'s
    on a ``SyncIdempotencyStore``), after the app.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        store: SyncIdempotencyStore,
        policy: IdempotencyPolicy | None = None,
        routes: Mapping[str, IdempotencyPolicy | None] | None = None,
        principal: PrincipalResolver = default_principal,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        hooks: Sequence[EventHook] | None = None,
        max_request_body: int = MiB,
        max_stored_response: int = MiB,
        problem_base: str = DEFAULT_PROBLEM_BASE,
        store_health: StoreHealth | None = None,
        outcome_unknown_retry_after: float = 5.0,
        allow_method_override: bool = False,
    ) -> None:
        self.app = app
        self.guard = IdempotencyGuard(
            store=store,
            policy=policy,
            routes=routes,
            principal=principal,
            clock=clock,
            sleep=sleep,
            hooks=hooks,
            max_request_body=max_request_body,
            max_stored_response=max_stored_response,
            problem_base=problem_base,
            store_health=store_health,
            outcome_unknown_retry_after=outcome_unknown_retry_after,
            allow_method_override=allow_method_override,
        )

    @property
    def store(self) -> SyncIdempotencyStore:
        store: SyncIdempotencyStore = self.guard.store
        return store

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request.from_environ(environ)
        response = self.guard.handle(request, lambda: _call(self.app, environ))
        return _send(response, start_response)


class RateLimitMiddleware:
    """Per-client rate limits, quotas and concurrency limits for any WSGI app.

    Example:
        >>> app = RateLimitMiddleware(
        ...     app,
        ...     store=sync_store_from_url("sqlite:///surefoot.db"),
        ...     policies=[RateLimitPolicy("default", limits=["100/minute", "10/second"])],
        ... )

    Put it outside ``IdempotencyMiddleware`` (rate limit first), as under ASGI. The
    arguments are ``RateLimitGuard``'s (``surefoot.ratelimit.RateLimitMiddleware``'s on a
    ``SyncRateLimitStore``, without ``store_timeout``), after the app.
    """

    def __init__(
        self,
        app: WSGIApplication,
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
        self.app = app
        self.guard = RateLimitGuard(
            store=store,
            policies=policies,
            principal=principal,
            tier=tier,
            headers=headers,
            legacy_headers=legacy_headers,
            legacy_reset=legacy_reset,
            clock=clock,
            sleep=sleep,
            hooks=hooks,
            fallback_workers=fallback_workers,
            store_health=store_health,
            problem_base=problem_base,
            allow_method_override=allow_method_override,
        )

    @property
    def limiter(self) -> SyncRateLimiter:
        return self.guard.limiter

    @property
    def policies(self) -> tuple[RateLimitPolicy, ...]:
        return self.guard.policies

    @property
    def store(self) -> SyncRateLimitStore:
        return self.guard.store

    def update_policies(self, policies: Sequence[RateLimitPolicy]) -> None:
        """Swap the policies at run time; counters of limits that kept their window carry on."""
        self.guard.update_policies(policies)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        guard = self.guard
        checked = guard.check(Request.from_environ(environ))
        if checked is None:
            return self.app(environ, start_response)
        if isinstance(checked, Response):
            return _send(checked, start_response)
        return _admitted(self.app, environ, start_response, checked, guard)


def _admitted(
    app: WSGIApplication,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    verdict: Verdict,
    guard: RateLimitGuard,
) -> Iterable[bytes]:
    """The app's answer to an admitted request, with the verdict's fields (Rule 5)."""
    added = _text_headers(verdict.headers)

    def start(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        return start_response(status, [*headers, *added], exc_info)

    if not verdict.held:
        return app(environ, start)
    try:
        result = app(environ, start)
    except BaseException:
        guard.release(verdict)
        raise
    return _Releasing(result, lambda: guard.release(verdict))


class _Releasing:
    """The app's iterable, whose ``close()`` also frees the verdict's slots (Rule 5)."""

    __slots__ = ("release", "result")

    def __init__(self, result: Iterable[bytes], release: Callable[[], None]) -> None:
        self.result = result
        self.release = release

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.result)

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        _run_all([self.release] if close is None else [close, self.release])


class _Started:
    """The app's ``start_response`` and ``write``, recorded (Rules 1 and 2)."""

    __slots__ = ("headers", "sent", "status", "written")

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.written: list[bytes] = []
        self.sent = False

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[1] is not None:
            if self.sent:  # too late to change the response: PEP 3333 says re-raise
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.status is not None:
            raise RuntimeError("start_response was called twice without exc_info")
        self.status = status
        self.headers = list(headers)
        return self.written.append


def _call(app: WSGIApplication, environ: WSGIEnvironment) -> Response:
    """Run the app until its status is known; its response, streamed (Rule 1)."""
    started = _Started()
    result = app(environ, started)
    try:
        iterator = iter(result)
        first: list[bytes] = []
        while started.status is None:
            try:
                first.append(next(iterator))
            except StopIteration:
                break
        if started.status is None:
            raise RuntimeError("the WSGI app returned without calling start_response")
        code, _, reason = started.status.partition(" ")
        if not (len(code) == 3 and code.isdigit()):
            raise RuntimeError(f"the WSGI app's status {started.status!r} has no 3-digit code")
    except BaseException:
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise
    started.sent = True
    wrote = bool(started.written)
    prefix = [*started.written, *first]
    del started.written[:]  # the same list as write(): later writes are drained in order
    body: bytes | Iterable[bytes]
    if type(result) in (list, tuple) and not wrote and not first:
        body = b"".join(result)
    else:
        body = _Body(prefix, iterator, result, started)
    return Response(int(code), started.headers, body, reason=reason)


class _Body:
    """The app's iterable after its first chunks: written data first, then the rest."""

    __slots__ = ("done", "iterator", "prefix", "result", "started")

    def __init__(
        self,
        prefix: list[bytes],
        iterator: Iterator[bytes],
        result: Iterable[bytes],
        started: _Started,
    ) -> None:
        self.prefix = prefix
        self.iterator = iterator
        self.result = result
        self.started = started
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        prefix = self.prefix
        if not prefix and not self.done:
            chunk: bytes | None = None
            try:
                chunk = next(self.iterator)
            except StopIteration:
                self.done = True
            written = self.started.written
            if written:  # write() called while the app made that chunk: it goes first
                prefix.extend(written)
                del written[:]
            if chunk is not None:
                prefix.append(chunk)
        if prefix:
            return prefix.pop(0)
        raise StopIteration

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()


class _Sent:
    """What the server gets: the response's chunks, and its ``close`` (Rule 3)."""

    __slots__ = ("response",)

    def __init__(self, response: Response) -> None:
        self.response = response

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.response)

    def close(self) -> None:
        self.response.close()


def _send(response: Response, start_response: StartResponse) -> Iterable[bytes]:
    try:
        start_response(response.status_line, response.headers)
    except BaseException:
        response.close()
        raise
    return _Sent(response)
