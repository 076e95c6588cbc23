"""Django configured once for the session (``settings.configure``: no pytest-django).

The project is ``_django_settings`` / ``_django_urls`` / ``_django_views``: its SQLite
database and its surefoot store (a SQLite file) live in a folder of the session's own.
The ``pg`` database alias is the PostgreSQL of ``tests/_services.py``, used only by the
tests that ask for it (``pg`` fixture: skipped, or failed under
``SUREFOOT_REQUIRE_SERVICES=1``, when it is absent). ``tests/wsgi`` is put on ``sys.path``
for the conformance table.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django
import pytest
from _django_settings import django_settings
from django.conf import settings

from _services import SERVICES

# The WSGI conformance table and its stacks (test_django_conformance.py runs it on Django).
sys.path.insert(0, str(Path(__file__).parents[1] / "wsgi"))

HOME = Path(tempfile.mkdtemp(prefix="surefoot-django-"))
atexit.register(shutil.rmtree, HOME, True)  # also when no test of this folder ran
STORE = f"sqlite:///{HOME}/surefoot.db"


def _pg_alias() -> dict[str, Any]:
    import os

    variable, default = SERVICES["postgres"]
    parts = urlsplit(os.environ.get(variable, default))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/") or "test",
        "USER": parts.username or "postgres",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
    }


if not settings.configured:
    settings.configure(**django_settings(STORE, str(HOME / "db.sqlite3"), pg=_pg_alias()))
    django.setup()


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[None]:
    """The default database migrated (auth, sessions, surefoot's key table) and the
    business table of the ``order`` view."""
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", verbosity=0, database="default")
    with connections["default"].cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS shop_orders (id INTEGER PRIMARY KEY, body TEXT)")
    from surefoot.django import surefoot_settings

    surefoot_settings().store(STORE).purge(0.0)  # the store's file exists from the start
    yield
    connections.close_all()
    shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture
def pg(postgres_dsn: str) -> Iterator[str]:
    """The ``pg`` alias ready for ``order``: a key table and an orders table of this test's
    own (dropped after); yields the orders table's name."""
    import _django_views as views
    from django.db import connections

    from surefoot.idempotency import TransactionalKeys

    suffix = uuid.uuid4().hex[:10]
    keys = TransactionalKeys(table=f"sf_keys_{suffix}")
    orders = f"sf_orders_{suffix}"
    connection = connections["pg"]
    with connection.cursor() as cursor:
        cursor.execute(keys.ddl("postgresql"))
        cursor.execute(f"CREATE TABLE {orders} (id SERIAL PRIMARY KEY, body TEXT)")
    views.KEYS["pg"] = keys
    views.ORDERS["pg"] = orders
    try:
        yield orders
    finally:
        views.KEYS.pop("pg", None)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {keys.table}, {orders}")
            cursor.execute(f"DROP FUNCTION IF EXISTS {keys.table}_completed()")
        connection.close()


@pytest.fixture(autouse=True)
def executions() -> list[tuple[str, bytes]]:
    """What the views executed during the test."""
    import _django_views as views

    views.EXECUTIONS.clear()
    return views.EXECUTIONS
