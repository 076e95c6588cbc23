"""The app ``test_flask_gunicorn.py`` runs under gunicorn's sync workers: configured from
``app.config["SUREFOOT"]`` (the store URL in ``SUREFOOT_TEST_STORE``), each execution of
the charge view appended to the ledger file ``SUREFOOT_TEST_LEDGER``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, request

from _support import record_execution
from surefoot.flask import Surefoot

app = Flask(__name__)
app.config["SUREFOOT"] = {
    "stores": {"default": os.environ["SUREFOOT_TEST_STORE"]},
    "idempotency": {"lease": 30},
    "rate_limit": {
        "policies": [
            {
                "name": "shared",
                "limits": ["30/minute"],
                "algorithm": "sliding_log",
                "routes": ["GET /limited"],
            }
        ]
    },
    "routes": [{"match": "GET /health", "idempotency": False}],
}
surefoot = Surefoot(app)
LEDGER = Path(os.environ["SUREFOOT_TEST_LEDGER"])


@app.post("/charges")
def charge() -> Any:
    key = request.headers.get("Idempotency-Key", "-")
    record_execution(LEDGER, "charge", key)
    return {"id": f"ch_{os.getpid()}", "amount": (request.get_json() or {}).get("amount")}, 201


@app.get("/limited")
def limited() -> Any:
    return {"ok": True}


@app.get("/health")
def health() -> Any:
    return {"pid": os.getpid()}
