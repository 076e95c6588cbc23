"""``TransactionalKeys``' default table (``surefoot_transactional_keys``), created by the same
DDL as ``TransactionalKeys().ddl(...)`` for the database's vendor (safe to run again)."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import migrations


def _create(apps: Any, schema_editor: Any) -> None:
    from surefoot.idempotency import TransactionalKeys

    vendor = schema_editor.connection.vendor
    if vendor not in ("sqlite", "postgresql"):
        return  # TransactionalKeys works on SQLite and PostgreSQL only
    script = TransactionalKeys().ddl(vendor)
    # SQLite runs one statement per call (executescript would COMMIT the migration's
    # transaction); PostgreSQL runs the whole script, functions and all.
    statements = script.split(";") if vendor == "sqlite" else [script]
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            if statement.strip():
                cursor.execute(statement)


def _drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor in ("sqlite", "postgresql"):
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS surefoot_transactional_keys")


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []
    operations: ClassVar[list[Any]] = [migrations.RunPython(_create, _drop, elidable=False)]
