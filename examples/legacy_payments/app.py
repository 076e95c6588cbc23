"""A legacy payments API: no idempotency, and a charge may commit and still answer 500.

This is the upstream that the gateway (``surefoot serve``) sits in front of, in demos and
in the gateway's tests. It knows nothing about surefoot, on purpose: it is the kind of
service the gateway exists to protect.

Theory of operation:
1. ``POST /charges`` books a charge in one short SQLite transaction and answers 201 with
   it. There is no idempotency here: the same body sent twice is two charges. An
   ``Idempotency-Key`` header, when a client or the gateway forwards one, is stored beside
   the charge for auditing and never checked, so it does not prevent anything.
2. What makes it "legacy": with probability ``fail_after_commit`` the charge is committed
   and the app then answers ``500 {"error": "internal error"}``. A client that retries
   that 500 charges the customer twice. The draw comes from a ``random.Random(seed)`` the
   app owns, one draw per valid charge request, so a seeded app fails on the same requests
   every run (each uvicorn worker has its own generator). The ``X-Legacy-Fail`` header
   decides one request instead, without a draw: ``after-commit`` commits then answers 500,
   ``before-commit`` answers 500 and writes nothing.
3. A caller names its own order in ``reference``. ``GET /charges/by-reference/{reference}``
   answers the most recent charge with that reference, or 404: it is how the gateway learns
   whether a charge whose answer was lost really happened. ``GET /audit`` lists the
   references booked more than once: the double charges a drill counts.
4. The ledger is one SQLite file in WAL mode shared by every uvicorn worker process. Each
   operation opens its own short connection; a write takes the write lock up front with
   ``BEGIN IMMEDIATE`` and waits up to five seconds for it.
5. ``GET /slow?seconds=x`` answers late and ``/status/{code}`` answers any status, so the
   gateway's tests can exercise its timeouts and circuit breakers.

``app`` is built on first use (``uvicorn examples.legacy_payments.app:app``) from
``$LEGACY_LEDGER`` (the SQLite file, default ``legacy_ledger.db`` in the working directory),
``$LEGACY_FAIL_AFTER_COMMIT`` (0 to 1, default 0) and ``$LEGACY_SEED`` (an integer; unset
means an unseeded generator).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

__all__ = ["DEFAULT_LEDGER", "create_app"]  # and `app`, built on first use (see __getattr__)

DEFAULT_LEDGER = "legacy_ledger.db"

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    customer TEXT NOT NULL,
    reference TEXT,
    created TEXT NOT NULL,
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS charges_by_reference ON charges (reference);
CREATE INDEX IF NOT EXISTS charges_by_customer ON charges (customer);
"""
# What the API shows of a charge: every column but the forwarded key, kept for audits only.
# Rows are never deleted, so rowid order is booking order.
_CHARGE = "SELECT id, amount, currency, customer, reference, created FROM charges"


class ChargeRequest(BaseModel):
    amount: int = Field(gt=0, strict=True, description="In the currency's smallest unit.")
    currency: str = Field(pattern=r"^[a-z]{3}$", description="ISO 4217 code, lower case.")
    customer: str = Field(min_length=1, max_length=64)
    reference: str | None = Field(
        default=None, min_length=1, max_length=128, description="The caller's own order id."
    )


class Ledger:
    """Charges in a SQLite file; one short-lived connection per operation."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as db:
            # WAL lets readers in every worker run while one of them writes.
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # timeout: wait up to 5 s for another worker's write lock instead of failing.
        with closing(sqlite3.connect(self.path, timeout=5.0, isolation_level=None)) as db:
            db.row_factory = sqlite3.Row
            yield db

    def charge(self, request: ChargeRequest, *, idempotency_key: str | None) -> dict[str, Any]:
        charge = {
            "id": "ch_" + secrets.token_hex(12),
            **request.model_dump(),
            "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO charges "
                    "(id, amount, currency, customer, reference, created, idempotency_key) "
                    "VALUES (:id, :amount, :currency, :customer, :reference, :created, :key)",
                    {**charge, "key": idempotency_key},
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return charge

    def get(self, charge_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(_CHARGE + " WHERE id = ?", (charge_id,)).fetchone()
        return None if row is None else dict(row)

    def by_reference(self, reference: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(
                _CHARGE + " WHERE reference = ? ORDER BY rowid DESC LIMIT 1", (reference,)
            ).fetchone()
        return None if row is None else dict(row)

    def newest(self, *, customer: str | None, limit: int) -> list[dict[str, Any]]:
        with self._connect() as db:
            if customer is None:
                rows = db.execute(_CHARGE + " ORDER BY rowid DESC LIMIT ?", (limit,))
            else:
                rows = db.execute(
                    _CHARGE + " WHERE customer = ? ORDER BY rowid DESC LIMIT ?", (customer, limit)
                )
            return [dict(row) for row in rows]

    def audit(self) -> dict[str, Any]:
        with self._connect() as db:
            # One read transaction: the counts and the list come from the same snapshot.
            db.execute("BEGIN")
            charges, references = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT reference) FROM charges"
            ).fetchone()
            duplicated = db.execute(
                "SELECT reference FROM charges WHERE reference IS NOT NULL "
                "GROUP BY reference HAVING COUNT(*) > 1 ORDER BY reference"
            ).fetchall()
            db.execute("COMMIT")
        return {
            "charges": charges,
            "references": references,
            "duplicated_references": [row["reference"] for row in duplicated],
        }


def _internal_error() -> JSONResponse:
    # All a legacy client ever learns: not whether the money moved.
    return JSONResponse({"error": "internal error"}, status_code=500)


def _not_found() -> JSONResponse:
    return JSONResponse({"error": "not found"}, status_code=404)


def create_app(
    ledger_path: str | None = None, *, fail_after_commit: float = 0.0, seed: int | None = None
) -> FastAPI:
    """The legacy payments API on the ledger at ``ledger_path``.

    Example:
        >>> app = create_app("legacy_ledger.db", fail_after_commit=0.3, seed=7)

    Args:
        ledger_path: The SQLite file, created if missing; default ``legacy_ledger.db`` in
            the working directory.
        fail_after_commit: The probability that a charge is committed and then answered
            with 500, from 0 (never) to 1 (always).
        seed: Seeds the app's own generator of those failures; ``None`` for an unseeded one.

    Warning:
        This app double-charges on purpose: it has no idempotency, and a retried 500 may
        book the charge again. Put the gateway in front of it; never copy it.
    """
    if not 0.0 <= fail_after_commit <= 1.0:
        raise ValueError(f"fail_after_commit must be between 0 and 1, not {fail_after_commit!r}")
    ledger = Ledger(DEFAULT_LEDGER if ledger_path is None else ledger_path)
    rng = random.Random(seed)

    api = FastAPI(title="legacy payments (no idempotency; the gateway's demo upstream)")

    # Plain ``def`` handlers: FastAPI runs them in a thread, so a wait for SQLite's
    # write lock never blocks the event loop.
    @api.post("/charges", status_code=201)
    def create_charge(
        request: ChargeRequest,
        idempotency_key: Annotated[str | None, Header()] = None,
        x_legacy_fail: Annotated[Literal["before-commit", "after-commit"] | None, Header()] = None,
    ) -> Response:
        # Random.random() is one C call under the GIL: safe from the handlers' threads.
        fail = x_legacy_fail
        if fail is None and rng.random() < fail_after_commit:
            fail = "after-commit"
        if fail == "before-commit":
            logger.warning("injected failure before commit: nothing booked, answering 500")
            return _internal_error()
        charge = ledger.charge(request, idempotency_key=idempotency_key)
        if fail == "after-commit":
            logger.warning("injected failure after commit: %s booked, answering 500", charge["id"])
            return _internal_error()
        return JSONResponse(charge, status_code=201)

    @api.get("/charges")
    def list_charges(
        customer: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        return {"data": ledger.newest(customer=customer, limit=limit)}

    # ``:path``: a reference may contain "/" (sent as %2F, which the server decodes).
    @api.get("/charges/by-reference/{reference:path}")
    def get_charge_by_reference(reference: str) -> Response:
        charge = ledger.by_reference(reference)
        return _not_found() if charge is None else JSONResponse(charge)

    @api.get("/charges/{charge_id}")
    def get_charge(charge_id: str) -> Response:
        charge = ledger.get(charge_id)
        return _not_found() if charge is None else JSONResponse(charge)

    @api.get("/audit")
    def audit() -> dict[str, Any]:
        return ledger.audit()

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/slow")
    async def slow(seconds: Annotated[float, Query(ge=0, le=30)] = 1.0) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @api.api_route("/status/{code}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def status(code: Annotated[int, Path(ge=200, le=599)]) -> Response:
        if code in (204, 205, 304):  # statuses that must not have a body
            return Response(status_code=code)
        return JSONResponse({"status": code}, status_code=code)

    return api


def _from_environ(environ: Mapping[str, str]) -> FastAPI:
    seed = environ.get("LEGACY_SEED")
    return create_app(
        environ.get("LEGACY_LEDGER") or None,
        fail_after_commit=float(environ.get("LEGACY_FAIL_AFTER_COMMIT") or 0.0),
        seed=int(seed) if seed else None,
    )


def __getattr__(name: str) -> Any:
    # ``app`` is built on first use, not on import, so a test can import ``create_app``
    # without creating a ledger in the working directory.
    if name == "app":
        built = _from_environ(os.environ)
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
