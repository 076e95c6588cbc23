"""What ``test_transactional.py`` shares with the processes it spawns.

A *backend* is a small dict naming a database: ``{"kind": "sqlite", "path": ...}`` or
``{"kind": "postgres", "dsn": ..., "schema": ...}`` (connections put that schema on their
``search_path``). Both hold the key table of ``TransactionalKeys`` and a ``ledger`` table
standing for the application's business data.

``book`` is the handler every test runs: one transaction that claims the key, writes one
ledger row and records the response, exactly as docs/idempotency.md shows it.
``crash_worker`` runs it in a spawned process that dies at a chosen point.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from typing import Any, Literal

import psycopg

from surefoot.idempotency import StoredResponse, TransactionalKeys

GUARD = 30.0  # seconds a wait may last before the test fails instead of hanging
PRINCIPAL = "cus_42"
LEDGER_DDL = "CREATE TABLE ledger (key TEXT NOT NULL, amount INTEGER NOT NULL)"
KEYS_TABLE = "surefoot_transactional_keys"

Backend = dict[str, str]
Connection = sqlite3.Connection | psycopg.Connection[Any]
DiePoint = Literal["after_claim", "after_write", "after_complete", "after_commit", "killed"]


def connect(backend: Backend, *, timeout: float = GUARD) -> Connection:
    """An autocommit connection: transactions are opened explicitly, as a handler would."""
    if backend["kind"] == "sqlite":
        return sqlite3.connect(
            backend["path"], isolation_level=None, timeout=timeout, check_same_thread=False
        )
    return psycopg.connect(
        backend["dsn"], autocommit=True, options=f"-c search_path={backend['schema']}"
    )


def sql(conn: Connection, statement: str) -> str:
    return statement if isinstance(conn, sqlite3.Connection) else statement.replace("?", "%s")


def begin(conn: Connection) -> None:
    # SQLite: take the write lock up front, so a duplicate waits here (see the docs).
    conn.execute("BEGIN IMMEDIATE" if isinstance(conn, sqlite3.Connection) else "BEGIN")


def in_transaction(conn: Connection) -> bool:
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def rollback(conn: Connection) -> None:
    if in_transaction(conn):
        conn.execute("ROLLBACK")


def write_ledger(conn: Connection, key: str, amount: int) -> None:
    conn.execute(sql(conn, "INSERT INTO ledger (key, amount) VALUES (?, ?)"), (key, amount))


def count(conn: Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def book(
    conn: Connection,
    keys: TransactionalKeys,
    key: str | None,
    amount: int,
    *,
    principal: str = PRINCIPAL,
    path: str = "/transfers",
) -> tuple[Literal["executed", "replayed"], StoredResponse]:
    """The handler: the ledger row and the key's response commit together, or neither."""
    begin(conn)
    try:
        claim = keys.claim(
            conn,
            principal=principal,
            key=key,
            method="POST",
            path=path,
            payload={"amount": amount},
        )
        if claim.replay is not None:
            conn.execute("ROLLBACK")
            return "replayed", claim.replay
        assert key is not None
        write_ledger(conn, key, amount)
        # A fresh id per execution: a replay is recognisable as the very first answer.
        body = json.dumps({"key": key, "amount": amount, "booking": uuid.uuid4().hex})
        stored = claim.complete(201, {"Content-Type": "application/json"}, body.encode())
        conn.execute("COMMIT")
        return "executed", stored
    except BaseException:
        rollback(conn)
        raise


def crash_worker(
    backend: Backend, key: str, amount: int, die_at: DiePoint, ready: Any = None
) -> None:
    """Run ``book``'s steps and die at ``die_at`` with ``os._exit(1)`` (no cleanup at all).

    ``"killed"``: set ``ready`` after the response is recorded, then wait (with the
    transaction open) for the parent's SIGKILL.
    """
    conn = connect(backend)
    keys = TransactionalKeys(lock_timeout=GUARD)
    begin(conn)
    claim = keys.claim(
        conn, principal=PRINCIPAL, key=key, method="POST", path="/transfers",
        payload={"amount": amount},
    )  # fmt: skip
    assert claim.replay is None
    if die_at == "after_claim":
        os._exit(1)
    write_ledger(conn, key, amount)
    if die_at == "after_write":
        os._exit(1)
    body = json.dumps({"key": key, "amount": amount, "booking": uuid.uuid4().hex})
    claim.complete(201, {"Content-Type": "application/json"}, body.encode())
    if die_at == "after_complete":
        os._exit(1)
    if die_at == "killed":
        ready.set()
        threading.Event().wait(GUARD)  # the parent kills us long before this
        os._exit(2)
    conn.execute("COMMIT")
    os._exit(1)  # after_commit: dies before answering or closing anything
