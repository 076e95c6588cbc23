"""``ChaosTransport`` and ``AsyncChaosTransport``: apply a ``FaultPlan`` to real requests.

Each wraps another httpx transport (``HTTPTransport``, ``MockTransport``,
``ResilientTransport``...) and asks the plan about every request it sees. Put it *under*
``ResilientTransport`` to see how a client survives the faults (every attempt gets its own
decision), or *over* it to see what a caller sees after the retries.

What each fault does (the upstream is the wrapped transport):

=============  ================================================================  ========
fault          effect                                                            upstream
=============  ================================================================  ========
``delay``      ``sleep(seconds + jitter)``, then forward                          called
``abort``      answer ``status`` (and ``Retry-After``) at once                    never
``reset``      raise ``httpx.ConnectError``                                       never
``hang``       ``sleep`` the request's read (pool) timeout, raise ``ReadTimeout``  never
               (``PoolTimeout``); without that timeout, sleep forever
``fail_after`` forward, read the whole answer, then raise ``httpx.ReadError``,     called
               answer 502, or give half the body and raise
               ``httpx.RemoteProtocolError``
``duplicate``  send twice (in sequence or concurrently), answer once              twice
``slow_body``  deliver the body at ``bytes_per_second`` (``sleep`` per piece)     called
``reorder``    hold until ``window`` requests are held or ``hold`` (``sleep``)    called
               passed, then forward one at a time in ``plan.release_order``
               order (async only: ``ChaosTransport`` refuses it)
=============  ================================================================  ========

Rule 1: every wait goes through the injected ``sleep``; the transports never read the
clock except to stamp events.
Rule 2: every fault applied is one ``FaultInjected`` event, emitted before it takes effect.
Rule 3: a fault of ``abort`` or ``reset`` (and ``hang``) never reaches the upstream; one of
``fail_after`` always did, and its answer was read to the end before it was lost.
Rule 4: a ``duplicate`` copy is a new request with the same method, URL, headers and body;
its extensions say ``surefoot.chaos.copy: True`` (nothing on the wire does); its answer
(or error) is read and dropped, and both have been delivered before the
transport returns.
Rule 5: a ``reorder`` batch (per rule and per transport) goes through in the plan's order,
one request at a time: the next is forwarded once the one before has its answer's head (or
failed, or was cancelled). A held request whose caller gives up keeps its place in the
window and its turn is skipped; a batch that never fills goes after ``hold`` seconds.
Responses made up here (``abort``, ``fail_after = "502"``) carry ``X-Surefoot-Chaos: <rule>``.

The async transport is the source: ``scripts/unasync.py`` writes ``ChaosTransport`` from it
(``scripts/check`` fails when they differ). What is not the same with ``await`` stays
written twice, side by side: reading a raw body (``_raw``), sending a ``concurrent``
duplicate (``_concurrently``: a thread, or two tasks) and holding a ``reorder`` batch
(``_AsyncPens``; its sync twin ``_Pens`` refuses: a sync transport sends one request at a
time per thread, so it cannot hold one request while another arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import httpx

from surefoot.chaos._events import FaultInjected
from surefoot.chaos._plan import (
    Abort,
    Delay,
    Duplicate,
    FailAfter,
    Fault,
    FaultPlan,
    Hang,
    Reorder,
    Reset,
    SlowBody,
)
from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError
from surefoot.events import EventHook, LoggingHook, emit, wanted

__all__ = ["CHAOS_HEADER", "COPY_EXTENSION", "AsyncChaosTransport", "ChaosTransport"]

#: The header on responses made up by a fault; its value is the rule's name.
CHAOS_HEADER = "X-Surefoot-Chaos"
#: The request extension that marks a ``duplicate``'s copy (never sent on the wire).
COPY_EXTENSION = "surefoot.chaos.copy"
# A hang without a timeout sleeps this long, again and again.
_FOREVER_STEP = 3600.0


class _Chaos:
    """What both transports share: the plan, the events, the made-up responses."""

    def __init__(
        self,
        plan: FaultPlan,
        clock: Clock | None,
        hooks: Sequence[EventHook] | None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(plan, FaultPlan):
            raise ConfigurationError(
                f"{name}.plan: expected a FaultPlan, got {type(plan).__name__}"
            )
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(
                f"{name}.clock: expected a Clock (with now()), got {type(clock).__name__}"
            )
        self.plan = plan
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)

    def _decide(self, request: httpx.Request) -> Fault | None:
        fault = self.plan.decide(request.method, request.url.path, request.headers)
        if fault is not None and wanted(self.hooks, FaultInjected):
            headers = request.headers
            emit(
                self.hooks,
                FaultInjected(
                    at=self.clock.now(),
                    request_id=headers.get("x-request-id") or headers.get("idempotency-key") or "-",
                    method=request.method,
                    host=request.url.host,
                    path=request.url.path,
                    rule=fault.rule,
                    kind=fault.kind,
                    detail=_detail(fault),
                ),
            )
        return fault


def _detail(fault: Fault) -> str:
    spec = fault.spec
    if isinstance(spec, Delay):
        return f"{fault.delay:.3f}s"
    if isinstance(spec, Abort):
        return str(spec.status)
    if isinstance(spec, Hang):
        return spec.phase
    if isinstance(spec, FailAfter):
        return spec.lose
    if isinstance(spec, Duplicate):
        return "concurrent" if spec.concurrent else "sequence"
    if isinstance(spec, SlowBody):
        return f"{spec.bytes_per_second:g} B/s"
    if isinstance(spec, Reorder):
        return f"window {spec.window}, hold {spec.hold:g}s"
    return "connect"


def _made_up(status: int, rule: str, retry_after: float | None = None) -> httpx.Response:
    headers = [("content-type", "text/plain; charset=utf-8"), (CHAOS_HEADER, rule)]
    if retry_after is not None:
        headers.append(("retry-after", str(math.ceil(retry_after))))
    body = f"fault injected by surefoot chaos rule {rule!r}\n".encode()
    return httpx.Response(status, headers=headers, content=body)


def _reset(request: httpx.Request, fault: Fault) -> httpx.ConnectError:
    return httpx.ConnectError(f"connection reset (chaos rule {fault.rule!r})", request=request)


def _hang(request: httpx.Request, spec: Hang) -> tuple[float | None, httpx.TimeoutException]:
    """How long the hang lasts (None: for ever) and what it raises then."""
    timeout: dict[str, float | None] = request.extensions.get("timeout", {})
    seconds = timeout.get(spec.phase)
    if spec.phase == "pool":
        return seconds, httpx.PoolTimeout("no connection in time (chaos hang)", request=request)
    return seconds, httpx.ReadTimeout("no answer in time (chaos hang)", request=request)


def _lost(
    request: httpx.Request, response: httpx.Response, raw: bytes, fault: Fault, lose: str
) -> httpx.Response:
    """What the caller gets of an answer that ``fail_after`` loses (or raises)."""
    if lose == "reset":
        raise httpx.ReadError(
            f"connection reset after the upstream answered (chaos rule {fault.rule!r})",
            request=request,
        )
    if lose == "502":
        return _made_up(502, fault.rule)
    return httpx.Response(
        response.status_code, headers=response.headers, stream=_Truncated(raw[: len(raw) // 2])
    )


def _copy(request: httpx.Request) -> httpx.Request:
    """An independent twin of a request whose body was read (marked in its extensions)."""
    return httpx.Request(
        request.method,
        request.url,
        headers=request.headers,
        content=request.content,
        extensions={**request.extensions, COPY_EXTENSION: True},
    )


def _raw(response: httpx.Response) -> bytes:
    """The whole body as the wrapped transport gives it (raw, even if it read it already)."""
    stream = response.stream
    assert isinstance(stream, httpx.SyncByteStream)
    return b"".join(stream)


async def _araw(response: httpx.Response) -> bytes:
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    return b"".join([chunk async for chunk in stream])


def _concurrently(
    deliver: Callable[[httpx.Request], httpx.Response], request: httpx.Request
) -> httpx.Response:
    """``deliver`` a copy of ``request`` from a second thread while the original goes out."""
    copy = _copy(request)

    def send_copy() -> None:
        try:
            deliver(copy)
        except Exception:  # the caller gets the original's answer, never the copy's
            return

    thread = threading.Thread(target=send_copy, name="surefoot-chaos-duplicate")
    thread.start()
    try:
        return deliver(request)
    finally:
        thread.join()


async def _aconcurrently(
    deliver: Callable[[httpx.Request], Awaitable[httpx.Response]], request: httpx.Request
) -> httpx.Response:
    """``_concurrently`` with two tasks."""
    original, copy = await asyncio.gather(
        deliver(request), deliver(_copy(request)), return_exceptions=True
    )
    if isinstance(copy, BaseException) and not isinstance(copy, Exception):
        raise copy  # a cancellation is never swallowed
    if isinstance(original, BaseException):
        raise original
    return original


def _pieces(chunk: bytes, rate: float) -> Iterator[bytes]:
    """``chunk`` in pieces of at most one second's worth of bytes."""
    size = max(1, int(rate))
    for start in range(0, len(chunk), size):
        yield chunk[start : start + size]


class _Truncated(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Half a body, then the error a peer that closed early gives."""

    def __init__(self, part: bytes) -> None:
        self._part = part

    def _error(self) -> httpx.RemoteProtocolError:
        return httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body (chaos truncate)"
        )

    def __iter__(self) -> Iterator[bytes]:
        if self._part:
            yield self._part
        raise self._error()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._part:
            yield self._part
        raise self._error()


def _slowed(
    response: httpx.Response, stream: httpx.SyncByteStream | httpx.AsyncByteStream
) -> httpx.Response:
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=stream,
        extensions=response.extensions,
    )


class _Batch:
    """One batch of held requests of a ``reorder`` rule (positions in arrival order)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.turns: list[asyncio.Event] = []
        self.finished: list[bool] = []
        self.order: tuple[int, ...] | None = None
        self.cursor = 0
        self.timer: asyncio.Task[None] | None = None

    def join(self) -> int:
        self.turns.append(asyncio.Event())
        self.finished.append(False)
        return len(self.turns) - 1

    def go(self, order: tuple[int, ...]) -> None:
        self.order = order
        self._next()

    def done(self, position: int) -> None:
        """``position`` went through, failed or gave up: the next one's turn, if it was its."""
        self.finished[position] = True
        order = self.order
        if order is not None and self.cursor < len(order) and order[self.cursor] == position:
            self._next()

    def _next(self) -> None:
        order = self.order
        assert order is not None
        while self.cursor < len(order) and self.finished[order[self.cursor]]:
            self.cursor += 1  # its caller gave up before its turn
        if self.cursor < len(order):
            self.turns[order[self.cursor]].set()


class _AsyncPens:
    """The open ``reorder`` batch of each rule, on one event loop (Rule 5)."""

    def __init__(self, plan: FaultPlan, sleep: Callable[[float], Awaitable[Any]]) -> None:
        self._plan = plan
        self._sleep = sleep
        self._open: dict[str, _Batch] = {}

    @contextlib.asynccontextmanager
    async def turn(self, fault: Fault) -> AsyncIterator[None]:
        """Hold the request until its turn; leaving the block passes the turn on."""
        spec = fault.spec
        assert isinstance(spec, Reorder)
        batch = self._open.get(fault.rule)
        if batch is None:
            batch = self._open[fault.rule] = _Batch(spec.window)
            batch.timer = asyncio.create_task(self._expire(fault.rule, batch, spec.hold))
        # Nothing awaited since decide(): positions follow the order of decisions.
        position = batch.join()
        if len(batch.turns) >= batch.window:
            self._release(fault.rule, batch)
        try:
            await batch.turns[position].wait()
            yield
        finally:
            batch.done(position)

    async def _expire(self, rule: str, batch: _Batch, hold: float) -> None:
        try:
            await self._sleep(hold)
        finally:  # also when the sleep fails: a held request is never left behind
            batch.timer = None
            self._release(rule, batch)

    def close(self) -> None:
        """Release every open batch now (its hold is cut short): nothing is left waiting."""
        for rule, batch in list(self._open.items()):
            self._release(rule, batch)

    def _release(self, rule: str, batch: _Batch) -> None:
        if self._open.get(rule) is batch:
            del self._open[rule]
        if batch.order is not None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        batch.go(self._plan.release_order(len(batch.turns)))


class _Pens:
    """The sync twin of ``_AsyncPens``: refuses ``reorder``, at construction and per request."""

    def __init__(self, plan: FaultPlan, sleep: Callable[[float], object]) -> None:
        for rule in plan.rules:
            if isinstance(rule.fault, Reorder):
                raise _refused(rule.name)

    def turn(self, fault: Fault) -> contextlib.AbstractContextManager[None]:
        raise _refused(fault.rule)

    def close(self) -> None:
        pass


def _refused(rule: str) -> ConfigurationError:
    return ConfigurationError(
        "ChaosTransport.plan: expected no reorder rule (a sync transport sends one request "
        "at a time, so it cannot hold one while another arrives: use AsyncChaosTransport or "
        f"ChaosProxy), got rule {rule!r}"
    )


# ---- generated by scripts/unasync.py from the async source below: do not edit ----


class _SlowStream(httpx.SyncByteStream):
    """A ``slow_body`` answer: pieces of one second's worth at most, a ``sleep`` before each."""

    def __init__(self, response: httpx.Response, rate: float, sleep: Callable[[float], object]):
        self._response, self._rate, self._sleep = response, rate, sleep

    def __iter__(self) -> Iterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        for chunk in stream:
            for piece in _pieces(chunk, self._rate):
                self._sleep(len(piece) / self._rate)
                yield piece

    def close(self) -> None:
        self._response.close()


class ChaosTransport(httpx.BaseTransport, _Chaos):
    """An httpx transport that applies a ``FaultPlan`` to each request it forwards.

    Example:
        >>> plan = FaultPlan([Rule(name="lost", fault=FailAfter(), methods=("POST",),
        ...                        probability=0.3)], seed=7)
        >>> chaos = ChaosTransport(httpx.HTTPTransport(), plan)
        >>> transport = ResilientTransport(chaos, auto_idempotency_key=True)
        >>> client = httpx.Client(transport=transport, base_url="http://127.0.0.1:8000")

    Args:
        transport: the transport that really sends (the "upstream").
        plan: the fault plan; it may be shared, changed and paused at run time.
        sleep: every wait of ``delay``, ``hang``, ``slow_body`` and a ``reorder`` hold;
            default ``time.sleep`` (in tests, a ``surefoot.testing.RecordingSleep``, or
            its ``asleep`` when async).
        clock: stamps events; default ``SystemClock()``.
        hooks: event hooks; default one ``LoggingHook``.

    Warning:
        A ``concurrent`` duplicate sends its copy beside the original, as a second task
        (async) or from a second thread (sync): a sync wrapped transport must then be
        thread-safe (``httpx.HTTPTransport`` is). ``reorder`` needs the async transport:
        the sync one refuses a plan with a reorder rule (``ConfigurationError``).
    """

    def __init__(
        self,
        transport: httpx.BaseTransport,
        plan: FaultPlan,
        *,
        sleep: Callable[[float], object] = time.sleep,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] | None = None,
    ) -> None:
        if not isinstance(transport, httpx.BaseTransport):
            raise ConfigurationError(
                "ChaosTransport.transport: expected an httpx.BaseTransport, "
                f"got {type(transport).__name__}"
            )
        _Chaos.__init__(self, plan, clock, hooks)
        self.transport = transport
        self.sleep = sleep
        self._pens = _Pens(plan, sleep)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self._decide(request)
        if fault is None:
            return self.transport.handle_request(request)
        spec = fault.spec
        if isinstance(spec, Delay):
            self.sleep(fault.delay)
            return self.transport.handle_request(request)
        if isinstance(spec, Abort):
            return _made_up(spec.status, fault.rule, spec.retry_after)
        if isinstance(spec, Reset):
            raise _reset(request, fault)
        if isinstance(spec, Hang):
            seconds, error = _hang(request, spec)
            while seconds is None:
                self.sleep(_FOREVER_STEP)
            self.sleep(seconds)
            raise error
        if isinstance(spec, FailAfter):
            response = self.transport.handle_request(request)
            try:
                raw = _raw(response)
            finally:
                response.close()
            return _lost(request, response, raw, fault, spec.lose)
        if isinstance(spec, Reorder):
            with self._pens.turn(fault):
                return self.transport.handle_request(request)
        if isinstance(spec, Duplicate):
            request.read()
            if spec.concurrent:
                return _concurrently(self._deliver, request)
            with contextlib.suppress(Exception):  # the copy's answer or error is dropped
                self._deliver(_copy(request))
            return self.transport.handle_request(request)
        response = self.transport.handle_request(request)
        return _slowed(response, _SlowStream(response, spec.bytes_per_second, self.sleep))

    def _deliver(self, request: httpx.Request) -> httpx.Response:
        response = self.transport.handle_request(request)
        response.read()
        return response

    def close(self) -> None:
        self._pens.close()
        self.transport.close()


# ---- end ----


# ---- async source of the generated code above (scripts/unasync.py) ----


class _AsyncSlowStream(httpx.AsyncByteStream):
    """A ``slow_body`` answer: pieces of one second's worth at most, a ``sleep`` before each."""

    def __init__(
        self, response: httpx.Response, rate: float, sleep: Callable[[float], Awaitable[Any]]
    ):
        self._response, self._rate, self._sleep = response, rate, sleep

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        async for chunk in stream:
            for piece in _pieces(chunk, self._rate):
                await self._sleep(len(piece) / self._rate)
                yield piece

    async def aclose(self) -> None:
        await self._response.aclose()


class AsyncChaosTransport(httpx.AsyncBaseTransport, _Chaos):
    """An httpx transport that applies a ``FaultPlan`` to each request it forwards.

    Example:
        >>> plan = FaultPlan([Rule(name="lost", fault=FailAfter(), methods=("POST",),
        ...                        probability=0.3)], seed=7)
        >>> chaos = AsyncChaosTransport(httpx.AsyncHTTPTransport(), plan)
        >>> transport = AsyncResilientTransport(chaos, auto_idempotency_key=True)
        >>> client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")

    Args:
        transport: the transport that really sends (the "upstream").
        plan: the fault plan; it may be shared, changed and paused at run time.
        sleep: every wait of ``delay``, ``hang``, ``slow_body`` and a ``reorder`` hold;
            default ``asyncio.sleep`` (in tests, a ``surefoot.testing.RecordingSleep``, or
            its ``asleep`` when async).
        clock: stamps events; default ``SystemClock()``.
        hooks: event hooks; default one ``LoggingHook``.

    Warning:
        A ``concurrent`` duplicate sends its copy beside the original, as a second task
        (async) or from a second thread (sync): a sync wrapped transport must then be
        thread-safe (``httpx.HTTPTransport`` is). ``reorder`` needs the async transport:
        the sync one refuses a plan with a reorder rule (``ConfigurationError``).
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        plan: FaultPlan,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] | None = None,
    ) -> None:
        if not isinstance(transport, httpx.AsyncBaseTransport):
            raise ConfigurationError(
                "AsyncChaosTransport.transport: expected an httpx.AsyncBaseTransport, "
                f"got {type(transport).__name__}"
            )
        _Chaos.__init__(self, plan, clock, hooks)
        self.transport = transport
        self.sleep = sleep
        self._pens = _AsyncPens(plan, sleep)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self._decide(request)
        if fault is None:
            return await self.transport.handle_async_request(request)
        spec = fault.spec
        if isinstance(spec, Delay):
            await self.sleep(fault.delay)
            return await self.transport.handle_async_request(request)
        if isinstance(spec, Abort):
            return _made_up(spec.status, fault.rule, spec.retry_after)
        if isinstance(spec, Reset):
            raise _reset(request, fault)
        if isinstance(spec, Hang):
            seconds, error = _hang(request, spec)
            while seconds is None:
                await self.sleep(_FOREVER_STEP)
            await self.sleep(seconds)
            raise error
        if isinstance(spec, FailAfter):
            response = await self.transport.handle_async_request(request)
            try:
                raw = await _araw(response)
            finally:
                await response.aclose()
            return _lost(request, response, raw, fault, spec.lose)
        if isinstance(spec, Reorder):
            async with self._pens.turn(fault):
                return await self.transport.handle_async_request(request)
        if isinstance(spec, Duplicate):
            await request.aread()
            if spec.concurrent:
                return await _aconcurrently(self._deliver, request)
            with contextlib.suppress(Exception):  # the copy's answer or error is dropped
                await self._deliver(_copy(request))
            return await self.transport.handle_async_request(request)
        response = await self.transport.handle_async_request(request)
        return _slowed(response, _AsyncSlowStream(response, spec.bytes_per_second, self.sleep))

    async def _deliver(self, request: httpx.Request) -> httpx.Response:
        response = await self.transport.handle_async_request(request)
        await response.aread()
        return response

    async def aclose(self) -> None:
        self._pens.close()
        await self.transport.aclose()


# ---- end ----
