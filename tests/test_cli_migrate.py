"""``surefoot migrate``: what an operator sees when creating or upgrading a store's tables."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from surefoot.cli import main
from surefoot.clock import SystemClock
from surefoot.idempotency._core import Begin
from surefoot.storage.postgres import PostgresStore, _migrations

ALL = [m.name for m in _migrations()]


def sql(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(query, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    """A schema name no one uses; dropped afterwards if a test created it."""
    name = f"surefoot_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        sql(postgres_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def exists(dsn: str, schema: str) -> bool:
    return sql(dsn, "SELECT to_regnamespace(%s) IS NOT NULL", f'"{schema}"') == [(True,)]


def test_migrate_applies_what_is_pending_then_nothing(postgres_dsn: str, schema: str) -> None:
    url = f"{postgres_dsn}?schema={schema}&clock=caller&timeout=0.5"
    runner = CliRunner()

    dry = runner.invoke(main, ["migrate", "--store", url, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines() == [f"would apply {name} to schema {schema!r}" for name in ALL]
    assert not exists(postgres_dsn, schema)

    first = runner.invoke(main, ["migrate", "--store", url])
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == [f"applied {name} to schema {schema!r}" for name in ALL]

    again = runner.invoke(main, ["migrate"], env={"SUREFOOT_STORE": url})
    assert again.exit_code == 0, again.output
    assert again.output == f"schema {schema!r} is up to date\n"


def test_schema_option_overrides_the_urls(postgres_dsn: str, schema: str) -> None:
    url = f"{postgres_dsn}?schema=not_this_one"
    result = CliRunner().invoke(main, ["migrate", "--store", url, "--schema", schema])
    assert result.exit_code == 0, result.output
    assert exists(postgres_dsn, schema)
    assert not exists(postgres_dsn, "not_this_one")


def test_a_migrated_postgres_store_serves_the_keys_commands(postgres_dsn: str, schema: str) -> None:
    url = f"{postgres_dsn}?schema={schema}"
    runner = CliRunner()
    assert runner.invoke(main, ["migrate", "--store", url]).exit_code == 0

    async def seed() -> None:
        store = PostgresStore(postgres_dsn, schema=schema)
        request = Begin("f", "t", lease=30, ttl=3600, on_lease_expiry="unknown")
        await store.begin("idem:flight", request, SystemClock().now())
        await store.aclose()

    asyncio.run(seed())
    listed = runner.invoke(main, ["keys", "list", "--store", url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert '"store_key": "idem:flight"' in listed.output


def test_keys_commands_on_an_unmigrated_postgres_store_say_what_to_do(
    postgres_dsn: str, schema: str
) -> None:
    result = CliRunner().invoke(
        main, ["keys", "list", "--store", f"{postgres_dsn}?schema={schema}"]
    )
    assert result.exit_code == 1
    assert "surefoot migrate --store" in result.output
    assert not exists(postgres_dsn, schema)


def test_a_database_newer_than_this_surefoot_is_refused(postgres_dsn: str, schema: str) -> None:
    url = f"{postgres_dsn}?schema={schema}"
    runner = CliRunner()
    assert runner.invoke(main, ["migrate", "--store", url]).exit_code == 0
    sql(postgres_dsn, f"INSERT INTO \"{schema}\".surefoot_schema_migrations VALUES (9999, 'x')")
    result = runner.invoke(main, ["migrate", "--store", url])
    assert result.exit_code == 1
    assert "upgrade surefoot" in result.output


def test_an_unreachable_database_is_reported_without_its_password() -> None:
    url = "postgresql://app:s3cret@127.0.0.1:1/api?connect_timeout=2"
    result = CliRunner().invoke(main, ["migrate", "--store", url])
    assert result.exit_code == 1
    assert "cannot migrate" in result.output
    assert "s3cret" not in result.output


def test_a_bad_option_is_reported() -> None:
    result = CliRunner().invoke(main, ["migrate", "--store", "postgresql://db/api?colour=blue"])
    assert result.exit_code == 1
    assert "colour" in result.output


def test_sqlite_migrates_itself_when_opened(tmp_path: Path) -> None:
    db = tmp_path / "idempotency.db"
    runner = CliRunner()
    dry = runner.invoke(main, ["migrate", "--store", f"sqlite:///{db}", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "migrates itself" in dry.output
    assert not db.exists()

    opened = runner.invoke(main, ["migrate", "--store", f"sqlite:///{db}"])
    assert opened.exit_code == 0, opened.output
    assert "migrates itself" in opened.output
    assert db.exists()


def test_stores_without_a_schema_have_nothing_to_migrate() -> None:
    result = CliRunner().invoke(main, ["migrate", "--store", "memory://"])
    assert result.exit_code == 0
    assert result.output == "memory:// stores keep no schema: nothing to migrate\n"
