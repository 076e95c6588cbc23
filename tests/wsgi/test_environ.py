"""Reviewed WSGI corners: a mount prefix (``SCRIPT_NAME``), ``PATH_INFO`` bytes, status
lines, ``write()`` from a generator, bodies beyond their ``Content-Length``, a broken
status, and ``StoreHealth`` shared by threads."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from test_wsgi import KEY, Recorder, counting, environ, run

from surefoot._health import HealthState, Permit, StoreHealth
from surefoot.idempotency import IdempotencyPolicy
from surefoot.ratelimit import RateLimitPolicy
from surefoot.storage import SyncMemoryStore
from surefoot.wsgi import IdempotencyMiddleware, RateLimitMiddleware, Request, Response


def seen_app(seen: list[tuple[str, str]]) -> Any:
    @counting
    def app(env: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append((env.get("SCRIPT_NAME", ""), env["PATH_INFO"]))
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"charged"]

    return app


def limited(app: Any, route: str) -> RateLimitMiddleware:
    policy = RateLimitPolicy("c", limits=["1/minute"], routes=[route])
    return RateLimitMiddleware(app, store=SyncMemoryStore(), policies=[policy], hooks=[])


@pytest.mark.parametrize("raw", ["/app/../charges", "/app/%2E%2E/charges", None])
def test_a_path_that_leaves_script_name_is_refused(raw: str | None) -> None:
    seen: list[tuple[str, str]] = []
    app = seen_app(seen)
    wrapped = limited(app, "POST /app/charges")
    extra: dict[str, Any] = {} if raw is None else {"RAW_URI": raw}
    env = environ("/../charges", SCRIPT_NAME="/app", **extra)
    recorder, body = run(wrapped, env)
    assert recorder.status.startswith("400")
    assert b"invalid-path" in body
    assert env["SCRIPT_NAME"] == "/app"  # never cleared
    assert app.calls == 0


def test_routes_match_the_full_path_and_script_name_is_kept() -> None:
    seen: list[tuple[str, str]] = []
    wrapped = limited(seen_app(seen), "POST /app/charges")
    statuses = [
        run(wrapped, environ("//charges/./", SCRIPT_NAME="/app", RAW_URI="/app//charges/./"))[
            0
        ].status[:3]
        for _ in range(2)
    ]
    assert statuses == ["201", "429"]
    assert seen == [("/app", "/charges/")]


def test_a_raw_uri_without_the_prefix_a_proxy_stripped_keeps_script_name() -> None:
    # ProxyFix(x_prefix=1) puts X-Forwarded-Prefix in SCRIPT_NAME; gunicorn's RAW_URI
    # is what the proxy sent, without it.
    seen: list[tuple[str, str]] = []
    wrapped = limited(seen_app(seen), "POST /api/charges")
    env = environ("/charges", SCRIPT_NAME="/api", RAW_URI="/charges")
    assert run(wrapped, env)[0].status.startswith("201")
    assert seen == [("/api", "/charges")]
    again = environ("/charges", SCRIPT_NAME="/api", RAW_URI="/charges")
    assert run(wrapped, again)[0].status.startswith("429")  # the route matched /api/charges


@pytest.mark.parametrize(
    ("path_info", "raw"),
    [
        ("/files/caf\xe9", None),  # wsgiref: the bytes as latin-1, not UTF-8
        ("/files/caf\xe9", "/files/caf%E9"),
        ("/files/caf\xc3\xa9", None),  # UTF-8 bytes as latin-1
        ("/files/100%", None),  # a decoded "%" stays one
    ],
)
def test_path_info_bytes_reach_the_app_unchanged(path_info: str, raw: str | None) -> None:
    seen: list[tuple[str, str]] = []
    wrapped = limited(seen_app(seen), "POST /other")
    extra: dict[str, Any] = {} if raw is None else {"RAW_URI": raw}
    assert run(wrapped, environ(path_info, **extra))[0].status.startswith("201")
    assert seen == [("", path_info)]


def test_an_encoded_slash_in_the_raw_uri_is_refused() -> None:
    wrapped = limited(seen_app([]), "POST /a")
    assert run(wrapped, environ("/a/b", RAW_URI="/a%2Fb"))[0].status.startswith("400")


@pytest.mark.parametrize("status", [299, 520])
def test_a_non_standard_status_replays_with_a_reason_phrase(status: int) -> None:
    @counting
    def app(env: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(f"{status} Custom", [("Content-Type", "text/plain")])
        return [b"done"]

    wrapped = IdempotencyMiddleware(
        app, store=SyncMemoryStore(), policy=IdempotencyPolicy(on_server_error="store"), hooks=[]
    )
    assert run(wrapped, environ())[0].status == f"{status} Custom"
    replay = run(wrapped, environ())
    assert replay[0].status == f"{status} Unknown"  # wsgiref asserts a space after the code
    assert replay[0].header("idempotent-replayed") == "true"
    assert Response(200, reason="").status_line == "200 OK"


def test_write_from_inside_a_generator_keeps_its_order_and_last_data() -> None:
    def app(env: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            write(b"W1-")
            yield b"C1-"
            write(b"W2-")
            yield b"C2-"
            write(b"W3")

        return body()

    wrapped = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])
    assert run(wrapped, environ())[1] == b"W1-C1-W2-C2-W3"
    replay = run(wrapped, environ())
    assert replay[0].header("idempotent-replayed") == "true"
    assert replay[1] == b"W1-C1-W2-C2-W3"


@pytest.mark.parametrize("streamed", [False, True])
def test_a_body_beyond_its_content_length_is_cut_there(streamed: bool) -> None:
    def app(env: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        chunks = [b"abc", b"def", b"gh"]
        return iter(chunks) if streamed else chunks

    wrapped = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])
    assert run(wrapped, environ())[1] == b"abcd"
    replay = run(wrapped, environ())
    assert replay[0].header("idempotent-replayed") == "true"
    assert replay[1] == b"abcd"


@pytest.mark.parametrize("status", ["abc OK", "20 OK", ""])
def test_a_status_without_a_code_closes_the_app_s_iterable_and_settles(status: str) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"x"])

        def close(self) -> None:
            closed.append(True)

    @counting
    def app(env: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(status, [])
        return Body()

    wrapped = IdempotencyMiddleware(app, store=SyncMemoryStore(), hooks=[])  # release
    for _ in range(2):
        with pytest.raises(RuntimeError, match="3-digit"):
            wrapped(environ(key=KEY), Recorder())
    assert closed == [True, True]
    assert app.calls == 2  # released: the retry ran


def test_store_health_ignores_a_report_its_state_has_no_transition_for() -> None:
    health = StoreHealth(jitter=0)
    assert health.failed(health.permit(0.0), 0.0) is not None
    assert health.state is HealthState.DOWN
    # A call permit of the current generation reporting while DOWN: stale, not a KeyError.
    stray = Permit(True, False, health.permit(0.1).generation)
    assert health.failed(stray, 0.2) is None
    assert health.state is HealthState.DOWN


def test_store_health_begins_one_outage_for_many_threads() -> None:
    for _ in range(50):
        health = StoreHealth()
        barrier = threading.Barrier(8)
        changes: list[object] = []
        errors: list[BaseException] = []

        def worker(
            health: StoreHealth = health,
            barrier: threading.Barrier = barrier,
            changes: list[object] = changes,
            errors: list[BaseException] = errors,
        ) -> None:
            permit = health.permit(0.0)
            barrier.wait()
            try:
                change = health.failed(permit, 1.0)
            except BaseException as exc:  # pragma: no cover - the defect
                errors.append(exc)
            else:
                if change is not None:
                    changes.append(change)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(changes) == 1
        probes = [health.permit(10.0) for _ in range(3)]
        assert [p.probe for p in probes] == [True, False, False]


def test_header_names_are_remembered_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from surefoot.wsgi import _request

    monkeypatch.setattr(_request, "_NAMES", dict(_request._NAMES))
    monkeypatch.setattr(_request, "_NAMES_KEPT", len(_request._NAMES) + 3)
    for n in range(10):  # a client inventing header names cannot grow the memory
        env = environ("/x", **{f"HTTP_X_NAME_{n}": f"v{n}", "HTTP_CONTENT_TYPE": "text/x"})
        headers = Request.from_environ(env).scope["headers"]
        assert (f"x-name-{n}".encode(), f"v{n}".encode()) in headers
        assert (b"content-type", b"text/x") not in headers  # the server's copy, not a header
    assert len(_request._NAMES) == _request._NAMES_KEPT
    env = environ("/x", HTTP_X_NAME_9="again", HTTP_ACCEPT="*/*", REMOTE_PORT=1)
    headers = Request.from_environ(env).scope["headers"]
    assert (b"x-name-9", b"again") in headers
    assert (b"accept", b"*/*") in headers
    assert not [name for name, _ in headers if name.startswith(b"remote")]
