"""The payments API: one ledger row per idempotency key, however often a client retries.

Theory of operation:
1. ``IdempotencyMiddleware`` wraps the whole FastAPI app. A ``POST`` without an
   ``Idempotency-Key`` header gets 400; a retry with the same key and body gets the
   first response back, byte for byte, without reaching the handler again.
2. The handler inserts the charge in one short transaction and builds its answer before
   committing, so nothing that can fail runs after the money moved. If the handler fails
   instead, the transaction rolls back and the policy's ``on_server_error="release"``
   (the default) lets the client's retry run. If a worker dies between the commit and
   the answer, its reservation expires after ``lease`` seconds and the key answers
   ``idempotency_outcome_unknown`` (``on_lease_expiry="unknown"``, the default) until an
   operator settles it with ``surefoot keys resolve``: a payment is never re-executed blind.
3. Both databases are SQLite files in WAL mode, shared by every uvicorn worker process:
   the store reserves each key atomically across processes, and ledger writes take
   SQLite's write lock with ``BEGIN IMMEDIATE`` and wait up to five seconds for it.
4. ``RateLimitMiddleware`` sits in front: each client (API key, else address) may create
   5 charges and 5 transfers a second (1000 an hour each), and read 50 times a second;
   every response says how much is left (``RateLimit``), and a refused request gets 429
   with ``Retry-After``.
5. ``POST /transfers`` shows the stronger pattern, exactly once inside the ledger's own
   transaction. The route is left out of the middleware; its handler opens one
   ``BEGIN IMMEDIATE`` transaction on the ledger, claims the key with ``TransactionalKeys``
   (a row in the ledger file), writes the transfer, records the response, and commits
   them together. A crash at any point leaves both or neither: no lease to wait out, no
   outcome unknown, and a retry either replays the answer or books the transfer now.
   A duplicate sent while the first is running waits for the write lock, then replays.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request, Response
from pydantic import BaseModel, Field

from surefoot.errors import StoreUnavailable
from surefoot.idempotency import (
    IdempotencyMiddleware,
    IdempotencyPolicy,
    StoredResponse,
    TransactionalKeys,
)
from surefoot.identity import default_principal
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy, install_problem_handler
from surefoot.storage import store_from_url

__all__ = ["create_app"]  # and `app`, built on first use (see __getattr__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    customer TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    id TEXT PRIMARY KEY,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    created TEXT NOT NULL
);
"""


class ChargeRequest(BaseModel):
    amount: int = Field(gt=0, description="In the currency's smallest unit (cents).")
    currency: str = Field(pattern=r"^[a-z]{3}$", description="ISO 4217 code, lower case.")
    customer: str = Field(min_length=1, max_length=64)


class TransferRequest(BaseModel):
    amount: int = Field(gt=0, description="In the currency's smallest unit (cents).")
    currency: str = Field(pattern=r"^[a-z]{3}$", description="ISO 4217 code, lower case.")
    source: str = Field(min_length=1, max_length=64, description="The customer who pays.")
    destination: str = Field(min_length=1, max_length=64, description="The account paid.")


class Ledger:
    """Charges and transfers in a SQLite file; one short-lived connection per operation.

    The transfers' idempotency keys live in the same file (``TransactionalKeys``), so a
    transfer and the answer to its key commit in one transaction.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.keys = TransactionalKeys(ttl=24 * 3600)
        with self._connect() as db:
            # WAL lets readers in every worker run while one of them writes.
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA + self.keys.ddl("sqlite"))
            # Keys past their TTL; a long-running service would do this every few minutes.
            while self.keys.purge(db, batch=1000) == 1000:
                pass

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # timeout: wait up to 5 s for another worker's write lock instead of failing.
        with closing(sqlite3.connect(self.path, timeout=5.0, isolation_level=None)) as db:
            db.row_factory = sqlite3.Row
            yield db

    def charge(self, request: ChargeRequest) -> dict[str, Any]:
        charge = {
            "id": "ch_" + secrets.token_hex(12),
            **request.model_dump(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO charges (id, amount, currency, customer, created) "
                    "VALUES (:id, :amount, :currency, :customer, :created)",
                    charge,
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return charge

    def transfer(
        self, request: TransferRequest, *, principal: str, key: str | None
    ) -> tuple[StoredResponse, bool]:
        """Book ``request`` once per key: (the response, whether it is a replay).

        The key, the transfer row and the response commit in one transaction, or none of
        them does. Raises the catalogue's errors (400, 409, 422, 503) for the app to render.
        """
        with self._connect() as db:
            try:
                # The write lock, up front: a duplicate of this key waits here (5 s at most)
                # and then sees our committed answer.
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # still locked after 5 s
                raise StoreUnavailable(retry_after=1) from exc
            try:
                claim = self.keys.claim(
                    db,
                    principal=principal,
                    key=key,
                    method="POST",
                    path="/transfers",
                    payload=request.model_dump(mode="json"),
                )
                if claim.replay is not None:
                    db.execute("ROLLBACK")  # nothing was written
                    return claim.replay, True
                transfer = {
                    "id": "tr_" + secrets.token_hex(12),
                    **request.model_dump(),
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                db.execute(
                    "INSERT INTO transfers (id, amount, currency, source, destination, created) "
                    "VALUES (:id, :amount, :currency, :source, :destination, :created)",
                    transfer,
                )
                body = json.dumps(transfer, separators=(",", ":")).encode()
                stored = claim.complete(201, {"content-type": "application/json"}, body)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return stored, False

    def transfers(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM transfers ORDER BY rowid").fetchall()
        return [dict(row) for row in rows]

    def all(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM charges ORDER BY rowid").fetchall()
        return [dict(row) for row in rows]

    def get(self, charge_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM charges WHERE id = ?", (charge_id,)).fetchone()
        return None if row is None else dict(row)


def create_app(ledger_path: str, store_url: str) -> RateLimitMiddleware:
    """The payments API on the ledger at ``ledger_path``, with keys kept in ``store_url``.

    Example:
        >>> app = create_app("payments.db", "sqlite:///idempotency.db")
    """
    ledger = Ledger(ledger_path)
    store = store_from_url(store_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await store.aclose()

    api = FastAPI(title="payments (surefoot example)", lifespan=lifespan)
    # surefoot's errors raised in handlers (from TransactionalKeys) become problem+json.
    install_problem_handler(api)

    # Plain ``def`` handlers: FastAPI runs them in a thread, so a wait for SQLite's
    # write lock never blocks the event loop.
    @api.post("/charges", status_code=201)
    def create_charge(request: ChargeRequest) -> dict[str, Any]:
        return ledger.charge(request)

    @api.get("/charges")
    def list_charges() -> dict[str, Any]:
        charges = ledger.all()
        return {"count": len(charges), "charges": charges}

    @api.get("/charges/{charge_id}")
    def get_charge(charge_id: str) -> dict[str, Any]:
        charge = ledger.get(charge_id)
        if charge is None:
            raise HTTPException(status_code=404, detail=f"no charge {charge_id!r}")
        return charge

    @api.post("/transfers", status_code=201)
    def create_transfer(
        transfer: TransferRequest,
        request: Request,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        stored, replayed = ledger.transfer(
            transfer, principal=default_principal(request.scope), key=idempotency_key
        )
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in stored.headers}
        if replayed:
            headers["idempotent-replayed"] = "true"
        return Response(stored.body, status_code=stored.status, headers=headers)

    @api.get("/transfers")
    def list_transfers() -> dict[str, Any]:
        transfers = ledger.transfers()
        return {"count": len(transfers), "transfers": transfers}

    protected = IdempotencyMiddleware(
        api,
        store=store,
        # Keep keys a day; a request unanswered after 30 s counts as abandoned (see 2. above).
        policy=IdempotencyPolicy(ttl=24 * 3600, lease=30),
        # Transfers keep their keys in the ledger's own transaction (see 5. above).
        routes={"POST /transfers": None},
    )
    # Rate limits go outside: a refused request never reaches the idempotency layer.
    return RateLimitMiddleware(
        protected,
        store=store,
        policies=[
            RateLimitPolicy("charges", limits=["5/second", "1000/hour"], routes=["POST /charges"]),
            RateLimitPolicy(
                "transfers", limits=["5/second", "1000/hour"], routes=["POST /transfers"]
            ),
            RateLimitPolicy(
                "reads", limits=["50/second"], routes=["GET /charges*", "GET /transfers"]
            ),
        ],
    )


def __getattr__(name: str) -> Any:
    # ``app`` is built on first use (``uvicorn examples.payments.app:app``), not on import,
    # so a test can import ``create_app`` without creating databases in the working directory.
    if name == "app":
        built = create_app(
            os.environ.get("PAYMENTS_LEDGER", "payments.db"),
            os.environ.get("SUREFOOT_STORE", "sqlite:///idempotency.db"),
        )
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
