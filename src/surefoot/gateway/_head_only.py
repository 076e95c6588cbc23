"""An HTTP/1.1 server for an ASGI app that answers from a request's head alone
(``surefoot decide``): the gateway's bounds, without uvicorn's request cycle.

uvicorn stays the server (sockets bound once, workers, signals, lifespan, graceful
shutdown); ``HeadOnlyProtocol`` replaces its ``http`` protocol. A request is parsed by
httptools, measured and checked as the gateway's server does (``_head.py``: the same
limits, the same refusals), and once it is whole the app is called with a ``send`` that
writes the whole answer in one write. The app never sees the body: it is read and dropped
(``receive`` raises). Per request there is no cycle object, event or flow-control call,
and the connection's one timer moves only when it would fire late (what that saves a
decision: ``docs/performance.md``, "The head-only protocol").

Rule 1: a connection always has the one deadline its state calls for (``_settle``, after
        every read and every change of state): ``header_timeout`` while a head is
        incomplete (from the connection's start for its first request, from its first
        byte for a later one); ``body_timeout`` while a body is incomplete (from the end
        of its head, or from its ``100 Continue`` when it expects one); none while whole
        requests wait for their answers (the app bounds those), nor once the client has
        sent its EOF; ``keepalive_timeout`` once every request received is answered.
Rule 2: at most ``_QUEUED`` whole requests wait for their answers: what is received is
        parsed ``_SLICE`` bytes at a time, and once the queue is full the rest waits,
        unparsed, with reading stopped and no deadline running; when the queue drains, it
        is parsed first, then reading resumes, and an incomplete head or body has its whole
        deadline again (the wait was the server's).
Rule 3: answers go out in the order the requests came, one at a time. A request that
        expects ``100 Continue`` gets it when its turn comes, then its body is read.
Rule 4: a refused head (431 or 400 by ``_head``'s rules or the parser's, 408 for a deadline
        with part of a request received) is answered as the gateway answers it, once every
        earlier answer is out; the connection is then half-closed and what the client still
        sends is dropped for at most ``LINGER`` seconds. A deadline with nothing of a
        request received closes the connection without an answer.
Rule 5: a request that does not keep the connection alive (``Connection: close``, HTTP/1.0
        without keep-alive), or the last one received once the server shuts down, is
        answered with ``Connection: close``, and the connection ends; nothing after it is
        read. Shutting down closes a connection with no answer under way at once, and
        sends no ``100 Continue`` for a request it will not read. After the client's EOF,
        what was received is answered, then the connection closes.
Rule 6: while what is buffered for the client is over the transport's high-water mark, no
        further answer is made; a connection whose client takes none of what is buffered
        for it (the kernel's count of bytes it has not acknowledged does not go down) for a
        whole ``keepalive_timeout`` is reset, whether it is open or closed with answers
        still buffered (``StallWatch``, as the gateway's server does).
Rule 7: an app that raises, or returns without a whole answer, is logged; the client gets a
        500 ``internal_error`` problem if nothing was sent yet, and the connection closes.
        So does an app that is cancelled (the cancellation then goes on): a connection left
        open would pair the next request's answer with this one.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from collections import deque
from collections.abc import MutableMapping
from typing import Any, ClassVar
from urllib.parse import unquote_to_bytes

import httptools

from surefoot._asgi import ASGIApp, new_request_id
from surefoot.errors import ClientError, SurefootError
from surefoot.gateway._head import HeadMeter, ServerLimits, problem_response, refusal
from surefoot.gateway._server import (
    BODY_WAIT,
    EARLY,
    HEAD_WAIT,
    IDLE_WAIT,
    IN_BODY,
    IN_HEAD,
    IN_IDLE,
    LINGER,
    NO_WAIT,
    Refused,
    StallWatch,
    close_watched,
    malformed,
    too_late,
)

__all__ = ["HeadOnlyProtocol", "head_only_protocol"]

_log = logging.getLogger("surefoot.gateway")

#: Whole requests that may wait for their answers on one connection (Rule 2).
_QUEUED = 16
#: Bytes parsed at a time: the queue is checked between slices (Rule 2).
_SLICE = 4096
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}
_CLOSE = b"connection: close\r\n"
_BREAK = re.compile(rb"[\r\n]")
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class _Incomplete(Exception):
    """The app returned without sending a whole answer."""


def head_only_protocol(limits: ServerLimits, app: ASGIApp) -> type[HeadOnlyProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` that serves ``app`` within
    ``limits`` (the module's rules).

    Args:
        limits: the ``[server]`` limits and deadlines.
        app: an ASGI app that answers from a request's head; it is called directly, not
            through uvicorn's wrappers (uvicorn still runs its lifespan).
    """
    served = (app,)
    configured = limits

    class HeadOnly(HeadOnlyProtocol):
        limits = configured
        apps = served

    return HeadOnly


class HeadOnlyProtocol(asyncio.Protocol):
    """One connection of the head-only server (see the module's rules)."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    #: The app served, alone in a tuple (a function in a class attribute would be a method).
    apps: ClassVar[tuple[ASGIApp, ...]] = ()

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.app = self.apps[0]
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.root_path: str = getattr(config, "root_path", "")
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self._section = IN_IDLE
        self._meter = HeadMeter(self.limits)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._method = b""
        self._version = "1.1"
        self._begun = False  # a request has begun on this connection
        self._unread = b""  # received, not parsed yet (Rule 2)
        self._progress = False  # a parser callback ran during the current feed
        self._refusal: ClientError | None = None
        # Waiting for an answer, in order: a request (its scope and whether the connection
        # stays open after it), _CONTINUE, or the refusal that ends the connection.
        self._queue: deque[tuple[dict[str, Any], bool] | bytes | ClientError] = deque()
        self._answering: asyncio.Task[None] | None = None
        self._last = False  # a request ends the connection: nothing after it is read (Rule 5)
        self._ending = False  # the server shuts down: the last answer closes (Rule 5)
        self._eof = False  # the client sends nothing more
        self._reading = True
        self._wait = NO_WAIT
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None  # while writing is paused
        self._stall: StallWatch | None = None  # while writing is paused
        self._watch: StallWatch | None = None  # once closed with answers still buffered
        self._continuing = False  # the request being read waits for its 100 Continue
        self._lost = False
        # The answer being made (one at a time, Rule 3).
        self._start: MutableMapping[str, Any] | None = None
        self._body: list[bytes] = []
        self._keep_alive = True
        self._head_request = False
        self._sent = False

    # -- the connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)
        self.client = _address(transport.get_extra_info("peername"))
        sockname = transport.get_extra_info("sockname")
        # A Unix socket's path, with no port (the ASGI specification's server field).
        self.server = (sockname, None) if isinstance(sockname, str) else _address(sockname)
        self._settle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.server_state.connections.discard(self)
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
        for watch in (self._stall, self._watch):
            if watch is not None:
                watch.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._last:
            return
        self._unread += data
        self._take()

    def _take(self) -> None:
        """Parse what was received, ``_SLICE`` bytes at a time, until the queue is full
        (Rule 2); what is left waits in ``_unread`` with reading stopped."""
        while self._unread and not self._last:
            if len(self._queue) >= _QUEUED:
                if self._reading:
                    self._reading = False
                    self.transport.pause_reading()
                break
            data, self._unread = self._unread[:_SLICE], self._unread[_SLICE:]
            self._progress = False
            try:
                self.parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                if not self._last:  # not the parser's refusal of data after a last request
                    self._refuse(self._refusal or malformed(exc))
                return
            parsed = self._progress or self._section is IN_IDLE
            error = self._meter.fed(len(data), parsed=parsed)
            if error is not None:
                self._refuse(error)
                return
        self._settle()

    def eof_received(self) -> bool | None:
        # What was received is still parsed and answered, then the connection closes.
        self._eof = True
        if self._answering is None and not self._queue:
            self._close()
        else:
            self._settle()  # no deadline: the client can send nothing more
        return True

    def pause_writing(self) -> None:
        self._drained = self.loop.create_future()
        self._stall = StallWatch(
            self.transport,
            self.loop,
            self.limits.keepalive_timeout,
            self.client,
            settled=lambda: self._lost or self._drained is None,
        )

    def resume_writing(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._drained is not None:
            if not self._drained.done():  # not cancelled with the task awaiting it
                self._drained.set_result(None)
            self._drained = None

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown (Rule 5)."""
        if self._answering is None and not self._queue:
            self._close()
            return
        self._ending = True
        self._last = True
        # The request being read is never answered: no 100 Continue for it.
        kept = [item for item in self._queue if item is not _CONTINUE]
        self._queue.clear()
        self._queue.extend(kept)
        self._settle()

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._progress = True
        self._begun = True
        self._section = IN_HEAD
        self._meter = HeadMeter(self.limits)
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._progress = True
        if (error := self._meter.target(url)) is not None:
            self._stop(error)
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        if (error := self._meter.field(name, value)) is not None:
            self._stop(error)
        if self._section is IN_HEAD:  # a trailer field is measured, never kept
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._progress = True
        parser = self.parser
        self._method = method = parser.get_method()
        self._version = version = parser.get_http_version()
        error = refusal(method, self._url, version, self._headers, upgrade=parser.should_upgrade())
        if error is not None:
            self._stop(error)
        self._section = IN_BODY
        self._wait = NO_WAIT  # the head's deadline is over; the body's starts fresh
        if version == "1.1" and _expects_continue(self._headers):
            self._queue.append(_CONTINUE)
            self._continuing = True  # its body is not due before the 100 Continue (Rule 1)
            self._answer()

    def on_body(self, body: bytes) -> None:
        self._progress = True  # the body is dropped: the app answers from the head

    def on_message_complete(self) -> None:
        self._progress = True
        self._section = IN_IDLE
        self._continuing = False
        self._wait = NO_WAIT  # the body's deadline is over; whatever follows starts fresh
        keep_alive = self.parser.should_keep_alive()
        if not keep_alive:
            self._last = True
        self._queue.append((self._scope(), keep_alive))
        self._answer()

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def _scope(self) -> dict[str, Any]:
        target = self._url
        if target.startswith(b"/"):
            raw_path, _, query = target.partition(b"?")
        elif target == b"*":
            raw_path, query = target, b""
        else:  # absolute-form, its authority checked by refusal()
            parts = httptools.parse_url(target)
            raw_path, query = parts.path or b"/", parts.query or b""
        # find, not ``in``: see _send.
        path = unquote_to_bytes(raw_path) if raw_path.find(b"%") >= 0 else raw_path
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": self._version,
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": self._method.decode("ascii"),
            "root_path": self.root_path,
            "path": path.decode("utf-8", "replace"),
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self.app_state.copy(),
        }

    # -- answers --------------------------------------------------------------------------------

    def _answer(self) -> None:
        if self._answering is None:
            task = self._answering = self.loop.create_task(self._answer_all())
            self.server_state.tasks.add(task)
            task.add_done_callback(self.server_state.tasks.discard)

    async def _answer_all(self) -> None:
        """Answer the queued requests in order (Rules 3 to 7)."""
        queue = self._queue
        try:
            while queue:
                if self._drained is not None:
                    try:
                        await self._drained  # Rule 6
                    except BaseException:  # cancelled: the answers owed will not come
                        self._close()
                        raise
                if self._lost:
                    return
                item = queue.popleft()
                if isinstance(item, bytes):
                    self.transport.write(item)
                    # The body is due from now, unless a later request (the one being
                    # read) waits for a Continue of its own.
                    if _CONTINUE not in queue:
                        self._continuing = False
                        self._settle()
                elif isinstance(item, ClientError):
                    self._refused(item)
                    return
                elif not await self._call(*item):
                    return
                if not self._reading and len(queue) < _QUEUED and not self._last:
                    self._reading = True
                    self._take()  # what was received and not parsed comes first
                    if self._reading:
                        self.transport.resume_reading()
        finally:
            self._answering = None
        if (self._last or self._eof) and not self._lost:
            self._close()  # the request that ended it was answered (Rule 5)
        else:
            self._settle()

    async def _call(self, scope: dict[str, Any], keep_alive: bool) -> bool:
        """Call the app for one request; False if it failed (the connection is closed)."""
        self.server_state.total_requests += 1
        self._start = None
        self._body = []
        self._keep_alive = keep_alive
        self._head_request = scope["method"] == "HEAD"
        self._sent = False
        try:
            await self.app(scope, _no_body, self._send)
            if not self._sent:
                raise _Incomplete("the app returned without a whole answer")
        except BaseException as exc:  # a cancellation too: the connection must not go on
            if isinstance(exc, Exception):
                _log.exception("the app failed on %s %s", scope["method"], scope["path"][:200])
            if not self._sent and not self._lost:
                rid = scope["state"].get("request_id") or new_request_id()
                headers = self.server_state.default_headers
                self.transport.write(
                    problem_response(SurefootError(), request_id=rid, headers=headers)
                )
            self._close()
            if not isinstance(exc, Exception):
                raise
            return False
        return True

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        """The app's ``send``: the answer is written whole, in one write, once its last body
        part arrives."""
        kind = message["type"]
        if kind == "http.response.start" and self._start is None and not self._sent:
            self._start = message
            return
        if kind != "http.response.body" or self._start is None:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        self._body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, self._start = self._start, None
        body = b"".join(self._body)
        self._body = []
        head = [_STATUS_LINES[start["status"]]]
        framed = False
        fields = (*self.server_state.default_headers, *start.get("headers", ()))
        for name, value in fields:
            if name.lower() == b"content-length":
                framed = True
            head.append(b"%s: %s\r\n" % (name, value))
        if not framed:
            head.append(b"content-length: %d\r\n" % len(body))
        if not self._keep_alive or (self._ending and not self._queue):
            head.append(_CLOSE)
        head.append(b"\r\n")
        written = b"".join(head)
        # Each line holds one CR and one LF, its end: any other is a field's line break.
        # (Counted in two calls: ``b"\n" in value`` costs a TypeError raised and cleared.)
        if written.count(b"\n") != len(head) or written.count(b"\r") != len(head):
            broken = next(n for n, v in fields if _BREAK.search(n) or _BREAK.search(v))
            raise RuntimeError(f"the header field {bytes(broken)!r} holds a line break")
        if body and not self._head_request:
            written += body
        self._sent = True
        if not self._lost:
            self.transport.write(written)

    # -- deadlines ------------------------------------------------------------------------------

    def _settle(self) -> None:
        """Give the connection the deadline its state calls for (Rules 1-2)."""
        if self._last or self._eof or not self._reading:
            wait = NO_WAIT
        elif self._section is IN_HEAD:
            wait = HEAD_WAIT
        elif self._section is IN_BODY:
            wait = NO_WAIT if self._continuing else BODY_WAIT
        elif self._answering is not None or self._queue:
            wait = NO_WAIT
        elif not self._begun:
            wait = HEAD_WAIT  # a new connection: its first head is due from its start
        else:
            wait = IDLE_WAIT
        if wait is self._wait:
            return
        self._wait = wait
        if wait is NO_WAIT:
            return
        self._due = self.loop.time() + getattr(self.limits, wait.value)
        # One timer per connection, moved only when it would fire too late: a timer that
        # fires early finds a later deadline and waits again, so a request on a busy
        # kept-alive connection costs no timer calls.
        if self._timer is None or self._timer.when() > self._due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(self._due, self._expired)

    def _expired(self) -> None:
        self._timer = None
        wait = self._wait
        if wait is NO_WAIT or self._lost:
            return
        if self._due - self.loop.time() > EARLY:
            self._timer = self.loop.call_at(self._due, self._expired)
            return
        self._wait = NO_WAIT
        if self._section is IN_IDLE:
            self._close()  # idle, or a new connection that sent nothing (Rule 4)
            return
        self._refuse(too_late(wait, self.limits))

    # -- refusals -------------------------------------------------------------------------------

    def _stop(self, error: ClientError) -> None:
        """Stop the parser from a callback; ``data_received`` answers ``error``."""
        self._refusal = error
        raise Refused(error.code)

    def _refuse(self, error: ClientError) -> None:
        """Refuse what is being read, once earlier answers are out (Rule 4)."""
        self._last = True
        self._wait = NO_WAIT
        _log.info("refused a request from %s: %s", self.client, error.code)
        self._queue.append(error)
        self._answer()

    def _refused(self, error: ClientError) -> None:
        headers = self.server_state.default_headers
        self.transport.write(problem_response(error, request_id=new_request_id(), headers=headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer, then EOF
        if not self._reading:
            self._reading = True
            self.transport.resume_reading()  # what follows is read and dropped
        self.loop.call_later(LINGER, self._close)

    def _close(self) -> None:
        """Close the connection once what is buffered for the client is out (Rule 6)."""
        self._watch = close_watched(
            self.transport, self.loop, self.limits, self.client, self._watch, lambda: self._lost
        )


def _expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request asks for ``100 Continue`` (a loop, not ``any()`` over a
    generator: this runs for every request)."""
    for name, value in headers:  # noqa: SIM110
        if name == b"expect" and value.lower() == b"100-continue":
            return True
    return False


async def _no_body() -> dict[str, Any]:
    raise RuntimeError("this server gives the app no body: it answers from the head alone")


def _address(address: Any) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None
