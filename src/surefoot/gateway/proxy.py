"""``ProxyApp``: the gateway's reverse proxy, a pure ASGI app forwarding to the upstream.

Theory of operation, per request:
1. Shed or refuse before sending anything: the ``LoadShedder`` (503
   ``service_overloaded``) and the upstream's ``CircuitBreaker`` (503 ``circuit_open``).
   Such a request never reached the upstream, so it is marked ``scope[NOT_EXECUTED]`` and
   an idempotency reservation is released: the client's retry runs.
2. Forward: the method, the raw path and query, the headers minus hop-by-hop ones (and
   those the ``Connection`` header names) and minus forwarding headers (below), plus the
   proxy's own ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` and the request id. The
   request body is streamed (a body that came in one message is sent as bytes), the
   ``Idempotency-Key`` is forwarded unless told not to.
3. Stream the answer back as it comes, minus hop-by-hop headers and the upstream's own
   ``X-Request-Id`` (the ``Gateway`` adds the request's id to every response it sends).
   The last piece of the body goes out as the end of the answer (``more_body`` false),
   not before an empty end, so the idempotency layer settles the record before the
   client has the last byte, and a one-piece body is one message.
   The upstream only ever hands over a final answer (never a 1xx): see ``_upstream``.
4. Failures become problems and never leak the upstream's internals:
   - could not connect (or no pooled connection in time): 502 ``upstream_unavailable``,
     marked not executed, retrying is safe;
   - timed out or the connection broke after the request was sent, or the upstream
     answered a 5xx: 502 / 504, *reached*: the work may have happened. The problem's
     ``retry_safe`` member says whether retrying is safe: yes for idempotent methods and
     for requests protected by an idempotency key (the key never executes twice), no
     otherwise;
   - a break in the middle of the response body cannot become a problem any more (the
     status is sent): the connection is cut, and the idempotency layer sees an
     unfinished response.
5. The breaker counts connect errors, timeouts, broken connections and 5xx answers as
   failures, everything else as success, and times each call up to the response's
   headers (its slow-call rate).

Rule 1: forwarding headers say who the client is and what it asked for; they are believed
        only from a trusted proxy (``trusted``). From anyone else every one of them is
        dropped: ``Forwarded``, every ``X-Forwarded-*`` (``-For``, ``-Host``, ``-Proto``,
        ``-Port``, ``-Prefix``, ``-Server``, ``-Ssl``...), ``X-Real-IP``,
        ``True-Client-IP``, ``X-Client-IP``, ``Client-IP``, ``CF-Connecting-IP``,
        ``Fastly-Client-IP``, ``X-Cluster-Client-IP``, ``X-Original-Forwarded-For``,
        ``X-Originating-IP``, ``X-Remote-IP``, ``X-Remote-Addr``, and the URL overrides
        ``X-Original-URL`` / ``X-Rewrite-URL`` (they would let the upstream route a
        request the gateway limited as another path). The proxy sets its own
        ``X-Forwarded-For`` (the caller's address), ``X-Forwarded-Proto`` and
        ``X-Forwarded-Host`` (the request's ``Host``). From a trusted proxy they are all
        passed on, its ``X-Forwarded-For`` is extended with its address, and its
        ``X-Forwarded-Proto`` / ``-Host``, when it sent them, replace the proxy's own (it
        saw the original request; the gateway only saw the trusted proxy's).
Rule 2: ``total_timeout`` bounds the whole exchange, the response body included. Before
        the status is sent, running out of time is a 504 problem; after it, the response
        is cut (the app returns without finishing it: the server closes the connection,
        and the idempotency layer sees an unfinished response). The same holds for an
        upstream that breaks mid-body and for a client that stops reading.
Rule 3: what the client does is never an error of the gateway's: a client that leaves (or
        sends a broken body) while its body is being forwarded ends the exchange quietly,
        the upstream connection closed and the breaker's permit given back, no problem
        and no exception (the ``Gateway`` logs such a request as 499). A client that
        leaves while the answer streams does not stop it: the upstream's answer is read to
        its end (within ``total_timeout``) so the idempotency layer can keep it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any

from surefoot._asgi import (
    IDEMPOTENCY_POLICY,
    NOT_EXECUTED,
    Message,
    Receive,
    Scope,
    Send,
    request_id,
    send_problem,
)
from surefoot.client import CircuitBreaker
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    CircuitOpen,
    ServiceOverloaded,
    SurefootError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from surefoot.events import EventHook, emit, wanted
from surefoot.gateway._events import RequestShed, UpstreamFailed
from surefoot.gateway._shed import LoadShedder
from surefoot.gateway._upstream import Body, ForwardFailed, Upstream, UpstreamResponse

__all__ = ["ProxyApp"]

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Replaced by the proxy's own values (the upstream client sets Host and the body's framing;
# an Expect: 100-continue is the proxy's business, not the upstream's).
_REPLACED = frozenset({b"host", b"content-length", b"expect"})
# Rule 1: believed from trusted proxies only (and every name starting with x-forwarded-).
_FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-original-forwarded-for",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"x-original-url",
        b"x-rewrite-url",
    }
)
_SCHEMES = {"http": b"http", "https": b"https"}
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_RESPONSE_DROPPED = _HOP_BY_HOP | {b"x-request-id"}


class ProxyApp:
    """Forwards every request to one upstream.

    Args:
        upstream: how to reach the upstream (``HttpUpstream``'s connection pool, or an
            ``HttpxUpstream`` for an in-process app or an injected transport).
        name: names the upstream in problems, events and the breaker.
        breaker: the upstream's circuit breaker, or None.
        shedder: the upstream's concurrency limit, or None; ``shed_retry_after`` the
            seconds a shed request is told to wait.
        critical: ``scope -> bool``: whether a request keeps the shedder's reserved share.
        route_of: ``scope -> route template or ""`` (for events and per-route timeouts).
        timeout: total seconds per request (``route_timeouts`` per route template).
        trusted: ``scope -> bool``: whether the immediate caller is a trusted proxy whose
            forwarding headers are passed on (``X-Forwarded-For`` extended) rather than
            dropped (Rule 1).
        forward_idempotency_key: send the client's key on to the upstream.
        key_header: the idempotency key's header (lower case).
        hooks: event hooks. ``observe``: ``(outcome, seconds)`` for each upstream call.
    """

    def __init__(
        self,
        *,
        upstream: Upstream,
        name: str = "upstream",
        breaker: CircuitBreaker | None = None,
        shedder: LoadShedder | None = None,
        shed_retry_after: int = 1,
        critical: Callable[[Scope], bool] = lambda scope: False,
        route_of: Callable[[Scope], str] = lambda scope: "",
        timeout: float = 60.0,
        route_timeouts: dict[str, float] | None = None,
        trusted: Callable[[Scope], bool] = lambda scope: False,
        forward_idempotency_key: bool = True,
        key_headers: Collection[bytes] = (b"idempotency-key",),
        hooks: Iterable[EventHook] = (),
        observe: Callable[[str, float], None] | None = None,
        problem_base: str = DEFAULT_PROBLEM_BASE,
    ) -> None:
        self.upstream = upstream
        self.name = name
        self.breaker = breaker
        self.shedder = shedder
        self.shed_retry_after = shed_retry_after
        self.critical = critical
        self.route_of = route_of
        self.timeout = timeout
        self.route_timeouts = route_timeouts or {}
        self.trusted = trusted
        self.dropped = _HOP_BY_HOP | _REPLACED
        if not forward_idempotency_key:
            self.dropped = self.dropped | frozenset(key_headers)
        self.hooks = tuple(hooks)
        self.observe = observe
        self.problem_base = problem_base

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        shedder = self.shedder
        if shedder is None and self.breaker is None:
            await _Forward(self, scope, receive, send, None).run()
        elif shedder is not None:
            critical = self.critical(scope)
            if not shedder.try_acquire(critical=critical):
                scope[NOT_EXECUTED] = True
                if wanted(self.hooks, RequestShed):
                    emit(
                        self.hooks,
                        RequestShed(
                            at=time.time(),
                            request_id=request_id(scope),
                            method=scope["method"],
                            path=scope["path"],
                            route=self.route_of(scope),
                            priority="critical" if critical else "normal",
                            in_flight=shedder.in_flight,
                            limit=shedder.limit,
                        ),
                    )
                await self._problem(
                    scope, send, ServiceOverloaded(retry_after=self.shed_retry_after)
                )
                return
            try:
                await self._breaker_then_forward(scope, receive, send)
            finally:
                shedder.release()
        else:
            await self._breaker_then_forward(scope, receive, send)

    async def _breaker_then_forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        breaker = self.breaker
        if breaker is None:
            await _Forward(self, scope, receive, send, None).run()
            return
        try:
            permit = breaker.acquire()
        except CircuitOpen as exc:
            scope[NOT_EXECUTED] = True
            await self._problem(scope, send, CircuitOpen(integration=self.name, **_retry(exc)))
            return
        await _Forward(self, scope, receive, send, permit).run()

    async def _problem(self, scope: Scope, send: Send, error: SurefootError) -> None:
        await send_problem(send, error, request_id=request_id(scope), base=self.problem_base)


def _retry(exc: SurefootError) -> dict[str, Any]:
    return {"retry_after": exc.fields.get("retry_after", 1)}


class _ClientGone(Exception):
    """The client left (or broke its body) while its body was being forwarded."""


class _Forward:
    """One forwarded request."""

    def __init__(
        self, proxy: ProxyApp, scope: Scope, receive: Receive, send: Send, permit: object | None
    ) -> None:
        self.proxy = proxy
        self.scope = scope
        self.receive = receive
        self.send = send
        self.permit = permit
        self.started = 0.0
        self.recorded = False
        self.status: int | None = None  # set once a status went out: nothing else can follow
        self.sending = False  # waiting for the client to take a chunk of the body
        self.client_gone = False
        self.task: asyncio.Task[Any] | None = None
        self.expired = False  # the total timeout ran out

    async def run(self) -> None:
        proxy = self.proxy
        scope = self.scope
        route = proxy.route_of(scope)
        timeout = proxy.route_timeouts.get(route, proxy.timeout)
        self.started = time.monotonic()
        # Rule 2, the body included: asyncio.timeout's logic, without its two coroutines and
        # three running-loop look-ups (a getpid system call each on Python 3.11) per request.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        cancelling = task.cancelling()
        self.task = task
        deadline = loop.call_at(loop.time() + timeout, self.expire)
        try:
            try:
                request = await self.build()
                if request is None:  # the client left before sending its body
                    self.release()
                    return
                target, headers, content = request
                try:
                    response = await proxy.upstream.send(scope["method"], target, headers, content)
                except ForwardFailed as exc:
                    await self.failed(exc.reason, reached=exc.reached)
                    return
                except _ClientGone:  # Rule 3
                    self.release()
                    return
                try:
                    if self.client_gone:  # an in-process upstream answers a broken body
                        self.release()
                    else:
                        await self.relay(response)
                finally:
                    await response.aclose()
            except asyncio.CancelledError:
                if self.expired:
                    self.expired = False
                    if task.uncancel() <= cancelling:
                        raise TimeoutError from None  # ours: no other cancellation is pending
                raise
            finally:
                deadline.cancel()
                if self.expired:  # ran out, but the exchange ended some other way
                    task.uncancel()
        except TimeoutError:
            if self.status is None:
                await self.failed("timeout", reached=True)
            elif not self.sending:  # the upstream's body did not end in time
                self.event("timeout", reached=True, status=self.status)
            # Else the client stopped reading. Either way the response stays unfinished.
        except BaseException:
            self.release()
            raise

    def expire(self) -> None:
        """The total timeout ran out: cancel the request's task (Rule 2)."""
        if self.task is not None:
            self.expired = True
            self.task.cancel()

    def release(self) -> None:
        """The call ended without an outcome for the breaker."""
        if not self.recorded and self.permit is not None and self.proxy.breaker is not None:
            self.proxy.breaker.release(self.permit)
        self.recorded = True

    async def build(self) -> tuple[bytes, list[tuple[bytes, bytes]], Body] | None:
        """The target, headers and body to forward; None if the client left."""
        proxy = self.proxy
        scope = self.scope
        headers: list[tuple[bytes, bytes]] = []
        forwarding: list[tuple[bytes, bytes]] = []
        connection_tokens: set[bytes] = set()
        host = b""
        has_id = False
        dropped = proxy.dropped
        for name, value in scope["headers"]:
            if name in dropped:
                if name == b"connection":
                    connection_tokens.update(t.strip().lower() for t in value.split(b","))
                elif name == b"host":
                    host = value
            elif name in _FORWARDING or name.startswith(b"x-forwarded-"):
                forwarding.append((name, value))
            else:
                if name == b"x-request-id":
                    has_id = True
                headers.append((name, value))
        client = scope.get("client")
        chain = client[0].encode() if client else b"unknown"
        own_proto = own_host = True
        if forwarding and proxy.trusted(scope):  # Rule 1
            earlier = [value for name, value in forwarding if name == b"x-forwarded-for"]
            if earlier:
                chain = b", ".join([*earlier, chain])
            names = {name for name, _ in forwarding}
            own_proto = b"x-forwarded-proto" not in names
            own_host = b"x-forwarded-host" not in names
            headers += [(n, v) for n, v in forwarding if n != b"x-forwarded-for"]
        if connection_tokens:
            headers = [(n, v) for n, v in headers if n not in connection_tokens]
            has_id = has_id and b"x-request-id" not in connection_tokens
        headers.append((b"x-forwarded-for", chain))
        if own_proto:
            scheme = scope.get("scheme", "http")
            headers.append((b"x-forwarded-proto", _SCHEMES.get(scheme) or scheme.encode()))
        if host and own_host:
            headers.append((b"x-forwarded-host", host))
        if not has_id:
            headers.append((b"x-request-id", request_id(scope).encode()))
        query = scope.get("query_string", b"")
        target = scope.get("raw_path") or scope["path"].encode()
        if query:
            target += b"?" + query
        first = await self.receive()
        if first["type"] == "http.disconnect":
            return None
        content: Body = (
            self.body(first) if first.get("more_body", False) else first.get("body", b"")
        )
        return target, headers, content

    async def body(self, first: Message) -> AsyncIterator[bytes]:
        yield first.get("body", b"")
        more = first.get("more_body", False)
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise _ClientGone
            yield message.get("body", b"")
            more = message.get("more_body", False)

    async def relay(self, response: UpstreamResponse) -> None:
        status = response.status
        elapsed = time.monotonic() - self.started
        if status >= 500:
            await self.failed("status", reached=True, status=status, response=response)
            return
        self.record(failed=False, elapsed=elapsed, outcome=f"{status // 100}xx")
        dropped = _RESPONSE_DROPPED
        named = [value for name, value in response.headers if name == b"connection"]
        if named:  # headers the upstream's Connection header names are hop-by-hop too
            dropped = dropped | {t.strip().lower() for v in named for t in v.split(b",")}
        headers = [(name, value) for name, value in response.headers if name not in dropped]
        # No X-Request-Id here: a stored response is replayed to other requests, and the
        # gateway adds each response's own id as it goes out.
        self.status = status
        send = self.send
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if self.scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        more = True
        while more:
            try:
                chunk, more = await response.read()
            except ForwardFailed as exc:
                self.event(exc.reason, reached=True, status=status)
                return  # Rule 2: cut, never finished
            if chunk or not more:  # the last piece ends the answer: one message, not two
                self.sending = True
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                self.sending = False

    def record(self, *, failed: bool, elapsed: float, outcome: str) -> None:
        proxy = self.proxy
        if self.recorded:
            return
        self.recorded = True
        if self.permit is not None and proxy.breaker is not None:
            proxy.breaker.on_result(self.permit, failed=failed, duration=elapsed)
        if proxy.observe is not None:
            proxy.observe(outcome, elapsed)

    def event(self, reason: str, *, reached: bool, status: int | None) -> None:
        hooks = self.proxy.hooks
        if wanted(hooks, UpstreamFailed):
            emit(
                hooks,
                UpstreamFailed(
                    at=time.time(),
                    request_id=request_id(self.scope),
                    method=self.scope["method"],
                    path=self.scope["path"],
                    route=self.proxy.route_of(self.scope),
                    reason=reason,
                    status=status,
                    reached=reached,
                ),
            )

    async def failed(
        self,
        reason: str,
        *,
        reached: bool,
        status: int | None = None,
        response: UpstreamResponse | None = None,
    ) -> None:
        outcome = {"connect": "connect_error", "status": "5xx"}.get(reason, reason)
        self.record(failed=True, elapsed=time.monotonic() - self.started, outcome=outcome)
        self.event(reason, reached=reached, status=status)
        scope = self.scope
        if not reached:
            scope[NOT_EXECUTED] = True
            advice = "Nothing reached the service; retrying is safe."
            safe = True
        else:
            safe, advice = _retry_advice(scope)
        what = {
            "connect": "it could not be reached",
            "timeout": "it did not answer in time",
            "reset": "the connection broke",
            "status": f"it answered {status}",
        }[reason]
        error: SurefootError
        if reason == "timeout":
            error = UpstreamTimeout(reason=what, advice=advice, retry_safe=safe)
        else:
            error = UpstreamUnavailable(reason=what, advice=advice, retry_safe=safe)
        extra: list[tuple[bytes, bytes]] = []
        if response is not None:
            for name, value in response.headers:
                if name == b"retry-after" and value.isdigit():
                    extra.append((b"retry-after", value))
        self.status = error.status
        await send_problem(
            self.send,
            error,
            request_id=request_id(scope),
            base=self.proxy.problem_base,
            headers=extra,
        )


def _retry_advice(scope: Scope) -> tuple[bool, str]:
    """Whether retrying a request the upstream may have processed is safe, and what to do."""
    policy = scope.get(IDEMPOTENCY_POLICY)
    if policy is not None:
        header = policy.header
        if policy.on_server_error == "unknown":
            return True, (
                "The service may have done the work. Retry with the same "
                f"{header}: it will never run twice, and a retry gets the outcome once known."
            )
        if policy.on_server_error == "store":
            return True, (
                f"The service may have done the work; every retry with the same {header} "
                "gets this answer."
            )
        return True, f"Retry with the same {header}; the service honours it."
    if scope["method"] in _IDEMPOTENT_METHODS:
        return True, "The method is idempotent; retrying is safe."
    return False, "The service may have done the work: check before retrying."
