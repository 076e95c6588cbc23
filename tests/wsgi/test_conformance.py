"""The conformance table of the middlewares, run over both stacks.

Every test gets ``stack``: the same backend behind the ASGI middlewares (``asgi``) or behind
``surefoot.wsgi``'s (``wsgi``). The last tests run one scenario on both and compare the
responses byte for byte (status, headers, body), request ids pinned.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import httpx
import pytest
from _wsgi_stacks import Backend, Stack, portal

from surefoot.idempotency import IdempotencyPolicy
from surefoot.ratelimit import Limit, RateLimitPolicy

KEY = {"Idempotency-Key": "key-1"}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def blocking_portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with portal() as p:
        yield p


@pytest.fixture(params=["asgi", "wsgi"])
def stack(request: pytest.FixtureRequest, blocking_portal: Any) -> Stack:
    return Stack(request.param, blocking_portal)


@pytest.fixture
def backend() -> Backend:
    return Backend()


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["x-request-id"]
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    assert "secret" not in response.text
    return body


# -- idempotency ---------------------------------------------------------------------------


def test_a_retry_replays_byte_for_byte(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={})
    first = client.post("/charges", content=b'{"amount": 10}', headers=KEY)
    again = client.post("/charges", content=b'{"amount": 10}', headers=KEY)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["x-custom"] == "kept"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert backend.executions == 1


def test_json_bodies_are_compared_semantically(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={})
    client.post(
        "/charges", content=b'{"a": 1, "b": 2}', headers={**KEY, "content-type": "application/json"}
    )
    again = client.post(
        "/charges", content=b'{"b":2,"a":1}', headers={**KEY, "content-type": "application/json"}
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert backend.executions == 1


def test_a_concurrent_duplicate_gets_409(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={})
    backend.gate = threading.Event()
    results: list[httpx.Response] = []
    first = threading.Thread(target=lambda: results.append(client.post("/charges", headers=KEY)))
    first.start()
    try:
        assert backend.entered.wait(10)
        duplicate = client.post("/charges", headers=KEY)
    finally:
        backend.gate.set()
        first.join(10)
    problem(duplicate, 409, "idempotency_request_in_progress")
    assert duplicate.headers["retry-after"] == "1"
    assert results[0].status_code == 201
    assert backend.executions == 1


def test_the_same_key_with_another_body_gets_422(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={})
    client.post("/charges", content=b"one", headers=KEY)
    reused = client.post("/charges", content=b"two", headers=KEY)
    problem(reused, 422, "idempotency_key_reused")
    assert backend.executions == 1


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "idempotency_key_missing"),
        ({"Idempotency-Key": "k" * 300}, "idempotency_key_invalid"),
        ({"Idempotency-Key": ""}, "idempotency_key_invalid"),
    ],
)
def test_a_missing_or_malformed_key_gets_400(
    stack: Stack, backend: Backend, headers: dict[str, str], code: str
) -> None:
    client = stack.client(backend, idempotency={})
    problem(client.post("/charges", content=b"x", headers=headers), 400, code)
    assert backend.executions == 0


def test_a_key_in_the_body_field_works(stack: Stack, backend: Backend) -> None:
    client = stack.client(
        backend, idempotency={"policy": IdempotencyPolicy(body_field="request_id")}
    )
    body = b'{"request_id": "abc", "amount": 1}'
    headers = {"content-type": "application/json"}
    client.post("/charges", content=body, headers=headers)
    again = client.post("/charges", content=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert backend.executions == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_bound_gets_413(stack: Stack, backend: Backend, chunked: bool) -> None:
    client = stack.client(backend, idempotency={"max_request_body": 10})
    body = b"x" * 11
    content: Any = iter([body[:5], body[5:]]) if chunked else body
    problem(client.post("/charges", content=content, headers=KEY), 413, "request_body_too_large")
    assert backend.executions == 0
    fits = client.post(
        "/charges", content=iter([b"x" * 5, b"y" * 5]) if chunked else b"x" * 10, headers=KEY
    )
    assert fits.status_code == 201
    assert json.loads(fits.content)["echo"] == (b"x" * 5 + b"y" * 5 if chunked else b"x" * 10).hex()


@pytest.mark.parametrize("status", [503, 429, 408])
def test_a_status_that_did_no_work_releases_the_key(
    stack: Stack, backend: Backend, status: int
) -> None:
    client = stack.client(backend, idempotency={})
    backend.status = status
    assert client.post("/charges", headers=KEY).status_code == status
    backend.status = 201
    assert client.post("/charges", headers=KEY).status_code == 201
    assert backend.executions == 2


def test_on_server_error_release_lets_the_retry_run(stack: Stack, backend: Backend) -> None:
    client = stack.client(
        backend, idempotency={"policy": IdempotencyPolicy(on_server_error="release")}
    )
    backend.raise_exc = True
    with pytest.raises(RuntimeError, match="database exploded"):
        client.post("/charges", headers=KEY)
    backend.raise_exc = False
    assert client.post("/charges", headers=KEY).status_code == 201
    assert backend.executions == 2


def test_on_server_error_store_replays_a_problem(stack: Stack, backend: Backend) -> None:
    client = stack.client(
        backend, idempotency={"policy": IdempotencyPolicy(on_server_error="store")}
    )
    backend.raise_exc = True
    with pytest.raises(RuntimeError):
        client.post("/charges", headers=KEY)
    backend.raise_exc = False
    replay = client.post("/charges", headers=KEY)
    assert replay.status_code == 500
    assert replay.headers["content-type"] == PROBLEM
    assert replay.headers["idempotent-replayed"] == "true"
    assert "secret" not in replay.text
    assert backend.executions == 1


def test_on_server_error_store_keeps_a_5xx_response(stack: Stack, backend: Backend) -> None:
    client = stack.client(
        backend, idempotency={"policy": IdempotencyPolicy(on_server_error="store")}
    )
    backend.status = 500
    first = client.post("/charges", headers=KEY)
    replay = client.post("/charges", headers=KEY)
    assert replay.status_code == 500
    assert replay.content == first.content
    assert backend.executions == 1


def test_on_server_error_unknown_answers_409_outcome_unknown(
    stack: Stack, backend: Backend
) -> None:
    client = stack.client(
        backend, idempotency={"policy": IdempotencyPolicy(on_server_error="unknown")}
    )
    backend.raise_exc = True
    with pytest.raises(RuntimeError):
        client.post("/charges", headers=KEY)
    backend.raise_exc = False
    unknown = client.post("/charges", headers=KEY)
    problem(unknown, 409, "idempotency_outcome_unknown")
    assert unknown.headers["retry-after"] == "5"
    assert backend.executions == 1


def test_a_streamed_response_is_captured_and_replayed(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={})
    backend.stream = [b"first,", b"second,", b"third"]
    first = client.post("/charges", headers=KEY)
    replay = client.post("/charges", headers=KEY)
    assert first.content == replay.content == b"first,second,third"
    assert replay.headers["idempotent-replayed"] == "true"
    assert backend.executions == 1


def test_a_stream_over_max_stored_response_is_sent_but_not_kept(
    stack: Stack, backend: Backend
) -> None:
    client = stack.client(backend, idempotency={"max_stored_response": 8})
    backend.stream = [b"0123456789", b"abc"]
    assert client.post("/charges", headers=KEY).content == b"0123456789abc"
    again = client.post("/charges", headers=KEY)
    problem(again, 409, "idempotency_response_not_stored")
    assert backend.executions == 1


@pytest.mark.parametrize(("mode", "executions"), [("release", 2), ("store", 1), ("unknown", 1)])
def test_a_stream_that_breaks_follows_on_server_error(
    stack: Stack, backend: Backend, mode: str, executions: int
) -> None:
    client = stack.client(backend, idempotency={"policy": IdempotencyPolicy(on_server_error=mode)})  # type: ignore[arg-type]
    backend.stream = [b"partial,", b"never"]
    backend.raise_mid_stream = True
    with pytest.raises(RuntimeError, match="stream broke"):
        client.post("/charges", headers=KEY)
    backend.raise_mid_stream = False
    retry = client.post("/charges", headers=KEY)
    assert backend.executions == executions
    if mode == "release":
        assert retry.status_code == 201
    elif mode == "store":
        assert retry.status_code == 500
        assert retry.headers["idempotent-replayed"] == "true"
    else:
        problem(retry, 409, "idempotency_outcome_unknown")


def test_unprotected_routes_and_methods_pass_through(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={"routes": {"/health": None}})
    assert client.post("/health").status_code == 201
    assert client.get("/charges").status_code == 201
    assert backend.executions == 2


def test_an_invalid_path_gets_400_before_the_app(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={})
    problem(client.post("/charges/%2e%2e/%2e%2e/x", headers=KEY), 400, "invalid_path")
    assert backend.executions == 0


def test_the_app_gets_the_canonical_path(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={})
    response = client.post("/a//b/./charges", headers=KEY)
    assert json.loads(response.content)["path"] == "/a/b/charges"


def test_fail_closed_answers_503_and_executes_nothing(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, idempotency={}, flaky=True)
    stack.take_down()
    response = client.post("/charges", headers=KEY)
    problem(response, 503, "store_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert backend.executions == 0


def test_fail_open_executes_unprotected(stack: Stack, backend: Backend) -> None:
    client = stack.client(
        backend, idempotency={"policy": IdempotencyPolicy(on_store_error="fail_open")}, flaky=True
    )
    stack.take_down()
    response = client.post("/charges", headers=KEY)
    assert response.status_code == 201
    assert response.headers["idempotency-status"] == "unprotected"
    assert backend.executions == 1


# -- rate limits ---------------------------------------------------------------------------

LIMITED = {"policies": [RateLimitPolicy("default", limits=["2/minute"])]}


def test_over_the_limit_gets_429_with_the_headers(stack: Stack, backend: Backend) -> None:
    client = stack.client(backend, ratelimit=LIMITED)
    admitted = [client.get("/things") for _ in range(2)]
    assert [r.status_code for r in admitted] == [201, 201]
    assert admitted[1].headers["ratelimit"] == '"default";r=0;t=60'
    assert admitted[1].headers["ratelimit-policy"] == '"default";q=2;w=60'
    refused = client.get("/things")
    body = problem(refused, 429, "rate_limit_exceeded")
    assert refused.headers["retry-after"] == "60"
    assert body["retry_after"] == 60
    assert body["policy"] == "default"
    assert refused.headers["ratelimit"] == '"default";r=0;t=60'
    assert refused.headers["ratelimit-policy"] == '"default";q=2;w=60'
    assert backend.executions == 2
    stack.clock.advance(60)
    assert client.get("/things").status_code == 201


def test_a_429_from_the_limiter_never_reaches_idempotency(stack: Stack, backend: Backend) -> None:
    client = stack.client(
        backend, idempotency={}, ratelimit={"policies": [RateLimitPolicy("d", limits=["1/minute"])]}
    )
    assert client.post("/charges", headers=KEY).status_code == 201
    assert client.post("/charges", headers={"Idempotency-Key": "key-2"}).status_code == 429
    stack.clock.advance(60)
    assert client.post("/charges", headers={"Idempotency-Key": "key-2"}).status_code == 201
    assert backend.executions == 2


def test_concurrency_slots_are_freed_when_responses_end(stack: Stack, backend: Backend) -> None:
    policy = RateLimitPolicy("inflight", limits=[Limit(1, 1, algorithm="concurrency")])
    client = stack.client(backend, ratelimit={"policies": [policy]})
    backend.stream = [b"a", b"b"]
    for _ in range(3):  # each frees its slot when its (streamed) response ends
        assert client.get("/things").status_code == 201
    backend.stream = None
    backend.gate = threading.Event()
    backend.entered.clear()
    results: list[httpx.Response] = []
    first = threading.Thread(target=lambda: results.append(client.get("/things")))
    first.start()
    try:
        assert backend.entered.wait(10)
        refused = client.get("/things")
    finally:
        backend.gate.set()
        first.join(10)
    problem(refused, 429, "concurrency_limit_exceeded")
    assert results[0].status_code == 201
    assert client.get("/things").status_code == 201


def test_a_slot_comes_back_when_the_app_raises(stack: Stack, backend: Backend) -> None:
    policy = RateLimitPolicy("inflight", limits=[Limit(1, 1, algorithm="concurrency")])
    client = stack.client(backend, ratelimit={"policies": [policy]})
    backend.raise_exc = True
    with pytest.raises(RuntimeError):
        client.get("/things")
    backend.raise_exc = False
    assert client.get("/things").status_code == 201


@pytest.mark.parametrize(("on_store_error", "status"), [("fail_closed", 503), ("fail_open", 201)])
def test_a_down_store_follows_the_policy(
    stack: Stack, backend: Backend, on_store_error: str, status: int
) -> None:
    policy = RateLimitPolicy("d", limits=["1/minute"], on_store_error=on_store_error)  # type: ignore[arg-type]
    client = stack.client(backend, ratelimit={"policies": [policy]}, flaky=True)
    stack.take_down()
    responses = [client.get("/things") for _ in range(3)]
    if status == 503:
        for response in responses:
            problem(response, 503, "store_unavailable")
        assert backend.executions == 0
    else:
        assert [r.status_code for r in responses] == [201] * 3
        assert backend.executions == 3


# -- the same bytes on both stacks ---------------------------------------------------------


Answer = tuple[int, list[tuple[str, str]], bytes]


def _scenario(kind: str, blocking_portal: Any) -> tuple[list[Answer], list[str]]:
    stack = Stack(kind, blocking_portal)  # type: ignore[arg-type]
    backend = Backend()
    client = stack.client(
        backend,
        idempotency={
            "routes": {"POST /charges": IdempotencyPolicy(), "/health": None},
            "max_request_body": 64,
        },
        ratelimit={"policies": [RateLimitPolicy("default", limits=["5/minute"])]},
    )
    out = []
    rid = iter(range(100))

    def send(method: str, path: str, content: bytes = b"", **headers: str) -> None:
        headers = {"x-request-id": f"req-{next(rid)}", **headers}
        response = client.request(method, path, content=content, headers=headers)
        kept = sorted((k, v) for k, v in response.headers.items() if k not in ("date", "server"))
        out.append((response.status_code, kept, response.content))

    send("POST", "/charges", b'{"amount":1}', **KEY)  # executed
    send("POST", "/charges", b'{"amount":1}', **KEY)  # replayed
    send("POST", "/charges", b'{"amount":2}', **KEY)  # 422
    send("POST", "/charges", b"x")  # 400 missing
    send("POST", "/charges", b"x" * 65, **{"Idempotency-Key": "big"})  # 413
    send("POST", "/charges/%2e%2e/%2e%2e", b"", **KEY)  # 400 invalid path
    send("GET", "/charges")  # over the limit: 429
    return out, [type(event).__name__ for event in stack.events]


def test_both_stacks_answer_the_same_bytes(blocking_portal: Any) -> None:
    asgi, asgi_events = _scenario("asgi", blocking_portal)
    wsgi, wsgi_events = _scenario("wsgi", blocking_portal)
    assert [r[0] for r in asgi] == [201, 201, 422, 400, 413, 400, 429]
    for a, w in zip(asgi, wsgi, strict=True):
        assert a == w
    assert "KeyReserved" in asgi_events
    assert asgi_events == wsgi_events  # the same decisions, reported the same way
