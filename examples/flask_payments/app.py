"""The Flask payments API: one ledger row per idempotency key, however often a client retries,
and per-client limits shared by every gunicorn worker.

Theory of operation:
1. ``app.config["SUREFOOT"]`` holds the tables of surefoot's policy file (the gateway's
   format: ``stores``, ``clients``, ``idempotency``, ``rate_limit``, ``routes``), and
   ``Surefoot(app)`` reads them. Every ``POST`` needs an ``Idempotency-Key``: a retry with
   the same key and body gets the first response back, byte for byte, without reaching
   the view again; the same key with another body gets 422.
2. Each client may send 3 charge requests a minute, the partner ``acme`` 20 (its tier). The
   count is per API key and shared by every worker process through the store, and every
   response says how much is left (``RateLimit``); a refused request gets 429 with
   ``Retry-After``, through Flask's error handling (``@app.errorhandler(429)`` would see it).
3. ``POST /v1/refunds`` has its own rules, by decorator: 2 refunds a minute per account,
   and a refund that failed with a 5xx is replayed as it failed (``on_server_error="store"``),
   never run twice.
4. ``GET /v1/charges/export`` streams the ledger as CSV (``stream_with_context``), limited
   to one export at a time per client (a concurrency limit: the slot comes back when the
   response is closed).
5. Both databases are SQLite files in WAL mode shared by the worker processes: the ledger
   (``PAYMENTS_LEDGER``) and surefoot's store (``SUREFOOT_STORE``, any store URL: Redis
   for several hosts). The ledger is opened per request, so forking is safe.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from flask import Flask, g, request, stream_with_context

from surefoot.flask import Surefoot
from surefoot.ratelimit import Limit

__all__ = ["app", "surefoot"]

LEDGER = os.environ.get("PAYMENTS_LEDGER", "payments.db")
#: The API keys of the demo's clients (in production: from the environment only).
ACME_KEY = os.environ.get("ACME_KEY", "sk_acme_demo")
GLOBEX_KEY = os.environ.get("GLOBEX_KEY", "sk_globex_demo")
CLIENTS = {ACME_KEY: "acme", GLOBEX_KEY: "globex"}

app = Flask(__name__)
app.config["SUREFOOT"] = {
    "stores": {"default": os.environ.get("SUREFOOT_STORE", "sqlite:///surefoot.db")},
    "clients": [
        {"name": "acme", "api_key": ACME_KEY, "tier": "partner"},
        {"name": "globex", "api_key": GLOBEX_KEY},
    ],
    "idempotency": {"ttl": 86400},
    "rate_limit": {
        "policies": [
            {
                "name": "charges",
                "limits": ["3/minute"],
                "routes": ["POST /v1/charges"],
                "tiers": {"partner": ["20/minute"]},
            }
        ]
    },
}
surefoot = Surefoot(app)


def _ledger() -> sqlite3.Connection:
    db = sqlite3.connect(LEDGER, timeout=5, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS charges (id TEXT PRIMARY KEY, client TEXT NOT NULL,"
        " amount INTEGER NOT NULL, currency TEXT NOT NULL, pid INTEGER NOT NULL)"
    )
    return db


@app.before_request
def authenticate() -> Any:
    # surefoot's own hook ran first: a refused request costs this nothing.
    client = CLIENTS.get(request.headers.get("X-API-Key", ""))
    if client is None:
        return {"error": "unknown API key"}, 401
    g.client = client
    return None


@app.post("/v1/charges")
def create_charge() -> Any:
    payload = request.get_json(silent=True) or {}
    amount, currency = payload.get("amount"), payload.get("currency", "eur")
    if not isinstance(amount, int) or amount <= 0:
        return {"error": "amount must be a positive whole number of cents"}, 400
    charge = {"id": f"ch_{uuid.uuid4().hex[:12]}", "amount": amount, "currency": currency}
    with closing(_ledger()) as db:
        db.execute(
            "INSERT INTO charges VALUES (?, ?, ?, ?, ?)",
            (charge["id"], g.client, amount, currency, os.getpid()),
        )
    return charge, 201


@app.get("/v1/charges")
def list_charges() -> Any:
    with closing(_ledger()) as db:
        rows = db.execute("SELECT id, amount, currency FROM charges WHERE client = ?", (g.client,))
        charges = [{"id": i, "amount": a, "currency": c} for i, a, c in rows]
    return {"count": len(charges), "charges": charges}


@app.get("/v1/charges/export")
@surefoot.limit(Limit(1, 1, algorithm="concurrency", lease=60), key=lambda: g.client)
def export_charges() -> Any:
    def rows() -> Iterator[str]:
        yield "id,amount,currency\n"
        with closing(_ledger()) as db:
            query = "SELECT id, amount, currency FROM charges WHERE client = ? ORDER BY rowid"
            for charge_id, amount, currency in db.execute(query, (g.client,)):
                yield f"{charge_id},{amount},{currency}\n"

    return app.response_class(stream_with_context(rows()), mimetype="text/csv")


@app.post("/v1/refunds")
@surefoot.limit("2/minute", key=lambda: g.client)
@surefoot.idempotent(ttl=86400, on_server_error="store")
def create_refund() -> Any:
    payload = request.get_json(silent=True) or {}
    with closing(_ledger()) as db:
        found = db.execute(
            "SELECT amount FROM charges WHERE id = ? AND client = ?",
            (payload.get("charge"), g.client),
        ).fetchone()
    if found is None:
        return {"error": "no such charge"}, 404
    return {
        "id": f"re_{uuid.uuid4().hex[:12]}",
        "charge": payload["charge"],
        "amount": found[0],
    }, 201
