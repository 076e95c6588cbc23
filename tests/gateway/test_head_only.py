"""The head-only HTTP server (``surefoot.gateway.head_only_protocol``, ``surefoot decide``'s),
over raw sockets: uvicorn serving small apps with it, in a thread, on uvloop.

Each rule of ``_head_only.py`` is checked by what a client sees: answers in order and
framed, the head limits and refusals the gateway's server applies, deadlines, the end of a
connection (``Connection: close``, HTTP/1.0, EOF, shutdown), an app that fails, and a
client that stops taking its answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from typing import Any

import pytest
from _gateway_helpers import wait_until
from _raw_http import HOST, connect, field, parsed, read_all, read_response, request, serving

from surefoot.gateway import head_only_protocol
from surefoot.gateway._head import ServerLimits

SHORT = ServerLimits(
    max_header_size=64,
    max_headers_size=256,
    max_header_count=6,
    header_timeout=0.3,
    body_timeout=0.3,
    keepalive_timeout=0.3,
)


class Echo:
    """Answers each request with ``METHOD path?query`` and the header names it was given,
    after waiting for ``hold`` (if set) on its first call; records the scopes."""

    def __init__(
        self, *, framed: bool = True, body: bytes = b"", slow: dict[str, float] | None = None
    ) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.framed = framed
        self.body = body
        self.slow = slow or {}  # seconds to wait before answering, by path
        self.hold: threading.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if self.hold is not None and len(self.scopes) == 1:
            await asyncio.to_thread(self.hold.wait, 10)
        if scope["path"] in self.slow:
            await asyncio.sleep(self.slow[scope["path"]])
        if scope["path"] == "/cancelled":
            raise asyncio.CancelledError
        query = scope["query_string"].decode()
        names = ",".join(name.decode() for name, _ in scope["headers"])
        body = self.body or f"{scope['method']} {scope['path']}?{query} [{names}]".encode()
        headers = [(b"x-app", b"echo")]
        if self.framed:
            headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def served(app: Any, limits: ServerLimits = SHORT) -> Any:
    """uvicorn serving ``app`` with the head-only protocol: its port and the server."""
    return serving(app, head_only_protocol(limits, app))


GET = b"GET /a%20b?x=1 HTTP/1.1\r\nHost: t\r\nX-One: 1\r\n\r\n"


# -- answers ----------------------------------------------------------------------------------


def test_requests_on_a_kept_alive_connection_are_answered_in_order_and_framed() -> None:
    app = Echo(framed=False)
    with served(app) as (port, _), connect(port) as sock:
        reader = sock.makefile("rb")
        sock.sendall(GET)
        first = parsed(read_response(reader))
        sock.sendall(b"POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        second = parsed(read_response(reader))

    assert first.status == 200
    assert first.body == b"GET /a b?x=1 [host,x-one]"
    assert first.headers["content-length"] == str(len(first.body))  # added: the app sent none
    assert "date" in first.headers
    assert "connection" not in first.headers
    assert second.body == b"POST /two? [host,content-length]"  # the body is never the app's
    scope = app.scopes[0]
    assert (scope["raw_path"], scope["http_version"], scope["client"][0]) == (
        b"/a%20b",
        "1.1",
        "127.0.0.1",
    )


def test_pipelined_requests_are_answered_in_the_order_they_came() -> None:
    app = Echo()
    app.hold = threading.Event()  # the first answer waits: the others must queue behind it
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5)))
        wait_until(lambda: app.scopes or None, timeout=5, what="the first request")
        app.hold.set()
        reader = sock.makefile("rb")
        bodies = [parsed(read_response(reader)).body for _ in range(5)]

    assert bodies == [b"GET /%d? [host]" % i for i in range(5)]


def test_many_pipelined_requests_wait_unparsed_and_are_all_answered() -> None:
    # 1,000 requests (27 KB) in one write, the first answer held: the server parses them a
    # slice at a time and stops once 16 wait (Rule 2); every one is answered, in order.
    app = Echo()
    app.hold = threading.Event()
    count = 1000
    with served(app) as (port, server), connect(port) as sock:
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(count)))
        wait_until(lambda: app.scopes or None, timeout=5, what="the first request")
        (connection,) = server.server_state.connections
        wait_until(lambda: not connection._reading or None, timeout=5, what="reading to stop")
        queued = len(connection._queue)
        app.hold.set()
        reader = sock.makefile("rb")
        bodies = [parsed(read_response(reader)).body for _ in range(count)]

    assert queued < 16 + 4096 // 27  # at most one slice's requests past the bound
    assert bodies == [b"GET /%d? [host]" % i for i in range(count)]


def test_a_head_request_gets_the_head_of_the_answer_only() -> None:
    with served(Echo()) as (port, _), connect(port) as sock:
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /g HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = sock.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += reader.readline()
        following = parsed(read_response(reader))

    assert b"content-length: 15\r\n" in head  # "HEAD /h? [host]": the app's own count
    assert following.body == b"GET /g? [host]"


def test_a_request_that_expects_100_continue_gets_it_then_its_answer() -> None:
    with served(Echo()) as (port, _), connect(port) as sock:
        sock.sendall(
            b"PUT /c HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        reader = sock.makefile("rb")
        interim = reader.readline() + reader.readline()
        sock.sendall(b"abcd")
        answer = parsed(read_response(reader))

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answer.body == b"PUT /c? [host,expect,content-length]"


#: A slow request, then one that waits for 100 Continue before it sends its 4-byte body.
SLOW_THEN_EXPECT = (
    b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
    b"PUT /c HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
)


def test_a_body_expected_after_100_continue_is_due_from_the_continue() -> None:
    # Behind an answer slower than body_timeout, the 100 Continue waits its turn, and the
    # body's deadline with it (Rule 1): the client that waits for it is not refused.
    app = Echo(slow={"/slow": 1.0})
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(SLOW_THEN_EXPECT)
        reader = sock.makefile("rb")
        first = parsed(read_response(reader))
        interim = reader.readline() + reader.readline()
        sock.sendall(b"abcd")
        second = parsed(read_response(reader))

    assert (first.status, interim, second.status) == (200, b"HTTP/1.1 100 Continue\r\n\r\n", 200)


def test_pipelined_requests_that_expect_100_continue_each_have_their_body_due_from_theirs() -> None:
    # The first sends its body at once, the second waits for its own Continue, which comes
    # after the first's slow answer: writing the first's Continue starts no deadline for
    # the second's body.
    app = Echo(slow={"/a": 1.0})
    expect = b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: t\r\n" + expect + b"hi")
        sock.sendall(b"POST /b HTTP/1.1\r\nHost: t\r\n" + expect)
        reader = sock.makefile("rb")
        continues = [reader.readline() + reader.readline()]
        first = parsed(read_response(reader))
        continues.append(reader.readline() + reader.readline())
        sock.sendall(b"ok")
        second = parsed(read_response(reader))

    assert continues == [b"HTTP/1.1 100 Continue\r\n\r\n"] * 2
    assert (first.status, second.status) == (200, 200)
    assert second.body.startswith(b"POST /b?")


def test_trailer_fields_are_measured_and_never_given_to_the_app() -> None:
    app = Echo()
    chunked = (
        b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(chunked)
        answer = parsed(read_response(sock.makefile("rb")))

    assert answer.body == b"POST /t? [host,transfer-encoding]"


# -- the end of a connection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"GET /last HTTP/1.0\r\n\r\n"],
    ids=["Connection: close", "HTTP/1.0"],
)
def test_a_request_that_ends_the_connection_is_the_last_one_read(head: bytes) -> None:
    app = Echo()
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(head + b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = read_all(sock)

    answer = parsed(raw)
    assert answer.headers["connection"] == "close"
    assert answer.body.startswith(b"GET /last?")
    assert raw.count(b"HTTP/1.1 ") == 1
    assert [scope["path"] for scope in app.scopes] == ["/last"]


def test_a_client_that_half_closes_gets_all_its_answers_then_the_end() -> None:
    # More requests than the queue holds: those still unparsed at the EOF are answered too.
    app = Echo()
    app.hold = threading.Event()
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(GET * 100)
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: app.scopes or None, timeout=5, what="the first request")
        app.hold.set()
        raw = read_all(sock)

    assert raw.count(b"HTTP/1.1 200 OK") == 100


def test_shutting_down_answers_the_request_under_way_with_connection_close() -> None:
    app = Echo()
    app.hold = threading.Event()
    with served(app) as (port, server), connect(port) as sock, connect(port) as idle:
        sock.sendall(GET)
        wait_until(lambda: app.scopes or None, timeout=5, what="the request")
        server.should_exit = True  # uvicorn's graceful shutdown: each connection's shutdown()
        assert idle.recv(1) == b""  # a connection with no answer under way closes at once
        app.hold.set()
        raw = read_all(sock)

    answer = parsed(raw)
    assert (answer.status, answer.headers["connection"]) == (200, "close")


def test_shutting_down_sends_no_100_continue_for_a_request_it_will_not_read() -> None:
    app = Echo(slow={"/slow": 0.5})
    with served(app) as (port, server), connect(port) as sock:
        sock.sendall(SLOW_THEN_EXPECT)
        wait_until(lambda: app.scopes or None, timeout=5, what="the first request")
        server.should_exit = True
        raw = read_all(sock)

    answer = parsed(raw)
    assert (answer.status, answer.headers["connection"]) == (200, "close")
    assert b"100 Continue" not in raw


def test_a_client_that_half_closes_within_a_head_gets_the_answers_owed_and_no_408() -> None:
    # The client can send nothing more: its partial head has no deadline, and the
    # connection closes once the answer before it is out.
    app = Echo(slow={"/slow": 1.0})
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\n")
        sock.shutdown(socket.SHUT_WR)
        raw = read_all(sock)

    assert parsed(raw).status == 200
    assert raw.count(b"HTTP/1.1 ") == 1


# -- limits and refusals (the gateway's, _head.py) ----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([field("X-Big", 65)], "a header field is over 64 bytes"),
        ([field(f"X-P{i}", 60) for i in range(5)], "over 256 bytes"),
        ([b"X-F%d: 1\r\n" % i for i in range(6)], "more than 6 header fields"),
        ([], "over 256 bytes"),
    ],
    ids=["one field", "the whole block", "too many fields", "the target"],
)
def test_heads_over_the_limits_get_a_431_problem(fields: list[bytes], reason: str) -> None:
    app = Echo()
    target = "/big" if fields else "/" + "t" * 300
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(request(f"GET {target} HTTP/1.1", HOST, *fields))
        answer = parsed(read_all(sock))

    assert reason in answer.problem(431, "request_headers_too_large")["detail"]
    assert app.scopes == []


def test_a_field_that_never_ends_is_refused_before_it_is_whole() -> None:
    # 4 KiB of one field, no end of line: refused once its bytes pass the field's limit,
    # within one read of where it began.
    with served(Echo()) as (port, _), connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: ")
        time.sleep(0.05)  # one read of slack: the field began in the first one
        sock.sendall(b"a" * 4096)
        answer = parsed(read_all(sock))

    answer.problem(431, "request_headers_too_large")


def test_a_refusal_comes_after_the_answers_owed_before_it() -> None:
    app = Echo()
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(GET + request("GET /big HTTP/1.1", HOST, field("X-Big", 65)))
        raw = read_all(sock)

    first, _, rest = raw.partition(b"HTTP/1.1 431")
    assert parsed(first).body.startswith(b"GET /a b?x=1")
    parsed(b"HTTP/1.1 431" + rest).problem(431, "request_headers_too_large")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n", "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", "bad_request"),
        (b"GET / HTTP/1.1\r\n\r\n", "bad_request"),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "upgrade_not_supported",
        ),
        (b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", "upgrade_not_supported"),
    ],
    ids=["bad method", "two hosts", "no host", "upgrade", "connect"],
)
def test_heads_the_rules_refuse_get_a_400_problem(data: bytes, code: str) -> None:
    app = Echo()
    with served(app) as (port, _), connect(port) as sock:
        sock.sendall(data)
        answer = parsed(read_all(sock))

    answer.problem(400, code)
    assert app.scopes == []


@pytest.mark.parametrize(
    ("line", "seen"),
    [(b"GET http://t/abs?q=2", b"GET /abs?q=2 [host]"), (b"OPTIONS *", b"OPTIONS *? [host]")],
    ids=["absolute-form", "asterisk-form"],
)
def test_the_other_target_forms_are_served(line: bytes, seen: bytes) -> None:
    with served(Echo()) as (port, _), connect(port) as sock:
        sock.sendall(line + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = parsed(read_response(sock.makefile("rb")))

    assert answer.body == seen


# -- deadlines ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "part"),
    [
        (b"GET / HTTP/1.1\r\nHost: t\r\n", "head"),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc", "body"),
        (GET + b"GET / HTTP/1.1\r\n", "head"),
    ],
    ids=["a head", "a body", "a later head"],
)
def test_a_request_that_stops_arriving_gets_a_408_problem(data: bytes, part: str) -> None:
    with served(Echo()) as (port, _), connect(port) as sock:
        sock.sendall(data)
        raw = read_all(sock)

    last = raw[raw.rindex(b"HTTP/1.1 408") :]
    detail = parsed(last).problem(408, "request_timeout")["detail"]
    assert f"request {part} did not arrive within 0.3 s" in detail


def test_a_silent_or_idle_connection_is_closed_without_an_answer() -> None:
    with served(Echo()) as (port, _), connect(port) as silent, connect(port) as idle:
        idle.sendall(GET)
        assert read_all(silent) == b""
        assert read_all(idle).count(b"HTTP/1.1 ") == 1  # its answer, then the close


def test_a_connection_asked_now_and_then_stays_open() -> None:
    # Each request comes within keepalive_timeout of the last answer, all of them over
    # several: the connection's deadline moves with each answer.
    with served(Echo()) as (port, _), connect(port) as sock:
        reader = sock.makefile("rb")
        answers = []
        for _ in range(4):
            sock.sendall(GET)
            answers.append(parsed(read_response(reader)).status)
            time.sleep(0.2)

    assert answers == [200] * 4


def test_a_head_sent_slowly_is_due_from_its_first_byte_not_a_byte_at_a_time() -> None:
    # Each byte arrives in time, the whole head does not: header_timeout bounds the head.
    with served(Echo()) as (port, _), connect(port) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 40:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > 3:
                    break
        raw = read_all(sock)

    parsed(raw).problem(408, "request_timeout")


# -- failures -------------------------------------------------------------------------------------


#: Fields an app must not send: a line break in a value or a name (a response split).
BROKEN = {
    "/broken": (b"x-injected", b"a\r\nset-cookie: b"),
    "/broken-lf": (b"x-injected", b"a\nset-cookie: b"),
    "/broken-cr": (b"x-injected", b"a\rset-cookie: b"),
    "/broken-name": (b"x-injected\r\nset-cookie", b"b"),
}


async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/raise":
        raise ValueError("secret-internal-detail")
    if path == "/receive":
        await receive()  # the body is never the app's
    if path == "/split":  # framed by the server, in one write: not a failure
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})
    if path.startswith("/broken"):
        headers = [(b"x-fine", b"1"), BROKEN[path], (b"x-after", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
    if path == "/unstarted":
        await send({"type": "http.response.body", "body": b""})


def test_an_answer_sent_in_parts_is_written_whole() -> None:
    with served(failing) as (port, _), connect(port) as sock:
        sock.sendall(b"GET /split HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = parsed(read_response(sock.makefile("rb")))

    assert (answer.status, answer.body, answer.headers["content-length"]) == (200, b"abcd", "4")


def test_an_app_cancelled_mid_answer_gets_the_client_a_500_and_ends_the_connection() -> None:
    # Left open, the connection would pair the next request's answer with this one.
    with served(Echo()) as (port, _), connect(port) as sock:
        sock.sendall(b"GET /cancelled HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = read_all(sock)

    parsed(raw).problem(500, "internal_error")


@pytest.mark.parametrize("path", ["/raise", "/silent", "/receive", *BROKEN, "/unstarted"])
def test_an_app_that_fails_gets_the_client_a_500_problem_and_is_logged(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, "surefoot.gateway"),
        served(failing) as (port, _),
        connect(port) as sock,
    ):
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
        raw = read_all(sock)

    assert b"secret-internal-detail" not in raw
    assert b"set-cookie" not in raw.lower()
    parsed(raw).problem(500, "internal_error")
    assert [r.message for r in caplog.records] == [f"the app failed on GET {path}"]


@pytest.mark.slow
def test_a_client_that_reads_slowly_gets_every_answer() -> None:
    # An 8 MB answer read at about 3 MB/s: the server's buffer stays over its high-water
    # mark for seconds, many keepalive_timeouts, while the client keeps taking it.
    app = Echo(body=b"x" * 8_000_000)
    with served(app) as (port, _), socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        received = 0
        while received < 8_000_000:
            chunk = sock.recv(65536)
            assert chunk, received
            received += len(chunk)
            time.sleep(0.02)

    assert received >= 8_000_000


def test_a_closed_connection_whose_client_takes_nothing_is_reset() -> None:
    # Answers of 40 KB to a client that reads nothing, until some wait in the server's
    # buffer (under its high-water mark); the idle deadline closes the connection, and
    # with its client taking nothing it is reset, not kept (Rule 6): shutdown is prompt.
    app = Echo(body=b"x" * 40_000)
    with served(app) as (port, server), socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        (connection,) = wait_until(
            lambda: list(server.server_state.connections) or None, timeout=5, what="a connection"
        )
        for _ in range(2000):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.01)
            if connection.transport.get_write_buffer_size():
                break
        assert connection.transport.get_write_buffer_size()
        wait_until(
            lambda: not server.server_state.connections or None,
            timeout=5,
            what="the connection to be reset",
        )


def read_all_strictly(sock: socket.socket) -> None:
    """Read until the end; a reset raises."""
    while sock.recv(1 << 20):
        pass


def test_a_client_that_takes_none_of_its_answers_is_reset() -> None:
    # Answers of 1 MB, pipelined, never read: the server stops answering once its buffer is
    # full, then resets the connection after keepalive_timeout (Rule 6).
    app = Echo(body=b"x" * 1_000_000)
    with served(app) as (port, _), socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 20)
        time.sleep(1.5)  # five keepalive_timeouts taking nothing
        asked = len(app.scopes)
        with pytest.raises(ConnectionResetError):
            read_all_strictly(sock)

    assert asked < 20
