"""``transactional_claim``: ``TransactionalKeys`` in Django's ``transaction.atomic()`` on
SQLite (the default database) and PostgreSQL (the ``pg`` alias): the key's response commits
with the view's writes, or neither does."""

from __future__ import annotations

import json
import uuid

import _django_views as views
import pytest
from django.db import IntegrityError, connections, transaction
from django.test import Client, RequestFactory

from surefoot.django import transactional_claim

JSON = "application/json"


@pytest.fixture(params=["default", "pg"])
def alias(request: pytest.FixtureRequest) -> str:
    if request.param == "pg":
        request.getfixturevalue("pg")
    return str(request.param)


def _path(alias: str) -> str:
    return "/orders" if alias == "default" else "/pg/orders"


def _orders(alias: str, body: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {views.ORDERS[alias]} WHERE body = %s", [body])
        (count,) = cursor.fetchone()
    return int(count)


def _keys(alias: str) -> int:
    """How many key rows the alias's key table holds (committed)."""
    table = views.KEYS[alias].table if alias in views.KEYS else "surefoot_transactional_keys"
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        (count,) = cursor.fetchone()
    return int(count)


def test_the_response_commits_with_the_writes_and_replays(alias: str, executions: list) -> None:
    client, key = Client(HTTP_X_API_KEY=uuid.uuid4().hex), uuid.uuid4().hex
    body = json.dumps({"item": key})
    keys = _keys(alias)
    first = client.post(_path(alias), body, JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == 201
    assert json.loads(first.content) == {"order": key}
    assert (_orders(alias, body), _keys(alias)) == (1, keys + 1)
    again = client.post(_path(alias), body, JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert (again.status_code, again.content) == (201, first.content)
    assert again["Content-Type"] == JSON
    assert again["Idempotent-Replayed"] == "true"
    assert _orders(alias, body) == 1
    assert len(executions) == 1


def test_a_rollback_leaves_neither_key_nor_writes(alias: str, executions: list) -> None:
    client = Client(HTTP_X_API_KEY=uuid.uuid4().hex, raise_request_exception=False)
    key = uuid.uuid4().hex
    body = json.dumps({"item": key})
    keys = _keys(alias)
    failed = client.post(f"{_path(alias)}?fail=1", body, JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert failed.status_code == 500
    assert (_orders(alias, body), _keys(alias)) == (0, keys)
    retried = client.post(_path(alias), body, JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried
    assert (_orders(alias, body), _keys(alias)) == (1, keys + 1)
    assert len(executions) == 2


def test_a_key_reused_with_another_body_is_422(alias: str) -> None:
    client, key = Client(HTTP_X_API_KEY=uuid.uuid4().hex), uuid.uuid4().hex
    assert (
        client.post(_path(alias), '{"item": "a"}', JSON, HTTP_IDEMPOTENCY_KEY=key).status_code
        == 201
    )
    reused = client.post(_path(alias), '{"item": "b"}', JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert reused.status_code == 422
    assert json.loads(reused.content)["code"] == "idempotency_key_reused"
    assert _orders(alias, '{"item": "b"}') == 0


def test_a_claim_outside_atomic_is_refused(alias: str) -> None:
    request = RequestFactory().post("/orders", b"{}", JSON, HTTP_IDEMPOTENCY_KEY="k")
    with pytest.raises(RuntimeError, match=r"inside transaction\.atomic"):
        transactional_claim(request, using=alias)


def test_principals_never_share_a_key(alias: str, executions: list) -> None:
    key = uuid.uuid4().hex
    for _ in range(2):
        client = Client(HTTP_X_API_KEY=uuid.uuid4().hex)
        response = client.post(_path(alias), '{"item": "p"}', JSON, HTTP_IDEMPOTENCY_KEY=key)
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response
    assert len(executions) == 2


def test_postgres_refuses_to_commit_a_claim_never_completed(pg: str) -> None:
    request = RequestFactory().post("/pg/orders", b"{}", JSON, HTTP_IDEMPOTENCY_KEY="k-x")
    request.user = None
    not_recorded = "was claimed but its response was not recorded"
    with pytest.raises(IntegrityError, match=not_recorded), transaction.atomic(using="pg"):
        transactional_claim(request, keys=views.KEYS["pg"], using="pg")
