"""``surefoot.flask.Surefoot`` through Flask's own test client: replays, refusals, the
decorators, Flask's error handlers, streaming, and store outages."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import pytest
from _flask_apps import SECRET, Counter, FlakySyncStore, payments_app
from flask import Flask, g, request
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

from surefoot.errors import ConfigurationError
from surefoot.flask import HTTPProblem, Surefoot
from surefoot.idempotency import IdempotencyPolicy
from surefoot.ratelimit import Limit, RateLimitPolicy
from surefoot.storage import SyncMemoryStore
from surefoot.testing import ManualClock

PROBLEM = "application/problem+json"
CHARGES = {"POST /v1/charges": IdempotencyPolicy(), "POST /v1/reports": IdempotencyPolicy()}


def build(
    counter: Counter, clock: ManualClock, *, decorated: bool = True, **options: Any
) -> tuple[Flask, Surefoot]:
    surefoot = Surefoot(clock=clock, hooks=[], **options)
    app = payments_app(counter, surefoot if decorated else None)
    surefoot.init_app(app)
    return app, surefoot


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def app(counter: Counter, clock: ManualClock) -> Flask:
    app, _ = build(counter, clock, store=SyncMemoryStore(), routes=CHARGES)
    return app


def keyed(key: str, **extra: str) -> dict[str, str]:
    return {"Idempotency-Key": key, "X-API-Key": "sk_test_acme", **extra}


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["Content-Type"] == PROBLEM
    document: dict[str, Any] = json.loads(response.data)
    assert document["code"] == code
    assert document["status"] == status
    assert document["request_id"] == response.headers["X-Request-Id"]
    assert SECRET not in response.get_data(as_text=True)
    return document


# -- idempotency, app-wide ---------------------------------------------------------------


def test_a_retry_replays_the_first_response_byte_for_byte(app: Flask, counter: Counter) -> None:
    client = app.test_client()
    first = client.post("/v1/charges", json={"amount": 500}, headers=keyed("k1"))
    again = client.post("/v1/charges", json={"amount": 500}, headers=keyed("k1"))
    assert first.status_code == again.status_code == 201
    assert again.data == first.data
    assert again.headers["X-Charge"] == first.headers["X-Charge"] == "ch_1"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert counter["charge"] == 1


def test_json_compared_semantically_and_keys_scoped_by_client(app: Flask, counter: Counter) -> None:
    client = app.test_client()
    client.post(
        "/v1/charges",
        data='{"amount": 5, "c": 1}',
        headers=keyed("k"),
        content_type="application/json",
    )
    same = client.post(
        "/v1/charges",
        data='{"c":1,"amount":5}',
        headers=keyed("k"),
        content_type="application/json",
    )
    assert same.headers["Idempotent-Replayed"] == "true"
    other = client.post(
        "/v1/charges", json={"amount": 5, "c": 1}, headers=keyed("k", **{"X-API-Key": "sk_b"})
    )
    assert "Idempotent-Replayed" not in other.headers
    assert counter["charge"] == 2


def test_a_key_reused_with_another_body_is_422(app: Flask, counter: Counter) -> None:
    client = app.test_client()
    client.post("/v1/charges", json={"amount": 500}, headers=keyed("k1"))
    reused = client.post("/v1/charges", json={"amount": 900}, headers=keyed("k1"))
    problem(reused, 422, "idempotency_key_reused")
    assert counter["charge"] == 1


def test_a_missing_or_malformed_key_is_400(app: Flask, counter: Counter) -> None:
    client = app.test_client()
    missing = client.post("/v1/charges", json={"amount": 1}, headers={"X-API-Key": "k"})
    problem(missing, 400, "idempotency_key_missing")
    malformed = client.post("/v1/charges", json={"amount": 1}, headers=keyed("x" * 300))
    problem(malformed, 400, "idempotency_key_invalid")
    assert counter["charge"] == 0
    # Unprotected routes and methods pass straight through.
    assert client.get("/v1/charges").json == {"count": 0}


def test_a_body_over_the_bound_is_413_without_executing(
    counter: Counter, clock: ManualClock
) -> None:
    app, _ = build(counter, clock, store=SyncMemoryStore(), routes=CHARGES, max_request_body=64)
    client = app.test_client()
    big = client.post("/v1/charges", json={"amount": "9" * 100}, headers=keyed("k"))
    document = problem(big, 413, "request_body_too_large")
    assert "64" in document["detail"]
    assert counter["charge"] == 0
    small = client.post("/v1/charges", json={"amount": 1}, headers=keyed("k2"))
    assert small.status_code == 201


def test_a_duplicate_while_the_first_runs_is_409(app: Flask, counter: Counter) -> None:
    counter.gate = threading.Event()
    answers: list[Any] = []

    def first() -> None:
        answers.append(
            app.test_client().post("/v1/charges", json={"amount": 1}, headers=keyed("k"))
        )

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert counter.entered.wait(10)
        duplicate = app.test_client().post("/v1/charges", json={"amount": 1}, headers=keyed("k"))
        problem(duplicate, 409, "idempotency_request_in_progress")
        assert duplicate.headers["Retry-After"]
    finally:
        counter.gate.set()
        thread.join(10)
    assert answers[0].status_code == 201
    assert counter["charge"] == 1


def test_an_abort_in_the_view_is_stored_and_an_exception_released(
    app: Flask, counter: Counter
) -> None:
    client = app.test_client()
    declined = client.post("/v1/charges", json={"fail": "abort"}, headers=keyed("a"))
    assert declined.status_code == 403
    again = client.post("/v1/charges", json={"fail": "abort"}, headers=keyed("a"))
    assert again.status_code == 403
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counter["charge"] == 1
    # An exception nobody handles: Flask's 500, the key released (on_server_error="release").
    for _ in range(2):
        failed = client.post("/v1/charges", json={"fail": "raise"}, headers=keyed("b"))
        assert failed.status_code == 500
        assert SECRET not in failed.get_data(as_text=True)
    assert counter["charge"] == 3


def test_idempotency_is_off_without_routes(counter: Counter, clock: ManualClock) -> None:
    app, surefoot = build(
        counter,
        clock,
        store=SyncMemoryStore(),
        policies=[RateLimitPolicy("d", limits=["9/minute"])],
    )
    client = app.test_client()
    for _ in range(2):
        assert client.post("/v1/charges", json={}, headers=keyed("k")).status_code == 201
    assert counter["charge"] == 2
    assert surefoot.idempotency_guard(app) is None


def test_a_default_policy_protects_every_route(counter: Counter, clock: ManualClock) -> None:
    app, _ = build(
        counter, clock, decorated=False, store=SyncMemoryStore(), idempotency=IdempotencyPolicy()
    )
    client = app.test_client()
    problem(client.post("/v1/charges", json={}), 400, "idempotency_key_missing")
    problem(client.post("/v1/reports", json={}), 400, "idempotency_key_missing")


# -- rate limits, app-wide ---------------------------------------------------------------


def test_the_limit_refuses_with_429_and_its_headers(counter: Counter, clock: ManualClock) -> None:
    app, _ = build(
        counter,
        clock,
        store=SyncMemoryStore(),
        policies=[RateLimitPolicy("charges", limits=["2/minute"], routes=["POST /v1/charges"])],
    )
    client = app.test_client()
    for remaining in (1, 0):
        ok = client.post("/v1/charges", json={}, headers={"X-API-Key": "a"})
        assert ok.status_code == 201
        assert ok.headers["RateLimit"] == f'"charges";r={remaining};t=60'
        assert ok.headers["RateLimit-Policy"] == '"charges";q=2;w=60'
    refused = client.post("/v1/charges", json={}, headers={"X-API-Key": "a"})
    document = problem(refused, 429, "rate_limit_exceeded")
    assert document["retry_after"] == int(refused.headers["Retry-After"]) == 60
    assert refused.headers["RateLimit"] == '"charges";r=0;t=60'
    assert counter["charge"] == 2
    # Another client has a bucket of its own; other routes are not covered.
    assert client.post("/v1/charges", json={}, headers={"X-API-Key": "b"}).status_code == 201
    assert "RateLimit" not in client.get("/v1/charges", headers={"X-API-Key": "a"}).headers
    clock.advance(60)
    assert client.post("/v1/charges", json={}, headers={"X-API-Key": "a"}).status_code == 201


def test_a_refused_request_reaches_no_other_hook(counter: Counter, clock: ManualClock) -> None:
    app, _ = build(
        counter,
        clock,
        store=SyncMemoryStore(),
        policies=[RateLimitPolicy("d", limits=["1/minute"])],
    )
    seen: list[str] = []
    app.before_request(lambda: seen.append("hook"))
    client = app.test_client()
    client.get("/v1/charges")
    assert client.get("/v1/charges").status_code == 429
    assert seen == ["hook"]


# -- decorators --------------------------------------------------------------------------


@pytest.fixture
def decorated(counter: Counter, clock: ManualClock) -> Flask:
    # The payouts view is covered app-wide too (its decorator's guard wins).
    routes = {"POST /views/payouts": IdempotencyPolicy()}
    app, _ = build(counter, clock, store=SyncMemoryStore(), routes=routes)
    return app


def test_limit_counts_per_key_and_idempotent_replays(decorated: Flask, counter: Counter) -> None:
    client = decorated.test_client()
    one = {"X-Account": "acct_1"}
    first = client.post("/views/refunds", json={}, headers=keyed("r1", **one))
    replay = client.post("/views/refunds", json={}, headers=keyed("r1", **one))
    assert first.status_code == replay.status_code == 201
    assert replay.data == first.data
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert first.headers["RateLimit-Policy"] == '"refund";q=2;w=60'
    refused = client.post("/views/refunds", json={}, headers=keyed("r2", **one))
    document = problem(refused, 429, "rate_limit_exceeded")
    assert document["policy"] == "refund"
    # The key decides the bucket: another account still has its two.
    other = client.post("/views/refunds", json={}, headers=keyed("r3", **{"X-Account": "acct_2"}))
    assert other.status_code == 201
    assert counter["refund"] == 2


def test_a_decorated_view_is_not_protected_twice(decorated: Flask, counter: Counter) -> None:
    # /views/* is protected app-wide too: a second guard would have answered 409 to its
    # own view (one key, two reservations), or stored twice.
    client = decorated.test_client()
    failed = client.post("/views/payouts", json={"fail": True}, headers=keyed("p"))
    assert failed.status_code == 500
    stored = client.post("/views/payouts", json={"fail": True}, headers=keyed("p"))
    assert stored.status_code == 500
    assert stored.headers["Idempotent-Replayed"] == "true"  # on_server_error="store"
    assert counter["payout"] == 1


def test_limit_methods_and_a_key_that_answers_none(decorated: Flask, counter: Counter) -> None:
    client = decorated.test_client()
    for _ in range(3):
        assert client.get("/views/search").status_code == 200
    assert client.post("/views/search").status_code == 200
    problem(client.post("/views/search"), 429, "rate_limit_exceeded")
    assert counter["search"] == 4
    # key=lambda: g.get("account") answers None: the app's principal counts (the address).
    for _ in range(5):
        assert client.get("/views/account").status_code == 200
    problem(client.get("/views/account"), 429, "rate_limit_exceeded")


def test_limit_refuses_two_views_with_one_name_and_no_limit() -> None:
    surefoot = Surefoot(store=SyncMemoryStore())

    @surefoot.limit("1/minute", name="shared")
    def one() -> None: ...

    with pytest.raises(ConfigurationError, match="'shared'"):

        @surefoot.limit("1/minute", name="shared")
        def two() -> None: ...

    with pytest.raises(ConfigurationError, match="at least one limit"):
        surefoot.limit()
    with pytest.raises(ConfigurationError, match="not both"):
        surefoot.idempotent(IdempotencyPolicy(), ttl=60)


def test_decorators_without_a_store_say_what_is_missing(
    counter: Counter, caplog: pytest.LogCaptureFixture
) -> None:
    surefoot = Surefoot()
    app = payments_app(counter, surefoot)
    surefoot.init_app(app)
    answer = app.test_client().post("/views/payouts", json={}, headers=keyed("p"))
    problem(answer, 500, "configuration_error")  # the message goes to the log only
    assert "store" not in answer.get_data(as_text=True)
    assert "no idempotency store: pass store=" in caplog.text


def test_init_app_twice_and_an_app_not_set_up(counter: Counter) -> None:
    surefoot = Surefoot(store=SyncMemoryStore())
    app = payments_app(counter, surefoot)
    surefoot.init_app(app)
    assert app.extensions["surefoot"] is surefoot
    with pytest.raises(ConfigurationError, match="set up already"):
        surefoot.init_app(app)
    other = payments_app(Counter(), surefoot)
    with pytest.raises(ConfigurationError, match="not set up"), other.test_request_context():
        surefoot.idempotency_guard()


# -- Flask's error handlers --------------------------------------------------------------


def test_a_handler_for_429_sees_the_problem_and_keeps_its_headers(
    counter: Counter, clock: ManualClock
) -> None:
    app, _ = build(
        counter,
        clock,
        store=SyncMemoryStore(),
        policies=[RateLimitPolicy("d", limits=["1/minute"])],
    )
    seen: list[Any] = []

    @app.errorhandler(429)
    def too_many(error: Any) -> Any:
        seen.append(error)
        return f"slow down: {error.error.fields['retry_after']}s", 429

    client = app.test_client()
    client.get("/v1/charges")
    refused = client.get("/v1/charges")
    assert refused.status_code == 429
    assert refused.data == b"slow down: 60s"
    assert refused.headers["Retry-After"] == "60"
    assert refused.headers["RateLimit"] == '"d";r=0;t=60'
    assert refused.headers["X-Request-Id"]
    [error] = seen
    assert isinstance(error, HTTPProblem)
    assert isinstance(error, TooManyRequests)
    assert error.code == 429
    assert error.error.code == "rate_limit_exceeded"
    assert error.get_response().status_code == 429
    assert ("Retry-After", "60") in [(k.title(), v) for k, v in error.headers]
    assert all(k.lower() != "content-type" for k, _ in error.headers)


def test_a_surefoot_error_raised_by_a_view_is_a_problem(app: Flask, counter: Counter) -> None:
    answer = app.test_client().post("/v1/store-error")
    problem(answer, 503, "store_unavailable")
    assert answer.headers["Retry-After"] == "2"
    assert counter["store-error"] == 1


def test_a_handler_for_the_status_sees_a_raised_surefoot_error(app: Flask) -> None:
    @app.errorhandler(503)
    def unavailable(error: Any) -> Any:
        return {"mine": error.error.code}, 503

    answer = app.test_client().post("/v1/store-error")
    assert answer.status_code == 503
    assert answer.json == {"mine": "store_unavailable"}
    assert answer.headers["Retry-After"] == "2"


# -- streaming ---------------------------------------------------------------------------


def test_a_streamed_response_is_settled_at_its_end(app: Flask, counter: Counter) -> None:
    client = app.test_client()
    streamed = client.post("/v1/reports", json={"rows": 3}, headers=keyed("s"))
    assert streamed.data == b"row 0\nrow 1\nrow 2\n"
    replay = client.post("/v1/reports", json={"rows": 3}, headers=keyed("s"))
    assert replay.data == b"row 0\nrow 1\nrow 2\n"
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert counter["report"] == 1


def test_a_stream_closed_early_releases_the_key(app: Flask, counter: Counter) -> None:
    client = app.test_client()
    response = client.post("/v1/reports", json={"rows": 5}, headers=keyed("s"), buffered=False)
    chunks = iter(response.response)
    assert next(chunks) == b"row 0\n"
    response.close()  # the client went away after one row
    assert counter.closed.is_set()
    again = client.post("/v1/reports", json={"rows": 5}, headers=keyed("s"))
    assert "Idempotent-Replayed" not in again.headers  # on_server_error="release"
    assert again.data.count(b"row") == 5
    assert counter["report"] == 2


def test_a_stream_holds_its_concurrency_slot_until_closed(
    counter: Counter, clock: ManualClock
) -> None:
    policy = RateLimitPolicy(
        "inflight",
        limits=[Limit(1, 1, algorithm="concurrency", lease=60)],
        routes=["POST /v1/reports"],
    )
    app, _ = build(counter, clock, store=SyncMemoryStore(), policies=[policy])
    client = app.test_client()
    open_stream = client.post("/v1/reports", json={"rows": 2}, buffered=False)
    assert open_stream.status_code == 200
    busy = client.post("/v1/reports", json={"rows": 2})
    problem(busy, 429, "concurrency_limit_exceeded")
    assert b"".join(open_stream.response) == b"row 0\nrow 1\n"
    open_stream.close()  # what a WSGI server does once the body is sent
    for _ in range(2):  # buffered: the test client closes the response, as a server does
        assert client.post("/v1/reports", json={"rows": 2}, buffered=True).status_code == 200


def test_a_buffered_response_frees_its_slot_and_so_does_an_exception(
    counter: Counter, clock: ManualClock
) -> None:
    policy = RateLimitPolicy("inflight", limits=[Limit(1, 1, algorithm="concurrency", lease=60)])
    app, _ = build(counter, clock, store=SyncMemoryStore(), policies=[policy])
    client = app.test_client()
    for _ in range(3):
        assert client.post("/v1/charges", json={}).status_code == 201
        # Flask's 500 is built from its exception (a streamed body): freed on close.
        assert client.post("/v1/charges", json={"fail": "raise"}, buffered=True).status_code == 500


# -- store outages -----------------------------------------------------------------------


def test_store_down_fail_closed_and_fail_open(counter: Counter, clock: ManualClock) -> None:
    store = FlakySyncStore()
    app, _ = build(
        counter,
        clock,
        store=store,
        policies=[
            RateLimitPolicy("open", limits=["100/minute"], routes=["GET /*"]),
            RateLimitPolicy(
                "closed",
                limits=["100/minute"],
                routes=["POST /v1/reports"],
                on_store_error="fail_closed",
            ),
        ],
        routes={
            "POST /v1/charges": IdempotencyPolicy(),  # fail_closed by default
            "POST /views/refunds": IdempotencyPolicy(on_store_error="fail_open"),
        },
    )
    store.down()
    client = app.test_client()
    problem(client.post("/v1/charges", json={}, headers=keyed("k")), 503, "store_unavailable")
    assert counter["charge"] == 0
    problem(client.post("/v1/reports", json={}, headers=keyed("k")), 503, "store_unavailable")
    assert counter["report"] == 0
    read = client.get("/v1/charges")  # the limit fails open
    assert read.status_code == 200
    assert "RateLimit" not in read.headers


def test_idempotent_fail_open_marks_the_response(counter: Counter, clock: ManualClock) -> None:
    store = FlakySyncStore()
    app, _ = build(
        counter,
        clock,
        store=store,
        routes={"POST /v1/charges": IdempotencyPolicy(on_store_error="fail_open")},
    )
    store.down()
    answer = app.test_client().post("/v1/charges", json={}, headers=keyed("k"))
    assert answer.status_code == 201
    assert answer.headers["Idempotency-Status"] == "unprotected"
    assert counter["charge"] == 1


# -- paths -------------------------------------------------------------------------------


def test_the_path_flask_routes_is_the_canonical_one(app: Flask, counter: Counter) -> None:
    client = app.test_client()
    first = client.post("/v1/charges", json={"amount": 1}, headers=keyed("k"))
    odd = client.post("/v1//x/../%63harges", json={"amount": 1}, headers=keyed("k"))
    assert odd.status_code == 201
    assert odd.headers["Idempotent-Replayed"] == "true"
    assert odd.data == first.data
    refused = client.post("/v1/charges%2F..", json={"amount": 1}, headers=keyed("k2"))
    problem(refused, 400, "invalid_path")
    assert counter["charge"] == 1


# -- configuration from app.config -------------------------------------------------------


def test_app_config_uses_the_policy_file_format(
    tmp_path: Any, counter: Counter, clock: ManualClock
) -> None:
    app = payments_app(counter)
    app.config["SUREFOOT"] = {
        "stores": {"default": f"sqlite:///{tmp_path / 'surefoot.db'}"},
        "clients": [{"name": "acme", "api_key": "sk_test_acme", "tier": "partner"}],
        "rate_limit": {
            "policies": [
                {
                    "name": "charges",
                    "limits": ["1/minute"],
                    "routes": ["POST /v1/charges"],
                    "tiers": {"partner": ["3/minute"]},
                }
            ]
        },
        "idempotency": {"methods": []},
        "routes": [
            {"match": "POST /v1/charges", "idempotency": {"methods": ["POST"], "ttl": 3600}}
        ],
    }
    surefoot = Surefoot(app, clock=clock, hooks=[])
    client = app.test_client()
    first = client.post("/v1/charges", json={"amount": 1}, headers=keyed("k"))
    assert first.status_code == 201
    assert first.headers["RateLimit-Policy"] == '"charges";q=3;w=60'  # acme's tier
    assert client.post("/v1/charges", json={"amount": 1}, headers=keyed("k")).data == first.data
    assert client.post("/v1/reports", json={}).status_code == 200  # not protected
    assert counter["charge"] == 1
    guard = surefoot.idempotency_guard(app)
    assert guard is not None
    assert surefoot.rate_limit_guard(app) is not None


def test_app_config_errors_name_the_field(counter: Counter) -> None:
    app = payments_app(counter)
    app.config["SUREFOOT"] = {"rate_limit": {"policies": [{"name": "x", "limits": ["often"]}]}}
    with pytest.raises(ConfigurationError, match=r"app.config\['SUREFOOT'\]"):
        Surefoot(app)
    app = payments_app(counter)
    app.config["SUREFOOT"] = {"upstream": {"url": "http://x"}}
    with pytest.raises(ConfigurationError, match="upstream"):
        Surefoot(app)


def test_without_configuration_nothing_is_protected(counter: Counter) -> None:
    app = payments_app(counter)
    Surefoot(app)
    client = app.test_client()
    assert client.post("/v1/charges", json={}, headers=keyed("k")).status_code == 201
    assert client.post("/v1/charges", json={}, headers=keyed("k")).status_code == 201
    assert counter["charge"] == 2


def test_g_is_per_request(decorated: Flask) -> None:
    @decorated.before_request
    def who() -> None:
        g.account = "acct_9"

    client = decorated.test_client()
    for _ in range(5):
        assert client.get("/views/account").status_code == 200
    problem(client.get("/views/account"), 429, "rate_limit_exceeded")


def test_a_hook_that_parses_a_form_leaves_the_fingerprint_whole(
    app: Flask, counter: Counter
) -> None:
    seen: list[str | None] = []

    @app.before_request
    def csrf() -> None:  # as Flask-WTF's CSRFProtect does
        seen.append(request.form.get("token"))

    client = app.test_client()
    first = client.post("/v1/charges", data={"token": "t", "amount": "1"}, headers=keyed("f"))
    assert first.status_code == 201
    again = client.post("/v1/charges", data={"token": "t", "amount": "1"}, headers=keyed("f"))
    assert again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/charges", data={"token": "t", "amount": "2"}, headers=keyed("f"))
    problem(other, 422, "idempotency_key_reused")
    assert seen == ["t", "t", "t"]
    assert counter["charge"] == 1


def test_a_chunked_body_over_the_bound_is_413(counter: Counter, clock: ManualClock) -> None:
    app, _ = build(counter, clock, store=SyncMemoryStore(), routes=CHARGES, max_request_body=64)
    client = app.test_client()
    body = io.BytesIO(b'{"amount": "' + b"9" * 100 + b'"}')
    answer = client.post(
        "/v1/charges",
        input_stream=body,
        headers=keyed("c", **{"Transfer-Encoding": "chunked", "Content-Type": "application/json"}),
    )
    problem(answer, 413, "request_body_too_large")
    assert counter["charge"] == 0


def test_a_wsgi_middleware_inside_rewrites_what_the_guards_see(
    counter: Counter, clock: ManualClock
) -> None:
    app = payments_app(counter)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    Surefoot(app, store=SyncMemoryStore(), policies=[RateLimitPolicy("d", limits=["1/minute"])])
    client = app.test_client()
    for address in ("203.0.113.1", "203.0.113.2"):  # one bucket per client address
        assert client.get("/v1/charges", headers={"X-Forwarded-For": address}).status_code == 200
    refused = client.get("/v1/charges", headers={"X-Forwarded-For": "203.0.113.1"})
    problem(refused, 429, "rate_limit_exceeded")


def test_stores_by_url_opened_once_per_process(
    tmp_path: Any, counter: Counter, clock: ManualClock
) -> None:
    url = f"sqlite:///{tmp_path / 'surefoot.db'}"
    app, surefoot = build(
        counter,
        clock,
        store=url,
        rate_limit_store="memory://",
        routes=CHARGES,
        policies=[RateLimitPolicy("d", limits=["5/minute"])],
        max_stored_response=1024,
        fallback_workers=4,
    )
    client = app.test_client()
    first = client.post("/v1/charges", json={"amount": 3}, headers=keyed("u"))
    assert client.post("/v1/charges", json={"amount": 3}, headers=keyed("u")).data == first.data
    idempotency, limits = surefoot.idempotency_guard(app), surefoot.rate_limit_guard(app)
    assert idempotency is not None
    assert limits is not None
    assert type(idempotency.store).__name__ == "SyncSqliteStore"
    assert type(limits.store).__name__ == "SyncMemoryStore"
    # The decorators' guards share the app's stores.
    assert client.post("/views/payouts", json={}, headers=keyed("p")).status_code == 201
    assert (tmp_path / "surefoot.db").exists()
    assert counter["charge"] == 1


def test_a_view_limit_inside_the_app_wide_guard_releases_the_key(
    counter: Counter, clock: ManualClock
) -> None:
    routes = {"POST /views/search": IdempotencyPolicy()}
    app, _ = build(counter, clock, store=SyncMemoryStore(), routes=routes)
    client = app.test_client()
    assert client.post("/views/search", headers=keyed("k1")).status_code == 200
    problem(client.post("/views/search", headers=keyed("k2")), 429, "rate_limit_exceeded")
    clock.advance(60)
    retried = client.post("/views/search", headers=keyed("k2"))
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried.headers
    assert counter["search"] == 2
