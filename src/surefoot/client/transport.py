"""``ResilientTransport`` and ``AsyncResilientTransport``: the retry flow's two drivers.

Each wraps another httpx transport (``HTTPTransport``, ``MockTransport``, a fault injector,
another wrapper) and runs every request through ``_flow.retry_flow``: the flow decides, the
driver sends, reads, closes, sleeps and tells the time. The two drivers are the same loop,
once with ``await``; ``tests/client/test_client_drivers.py`` runs one scenario table through
both so they cannot drift.

Rule 1: a response the flow may retry is read before the flow sees it (its problem code
decides) and closed before the next attempt, so its connection goes back to the pool.
Rule 2: the response handed to the caller is the very one the inner transport returned,
still streaming unless Rule 1 read it.
Rule 3: a transport error that says nothing about the upstream (an unsupported URL scheme,
a malformed request, a bug, a cancellation) is not retried and propagates unchanged.
Rule 4: the caller's request is left as it came, except for the ``Idempotency-Key`` header
that ``auto_idempotency_key`` adds (one key per logical request, reused on every attempt).
"""

from __future__ import annotations

import asyncio
import itertools
import random as _random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

import httpx

from surefoot.client._breaker_protocol import Breaker
from surefoot.client._budget import RetryBudget
from surefoot.client._flow import (
    Attempt,
    ErrorKind,
    Raised,
    Reply,
    Sleep,
    Target,
    Woke,
    problem_code,
    retry_flow,
    wants_body,
)
from surefoot.client._policy import RetryPolicy
from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError
from surefoot.events import EventHook, LoggingHook

__all__ = ["AsyncResilientTransport", "ResilientTransport"]

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
# Request ids for events when a request has neither X-Request-Id nor a key: unique per
# process start and cheap (no uuid per request).
_ID_PREFIX = secrets.token_hex(4) + "-"
_ID_COUNTER = itertools.count(1)

Flow = Generator[Attempt | Sleep, Reply[httpx.Response] | Raised | Woke, httpx.Response]


class _Resilience:
    """What both drivers share: configuration, and turning a request into a flow."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None,
        budget: RetryBudget | None,
        breaker: Breaker | None,
        auto_idempotency_key: bool,
        idempotency_header: str,
        clock: Clock | None,
        hooks: Sequence[EventHook] | None,
        random: _random.Random | None,
    ) -> None:
        name = type(self).__name__
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(
                f"{name}.retry: expected a RetryPolicy, got {type(retry).__name__}"
            )
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(
                f"{name}.budget: expected a RetryBudget, got {type(budget).__name__}"
            )
        if breaker is not None and not isinstance(breaker, Breaker):
            raise ConfigurationError(
                f"{name}.breaker: expected a circuit breaker with acquire(), "
                f"on_result(permit, ...) and release(permit), got {type(breaker).__name__}"
            )
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(
                f"{name}.clock: expected a Clock (with now()), got {type(clock).__name__}"
            )
        if not isinstance(idempotency_header, str) or not idempotency_header:
            raise ConfigurationError(
                f"{name}.idempotency_header: expected a header name, got {idempotency_header!r}"
            )
        self.retry = retry if retry is not None else RetryPolicy()
        self.budget = budget if budget is not None else RetryBudget()
        self.breaker = breaker
        self.auto_idempotency_key = bool(auto_idempotency_key)
        self.idempotency_header = idempotency_header
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self.random = random if random is not None else _random.Random()

    def _flow(self, request: httpx.Request) -> Flow:
        headers = request.headers
        key = headers.get(self.idempotency_header)
        if (
            key is None
            and self.auto_idempotency_key
            and request.method not in self.retry.idempotent_methods
        ):
            key = headers[self.idempotency_header] = str(uuid.uuid4())
        request_id = headers.get("x-request-id") or key or f"{_ID_PREFIX}{next(_ID_COUNTER)}"
        target = Target(
            method=request.method,
            host=request.url.host,
            path=request.url.path,
            request_id=request_id,
            keyed=key is not None,
            replayable=isinstance(request.stream, httpx.ByteStream),
        )
        return retry_flow(
            self.retry,
            target,
            now=self.clock.now(),
            rng=self.random,
            budget=self.budget,
            breaker=self.breaker,
            hooks=self.hooks,
        )

    def _reply(self, response: httpx.Response, read: bool) -> Reply[httpx.Response]:
        headers = response.headers
        code = problem_code(headers.get("content-type"), response.content) if read else None
        return Reply(
            response,
            response.status_code,
            self.clock.now(),
            retry_after=headers.get("retry-after"),
            problem_code=code,
        )


class ResilientTransport(httpx.BaseTransport, _Resilience):
    """An httpx transport that retries what is safe to retry, and nothing else.

    Example:
        >>> transport = ResilientTransport(
        ...     httpx.HTTPTransport(),
        ...     retry=RetryPolicy(max_attempts=4, deadline=30.0),
        ...     auto_idempotency_key=True,
        ... )
        >>> with httpx.Client(transport=transport, base_url="https://partner.example") as client:
        ...     client.post("/v1/shipments", json={"parcel": "P-1"})

    Args:
        transport: the transport that does the I/O; default ``httpx.HTTPTransport()``.
        retry: what is retried, how often and for how long; default ``RetryPolicy()``.
        budget: the retry budget; default a ``RetryBudget()`` of this transport's own.
            Share one between transports to the same upstream.
        breaker: a circuit breaker (``surefoot.client.Breaker``); default none.
        auto_idempotency_key: add an ``Idempotency-Key`` (a UUID4) to every request of a
            non-idempotent method that has none, so that POST and PATCH can be retried.
        idempotency_header: the header that carries the key.
        clock: tells the time for the deadline, ``Retry-After`` dates and the budget.
        sleep: waits between attempts; default ``time.sleep``.
        hooks: event hooks; default one ``LoggingHook``.
        random: the source of jitter; pass a seeded ``random.Random`` for reproducible waits.

    Warning:
        ``auto_idempotency_key`` only makes retries safe if the upstream honours the key
        (deduplicates by it). Check that first, e.g. with ``surefoot probe``.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        breaker: Breaker | None = None,
        auto_idempotency_key: bool = False,
        idempotency_header: str = "Idempotency-Key",
        clock: Clock | None = None,
        sleep: Callable[[float], object] = time.sleep,
        hooks: Sequence[EventHook] | None = None,
        random: _random.Random | None = None,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise ConfigurationError(
                "ResilientTransport.transport: expected an httpx.BaseTransport, "
                f"got {type(transport).__name__}"
            )
        _Resilience.__init__(
            self,
            retry=retry,
            budget=budget,
            breaker=breaker,
            auto_idempotency_key=auto_idempotency_key,
            idempotency_header=idempotency_header,
            clock=clock,
            hooks=hooks,
            random=random,
        )
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self.sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        flow = self._flow(request)
        extensions = request.extensions
        response: httpx.Response | None = None
        try:
            step = next(flow)
            while True:
                if response is not None:
                    response.close()
                    response = None
                if isinstance(step, Sleep):
                    self.sleep(step.seconds)
                    step = flow.send(Woke(self.clock.now()))
                    continue
                request.extensions = _with_timeout(extensions, step.timeout)
                try:
                    response = self.transport.handle_request(request)
                    read = wants_body(self.retry, response.status_code)
                    if read:
                        response.read()
                except BaseException as exc:
                    if response is not None:
                        response.close()
                        response = None
                    kind = _classify(exc)
                    if kind is None:
                        flow.throw(exc)  # settles the breaker's permit, then re-raises
                        raise  # pragma: no cover
                    step = flow.send(Raised(exc, kind, self.clock.now()))
                    continue
                step = flow.send(self._reply(response, read))
        except StopIteration as done:
            result: httpx.Response = done.value
            return result
        except BaseException:
            if response is not None:
                response.close()
            flow.close()
            raise
        finally:
            request.extensions = extensions

    def close(self) -> None:
        self.transport.close()


class AsyncResilientTransport(httpx.AsyncBaseTransport, _Resilience):
    """The asyncio twin of ``ResilientTransport`` (same flow, same arguments).

    Example:
        >>> transport = AsyncResilientTransport(
        ...     httpx.AsyncHTTPTransport(),
        ...     retry=RetryPolicy(max_attempts=4, deadline=30.0),
        ...     auto_idempotency_key=True,
        ... )
        >>> base = "https://partner.example"
        >>> async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        ...     await client.post("/v1/shipments", json={"parcel": "P-1"})

    ``sleep`` is awaited between attempts (default ``asyncio.sleep``); the other arguments
    are those of ``ResilientTransport``. The budget and the breaker may be shared with
    sync transports and between threads.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        breaker: Breaker | None = None,
        auto_idempotency_key: bool = False,
        idempotency_header: str = "Idempotency-Key",
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        hooks: Sequence[EventHook] | None = None,
        random: _random.Random | None = None,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise ConfigurationError(
                "AsyncResilientTransport.transport: expected an httpx.AsyncBaseTransport, "
                f"got {type(transport).__name__}"
            )
        _Resilience.__init__(
            self,
            retry=retry,
            budget=budget,
            breaker=breaker,
            auto_idempotency_key=auto_idempotency_key,
            idempotency_header=idempotency_header,
            clock=clock,
            hooks=hooks,
            random=random,
        )
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self.sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        flow = self._flow(request)
        extensions = request.extensions
        response: httpx.Response | None = None
        try:
            step = next(flow)
            while True:
                if response is not None:
                    await response.aclose()
                    response = None
                if isinstance(step, Sleep):
                    await self.sleep(step.seconds)
                    step = flow.send(Woke(self.clock.now()))
                    continue
                request.extensions = _with_timeout(extensions, step.timeout)
                try:
                    response = await self.transport.handle_async_request(request)
                    read = wants_body(self.retry, response.status_code)
                    if read:
                        await response.aread()
                except BaseException as exc:
                    if response is not None:
                        await response.aclose()
                        response = None
                    kind = _classify(exc)
                    if kind is None:
                        flow.throw(exc)  # settles the breaker's permit, then re-raises
                        raise  # pragma: no cover
                    step = flow.send(Raised(exc, kind, self.clock.now()))
                    continue
                step = flow.send(self._reply(response, read))
        except StopIteration as done:
            result: httpx.Response = done.value
            return result
        except BaseException:
            if response is not None:
                await response.aclose()
            flow.close()
            raise
        finally:
            request.extensions = extensions

    async def aclose(self) -> None:
        await self.transport.aclose()


def _classify(exc: BaseException) -> ErrorKind | None:
    """What an httpx error says about the request; None: not the upstream's doing."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return ErrorKind.CONNECT_TIMEOUT
    if isinstance(exc, httpx.TimeoutException):
        return ErrorKind.RESPONSE_TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return ErrorKind.CONNECT_FAILED
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return None
    if isinstance(exc, httpx.TransportError):
        return ErrorKind.CONNECTION_LOST
    return None


def _with_timeout(extensions: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """``extensions`` with each httpx timeout capped at ``timeout`` (never loosened)."""
    if timeout is None:
        return extensions
    timeout = max(timeout, 0.001)  # 0 would mean "no timeout" to some backends
    current = extensions.get("timeout") or {}
    capped = {}
    for key in _TIMEOUT_KEYS:
        value = current.get(key)
        capped[key] = timeout if value is None else min(value, timeout)
    return {**extensions, "timeout": capped}
