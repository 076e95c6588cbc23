"""Three partners of the checkout, in one Starlette app: stock, payments and shipping.

Each keeps its ledger in one SQLite file, and each honours ``Idempotency-Key`` the way
Stripe does: the first request with a key does the work and stores its answer in the same
transaction; a later request with that key gets the stored answer again and does nothing
(a different body under the same key is a 422).

    POST /stock/reservations {order, sku, quantity}        201 {reservation, state}
    POST /stock/releases {order}                           200 {released: [ids]}
    POST /payments/charges {reference, amount, card}       201 {charge, reference, amount}
                                                           402 when card is "declined"
    GET  /payments/charges?reference=R                     200 {data: [charges]}
    POST /payments/refunds {charge}                        201 {refund, charge}
    POST /shipping/shipments {order, address}              201 {shipment}
                                                           422 when the address has "Nowhere"

Payments is flaky on ``POST /payments/charges`` when given ``Faults``: a share of the
requests is refused with 503 before any work (``unavailable``), a share is charged and
then never answered until the caller gives up (``timeout``), a share is charged and then
answered 502, as a load balancer does when the connection behind it broke (``lost``).
A repeated request with the same key can meet a fault again: only its effect is once.

Run them with ``uvicorn --factory examples.checkout.partners:from_env --port 8700``;
``CHECKOUT_PARTNERS_DB`` names the ledger (default ``partners.db``) and
``CHECKOUT_FAULTS`` the faults (e.g. ``timeout=0.1,unavailable=0.1,lost=0.05,seed=7``,
or ``timeout=1,only=order-2`` for every charge of order-2 and no other)
and ``CHECKOUT_FAULT_LOG`` a file where each fault met is appended, one JSON line each.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

__all__ = ["Faults", "Ledger", "create_app", "from_env", "read_ledger"]

_TABLES = """
CREATE TABLE IF NOT EXISTS keys (
    partner TEXT NOT NULL, key TEXT NOT NULL, request TEXT NOT NULL,
    status INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (partner, key));
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, order_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL,
    state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY, reference TEXT NOT NULL, amount INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refunds (id TEXT PRIMARY KEY, charge TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS shipments (
    id TEXT PRIMARY KEY, order_id TEXT NOT NULL, address TEXT NOT NULL);
"""
#: What a request did: (status, body).
Answer = tuple[int, dict[str, Any]]


@dataclass
class Faults:
    """How flaky ``POST /payments/charges`` is: each a share of the requests, in [0, 1].

    Args:
        unavailable: answered 503 before any work.
        timeout: charged, then left unanswered until the caller hangs up.
        lost: charged, then answered 502.
        references: only charges with these references meet faults (None: all).
        seed: the random draws' seed (None: unseeded).
        journal: a file to append each fault to (``{"fault", "reference"}`` lines).
    """

    unavailable: float = 0.0
    timeout: float = 0.0
    lost: float = 0.0
    references: frozenset[str] | None = None
    seed: int | None = None
    journal: str | None = None
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    @classmethod
    def parse(cls, text: str) -> Faults:
        """``"timeout=0.1,unavailable=0.1,lost=0.05,seed=7"`` (empty: no faults);
        ``only=order-2+order-5`` limits them to those references."""
        values = {k.strip(): v for k, v in (i.split("=", 1) for i in text.split(",") if i.strip())}
        seed, only = values.pop("seed", None), values.pop("only", None)
        faults = cls(
            seed=None if seed is None else int(seed),
            references=None if only is None else frozenset(only.split("+")),
        )
        for name, value in values.items():
            if name not in ("unavailable", "timeout", "lost"):
                raise ValueError(f"CHECKOUT_FAULTS: unknown fault {name!r}")
            setattr(faults, name, float(value))
        return faults

    def draw(self, reference: str) -> str | None:
        """The fault this request meets: "unavailable", "timeout", "lost" or None."""
        if self.references is not None and reference not in self.references:
            return None
        x = self._random.random()
        for name in ("unavailable", "timeout", "lost"):
            share: float = getattr(self, name)
            if x < share:
                if self.journal is not None:
                    with open(self.journal, "a") as out:
                        out.write(json.dumps({"fault": name, "reference": reference}) + "\n")
                return name
            x -= share
        return None


def _respond(answer: Answer) -> JSONResponse:
    status, body = answer
    return JSONResponse(body, status)


class _Unanswered(Response):
    """No answer at all: wait until the caller hangs up (the work is already committed)."""

    def __init__(self) -> None:
        super().__init__(status_code=504)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


class _Partners:
    """The three partners' handlers, over one SQLite ledger."""

    def __init__(self, database: str, faults: Faults) -> None:
        self.database = database
        self.faults = faults
        self._lock = threading.Lock()  # the draws of Faults are not thread-safe
        with self._db() as db:
            db.executescript(_TABLES)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.database, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a process crash
        return db

    def _once(
        self, partner: str, request: Request, body: Any, work: Callable[..., Answer]
    ) -> Answer:
        """Run ``work(db)`` once per idempotency key, in one transaction with its answer."""
        key = request.headers.get("idempotency-key")
        text = json.dumps(body, sort_keys=True)
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            if key is not None:
                row = db.execute(
                    "SELECT request, status, body FROM keys WHERE partner = ? AND key = ?",
                    (partner, key),
                ).fetchone()
                if row is not None:
                    db.execute("ROLLBACK")
                    if row[0] != text:
                        return 422, {"error": "this key was used with another request"}
                    return row[1], json.loads(row[2])
            status, answer = work(db)
            if key is not None:
                db.execute(
                    "INSERT INTO keys VALUES (?, ?, ?, ?, ?)",
                    (partner, key, text, status, json.dumps(answer)),
                )
            db.execute("COMMIT")
            return status, answer
        finally:
            db.close()

    # -- stock ---------------------------------------------------------------------------

    async def reserve(self, request: Request) -> Response:
        body = await request.json()

        def work(db: sqlite3.Connection) -> Answer:
            rid = f"res_{uuid.uuid4().hex[:12]}"
            db.execute(
                "INSERT INTO reservations VALUES (?, ?, ?, ?, 'reserved')",
                (rid, body["order"], body["sku"], body["quantity"]),
            )
            return 201, {"reservation": rid, "state": "reserved"}

        return _respond(self._once("stock", request, body, work))

    async def release(self, request: Request) -> Response:
        body = await request.json()

        def work(db: sqlite3.Connection) -> Answer:
            rows = db.execute(
                "SELECT id FROM reservations WHERE order_id = ? AND state = 'reserved'",
                (body["order"],),
            ).fetchall()
            db.execute(
                "UPDATE reservations SET state = 'released' WHERE order_id = ?", (body["order"],)
            )
            return 200, {"released": [r[0] for r in rows]}

        return _respond(self._once("stock", request, body, work))

    # -- payments --------------------------------------------------------------------------

    async def charge(self, request: Request) -> Response:
        body = await request.json()
        if "idempotency-key" not in request.headers:
            return JSONResponse({"error": "Idempotency-Key is required"}, 400)
        with self._lock:
            fault = self.faults.draw(str(body.get("reference")))
        if fault == "unavailable":
            return JSONResponse({"error": "try again later"}, 503)

        def work(db: sqlite3.Connection) -> Answer:
            if body.get("card") == "declined":
                return 402, {"error": "card declined"}
            cid = f"ch_{uuid.uuid4().hex[:12]}"
            db.execute(
                "INSERT INTO charges VALUES (?, ?, ?)", (cid, body["reference"], body["amount"])
            )
            return 201, {"charge": cid, "reference": body["reference"], "amount": body["amount"]}

        status, answer = self._once("payments", request, body, work)
        if fault == "timeout":
            return _Unanswered()
        if fault == "lost":
            return JSONResponse({"error": "bad gateway"}, 502)
        return JSONResponse(answer, status)

    async def charges(self, request: Request) -> Response:
        db = self._db()
        try:
            rows = db.execute(
                "SELECT id, reference, amount FROM charges WHERE reference = ? ORDER BY rowid",
                (request.query_params.get("reference", ""),),
            ).fetchall()
        finally:
            db.close()
        return JSONResponse(
            {"data": [{"charge": c, "reference": r, "amount": a} for c, r, a in rows]}
        )

    async def refund(self, request: Request) -> Response:
        body = await request.json()

        def work(db: sqlite3.Connection) -> Answer:
            if (
                db.execute("SELECT 1 FROM charges WHERE id = ?", (body["charge"],)).fetchone()
                is None
            ):
                return 404, {"error": "no such charge"}
            row = db.execute(
                "SELECT id FROM refunds WHERE charge = ?", (body["charge"],)
            ).fetchone()
            if row is not None:  # refunded before, under another key: no second refund
                return 200, {"refund": row[0], "charge": body["charge"]}
            rid = f"re_{uuid.uuid4().hex[:12]}"
            db.execute("INSERT INTO refunds VALUES (?, ?)", (rid, body["charge"]))
            return 201, {"refund": rid, "charge": body["charge"]}

        return _respond(self._once("payments", request, body, work))

    # -- shipping --------------------------------------------------------------------------

    async def ship(self, request: Request) -> Response:
        body = await request.json()

        def work(db: sqlite3.Connection) -> Answer:
            if "Nowhere" in body["address"]:
                return 422, {"error": "we do not deliver there"}
            sid = f"shp_{uuid.uuid4().hex[:12]}"
            db.execute(
                "INSERT INTO shipments VALUES (?, ?, ?)", (sid, body["order"], body["address"])
            )
            return 201, {"shipment": sid}

        return _respond(self._once("shipping", request, body, work))


def create_app(database: str, faults: Faults | None = None) -> Starlette:
    """The three partners, mounted at ``/stock``, ``/payments`` and ``/shipping``, their
    ledger in the SQLite file ``database`` (created if need be)."""
    p = _Partners(database, faults or Faults())
    return Starlette(
        routes=[
            Mount(
                "/stock",
                routes=[
                    Route("/reservations", p.reserve, methods=["POST"]),
                    Route("/releases", p.release, methods=["POST"]),
                ],
            ),
            Mount(
                "/payments",
                routes=[
                    Route("/charges", p.charge, methods=["POST"]),
                    Route("/charges", p.charges, methods=["GET"]),
                    Route("/refunds", p.refund, methods=["POST"]),
                ],
            ),
            Mount("/shipping", routes=[Route("/shipments", p.ship, methods=["POST"])]),
        ]
    )


def from_env() -> Starlette:
    """The app for ``uvicorn --factory``: ``CHECKOUT_PARTNERS_DB``, ``CHECKOUT_FAULTS``,
    ``CHECKOUT_FAULT_LOG``."""
    faults = Faults.parse(os.environ.get("CHECKOUT_FAULTS", ""))
    faults.journal = os.environ.get("CHECKOUT_FAULT_LOG")
    return create_app(os.environ.get("CHECKOUT_PARTNERS_DB", "partners.db"), faults)


@dataclass(frozen=True)
class Ledger:
    """What the partners' ledger holds, by order (reference)."""

    #: order -> [(reservation id, state)]
    reservations: dict[str, list[tuple[str, str]]]
    #: order -> [charge id]
    charges: dict[str, list[str]]
    #: charge id -> refund id
    refunds: dict[str, str]
    #: order -> [shipment id]
    shipments: dict[str, list[str]]


def read_ledger(database: str) -> Ledger:
    """The partners' ledger in ``database``."""
    ledger = Ledger({}, {}, {}, {})
    db = sqlite3.connect(database)
    try:
        for rid, order, state in db.execute("SELECT id, order_id, state FROM reservations"):
            ledger.reservations.setdefault(order, []).append((rid, state))
        for cid, reference in db.execute("SELECT id, reference FROM charges"):
            ledger.charges.setdefault(reference, []).append(cid)
        ledger.refunds.update(db.execute("SELECT charge, id FROM refunds"))
        for sid, order in db.execute("SELECT id, order_id FROM shipments"):
            ledger.shipments.setdefault(order, []).append(sid)
    finally:
        db.close()
    return ledger


def main() -> None:
    """``python -m examples.checkout.partners [partners.db]``: the ledger, one line per order."""
    import sys

    ledger = read_ledger(sys.argv[1] if len(sys.argv) > 1 else "partners.db")
    orders = sorted({*ledger.reservations, *ledger.charges, *ledger.shipments})
    print(f"{'order':<10} {'stock':<10} {'charged':<8} {'refunded':<9} shipped")
    for order in orders:
        stock = ",".join(state for _, state in ledger.reservations.get(order, [])) or "-"
        charges = ledger.charges.get(order, [])
        refunded = sum(1 for c in charges if c in ledger.refunds)
        shipped = len(ledger.shipments.get(order, []))
        print(f"{order:<10} {stock:<10} {len(charges):<8} {refunded:<9} {shipped}")


if __name__ == "__main__":
    main()
