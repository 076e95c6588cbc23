"""The server side of ``bench/idempotency.py``: a minimal Starlette app, bare or protected.

The environment picks the configuration when uvicorn imports ``app``:
- ``SUREFOOT_BENCH_STORE``: empty or unset serves the bare app. Otherwise the app is
  wrapped in the middleware of ``SUREFOOT_BENCH_IMPL``:
  - ``surefoot`` (the default): ``IdempotencyMiddleware`` with the default policy and
    ``SUREFOOT_BENCH_STORE`` as its store URL (``memory://``, ``sqlite:////tmp/x.db``,
    ``redis://127.0.0.1:6390/0?prefix=run-1:``);
  - ``floor`` (``FloorIdempotency`` below: the least a correct layer can cost),
    ``fik`` (fastapi-idempotency-key's ``IdempotencyMiddleware``) or ``aih``
    (asgi-idempotency-header's ``IdempotencyHeaderMiddleware``): ``SUREFOOT_BENCH_STORE``
    is ``memory`` or a Redis URL, under whose keys start with ``SUREFOOT_BENCH_REDIS_PREFIX``.
- ``SUREFOOT_BENCH_PREFILL``: completed records written to the store before serving, so a
  run measures the steady state of a long-running server (the ``memory://?on_full=evict``
  store of ``bench/idempotency.py`` is full at 10,000 records, and evicts; so is the
  floor's) rather than an empty store. A Redis client belongs to the event loop that
  opened its connections, so a Redis store is prefilled through a second client on the
  same server, closed before uvicorn's loop starts.

Every implementation answers a replay with ``Idempotent-Replayed: true`` (fik's header is
renamed so), so that the driver checks them all alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from surefoot.idempotency import (
    Begin,
    IdempotencyMiddleware,
    IdempotencyPolicy,
    Outcome,
    Reserved,
    Step,
    StoredResponse,
    scoped_key,
)
from surefoot.storage import IdempotencyStore, store_from_url

_ids = itertools.count(1)
PREFILL_BODY = b'{"id":"ch_0","amount":1000,"status":"succeeded"}'
PREFILL_HEADERS = (
    (b"content-type", b"application/json"),
    (b"content-length", str(len(PREFILL_BODY)).encode()),
)
LEASE, TTL = 60.0, 86400.0  # surefoot's default policy's, given to the floor and peers


async def create_charge(request: Request) -> Response:
    data = await request.json()
    charge = {"id": f"ch_{next(_ids)}", "amount": data["amount"], "status": "succeeded"}
    return JSONResponse(charge, status_code=201)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


bare = Starlette(
    routes=[Route("/charges", create_charge, methods=["POST"]), Route("/health", health)]
)


# -- the floor --------------------------------------------------------------------------------

#: a stored response: status, header fields, body.
Stored = tuple[int, list[tuple[bytes, bytes]], bytes]


class Records(Protocol):
    """The floor's store: atomic reserve-or-read, then complete or release."""

    async def reserve(self, key: bytes, fingerprint: bytes) -> tuple[bytes, Stored | None] | None:
        """None if ``key`` is now reserved; else its fingerprint and response (None: in
        progress)."""

    async def complete(self, key: bytes, fingerprint: bytes, response: Stored) -> None: ...

    async def release(self, key: bytes) -> None: ...


class MemoryRecords:
    """At most ``limit`` records in a dict; full, it drops the oldest if it is settled."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        #: key -> (expiry on the monotonic clock, fingerprint, response or None)
        self.entries: dict[bytes, tuple[float, bytes, Stored | None]] = {}

    async def reserve(self, key: bytes, fingerprint: bytes) -> tuple[bytes, Stored | None] | None:
        now = time.monotonic()
        entries = self.entries
        entry = entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1], entry[2]
        if entry is None and len(entries) >= self.limit:
            oldest = next(iter(entries))
            expires, _, response = entries[oldest]
            if response is None and expires > now:
                raise RuntimeError("full: the oldest record is in progress")
            del entries[oldest]
        entries[key] = (now + LEASE, fingerprint, None)
        return None

    async def complete(self, key: bytes, fingerprint: bytes, response: Stored) -> None:
        self.entries[key] = (time.monotonic() + TTL, fingerprint, response)

    async def release(self, key: bytes) -> None:
        self.entries.pop(key, None)


class RedisRecords:
    """One key per record: SET NX GET reserves or reads in one round trip, SET XX completes.

    A record is its fingerprint (32 bytes), then the response as JSON once completed.
    """

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(url)
        self.prefix = prefix.encode() + b":floor:"

    async def reserve(self, key: bytes, fingerprint: bytes) -> tuple[bytes, Stored | None] | None:
        found: bytes | None = cast(
            "bytes | None",
            await self.client.set(
                self.prefix + key, fingerprint, nx=True, px=int(LEASE * 1000), get=True
            ),
        )
        if found is None:
            return None
        if len(found) == 32:
            return found, None
        status, headers, body = json.loads(found[32:])
        pairs = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        return found[:32], (status, pairs, body.encode("latin-1"))

    async def complete(self, key: bytes, fingerprint: bytes, response: Stored) -> None:
        status, headers, body = response
        pairs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
        record = fingerprint + json.dumps([status, pairs, body.decode("latin-1")]).encode()
        await self.client.set(self.prefix + key, record, xx=True, px=int(TTL * 1000))

    async def release(self, key: bytes) -> None:
        await self.client.delete(self.prefix + key)


async def answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FloorIdempotency:
    """The least a correct idempotency layer costs, in pure ASGI.

    A POST with an ``Idempotency-Key`` is scoped by the client's address; its fingerprint
    is a SHA-256 of the method, path and raw body. One atomic store call reserves the key
    (with a lease) or reads its record: in progress answers 409, another fingerprint 422,
    a completed one replays the status, header fields and body with
    ``Idempotent-Replayed: true``. Otherwise the app runs on the buffered body, its answer
    is passed on as it goes and stored (with a TTL) if below 500, else the key is released,
    as it is if the app raises. Not done: canonical JSON fingerprints, fencing tokens,
    validating keys, a missing key's 400, events, problem+json answers.
    """

    def __init__(self, app: ASGIApp, records: Records) -> None:
        self.app = app
        self.records = records

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = None
        if scope["type"] == "http" and scope["method"] == "POST":
            key = next((v for n, v in scope["headers"] if n == b"idempotency-key"), None)
        if key is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        client = scope.get("client")
        key = (client[0] if client else "").encode() + b"|" + key
        fingerprint = hashlib.sha256(
            scope["method"].encode() + scope["path"].encode() + b"\n" + body
        ).digest()
        found = await self.records.reserve(key, fingerprint)
        if found is None:
            await self.execute(scope, receive, send, key, fingerprint, body)
        else:
            await self.replay(send, fingerprint, *found)

    async def replay(
        self, send: Send, fingerprint: bytes, stored: bytes, response: Stored | None
    ) -> None:
        if stored != fingerprint:
            await answer(send, 422, b"key reused with another request")
        elif response is None:
            await answer(send, 409, b"in progress")
        else:
            status, headers, body = response
            replayed = [*headers, (b"idempotent-replayed", b"true")]
            await send({"type": "http.response.start", "status": status, "headers": replayed})
            await send({"type": "http.response.body", "body": body})

    async def execute(
        self, scope: Scope, receive: Receive, send: Send, key: bytes, fp: bytes, body: bytes
    ) -> None:
        first: Message | None = {"type": "http.request", "body": body, "more_body": False}

        async def buffered() -> Message:
            nonlocal first
            if first is None:
                return await receive()
            message, first = first, None
            return message

        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, buffered, capture)
        except BaseException:
            await self.records.release(key)
            raise
        status = start.get("status", 500)
        if status >= 500:
            await self.records.release(key)
        else:
            response = (status, list(start.get("headers", ())), b"".join(chunks))
            await self.records.complete(key, fp, response)


# -- the implementations and their prefill ----------------------------------------------------


class Protected:
    """One implementation around ``bare``: its app, how it writes one completed record
    (as a served request of another client would have), and how its client closes."""

    def __init__(
        self,
        app: ASGIApp,
        write: Callable[[int], Awaitable[None]],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app, self.write, self.close = app, write, close

    async def prefill(self, count: int, concurrent: bool) -> None:
        """``count`` records, 100 at a time if ``concurrent`` (a Redis client's round trips
        overlap; an in-process store's lock must not be bound to this loop by waiting)."""
        step = 100 if concurrent else 1
        for start in range(0, count, step):
            await asyncio.gather(*(self.write(i) for i in range(start, min(count, start + step))))

    async def prefill_apart(self, count: int) -> None:
        """``prefill``, then close: a throwaway client on the server the app will use."""
        try:
            await self.prefill(count, concurrent=True)
        finally:
            if self.close is not None:
                await self.close()


def surefoot(url: str) -> Protected:
    store: IdempotencyStore = store_from_url(url)
    policy = IdempotencyPolicy()
    done = Outcome(Step.COMPLETE, StoredResponse(201, PREFILL_HEADERS, PREFILL_BODY))

    async def write(i: int) -> None:
        key = scoped_key("addr:192.0.2.1", f"prefill-{i}")
        token = f"prefill-{i}"
        request = Begin(
            fingerprint=f"{i:064x}",
            token=token,
            lease=policy.lease,
            ttl=policy.ttl,
            on_lease_expiry=policy.on_lease_expiry,
        )
        now = time.time()
        if isinstance(await store.begin(key, request, now), Reserved):
            await store.finish(key, token, done, now)

    # wrk is one client sending every key: no quota of records, or its keys past the
    # 10,000th would be refused (429 idempotency_records_exceeded).
    app = IdempotencyMiddleware(
        bare, store=store, policy=IdempotencyPolicy(max_records_per_principal=None)
    )
    return Protected(app, write, store.aclose)


def floor(url: str, prefix: str) -> Protected:
    records: MemoryRecords | RedisRecords
    close = None
    if url == "memory":
        records = MemoryRecords()
    else:
        records = RedisRecords(url, prefix)
        close = records.client.aclose
    response = (201, list(PREFILL_HEADERS), PREFILL_BODY)

    async def write(i: int) -> None:
        key, fingerprint = b"192.0.2.1|prefill-%d" % i, b"%032d" % i
        if await records.reserve(key, fingerprint) is None:
            await records.complete(key, fingerprint, response)

    return Protected(FloorIdempotency(bare, records), write, close)


def fik(url: str, prefix: str) -> Protected:
    """fastapi-idempotency-key: its middleware, its MemoryBackend (defaults: no bound on
    keys) or its RedisBackend; the replay header renamed to surefoot's."""
    from fastapi_idempotency_key import IdempotencyMiddleware as Middleware
    from fastapi_idempotency_key import MemoryBackend, RedisBackend

    if url == "memory":
        backend: Any = MemoryBackend()
    else:
        backend = RedisBackend(redis_url=url, prefix=f"{prefix}:fik:")
    headers = [(n.decode(), v.decode()) for n, v in PREFILL_HEADERS]
    ttl = int(TTL)

    async def write(i: int) -> None:
        key = f"prefill-{i}"
        if (await backend.try_lock(key=key, fingerprint=f"{i:064x}", ttl=ttl))[0]:
            await backend.store_response(key, 201, headers, PREFILL_BODY, ttl)

    app = Middleware(
        bare, backend=backend, replay_header_name="Idempotent-Replayed", default_ttl=ttl
    )
    return Protected(app, write, backend.close if url != "memory" else None)


def aih(url: str, prefix: str) -> Protected:
    """asgi-idempotency-header: its middleware, its MemoryBackend or its RedisBackend."""
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends import MemoryBackend, RedisBackend

    close = None
    if url == "memory":
        backend: Any = MemoryBackend(expiry=int(TTL))
    else:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url)
        backend = RedisBackend(
            client,
            keys_key=f"{prefix}:aih:keys",
            response_key=f"{prefix}:aih:responses:",
            expiry=int(TTL),
        )
        close = client.aclose
    payload = json.loads(PREFILL_BODY)

    async def write(i: int) -> None:
        key = f"prefill-{i}"
        if not await backend.store_idempotency_key(key):
            await backend.store_response_data(key, payload, 201)

    return Protected(IdempotencyHeaderMiddleware(bare, backend=backend), write, close)


def protect(impl: str, url: str, prefix: str) -> Protected:
    if impl == "surefoot":
        return surefoot(url)
    makers = {"floor": floor, "fik": fik, "aih": aih}
    if impl not in makers:
        raise ValueError(f"SUREFOOT_BENCH_IMPL: unknown {impl!r}, expected surefoot or {[*makers]}")
    return makers[impl](url, prefix)


def with_timeout(url: str, seconds: float) -> str:
    """surefoot's store ``url`` with its ``timeout`` option set to ``seconds``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "timeout"]
    return parts._replace(query=urlencode([*query, ("timeout", str(seconds))])).geturl()


def make_app() -> ASGIApp:
    url = os.environ.get("SUREFOOT_BENCH_STORE", "")
    if not url:
        return bare
    impl = os.environ.get("SUREFOOT_BENCH_IMPL", "surefoot")
    prefix = os.environ.get("SUREFOOT_BENCH_REDIS_PREFIX", "")
    count = int(os.environ.get("SUREFOOT_BENCH_PREFILL", "0"))
    if url.startswith(("redis", "rediss")):
        # Not measured, so not bound by surefoot's store timeout (50 ms), which a loaded
        # machine may exceed while 100 writes are in flight.
        writer = with_timeout(url, 5.0) if impl == "surefoot" else url
        asyncio.run(protect(impl, writer, prefix).prefill_apart(count))
        return protect(impl, url, prefix).app
    protected = protect(impl, url, prefix)
    asyncio.run(protected.prefill(count, concurrent=False))
    return protected.app


app = make_app()
