"""The legacy payments example: the gateway's upstream, which commits and then may fail."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.legacy_payments import __main__ as legacy_main
from examples.legacy_payments import app as legacy_app
from examples.legacy_payments.app import create_app

from _support import free_port

CHARGE = {"amount": 1999, "currency": "eur", "customer": "cus_42", "reference": "order-1"}
FIELDS = {"id", "amount", "currency", "customer", "reference", "created"}
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.anyio


def connect(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://legacy")


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "legacy.db"


@pytest.fixture
async def client(ledger_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with connect(create_app(str(ledger_path))) as client:
        yield client


def rows(ledger_path: Path) -> list[dict[str, Any]]:
    """The ledger as the database has it, forwarded keys included."""
    with closing(sqlite3.connect(ledger_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM charges ORDER BY rowid")]


async def charges(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/charges", params=params)
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


# -- charges ---------------------------------------------------------------------------


async def test_a_charge_is_created_and_visible(client: httpx.AsyncClient) -> None:
    response = await client.post("/charges", json=CHARGE)

    assert response.status_code == 201
    charge = response.json()
    assert set(charge) == FIELDS
    assert charge["id"].startswith("ch_")
    assert {k: charge[k] for k in CHARGE} == CHARGE
    assert (await client.get(f"/charges/{charge['id']}")).json() == charge
    assert await charges(client) == [charge]


async def test_the_same_charge_sent_twice_is_booked_twice(client: httpx.AsyncClient) -> None:
    first = await client.post("/charges", json=CHARGE, headers={"Idempotency-Key": "k-1"})
    second = await client.post("/charges", json=CHARGE, headers={"Idempotency-Key": "k-1"})

    assert [first.status_code, second.status_code] == [201, 201]
    assert first.json()["id"] != second.json()["id"]
    assert len(await charges(client)) == 2


async def test_a_forwarded_idempotency_key_is_stored_but_not_shown(
    client: httpx.AsyncClient, ledger_path: Path
) -> None:
    with_key = (
        await client.post("/charges", json=CHARGE, headers={"Idempotency-Key": "k-7"})
    ).json()
    without = (await client.post("/charges", json={**CHARGE, "reference": None})).json()

    assert "idempotency_key" not in (await client.get(f"/charges/{with_key['id']}")).json()
    assert [(r["id"], r["idempotency_key"]) for r in rows(ledger_path)] == [
        (with_key["id"], "k-7"),
        (without["id"], None),
    ]
    assert without["reference"] is None


async def test_an_unknown_charge_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/charges/ch_nope")

    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


@pytest.mark.parametrize(
    "body",
    [
        {**CHARGE, "amount": 0},
        {**CHARGE, "amount": -5},
        {**CHARGE, "amount": 19.99},
        {**CHARGE, "amount": "1999"},
        {**CHARGE, "currency": "EUR"},
        {**CHARGE, "currency": "euro"},
        {**CHARGE, "customer": ""},
        {**CHARGE, "reference": ""},
        {k: v for k, v in CHARGE.items() if k != "customer"},
    ],
)
async def test_an_invalid_charge_is_422_and_not_booked(
    client: httpx.AsyncClient, ledger_path: Path, body: dict[str, Any]
) -> None:
    response = await client.post("/charges", json=body)

    assert response.status_code == 422
    assert rows(ledger_path) == []


async def test_an_unknown_failure_header_is_422_and_not_booked(
    client: httpx.AsyncClient, ledger_path: Path
) -> None:
    response = await client.post("/charges", json=CHARGE, headers={"X-Legacy-Fail": "sometimes"})

    assert response.status_code == 422
    assert rows(ledger_path) == []


# -- lookups ---------------------------------------------------------------------------


async def test_by_reference_answers_the_most_recent_charge(client: httpx.AsyncClient) -> None:
    await client.post("/charges", json=CHARGE)
    newer = (await client.post("/charges", json={**CHARGE, "amount": 2999})).json()
    other = (await client.post("/charges", json={**CHARGE, "reference": "shop/order 2"})).json()

    assert (await client.get("/charges/by-reference/order-1")).json() == newer
    # A reference with a slash or a space, percent-encoded by the client, is found too.
    assert (await client.get("/charges/by-reference/shop%2Forder%202")).json() == other
    missing = await client.get("/charges/by-reference/order-404")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not found"}


async def test_charges_are_listed_newest_first_and_filtered(client: httpx.AsyncClient) -> None:
    booked = [
        (
            await client.post(
                "/charges", json={**CHARGE, "customer": customer, "reference": f"o-{i}"}
            )
        ).json()
        for i, customer in enumerate(["cus_a", "cus_b", "cus_a", "cus_a"])
    ]

    assert await charges(client) == booked[::-1]
    assert await charges(client, customer="cus_a") == [booked[3], booked[2], booked[0]]
    assert await charges(client, customer="cus_a", limit=2) == [booked[3], booked[2]]
    assert await charges(client, customer="cus_nobody") == []


@pytest.mark.parametrize("limit", [0, 1001])
async def test_a_list_limit_out_of_range_is_422(client: httpx.AsyncClient, limit: int) -> None:
    assert (await client.get("/charges", params={"limit": limit})).status_code == 422


async def test_the_list_holds_100_charges_by_default(ledger_path: Path) -> None:
    async with connect(create_app(str(ledger_path))) as client:
        for i in range(101):
            await client.post("/charges", json={**CHARGE, "reference": f"o-{i}"})

        assert len(await charges(client)) == 100
        assert (await charges(client))[-1]["reference"] == "o-1"
        assert len(await charges(client, limit=1000)) == 101


# -- failures --------------------------------------------------------------------------


async def test_a_charge_commits_then_fails_when_fail_after_commit_is_1(ledger_path: Path) -> None:
    async with connect(create_app(str(ledger_path), fail_after_commit=1.0)) as client:
        response = await client.post("/charges", json=CHARGE, headers={"Idempotency-Key": "k-1"})

        assert response.status_code == 500
        assert response.json() == {"error": "internal error"}
        # The customer was charged all the same, and a lookup can tell.
        [row] = rows(ledger_path)
        assert {k: row[k] for k in CHARGE} == CHARGE
        assert row["idempotency_key"] == "k-1"
        found = await client.get("/charges/by-reference/order-1")
        assert found.status_code == 200
        assert found.json()["id"] == row["id"]


async def test_a_client_retrying_the_500_charges_twice(ledger_path: Path) -> None:
    async with connect(create_app(str(ledger_path))) as client:
        failed = await client.post(
            "/charges", json=CHARGE, headers={"X-Legacy-Fail": "after-commit"}
        )
        retried = await client.post("/charges", json=CHARGE)

        assert [failed.status_code, retried.status_code] == [500, 201]
        assert failed.json() == {"error": "internal error"}
        assert (await client.get("/audit")).json() == {
            "charges": 2,
            "references": 1,
            "duplicated_references": ["order-1"],
        }


async def test_before_commit_answers_500_and_writes_nothing(
    client: httpx.AsyncClient, ledger_path: Path
) -> None:
    response = await client.post(
        "/charges", json=CHARGE, headers={"X-Legacy-Fail": "before-commit"}
    )

    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert rows(ledger_path) == []
    assert (await client.get("/charges/by-reference/order-1")).status_code == 404


async def test_the_failure_header_overrides_the_probability(ledger_path: Path) -> None:
    async with connect(create_app(str(ledger_path), fail_after_commit=1.0)) as client:
        response = await client.post(
            "/charges", json=CHARGE, headers={"X-Legacy-Fail": "before-commit"}
        )

        assert response.status_code == 500
        assert rows(ledger_path) == []


async def statuses(ledger_path: Path, seed: int, n: int = 40) -> list[int]:
    async with connect(create_app(str(ledger_path), fail_after_commit=0.5, seed=seed)) as client:
        return [
            (await client.post("/charges", json={**CHARGE, "reference": f"o-{i}"})).status_code
            for i in range(n)
        ]


async def test_a_seeded_app_fails_on_the_same_requests(tmp_path: Path) -> None:
    first = await statuses(tmp_path / "a.db", seed=7)
    second = await statuses(tmp_path / "b.db", seed=7)
    other = await statuses(tmp_path / "c.db", seed=8)

    # One draw from random.Random(seed) per charge request; below the probability fails.
    draws = random.Random(7)
    assert first == [500 if draws.random() < 0.5 else 201 for _ in first]
    assert second == first
    assert other != first
    # Failed or not, every charge was committed.
    assert len(rows(tmp_path / "a.db")) == len(first)


async def test_forced_failures_take_no_draw(ledger_path: Path) -> None:
    async with connect(create_app(str(ledger_path), fail_after_commit=0.5, seed=7)) as client:
        forced = {"X-Legacy-Fail": "before-commit"}
        got = []
        for i in range(20):
            await client.post("/charges", json=CHARGE, headers=forced)
            got.append(
                (await client.post("/charges", json={**CHARGE, "reference": f"o-{i}"})).status_code
            )

    draws = random.Random(7)
    assert got == [500 if draws.random() < 0.5 else 201 for _ in got]


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_a_probability_outside_0_to_1_is_refused(ledger_path: Path, p: float) -> None:
    with pytest.raises(ValueError, match="fail_after_commit"):
        create_app(str(ledger_path), fail_after_commit=p)


# -- audit, health, helpers for gateway tests ------------------------------------------


async def test_audit_counts_charges_references_and_duplicates(client: httpx.AsyncClient) -> None:
    assert (await client.get("/audit")).json() == {
        "charges": 0,
        "references": 0,
        "duplicated_references": [],
    }
    for reference in ["o-2", "o-1", "o-2", "o-3", "o-1", "o-2", None]:
        await client.post("/charges", json={**CHARGE, "reference": reference})

    assert (await client.get("/audit")).json() == {
        "charges": 7,
        "references": 3,
        "duplicated_references": ["o-1", "o-2"],
    }


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_slow_answers_after_the_delay_it_was_asked_for(client: httpx.AsyncClient) -> None:
    response = await client.get("/slow", params={"seconds": 0})

    assert response.status_code == 200
    assert response.json() == {"slept": 0}
    assert (await client.get("/slow", params={"seconds": 31})).status_code == 422
    assert (await client.get("/slow", params={"seconds": -1})).status_code == 422


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("code", [200, 429, 500, 502, 503])
async def test_status_answers_the_status_asked_for(
    client: httpx.AsyncClient, method: str, code: int
) -> None:
    response = await client.request(method, f"/status/{code}")

    assert response.status_code == code
    assert response.json() == {"status": code}


async def test_status_answers_no_body_where_http_forbids_one(client: httpx.AsyncClient) -> None:
    response = await client.get("/status/204")

    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get("/status/99")).status_code == 422
    assert (await client.get("/status/600")).status_code == 422


# -- sharing one ledger, configuration -------------------------------------------------


async def test_two_workers_share_one_ledger(ledger_path: Path) -> None:
    workers = [connect(create_app(str(ledger_path))) for _ in range(2)]

    async def book(i: int) -> int:
        body = {**CHARGE, "reference": f"o-{i}"}
        return (await workers[i % 2].post("/charges", json=body)).status_code

    async with workers[0], workers[1]:
        assert await asyncio.gather(*(book(i) for i in range(40))) == [201] * 40
        audit = (await workers[1].get("/audit")).json()

    assert audit == {"charges": 40, "references": 40, "duplicated_references": []}


async def test_app_is_built_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, ledger_path: Path
) -> None:
    monkeypatch.setenv("LEGACY_LEDGER", str(ledger_path))
    monkeypatch.setenv("LEGACY_FAIL_AFTER_COMMIT", "1")
    monkeypatch.delenv("LEGACY_SEED", raising=False)
    assert "app" not in vars(legacy_app)  # not built on import

    try:
        async with connect(legacy_app.app) as client:
            response = await client.post("/charges", json=CHARGE)
    finally:
        vars(legacy_app).pop("app", None)  # the next test builds its own

    assert response.status_code == 500
    assert len(rows(ledger_path)) == 1


def test_the_ledger_defaults_to_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    create_app()

    assert (tmp_path / "legacy_ledger.db").exists()


def test_main_passes_its_options_to_the_workers_through_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ["LEGACY_LEDGER", "LEGACY_FAIL_AFTER_COMMIT", "LEGACY_SEED"]:
        # setenv first: delenv of an absent name records nothing, and main() sets these in
        # os.environ, which then leaked (a fail_after_commit of 0.3) into every later
        # legacy server a test started.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(legacy_main.uvicorn, "run", lambda *a, **kw: calls.append((a, kw)))

    legacy_main.main(["--ledger", "l.db", "--fail-after-commit", "0.3", "--seed", "5"])

    [(args, kwargs)] = calls
    assert args == ("examples.legacy_payments.app:app",)
    assert (kwargs["host"], kwargs["port"], kwargs["workers"]) == ("127.0.0.1", 9000, 1)
    assert os.environ["LEGACY_LEDGER"] == str(tmp_path / "l.db")
    assert float(os.environ["LEGACY_FAIL_AFTER_COMMIT"]) == 0.3
    assert os.environ["LEGACY_SEED"] == "5"
    assert (tmp_path / "l.db").exists()  # created once, before the workers start


def test_main_refuses_a_probability_outside_0_to_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(legacy_main.uvicorn, "run", lambda *a, **kw: None)

    with pytest.raises(SystemExit):
        legacy_main.main(["--fail-after-commit", "2"])

    assert "must be between 0 and 1" in capsys.readouterr().err


# -- a real server ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_module_serves_the_app_with_several_workers(tmp_path: Path) -> None:
    port = free_port()
    ledger = tmp_path / "served.db"
    command = [sys.executable, "-m", "examples.legacy_payments", "--port", str(port)]
    command += ["--workers", "2", "--ledger", str(ledger), "--fail-after-commit", "1"]
    server = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass  # not listening yet
                assert server.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
            answers = [http.post("/charges", json=CHARGE).status_code for _ in range(6)]
            audit = http.get("/audit").json()
    finally:
        server.terminate()
        server.wait(30)

    # The workers read the options from the environment: every charge commits, then fails.
    assert answers == [500] * 6
    assert audit == {"charges": 6, "references": 1, "duplicated_references": ["order-1"]}
