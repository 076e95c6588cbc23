"""The gateway's HTTP/1.1 server: uvicorn's httptools protocol, bounded in bytes and time.

uvicorn (with httptools and uvloop) stays the server: it runs in the supervisor's model
(sockets bound once and inherited, two ports, SIGHUP reloads). What it leaves open, this
subclass closes: ``BoundedHttpToolsProtocol`` sees every parser callback first, measures
the head with ``HeadMeter``, checks it with ``refusal`` (``_head.py``) and keeps one
deadline per connection. It relies on uvicorn's private hooks (the parser callbacks,
``self.cycle``, ``self.pipeline``...): the versions it was tested with are pinned in the
``gateway`` extra, and ``tests/gateway/test_server_limits.py`` fails if the hooks change.

Rule 1: a connection always has the one deadline its state calls for, and ``_settle`` gives
        it that deadline after every event (a read, an answer complete, reading paused or
        resumed): ``header_timeout`` while a head is incomplete (from the connection's start
        for its first request, from its first byte for a later one); ``body_timeout`` while a
        body is incomplete (from the end of its head, whether or not its answer is already
        out); none while whole requests wait for their answers (the upstream's timeouts bound
        those); ``keepalive_timeout`` once every request received is answered.
Rule 2: a deadline runs only while the server reads. While reading is paused (the app has not
        taken the body buffered so far, a pipelined request waits its turn, a request that
        expects ``100 Continue`` waits for its app to ask for the body) it is suspended, and
        on resuming it gets the time it had left: each deadline bounds the client's time to
        send, and time the server spent not reading is not the client's.
Rule 3: nothing the client sent is answered by anyone but this module until its head is
        within the limits and passes ``refusal``; a refused head never reaches the app.
Rule 4: a refusal (431, 400, or 408 for a deadline with part of a request received) is
        written once every earlier answer on the connection is out (pipelining), then the
        connection is half-closed and what the client still sends is read and dropped for
        at most ``LINGER`` seconds, so the client reads the answer instead of a reset.
        When the refused request's own answer has started, or the request waits queued
        behind another, the connection is closed instead. A deadline with nothing of a
        request received closes the connection without an answer.
Rule 5: what the parser refuses (a bad method, control characters, broken framing) is a 400
        ``BadRequest`` with a fixed reason, never the parser's message.
Rule 6: a closed connection keeps what is still buffered for its client only while the client
        takes it: each ``keepalive_timeout`` in which it takes none of it, the connection is
        reset (``transport.abort()`` with no linger), so a client that stops reading cannot
        hold an answer in the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
import sys
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from surefoot.errors import BadRequest, ClientError, RequestTimeout
from surefoot.gateway._head import HeadMeter, ServerLimits, problem_response, refusal

__all__ = ["BoundedHttpToolsProtocol", "StallWatch", "bounded_protocol"]

_log = logging.getLogger("surefoot.gateway")

#: Seconds a refused connection keeps reading (and dropping) before it is closed.
LINGER = 2.0
#: A timer this close to its deadline counts as on time (timers have millisecond steps).
EARLY = 0.01
#: ``SO_LINGER`` on, zero seconds: closing the socket sends a reset and drops what is unsent.
_NO_LINGER = struct.pack("ii", 1, 0)
if sys.platform == "linux":
    import fcntl
    import termios

    #: The ``ioctl`` that counts a socket's bytes not yet acknowledged (``SIOCOUTQ``).
    _OUTQ: int | None = termios.TIOCOUTQ
else:  # pragma: no cover - the transport's buffer alone measures progress there
    _OUTQ = None


class Section(enum.Enum):
    """Where the parser is in the current request."""

    IDLE = "between requests"
    HEAD = "in the head"
    BODY = "in the body"


class Wait(enum.Enum):
    """The deadline a connection has (Rule 1); each value names its ``ServerLimits`` field."""

    NONE = "none"
    IDLE = "keepalive_timeout"
    HEAD = "header_timeout"
    BODY = "body_timeout"


# The members as names of this module: in Python 3.11 each ``Section.HEAD`` is a call of
# ``EnumType.__getattr__`` (about 800 instructions), and a request reads about twenty.
IN_IDLE, IN_HEAD, IN_BODY = Section.IDLE, Section.HEAD, Section.BODY
NO_WAIT, IDLE_WAIT, HEAD_WAIT, BODY_WAIT = Wait.NONE, Wait.IDLE, Wait.HEAD, Wait.BODY


class Refused(Exception):
    """Raised from a parser callback to stop the parser; the reason is in ``_refusal``."""


class _Flow(FlowControl):
    """uvicorn's flow control, telling the protocol when reading stops and starts (Rule 2).

    uvicorn pauses reading from the protocol and resumes it from the request's
    ``receive``, which the protocol never sees: this is where both pass.
    """

    def __init__(self, transport: asyncio.Transport, changed: Callable[[], None]) -> None:
        super().__init__(transport)
        self._changed = changed

    def pause_reading(self) -> None:
        if not self.read_paused:
            super().pause_reading()
            self._changed()

    def resume_reading(self) -> None:
        if self.read_paused:
            super().resume_reading()
            self._changed()


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
        self._section = IN_IDLE
        self._meter = HeadMeter(self.limits)
        self._progress = False  # a parser callback ran during the current feed
        self._refusal: ClientError | None = None
        self._deferred: ClientError | None = None  # answered once earlier answers are out
        self._own: RequestResponseCycle | None = None  # the cycle of the request being read
        self._wait = NO_WAIT
        # When the deadline of self._wait passes (loop time), or while it is suspended
        # (self._held), the seconds it has left.
        self._due = 0.0
        self._held = True
        self._timer: asyncio.TimerHandle | None = None
        self._draining = False
        self._watch: StallWatch | None = None  # once closed with an answer still buffered
        self._lost = False

    # -- the connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _Flow(transport, self._settle)
        self._settle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wait = NO_WAIT
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
            self._refuse(self._refusal or malformed(exc))
            return
        self._settle()
        parsed = self._progress or self._section is IN_IDLE
        error = self._meter.fed(len(data), parsed=parsed)
        if error is not None:
            self._refuse(error)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            self._close()  # the answer said Connection: close, and uvicorn closed (Rule 6)
            return
        self._unset_keepalive_if_required()  # uvicorn's idle timer: Wait.IDLE replaces it
        if self._deferred is not None:
            if not self._owed():
                self._answer(self._deferred)
            return
        self._settle()

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._progress = True
        super().on_message_begin()
        self._section = IN_HEAD
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
        if self._section is IN_BODY:
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
        super().on_headers_complete()
        self._section = IN_BODY
        self._wait = NO_WAIT  # the head's deadline is over; the body's starts fresh
        self._own = self.cycle
        if self.expect_100_continue:
            # The client waits for 100 Continue, which uvicorn sends when the app first asks
            # for the body; that ask resumes reading, and the body's deadline with it (Rule 2).
            self.flow.pause_reading()

    def on_body(self, body: bytes) -> None:
        self._progress = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._progress = True
        super().on_message_complete()
        self._section = IN_IDLE
        self._wait = NO_WAIT  # the body's deadline is over; whatever follows starts fresh

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    # -- deadlines ----------------------------------------------------------------------------

    def _settle(self) -> None:
        """Give the connection the deadline its state calls for (Rules 1-2).

        A deadline the state still calls for keeps running; one it no longer calls for is
        dropped (the callbacks that end a head or a body drop theirs, so the next one starts
        fresh even when it is of the same kind).
        """
        cycle: RequestResponseCycle | None = self.cycle
        if self._draining:
            wait = NO_WAIT
        elif self._section is IN_HEAD:
            wait = HEAD_WAIT
        elif self._section is IN_BODY:
            wait = BODY_WAIT
        elif cycle is None:
            wait = HEAD_WAIT  # a new connection: its first head is due from its start
        elif not cycle.response_complete:
            wait = NO_WAIT  # whole requests wait for answers, which go out in order
        else:
            wait = IDLE_WAIT
        if wait is not self._wait:
            self._wait = wait
            if wait is NO_WAIT:
                return
            self._due = getattr(self.limits, wait.value)
            self._held = True
        elif wait is NO_WAIT:
            return
        if self.flow.read_paused:
            if not self._held:
                self._due -= self.loop.time()
                self._held = True
        elif self._held:
            self._due += self.loop.time()
            self._held = False
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
        if wait is NO_WAIT or self._held or self.transport.is_closing():
            return  # resuming sets a timer again
        if self._due - self.loop.time() > EARLY:
            self._timer = self.loop.call_at(self._due, self._expired)
            return
        self._wait = NO_WAIT
        if self._section is IN_IDLE:
            self._close()  # idle, or a new connection that sent nothing
        else:
            self._refuse(too_late(wait, self.limits))

    # -- refusals and closing -------------------------------------------------------------------

    def _owed(self) -> bool:
        """An answer to an earlier request is still being made or written."""
        if self.pipeline:
            return True
        cycle = self.cycle
        return cycle is not None and cycle is not self._own and not cycle.response_complete

    def _stop(self, error: ClientError) -> None:
        """Stop the parser from a callback; ``data_received`` answers ``error``."""
        self._refusal = error
        raise Refused(error.code)

    def _refuse(self, error: ClientError) -> None:
        self._draining = True
        self._wait = NO_WAIT
        own = self._own
        queued = any(cycle is own for cycle, _ in self.pipeline)
        if own is not None and not own.response_complete:
            # The app reading this request learns the client is gone; its answer goes nowhere,
            # and no 100 Continue follows the refusal when it asks for the body.
            own.disconnected = True
            own.waiting_for_100_continue = False
            own.message_event.set()
        _log.info("refused a request from %s: %s", self.client, error.code)
        if queued or (own is not None and own.response_started):
            self._close()
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
        self.loop.call_later(LINGER, self._close)

    def _close(self) -> None:
        """Close the connection once what is buffered for the client is out (Rule 6)."""
        self._watch = close_watched(
            self.transport, self.loop, self.limits, self.client, self._watch, lambda: self._lost
        )


class StallWatch:
    """Resets a connection whose client takes none of what is buffered for it (Rule 6):
    every ``patience`` seconds until ``settled()``, it looks at how much the client has
    not taken yet, and resets the connection if that did not go down since the last look.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        patience: float,
        client: object,
        *,
        settled: Callable[[], bool],
    ) -> None:
        self.transport = transport
        self.loop = loop
        self.patience = patience
        self.client = client
        self.settled = settled
        self.left = untaken(transport)
        self.handle = loop.call_later(patience, self.look)

    def look(self) -> None:
        if self.settled():
            return  # all of it is in the kernel's hands, or the connection is gone
        left = untaken(self.transport)
        if left < self.left:
            self.left = left  # the client is taking it: look again later
            self.handle = self.loop.call_later(self.patience, self.look)
            return
        _log.info("reset a connection from %s: it stopped reading its answer", self.client)
        reset(self.transport)

    def cancel(self) -> None:
        self.handle.cancel()


def close_watched(
    transport: asyncio.Transport,
    loop: asyncio.AbstractEventLoop,
    limits: ServerLimits,
    client: object,
    watch: StallWatch | None,
    lost: Callable[[], bool],
) -> StallWatch | None:
    """Close ``transport`` once what is buffered for its client is out; the ``StallWatch``
    that resets it if the client takes none of that for ``keepalive_timeout`` (Rule 6):
    ``watch`` if the connection has one already, a new one if something is buffered."""
    transport.close()
    if watch is None and not lost() and transport.get_write_buffer_size():
        watch = StallWatch(
            transport,
            loop,
            limits.keepalive_timeout,
            client,
            settled=lambda: lost() or not transport.get_write_buffer_size(),
        )
    return watch


def untaken(transport: asyncio.Transport) -> int:
    """Bytes written for the client that it has not acknowledged yet.

    The transport's buffer moves to the kernel's only when much of the kernel's is free,
    so a client reading slowly can leave it unchanged for seconds: the kernel's own
    count (``SIOCOUTQ``, where the OS has it) moves with every byte the client takes.
    """
    count = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if _OUTQ is not None and sock is not None:
        with contextlib.suppress(OSError, ValueError):
            queued = fcntl.ioctl(sock.fileno(), _OUTQ, bytes(4))
            count += int.from_bytes(queued, sys.byteorder, signed=True)
    return count


def too_late(wait: Wait, limits: ServerLimits) -> RequestTimeout:
    """The refusal of a request whose head or body missed its deadline ``wait``."""
    part = "body" if wait is BODY_WAIT else "head"
    seconds = getattr(limits, wait.value)
    return RequestTimeout(reason=f"the request {part} did not arrive within {seconds:g} s")


def reset(transport: asyncio.Transport) -> None:
    """Close ``transport`` with a reset, dropping what is still buffered for its client."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
    transport.abort()


def malformed(exc: Exception) -> BadRequest:
    """The refusal of a head the parser could not read (Rule 5)."""
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return BadRequest(reason="the method is not an HTTP method this server knows")
    if isinstance(exc, httptools.HttpParserInvalidURLError):
        return BadRequest(reason="the target has a character a URL cannot hold")
    return BadRequest(reason="the request line, a header field or the body's framing is invalid")
