"""What only WSGI has: ``write()``, lazy ``start_response``, ``close()``, the environ,
and the framework-neutral guards Django and Flask adapters call."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import httpx
import pytest
from _wsgi_stacks import Backend, SyncFlakyStore

from surefoot.errors import ConfigurationError, IdempotencyKeyMissing
from surefoot.idempotency import IdempotencyMiddleware as AsgiIdempotency
from surefoot.idempotency import IdempotencyPolicy
from surefoot.identity import Identity
from surefoot.ratelimit import Limit, RateLimitPolicy, Verdict
from surefoot.storage import MemoryStore, SqliteStore, SyncMemoryStore, SyncSqliteStore
from surefoot.testing import ManualClock
from surefoot.wsgi import (
    IdempotencyGuard,
    IdempotencyMiddleware,
    RateLimitGuard,
    RateLimitMiddleware,
    Request,
    Response,
    SyncRateLimiter,
    problem_response,
)

KEY = "key-1"


def environ(
    path: str = "/charges",
    body: bytes = b"",
    *,
    method: str = "POST",
    key: str | None = KEY,
    **extra: Any,
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        **extra,
    }
    if key is not None:
        env["HTTP_IDEMPOTENCY_KEY"] = key
    setup_testing_defaults(env)
    return env


class Recorder:
    """A ``start_response`` that keeps what it was given."""

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status, self.headers = status, headers
        return lambda data: None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


def run(app: Any, env: dict[str, Any]) -> tuple[Recorder, bytes]:
    recorder = Recorder()
    result = app(env, recorder)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)  # optional (PEP 3333)
        if close is not None:
            close()
    return recorder, body


def counting(app_body: Callable[[dict[str, Any], Any], Iterable[bytes]]) -> Any:
    def app(env: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        app.calls += 1  # type: ignore[attr-defined]
        return app_body(env, start_response)

    app.calls = 0  # type: ignore[attr-defined]
    return app


# -- WSGI plumbing -------------------------------------------------------------------------


def test_write_data_comes_first_and_is_replayed() -> None:
    @counting
    def app(env: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written,")
        return [b"returned"]

    wrapped = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])
    first = run(wrapped, environ())
    again = run(wrapped, environ())
    assert first[1] == again[1] == b"written,returned"
    assert again[0].header("idempotent-replayed") == "true"
    assert app.calls == 1


def test_a_generator_app_that_starts_late_is_captured() -> None:
    @counting
    def app(env: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("202 Accepted", [("Content-Type", "text/plain")])
        yield b""
        yield b"late"

    wrapped = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])
    first = run(wrapped, environ())
    again = run(wrapped, environ())
    assert first[0].status == again[0].status == "202 Accepted"
    assert again[1] == b"late"
    assert app.calls == 1


def failing_app(*, by_keyword: bool) -> Any:
    """An app that starts a 200, fails before its body and starts a 500 with ``exc_info``
    (positional, or by keyword)."""

    def app(env: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        try:
            raise ValueError("boom")
        except ValueError:
            headers = [("Content-Type", "text/plain")]
            if by_keyword:
                start_response("500 Internal Server Error", headers, exc_info=sys.exc_info())
            else:
                start_response("500 Internal Server Error", headers, sys.exc_info())
        return [b"sorry"]

    return app


def test_exc_info_before_the_body_replaces_the_status() -> None:
    wrapped = IdempotencyMiddleware(
        failing_app(by_keyword=False),
        store=SyncMemoryStore(),
        policy=IdempotencyPolicy(on_server_error="store"),
        hooks=[],
    )
    assert run(wrapped, environ())[0].status == "500 Internal Server Error"
    replay = run(wrapped, environ())
    assert replay[0].status.startswith("500")
    assert replay[1] == b"sorry"


def test_an_app_that_never_starts_is_an_error_of_the_app() -> None:
    wrapped = IdempotencyMiddleware(lambda env, sr: [], store=SyncMemoryStore(), hooks=[])
    with pytest.raises(RuntimeError, match="start_response"):
        run(wrapped, environ())


def test_a_body_closed_early_settles_by_on_server_error() -> None:
    closed: list[bool] = []

    @counting
    def app(env: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            yield b"one"
            yield b"two"
        finally:
            closed.append(True)

    wrapped = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])  # release
    result = wrapped(environ(), Recorder())
    assert next(iter(result)) == b"one"
    result.close()  # the client went away: the server closes the iterable
    assert closed == [True]
    assert run(wrapped, environ())[1] == b"onetwo"  # released: the retry runs
    assert app.calls == 2


def test_with_a_content_length_the_record_is_settled_before_the_last_chunk() -> None:
    @counting
    def app(env: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        yield b"abc"
        yield b"def"

    wrapped = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])
    iterator = iter(wrapped(environ(), Recorder()))
    assert next(iterator) == b"abc"
    during = run(wrapped, environ())  # before the last chunk: still in flight
    assert during[0].status.startswith("409")
    assert next(iterator) == b"def"
    retry = run(wrapped, environ())  # the client has every byte: the record is settled
    assert retry[0].header("idempotent-replayed") == "true"
    assert retry[1] == b"abcdef"
    assert app.calls == 1


def test_a_failing_finish_leaves_the_response_alone() -> None:
    class FinishFails(SyncMemoryStore):
        def finish(self, *args: Any, **kwargs: Any) -> bool:
            raise OSError("disk gone")

    wrapped = IdempotencyMiddleware(counting(Backend().wsgi), store=FinishFails(), hooks=[])
    recorder, body = run(wrapped, environ())
    assert recorder.status.startswith("201")
    assert b"execution" in body


def test_the_app_gets_the_body_and_no_override_headers() -> None:
    seen: dict[str, Any] = {}

    def app(env: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen["body"] = env["wsgi.input"].read()
        seen["override"] = env.get("HTTP_X_HTTP_METHOD_OVERRIDE")
        seen["path"] = env["PATH_INFO"]
        start_response("200 OK", [])
        return [b""]

    wrapped = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])
    run(wrapped, environ("/x//charges", b"payload", HTTP_X_HTTP_METHOD_OVERRIDE="DELETE"))
    assert seen == {"body": b"payload", "override": None, "path": "/x/charges"}


@pytest.mark.parametrize(
    ("extra", "code"),
    [({"CONTENT_LENGTH": "100"}, "bad_request"), ({"CONTENT_LENGTH": "1e3"}, "bad_request")],
)
def test_a_broken_body_is_a_400_never_a_500(extra: dict[str, str], code: str) -> None:
    wrapped = IdempotencyMiddleware(counting(Backend().wsgi), store=SyncMemoryStore(), hooks=[])
    recorder, body = run(wrapped, environ(body=b"short", **extra))
    assert recorder.status.startswith("400")
    assert recorder.header("content-type") == "application/problem+json"
    assert b'"code":"%s"' % code.encode() in body


def test_layers_share_one_request_id() -> None:
    store = SyncMemoryStore()
    app = IdempotencyMiddleware(Backend().wsgi, store=store, hooks=[])
    app = RateLimitMiddleware(
        app, store=store, policies=[RateLimitPolicy("d", limits=["5/minute"])], hooks=[]
    )
    recorder, body = run(app, environ(key=None, HTTP_X_REQUEST_ID="abc-123"))
    assert recorder.header("x-request-id") == "abc-123"
    assert b'"request_id":"abc-123"' in body
    assert recorder.header("ratelimit") is not None  # the outer layer added its fields


# -- one store, both stacks ------------------------------------------------------------------


def test_a_key_executed_under_asgi_replays_under_wsgi(tmp_path: Path) -> None:
    """The same scope, the same scoped key and fingerprint: one record for both stacks."""
    db = tmp_path / "shared.db"
    backend = Backend()

    async def asgi_side() -> httpx.Response:
        store = SqliteStore(db)
        try:
            app = AsgiIdempotency(backend.asgi, store=store, hooks=[])
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.post(
                    "/charges", content=b"abc", headers={"Idempotency-Key": KEY, "X-Api-Key": "k1"}
                )
        finally:
            await store.aclose()

    first = asyncio.run(asgi_side())
    store = SyncSqliteStore(db)
    try:
        wsgi = IdempotencyMiddleware(backend.wsgi, store=store, hooks=[])
        recorder, body = run(wsgi, environ(body=b"abc", HTTP_X_API_KEY="k1"))
        other = run(wsgi, environ(body=b"abc", HTTP_X_API_KEY="k2"))  # another principal
    finally:
        store.close()
    assert recorder.header("idempotent-replayed") == "true"
    assert body == first.content
    assert backend.executions == 2
    assert other[0].header("idempotent-replayed") is None


# -- the guards, as a framework adapter calls them --------------------------------------------


def test_a_guard_passes_a_bytes_response_through_with_its_origin() -> None:
    guard = IdempotencyGuard(store=SyncMemoryStore(), hooks=[])
    origin = object()
    calls: list[int] = []

    def view() -> Response:
        calls.append(1)
        return Response(201, [("Content-Type", "application/json")], b'{"id":1}', origin=origin)

    request = Request.from_environ(environ(), b'{"amount":1}')
    first = guard.handle(request, view)
    assert first.origin is origin
    assert first.added_headers == []
    again = guard.handle(Request.from_environ(environ(), b'{"amount":1}'), view)
    assert again.replayed
    assert again.origin is None
    assert again.body == b'{"id":1}'
    assert ("idempotent-replayed", "true") in again.headers
    assert calls == [1]


def test_a_guard_refusal_carries_its_error() -> None:
    guard = IdempotencyGuard(store=SyncMemoryStore(), hooks=[])
    refused = guard.handle(Request.from_environ(environ(key=None)), lambda: Response(200))
    assert refused.status == 400
    assert isinstance(refused.error, IdempotencyKeyMissing)
    assert refused.status_line == "400 Bad Request"


def test_a_guard_reads_the_body_when_not_given() -> None:
    guard = IdempotencyGuard(store=SyncMemoryStore(), hooks=[], max_request_body=4)
    refused = guard.handle(Request.from_environ(environ(body=b"12345")), lambda: Response(200))
    assert refused.status == 413


def test_the_rate_limit_guard_for_a_throttle_class() -> None:
    clock = ManualClock()
    guard = RateLimitGuard(
        store=SyncMemoryStore(),
        policies=[RateLimitPolicy("d", limits=["1/minute"], routes=["GET /limited"])],
        clock=clock,
        hooks=[],
    )
    assert guard.check(Request.from_environ(environ("/free", method="GET"))) is None
    admitted = guard.check(Request.from_environ(environ("/limited", method="GET")))
    assert isinstance(admitted, Verdict)
    assert admitted.admitted
    refused = guard.check(Request.from_environ(environ("/limited", method="GET")))
    assert isinstance(refused, Response)
    assert refused.status == 429
    assert refused.error is not None
    assert refused.error.fields["retry_after"] == 60
    assert dict(refused.headers)["retry-after"] == "60"


def test_a_user_scopes_keys_through_identity() -> None:
    class User:
        is_authenticated = True

        def __init__(self, name: str) -> None:
            self.identity = name

    guard = IdempotencyGuard(store=SyncMemoryStore(), principal=Identity(), hooks=[])
    answers = []
    for name in ("ann", "bob", "ann"):
        request = Request.from_environ(environ(key="shared"), b"x", user=User(name))
        answers.append(guard.handle(request, lambda: Response(201, [], b"ok")).replayed)
    assert answers == [False, False, True]


def test_problem_response_is_the_catalogue_problem() -> None:
    error = IdempotencyKeyMissing(method="POST", path="/charges", header="Idempotency-Key")
    response = problem_response(error, Request.from_environ(environ(HTTP_X_REQUEST_ID="r-1")))
    assert response.status == 400
    assert dict(response.headers)["content-type"] == "application/problem+json"
    assert dict(response.headers)["x-request-id"] == "r-1"
    assert b'"code":"idempotency_key_missing"' in response.body  # type: ignore[operator]


def test_async_stores_are_refused_with_a_readable_error() -> None:
    with pytest.raises(ConfigurationError, match="SyncIdempotencyStore"):
        IdempotencyGuard(store=MemoryStore())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="SyncRateLimitStore"):
        SyncRateLimiter(store=MemoryStore(), policies=[])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="IdempotencyStore"):
        AsgiIdempotency(Backend().asgi, store=object())  # type: ignore[arg-type]


def test_local_fallback_counts_in_the_process_while_the_store_is_down() -> None:
    store = SyncFlakyStore()
    inflight = Limit(2, 1, algorithm="concurrency")
    limiter = SyncRateLimiter(
        store=store,
        policies=[RateLimitPolicy("d", limits=[inflight], on_store_error="local_fallback")],
        fallback_workers=2,  # this process's share: one slot
        clock=ManualClock(),
        hooks=[],
    )
    store.down()
    scope = Request.from_environ(environ(method="GET")).scope
    held = limiter.check(scope)
    assert held is not None
    assert held.admitted
    assert held.local
    refused = limiter.check(scope)
    assert refused is not None
    assert not refused.admitted
    limiter.release(held)
    again = limiter.check(scope)
    assert again is not None
    assert again.admitted


# -- the rest of the conversation with the store ------------------------------------------------


def test_a_duplicate_waits_for_the_original_then_gets_409() -> None:
    clock = ManualClock()
    guard = IdempotencyGuard(
        store=SyncMemoryStore(),
        policy=IdempotencyPolicy(wait=2),
        clock=clock,
        sleep=clock.advance,
        hooks=[],
    )
    inner: list[Response] = []

    def view() -> Response:  # a duplicate arrives while the original runs
        inner.append(guard.handle(Request.from_environ(environ(), b"x"), lambda: Response(200)))
        return Response(201, [], b"done")

    assert guard.handle(Request.from_environ(environ(), b"x"), view).status == 201
    assert inner[0].status == 409
    assert clock.now() - 1_700_000_000.0 >= 2  # it waited the policy's wait, then gave up


def test_a_down_store_is_not_called_again_until_its_probe() -> None:
    store = SyncFlakyStore()
    store.down()
    calls: list[str] = []
    original = store.begin

    def begin(*args: Any, **kwargs: Any) -> Any:
        calls.append("begin")
        return original(*args, **kwargs)

    store.begin = begin  # type: ignore[method-assign]
    guard = IdempotencyGuard(store=store, clock=ManualClock(), hooks=[])
    answers = [
        guard.handle(Request.from_environ(environ(), b"x"), lambda: Response(201)) for _ in range(3)
    ]
    assert [a.status for a in answers] == [503, 503, 503]
    assert calls == ["begin"]  # the two others were answered without the store


def test_a_full_store_answers_503_store_capacity_exceeded() -> None:
    guard = IdempotencyGuard(store=SyncMemoryStore(max_records=1), hooks=[])
    first = guard.handle(Request.from_environ(environ(key="a"), b"x"), lambda: Response(201))
    full = guard.handle(Request.from_environ(environ(key="b"), b"x"), lambda: Response(201))
    assert first.status == 201
    assert full.status == 503
    assert b'"code":"store_capacity_exceeded"' in full.body  # type: ignore[operator]


def test_ambiguous_credentials_are_refused_before_any_key() -> None:
    guard = IdempotencyGuard(store=SyncMemoryStore(), principal=Identity(), hooks=[])
    env = environ(HTTP_AUTHORIZATION="Bearer a", HTTP_X_API_KEY="b")
    refused = guard.handle(Request.from_environ(env, b"x"), lambda: Response(201))
    assert refused.status == 400
    assert b'"code":"credentials_ambiguous"' in refused.body  # type: ignore[operator]


def test_the_rate_limit_middleware_swaps_its_policies() -> None:
    store = SyncMemoryStore()
    app = RateLimitMiddleware(
        Backend().wsgi, store=store, policies=[RateLimitPolicy("a", limits=["1/minute"])], hooks=[]
    )
    assert app.store is store
    assert run(app, environ(method="GET"))[0].status.startswith("201")
    assert run(app, environ(method="GET"))[0].status.startswith("429")
    app.update_policies([RateLimitPolicy("b", limits=["5/minute"])])
    assert [p.name for p in app.policies] == ["b"]
    assert app.limiter.policies == app.policies
    assert run(app, environ(method="GET"))[0].status.startswith("201")
    assert run(app, environ("/../x", method="GET"))[0].status.startswith("400")
    raw = environ("/x", method="GET", RAW_URI="/%2e%2e/x?q=1")  # gunicorn's raw target
    assert run(app, raw)[0].status.startswith("400")


@pytest.mark.parametrize("where", ["view", "stream"])
def test_a_worker_told_to_exit_leaves_the_key_to_its_lease(where: str) -> None:
    clock = ManualClock()
    guard = IdempotencyGuard(
        store=SyncMemoryStore(),
        policy=IdempotencyPolicy(lease=30, on_lease_expiry="unknown"),
        clock=clock,
        hooks=[],
    )

    def exiting() -> Iterator[bytes]:
        yield b"half"
        raise SystemExit(1)

    def view() -> Response:
        if where == "view":
            raise SystemExit(1)
        return Response(200, [], exiting())

    def send() -> None:
        response = guard.handle(Request.from_environ(environ(), b"x"), view)
        try:
            b"".join(response)
        finally:
            response.close()

    with pytest.raises(SystemExit):
        send()
    retry = guard.handle(Request.from_environ(environ(), b"x"), lambda: Response(201, [], b"ok"))
    assert retry.status == 409  # never released early: the work may be half done
    assert b"idempotency_request_in_progress" in retry.body  # type: ignore[operator]
    clock.advance(31)
    again = guard.handle(Request.from_environ(environ(), b"x"), lambda: Response(201, [], b"ok"))
    assert b"idempotency_outcome_unknown" in again.body  # type: ignore[operator]


def test_a_view_body_given_as_a_list_is_stored_whole() -> None:
    guard = IdempotencyGuard(store=SyncMemoryStore(), hooks=[])
    first = guard.handle(
        Request.from_environ(environ(), b"x"), lambda: Response(200, [], [b"a", b"b"])
    )
    assert first.body == b"ab"
    again = guard.handle(Request.from_environ(environ(), b"x"), lambda: Response(500))
    assert again.replayed
    assert again.body == b"ab"


def test_a_release_while_the_store_is_down_is_left_to_the_lease() -> None:
    store = SyncFlakyStore()
    inflight = Limit(1, 1, algorithm="concurrency")
    limiter = SyncRateLimiter(
        store=store, policies=[RateLimitPolicy("d", limits=[inflight])], hooks=[]
    )
    scope = Request.from_environ(environ(method="GET")).scope
    held = limiter.check(scope)
    assert held is not None
    assert held.held
    store.down()
    limiter.release(held)  # fails quietly: the slot comes back with its lease
    refused = limiter.check(scope)  # the store is down now: fail_open
    assert refused is not None
    assert refused.admitted
    assert not limiter.health.healthy
    limiter.release(held)  # known down: not even tried


def test_exc_info_may_be_passed_by_keyword() -> None:
    app = failing_app(by_keyword=True)
    idempotent = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])
    policy = RateLimitPolicy("p", limits=["5/minute"])
    limited = RateLimitMiddleware(app, store=SyncMemoryStore(), policies=[policy], hooks=[])
    for wrapped in (idempotent, limited):
        assert run(wrapped, environ())[0].status == "500 Internal Server Error"
