"""``surefoot serve`` between raw clients and a misbehaving upstream, exact bytes both ways.

The upstream (``Scripted``) is a raw server in a thread of this process: it answers each
request by its path with exact bytes (interim 1xx answers, a ``HEAD`` answer whose body
comes late, an unsolicited second answer, an endless chunked body) and records what it
received. The gateway runs as ``surefoot serve`` in its own process; the clients are raw
sockets, so a test can leave in the middle of a body or stop reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    EchoUpstream,
    GatewayProcess,
    gateway_config,
    surefoot_serve,
    toml_config,
    wait_until,
)

from surefoot.gateway import Gateway

#: What a misbehaving upstream sends where nothing is expected: a whole answer.
STOLEN = b"HTTP/1.1 201 Created\r\nX-Stolen: 1\r\nContent-Length: 5\r\n\r\nstole"
FRESH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfresh"
TRUSTED = "127.0.0.2"  # a trusted proxy: clients connect from this address to be one
GUARD = 30.0  # seconds before a connection the gateway should have closed fails a test


# -- the scripted upstream --------------------------------------------------------------------


@dataclass
class Received:
    """One request as the upstream read it."""

    connection: int
    line: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    complete: bool | None = None  # whether the whole body arrived; None: still reading

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Scripted:
    """A raw HTTP/1.1 upstream on its own event loop, in a thread."""

    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.connections = itertools.count(1)
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def requests(self, path: str) -> list[Received]:
        return [r for r in self.received if r.line.split(" ")[1].startswith(path)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.append(writer)
        number = next(self.connections)
        try:
            while True:
                request = await self._read(reader, number)
                if request is None or not request.complete:
                    return
                await self._answer(request, reader, writer, number)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            self.tasks.discard(task)

    async def _read(self, reader: asyncio.StreamReader, number: int) -> Received | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line, *fields = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers = [(n.strip().lower(), v.strip()) for n, _, v in (f.partition(":") for f in fields)]
        request = Received(number, line, headers)
        self.received.append(request)
        try:
            if request.header("transfer-encoding") == ["chunked"]:
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    request.body += (await reader.readexactly(size + 2))[:-2]
                await reader.readexactly(2)
            else:
                length = int(next(iter(request.header("content-length")), "0"))
                request.body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            request.body += exc.partial
            request.complete = False  # the connection closed in the middle of the body
            return request
        request.complete = True
        return request

    async def _answer(
        self,
        request: Received,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        number: int,
    ) -> None:
        method, path = request.line.split(" ")[:2]
        if path.startswith("/continue"):
            body = json.dumps({"charge": len(self.requests("/continue"))}).encode()
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await writer.drain()
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        elif path.startswith("/switch"):
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade")
            writer.write(b"\r\n\r\n")
        elif method == "HEAD":
            # The answer announces STOLEN's length; STOLEN comes only once the next request
            # arrives on this connection, where it would be read as that request's answer.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(STOLEN))
            await writer.drain()
            if await self._read(reader, number) is not None:
                writer.write(STOLEN)
        elif path.startswith("/extra"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + STOLEN)
        elif path.startswith("/endless"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            while True:
                writer.write(chunk)
                await writer.drain()
        else:
            writer.write(FRESH)
        await writer.drain()


# -- raw clients ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the body arrived whole, by its framing

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def code(self) -> str:
        assert self.header("content-type") == "application/problem+json", self
        code: str = json.loads(self.body)["code"]
        return code


def parse(data: bytes) -> Answer:
    """The first answer in ``data``, the bytes a server sent until it closed."""
    head, _, rest = data.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (f.partition(":") for f in fields)]
    answer = Answer(int(line.split(" ")[1]), headers, b"", False)
    if answer.header("transfer-encoding") == "chunked":
        answer.complete = rest.endswith(b"\r\n0\r\n\r\n") or rest == b"0\r\n\r\n"
        while True:  # the chunks that arrived whole (until a gap of a long answer)
            size_line, found, after = rest.partition(b"\r\n")
            if not found or not re.fullmatch(rb"[0-9a-fA-F]+", size_line):
                break
            size = int(size_line, 16)
            if size == 0 or len(after) < size + 2:
                break
            answer.body, rest = answer.body + after[:size], after[size + 2 :]
    else:
        length = int(answer.header("content-length") or 0)
        answer.body = rest[:length]
        answer.complete = len(answer.body) == length
    return answer


def connect(gateway: GatewayProcess, *, source: str = "127.0.0.1") -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=GUARD, source_address=(source, 0))


def until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection; of a long answer, only its
    first and last 64 KiB (with ``...`` between). An endless answer fails the test after
    ``GUARD`` seconds instead of hanging it (a guard, not a measurement)."""
    start, end = bytearray(), bytearray()
    deadline = time.monotonic() + GUARD
    while chunk := sock.recv(1 << 20):
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway still sends after {GUARD} s")
        if len(start) < 65536:
            start += chunk
        else:
            end = (end + chunk)[-65536:]
    return bytes(start + (b"..." + end if end else b""))


def request(
    gateway: GatewayProcess,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    source: str = "127.0.0.1",
) -> Answer:
    """One request on its own connection (``Connection: close``): its answer."""
    fields = {"Host": "gateway.test", "Connection": "close", **(headers or {})}
    if body or method == "POST":
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    with connect(gateway, source=source) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = until_closed(sock)
    return parse(data)


def charge(
    gateway: GatewayProcess, path: str, key: str, body: bytes = b'{"amount": 1999}'
) -> Answer:
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    return request(gateway, "POST", path, headers, body)


# -- the gateway's log ------------------------------------------------------------------------


class Log:
    """The gateway's log from a test's start on."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.path = gateway.server.log
        self.start = self.path.stat().st_size

    def text(self) -> str:
        with self.path.open("rb") as file:
            file.seek(self.start)
            return file.read().decode(errors="replace")

    def access(self, path: str) -> dict[str, Any]:
        """The access line of the (one) request to ``path``, once it is written."""

        def line() -> dict[str, Any] | None:
            for text in self.text().splitlines():
                if '"surefoot.gateway.access"' in text:
                    entry: dict[str, Any] = json.loads(text)
                    if entry["path"] == path:
                        return entry
            return None

        return wait_until(line, timeout=GUARD, what=f"the access line of {path}")

    def assert_no_error(self) -> None:
        text = self.text()
        assert "Traceback" not in text, text
        assert "Exception in ASGI application" not in text, text
        assert '"level":"ERROR","logger":"uvicorn.error"' not in text, text


def requests_with_status(gateway: GatewayProcess, status: int) -> float:
    metrics = httpx.get(gateway.admin + "/metrics", headers=ADMIN_HEADERS, timeout=5).text
    pattern = rf'^surefoot_http_requests_total{{[^}}]*status="{status}"[^}}]*}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, metrics, re.MULTILINE))


# -- one upstream and one gateway for the module ----------------------------------------------


@dataclass
class Setup:
    upstream: Scripted
    gateway: GatewayProcess


ROUTES = f"""
[server]
trusted_proxies = ["{TRUSTED}"]

[[routes]]
match = "GET /endless/{{case}}"
timeout = 1

[[routes]]
match = "POST /endless/{{case}}"
timeout = 1
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("gateway")
    upstream = Scripted()
    store = f"sqlite:///{tmp}/store.db"
    gateway = surefoot_serve(tmp, toml_config(f"http://127.0.0.1:{upstream.port}", store, ROUTES))
    try:
        gateway.wait_ready()
        yield Setup(upstream, gateway)
    finally:
        gateway.server.stop()
        upstream.close()


# -- 1xx answers and connection reuse (issue 12, item 4) --------------------------------------


def test_interim_answers_are_never_the_answer_nor_the_stored_one(setup: Setup) -> None:
    first = charge(setup.gateway, "/continue/charges", "k-continue")
    again = charge(setup.gateway, "/continue/charges", "k-continue")

    assert (first.status, json.loads(first.body)) == (201, {"charge": 1})
    assert first.header("link") is None  # the 103's field stays with the 103
    assert (again.status, again.body) == (201, first.body)
    assert again.header("idempotent-replayed") == "true"
    assert len(setup.upstream.requests("/continue")) == 1


def test_a_switch_of_protocols_from_the_upstream_is_a_502(setup: Setup) -> None:
    answer = request(setup.gateway, "GET", "/switch")

    assert (answer.status, answer.code) == (502, "upstream_unavailable")


def test_a_head_answer_s_late_body_never_answers_another_client(setup: Setup) -> None:
    head = request(setup.gateway, "HEAD", "/head")
    charged = charge(setup.gateway, "/charges/after-head", "k-after-head")
    replayed = charge(setup.gateway, "/charges/after-head", "k-after-head")

    assert (head.status, head.body) == (200, b"")
    assert (charged.status, charged.body) == (200, b"fresh")
    assert (replayed.status, replayed.body) == (200, b"fresh")
    (post,) = setup.upstream.requests("/charges/after-head")
    (head_request,) = setup.upstream.requests("/head")
    assert post.connection != head_request.connection


def test_an_unsolicited_answer_is_dropped_with_its_connection(setup: Setup) -> None:
    extra = request(setup.gateway, "GET", "/extra")
    charged = charge(setup.gateway, "/charges/after-extra", "k-after-extra")

    assert (extra.status, extra.body, extra.header("x-stolen")) == (200, b"ok", None)
    assert (charged.status, charged.body) == (200, b"fresh")
    (post,) = setup.upstream.requests("/charges/after-extra")
    (get,) = setup.upstream.requests("/extra")
    assert post.connection != get.connection


# -- the total timeout holds for the body (item 6) --------------------------------------------


def test_the_total_timeout_cuts_an_endless_body_and_the_key_stays_unknown(setup: Setup) -> None:
    log = Log(setup.gateway)
    read = request(setup.gateway, "GET", "/endless/read")  # read until the gateway closes
    cut = charge(setup.gateway, "/endless/charge", "k-endless")
    retry = charge(setup.gateway, "/endless/charge", "k-endless")

    assert read.status == 200
    assert read.body
    assert not read.complete
    assert cut.status == 200
    assert cut.body
    assert not cut.complete
    assert (retry.status, retry.code) == (409, "idempotency_outcome_unknown")
    assert len(setup.upstream.requests("/endless/charge")) == 1
    assert log.access("/endless/charge")["status"] == 200
    log.assert_no_error()


# -- what the client does is not the gateway's error (item 11) --------------------------------


def test_a_client_that_stops_reading_is_cut_at_the_total_timeout(setup: Setup) -> None:
    log = Log(setup.gateway)
    with connect(setup.gateway) as sock:
        sock.sendall(b"GET /endless/stalled HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        entry = log.access("/endless/stalled")  # written once the gateway gave up
        answer = parse(until_closed(sock))  # what the buffers held, then the close

    assert entry["status"] == 200
    assert answer.status == 200
    assert not answer.complete
    log.assert_no_error()


@pytest.mark.parametrize(
    ("path", "framing", "rest"),
    [
        ("/upload/left", b"Content-Length: 1000", None),
        ("/upload/broken", b"Transfer-Encoding: chunked", b"zz\r\nnot a chunk\r\n"),
    ],
)
def test_a_client_that_leaves_mid_body_is_a_499_and_the_upstream_is_let_go(
    setup: Setup, path: str, framing: bytes, rest: bytes | None
) -> None:
    log = Log(setup.gateway)
    errors_before = requests_with_status(setup.gateway, 500)
    first = b"5\r\nhello\r\n" if b"chunked" in framing else b"hello"
    with connect(setup.gateway) as sock:
        # PUT needs no key: its body streams to the upstream as it arrives.
        sock.sendall(
            b"PUT %s HTTP/1.1\r\nHost: gateway.test\r\n%s\r\n\r\n" % (path.encode(), framing)
        )
        sock.sendall(first)
        wait_until(lambda: bool(setup.upstream.requests(path)), timeout=GUARD, what="the upstream")
        if rest is not None:
            sock.sendall(rest)
            with contextlib.suppress(OSError):
                until_closed(sock)

    entry = log.access(path)
    (received,) = setup.upstream.requests(path)
    wait_until(lambda: received.complete is not None, timeout=GUARD, what="the upstream's read")

    assert entry["status"] == 499
    # The upstream got the part that arrived, then its connection was closed.
    assert (received.body, received.complete) == (b"hello", False)
    assert requests_with_status(setup.gateway, 500) == errors_before
    log.assert_no_error()


def test_a_keyed_post_whose_client_leaves_mid_body_never_ran(setup: Setup) -> None:
    log = Log(setup.gateway)
    with connect(setup.gateway) as sock:
        sock.sendall(
            b"POST /charges/left HTTP/1.1\r\nHost: gateway.test\r\nIdempotency-Key: k-left\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"amount"'
        )
    entry = log.access("/charges/left")
    retry = charge(setup.gateway, "/charges/left", "k-left")

    assert entry["status"] == 499
    assert (retry.status, retry.body) == (200, b"fresh")  # it runs: the first never did
    assert len(setup.upstream.requests("/charges/left")) == 1
    log.assert_no_error()


@pytest.mark.anyio
async def test_an_in_process_upstream_is_let_go_when_the_client_leaves_mid_body() -> None:
    upstream = EchoUpstream()
    transport = httpx.ASGITransport(app=upstream, raise_app_exceptions=False)
    gateway = Gateway(gateway_config(), transport=transport)
    messages = iter(
        [
            {"type": "http.request", "body": b"hello", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "PUT",
        "path": "/upload",
        "raw_path": b"/upload",
        "query_string": b"",
        "headers": [(b"host", b"gateway.test"), (b"content-length", b"1000")],
        "client": ("203.0.113.7", 40000),
        "scheme": "http",
    }
    try:
        await gateway.handle(scope, receive, send)
    finally:
        await gateway.aclose()

    assert sent == []  # nobody to answer
    metrics = gateway.metrics.render()[0].decode()
    assert 'status="499"' in metrics
    assert 'status="500"' not in metrics


# -- forwarding headers (item 7) --------------------------------------------------------------

SPOOFED = {
    "Forwarded": "for=198.51.100.1;proto=https;host=evil.example",
    "X-Forwarded-For": "198.51.100.1",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/admin",
    "X-Real-IP": "198.51.100.2",
    "True-Client-IP": "198.51.100.3",
    "X-Client-IP": "198.51.100.4",
    "CF-Connecting-IP": "198.51.100.5",
    "Fastly-Client-IP": "198.51.100.6",
    "X-Cluster-Client-IP": "198.51.100.7",
    "X-Original-URL": "/admin",
    "X-Rewrite-URL": "/admin",
}


def forwarding(received: Received) -> dict[str, list[str]]:
    names = {name.lower() for name in SPOOFED}
    return {n: received.header(n) for n in sorted(names) if received.header(n)}


def test_forwarding_headers_from_an_untrusted_caller_are_replaced_by_the_gateway_s(
    setup: Setup,
) -> None:
    request(setup.gateway, "GET", "/forwarded/untrusted", SPOOFED)

    (received,) = setup.upstream.requests("/forwarded/untrusted")
    assert forwarding(received) == {
        "x-forwarded-for": ["127.0.0.1"],
        "x-forwarded-host": ["gateway.test"],
        "x-forwarded-proto": ["http"],
    }


def test_a_trusted_proxy_s_forwarding_headers_are_passed_on(setup: Setup) -> None:
    request(setup.gateway, "GET", "/forwarded/trusted", SPOOFED, source=TRUSTED)

    (received,) = setup.upstream.requests("/forwarded/trusted")
    expected = {name.lower(): [value] for name, value in SPOOFED.items()}
    expected["x-forwarded-for"] = [f"198.51.100.1, {TRUSTED}"]
    assert forwarding(received) == expected
