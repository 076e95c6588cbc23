"""``examples/flask_payments``: the example's promises, through Flask's test client."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MODULE = "examples.flask_payments.app"


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("PAYMENTS_LEDGER", str(tmp_path / "payments.db"))
    monkeypatch.setenv("SUREFOOT_STORE", f"sqlite:///{tmp_path / 'surefoot.db'}")
    sys.modules.pop(MODULE, None)
    module = importlib.import_module(MODULE)
    yield module
    sys.modules.pop(MODULE, None)


def charge(client: Any, key: str, amount: int, api_key: str = "sk_acme_demo") -> Any:
    return client.post(
        "/v1/charges",
        json={"amount": amount},
        headers={"X-API-Key": api_key, "Idempotency-Key": key},
    )


def test_a_retried_charge_is_one_charge(example: Any) -> None:
    client = example.app.test_client()
    first = charge(client, "order-1", 1250)
    again = charge(client, "order-1", 1250)
    assert first.status_code == again.status_code == 201
    assert again.data == first.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert charge(client, "order-1", 999).status_code == 422
    listed = client.get("/v1/charges", headers={"X-API-Key": "sk_acme_demo"}).json
    assert listed["count"] == 1


def test_each_client_has_its_limit(example: Any) -> None:
    client = example.app.test_client()
    for i in range(3):
        assert charge(client, f"g{i}", 100, "sk_globex_demo").status_code == 201
    refused = charge(client, "g3", 100, "sk_globex_demo")
    assert refused.status_code == 429
    assert json.loads(refused.data)["code"] == "rate_limit_exceeded"
    assert charge(client, "a1", 100).status_code == 201  # acme: 20 a minute


def test_refunds_and_the_streamed_export(example: Any) -> None:
    client = example.app.test_client()
    created = charge(client, "order-1", 700).json
    headers = {"X-API-Key": "sk_acme_demo", "Idempotency-Key": "refund-1"}
    refund = client.post("/v1/refunds", json={"charge": created["id"]}, headers=headers)
    assert refund.status_code == 201
    assert refund.json["amount"] == 700
    missing = client.post(
        "/v1/refunds", json={"charge": "ch_nope"}, headers={**headers, "Idempotency-Key": "r2"}
    )
    assert missing.status_code == 404
    refused = client.post(
        "/v1/refunds", json={"charge": "ch_nope"}, headers={**headers, "Idempotency-Key": "r3"}
    )
    assert refused.status_code == 429  # 2 refunds a minute per account
    export = client.get("/v1/charges/export", headers={"X-API-Key": "sk_acme_demo"}, buffered=True)
    assert export.data == f"id,amount,currency\n{created['id']},700,eur\n".encode()
    assert client.get("/v1/charges", headers={"X-API-Key": "wrong"}).status_code == 401
