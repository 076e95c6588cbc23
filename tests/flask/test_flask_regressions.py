"""Regressions found in review: who a cookie-session caller is, bodies without a length,
``MethodView``, keyed and named limits, ``send_file``, ``HEAD``, async views, a failing
``after_request`` hook, and what ``app.config`` turns on."""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import pytest
from flask import Blueprint, Flask, Response, g, request, send_file, session
from flask.views import MethodView
from werkzeug.test import EnvironBuilder, run_wsgi_app

from surefoot.errors import ConfigurationError
from surefoot.flask import Surefoot
from surefoot.idempotency import IdempotencyPolicy
from surefoot.ratelimit import Limit, RateLimitPolicy
from surefoot.storage import SyncMemoryStore
from surefoot.testing import ManualClock

PROBLEM = "application/problem+json"
ONE_SLOT = Limit(1, 1, algorithm="concurrency", lease=60)


def code(response: Any) -> str:
    assert response.headers["Content-Type"] == PROBLEM
    value: str = json.loads(response.data)["code"]
    return value


def make(clock: ManualClock, **options: Any) -> tuple[Flask, Surefoot]:
    app = Flask(__name__)
    options.setdefault("store", SyncMemoryStore())
    return app, Surefoot(clock=clock, hooks=[], **options)


class User:
    """What ``user=`` returns: ``is_authenticated`` and ``identity``."""

    def __init__(self, name: str) -> None:
        self.identity = name
        self.is_authenticated = True


def cookie_app(clock: ManualClock, **options: Any) -> tuple[Flask, list[str]]:
    app, surefoot = make(clock, routes={"POST /v1/orders": IdempotencyPolicy()}, **options)
    app.secret_key = "test"
    ran: list[str] = []

    @app.before_request
    def authenticate() -> None:
        name = session.get("user")
        g.user = None if name is None else User(name)

    @app.post("/login/<name>")
    def login(name: str) -> Any:
        session["user"] = name
        return "ok"

    @app.post("/v1/orders")
    def order() -> Any:
        ran.append(session["user"])
        return {"card": f"{session['user']}'s card"}, 201

    surefoot.init_app(app)
    return app, ran


def test_cookie_sessions_are_scoped_by_the_user(clock: ManualClock) -> None:
    app, ran = cookie_app(clock, user=lambda: g.user)
    alice, bob = app.test_client(), app.test_client()
    alice.post("/login/alice")
    bob.post("/login/bob")
    key = {"Idempotency-Key": "cart-17"}
    assert alice.post("/v1/orders", json={}, headers=key).get_json() == {"card": "alice's card"}
    answer = bob.post("/v1/orders", json={}, headers=key)
    assert answer.get_json() == {"card": "bob's card"}
    assert "Idempotent-Replayed" not in answer.headers
    replay = alice.post("/v1/orders", json={}, headers=key)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert ran == ["alice", "bob"]


def test_a_cookie_caller_known_only_by_address_is_refused(clock: ManualClock) -> None:
    app, ran = cookie_app(clock)
    client = app.test_client()
    client.post("/login/alice")
    answer = client.post("/v1/orders", json={}, headers={"Idempotency-Key": "cart-17"})
    assert answer.status_code == 500
    assert code(answer) == "configuration_error"
    # An API key names the caller: its cookie is no concern.
    keyed = client.post(
        "/v1/orders", json={}, headers={"Idempotency-Key": "cart-18", "X-API-Key": "sk_1"}
    )
    assert keyed.status_code == 201
    assert ran == ["alice"]


def chunked(app: Flask, path: str, stream: io.BytesIO, key: str) -> tuple[int, bytes]:
    """A POST without ``Content-Length``, as a server hands a chunked body over (the test
    client always sets the length)."""
    environ = EnvironBuilder(
        path=path, method="POST", input_stream=stream, headers={"Idempotency-Key": key}
    ).get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    body, status, _ = run_wsgi_app(app, environ, buffered=True)
    return int(status.split()[0]), b"".join(body)


def test_a_chunked_body_over_the_bound_is_never_truncated(clock: ManualClock) -> None:
    app, surefoot = make(clock, idempotency=IdempotencyPolicy(), max_request_body=1000)
    seen: list[int] = []

    @app.post("/notes")
    def notes() -> Any:
        seen.append(len(request.get_data()))
        return "ok", 201

    surefoot.init_app(app)
    for size, status in ((3000, 413), (1001, 413), (1000, 201)):
        answer = chunked(app, "/notes", io.BytesIO(b"A" * size), str(size))
        assert answer[0] == status
    assert seen == [1000]
    status, body = chunked(app, "/notes", io.BytesIO(b"A" * 3000), "again")
    assert json.loads(body)["code"] == "request_body_too_large"


def test_an_unreadable_chunked_body_is_a_problem(clock: ManualClock) -> None:
    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError("Invalid chunk header")

        def readinto(self, buffer: Any) -> int:
            raise OSError("Invalid chunk header")

    app, surefoot = make(clock, idempotency=IdempotencyPolicy())
    app.post("/c")(lambda: "ran")
    surefoot.init_app(app)
    status, body = chunked(app, "/c", Broken(), "b")
    assert status == 400
    assert json.loads(body)["code"] == "bad_request"


def test_a_method_view_decorated_under_an_app_wide_policy(clock: ManualClock) -> None:
    app, surefoot = make(clock, idempotency=IdempotencyPolicy())  # releases after a 5xx
    runs: list[int] = []

    class Payouts(MethodView):
        @surefoot.idempotent(on_server_error="store")  # the method's own policy applies
        def post(self) -> Any:
            runs.append(1)
            return {"payout": len(runs)}, 500 if len(runs) == 1 else 201

    app.add_url_rule("/payouts", view_func=Payouts.as_view("payouts"))
    surefoot.init_app(app)
    client = app.test_client()
    first = client.post("/payouts", json={}, headers={"Idempotency-Key": "p1"})
    assert first.status_code == 500
    again = client.post("/payouts", json={}, headers={"Idempotency-Key": "p1"})
    assert again.status_code == 500
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data
    assert runs == [1]


def test_a_view_wrapped_twice_runs_inside_one_reservation(clock: ManualClock) -> None:
    app, surefoot = make(clock, idempotency=IdempotencyPolicy())

    def hide(view: Any) -> Any:  # a decorator without functools.wraps
        return lambda: view()

    app.post("/hidden")(hide(surefoot.idempotent()(lambda: ("ok", 201))))
    surefoot.init_app(app)
    client = app.test_client()
    assert client.post("/hidden", headers={"Idempotency-Key": "h"}).status_code == 201
    again = client.post("/hidden", headers={"Idempotency-Key": "h"})
    assert again.headers["Idempotent-Replayed"] == "true"


def test_a_key_answering_none_counts_unknown_credentials_by_address(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_KEY", "sk_acme_demo")
    app = Flask(__name__)
    app.config["SUREFOOT"] = {
        "stores": {"default": "memory://"},
        "clients": [{"name": "acme", "api_key_env": "ACME_KEY"}],
    }
    surefoot = Surefoot(app, clock=clock, hooks=[])
    app.post("/login")(surefoot.limit("2/minute", key=lambda: g.get("account"))(lambda: "ok"))
    client = app.test_client()
    codes = [
        client.post("/login", headers={"X-API-Key": uuid.uuid4().hex}).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 429]


def test_send_file_holds_its_slot_until_sent(clock: ManualClock) -> None:
    app, surefoot = make(clock, policies=[RateLimitPolicy("dl", limits=[ONE_SLOT])])

    @app.get("/file")
    def file() -> Any:
        return send_file(io.BytesIO(b"x" * 1000), mimetype="text/csv")

    surefoot.init_app(app)
    client = app.test_client()
    first = client.get("/file", buffered=False)
    assert first.status_code == 200
    assert code(client.get("/file")) == "concurrency_limit_exceeded"
    first.close()
    assert client.get("/file").status_code == 200


def test_head_counts_as_the_get_it_is(clock: ManualClock) -> None:
    app, surefoot = make(clock)
    runs: list[str] = []

    @app.get("/export")
    @surefoot.limit("1/minute", methods=["GET"])
    def export() -> Any:
        runs.append(request.method)
        return "csv"

    surefoot.init_app(app)
    client = app.test_client()
    assert client.head("/export").status_code == 200
    assert client.head("/export").status_code == 429
    assert client.get("/export").status_code == 429
    assert runs == ["HEAD"]


def test_unnamed_limits_count_per_endpoint(clock: ManualClock) -> None:
    app, surefoot = make(clock)

    def blueprint(name: str, limit: str) -> Blueprint:
        bp = Blueprint(name, __name__, url_prefix="/" + name)

        class Items(MethodView):
            decorators = (surefoot.limit(limit),)

            def post(self) -> Any:
                return name

        bp.add_url_rule("/items", view_func=Items.as_view("items"))
        return bp

    def plain(view: Any) -> Any:  # a decorator without functools.wraps
        def wrapper() -> Any:
            return view()

        return wrapper

    app.register_blueprint(blueprint("orders", "1/minute"))
    app.register_blueprint(blueprint("users", "100/minute"))
    app.post("/x", endpoint="x")(surefoot.limit("1/minute")(plain(lambda: "x")))
    app.post("/y", endpoint="y")(surefoot.limit("50/minute")(plain(lambda: "y")))
    surefoot.init_app(app)
    client = app.test_client()
    for _ in range(3):
        assert client.post("/users/items").status_code == 200
        assert client.post("/y").status_code == 200
    first = client.post("/orders/items")
    assert first.status_code == 200
    assert first.headers["RateLimit-Policy"].startswith('"orders.items";q=1')
    assert client.post("/x").status_code == 200
    assert client.post("/x").status_code == 429


def test_a_limit_named_like_an_app_wide_policy_is_refused(clock: ManualClock) -> None:
    wide = [RateLimitPolicy("charges", limits=["4/minute"])]
    _, surefoot = make(clock, policies=wide)
    with pytest.raises(ConfigurationError, match="'charges'"):
        surefoot.limit("4/minute", name="charges")(lambda: "ok")
    # Decorated first, then set up from app.config.
    app = Flask(__name__)
    app.config["SUREFOOT"] = {
        "stores": {"default": "memory://"},
        "rate_limit": {"policies": [{"name": "charges", "limits": ["4/minute"]}]},
    }
    other = Surefoot(clock=clock)
    app.post("/c")(other.limit("4/minute", name="charges")(lambda: "ok"))
    with pytest.raises(ConfigurationError, match="'charges'"):
        other.init_app(app)


def test_async_views_under_both_decorators(clock: ManualClock) -> None:
    app, surefoot = make(clock)

    @app.post("/aidem")
    @surefoot.idempotent()
    async def aidem() -> Any:
        return {"ok": True}, 201

    @app.post("/alim")
    @surefoot.limit("5/minute")
    async def alim() -> Any:
        return "ok"

    surefoot.init_app(app)
    client = app.test_client()
    assert client.post("/aidem", headers={"Idempotency-Key": "k1"}).status_code == 201
    replay = client.post("/aidem", headers={"Idempotency-Key": "k1"})
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert client.post("/alim").status_code == 200


def test_a_failing_after_request_hook_frees_key_and_slot(clock: ManualClock) -> None:
    policy = RateLimitPolicy("one", limits=[ONE_SLOT], routes=["POST /export"])
    app, surefoot = make(clock, routes={"POST /export": IdempotencyPolicy()}, policies=[policy])
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.after_request
    def audit(response: Response) -> Response:  # registered before init_app: runs after
        if request.headers.get("X-Fail"):
            raise RuntimeError("audit db down")
        return response

    @app.post("/export")
    def export() -> Any:
        return Response(iter([b"a,b\n", b"1,2\n"]), mimetype="text/csv")

    surefoot.init_app(app)
    client = app.test_client()
    failed = client.post("/export", headers={"Idempotency-Key": "e1", "X-Fail": "1"})
    assert failed.status_code == 500
    retried = client.post("/export", headers={"Idempotency-Key": "e1"})
    assert retried.status_code == 200
    assert retried.data == b"a,b\n1,2\n"


def test_a_rate_limit_alone_asks_no_idempotency_key(clock: ManualClock) -> None:
    app = Flask(__name__)
    app.config["SUREFOOT"] = {
        "stores": {"default": "memory://"},
        "rate_limit": {"policies": [{"name": "d", "limits": ["100/minute"]}]},
        "routes": [{"match": "POST /pay", "idempotency": {"ttl": 3600}}],
    }
    surefoot = Surefoot(app, clock=clock, hooks=[])
    app.post("/login")(lambda: "ok")
    app.post("/pay", endpoint="pay")(lambda: "paid")
    client = app.test_client()
    assert client.post("/login", data={"u": "a"}).status_code == 200
    assert code(client.post("/pay")) == "idempotency_key_missing"
    assert surefoot.rate_limit_guard(app) is not None
    app2 = Flask(__name__)
    app2.config["SUREFOOT"] = {"stores": {"default": "memory://"}, "rate_limit": {}}
    assert Surefoot(app2).idempotency_guard(app2) is None


def test_a_store_directory_that_does_not_exist_fails_init_app(tmp_path: Any) -> None:
    missing = f"sqlite:///{tmp_path}/nope/x.db"
    app = Flask(__name__)
    app.config["SUREFOOT"] = {"stores": {"default": missing}, "idempotency": {"ttl": 3600}}
    with pytest.raises(ConfigurationError, match=r"SUREFOOT'\] idempotency store.*nope"):
        Surefoot(app)
    with pytest.raises(ConfigurationError, match=r"Surefoot\(rate_limit_store=\)"):
        Surefoot(Flask(__name__), store="memory://", rate_limit_store=missing)
    assert not os.path.exists(f"{tmp_path}/nope")


def test_a_store_that_cannot_be_opened_names_its_field(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "db").mkdir()  # a directory where the database file should be
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.config["SUREFOOT"] = {
        "stores": {"default": f"sqlite:///{tmp_path}/db"},
        "idempotency": {"ttl": 3600},
    }
    Surefoot(app)
    app.post("/x")(lambda: "ran")
    answer = app.test_client().post("/x", headers={"Idempotency-Key": "k"})
    assert answer.status_code == 500
    assert "app.config['SUREFOOT'] idempotency store" in caplog.text
