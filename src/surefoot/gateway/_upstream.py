"""How the proxy talks to its upstream: one interface, a fast HTTP/1.1 pool, an in-process
app, and httpx.

``HttpUpstream`` is the gateway's own HTTP/1.1 client for an upstream given as a URL: a
pool of keep-alive connections, each an asyncio ``Protocol`` parsing answers with
httptools (which uvicorn already uses). It does only what a reverse proxy needs, so a
forwarded request costs a fraction of what a general-purpose client spends.
``AppUpstream`` calls an in-process ASGI app (``[upstream] app``) directly, as httpx's
``ASGITransport`` would, without building httpx's request and response objects.
``HttpxUpstream`` sends through an ``httpx.AsyncClient`` instead: for tests that inject a
transport (a ``ChaosTransport``).

Rule 1: every failure is a ``ForwardFailed`` whose ``reached`` says whether the request
        may have been processed: a connect failure or no free connection in time is
        ``reached=False``; anything after the first byte of the request was written is
        ``reached=True``, except an idempotent request on a reused keep-alive connection
        that the upstream had already closed, which is retried once on a new connection.
Rule 2: a connection goes back to the pool only after a complete, well-framed answer
        that allows keep-alive, to a request other than ``HEAD``. Any doubt about where
        the answer ends closes it instead: an answer abandoned half-read, bytes while
        idle, a parser error, a body that ends at the close, bytes after a ``HEAD``
        answer, an unsolicited second answer. (A ``HEAD`` answer announces a length its
        body does not have; if the upstream sent that body anyway, it would be read as
        the answer to the next request on the connection, which may be another
        client's.)
Rule 3: at most ``max_connections`` connections are open at once; a request waits up to
        ``connect_timeout`` for one.
Rule 4: the answer's body streams: at most ``_HIGH_WATER`` bytes are buffered before the
        connection stops reading until the proxy catches up.
Rule 5: the proxy only ever gets a final answer (status 200 to 599). Interim answers
        (``100 Continue``, ``103 Early Hints``, any 1xx but 101) are skipped while waiting
        for it, their fields dropped; a ``101 Switching Protocols`` (the gateway never asks
        for an upgrade) or a status outside 100-599 is a broken connection (``reset``).
Rule 6: timeouts are ``asyncio.timeout`` blocks, or a timer that fails the future awaited
        (the answer's head: no cancellation to undo, and no timer at all when a connection
        is free at once), never ``asyncio.wait_for``: on Python 3.11, ``wait_for`` can
        swallow the cancellation of an enclosing timeout (the proxy's ``total_timeout``)
        when its own awaitable completes at the same moment, which an endless body does
        all the time.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast
from urllib.parse import unquote

import httptools
import httpx

from surefoot._asgi import ASGIApp, Message

__all__ = [
    "AppUpstream",
    "ForwardFailed",
    "HttpUpstream",
    "HttpxUpstream",
    "Upstream",
    "UpstreamResponse",
]

_HIGH_WATER = 256 * 1024
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

Headers = list[tuple[bytes, bytes]]
Body = bytes | AsyncIterator[bytes]


class ForwardFailed(Exception):
    """Forwarding to the upstream failed: ``reason`` is ``connect``, ``timeout`` or ``reset``.

    The proxy turns it into its own answer (a problem from ``surefoot.errors``); it is not
    one of the public ``UpstreamError`` family, which the outbound client raises.
    """

    def __init__(self, reason: str, *, reached: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reached = reached


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    async def read(self) -> tuple[bytes, bool]:
        """The next piece of the body (maybe empty) and whether more follows, so that the
        last piece goes out as the end of the answer; raises ``ForwardFailed`` (reset or
        timeout) if the body breaks."""
        ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def send(
        self, method: str, target: bytes, headers: Headers, body: Body
    ) -> UpstreamResponse:
        """Send a request (``target``: path and query); the answer's head, body to come."""
        ...

    async def aclose(self) -> None: ...


# -- the fast pool -----------------------------------------------------------------------------


class HttpUpstream:
    """A pool of HTTP/1.1 keep-alive connections to one ``http://`` or ``https://`` URL.

    Args:
        url: the upstream's base URL; a request's target is appended to its path.
        connect_timeout: seconds to connect, or to wait for a free connection.
        read_timeout: seconds to wait for the answer's head, and between body chunks.
        max_connections: connections open at once.
    """

    def __init__(
        self, url: str, *, connect_timeout: float, read_timeout: float, max_connections: int
    ) -> None:
        parsed = httpx.URL(url)
        self.host = parsed.host
        self.tls = parsed.scheme == "https"
        self.port = parsed.port or (443 if self.tls else 80)
        default = (parsed.scheme == "http" and self.port == 80) or (self.tls and self.port == 443)
        self.authority = parsed.netloc if not default else parsed.host.encode("ascii")
        self.base_path = parsed.raw_path.rstrip(b"/")
        self.version_and_host = b" HTTP/1.1\r\nhost: " + self.authority + b"\r\n"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: deque[_Connection] = deque()
        self.ssl = ssl.create_default_context() if self.tls else None
        self.closed = False

    async def send(self, method: str, target: bytes, headers: Headers, body: Body) -> _Response:
        verb = method.encode("ascii")
        head = [verb, b" ", self.base_path, target, self.version_and_host]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        chunked = False
        if isinstance(body, bytes):
            if body or verb not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
                head += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        elif not any(name == b"content-length" for name, _ in headers):
            head.append(b"transfer-encoding: chunked\r\n")
            chunked = True
        head.append(b"\r\n")
        message = b"".join(head)
        read_timeout = self.read_timeout
        for attempt in (0, 1):
            conn = await self._connection()
            try:
                return await conn.exchange(verb, message, body, chunked, read_timeout)
            except _Stale:
                # The upstream closed this idle connection as we used it: nothing was read.
                if attempt == 0 and verb in _IDEMPOTENT and isinstance(body, bytes):
                    continue
                raise ForwardFailed("reset", reached=True) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connection(self) -> _Connection:
        slots = self.slots
        if slots.locked():  # every connection is busy: wait for one (Rule 3)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise ForwardFailed("connect", reached=False) from None
        else:
            await slots.acquire()  # a free slot is taken at once: nothing to time
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.tls else None,
                )
        except BaseException as exc:  # the proxy's own timeout too: the slot is freed
            self.slots.release()
            if isinstance(exc, OSError | TimeoutError):  # ssl.SSLError is an OSError
                raise ForwardFailed("connect", reached=False) from None
            raise
        return conn

    def _done(self, conn: _Connection, reusable: bool) -> None:
        """``conn`` finished an exchange: pool it or close it; its slot is free."""
        if reusable and not self.closed and not conn.closed:
            self.idle.append(conn)
        else:
            conn.close()
        self.slots.release()

    async def aclose(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().close()


class _Stale(Exception):
    """A reused connection was closed before any byte of the answer arrived."""


class _Malformed(Exception):
    """Raised in a parser callback to stop it: the upstream sent what no answer can be."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, pool: HttpUpstream) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self.reused = False
        self.head: asyncio.Future[None] | None = None
        self.response: _Response | None = None
        self.parser: Any = None
        self.got_bytes = False
        self.head_only = False
        self.keep_alive = True
        self.until_close = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # bytes while idle: the upstream misbehaves
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Includes _Malformed from a callback (as HttpParserCallbackError).
            self._fail(ForwardFailed("reset", reached=True))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.parser is not None:
            response = self.response
            if exc is None and self.until_close and response is not None:
                # A body without a length ends when the upstream closes (RFC 9112, 6.3);
                # a reset (exc) is a break, not an end.
                self.parser = None
                response.finish()
            elif self.reused and not self.got_bytes:
                self._fail(_Stale())
            else:
                self._fail(ForwardFailed("reset", reached=True))
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        response = self.response
        if response is None or response.complete:
            raise _Malformed("an answer nobody asked for")  # Rule 2

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (Rule 5): the final one follows on this connection.
            response.headers.clear()
            return
        if not 200 <= status <= 599:
            raise _Malformed(f"status {status}")
        response.status = status
        self.keep_alive = self.parser.should_keep_alive()
        bodiless = self.head_only or status in (204, 304)
        self.until_close = not bodiless and not any(
            name in (b"content-length", b"transfer-encoding") for name, _ in response.headers
        )
        if self.head is not None and not self.head.done():
            self.head.set_result(None)
        if bodiless:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        if response.complete:  # a body after a HEAD answer, which was complete at its head
            raise _Malformed("a body after the end of the answer")
        response.feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.complete or not response.status:
            return  # an interim answer's end, or the HEAD answer ended at its head
        self.parser = None
        response.finish()

    # -- an exchange ---------------------------------------------------------------------------

    async def exchange(
        self, verb: bytes, head: bytes, body: Body, chunked: bool, read_timeout: float
    ) -> _Response:
        assert self.transport is not None
        self.reused = self.used
        self.used = True
        self.got_bytes = False
        self.head_only = verb == b"HEAD"
        self.until_close = False
        self.response = response = _Response(self, read_timeout)
        self.parser = httptools.HttpResponseParser(self)
        self.head = answered = self.loop.create_future()
        try:
            if isinstance(body, bytes):
                self.transport.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    self.transport.write(body)
            else:
                self.transport.write(head)
                async for chunk in body:
                    if not chunk:
                        continue
                    if self.closed:
                        raise ForwardFailed("reset", reached=True)
                    self.transport.write(
                        b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                    )
                    await self.can_write.wait()
                if chunked:
                    self.transport.write(b"0\r\n\r\n")
            late = self.loop.call_later(read_timeout, self._head_late)  # Rule 6
            try:
                await answered
            finally:
                late.cancel()
        except BaseException:
            self.close()
            self.pool._done(self, reusable=False)
            raise
        return response

    def _head_late(self) -> None:
        head = self.head
        if head is not None and not head.done():
            head.set_exception(ForwardFailed("timeout", reached=True))

    def _fail(self, error: Exception) -> None:
        self.parser = None
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved here: the waiter may be gone
        elif self.response is not None:
            self.response.fail(error)

    def finished(self, complete: bool) -> None:
        """The proxy is done with the answer (complete, or abandoned half-read)."""
        self.response = None
        self.head = None
        reusable = complete and self.keep_alive and not self.closed and not self.head_only
        if not reusable:
            self.close()
        self.pool._done(self, reusable)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Response:
    """The answer's head, and its body as it arrives."""

    def __init__(self, conn: _Connection, read_timeout: float) -> None:
        self.conn = conn
        self.read_timeout = read_timeout
        self.status = 0
        self.headers: Headers = []
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: Exception | None = None
        self.wakeup: asyncio.Event | None = None  # made when the proxy waits for more
        self.paused = False
        self.released = False

    def feed(self, data: bytes) -> None:
        self.buffer.append(data)
        self.buffered += len(data)
        if self.wakeup is not None:
            self.wakeup.set()
        if self.buffered > _HIGH_WATER and not self.paused and self.conn.transport is not None:
            self.paused = True
            self.conn.transport.pause_reading()

    def finish(self) -> None:
        self.complete = True
        if self.wakeup is not None:
            self.wakeup.set()

    def fail(self, error: Exception) -> None:
        if not self.complete:
            self.error = error
            if self.wakeup is not None:
                self.wakeup.set()

    async def read(self) -> tuple[bytes, bool]:
        while True:
            buffer = self.buffer
            if buffer:
                chunk = buffer.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= _HIGH_WATER // 2:
                    self.paused = False
                    if self.conn.transport is not None:
                        self.conn.transport.resume_reading()
                if self.complete and not buffer:
                    self._release(complete=True)
                    return chunk, False
                return chunk, True
            if self.complete:
                self._release(complete=True)
                return b"", False
            if self.error is not None:
                self._release(complete=False)
                raise ForwardFailed("reset", reached=True)
            if self.wakeup is None:
                self.wakeup = asyncio.Event()
            self.wakeup.clear()
            try:
                async with asyncio.timeout(self.read_timeout):  # Rule 6
                    await self.wakeup.wait()
            except TimeoutError:
                self._release(complete=False)
                raise ForwardFailed("timeout", reached=True) from None

    def _release(self, *, complete: bool) -> None:
        if not self.released:
            self.released = True
            self.conn.finished(complete)

    async def aclose(self) -> None:
        self._release(complete=self.complete and not self.buffer)


# -- an in-process app --------------------------------------------------------------------------


class AppUpstream:
    """Calls an in-process ASGI app (``[upstream] app``) directly.

    The app gets the scope httpx's ``ASGITransport`` gave it (host ``upstream``, client
    ``127.0.0.1:123``) and the request's header fields as ``HttpUpstream`` would send
    them: ``Host``, the proxy's fields, and the body's framing. The app runs to its end
    before the answer is handed over, its body kept whole (as ``ASGITransport`` does).
    An app that raises before starting its answer answered 500; one that returns or
    raises before the end of its answer broke it: ``ForwardFailed("reset")``, before the
    head or after the body it sent (Rule 2 of the proxy: never passed on as complete).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def send(self, method: str, target: bytes, headers: Headers, body: Body) -> _AppResponse:
        raw_path, _, query = target.partition(b"?")
        fields = [(b"host", b"upstream"), *headers]
        if isinstance(body, bytes):
            if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                fields.append((b"content-length", b"%d" % len(body)))
        elif not any(name == b"content-length" for name, _ in headers):
            fields.append((b"transfer-encoding", b"chunked"))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "headers": fields,
            "scheme": "http",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "server": ("upstream", None),
            "client": ("127.0.0.1", 123),
            "root_path": "",
        }
        exchange = _AppExchange(method, body)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception:
            if exchange.status is None:
                exchange.status = 500
                exchange.complete = True
        finally:
            exchange.end()
        status = exchange.status
        if status is None or not 200 <= status <= 599:
            # Rule 5: the app returned without an answer, or started an interim one.
            raise ForwardFailed("reset", reached=True)
        return _AppResponse(status, exchange)

    async def aclose(self) -> None:
        return None


class _AppExchange:
    """The receive and send of one call to the app, and what it answered."""

    def __init__(self, method: str, body: Body) -> None:
        self.head = method == "HEAD"
        self.request: Body | None = body  # None once the app read all of it
        self.status: int | None = None
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.complete = False  # the app sent the end of its answer
        self.ended: asyncio.Event | None = None  # made when the app waits for the end

    async def receive(self) -> Message:
        request = self.request
        if request is None:  # a disconnect, once the answer is done (as ASGITransport)
            if not self.complete:
                if self.ended is None:
                    self.ended = asyncio.Event()
                await self.ended.wait()
            return {"type": "http.disconnect"}
        if isinstance(request, bytes):
            self.request = None
            return {"type": "http.request", "body": request, "more_body": False}
        try:
            chunk = await anext(request)
        except StopAsyncIteration:
            self.request = None
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(k.lower(), v) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk and not self.head:
                self.body.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
                self.end()

    def end(self) -> None:
        if self.ended is not None:
            self.ended.set()


class _AppResponse:
    def __init__(self, status: int, exchange: _AppExchange) -> None:
        self.status = status
        self.headers = exchange.headers
        self.body: list[bytes] | None = exchange.body  # None once read
        self.complete = exchange.complete

    async def read(self) -> tuple[bytes, bool]:
        body = self.body
        if body is None:  # read, and the app did not end its answer
            raise ForwardFailed("reset", reached=True)
        self.body = None
        return b"".join(body), not self.complete

    async def aclose(self) -> None:
        return None


# -- through httpx -----------------------------------------------------------------------------


class HttpxUpstream:
    """Sends through an ``httpx.AsyncClient`` (an injected transport)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.base = httpx.URL(base_url)
        self.base_path = self.base.raw_path.rstrip(b"/")

    async def send(
        self, method: str, target: bytes, headers: Headers, body: Body
    ) -> _HttpxResponse:
        url = self.base.copy_with(raw_path=self.base_path + target)
        request = self.client.build_request(method, url, headers=headers, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
            raise ForwardFailed("connect", reached=False) from None
        except httpx.TimeoutException:
            raise ForwardFailed("timeout", reached=True) from None
        except httpx.TransportError:
            raise ForwardFailed("reset", reached=True) from None
        if not 200 <= response.status_code <= 599:
            # Rule 5: httpcore skips interim answers but returns a 101, and an in-process
            # app can start any status.
            await response.aclose()
            raise ForwardFailed("reset", reached=True)
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self.client.aclose()


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers: Headers = [(k.lower(), v) for k, v in response.headers.raw]
        self.stream = response.aiter_raw()

    async def read(self) -> tuple[bytes, bool]:
        try:
            return await anext(self.stream), True
        except StopAsyncIteration:
            return b"", False
        except httpx.TimeoutException:
            raise ForwardFailed("timeout", reached=True) from None
        except httpx.TransportError:
            raise ForwardFailed("reset", reached=True) from None

    async def aclose(self) -> None:
        await self.response.aclose()
