"""The payments example: one charge per idempotency key, however often the client retries."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.payments.app import create_app

from surefoot.storage import SqliteStore
from surefoot.testing import aassert_idempotent

pytestmark = pytest.mark.anyio

CHARGE = {"amount": 1999, "currency": "eur", "customer": "cus_42"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(str(tmp_path / "payments.db"), f"sqlite:///{tmp_path / 'idempotency.db'}")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://payments") as client:
        yield client
    await app.store.aclose()  # what the app's lifespan does; ASGITransport runs none


async def ledger(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/charges")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == len(body["charges"])
    charges: list[dict[str, Any]] = body["charges"]
    return charges


async def test_a_charge_sent_three_times_is_booked_once(client: httpx.AsyncClient) -> None:
    responses = await aassert_idempotent(client, "POST", "/charges", key="k-1", json=CHARGE)

    assert len(responses) == 3
    assert [r.status_code for r in responses] == [201, 201, 201]
    assert [r.content for r in responses] == [responses[0].content] * 3
    assert [r.headers.get("idempotent-replayed") for r in responses] == [None, "true", "true"]
    charge = responses[0].json()
    assert charge["id"].startswith("ch_")
    assert {k: charge[k] for k in CHARGE} == CHARGE
    assert await ledger(client) == [charge]
    assert (await client.get(f"/charges/{charge['id']}")).json() == charge


async def test_a_reused_key_with_another_amount_is_refused(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k-2"}
    first = await client.post("/charges", json=CHARGE, headers=headers)
    assert first.status_code == 201

    reused = await client.post("/charges", json={**CHARGE, "amount": 2999}, headers=headers)

    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["code"] == "idempotency_key_reused"
    assert await ledger(client) == [first.json()]


async def test_a_charge_without_a_key_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/charges", json=CHARGE)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "idempotency_key_missing"
    assert await ledger(client) == []


async def test_two_keys_make_two_charges(client: httpx.AsyncClient) -> None:
    a = await client.post("/charges", json=CHARGE, headers={"Idempotency-Key": "k-a"})
    b = await client.post("/charges", json=CHARGE, headers={"Idempotency-Key": "k-b"})

    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]
    assert len(await ledger(client)) == 2


async def test_an_invalid_charge_is_not_booked(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/charges", json={**CHARGE, "amount": 0}, headers={"Idempotency-Key": "k-3"}
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert await ledger(client) == []


async def test_an_unknown_charge_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/charges/ch_missing")).status_code == 404


async def test_charges_are_rate_limited_per_client(tmp_path: Path) -> None:
    app = create_app(str(tmp_path / "ledger.db"), f"sqlite:///{tmp_path}/keys.db")
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://payments") as client:
        for n in range(5):
            headers = {"Idempotency-Key": f"k{n}", "X-API-Key": "client-a"}
            r = await client.post("/charges", json=CHARGE, headers=headers)
            assert r.status_code == 201
        refused = await client.post(
            "/charges", json=CHARGE, headers={"Idempotency-Key": "k9", "X-API-Key": "client-a"}
        )
        assert refused.status_code == 429
        assert refused.json()["policy"] == "charges"
        # Another client is not affected, and a refused charge was never booked.
        other = await client.post(
            "/charges", json=CHARGE, headers={"Idempotency-Key": "k9", "X-API-Key": "client-b"}
        )
        assert other.status_code == 201
        assert (await client.get("/charges")).json()["count"] == 6
    await app.store.aclose()


# -- POST /transfers: the key commits in the ledger's own transaction ----------------------

TRANSFER = {"amount": 5000, "currency": "eur", "source": "cus_42", "destination": "acct_7"}


async def transfers(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/transfers")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == len(body["transfers"])
    booked: list[dict[str, Any]] = body["transfers"]
    return booked


def ledger_rows(tmp_path: Path, table: str) -> int:
    with closing(sqlite3.connect(tmp_path / "payments.db")) as db:
        (n,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(n)


async def test_a_transfer_sent_three_times_is_booked_once_with_its_key(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    responses = await aassert_idempotent(client, "POST", "/transfers", key="t-1", json=TRANSFER)

    assert [r.status_code for r in responses] == [201, 201, 201]
    assert [r.content for r in responses] == [responses[0].content] * 3
    assert [r.headers.get("idempotent-replayed") for r in responses] == [None, "true", "true"]
    assert responses[0].headers["content-type"] == "application/json"
    transfer = responses[0].json()
    assert transfer["id"].startswith("tr_")
    assert {k: transfer[k] for k in TRANSFER} == TRANSFER
    assert await transfers(client) == [transfer]
    # The key sits in the ledger file beside the transfer, not in the middleware's store.
    assert ledger_rows(tmp_path, "surefoot_transactional_keys") == 1
    store = SqliteStore(tmp_path / "idempotency.db")
    assert await store.records(time.time()) == []
    await store.aclose()


async def test_a_reused_transfer_key_with_another_amount_is_refused(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "t-2"}
    first = await client.post("/transfers", json=TRANSFER, headers=headers)
    assert first.status_code == 201

    reused = await client.post("/transfers", json={**TRANSFER, "amount": 1}, headers=headers)

    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["code"] == "idempotency_key_reused"
    assert await transfers(client) == [first.json()]


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "idempotency_key_missing"), ({"Idempotency-Key": "a b"}, "idempotency_key_invalid")],
)
async def test_a_transfer_without_a_valid_key_is_refused(
    client: httpx.AsyncClient, tmp_path: Path, headers: dict[str, str], code: str
) -> None:
    response = await client.post("/transfers", json=TRANSFER, headers=headers)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert await transfers(client) == []
    assert ledger_rows(tmp_path, "surefoot_transactional_keys") == 0


async def test_concurrent_duplicate_transfers_are_booked_once(
    client: httpx.AsyncClient,
) -> None:
    # Five at once (the transfers rate limit allows five a second); the handlers run in
    # threads, each in its own BEGIN IMMEDIATE transaction on the ledger file.
    headers = {"Idempotency-Key": "t-3"}
    responses = await asyncio.gather(
        *(client.post("/transfers", json=TRANSFER, headers=headers) for _ in range(5))
    )

    assert [r.status_code for r in responses] == [201] * 5
    assert len({r.content for r in responses}) == 1
    assert sorted(r.headers.get("idempotent-replayed", "") for r in responses) == [
        "",
        *["true"] * 4,
    ]
    assert len(await transfers(client)) == 1
