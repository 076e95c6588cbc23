"""The SQL databases surefoot keeps its own tables in (the outbox, sagas): a SQLite file
or a PostgreSQL server, named by URL, and one connection per user that opens on first use
and again after the server dropped it.

Rule 1: every failure of the database is ``StoreUnavailable`` (``translated``), so that a
        worker waits an outage out instead of dying.
Rule 2: a transaction holds no network call and no lock of ours longer than its
        statements; on SQLite it is ``BEGIN IMMEDIATE`` (the write lock up front: no
        deadlock between two upgrading readers).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol

from surefoot._masking import masked_url
from surefoot.errors import StoreUnavailable

__all__ = [
    "Connection",
    "Cursor",
    "Dialect",
    "database_dialect",
    "dialect_of",
    "in_transaction",
    "sqlite_path",
    "translated",
]

Dialect = Literal["sqlite", "postgresql"]


def dialect_of(url: str) -> Dialect | None:
    """``sqlite`` for ``sqlite:///path``, ``postgresql`` for a PostgreSQL URL, else None."""
    if url.startswith("sqlite://"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    return None


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, query: str, params: Sequence[object] = (), /) -> Any: ...

    def executemany(self, query: str, params: Iterable[Sequence[object]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def database_dialect(url: object) -> Dialect:
    """The dialect of a database URL surefoot keeps tables in: ``sqlite:///path`` (without
    ``?options``: the path would be taken to include them) or ``postgresql://``.

    Raises:
        ValueError: ``expected ..., got ...``, the URL shown masked.
    """
    if not isinstance(url, str):
        raise ValueError(f"expected a sqlite:///path or postgresql:// URL, got {url!r}")
    dialect = dialect_of(url)
    if dialect is None:
        raise ValueError(f"expected a sqlite:///path or postgresql:// URL, got {masked_url(url)!r}")
    if dialect == "sqlite" and ("?" in url or "#" in url):
        raise ValueError(f"expected a sqlite:///path without ?options, got {masked_url(url)!r}")
    return dialect


def in_transaction(conn: Any, *, starting: bool) -> bool:
    """Whether statements on the application's ``conn`` (sqlite3, or psycopg sync or
    async) now run inside one open transaction. ``starting``: a psycopg connection that
    is not in autocommit mode opens its transaction with the next statement, which is as
    good for a first statement."""
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    from psycopg.pq import TransactionStatus

    status = conn.info.transaction_status
    if status == TransactionStatus.INTRANS:
        return True
    return starting and status == TransactionStatus.IDLE and not conn.autocommit


def sqlite_path(url: str) -> str:
    path = url.removeprefix("sqlite://")
    if path.startswith("/"):
        path = path[1:]
    return path or ":memory:"


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreUnavailable(retry_after=1) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("psycopg"):
            raise StoreUnavailable(retry_after=1) from exc
        raise


class Connection:
    """A connection of surefoot's own (a worker's or the admin side's), one transaction at a
    time; thread-safe, so a worker can run it in a thread beside its event loop. It opens
    on first use, and again after the server dropped it; failures are ``StoreUnavailable``.
    """

    def __init__(self, url: str, dialect: Dialect, *, durable: bool = True) -> None:
        self.url = url
        self.dialect = dialect
        self.durable = durable
        self._lock = threading.Lock()
        self._conn: Any = None

    def _open(self) -> Any:
        if self.dialect == "sqlite":
            conn = sqlite3.connect(
                sqlite_path(self.url), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        import psycopg

        pg = psycopg.connect(self.url, autocommit=True)
        if not self.durable:
            pg.execute("SET synchronous_commit = off")
        return pg

    def _opened(self) -> Any:
        # Opened on first use, and again after the server dropped it (psycopg then
        # reports it closed), so one outage does not fail every later call.
        if self._conn is None or getattr(self._conn, "closed", False):
            self._conn = self._open()
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock, translated():
            cursor = self._opened().cursor()
            if self.dialect == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    yield cursor
                    cursor.execute("COMMIT")
                except BaseException:
                    # Also when COMMIT itself failed: the transaction must not stay open,
                    # or every later BEGIN on this connection would fail.
                    self._conn.rollback()
                    raise
            else:
                with self._conn.transaction():
                    yield cursor

    def statement(self, query: str, params: Sequence[object]) -> list[Any]:
        """Run one statement in a transaction of its own, its rows returned: on PostgreSQL
        an autocommitted statement (one round trip, no BEGIN and COMMIT of its own)."""
        if self.dialect == "sqlite":
            with self.transaction() as cur:
                cur.execute(query, params)
                return cur.fetchall()
        with self._lock, translated():
            return list(self._opened().execute(query, params).fetchall())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
