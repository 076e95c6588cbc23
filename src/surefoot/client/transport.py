"""``ResilientTransport`` and ``AsyncResilientTransport``: the retry flow's two drivers.

Each wraps another httpx transport (``HTTPTransport``, ``MockTransport``, a fault injector,
another wrapper) and runs every request through ``_flow.retry_flow``: the flow decides, the
driver sends, reads, closes, sleeps and tells the time. The two drivers are the same loop,
once with ``await``: the async one is the source, ``scripts/unasync.py`` writes the sync one
from it, and ``scripts/check`` fails when they differ. ``test_drivers_agree`` in
``tests/client/test_client_transport.py`` runs one scenario table through both.

Rule 1: a response the flow may retry is read before the flow sees it (its problem code
decides) and closed before the next attempt, so its connection goes back to the pool.
Rule 2: the response handed to the caller is the very one the inner transport returned,
still streaming unless Rule 1 read it.
Rule 3: a transport error that says nothing about the upstream (an unsupported URL scheme,
a malformed request, a bug, a cancellation) is not retried and propagates unchanged.
Rule 4: the caller's request is left as it came, except for the ``Idempotency-Key`` header
that an ``idempotency_scope`` or else ``auto_idempotency_key`` adds to a non-idempotent
request without one (one key per logical request, reused on every attempt).

Around each attempt the flow asks for (after the breaker's permit, inside the flow), the
driver takes, in this order (``_enter``):
1. a ``Bulkhead`` slot: per attempt, held from before the request is sent until its response
   is closed (read to the end, or closed by the driver before a retry), so the cap counts
   what really holds a connection; backoff sleeps hold no slot, so a retrying request does
   not keep others out while it waits. Taken before the token so that sends follow the
   token timeline (tokens taken and then held up behind a full bulkhead would go out in a
   burst once slots free up).
2. a ``Throttle`` token: every attempt takes one (the partner counts retries too).
Both waits are bounded by their ``max_wait`` and by what is left of the retry deadline; a
refusal raises ``UpstreamThrottled`` through the flow (which settles the breaker's permit),
and nothing is sent.

Rule 5: a slot is released on every path: the transport raised or was cancelled (at once),
a response came (when it is closed; at once if it came already closed).
Rule 6: ``StaleCache`` sits around the whole flow and only for GET: a complete 2xx answer is
stored as the caller reads it; an ``UpstreamError`` or a final response with a retry status
is replaced by the stored answer if it is fresh enough (``X-Surefoot-Stale`` marks it).
"""

from __future__ import annotations

import asyncio
import itertools
import random as _random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from surefoot.client import _events as ev
from surefoot.client._breaker_protocol import Breaker
from surefoot.client._budget import RetryBudget
from surefoot.client._bulkhead import Bulkhead, Slot
from surefoot.client._cache import STALE_HEADER, CachedResponse, StaleCache
from surefoot.client._flow import (
    Attempt,
    ErrorKind,
    Raised,
    Reply,
    Sleep,
    Target,
    Woke,
    emit_event,
    problem_code,
    retry_flow,
    wants_body,
)
from surefoot.client._policy import RetryPolicy
from surefoot.client._scope import next_scoped_key
from surefoot.client._throttle import Throttle
from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError, UpstreamError, UpstreamThrottled
from surefoot.events import EventHook, LoggingHook

__all__ = ["AsyncResilientTransport", "ResilientTransport"]

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
# Request ids for events when a request has neither X-Request-Id nor a key: unique per
# process start and cheap (no uuid per request).
_ID_PREFIX = secrets.token_hex(4) + "-"
_ID_COUNTER = itertools.count(1)

Flow = Generator[Attempt | Sleep, Reply[httpx.Response] | Raised | Woke, httpx.Response]
# Not part of a stored answer: they describe how the stored bytes were sent then.
_STALE_DROPPED = frozenset({"age", STALE_HEADER.lower()})
_DECODED_DROPPED = frozenset({"content-encoding", "content-length"})


@dataclass(slots=True)
class _Call:
    """One logical request: what the drivers track beside the flow."""

    target: Target
    flow: Flow
    deadline_at: float | None
    attempts: int = 0


class _Resilience:
    """What both drivers share: configuration, and turning a request into a flow."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None,
        budget: RetryBudget | None,
        breaker: Breaker | None,
        throttle: Throttle | None,
        bulkhead: Bulkhead | None,
        cache: StaleCache | None,
        auto_idempotency_key: bool,
        idempotency_header: str,
        clock: Clock | None,
        hooks: Sequence[EventHook] | None,
        random: _random.Random | None,
    ) -> None:
        name = type(self).__name__
        for arg, value, cls in (
            ("throttle", throttle, Throttle),
            ("bulkhead", bulkhead, Bulkhead),
            ("cache", cache, StaleCache),
        ):
            if value is not None and not isinstance(value, cls):
                raise ConfigurationError(
                    f"{name}.{arg}: expected a {cls.__name__}, got {type(value).__name__}"
                )
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
        self.throttle = throttle
        self.bulkhead = bulkhead
        self.cache = cache
        self.auto_idempotency_key = bool(auto_idempotency_key)
        self.idempotency_header = idempotency_header
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self.random = random if random is not None else _random.Random()

    def _start(self, request: httpx.Request) -> _Call:
        headers = request.headers
        key = headers.get(self.idempotency_header)
        if key is None and request.method not in self.retry.idempotent_methods:
            # An explicit opt-in: a scope's key wins over auto's, and needs no auto.
            key = next_scoped_key()
            if key is None and self.auto_idempotency_key:
                key = str(uuid.uuid4())
            if key is not None:
                headers[self.idempotency_header] = key
        request_id = headers.get("x-request-id") or key or f"{_ID_PREFIX}{next(_ID_COUNTER)}"
        target = Target(
            method=request.method,
            host=request.url.host,
            path=request.url.path,
            request_id=request_id,
            keyed=key is not None,
            replayable=isinstance(request.stream, httpx.ByteStream),
        )
        now = self.clock.now()
        flow: Flow = retry_flow(
            self.retry,
            target,
            now=now,
            rng=self.random,
            budget=self.budget,
            breaker=self.breaker,
            hooks=self.hooks,
        )
        deadline_at = None if self.retry.deadline is None else now + self.retry.deadline
        return _Call(target, flow, deadline_at)

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

    # -- throttle and bulkhead: the shared half of _enter ----------------------------------

    def _allowed(self, max_wait: float, call: _Call, now: float) -> float:
        """The longest wait: ``max_wait``, but never past the retry deadline."""
        if call.deadline_at is None:
            return max_wait
        return max(0.0, min(max_wait, call.deadline_at - now))

    def _timeout(self, step: Attempt, call: _Call) -> float | None:
        """The attempt's timeout, less the time spent waiting for a slot or a token."""
        if call.deadline_at is None or (self.throttle is None and self.bulkhead is None):
            return step.timeout
        left = call.deadline_at - self.clock.now()
        return left if step.timeout is None else min(step.timeout, left)

    def _token_pause(
        self, due: float, started: float, now: float, allowed: float, call: _Call
    ) -> float:
        """After a token decision: 0.0 (taken), the seconds to sleep, or a refusal raised."""
        throttle = self.throttle
        assert throttle is not None
        if due <= 0.0:
            if now > started:
                self._emit(
                    ev.ThrottleWaited,
                    call,
                    now,
                    integration=throttle.name,
                    limit=throttle.described,
                    delay=now - started,
                )
            return 0.0
        if now - started + due > allowed:
            self._emit(
                ev.ThrottleRefused,
                call,
                now,
                integration=throttle.name,
                limit=throttle.described,
                retry_after=due,
            )
            raise throttle.refusal(due)
        return due

    def _bulkhead_full(self, call: _Call, started: float, refused: bool) -> None:
        bulkhead = self.bulkhead
        assert bulkhead is not None
        now = self.clock.now()
        self._emit(
            ev.BulkheadFull,
            call,
            now,
            integration=bulkhead.name,
            max_concurrent=bulkhead.max_concurrent,
            waited=now - started,
            refused=refused,
        )

    def _emit(self, cls: type[ev.ClientEvent], call: _Call, now: float, **fields: Any) -> None:
        emit_event(self.hooks, cls, call.target, now, attempt=call.attempts, **fields)

    # -- the stale cache -----------------------------------------------------------------------

    def _cached(self, request: httpx.Request) -> StaleCache | None:
        return self.cache if request.method == "GET" else None

    def _stale(
        self, cache: StaleCache, request: httpx.Request, call: _Call, reason: str
    ) -> httpx.Response | None:
        """The stored answer to ``request`` as a response, if fresh enough; else None."""
        now = self.clock.now()
        return self._served(
            cache.get(str(request.url), request.headers, now), request, call, reason, now
        )

    async def _astale(
        self, cache: StaleCache, request: httpx.Request, call: _Call, reason: str
    ) -> httpx.Response | None:
        """``_stale`` for the async transport: a store-backed cache never blocks the loop."""
        now = self.clock.now()
        entry = await cache.aget(str(request.url), request.headers, now)
        return self._served(entry, request, call, reason, now)

    def _served(
        self,
        entry: CachedResponse | None,
        request: httpx.Request,
        call: _Call,
        reason: str,
        now: float,
    ) -> httpx.Response | None:
        if entry is None:
            return None
        age = max(0.0, now - entry.stored_at)
        headers = [(k, v) for k, v in entry.headers if k.lower() not in _STALE_DROPPED]
        headers += [("Age", str(int(age))), (STALE_HEADER, str(int(age)))]
        self._emit(ev.StaleServed, call, now, age=age, reason=reason)
        return httpx.Response(
            entry.status, headers=headers, stream=httpx.ByteStream(entry.body), request=request
        )

    def _keep(
        self, cache: StaleCache, request: httpx.Request, response: httpx.Response
    ) -> _Tee | None:
        """A ``_Tee`` to store a good answer once it is read; ``tee.ready`` when it was read
        already (the caller then stores it at once)."""
        if not cache.storable(response.status_code, response.headers):
            return None
        tee = _Tee(self, cache, str(request.url), httpx.Headers(request.headers), response)
        if response.is_stream_consumed:
            # Read already (httpx.Response(content=...)): its content is decoded.
            body = response.content
            tee.headers = [
                (k, v)
                for k, v in response.headers.multi_items()
                if k.lower() not in _DECODED_DROPPED
            ]
            tee.headers.append(("Content-Length", str(len(body))))
            tee.add(body)
            tee.ready = True
        return tee


class _Tee:
    """Copies a good answer's raw body as the caller reads it; stores it once complete."""

    __slots__ = (
        "cache",
        "chunks",
        "clock",
        "headers",
        "ready",
        "request_headers",
        "size",
        "status",
        "url",
    )

    def __init__(
        self,
        owner: _Resilience,
        cache: StaleCache,
        url: str,
        request_headers: httpx.Headers,
        response: httpx.Response,
    ) -> None:
        self.cache, self.clock, self.url = cache, owner.clock, url
        self.request_headers = request_headers
        self.status = response.status_code
        self.headers = response.headers.multi_items()
        self.chunks: list[bytes] | None = []
        self.size = 0
        self.ready = False  # the whole body is here already

    def add(self, chunk: bytes) -> None:
        if self.chunks is not None:
            self.size += len(chunk)
            if self.size > self.cache.max_entry_bytes:
                self.chunks = None  # too big to keep: stop copying
            else:
                self.chunks.append(chunk)

    def done(self) -> None:
        if self.chunks is not None:
            body = b"".join(self.chunks)
            self.chunks = None
            self.cache.put(
                self.url, self.request_headers, self.status, self.headers, body, self.clock.now()
            )

    async def adone(self) -> None:
        """``done`` for the async transport: a store's round trip never blocks the loop."""
        if self.chunks is not None:
            body = b"".join(self.chunks)
            self.chunks = None
            await self.cache.aput(
                self.url, self.request_headers, self.status, self.headers, body, self.clock.now()
            )


# ---- generated by scripts/unasync.py from the async source below: do not edit ----


class _Watched(httpx.SyncByteStream):
    """A response body that frees its bulkhead slot when closed and feeds a ``_Tee``."""

    def __init__(
        self, stream: httpx.SyncByteStream, slot: Slot | None = None, tee: _Tee | None = None
    ) -> None:
        self.stream, self.slot, self.tee = stream, slot, tee

    def __iter__(self) -> Iterator[bytes]:
        tee = self.tee
        for chunk in self.stream:
            if tee is not None:
                tee.add(chunk)
            yield chunk
        if tee is not None:
            tee.done()

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            if self.slot is not None:
                self.slot.release()


class ResilientTransport(httpx.BaseTransport, _Resilience):
    """An httpx transport that retries what is safe to retry, and nothing else.

    Example:
        >>> transport = ResilientTransport(
        ...     httpx.HTTPTransport(),
        ...     retry=RetryPolicy(max_attempts=4, deadline=30.0),
        ...     auto_idempotency_key=True,
        ... )
        >>> base = "https://partner.example"
        >>> with httpx.Client(transport=transport, base_url=base) as client:
        ...     client.post("/v1/shipments", json={"parcel": "P-1"})

    The budget, the breaker, the throttle, the bulkhead and the cache may be shared
    between transports, sync and async, and between threads.

    Args:
        transport: the transport that does the I/O; default ``httpx.HTTPTransport()``.
        retry: what is retried, how often and for how long; default ``RetryPolicy()``.
        budget: the retry budget; default a ``RetryBudget()`` of this transport's own.
            Share one between transports to the same upstream.
        breaker: a circuit breaker (``surefoot.client.Breaker``); default none.
        throttle: a ``Throttle``: every attempt waits for one of its tokens; default none.
        bulkhead: a ``Bulkhead``: every attempt holds one of its slots from before it is
            sent until its response is closed; default none.
        cache: a ``StaleCache``: GET answers are kept and served when the upstream fails;
            default none.
        auto_idempotency_key: add an ``Idempotency-Key`` (a UUID4) to every request of a
            non-idempotent method that has none, so that POST and PATCH can be retried.
            Inside an ``idempotency_scope`` the scope's key is added instead, with or
            without this.
        idempotency_header: the header that carries the key.
        clock: tells the time for the deadline, ``Retry-After`` dates and the budget.
        sleep: waits between attempts and for throttle tokens; default ``time.sleep``.
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
        throttle: Throttle | None = None,
        bulkhead: Bulkhead | None = None,
        cache: StaleCache | None = None,
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
            throttle=throttle,
            bulkhead=bulkhead,
            cache=cache,
            auto_idempotency_key=auto_idempotency_key,
            idempotency_header=idempotency_header,
            clock=clock,
            hooks=hooks,
            random=random,
        )
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self.sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = self._start(request)
        cache = self._cached(request)
        if cache is None:
            return self._drive(request, call)
        try:
            response = self._drive(request, call)
        except UpstreamError as exc:
            stale = self._stale(cache, request, call, exc.code)
            if stale is None:
                raise
            return stale
        if response.status_code in self.retry.retry_statuses:
            stale = self._stale(cache, request, call, str(response.status_code))
            if stale is not None:
                response.close()
                return stale
        tee = self._keep(cache, request, response)
        if tee is not None and tee.ready:
            tee.done()
        elif tee is not None:
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = _Watched(response.stream, tee=tee)
        return response

    def _drive(self, request: httpx.Request, call: _Call) -> httpx.Response:
        flow = call.flow
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
                call.attempts = step.number
                try:
                    slot = self._enter(call)
                except BaseException as exc:
                    flow.throw(exc)  # settles the breaker's permit, then re-raises
                    raise  # pragma: no cover
                request.extensions = _with_timeout(extensions, self._timeout(step, call))
                try:
                    try:
                        response = self.transport.handle_request(request)
                    except BaseException:
                        if slot is not None:
                            slot.release()
                        raise
                    if slot is not None:
                        if response.is_closed:
                            slot.release()
                        else:
                            assert isinstance(response.stream, httpx.SyncByteStream)
                            response.stream = _Watched(response.stream, slot)
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

    def _enter(self, call: _Call) -> Slot | None:
        """A bulkhead slot, then a throttle token (see the module docstring)."""
        slot: Slot | None = None
        bulkhead = self.bulkhead
        if bulkhead is not None:
            slot = bulkhead.try_acquire()
            if slot is None:
                started = self.clock.now()
                try:
                    slot = bulkhead.acquire(self._allowed(bulkhead.max_wait, call, started))
                except UpstreamThrottled:
                    self._bulkhead_full(call, started, refused=True)
                    raise
                self._bulkhead_full(call, started, refused=False)
        throttle = self.throttle
        if throttle is not None:
            try:
                started = now = self.clock.now()
                allowed = self._allowed(throttle.max_wait, call, started)
                while pause := self._token_pause(throttle.take(now), started, now, allowed, call):
                    self.sleep(pause)
                    now = self.clock.now()
            except BaseException:
                if slot is not None:
                    slot.release()
                raise
        return slot

    def close(self) -> None:
        self.transport.close()


# ---- end ----


# ---- async source of the generated code above (scripts/unasync.py) ----


class _AsyncWatched(httpx.AsyncByteStream):
    """A response body that frees its bulkhead slot when closed and feeds a ``_Tee``."""

    def __init__(
        self, stream: httpx.AsyncByteStream, slot: Slot | None = None, tee: _Tee | None = None
    ) -> None:
        self.stream, self.slot, self.tee = stream, slot, tee

    async def __aiter__(self) -> AsyncIterator[bytes]:
        tee = self.tee
        async for chunk in self.stream:
            if tee is not None:
                tee.add(chunk)
            yield chunk
        if tee is not None:
            await tee.adone()

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            if self.slot is not None:
                self.slot.release()


class AsyncResilientTransport(httpx.AsyncBaseTransport, _Resilience):
    """An httpx transport that retries what is safe to retry, and nothing else.

    Example:
        >>> transport = AsyncResilientTransport(
        ...     httpx.AsyncHTTPTransport(),
        ...     retry=RetryPolicy(max_attempts=4, deadline=30.0),
        ...     auto_idempotency_key=True,
        ... )
        >>> base = "https://partner.example"
        >>> async with httpx.AsyncClient(transport=transport, base_url=base) as client:
        ...     await client.post("/v1/shipments", json={"parcel": "P-1"})

    The budget, the breaker, the throttle, the bulkhead and the cache may be shared
    between transports, sync and async, and between threads.

    Args:
        transport: the transport that does the I/O; default ``httpx.AsyncHTTPTransport()``.
        retry: what is retried, how often and for how long; default ``RetryPolicy()``.
        budget: the retry budget; default a ``RetryBudget()`` of this transport's own.
            Share one between transports to the same upstream.
        breaker: a circuit breaker (``surefoot.client.Breaker``); default none.
        throttle: a ``Throttle``: every attempt waits for one of its tokens; default none.
        bulkhead: a ``Bulkhead``: every attempt holds one of its slots from before it is
            sent until its response is closed; default none.
        cache: a ``StaleCache``: GET answers are kept and served when the upstream fails;
            default none.
        auto_idempotency_key: add an ``Idempotency-Key`` (a UUID4) to every request of a
            non-idempotent method that has none, so that POST and PATCH can be retried.
            Inside an ``idempotency_scope`` the scope's key is added instead, with or
            without this.
        idempotency_header: the header that carries the key.
        clock: tells the time for the deadline, ``Retry-After`` dates and the budget.
        sleep: waits between attempts and for throttle tokens; default ``asyncio.sleep``.
        hooks: event hooks; default one ``LoggingHook``.
        random: the source of jitter; pass a seeded ``random.Random`` for reproducible waits.

    Warning:
        ``auto_idempotency_key`` only makes retries safe if the upstream honours the key
        (deduplicates by it). Check that first, e.g. with ``surefoot probe``.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        breaker: Breaker | None = None,
        throttle: Throttle | None = None,
        bulkhead: Bulkhead | None = None,
        cache: StaleCache | None = None,
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
            throttle=throttle,
            bulkhead=bulkhead,
            cache=cache,
            auto_idempotency_key=auto_idempotency_key,
            idempotency_header=idempotency_header,
            clock=clock,
            hooks=hooks,
            random=random,
        )
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self.sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = self._start(request)
        cache = self._cached(request)
        if cache is None:
            return await self._drive(request, call)
        try:
            response = await self._drive(request, call)
        except UpstreamError as exc:
            stale = await self._astale(cache, request, call, exc.code)
            if stale is None:
                raise
            return stale
        if response.status_code in self.retry.retry_statuses:
            stale = await self._astale(cache, request, call, str(response.status_code))
            if stale is not None:
                await response.aclose()
                return stale
        tee = self._keep(cache, request, response)
        if tee is not None and tee.ready:
            await tee.adone()
        elif tee is not None:
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _AsyncWatched(response.stream, tee=tee)
        return response

    async def _drive(self, request: httpx.Request, call: _Call) -> httpx.Response:
        flow = call.flow
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
                call.attempts = step.number
                try:
                    slot = await self._enter(call)
                except BaseException as exc:
                    flow.throw(exc)  # settles the breaker's permit, then re-raises
                    raise  # pragma: no cover
                request.extensions = _with_timeout(extensions, self._timeout(step, call))
                try:
                    try:
                        response = await self.transport.handle_async_request(request)
                    except BaseException:
                        if slot is not None:
                            slot.release()
                        raise
                    if slot is not None:
                        if response.is_closed:
                            slot.release()
                        else:
                            assert isinstance(response.stream, httpx.AsyncByteStream)
                            response.stream = _AsyncWatched(response.stream, slot)
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

    async def _enter(self, call: _Call) -> Slot | None:
        """A bulkhead slot, then a throttle token (see the module docstring)."""
        slot: Slot | None = None
        bulkhead = self.bulkhead
        if bulkhead is not None:
            slot = bulkhead.try_acquire()
            if slot is None:
                started = self.clock.now()
                try:
                    slot = await bulkhead.aacquire(self._allowed(bulkhead.max_wait, call, started))
                except UpstreamThrottled:
                    self._bulkhead_full(call, started, refused=True)
                    raise
                self._bulkhead_full(call, started, refused=False)
        throttle = self.throttle
        if throttle is not None:
            try:
                started = now = self.clock.now()
                allowed = self._allowed(throttle.max_wait, call, started)
                while pause := self._token_pause(
                    await throttle.atake(now), started, now, allowed, call
                ):
                    await self.sleep(pause)
                    now = self.clock.now()
            except BaseException:
                if slot is not None:
                    slot.release()
                raise
        return slot

    async def aclose(self) -> None:
        await self.transport.aclose()


# ---- end ----


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
