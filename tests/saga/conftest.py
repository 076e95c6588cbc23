"""The saga tests' database and log: each test on SQLite and on PostgreSQL, in tables of
its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from surefoot.saga import SagaLog
from surefoot.testing import ManualClock


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sagas.db"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
def log(database: str, clock: ManualClock) -> Iterator[SagaLog]:
    """A log in fresh tables (a prefix of its own), dropped afterwards on PostgreSQL."""
    prefix = f"t{uuid4().hex[:10]}"
    saga_log = SagaLog(database, prefix=prefix, clock=clock, retention=3600)
    saga_log.create_tables()
    yield saga_log
    saga_log.close()
    if saga_log.dialect == "postgresql":
        conn = saga_log.connect()
        with conn.transaction() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {prefix}_runs, {prefix}_log")
        conn.close()
