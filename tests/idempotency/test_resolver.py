"""``IdempotencyMiddleware(resolver=...)`` and the ``NOT_EXECUTED`` flag, on a raw ASGI app."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from surefoot._asgi import IDEMPOTENCY_POLICY, NOT_EXECUTED, Receive, Scope, Send
from surefoot.idempotency import (
    IdempotencyMiddleware,
    IdempotencyPolicy,
    OutcomeResolver,
    Resolution,
    State,
    StoredResponse,
    scoped_key,
)
from surefoot.storage import MemoryStore
from surefoot.testing import CapturedEvents

pytestmark = pytest.mark.anyio

PRINCIPAL = "addr:127.0.0.1"


class App:
    """Answers ``status``; marks the request not executed when ``reached`` is False."""

    def __init__(self) -> None:
        self.calls = 0
        self.status = 201
        self.reached = True
        self.policies: list[Any] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.policies.append(scope.get(IDEMPOTENCY_POLICY))
        await receive()
        if not self.reached:
            scope[NOT_EXECUTED] = True
        body = f'{{"call": {self.calls}}}'.encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Resolver:
    """Answers ``resolution`` and records what it was asked."""

    def __init__(self, store: MemoryStore, resolution: Resolution = None) -> None:
        self.store = store
        self.resolution = resolution
        self.remembered: list[tuple[str, bytes]] = []
        self.asked: list[str] = []
        self.fail = False

    async def remember(self, scope: Scope, store_key: str, body: bytes) -> None:
        if self.fail:
            raise RuntimeError("lookup store down")
        self.remembered.append((store_key, body))

    async def resolve(self, scope: Scope, store_key: str, body: bytes) -> Resolution:
        self.asked.append(store_key)
        if self.fail:
            raise RuntimeError("upstream down")
        if isinstance(self.resolution, StoredResponse):
            await self.store.resolve(store_key, self.resolution, time.time())
        elif self.resolution == "release":
            await self.store.forget(store_key, time.time())
        return self.resolution


def client(app: App, store: MemoryStore, resolver: Resolver | None, **policy: Any) -> Any:
    events = CapturedEvents()
    middleware = IdempotencyMiddleware(
        app,
        store=store,
        policy=IdempotencyPolicy(on_server_error="unknown", **policy),
        hooks=[events],
        resolver=resolver,
    )
    transport = httpx.ASGITransport(app=middleware, client=("127.0.0.1", 5000))
    return httpx.AsyncClient(transport=transport, base_url="http://test"), events


async def post(http: httpx.AsyncClient, key: str = "k1") -> httpx.Response:
    return await http.post("/charges", json={"amount": 5}, headers={"Idempotency-Key": key})


async def test_a_resolver_is_a_protocol() -> None:
    assert isinstance(Resolver(MemoryStore()), OutcomeResolver)


async def test_a_server_error_is_remembered_and_a_found_result_replayed() -> None:
    store, app = MemoryStore(), App()
    found = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"found": 1}')
    resolver = Resolver(store, found)
    http, _ = client(app, store, resolver)
    app.status = 500
    assert (await post(http)).status_code == 500
    key = scoped_key(PRINCIPAL, "k1", None)
    assert resolver.remembered == [(key, b'{"amount":5}')]
    assert (await store.get(key, time.time())).state is State.UNKNOWN  # type: ignore[union-attr]

    retry = await post(http)
    assert (retry.status_code, retry.content) == (201, b'{"found": 1}')
    assert retry.headers["idempotent-replayed"] == "true"
    assert app.calls == 1  # never executed twice
    again = await post(http)  # now a plain replay: the resolver is not asked again
    assert again.content == b'{"found": 1}'
    assert resolver.asked == [key]


async def test_a_release_lets_the_retry_execute() -> None:
    store, app = MemoryStore(), App()
    http, _ = client(app, store, Resolver(store, "release"))
    app.status = 502
    await post(http)
    app.status = 201
    retry = await post(http)
    assert (retry.status_code, retry.json()) == (201, {"call": 2})
    assert "idempotent-replayed" not in retry.headers


@pytest.mark.parametrize("fail", [False, True])
async def test_still_unknown_answers_409(fail: bool) -> None:
    store, app = MemoryStore(), App()
    resolver = Resolver(store, None)
    http, events = client(app, store, resolver)
    app.status = 500
    resolver.fail = fail  # remember fails too: the key is unknown all the same
    await post(http)
    retry = await post(http)
    assert retry.status_code == 409
    assert retry.json()["code"] == "idempotency_outcome_unknown"
    assert app.calls == 1
    phases = [e.fields()["phase"] for e in events.events if e.name == "idempotency.store_failed"]
    assert phases == (["remember", "resolve"] if fail else [])


async def test_not_executed_releases_whatever_the_status() -> None:
    store, app = MemoryStore(), App()
    http, _ = client(app, store, None)
    app.status, app.reached = 502, False
    assert (await post(http)).status_code == 502
    assert await store.get(scoped_key(PRINCIPAL, "k1", None), time.time()) is None
    app.status, app.reached = 201, True
    assert (await post(http)).json() == {"call": 2}
    # The inner app learnt the route's policy, to tell the client whether a retry is safe.
    assert all(p is not None and p.on_server_error == "unknown" for p in app.policies)
