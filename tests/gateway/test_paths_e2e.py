"""``surefoot serve`` given every spelling of a limited, keyed route, as exact bytes on a raw
socket (httpx and curl normalise some paths before sending them): each is limited and
needs its key like the route, or is refused with a 400 problem, and the upstream (a
recording server in this process) receives only the canonical path.

``exchange``, ``raw_request`` and ``RawResponse`` are imported by other tests (the bypass
matrix).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _gateway_helpers import EchoUpstream, gateway_config, running, surefoot_serve, toml_config

from test_paths import SPELLINGS

# -- a raw HTTP/1.1 client ------------------------------------------------------------------


@dataclass
class RawResponse:
    """One response as it came off the wire."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    @property
    def code(self) -> str | None:
        """The problem's ``code``, or None when the response is not a problem."""
        if self.header("content-type") != "application/problem+json":
            return None
        code: str = json.loads(self.body)["code"]
        return code


def exchange(address: tuple[str, int], data: bytes, *, timeout: float = 10) -> bytes:
    """Send ``data`` exactly as it is on a new connection; everything the server sends
    back until it closes the connection."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_response(data: bytes, *, head: bool = False) -> RawResponse:
    """The first response in ``data`` (the body read by its framing; none after a HEAD)."""
    top, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    response = RawResponse(int(status_line.split(" ")[1]), headers, b"")
    if head:
        return response
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2 :]
        response.body = body
    else:
        response.body = rest[: int(response.header("content-length") or len(rest))]
    return response


def raw_request(
    address: tuple[str, int],
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> RawResponse:
    """One request whose request-target is exactly ``target``, on its own connection."""
    data = b"%s %s HTTP/1.1\r\nHost: gateway.test\r\n" % (method.encode(), target)
    for name, value in headers:
        data += name + b": " + value + b"\r\n"
    if body or method in ("POST", "PUT", "PATCH"):
        data += b"Content-Length: %d\r\n" % len(body)
    data += b"Connection: close\r\n\r\n" + body
    return parse_response(exchange(address, data), head=method == "HEAD")


# -- a recording upstream ------------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


class Upstream(ThreadingHTTPServer):
    """Answers 200 to everything, recording each request-target exactly as received."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def probed(self, probe: str) -> list[Received]:
        """The requests that carried ``X-Probe: probe``."""
        with self.lock:
            return [r for r in self.received if r.header("x-probe") == probe]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        received = Received(
            self.command, self.path, [(k.lower(), v) for k, v in self.headers.items()]
        )
        with self.server.lock:
            self.server.received.append(received)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = answer

    def log_message(self, format: str, *args: object) -> None:
        pass


# -- the gateway -----------------------------------------------------------------------------

CLIENTS = 100
POLICIES = """
[idempotency]
required = false

[[rate_limit.policies]]
name = "charges"
limits = ["1/minute"]
routes = ["POST /charges"]

[[rate_limit.policies]]
name = "lists"
limits = ["1/minute"]
routes = ["GET /charges"]

[[routes]]
match = "POST /charges"
[routes.idempotency]
required = true
"""


@dataclass
class Running:
    upstream: Upstream
    address: tuple[str, int]
    clients: Iterator[int]

    def client(self) -> bytes:
        """A fresh API key (each is a listed client, so each has its own counters)."""
        return b"key-%d" % next(self.clients)

    def send(
        self,
        method: str,
        target: bytes,
        probe: str,
        api_key: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> RawResponse:
        sent = [(b"X-Probe", probe.encode()), (b"X-API-Key", api_key), *headers]
        return raw_request(self.address, method, target, sent, b"{}" if method == "POST" else b"")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp: Path = tmp_path_factory.mktemp("paths")
    upstream = Upstream()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    clients = "".join(
        f'\n[[clients]]\nname = "c{i}"\napi_key = "key-{i}"\n' for i in range(CLIENTS)
    )
    process = surefoot_serve(tmp, toml_config(upstream.url, "memory://", POLICIES + clients))
    try:
        process.wait_ready()
        address = ("127.0.0.1", int(process.url.rpartition(":")[2]))
        yield Running(upstream, address, iter(range(CLIENTS)))
    finally:
        process.server.stop()
        upstream.shutdown()
        upstream.server_close()
        thread.join(5)


def refused(response: RawResponse) -> bool:
    return (response.status, response.code) == (400, "invalid_path")


@pytest.mark.slow
@pytest.mark.parametrize(("raw", "forwarded"), SPELLINGS)
def test_every_spelling_is_limited_like_the_route_or_refused(
    gateway: Running, raw: bytes, forwarded: bytes | None
) -> None:
    probe = f"limit-{raw!r}"
    # The route's one request is spent: the spelling gets no other.
    spent = gateway.client()
    first = gateway.send("POST", b"/charges", probe, spent, [(b"Idempotency-Key", b"k-1")])
    then = gateway.send("POST", raw, probe, spent, [(b"Idempotency-Key", b"k-2")])
    # The spelling spends the route's one request.
    spender = gateway.client()
    before = gateway.send("POST", raw, probe, spender, [(b"Idempotency-Key", b"k-3")])
    after = gateway.send("POST", b"/charges", probe, spender, [(b"Idempotency-Key", b"k-4")])

    assert first.status == 200
    received = [r.target.encode() for r in gateway.upstream.probed(probe)]
    if forwarded is None:
        assert refused(then), then
        assert refused(before), before
        assert after.status == 200
        assert received == [b"/charges", b"/charges"]
    else:
        assert (then.status, then.code) == (429, "rate_limit_exceeded")
        assert before.status == 200
        assert (after.status, after.code) == (429, "rate_limit_exceeded")
        assert received == [b"/charges", forwarded]


@pytest.mark.slow
@pytest.mark.parametrize(("raw", "forwarded"), SPELLINGS)
def test_every_spelling_needs_the_routes_key_or_is_refused(
    gateway: Running, raw: bytes, forwarded: bytes | None
) -> None:
    probe = f"key-{raw!r}"
    keyless = gateway.send("POST", raw, probe, gateway.client())

    assert keyless.status == 400
    assert keyless.code == ("invalid_path" if forwarded is None else "idempotency_key_missing")
    assert gateway.upstream.probed(probe) == []


@pytest.mark.slow
def test_head_spends_a_get_routes_limit(gateway: Running) -> None:
    client = gateway.client()
    head = gateway.send("HEAD", b"/charges/", "head", client)
    get = gateway.send("GET", b"/Charges", "head", client)

    assert head.status == 200
    assert (get.status, get.code) == (429, "rate_limit_exceeded")
    assert [(r.method, r.target) for r in gateway.upstream.probed("head")] == [
        ("HEAD", "/charges/")
    ]


@pytest.mark.slow
def test_a_post_overridden_to_get_needs_its_key_and_the_upstream_never_sees_the_header(
    gateway: Running,
) -> None:
    override = (b"X-HTTP-Method-Override", b"GET")
    keyless = gateway.send("POST", b"/charges", "override", gateway.client(), [override])
    keyed = gateway.send(
        "POST", b"/charges", "override", gateway.client(), [override, (b"Idempotency-Key", b"k")]
    )

    assert (keyless.status, keyless.code) == (400, "idempotency_key_missing")
    assert keyed.status == 200
    [received] = gateway.upstream.probed("override")
    assert received.method == "POST"
    assert received.header("x-http-method-override") is None


@pytest.mark.slow
def test_the_upstream_receives_the_canonical_path_and_the_query_as_sent(
    gateway: Running,
) -> None:
    answer = gateway.send("GET", b"//a/./b/../%63%7e/x%7b?q=%2F;x", "canonical", gateway.client())

    assert answer.status == 200
    assert [r.target for r in gateway.upstream.probed("canonical")] == ["/a/c~/x%7B?q=%2F;x"]


@pytest.mark.anyio
@pytest.mark.parametrize("allow", [False, True])
async def test_server_allow_method_override_keeps_the_header_and_matches_the_named_method(
    allow: bool,
) -> None:
    upstream = EchoUpstream()
    lists = {"name": "lists", "limits": ["1/minute"], "routes": ["GET /charges"]}
    config = gateway_config(
        server={"allow_method_override": allow}, rate_limit={"policies": [lists]}
    )
    async with running(config, upstream=upstream) as gateway:
        override = {"X-HTTP-Method-Override": "GET"}
        posted = await gateway.client.post("/charges", json={}, headers=override)
        got = await gateway.client.get("/charges")

    if allow:  # a GET to the upstream's framework: no key needed, the GET route's limit spent
        assert posted.status_code == 200
        assert upstream.seen[0].header("x-http-method-override") == ["GET"]
        assert got.status_code == 429
    else:  # a POST: it needs its key, and the GET route's limit is left
        assert posted.status_code == 400
        assert posted.json()["code"] == "idempotency_key_missing"
        assert got.status_code == 200
        assert upstream.seen[0].header("x-http-method-override") == []
