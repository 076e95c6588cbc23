"""The gateway's HTTP/1.1 server: uvicorn's httptools protocol, bounded in bytes and time.

uvicorn (with httptools and uvloop) stays the server: it runs in the supervisor's model
(sockets bound once and inherited, two ports, SIGHUP reloads). What it leaves open, this
subclass closes: ``BoundedHttpToolsProtocol`` sees every parser callback first, measures
the head with ``HeadMeter``, checks it with ``refusal`` (``_head.py``) and keeps one
deadline per connection. It relies on uvicorn's private hooks (the parser callbacks,
``self.cycle``, ``self.pipeline``...): the versions it was tested with are pinned in the
``gateway`` extra, and ``tests/gateway/test_server_limits.py`` fails if the hooks change.

Rule 1: a connection waiting for its client always has one deadline: ``keepalive_timeout``
        while idle between requests, ``header_timeout`` for a head (from the connection's
        start, or from the first byte of a later request), ``body_timeout`` for a body
        (from the end of its head). A connection owing an answer to an earlier request
        waits for that answer instead (the upstream's timeouts bound it).
Rule 2: nothing the client sent is answered by anyone but this module until its head is
        within the limits and passes ``refusal``; a refused head never reaches the app.
Rule 3: a refusal (431, 400, or 408 for a deadline with part of a request received) is
        written once every earlier answer on the connection is out (pipelining), then the
        connection is half-closed and what the client still sends is read and dropped for
        at most ``_LINGER`` seconds, so the client reads the answer instead of a reset.
        When the refused request's own answer has started, or the request waits queued
        behind another, the connection is closed instead. A deadline with nothing of a
        request received closes the connection without an answer.
Rule 4: what the parser refuses (a bad method, control characters, broken framing) is a 400
        ``BadRequest`` with a fixed reason, never the parser's message.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from surefoot.errors import BadRequest, ClientError, RequestTimeout
from surefoot.gateway._head import HeadMeter, ServerLimits, problem_response, refusal

__all__ = ["BoundedHttpToolsProtocol", "bounded_protocol"]

_log = logging.getLogger("surefoot.gateway")

#: Seconds a refused connection keeps reading (and dropping) before it is closed.
_LINGER = 2.0
#: A timer this close to its deadline counts as on time (timers have millisecond steps).
_EARLY = 0.01


class _Section(enum.Enum):
    """Where the parser is in the current request."""

    IDLE = "between requests"
    HEAD = "in the head"
    BODY = "in the body"


class _Wait(enum.Enum):
    """The deadline a connection has (Rule 1); each value names its ``ServerLimits`` field."""

    NONE = "none"
    IDLE = "keepalive_timeout"
    HEAD = "header_timeout"
    BODY = "body_timeout"


class _Refused(Exception):
    """Raised from a parser callback to stop the parser; the reason is in ``_refusal``."""


def bounded_protocol(limits: ServerLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` that enforces ``limits``."""
    configured = limits

    class Bounded(BoundedHttpToolsProtocol):
        limits = configured

    return Bounded


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``ServerLimits`` enforced (see the module's rules)."""

    limits: ClassVar[ServerLimits] = ServerLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._section = _Section.IDLE
        self._meter = HeadMeter(self.limits)
        self._pending = 0  # bytes received of a field not complete yet
        self._progress = False  # a parser callback ran during the current feed
        self._refusal: ClientError | None = None
        self._deferred: ClientError | None = None  # answered once earlier answers are out
        self._own: RequestResponseCycle | None = None  # the cycle of the request being read
        self._wait = _Wait.NONE
        self._due = 0.0  # when the deadline of self._wait passes (loop time)
        self._timer: asyncio.TimerHandle | None = None
        self._draining = False

    # -- the connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_Wait.HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        self._unset_keepalive_if_required()
        self._progress = False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._refuse(self._refusal or _malformed(exc))
            return
        # Deadlines are set after the read, for what it left unfinished: a whole request in
        # one read (the common case) sets none.
        if self._section is _Section.HEAD and self._wait is not _Wait.HEAD:
            self._arm(_Wait.HEAD)
        elif self._section is _Section.BODY and self._wait is _Wait.NONE and not self.pipeline:
            self._arm(_Wait.BODY)
        if self._progress or self._section is _Section.IDLE:
            # A field that is still arriving began in this read: one read of slack (Rule 1).
            self._pending = 0
            return
        self._pending += len(data)
        error = self._meter.pending(self._pending)
        if error is not None:
            self._refuse(error)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()  # uvicorn's idle timer: _Wait.IDLE replaces it
        if self._deferred is not None:
            if not self._owed():
                self._answer(self._deferred)
            return
        if self._wait is not _Wait.NONE:
            return
        if self._section is _Section.IDLE and not self._owed():
            self._arm(_Wait.IDLE)
        elif self._section is _Section.BODY and not self.pipeline and self.cycle is self._own:
            self._arm(_Wait.BODY)  # a pipelined request started: its body is read from now on

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._progress = True
        super().on_message_begin()
        self._section = _Section.HEAD
        self._meter = HeadMeter(self.limits)
        self._own = None

    def on_url(self, url: bytes) -> None:
        self._progress = True
        if (error := self._meter.target(url)) is not None:
            self._stop(error)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        if (error := self._meter.field(name, value)) is not None:
            self._stop(error)
        if self._section is _Section.BODY:
            return  # a trailer field: measured, never a header (Rule 2 of _head)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._progress = True
        error = refusal(
            self.parser.get_method(),
            self.url,
            self.parser.get_http_version(),
            self.headers,
            upgrade=self.parser.should_upgrade(),
        )
        if error is not None:
            self._stop(error)
        self._disarm()
        super().on_headers_complete()
        self._section = _Section.BODY
        self._own = self.cycle

    def on_body(self, body: bytes) -> None:
        self._progress = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._progress = True
        super().on_message_complete()
        self._section = _Section.IDLE
        if self._wait is _Wait.BODY:
            self._disarm()

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    # -- deadlines and refusals ---------------------------------------------------------------

    def _arm(self, wait: _Wait) -> None:
        self._wait = wait
        self._due = self.loop.time() + getattr(self.limits, wait.value)
        # One timer per connection, moved only when it would fire too late: a timer that
        # fires early finds a later deadline and waits again, so a request on a busy
        # kept-alive connection costs no timer calls.
        if self._timer is None or self._timer.when() > self._due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(self._due, self._expired)

    def _disarm(self) -> None:
        self._wait = _Wait.NONE  # the timer, when it fires, finds nothing to do

    def _expired(self) -> None:
        self._timer = None
        wait = self._wait
        if wait is _Wait.NONE or self.transport.is_closing():
            return
        if self._due - self.loop.time() > _EARLY:
            self._timer = self.loop.call_at(self._due, self._expired)
            return
        self._wait = _Wait.NONE
        if wait is _Wait.HEAD and self._owed():
            self._arm(_Wait.HEAD)  # the next head may wait behind an earlier answer
        elif wait is _Wait.IDLE or self._section is _Section.IDLE:
            self.transport.close()
        else:
            seconds = self.limits.body_timeout if wait is _Wait.BODY else self.limits.header_timeout
            part = "body" if wait is _Wait.BODY else "head"
            self._refuse(
                RequestTimeout(reason=f"the request {part} did not arrive within {seconds:g} s")
            )

    def _owed(self) -> bool:
        """An answer to an earlier request is still being made or written."""
        if self.pipeline:
            return True
        cycle = self.cycle
        return cycle is not None and cycle is not self._own and not cycle.response_complete

    def _stop(self, error: ClientError) -> None:
        """Stop the parser from a callback; ``data_received`` answers ``error``."""
        self._refusal = error
        raise _Refused(error.code)

    def _refuse(self, error: ClientError) -> None:
        self._disarm()
        self._draining = True
        own = self._own
        queued = any(cycle is own for cycle, _ in self.pipeline)
        if own is not None and not own.response_complete:
            # The app reading this request learns the client is gone; its answer goes nowhere.
            own.disconnected = True
            own.message_event.set()
        _log.info("refused a request from %s: %s", self.client, error.code)
        if queued or (own is not None and own.response_started):
            self.transport.close()
        elif self._owed():
            self._deferred = error
            self.flow.pause_reading()
        else:
            self._answer(error)

    def _answer(self, error: ClientError) -> None:
        self._deferred = None
        headers = self.server_state.default_headers
        self.transport.write(problem_response(error, request_id=uuid.uuid4().hex, headers=headers))
        self.transport.write_eof()  # after the answer is flushed: the client reads it, then EOF
        self.flow.resume_reading()
        self.loop.call_later(_LINGER, self.transport.close)


def _malformed(exc: Exception) -> BadRequest:
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return BadRequest(reason="the method is not an HTTP method this server knows")
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return BadRequest(reason="the target has a character a URL cannot hold")
    return BadRequest(reason="the request line, a header field or the body's framing is invalid")
