"""``manage.py surefoot keys list|resolve|forget|purge`` on the store of settings.SUREFOOT."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

JSON = "application/json"


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("surefoot", "keys", *args, stdout=out)
    return out.getvalue()


def _records() -> list[dict[str, object]]:
    return json.loads(_run("list", "--json", "--limit", "10000"))


def _store_key_of(before: list[dict[str, object]]) -> dict[str, object]:
    known = {r["store_key"] for r in before}
    (record,) = [r for r in _records() if r["store_key"] not in known]
    return record


def test_list_shows_a_completed_record() -> None:
    before = _records()
    client, key = Client(HTTP_X_API_KEY=uuid.uuid4().hex), uuid.uuid4().hex
    assert client.post("/charges", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    record = _store_key_of(before)
    assert record["state"] == "completed"
    assert record["status"] == 201
    table = _run("list", "--state", "completed", "--limit", "10000")
    assert "store key" in table
    assert str(record["store_key"]) in table


def test_forget_lets_the_key_execute_again(executions: list) -> None:
    before = _records()
    client, key = Client(HTTP_X_API_KEY=uuid.uuid4().hex), uuid.uuid4().hex
    client.post("/charges", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    store_key = str(_store_key_of(before)["store_key"])
    assert _run("forget", store_key).strip() == f"forgot {store_key}"
    again = client.post("/charges", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert "Idempotent-Replayed" not in again
    assert len(executions) == 2
    with pytest.raises(CommandError, match="no live record under"):
        _run("forget", "cred:nobody:nothing")


def test_resolve_settles_an_unknown_outcome(executions: list) -> None:
    before = _records()
    client, key = Client(HTTP_X_API_KEY=uuid.uuid4().hex), uuid.uuid4().hex
    assert client.post("/unknown", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key).status_code == 500
    record = _store_key_of(before)
    assert record["state"] == "unknown"
    store_key = str(record["store_key"])
    out = _run("resolve", store_key, "--status", "201", "--body", '{"id": 7}')
    assert out.strip() == f"resolved {store_key} with status 201"
    replay = client.post("/unknown", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert (replay.status_code, replay.content) == (201, b'{"id": 7}')
    assert replay["Idempotent-Replayed"] == "true"
    assert len(executions) == 1
    with pytest.raises(CommandError, match="is not unknown or abandoned"):
        _run("resolve", store_key, "--status", "200")
    with pytest.raises(CommandError, match="body"):
        _run("resolve", store_key, "--status", "200", "--body", "{not json")


def test_purge_reports_how_many_went() -> None:
    assert _run("purge").strip() == "purged 0 expired records"


def test_a_missing_sqlite_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no database file at"):
        _run("list", "--store", f"sqlite:///{tmp_path}/typo.db")


def test_a_bad_store_url_is_refused() -> None:
    with pytest.raises(CommandError, match="expected one of the schemes"):
        _run("list", "--store", "ftp://nowhere")
