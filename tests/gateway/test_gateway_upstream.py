"""The gateway's ways to its upstream: its own HTTP/1.1 pool (``HttpUpstream``) against scripted
raw servers, an in-process app (``AppUpstream``) and httpx (``HttpxUpstream``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from surefoot.gateway import Gateway, ProxyApp, config_from_dict
from surefoot.gateway._upstream import (
    AppUpstream,
    ForwardFailed,
    HttpUpstream,
    HttpxUpstream,
    UpstreamResponse,
)

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Server:
    """A raw server running ``handler`` per connection; ``close`` ends every connection."""

    server: asyncio.Server

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await self.handler(reader, writer)

    def close(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            writer.transport.abort()


async def start(handler: Handler) -> tuple[Server, str]:
    server = Server(handler)
    server.server = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = server.server.sockets[0].getsockname()[1]
    await asyncio.sleep(0)
    return server, f"http://127.0.0.1:{port}/base"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The head, and the body (by Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(v.split(b":")[1]) for v in lines if v.startswith(b"content-length")), 0)
    if b"transfer-encoding: chunked" in lines:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return head, body
            body += chunk[:-2]
    return head, await reader.readexactly(length)


def pool(url: str, **options: float) -> HttpUpstream:
    settings = {"connect_timeout": 1.0, "read_timeout": 1.0, "max_connections": 4.0}
    settings.update(options)
    return HttpUpstream(
        url,
        connect_timeout=settings["connect_timeout"],
        read_timeout=settings["read_timeout"],
        max_connections=int(settings["max_connections"]),
    )


async def body_of(response: UpstreamResponse) -> bytes:
    chunks, more = [], True
    while more:
        chunk, more = await response.read()
        chunks.append(chunk)
    return b"".join(chunks)


async def test_keep_alive_reuses_one_connection_and_frames_bodies() -> None:
    seen: list[tuple[bytes, bytes]] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen.append((head, body))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok")
            await writer.drain()
        writer.close()

    server, url = await start(handler)
    upstream = pool(url)

    async def streamed() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b""
        yield b"cd"

    for body in (b"", b"xyz", streamed()):
        response = await upstream.send("POST", b"/p?q=1", [(b"x-k", b"v")], body)
        assert (response.status, await body_of(response)) == (200, b"ok")
        assert (b"x-a", b"1") in response.headers
        await response.aclose()
    await upstream.aclose()
    server.close()
    assert connections == 1
    heads = [head for head, _ in seen]
    assert all(h.startswith(b"POST /base/p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:") for h in heads)
    assert [body for _, body in seen] == [b"", b"xyz", b"abcd"]
    assert b"content-length: 0" in heads[0]
    assert b"transfer-encoding: chunked" in heads[2]


async def test_head_and_204_end_at_the_head_and_chunked_answers_stream() -> None:
    answers = {
        b"HEAD /base/ ": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",  # no body follows
        b"GET /base/204 ": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"GET /base/chunked ": (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        ),
    }
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            head, _ = await read_request(reader)
            writer.write(next(a for start, a in answers.items() if head.startswith(start)))
            await writer.drain()

    server, url = await start(handler)
    upstream = pool(url)
    for method, target, expected in (
        ("HEAD", b"/", b""),
        ("GET", b"/204", b""),
        ("GET", b"/chunked", b"abcde"),
    ):
        response = await upstream.send(method, target, [], b"")
        assert await body_of(response) == expected
        await response.aclose()
    await upstream.aclose()
    server.close()
    assert connections == 2  # never reused after a HEAD; reused after the 204


async def test_a_stale_idle_connection_is_retried_for_idempotent_methods_only() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive promised; the next request on this connection finds it closing.
        await read_request(reader)
        writer.close()

    server, url = await start(handler)
    upstream = pool(url)
    for method, body in (("GET", b""), ("GET", b"")):
        response = await upstream.send(method, b"/", [], body)
        assert await body_of(response) == b"ok"  # the second: retried on a new connection
        await response.aclose()
    with pytest.raises(ForwardFailed) as lost:
        await upstream.send("POST", b"/", [], b"x")  # may have been received: not retried
    assert (lost.value.reason, lost.value.reached) == ("reset", True)
    await upstream.aclose()
    server.close()
    assert served == 2


async def test_failures_say_whether_the_request_may_have_been_processed() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def cut_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    server, url = await start(silent)
    upstream = pool(url, read_timeout=0.1)
    with pytest.raises(ForwardFailed) as timed_out:
        await upstream.send("GET", b"/", [], b"")
    assert (timed_out.value.reason, timed_out.value.reached) == ("timeout", True)
    server.close()

    server, url = await start(cut_mid_body)
    response = await pool(url).send("GET", b"/", [], b"")
    with pytest.raises(ForwardFailed) as broken:
        await body_of(response)
    assert broken.value.reason == "reset"
    server.close()

    server, url = await start(garbage)
    with pytest.raises(ForwardFailed) as bad:
        await pool(url).send("GET", b"/", [], b"")
    assert bad.value.reached
    server.close()
    await asyncio.sleep(0.05)  # let the closed connections finish closing

    closed = url.replace(url.split(":")[-1].split("/")[0], "1")  # port 1: nothing listens
    with pytest.raises(ForwardFailed) as refused:
        await pool(closed).send("POST", b"/", [], b"x")
    assert (refused.value.reason, refused.value.reached) == ("connect", False)


async def test_no_free_connection_in_time_is_not_reached() -> None:
    release, received = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        received.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    server, url = await start(slow)
    upstream = pool(url, max_connections=1, connect_timeout=0.1)
    pending = asyncio.ensure_future(upstream.send("GET", b"/", [], b""))
    await received.wait()  # the first request holds the only connection
    with pytest.raises(ForwardFailed) as waited:
        await upstream.send("GET", b"/", [], b"")
    assert (waited.value.reason, waited.value.reached) == ("connect", False)
    release.set()
    response = await pending
    await body_of(response)
    await response.aclose()
    await upstream.aclose()
    server.close()
    await asyncio.sleep(0.05)


async def test_a_large_answer_streams_with_back_pressure() -> None:
    size = 2 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        await read_request(reader)  # until the client closes

    server, url = await start(big)
    upstream = pool(url)
    response = await upstream.send("GET", b"/", [], b"")
    received, more = 0, True
    while more:
        chunk, more = await response.read()
        received += len(chunk)
        await asyncio.sleep(0)  # a slow reader: the connection pauses and resumes
    assert received == size
    await response.aclose()
    assert len(upstream.idle) == 1  # complete: pooled again
    await upstream.aclose()
    server.close()
    await asyncio.sleep(0.05)


# -- what an answer can be, and when a connection is reused (Rules 2 and 5) -----------------

#: What a misbehaving upstream sends where nothing is expected: a whole answer.
STOLEN = b"HTTP/1.1 201 Created\r\nX-Stolen: 1\r\nContent-Length: 5\r\n\r\nstole"


async def test_interim_answers_are_skipped_and_the_final_one_is_the_answer() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            )
            await writer.drain()  # the final answer comes in a later read
            writer.write(b"HTTP/1.1 201 Created\r\nX-Final: 1\r\nContent-Length: 4\r\n\r\ndone")
            await writer.drain()

    server, url = await start(handler)
    upstream = pool(url)
    for _ in range(2):
        response = await upstream.send("POST", b"/", [], b"x")
        assert response.status == 201
        assert response.headers == [(b"x-final", b"1"), (b"content-length", b"4")]
        assert await body_of(response) == b"done"
        await response.aclose()
    await upstream.aclose()
    server.close()
    assert connections == 1  # a well-framed final answer keeps the connection


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_a_switch_of_protocols_or_an_unknown_status_is_a_broken_connection(
    answer: bytes,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await read_request(reader)  # until the client closes

    server, url = await start(handler)
    upstream = pool(url, max_connections=1)
    with pytest.raises(ForwardFailed) as broken:
        await upstream.send("GET", b"/", [], b"")
    assert (broken.value.reason, broken.value.reached) == ("reset", True)
    assert not upstream.slots.locked()  # the connection's slot is free again
    await upstream.aclose()
    server.close()


async def test_a_head_answer_s_late_body_never_answers_the_next_request() -> None:
    # The HEAD answer announces STOLEN's length; the upstream sends those bytes only once
    # the next request arrives on the same connection, where they would be its answer.
    served: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            served.append(head.split(b" ")[0])
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(STOLEN))
                await writer.drain()
                await read_request(reader)
                writer.write(STOLEN)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            await writer.drain()

    server, url = await start(handler)
    upstream = pool(url)
    response = await upstream.send("HEAD", b"/", [], b"")
    assert (response.status, await body_of(response)) == (200, b"")
    await response.aclose()
    response = await upstream.send("POST", b"/", [], b"charge")
    assert (response.status, await body_of(response)) == (200, b"fresh")
    await response.aclose()
    await upstream.aclose()
    server.close()
    assert served == [b"HEAD", b"POST"]  # the HEAD's connection never got the POST


async def test_an_unsolicited_answer_is_dropped_with_its_connection() -> None:
    heads: list[tuple[int, bytes]] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        while True:
            head, _ = await read_request(reader)
            heads.append((number, head.split(b"\r\n")[0]))
            # The answer, and in the same write one nobody asked for.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + STOLEN)
            await writer.drain()

    server, url = await start(handler)
    upstream = pool(url)
    for _ in range(2):
        response = await upstream.send("GET", b"/", [], b"")
        assert (response.status, await body_of(response)) == (200, b"ok")
        assert response.headers == [(b"content-length", b"2")]
        await response.aclose()
    await upstream.aclose()
    server.close()
    assert [number for number, _ in heads] == [1, 2]  # the first connection was not reused


async def test_a_body_without_a_length_ends_when_the_upstream_closes() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the close")
        writer.close()

    server, url = await start(handler)
    upstream = pool(url)
    for _ in range(2):
        response = await upstream.send("GET", b"/", [], b"")
        assert await body_of(response) == b"until the close"
        await response.aclose()
    await upstream.aclose()
    server.close()
    assert connections == 2


async def test_an_in_process_upstream_s_interim_status_is_a_broken_connection() -> None:
    async def app(scope: dict[str, object], receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 103, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    upstream = HttpxUpstream(client, "http://upstream")
    with pytest.raises(ForwardFailed) as broken:
        await upstream.send("GET", b"/", [], b"")
    assert (broken.value.reason, broken.value.reached) == ("reset", True)
    await upstream.aclose()


#: Counts the modules a request through an in-process upstream app makes Python look for.
IMPORTS_PER_REQUEST = """
import asyncio, sys
from surefoot.gateway import Gateway, ProxyApp, config_from_dict

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})

async def one(gateway):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/x", "raw_path": b"/x",
             "query_string": b"", "root_path": "", "headers": [(b"host", b"t")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    statuses = []
    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
    await gateway(scope, receive, send)
    assert statuses == [200], statuses

async def main():
    config = {"upstream": {"app": "__main__:app"}, "admin": {"enabled": False},
              "routes": [{"match": "/*", "idempotency": False}]}
    gateway = Gateway(config_from_dict(config))
    for _ in range(3):
        await one(gateway)
    looked_for = []
    sys.addaudithook(lambda event, args: event == "import" and looked_for.append(args[0]))
    for _ in range(20):
        await one(gateway)
    await gateway.aclose()
    print(",".join(looked_for))

asyncio.run(main())
"""


def test_a_request_to_an_in_process_app_looks_for_no_module() -> None:
    # httpx's ASGITransport imports sniffio on every request: without it installed, each
    # request made Python search the path for it (a quarter of the gateway's instructions).
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_PER_REQUEST], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


# -- an in-process app (AppUpstream) --------------------------------------------------------


async def body_chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_an_in_process_app_gets_the_request_as_a_url_upstream_would() -> None:
    seen: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        messages = [await receive()]
        while messages[-1].get("more_body"):
            messages.append(await receive())
        seen.append((scope, messages))
        headers = [(b"Content-Type", b"text/plain"), (b"X-Mixed-Case", b"Kept")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"one ", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    upstream = AppUpstream(app)
    response = await upstream.send(
        "POST", b"/a%20b/c?x=1", [(b"x-forwarded-for", b"203.0.113.9")], b"{}"
    )
    assert (response.status, response.headers) == (
        201,
        [(b"content-type", b"text/plain"), (b"x-mixed-case", b"Kept")],
    )
    assert await body_of(response) == b"one two"
    scope, messages = seen[0]
    assert (scope["method"], scope["path"], scope["raw_path"], scope["query_string"]) == (
        "POST",
        "/a b/c",
        b"/a%20b/c",
        b"x=1",
    )
    assert scope["headers"] == [
        (b"host", b"upstream"),
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"content-length", b"2"),
    ]
    assert (scope["client"], scope["server"]) == (("127.0.0.1", 123), ("upstream", None))
    assert messages == [{"type": "http.request", "body": b"{}", "more_body": False}]

    seen.clear()
    response = await upstream.send("PUT", b"/s", [], body_chunks(b"ab", b"cd"))
    scope, messages = seen[0]
    assert scope["headers"] == [(b"host", b"upstream"), (b"transfer-encoding", b"chunked")]
    assert [(m["body"], m["more_body"]) for m in messages] == [
        (b"ab", True),
        (b"cd", True),
        (b"", False),
    ]

    seen.clear()
    response = await upstream.send("HEAD", b"/", [], b"")
    assert seen[0][0]["headers"] == [(b"host", b"upstream")]
    assert await body_of(response) == b""  # a HEAD answer's body is not passed on


async def test_an_in_process_app_that_breaks_its_answer_is_a_broken_connection() -> None:
    async def fails_at_once(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("the app's own bug")

    async def fails_mid_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})
        raise RuntimeError("the app's own bug")

    async def returns_unfinished(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def never_answers(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    async def interim(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 103, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    response = await AppUpstream(fails_at_once).send("GET", b"/", [], b"")
    assert (response.status, await body_of(response)) == (500, b"")  # as ASGITransport
    for app in (fails_mid_body, returns_unfinished):
        response = await AppUpstream(app).send("GET", b"/", [], b"")
        assert response.status == 200
        assert await response.read() in ((b"half", True), (b"", True))
        with pytest.raises(ForwardFailed) as cut:
            await response.read()
        assert (cut.value.reason, cut.value.reached) == ("reset", True)
    for app in (never_answers, interim):
        with pytest.raises(ForwardFailed) as broken:
            await AppUpstream(app).send("GET", b"/", [], b"")
        assert (broken.value.reason, broken.value.reached) == ("reset", True)


async def test_an_in_process_app_hears_of_a_disconnect_once_its_answer_is_done() -> None:
    heard: list[tuple[str, bool]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        done = False

        async def listen() -> None:  # as Starlette's StreamingResponse does
            message = await receive()
            heard.append((message["type"], done))

        listener = asyncio.ensure_future(listen())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)
        done = True
        await send({"type": "http.response.body", "body": b"ok"})
        await listener

    response = await AppUpstream(app).send("GET", b"/", [], b"")
    assert await body_of(response) == b"ok"
    assert heard == [("http.disconnect", True)]


async def answer_in_one_piece(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The upstream of the next test: reads the body, answers 201 in one message."""
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"id":"c1"}'})


async def test_a_retry_sent_the_instant_the_last_byte_arrives_is_a_replay() -> None:
    config = config_from_dict(
        {
            "upstream": {"app": f"{__name__}:answer_in_one_piece"},
            "stores": {"default": "memory://"},
            "admin": {"enabled": False},
        }
    )
    gateway = Gateway(config)

    async def post(send: Any) -> None:
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/charges",
            "raw_path": b"/charges",
            "query_string": b"",
            "headers": [(b"host", b"gw"), (b"idempotency-key", b"k-1")],
            "client": ("203.0.113.7", 40000),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        await gateway(scope, receive, send)

    first: list[dict[str, Any]] = []
    retry: list[dict[str, Any]] = []

    async def collect_retry(message: dict[str, Any]) -> None:
        retry.append(message)

    async def client(message: dict[str, Any]) -> None:
        first.append(message)
        if message.get("body") == b'{"id":"c1"}':  # all of Content-Length: a client has it all
            await post(collect_retry)

    await post(client)
    await gateway.aclose()
    # The record was settled before the last byte went out: the retry is a replay.
    assert retry[0]["status"] == 201
    assert (b"idempotent-replayed", b"true") in retry[0]["headers"]
    assert retry[1]["body"] == b'{"id":"c1"}'
    # The body is the end of the answer: one message.
    assert [(m.get("body"), m.get("more_body")) for m in first[1:]] == [(b'{"id":"c1"}', False)]


async def test_the_total_timeout_is_a_504_and_another_cancellation_stays_one() -> None:
    entered = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        entered.set()
        await asyncio.Event().wait()  # never answers

    def scope() -> dict[str, Any]:
        return {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    proxy = ProxyApp(upstream=AppUpstream(slow), timeout=0.05)
    await proxy(scope(), receive, send)
    assert sent[0]["status"] == 504
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the timeout's own cancellation was taken back

    sent.clear()
    entered.clear()
    cancelled = asyncio.ensure_future(ProxyApp(upstream=AppUpstream(slow))(scope(), receive, send))
    await entered.wait()  # the upstream is being waited for
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert sent == []
