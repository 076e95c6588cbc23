"""The resource test: what ``surefoot serve``'s HTTP server accepts, over raw sockets.

A real ``surefoot serve`` (one worker, short timeouts) in front of a recording upstream;
clients are raw sockets sending exact bytes. Header limits, deadlines (slowloris, silence,
a partial body, an idle keep-alive, an early answer), malformed heads, upgrades, trailers,
and the server's memory (its peak RSS, read from /proc) while a 32 MB header is sent. Then
the protocol in process, under small apps that read late or answer more than a client
takes; the pure rules of ``surefoot.gateway._head``, the uvicorn hooks ``_server.py``
relies on, binding, and what a reload of the policy file
cannot change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from _gateway_helpers import GatewayProcess, free_port, surefoot_serve, toml_config, wait_until
from _raw_http import (
    HOST,
    connect,
    exchange,
    field,
    parsed,
    protocol_server,
    read_all,
    read_response,
    request,
)
from click.testing import CliRunner

from surefoot.cli import main
from surefoot.errors import BadRequest, ConfigurationError, RequestHeadersTooLarge
from surefoot.gateway import Gateway, load_config
from surefoot.gateway._head import HeadMeter, ServerLimits, problem_response, refusal
from surefoot.gateway._serve import serve

LIMITS = """
[server]
header_timeout = 0.5
body_timeout = 0.5
keepalive_timeout = 0.5
"""
KEY = b"Idempotency-Key: k-{n}\r\n"


# -- a recording upstream -------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Records every whole request it receives in ``seen``, and answers 200."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def _answer(self) -> None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size + 2)[:-2]
            while self.rfile.readline() not in (b"\r\n", b""):
                pass  # trailers the gateway might have sent on
        else:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            if len(body) < length:
                return  # cut off: only whole requests are recorded
        headers = [(k.lower(), v) for k, v in self.headers.items()]
        self.seen.append({"path": self.path, "headers": headers, "body": body.decode()})
        out = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Served:
    gateway: GatewayProcess
    port: int
    seen: list[dict[str, Any]]

    @property
    def pid(self) -> int:
        return self.gateway.server.process.pid

    def paths(self) -> list[str]:
        return [request["path"] for request in self.seen]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    seen: list[dict[str, Any]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    tmp = tmp_path_factory.mktemp("limits")
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    gateway = surefoot_serve(tmp, toml_config(url, "memory://", LIMITS))
    try:
        gateway.wait_ready()
        yield Served(gateway, int(gateway.url.rsplit(":", 1)[1]), seen)
    finally:
        gateway.server.stop()
        upstream.shutdown()
        upstream.server_close()


# -- header limits --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([field("X-Big", 33 * 1024)], "a header field is over 32768 bytes"),
        (
            [field(f"X-Part-{i}", 30 * 1024) for i in range(3)],
            "the request target and header fields are over 65536 bytes",
        ),
        ([b"X-F%d: 1\r\n" % i for i in range(100)], "more than 100 header fields"),
    ],
    ids=["one field", "the whole block", "too many fields"],
)
def test_heads_over_the_default_limits_get_a_431_problem(
    served: Served, fields: list[bytes], reason: str
) -> None:
    before = served.paths()
    raw = exchange(served.port, request("GET /limits HTTP/1.1", HOST, *fields))

    document = parsed(raw).problem(431, "request_headers_too_large")
    assert reason in document["detail"]
    assert served.paths() == before


@pytest.mark.slow
def test_heads_within_the_limits_are_served(served: Served) -> None:
    # 100 fields at most, one of 32 KiB (fewer here: the recording upstream takes 100 in all)
    fields = [field("X-Big", 32 * 1024), *(b"X-F%d: 1\r\n" % i for i in range(90))]
    raw = exchange(served.port, request("GET /within HTTP/1.1", HOST, *fields))

    assert parsed(raw).status == 200
    seen = served.seen[-1]
    assert seen["path"] == "/within"
    assert dict(seen["headers"])["x-big"] == "a" * (32 * 1024 - 5)


def _rss(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (the peak since the last reset) of ``pid``, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.M)
    assert match is not None, status
    return int(match.group(1)) * 1024


@pytest.mark.slow
def test_a_32_mb_header_is_cut_off_and_memory_stays_bounded(served: Served) -> None:
    before = served.paths()
    # The peak is measured from here: the kernel resets VmHWM to the current RSS.
    Path(f"/proc/{served.pid}/clear_refs").write_text("5")
    resident = _rss(served.pid, "VmRSS")
    huge = b"GET /huge HTTP/1.1\r\nHost: gateway.test\r\nX-Huge: " + b"a" * (32 * 1024 * 1024)
    answers = []
    for _ in range(2):
        answers.append(exchange(served.port, huge + b"\r\n\r\n"))
    peak = _rss(served.pid, "VmHWM")

    assert peak - resident < 20 * 1024 * 1024, (resident, peak)
    for raw in answers:
        parsed(raw).problem(431, "request_headers_too_large")
    assert served.paths() == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("second", "status", "code"),
    [
        (
            request("GET /second HTTP/1.1", HOST, field("X-Big", 33 * 1024)),
            431,
            "request_headers_too_large",
        ),
        (b"GET /second HTTP/1.1\r\nHost: gateway.test\r\n", 408, "request_timeout"),
        (
            b"PUT /second HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 9\r\n\r\nabc",
            408,
            "request_timeout",
        ),
    ],
    ids=["too large", "partial head", "partial body"],
)
def test_a_refused_pipelined_request_is_answered_after_the_one_before(
    served: Served, second: bytes, status: int, code: str
) -> None:
    first = b"GET /first HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
    with connect(served.port) as sock:
        sock.sendall(first + second)
        reader = sock.makefile("rb")
        answers = (parsed(read_response(reader)), parsed(reader.read()))

    assert answers[0].status == 200
    answers[1].problem(status, code)
    assert "/second" not in served.paths()


# -- deadlines ------------------------------------------------------------------------------


@pytest.mark.slow
def test_slowloris_connections_get_a_408_problem_after_header_timeout(served: Served) -> None:
    selector = selectors.DefaultSelector()
    answers: dict[socket.socket, bytes] = {}
    for _ in range(20):
        sock = connect(served.port)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: gateway.test\r\nX-Slow: ")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        answers[sock] = b""
    open_ = set(answers)

    def poll() -> bool:
        # Each round: read what the server said, and send every open connection one byte more.
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            answers[sock] += chunk
            if not chunk:
                selector.unregister(sock)
                open_.discard(sock)
        for sock in open_:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, BlockingIOError):
                sock.send(b"a")
        return not open_

    try:
        wait_until(poll, timeout=15, what="the server to end every slow connection")
    finally:
        selector.close()
        for sock in answers:
            sock.close()

    for raw in answers.values():
        document = parsed(raw).problem(408, "request_timeout")
        assert "head" in document["detail"]


@pytest.mark.slow
def test_a_silent_connection_is_closed(served: Served) -> None:
    with connect(served.port) as sock:
        assert read_all(sock) == b""


@pytest.mark.slow
def test_a_partial_body_gets_a_408_problem(served: Served) -> None:
    head = b"POST /partial HTTP/1.1\r\nHost: gateway.test\r\n" + KEY.replace(b"{n}", b"partial")
    with connect(served.port) as sock:
        sock.sendall(head + b"Content-Length: 10\r\n\r\nabc")
        raw = read_all(sock)

    document = parsed(raw).problem(408, "request_timeout")
    assert "body" in document["detail"]
    assert "/partial" not in served.paths()


@pytest.mark.slow
def test_an_idle_keep_alive_connection_is_closed_after_its_requests(served: Served) -> None:
    with connect(served.port) as sock:
        reader = sock.makefile("rb")
        for n in range(2):
            sock.sendall(b"GET /kept/%d HTTP/1.1\r\nHost: gateway.test\r\n\r\n" % n)
            assert parsed(read_response(reader)).status == 200
        assert reader.read() == b""
    assert served.paths()[-2:] == ["/kept/0", "/kept/1"]


@pytest.mark.slow
def test_an_early_answer_then_the_rest_of_the_body_leaves_the_connection_an_idle_deadline(
    served: Served,
) -> None:
    # The gateway answers a path it refuses without reading the body; the client sends the
    # rest of that body after the answer, and the connection, idle, must still be closed.
    with connect(served.port) as sock:
        sock.sendall(
            b"POST /../early HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 10\r\n\r\n12345"
        )
        reader = sock.makefile("rb")
        answer = parsed(read_response(reader))
        sock.sendall(b"67890")
        rest = reader.read()  # the guard's timeout fails the test if it is never closed

    assert answer.status == 400
    assert "connection" not in answer.headers  # kept alive: the close is the idle deadline's
    assert rest == b""


# -- malformed heads and upgrades -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (request("G@T /x HTTP/1.1", HOST), "method"),
        (request("GET /x HTTP/1.1", HOST, b"X-Bad: a\x01b\r\n"), "header field"),
        (request("GET /x\x7f HTTP/1.1", HOST), "target"),
        (request("GET /x HTTP/1.1"), "needs a Host"),
        (request("GET /x HTTP/1.1", HOST, b"Host: other.test\r\n"), "more than one Host"),
        (request("GET * HTTP/1.1", HOST), "'*' is for OPTIONS"),
        (request("GET http://other.test/x HTTP/1.1", HOST), "differs from the Host"),
        (request("GET ftp://gateway.test/x HTTP/1.1", HOST), "neither a path"),
    ],
    ids=[
        "bad method",
        "control character in a field",
        "control character in the target",
        "no Host",
        "two Hosts",
        "GET *",
        "absolute-form for another host",
        "absolute-form not http",
    ],
)
def test_malformed_heads_get_a_400_problem(served: Served, data: bytes, reason: str) -> None:
    before = served.paths()
    document = parsed(exchange(served.port, data)).problem(400, "bad_request")

    assert reason in document["detail"]
    assert served.paths() == before


@pytest.mark.slow
def test_heads_the_rules_allow_are_served(served: Served) -> None:
    old = parsed(exchange(served.port, b"GET /old HTTP/1.0\r\n\r\n"))
    absolute = parsed(
        exchange(served.port, request("GET http://Gateway.test:80/absolute HTTP/1.1", HOST))
    )

    assert (old.status, absolute.status) == (200, 200)
    assert served.paths()[-2:] == ["/old", "/absolute"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "data",
    [
        request(
            "GET /ws HTTP/1.1",
            HOST,
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ).replace(b"Connection: close", b"Connection: Upgrade"),
        request("POST /h2c HTTP/1.1", HOST, b"Upgrade: h2c\r\nContent-Length: 3\r\n", body=b"abc"),
        request("CONNECT gateway.test:443 HTTP/1.1", HOST),
    ],
    ids=["websocket", "h2c", "CONNECT"],
)
def test_upgrades_get_a_400_problem_and_log_no_error(served: Served, data: bytes) -> None:
    before = served.paths()
    log = served.gateway.server.log
    start = log.stat().st_size
    parsed(exchange(served.port, data)).problem(400, "upgrade_not_supported")

    assert served.paths() == before
    logged = log.read_bytes()[start:]
    assert b'"level":"ERROR"' not in logged
    assert b"upgrade" not in logged.lower()


@pytest.mark.slow
def test_chunked_trailers_never_become_headers(served: Served) -> None:
    data = request(
        "POST /trailers HTTP/1.1",
        HOST,
        KEY.replace(b"{n}", b"trailers"),
        b"Transfer-Encoding: chunked\r\n",
        body=b"3\r\nabc\r\n0\r\nX-Trailer: evil\r\n\r\n",
    )
    answer = parsed(exchange(served.port, data))

    assert answer.status == 200, answer
    seen = served.seen[-1]
    assert (seen["path"], seen["body"]) == ("/trailers", "abc")
    names = [name for name, _ in seen["headers"]]
    assert "x-trailer" not in names


# -- the protocol in process ----------------------------------------------------------------


async def respond(send: Any, body: bytes) -> None:
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def late_reader(scope: Any, receive: Any, send: Any) -> None:
    """Asks for the body only after a while (as the gateway does while it waits for an
    upstream connection, or streams to an upstream that reads slowly), then answers its size."""
    await asyncio.sleep(1.0)  # the slow app under test: three times its body_timeout
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the server refused the request: nothing to answer
        size += len(message["body"])
        more = message["more_body"]
    body = str(size).encode()
    await respond(send, body)


@pytest.mark.slow
def test_body_timeout_does_not_count_while_the_server_stops_reading() -> None:
    # The client sends 2 MB at once; uvicorn stops reading once 64 KiB wait for the app,
    # which asks for them after three body_timeouts: none of that time is the client's.
    body = b"x" * 2_000_000
    limits = ServerLimits(body_timeout=0.3)
    with protocol_server(late_reader, limits) as port, connect(port) as sock:
        sent = request("PUT /late HTTP/1.1", HOST, b"Content-Length: 2000000\r\n", body=body)
        sending = threading.Thread(target=sock.sendall, args=(sent,))
        sending.start()
        raw = read_all(sock)
        sending.join()

    answer = parsed(raw)
    assert (answer.status, answer.body) == (200, b"2000000"), answer


@pytest.mark.slow
def test_a_body_sent_after_100_continue_is_due_from_the_continue() -> None:
    # The client waits for 100 Continue, which is sent when the app asks for the body.
    limits = ServerLimits(body_timeout=0.3)
    with protocol_server(late_reader, limits) as port, connect(port) as sock:
        sock.sendall(
            request("PUT /late HTTP/1.1", HOST, b"Expect: 100-continue\r\nContent-Length: 5\r\n")
        )
        reader = sock.makefile("rb")
        interim = reader.readline() + reader.readline()
        sock.sendall(b"abcde")
        answer = parsed(reader.read())

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (answer.status, answer.body) == (200, b"5"), answer


@pytest.mark.slow
def test_a_refused_request_that_expects_100_continue_gets_no_continue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client sends its body without waiting (as it may): its trailers are refused before
    # the app asks for the body, and the app asking afterwards must not write 100 Continue.
    trailer = field("X-Trailer", 33 * 1024)
    sent = request(
        "POST /late HTTP/1.1",
        HOST,
        b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n",
        body=b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n",
    )
    opened: list[socket.socket] = []
    try:
        with protocol_server(late_reader, ServerLimits()) as port:
            opened.append(connect(port))
            opened[0].sendall(sent)
            raw = read_all(opened[0])
    finally:
        for sock in opened:  # closed once the server stopped: the app asked on an open connection
            sock.close()

    parsed(raw).problem(431, "request_headers_too_large")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


BIG = b"y" * 8_000_000  # more than the kernel's socket buffers hold: the rest waits in the server


async def big_answer(scope: Any, receive: Any, send: Any) -> None:
    await respond(send, BIG)


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's state of ``sock`` (``tcp_info.tcpi_state``: 1 established, 7 closed)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent",
    [
        b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /refused HTTP/1.1\r\n\r\n",
    ],
    ids=["kept alive, then idle", "connection: close", "a refusal's linger"],
)
def test_a_client_that_stops_reading_is_reset(sent: bytes) -> None:
    # The client asks for 8 MB and reads none of it: once the connection is closed, the
    # server keeps what it could not send for keepalive_timeout, then resets the connection.
    limits = ServerLimits(keepalive_timeout=0.5)
    with protocol_server(big_answer, limits) as port, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(sent)
        # Closed (7) without a close of its own: the server reset it (a FIN would leave
        # it in CLOSE_WAIT).
        wait_until(lambda: _tcp_state(sock) == 7, timeout=10, what="a reset")


@pytest.mark.slow
def test_a_client_that_reads_slowly_gets_its_whole_answer() -> None:
    # The answer outlasts keepalive_timeout at this client's pace, but each keepalive_timeout
    # the client takes some of it: the server closes it only once it has all gone out.
    limits = ServerLimits(keepalive_timeout=0.3)
    sent = b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    with protocol_server(big_answer, limits) as port, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(10)
        sock.sendall(sent)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if len(received) // 2**20 > (len(received) - len(chunk)) // 2**20:
                time.sleep(0.1)  # the slow client: a pause after each MiB it reads

    assert received.endswith(b"\r\n\r\n" + BIG)


# -- the rules, without a server ------------------------------------------------------------


def test_the_meter_counts_fields_targets_and_pending_bytes() -> None:
    limits = ServerLimits(max_header_size=10, max_headers_size=25, max_header_count=2)
    meter = HeadMeter(limits)
    assert meter.target(b"/abcde") is None
    assert meter.field(b"a", b"123456789") is None  # 10 bytes: at the limit
    assert meter.pending(9) is None  # 6 + 10 + 9 = 25
    assert isinstance(meter.pending(10), RequestHeadersTooLarge)  # 26 in all
    assert "field is over 10" in str(meter.pending(11))
    assert meter.field(b"b", b"1") is None
    assert "more than 2" in str(meter.field(b"c", b"1"))
    assert "field is over 10" in str(HeadMeter(limits).field(b"a", b"1234567890"))
    assert "over 25 bytes" in str(HeadMeter(limits).target(b"/" * 26))
    # Reads with no parser callback add up to one unfinished field; one with a callback
    # starts it again (a field still arriving began in it).
    fed = HeadMeter(limits)
    assert fed.fed(6, parsed=False) is None
    assert "field is over 10" in str(fed.fed(5, parsed=False))  # 11 bytes of one field
    assert fed.fed(500, parsed=True) is None
    assert fed.fed(10, parsed=False) is None


@pytest.mark.parametrize(
    ("method", "target", "version", "headers", "upgrade", "expected"),
    [
        (b"GET", b"/", "1.1", [(b"host", b"a")], False, None),
        (b"OPTIONS", b"*", "1.1", [(b"host", b"a")], False, None),
        (b"GET", b"/", "1.0", [], False, None),
        (b"GET", b"http://A:80/x", "1.1", [(b"host", b"a")], False, None),
        (b"GET", b"https://a:443/x", "1.1", [(b"host", b"A")], False, None),
        (b"GET", b"http://a:8080/x", "1.0", [], False, None),
        (b"GET", b"http://a:8080/x", "1.1", [(b"host", b"a")], False, "differs from"),
        (b"GET", b"http://u@a/x", "1.1", [(b"host", b"a")], False, "differs from"),
        (b"GET", b"a/x", "1.1", [(b"host", b"a")], False, "neither a path"),
        (b"GET", b"*", "1.1", [(b"host", b"a")], False, "for OPTIONS"),
        (b"GET", b"/", "1.0", [(b"host", b"a"), (b"host", b"a")], False, "more than one"),
        (b"GET", b"/", "1.1", [], False, "needs a Host"),
        (b"GET", b"/", "1.1", [(b"host", b"a"), (b"upgrade", b"h2c")], False, "(h2c)"),
        (b"GET", b"/", "1.1", [(b"host", b"a")], True, "(GET)"),
        (b"CONNECT", b"a:443", "1.1", [(b"host", b"a:443")], False, "(CONNECT)"),
    ],
)
def test_refusal_rules(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    upgrade: bool,
    expected: str | None,
) -> None:
    error = refusal(method, target, version, headers, upgrade=upgrade)
    if expected is None:
        assert error is None
    else:
        assert error is not None
        assert expected in error.detail


def test_a_refusal_is_a_whole_response_that_closes_the_connection() -> None:
    raw = problem_response(
        BadRequest(reason="r"), request_id="rid-1", headers=[(b"date", b"today")]
    )
    answer = parsed(raw)
    assert answer.headers["date"] == "today"
    assert answer.problem(400, "bad_request")["detail"].startswith("The request is not valid")


def test_the_uvicorn_hooks_the_server_relies_on_are_there() -> None:
    # _server.py subclasses uvicorn's private httptools protocol: if a new uvicorn renames
    # or drops any of these, this fails before the wire tests do, naming what changed.
    import inspect

    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    protocol = inspect.getsource(HttpToolsProtocol)
    for method in (
        "connection_made", "connection_lost", "data_received", "on_message_begin", "on_url",
        "on_header", "on_headers_complete", "on_body", "on_message_complete",
        "on_response_complete", "_unset_keepalive_if_required",
    ):  # fmt: skip
        assert callable(getattr(HttpToolsProtocol, method, None)), method
    for attribute in (
        "self.parser", "self.transport", "self.flow", "self.loop", "self.client", "self.url",
        "self.headers", "self.cycle", "self.pipeline", "self.server_state",
    ):  # fmt: skip
        assert f"{attribute} =" in protocol or f"{attribute}: " in protocol, attribute
    assert list(inspect.signature(HttpToolsProtocol.__init__).parameters) == [
        "self", "config", "server_state", "app_state", "_loop",
    ]  # fmt: skip
    assert "self.flow = FlowControl(transport)" in inspect.getsource(
        HttpToolsProtocol.connection_made
    )
    assert "self.expect_100_continue = True" in inspect.getsource(HttpToolsProtocol.on_header)
    cycle = inspect.getsource(RequestResponseCycle)
    for attribute in (
        "disconnected", "response_started", "response_complete", "more_body",
        "waiting_for_100_continue",
    ):  # fmt: skip
        assert f"self.{attribute} =" in cycle, attribute
    assert "self.message_event = message_event" in cycle
    # Reading is paused by FlowControl and resumed by a request's receive: _server.py's
    # deadlines stop and start with it.
    assert "self.flow.resume_reading()" in inspect.getsource(RequestResponseCycle.receive)
    assert "self.read_paused = " in inspect.getsource(FlowControl)
    for method in ("pause_reading", "resume_reading"):
        assert callable(getattr(FlowControl, method, None)), method
    assert "if self.disconnected:\n            return" in inspect.getsource(
        RequestResponseCycle.send
    )


# -- reloading ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_reload_names_the_server_fields_it_cannot_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gateway.toml"
    base = toml_config("http://127.0.0.1:9", "memory://") + "[server]\n"
    path.write_text(base + "keepalive_timeout = 5\n")
    gateway = Gateway(load_config(str(path)), config_path=str(path))
    logger = logging.getLogger("surefoot.gateway")
    logger.addHandler(caplog.handler)  # whatever an earlier test did to its propagation
    try:
        path.write_text(base + "keepalive_timeout = 1\nport = 9999\nmax_request_body = 10\n")
        assert await gateway.reload() is True
        # Back to the values the server started with; max_request_body applies on reload.
        path.write_text(base + "keepalive_timeout = 5\nmax_request_body = 20\n")
        assert await gateway.reload() is True
    finally:
        logger.removeHandler(caplog.handler)
        await gateway.aclose()

    records = {id(record): record for record in caplog.records}.values()  # each once
    warnings = [r.getMessage() for r in records if r.getMessage().startswith("reload:")]
    assert warnings == [
        "reload: server.port, server.keepalive_timeout changed but take effect at start only: "
        "not applied until surefoot serve restarts"
    ]
    assert gateway.stack.config.root.server.max_request_body == 20


# -- binding --------------------------------------------------------------------------------


def test_serve_names_the_address_it_cannot_listen_on(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(toml_config("http://127.0.0.1:9", "memory://"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as raised:
            serve(str(config), port=port, admin_port=free_port())
        admin_taken = CliRunner().invoke(
            main,
            ["serve", "--config", str(config), "--port", "0", "--admin-port", str(port)],
        )

    assert str(raised.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
    assert admin_taken.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in admin_taken.output
    assert "Traceback" not in admin_taken.output
