"""One app, two stacks: the same backend as ASGI behind the ASGI middlewares and as WSGI
behind ``surefoot.wsgi``'s, each driven by a blocking httpx client (``ASGITransport``
through a blocking portal, ``WSGITransport``), so one test body runs against both."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import anyio
import anyio.from_thread
import httpx

from surefoot.errors import StoreUnavailable
from surefoot.idempotency import IdempotencyMiddleware as AsgiIdempotency
from surefoot.ratelimit import RateLimitMiddleware as AsgiRateLimit
from surefoot.storage import MemoryStore, SyncMemoryStore
from surefoot.testing import FlakyStore, ManualClock
from surefoot.wsgi import IdempotencyMiddleware, RateLimitMiddleware

Kind = Literal["asgi", "wsgi"]
Chunks = bytes | Iterator[bytes]


class Backend:
    """A tiny handler whose behaviour each test sets, counting executions (thread-safe)."""

    def __init__(self) -> None:
        self.executions = 0
        self.status = 201
        self.raise_exc = False
        self.stream: list[bytes] | None = None
        self.raise_mid_stream = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()

    def handle(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, list[tuple[str, str]], Chunks]:
        with self._lock:
            self.executions += 1
            execution = self.executions
            self.bodies.append(body)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        if self.raise_exc:
            raise RuntimeError("database exploded: secret-connection-string")
        headers = [("Content-Type", "application/json"), ("X-Custom", "kept")]
        if self.stream is not None:
            chunks = list(self.stream)

            def stream() -> Iterator[bytes]:
                for i, chunk in enumerate(chunks):
                    if self.raise_mid_stream and i == len(chunks) - 1:
                        raise RuntimeError("stream broke: secret-connection-string")
                    yield chunk

            return self.status, [("Content-Type", "text/plain")], stream()
        payload = b'{"execution":%d,"method":"%s","path":"%s","echo":"%s"}' % (
            execution,
            method.encode(),
            path.encode(),
            body.hex().encode(),
        )
        headers.append(("Content-Length", str(len(payload))))
        return self.status, headers, payload

    # -- the two apps ------------------------------------------------------------------------

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        body = stream.read(int(length)) if length else stream.read()
        status, headers, chunks = self.handle(environ["REQUEST_METHOD"], environ["PATH_INFO"], body)
        start_response(f"{status} Whatever", headers)
        return [chunks] if isinstance(chunks, bytes) else chunks

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # pragma: no cover - httpx sends none
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, headers, chunks = await anyio.to_thread.run_sync(
            self.handle, scope["method"], scope["path"], body
        )
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        if isinstance(chunks, bytes):
            await send({"type": "http.response.body", "body": chunks})
            return
        end = object()
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, end)
            if chunk is end:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class SyncFlakyStore(SyncMemoryStore):
    """A ``SyncMemoryStore`` that can be taken down (every call raises ``StoreUnavailable``)."""

    def __init__(self) -> None:
        super().__init__()
        self.is_down = False

    def _check(self) -> None:
        if self.is_down:
            raise StoreUnavailable("connect to secret-host refused")

    def down(self) -> None:
        self.is_down = True

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().begin(*args, **kwargs)

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().finish(*args, **kwargs)

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().acquire(*args, **kwargs)

    def release(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return super().release(*args, **kwargs)


class _PortalClient:
    """``httpx.AsyncClient`` over ``ASGITransport``, called from blocking code (any thread)."""

    def __init__(self, app: Any, portal: anyio.from_thread.BlockingPortal) -> None:
        self.portal = portal
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        content = kwargs.get("content")
        if content is not None and not isinstance(content, bytes):
            kwargs["content"] = _aiter(list(content))  # chunked, as the sync client sends it
        call = functools.partial(self.client.request, method, url, **kwargs)
        return self.portal.call(call)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)


class Stack:
    """Builds the backend behind one stack's middlewares; ``store`` is the shared store."""

    def __init__(self, kind: Kind, portal: anyio.from_thread.BlockingPortal) -> None:
        self.kind = kind
        self.portal = portal
        self.clock = ManualClock()
        self.store: Any = None
        self.events: list[Any] = []  # every event both layers emitted, in order

    def make_store(self, *, flaky: bool = False) -> Any:
        if self.kind == "asgi":
            return FlakyStore(MemoryStore()) if flaky else MemoryStore()
        return SyncFlakyStore() if flaky else SyncMemoryStore()

    def take_down(self) -> None:
        self.store.down()

    def client(
        self,
        backend: Backend,
        *,
        idempotency: dict[str, Any] | None = None,
        ratelimit: dict[str, Any] | None = None,
        flaky: bool = False,
    ) -> Any:
        self.store = store = self.make_store(flaky=flaky)
        clock = self.clock
        common = {"clock": clock, "hooks": [self.events.append]}
        if self.kind == "asgi":
            sleep: Callable[[float], Any] = clock.sleep
            app: Any = backend.asgi
            if idempotency is not None:
                app = AsgiIdempotency(app, store=store, sleep=sleep, **common, **idempotency)
            if ratelimit is not None:
                app = AsgiRateLimit(app, store=store, sleep=sleep, **common, **ratelimit)
            return _PortalClient(app, self.portal)
        sleep = clock.advance
        wsgi: Any = backend.wsgi
        if idempotency is not None:
            wsgi = IdempotencyMiddleware(wsgi, store=store, sleep=sleep, **common, **idempotency)
        if ratelimit is not None:
            wsgi = RateLimitMiddleware(wsgi, store=store, sleep=sleep, **common, **ratelimit)
        return httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://testserver")


async def _aiter(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@contextlib.contextmanager
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as p:
        yield p
