"""IdempotencyMiddleware as a client sees it, under Starlette and FastAPI."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from _support import store_error
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.idempotency import (
    IdempotencyMiddleware,
    IdempotencyPolicy,
    KeyMissing,
    KeyReserved,
    LeaseExpired,
    OutcomeUnknown,
    ResponseReplayed,
    StaleFinish,
    State,
    StoreFailed,
)
from surefoot.storage import MemoryStore
from surefoot.testing import FlakyStore, ManualClock, aassert_idempotent

pytestmark = pytest.mark.anyio


class Backend:
    """A tiny app whose behaviour each test sets, counting executions."""

    def __init__(self) -> None:
        self.executions = 0
        self.status = 201
        self.raise_exc = False
        self.gate: asyncio.Event | None = None
        self.body_size = 0
        self.entered = asyncio.Event()

    async def charge(self, request: Request) -> Response:
        self.executions += 1
        self.entered.set()
        payload = await request.body()
        if self.gate is not None:
            await self.gate.wait()
        if self.raise_exc:
            raise RuntimeError("database exploded: secret-connection-string")
        if self.body_size:
            return Response(b"x" * self.body_size, status_code=self.status)
        try:
            data = json.loads(payload or b"{}")
        except ValueError:
            data = payload.decode()
        return JSONResponse(
            {"execution": self.executions, "echo": data},
            status_code=self.status,
            headers={"x-custom": "kept", "set-cookie": "a=1"},
        )

    def starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/charges", self.charge, methods=["POST", "PUT", "PATCH"]),
                Route("/charges/{cid}/refund", self.charge, methods=["POST"]),
                Route("/health", self.charge, methods=["POST"]),
            ]
        )


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def make_client(
    backend: Backend, clock: ManualClock, events: list[Event]
) -> Callable[..., httpx.AsyncClient]:
    def make(app: Any = None, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("store", MemoryStore())
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("hooks", [events.append])
        wrapped = IdempotencyMiddleware(app or backend.starlette(), **kwargs)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(wrapped, raise_app_exceptions=False),
            base_url="http://test",
        )

    return make


@pytest.fixture
async def client(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


def key(k: str = "key-1", **headers: str) -> dict[str, str]:
    return {"Idempotency-Key": k, **headers}


def problem(response: httpx.Response, code: str, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["code"] == code
    assert doc["status"] == status
    assert doc["type"] == "https://surefoot.dev/problems/" + code.replace("_", "-")
    assert doc["request_id"] == response.headers["x-request-id"]
    return doc


# -- contract 4: replay ---------------------------------------------------------------------


async def test_retries_execute_once_and_replay_byte_for_byte(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    responses = await aassert_idempotent(client, "POST", "/charges", json={"amount": 500}, times=3)
    assert backend.executions == 1
    assert responses[0].headers.get_list("set-cookie") == ["a=1"]
    assert [r.headers.get("idempotent-replayed") for r in responses] == [None, "true", "true"]
    assert responses[0].content == responses[2].content


async def test_fastapi_app_is_protected(make_client: Callable[..., httpx.AsyncClient]) -> None:
    api = FastAPI()
    calls: list[int] = []

    @api.post("/orders", status_code=201)
    async def create(order: dict[str, int]) -> dict[str, int]:
        calls.append(1)
        return {"order": len(calls), **order}

    async with make_client(api) as c:
        await aassert_idempotent(c, "POST", "/orders", json={"qty": 2})
        r = await c.post("/orders", json={"qty": 3}, headers=key("other"))
        assert r.json() == {"order": 2, "qty": 3}
    assert len(calls) == 2


async def test_json_bodies_compare_semantically(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    first = await client.post("/charges", content=b'{"a": 1, "b": [1.0, 2]}', headers=key())
    again = await client.post("/charges", content=b'{"b":[1,2.0],"a":1}', headers=key())
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert backend.executions == 1


async def test_ignored_fields_do_not_change_the_fingerprint(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    policy = IdempotencyPolicy(ignore_fields=("sent_at", "meta.trace"))
    async with make_client(policy=policy) as c:
        await c.post(
            "/charges", json={"amount": 1, "sent_at": 1, "meta": {"trace": "a"}}, headers=key()
        )
        r = await c.post(
            "/charges", json={"amount": 1, "sent_at": 2, "meta": {"trace": "b"}}, headers=key()
        )
        assert r.headers["idempotent-replayed"] == "true"
        r = await c.post("/charges", json={"amount": 2, "sent_at": 2}, headers=key())
        problem(r, "idempotency_key_reused", 422)
    assert backend.executions == 1


# -- contract 3: mismatch, missing and malformed keys -------------------------------------------


async def test_same_key_different_body_path_or_query_is_422(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    await client.post("/charges", json={"amount": 500}, headers=key())
    for method, url, body in [
        ("POST", "/charges", {"amount": 501}),
        ("POST", "/charges?x=1", {"amount": 500}),
        ("PATCH", "/charges", {"amount": 500}),
    ]:
        r = await client.request(method, url, json=body, headers=key())
        doc = problem(r, "idempotency_key_reused", 422)
        assert "Nothing was executed" in doc["detail"]
    assert backend.executions == 1


async def test_non_json_bodies_compare_by_bytes(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    await client.post("/charges", content=b"a=1&b=2", headers=key(**form))
    r = await client.post("/charges", content=b"b=2&a=1", headers=key(**form))
    problem(r, "idempotency_key_reused", 422)


async def test_missing_key_is_400_and_names_the_header(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    doc = problem(await client.post("/charges", json={}), "idempotency_key_missing", 400)
    assert "POST /charges requires an Idempotency-Key header" in doc["detail"]
    assert backend.executions == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "it is empty"),
        ('""', "it is empty"),
        ("k" * 256, "256 characters long"),
        ("has space", "whitespace or a non-printable"),
        ('"unterminated', "not terminated"),
        ('"bad\\escape"', "invalid escape"),
        ('"in"side"', "unescaped quote"),
        ('"tab\there"', "non-printable"),
    ],
)
async def test_malformed_keys_are_400(
    client: httpx.AsyncClient, backend: Backend, value: str, reason: str
) -> None:
    doc = problem(
        await client.post("/charges", json={}, headers=key(value)), "idempotency_key_invalid", 400
    )
    assert reason in doc["detail"]
    assert backend.executions == 0


async def test_quoted_and_raw_forms_are_the_same_key(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    await client.post("/charges", json={}, headers=key("abc-1"))
    r = await client.post("/charges", json={}, headers=key('"abc-1"'))
    assert r.headers["idempotent-replayed"] == "true"
    r = await client.post("/charges", json={}, headers=key('"with \\"quote\\" and space"'))
    assert r.status_code == 201
    assert backend.executions == 2


async def test_key_at_the_length_limit_is_accepted(client: httpx.AsyncClient) -> None:
    assert (await client.post("/charges", json={}, headers=key("k" * 255))).status_code == 201


async def test_repeated_header_with_different_values_is_400(client: httpx.AsyncClient) -> None:
    headers = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    r = await client.post("/charges", json={}, headers=headers)
    problem(r, "idempotency_key_invalid", 400)


async def test_body_field_fallback(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    async with make_client(policy=IdempotencyPolicy(body_field="request_id")) as c:
        r1 = await c.post("/charges", json={"request_id": "r-1", "amount": 5})
        r2 = await c.post("/charges", json={"request_id": "r-1", "amount": 5})
        assert r2.headers["idempotent-replayed"] == "true"
        assert r2.content == r1.content
        r3 = await c.post("/charges", json={"request_id": "r-1", "amount": 5}, headers=key("r-1"))
        assert r3.headers["idempotent-replayed"] == "true"
        r4 = await c.post("/charges", json={"request_id": "r-2", "amount": 5}, headers=key("r-1"))
        doc = problem(r4, "idempotency_key_ambiguous", 400)
        assert "body field 'request_id'" in doc["detail"]
        r5 = await c.post("/charges", json={"request_id": "", "amount": 5})
        problem(r5, "idempotency_key_invalid", 400)
    assert backend.executions == 1


async def test_rollout_mode_lets_keyless_requests_through_and_counts_them(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend, events: list[Event]
) -> None:
    async with make_client(policy=IdempotencyPolicy(rollout=True)) as c:
        assert (await c.post("/charges", json={})).status_code == 201
        assert (await c.post("/charges", json={})).status_code == 201
    assert backend.executions == 2
    missing = [e for e in events if isinstance(e, KeyMissing)]
    assert len(missing) == 2
    assert not missing[0].rejected


async def test_optional_key_passes_keyless_requests_silently(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend, events: list[Event]
) -> None:
    async with make_client(policy=IdempotencyPolicy(required=False)) as c:
        assert (await c.post("/charges", json={})).status_code == 201
        await aassert_idempotent(c, "POST", "/charges", json={})
    assert not [e for e in events if isinstance(e, KeyMissing)]


# -- contract 1: principals ---------------------------------------------------------------------


async def test_principals_never_share_keys_or_responses(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    alice = await client.post(
        "/charges", json={"who": "a"}, headers=key("same", authorization="Bearer alice")
    )
    bob = await client.post(
        "/charges", json={"who": "a"}, headers=key("same", authorization="Bearer bob")
    )
    by_api_key = await client.post(
        "/charges", json={"who": "a"}, headers=key("same", **{"x-api-key": "k"})
    )
    assert backend.executions == 3
    assert "idempotent-replayed" not in bob.headers
    assert alice.json()["execution"] != bob.json()["execution"]
    assert by_api_key.json()["execution"] == 3
    again = await client.post(
        "/charges", json={"who": "a"}, headers=key("same", authorization="Bearer bob")
    )
    assert again.content == bob.content


async def test_credentials_are_hashed_before_the_store(
    make_client: Callable[..., httpx.AsyncClient], events: list[Event], clock: ManualClock
) -> None:
    store = MemoryStore()
    async with make_client(store=store) as c:
        await c.post("/charges", json={}, headers=key(authorization="Bearer sk_live_secret"))
    reserved = next(e for e in events if isinstance(e, KeyReserved))
    assert reserved.principal.startswith("cred:")
    assert "sk_live_secret" not in repr(events)
    assert "sk_live_secret" not in repr(await store.records(clock.now()))


async def test_route_scope_lets_one_key_serve_two_routes(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    async with make_client(policy=IdempotencyPolicy(scope="principal_route")) as c:
        await c.post("/charges", json={}, headers=key())
        r = await c.post("/charges/ch_1/refund", json={}, headers=key())
        assert r.status_code == 201
        assert "idempotent-replayed" not in r.headers
    assert backend.executions == 2


async def test_custom_principal_callable(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    def tenant(scope: Any) -> str:
        return "tenant:" + dict(scope["headers"]).get(b"x-tenant", b"none").decode()

    async with make_client(principal=tenant) as c:
        await c.post("/charges", json={}, headers=key(**{"x-tenant": "t1", "authorization": "a"}))
        r = await c.post(
            "/charges", json={}, headers=key(**{"x-tenant": "t1", "authorization": "b"})
        )
        assert r.headers["idempotent-replayed"] == "true"
    assert backend.executions == 1


# -- contract 2: concurrency --------------------------------------------------------------------


async def test_concurrent_duplicate_gets_409_with_retry_after(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    backend.gate = asyncio.Event()
    first = asyncio.create_task(client.post("/charges", json={}, headers=key()))
    await backend.entered.wait()
    dup = await client.post("/charges", json={}, headers=key())
    doc = problem(dup, "idempotency_request_in_progress", 409)
    assert dup.headers["retry-after"] == "1"
    assert doc["retry_after"] == 1
    backend.gate.set()
    assert (await first).status_code == 201
    assert (await client.post("/charges", json={}, headers=key())).headers[
        "idempotent-replayed"
    ] == "true"
    assert backend.executions == 1


async def test_waiting_duplicate_replays_once_the_original_finishes(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend, clock: ManualClock
) -> None:
    backend.gate = asyncio.Event()
    polls = 0

    async def sleep(seconds: float) -> None:
        nonlocal polls
        polls += 1
        clock.advance(seconds)
        if polls == 3:
            assert backend.gate is not None
            backend.gate.set()
        await asyncio.sleep(0.001)

    async with make_client(policy=IdempotencyPolicy(wait=5), sleep=sleep) as c:
        first = asyncio.create_task(c.post("/charges", json={}, headers=key()))
        await backend.entered.wait()
        dup = await c.post("/charges", json={}, headers=key())
        original = await first
    assert dup.headers["idempotent-replayed"] == "true"
    assert dup.content == original.content
    assert backend.executions == 1


async def test_waiting_duplicate_gives_up_after_the_wait(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend, clock: ManualClock
) -> None:
    backend.gate = asyncio.Event()
    async with make_client(policy=IdempotencyPolicy(wait=2)) as c:
        first = asyncio.create_task(c.post("/charges", json={}, headers=key()))
        await backend.entered.wait()
        start = clock.now()
        dup = await c.post("/charges", json={}, headers=key())
        problem(dup, "idempotency_request_in_progress", 409)
        assert clock.now() - start == pytest.approx(2)
        backend.gate.set()
        await first


# -- contract 5: which outcomes are stored -------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 425, 429, 503])
async def test_no_work_statuses_release_the_key(
    client: httpx.AsyncClient, backend: Backend, status: int
) -> None:
    backend.status = status
    assert (await client.post("/charges", json={}, headers=key())).status_code == status
    backend.status = 201
    r = await client.post("/charges", json={}, headers=key())
    assert r.status_code == 201
    assert "idempotent-replayed" not in r.headers
    assert backend.executions == 2


@pytest.mark.parametrize("status", [200, 201, 204, 302, 400, 404, 422])
async def test_final_statuses_are_stored(
    client: httpx.AsyncClient, backend: Backend, status: int
) -> None:
    backend.status = status
    await client.post("/charges", json={}, headers=key())
    r = await client.post("/charges", json={}, headers=key())
    assert r.status_code == status
    assert r.headers["idempotent-replayed"] == "true"
    assert backend.executions == 1


@pytest.mark.parametrize("failure", ["status", "exception"])
async def test_server_error_release_lets_a_retry_execute(
    client: httpx.AsyncClient, backend: Backend, failure: str
) -> None:
    backend.status, backend.raise_exc = 500, failure == "exception"
    r = await client.post("/charges", json={}, headers=key())
    assert r.status_code == 500
    assert "secret-connection-string" not in r.text
    backend.status, backend.raise_exc = 201, False
    assert (await client.post("/charges", json={}, headers=key())).status_code == 201
    assert backend.executions == 2


@pytest.mark.parametrize("failure", ["status", "exception"])
async def test_server_error_store_replays_the_failure(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend, failure: str
) -> None:
    backend.status, backend.raise_exc = 500, failure == "exception"
    async with make_client(policy=IdempotencyPolicy(on_server_error="store")) as c:
        first = await c.post("/charges", json={}, headers=key())
        backend.status, backend.raise_exc = 201, False
        r = await c.post("/charges", json={}, headers=key())
    assert r.status_code == 500
    assert r.headers["idempotent-replayed"] == "true"
    assert r.content == first.content  # Starlette's own 500 page, as the client first saw it
    assert "secret" not in r.text
    assert backend.executions == 1


async def test_server_error_store_without_any_response_stores_a_problem(clock: ManualClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("no response at all")

    store = MemoryStore()
    mw = IdempotencyMiddleware(
        app, store=store, clock=clock, hooks=[], policy=IdempotencyPolicy(on_server_error="store")
    )
    with pytest.raises(RuntimeError):
        await raw_call(mw, [{"type": "http.request", "body": b"{}"}])
    sent = await raw_call(mw, [{"type": "http.request", "body": b"{}"}])
    assert sent[0]["status"] == 500
    assert (b"idempotent-replayed", b"true") in sent[0]["headers"]
    doc = json.loads(sent[1]["body"])
    assert doc["code"] == "internal_error"
    assert "no response at all" not in sent[1]["body"].decode()


@pytest.mark.parametrize("failure", ["status", "exception"])
async def test_server_error_unknown_holds_the_key_until_resolved(
    make_client: Callable[..., httpx.AsyncClient],
    backend: Backend,
    events: list[Event],
    clock: ManualClock,
    failure: str,
) -> None:
    store = MemoryStore()
    backend.status, backend.raise_exc = 502, failure == "exception"
    async with make_client(store=store, policy=IdempotencyPolicy(on_server_error="unknown")) as c:
        await c.post("/charges", json={}, headers=key())
        backend.status, backend.raise_exc = 201, False
        for _ in range(2):
            doc = problem(
                await c.post("/charges", json={}, headers=key()), "idempotency_outcome_unknown", 409
            )
            assert "Retrying with the same key is safe" in doc["detail"]
        [(store_key, _)] = await store.records(clock.now(), state=State.UNKNOWN)
        assert [e.reason for e in events if isinstance(e, OutcomeUnknown)] == [
            "server_error",
            "pending",
            "pending",
        ]
        assert next(e for e in events if isinstance(e, OutcomeUnknown)).store_key == store_key
        assert await store.forget(store_key, clock.now())
        assert (await c.post("/charges", json={}, headers=key())).status_code == 201
    assert backend.executions == 2


@pytest.mark.parametrize(("given", "header"), [(None, "5"), (30, "30"), (0.2, "1")])
async def test_outcome_unknown_says_when_to_retry(
    make_client: Callable[..., httpx.AsyncClient],
    backend: Backend,
    given: float | None,
    header: str,
) -> None:
    # An SDK retrying at once spent its three retries within 2.5 s against these 409s:
    # Retry-After (whole seconds, rounded up) says when asking again can help.
    backend.status = 502
    options = {} if given is None else {"outcome_unknown_retry_after": given}
    policy = IdempotencyPolicy(on_server_error="unknown")
    async with make_client(policy=policy, **options) as c:
        assert (await c.post("/charges", json={}, headers=key())).status_code == 502
        retry = await c.post("/charges", json={}, headers=key())
    doc = problem(retry, "idempotency_outcome_unknown", 409)
    assert retry.headers["retry-after"] == header
    assert doc["retry_after"] == int(header)


async def test_large_responses_stream_through_and_replay_as_not_stored(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    backend.body_size = 2048
    async with make_client(max_stored_response=1024) as c:
        first = await c.post("/charges", json={}, headers=key())
        assert first.status_code == 201
        assert len(first.content) == 2048
        doc = problem(
            await c.post("/charges", json={}, headers=key()), "idempotency_response_not_stored", 409
        )
        assert doc["original_status"] == 201
        assert "Do not retry" in doc["detail"]
    assert backend.executions == 1


async def test_streamed_response_is_kept_whole(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"chunk{i};".encode()

        return StreamingResponse(chunks(), status_code=200)

    app = Starlette(routes=[Route("/s", stream, methods=["POST"])])
    async with make_client(app) as c:
        first = await c.post("/s", headers=key())
        again = await c.post("/s", headers=key())
    assert again.content == first.content == b"chunk0;chunk1;chunk2;chunk3;chunk4;"


async def test_request_body_over_the_limit_is_413(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    async with make_client(max_request_body=10) as c:
        problem(
            await c.post("/charges", content=b"x" * 11, headers=key()),
            "request_body_too_large",
            413,
        )

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 6
            yield b"x" * 6

        problem(
            await c.post("/charges", content=body(), headers=key()), "request_body_too_large", 413
        )
    assert backend.executions == 0


# -- contract 6: settling always, leases ---------------------------------------------------------


async def raw_call(
    app: Any, messages: list[dict[str, Any]], *, disconnect_after_start: bool = False
) -> list[dict[str, Any]]:
    """Drive an ASGI app by hand; the client disconnects once the app has started responding."""
    sent: list[dict[str, Any]] = []
    inbox = list(messages)
    started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start" and disconnect_after_start:
            started.set()

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
    }
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("responded", [False, True])
async def test_cancelled_request_is_left_to_its_lease_unless_it_responded(
    clock: ManualClock, events: list[Event], responded: bool
) -> None:
    """A cancelled handler may live on in a thread: its key must not be released early."""
    store = MemoryStore()
    entered = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if responded:
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": b"charged"})
        entered.set()
        await asyncio.Event().wait()  # hangs until cancelled

    policy = IdempotencyPolicy(lease=30)  # on_server_error="release", on_lease_expiry="unknown"
    mw = IdempotencyMiddleware(app, store=store, clock=clock, hooks=[events.append], policy=policy)
    task = asyncio.create_task(raw_call(mw, [{"type": "http.request", "body": b"{}"}]))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    [(_, record)] = await store.records(clock.now())
    if responded:
        assert record.state is State.COMPLETED
        assert record.response is not None
        assert record.response.body == b"charged"
        return
    assert record.state is State.IN_FLIGHT
    assert [e.name for e in events][-1] == "idempotency.abandoned"
    clock.advance(30)
    [(_, record)] = await store.records(clock.now(), state=State.LEASE_EXPIRED)


async def test_disconnect_before_the_body_executes_nothing(
    clock: ManualClock, backend: Backend
) -> None:
    mw = IdempotencyMiddleware(backend.starlette(), store=MemoryStore(), clock=clock, hooks=[])
    sent = await raw_call(
        mw, [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    )
    assert sent == []
    assert backend.executions == 0


async def test_app_that_finishes_its_response_after_disconnect_is_stored(
    clock: ManualClock,
) -> None:
    store = MemoryStore()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.body", "body": b"done"})

    mw = IdempotencyMiddleware(app, store=store, clock=clock, hooks=[])
    await raw_call(mw, [{"type": "http.request", "body": b"{}"}], disconnect_after_start=True)
    [(_, record)] = await store.records(clock.now())
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert record.response.body == b"done"


@pytest.mark.parametrize("mode", ["reexecute", "unknown"])
async def test_abandoned_lease_follows_the_policy(
    make_client: Callable[..., httpx.AsyncClient],
    backend: Backend,
    clock: ManualClock,
    events: list[Event],
    mode: str,
) -> None:
    backend.gate = asyncio.Event()
    policy = IdempotencyPolicy(lease=30, on_lease_expiry=mode)  # type: ignore[arg-type]
    async with make_client(policy=policy) as c:
        stuck = asyncio.create_task(c.post("/charges", json={}, headers=key()))
        await backend.entered.wait()
        clock.advance(29)
        problem(
            await c.post("/charges", json={}, headers=key()), "idempotency_request_in_progress", 409
        )
        clock.advance(1)
        backend.gate.set()  # lets the retry (if any) finish at once; the stuck one too
        retry = await c.post("/charges", json={}, headers=key())
        late = await stuck
    assert late.status_code == 201
    [expired] = [e for e in events if isinstance(e, LeaseExpired)]
    assert expired.action == mode
    if mode == "reexecute":
        assert retry.status_code == 201
        assert backend.executions == 2
        assert [e for e in events if isinstance(e, StaleFinish)]  # the late finisher was fenced out
    else:
        problem(retry, "idempotency_outcome_unknown", 409)
        assert backend.executions == 1


# -- stores failing ----------------------------------------------------------------------------


def down_at(operation: str) -> FlakyStore:
    """A store whose ``operation`` fails, with a password in the driver's error."""
    store = FlakyStore(MemoryStore(), error=store_error(OSError("redis://:hunter2@db failed")))
    store.down(operation)
    return store


async def test_store_down_at_begin_is_503_and_executes_nothing(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend, events: list[Event]
) -> None:
    async with make_client(store=down_at("begin")) as c:
        r = await c.post("/charges", json={}, headers=key())
    doc = problem(r, "store_unavailable", 503)
    assert r.headers["retry-after"] == "1"
    assert "hunter2" not in r.text
    assert "Nothing was executed" in doc["detail"] or "nothing was executed" in doc["detail"]
    assert backend.executions == 0
    failed = next(e for e in events if isinstance(e, StoreFailed))
    assert (failed.phase, failed.error) == ("begin", "OSError")


async def test_store_down_at_finish_still_answers_the_client(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend, events: list[Event]
) -> None:
    async with make_client(store=down_at("finish")) as c:
        r = await c.post("/charges", json={}, headers=key())
    assert r.status_code == 201
    assert [e.phase for e in events if isinstance(e, StoreFailed)] == ["finish"]


# -- routing and pass-through --------------------------------------------------------------------


async def test_routes_choose_policies_and_exemptions(
    make_client: Callable[..., httpx.AsyncClient], backend: Backend
) -> None:
    routes = {
        "/health": None,
        "POST /charges/{cid}/refund": IdempotencyPolicy(required=False),
        "PUT /charges": IdempotencyPolicy(methods=frozenset({"PUT"})),
    }
    async with make_client(routes=routes) as c:
        assert (await c.post("/health", json={})).status_code == 201
        assert (await c.post("/charges/ch_1/refund", json={})).status_code == 201
        problem(await c.put("/charges", json={}), "idempotency_key_missing", 400)
        problem(await c.post("/charges", json={}), "idempotency_key_missing", 400)
        assert (await c.patch("/charges", json={}, headers=key())).status_code == 201


async def test_safe_methods_and_other_scopes_pass_through(clock: ManualClock) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = IdempotencyMiddleware(app, store=MemoryStore(), clock=clock)
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await mw({"type": "http", "method": "GET", "path": "/", "headers": []}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "http"]


async def test_request_id_is_kept_when_well_formed(client: httpx.AsyncClient) -> None:
    r = await client.post("/charges", json={}, headers={"x-request-id": "req-42"})
    assert problem(r, "idempotency_key_missing", 400)["request_id"] == "req-42"
    r = await client.post("/charges", json={}, headers={"x-request-id": "bad id with spaces"})
    assert problem(r, "idempotency_key_missing", 400)["request_id"] != "bad id with spaces"


# -- events ---------------------------------------------------------------------------------------


async def test_events_and_logging(
    make_client: Callable[..., httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    def broken_hook(event: Event) -> None:
        raise ValueError("hook bug")

    caplog.set_level(logging.INFO, logger="surefoot")
    async with make_client(hooks=None) as default, make_client(hooks=[broken_hook]) as broken:
        await default.post("/charges", json={}, headers=key())
        await default.post("/charges", json={}, headers=key())
        assert (await broken.post("/charges", json={}, headers=key("k2"))).status_code == 201
    names = [
        r.getMessage().split(" ")[0] for r in caplog.records if r.name == "surefoot.idempotency"
    ]
    assert names == ["idempotency.reserved", "idempotency.stored", "idempotency.replayed"]
    assert any(
        "hook bug" in (r.exc_text or "") or r.exc_info
        for r in caplog.records
        if r.name == "surefoot.events"
    )
    replayed = next(r for r in caplog.records if r.getMessage().startswith("idempotency.replayed"))
    assert replayed.surefoot["status"] == 201  # type: ignore[attr-defined]


async def test_replayed_event_carries_the_status(
    client: httpx.AsyncClient, events: list[Event]
) -> None:
    await aassert_idempotent(client, "POST", "/charges", json={})
    assert [e.status for e in events if isinstance(e, ResponseReplayed)] == [201, 201]


def test_store_must_fulfil_the_protocol() -> None:
    with pytest.raises(ConfigurationError, match="expected an IdempotencyStore"):
        IdempotencyMiddleware(lambda *a: None, store=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_request_body"):
        IdempotencyMiddleware(lambda *a: None, store=MemoryStore(), max_request_body=-1)  # type: ignore[arg-type]
    for wait in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigurationError, match="outcome_unknown_retry_after"):
            IdempotencyMiddleware(
                lambda *a: None,  # type: ignore[arg-type]
                store=MemoryStore(),
                outcome_unknown_retry_after=wait,
            )
