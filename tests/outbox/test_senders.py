"""The two senders (aiohttp's, httpx's) against a real HTTP server: the same answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx
import pytest

from _support import GUARD
from surefoot.outbox._senders import (
    MAX_ANSWER,
    AiohttpSender,
    HttpxSender,
    Sender,
    SendError,
    default_sender,
)

pytestmark = pytest.mark.anyio

seen: list[dict[str, str]] = []
#: Set when the server shuts down: what a hung request waits for.
stopping = threading.Event()
#: 64 KiB chunks the endless answer got written before the sender hung up, and when
#: its writer stopped.
written: list[int] = []
hung_up = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        seen.append({**{k.lower(): v for k, v in self.headers.items()}, "body": body.decode()})
        if self.path == "/redirect":
            self._answer(302, {"location": "/elsewhere"})
        elif self.path == "/busy":
            self._answer(429, {"retry-after": "7"})
        elif self.path == "/endless":
            # No length: the answer ends when the connection does, and it never does
            # unless the sender hangs up (or 64 MiB later, to bound a failing test).
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            written.clear()
            hung_up.clear()
            try:
                for _ in range(1024):
                    self.wfile.write(b"x" * MAX_ANSWER)
                    written.append(1)
            except OSError:
                hung_up.set()  # the sender hung up: what this checks
        elif self.path == "/hang":
            stopping.wait(GUARD)
            self._answer(204, {})
        else:
            self._answer(204, {})

    def _answer(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        stopping.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(params=["aiohttp", "httpx"])
async def sender(request: pytest.FixtureRequest) -> AsyncIterator[Sender]:
    made: Sender = (
        AiohttpSender(10)
        if request.param == "aiohttp"
        else HttpxSender(httpx.AsyncHTTPTransport(trust_env=False), 5.0)
    )
    try:
        yield made
    finally:
        await made.aclose()


async def test_a_post_carries_the_headers_and_body_given(server: str, sender: Sender) -> None:
    seen.clear()
    headers = {"host": "hooks.example", "webhook-id": "msg_1", "content-type": "application/json"}
    status, retry_after = await sender.post(httpx.URL(server + "/in"), headers, b'{"a":1}', None)
    assert (status, retry_after) == (204, None)
    (request,) = seen
    assert (request["host"], request["webhook-id"], request["body"]) == (
        "hooks.example",
        "msg_1",
        '{"a":1}',
    )
    assert "cookie" not in request


async def test_a_redirect_is_an_answer_not_followed(server: str, sender: Sender) -> None:
    seen.clear()
    assert await sender.post(httpx.URL(server + "/redirect"), {}, b"{}", None) == (302, None)
    assert len(seen) == 1


async def test_retry_after_is_returned(server: str, sender: Sender) -> None:
    assert await sender.post(httpx.URL(server + "/busy"), {}, b"{}", None) == (429, "7")


async def test_an_endless_answer_is_read_no_further_than_64_kib(
    server: str, sender: Sender
) -> None:
    with anyio.fail_after(GUARD):
        status, _ = await sender.post(httpx.URL(server + "/endless"), {}, b"{}", None)
    assert status == 200
    # The sender hung up: the writer failed long before its 64 MiB (only what the
    # sockets' buffers took got written after the 64 KiB read).
    assert await asyncio.to_thread(hung_up.wait, GUARD)
    assert len(written) < 1024


async def test_no_listener_is_a_send_error(sender: Sender) -> None:
    from _support import free_port

    with pytest.raises(SendError, match="Error"):
        await sender.post(httpx.URL(f"http://127.0.0.1:{free_port()}/"), {}, b"{}", None)


async def test_the_callers_deadline_bounds_a_hung_request(server: str, sender: Sender) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await sender.post(httpx.URL(server + "/hang"), {}, b"{}", None)


def test_aiohttp_is_the_default_sender_when_installed() -> None:
    assert isinstance(default_sender(10, 5.0), AiohttpSender)


def test_httpx_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "aiohttp" else real(name)
    )
    assert isinstance(default_sender(10, 5.0), HttpxSender)
