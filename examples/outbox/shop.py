"""The application: each change to a customer and its webhook, in one transaction."""

from __future__ import annotations

import sqlite3
import sys

from surefoot.outbox import Outbox

outbox = Outbox("sqlite:///shop.db", event_types=["customer.*"])
db = sqlite3.connect("shop.db", isolation_level=None)
db.execute(
    "CREATE TABLE IF NOT EXISTS customers (id TEXT PRIMARY KEY, email TEXT, version INTEGER)"
)

customer, email, version = sys.argv[1], sys.argv[2], int(sys.argv[3])
db.execute("BEGIN IMMEDIATE")
db.execute(
    "INSERT INTO customers VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET email = ?, version = ?",
    (customer, email, version, email, version),
)
message = outbox.enqueue(
    db,
    "customer.updated",
    {"id": customer, "email": email, "version": version},
    ordering_key=customer,
)
if "--rollback" in sys.argv:
    db.execute("ROLLBACK")
    print(f"rolled back: {message} is gone with the change")
else:
    db.execute("COMMIT")
    print(f"committed {customer} v{version} with {message}")
