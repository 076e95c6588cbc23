"""Flask apps for the tests: a payments-like app whose views count their executions, built
with the extension from arguments or from ``app.config``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask, abort, g, jsonify, request, stream_with_context

from surefoot.errors import StoreUnavailable
from surefoot.flask import Surefoot
from surefoot.storage import SyncMemoryStore

SECRET = "secret-host-10.0.0.7"


class Counter:
    """Executions per view (thread-safe), and a gate a view can wait on."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.closed = threading.Event()
        self._lock = threading.Lock()

    def hit(self, name: str) -> int:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            return self.counts[name]

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


class FlakySyncStore(SyncMemoryStore):
    """A ``SyncMemoryStore`` that can be taken down: every call raises ``StoreUnavailable``
    carrying a secret no response may show."""

    def __init__(self) -> None:
        super().__init__()
        self.is_down = False

    def down(self) -> None:
        self.is_down = True

    def _check(self) -> None:
        if self.is_down:
            error = StoreUnavailable(f"connect to {SECRET} refused", retry_after=1)
            error.__cause__ = ConnectionError(SECRET)
            raise error

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


def payments_app(counter: Counter, surefoot: Surefoot | None = None) -> Flask:
    """The views every test uses; ``surefoot`` decorates the ``/views/*`` ones."""
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a 500, as in production

    @app.post("/v1/charges")
    def charge() -> Any:
        number = counter.hit("charge")
        if counter.gate is not None:
            counter.entered.set()
            assert counter.gate.wait(30), "the test never opened the gate"
        payload = request.get_json(silent=True) or {}
        if payload.get("fail") == "abort":
            abort(403, "card declined")
        if payload.get("fail") == "raise":
            raise RuntimeError(f"database exploded: {SECRET}")
        body = jsonify(id=f"ch_{number}", amount=payload.get("amount"))
        body.headers["X-Charge"] = f"ch_{number}"
        return body, 201

    @app.get("/v1/charges")
    def charges() -> Any:
        return {"count": counter["charge"]}

    @app.post("/v1/reports")
    def report() -> Any:
        counter.hit("report")
        rows = int((request.get_json(silent=True) or {}).get("rows", 3))

        def lines() -> Iterator[str]:
            try:
                for i in range(rows):
                    yield f"row {i}\n"
            finally:
                counter.closed.set()

        return app.response_class(stream_with_context(lines()), mimetype="text/csv")

    @app.post("/v1/store-error")
    def store_error() -> Any:
        counter.hit("store-error")
        raise StoreUnavailable(f"connect to {SECRET} refused", retry_after=2)

    if surefoot is not None:

        @app.post("/views/refunds")
        @surefoot.limit("2/minute", key=lambda: request.headers.get("X-Account"))
        @surefoot.idempotent(ttl=3600)
        def refund() -> Any:
            number = counter.hit("refund")
            return {"id": f"re_{number}"}, 201

        @app.route("/views/search", methods=["GET", "POST"])
        @surefoot.limit("1/minute", methods=["POST"], name="search-writes")
        def search() -> Any:
            counter.hit("search")
            return {"ok": True}

        @app.post("/views/payouts")
        @surefoot.idempotent(on_server_error="store")
        def payout() -> Any:
            number = counter.hit("payout")
            if (request.get_json(silent=True) or {}).get("fail"):
                raise RuntimeError("bank down")
            return {"id": f"po_{number}"}, 201

        @app.get("/views/account")
        @surefoot.limit("5/minute", key=lambda: g.get("account"))
        def account() -> Any:
            counter.hit("account")
            return {"ok": True}

    return app
