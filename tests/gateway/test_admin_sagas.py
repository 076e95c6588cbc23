"""The gateway's ``[sagas]`` table and its admin endpoints (``/admin/sagas``,
``/admin/reconcile``) over a real SQLite saga log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _gateway_helpers import ADMIN_HEADERS, EchoUpstream, Running, gateway_config, problem, running

from _support import GUARD
from surefoot.errors import ConfigurationError
from surefoot.gateway import load_config
from surefoot.saga import Retry, Saga, SagaLog, SagaWorker, Step, StepContext, StepFailed

pytestmark = pytest.mark.anyio


def _ship(ctx: StepContext) -> dict[str, str]:
    if ctx.input.get("no_courier"):
        raise StepFailed("no courier")
    return {"parcel": "p-" + ctx.saga_id}


def _refund(ctx: StepContext) -> None:
    raise RuntimeError("the payment provider answered 503")


CHECKOUT = Saga(
    "checkout",
    [
        Step("charge", lambda ctx: {"charge": "ch-1"}, compensate=_refund,
             undo_retry=Retry(attempts=2, initial=0, maximum=0)),
        Step("ship", _ship),
    ],
)  # fmt: skip


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SagaLog]:
    """order-1 completed, order-2 needs_attention, order-3 running (not started yet)."""
    found = SagaLog(f"sqlite:///{tmp_path / 'shop.db'}")
    found.create_tables()
    worker = SagaWorker(found, [CHECKOUT], hooks=[])
    await worker.start(CHECKOUT, "order-1", {})
    await worker.start(CHECKOUT, "order-2", {"no_courier": True})
    while await worker.run_once():
        pass
    await worker.aclose()
    found.start(CHECKOUT, "order-3", {})
    yield found
    found.close()


@pytest.fixture
async def gateway(log: SagaLog) -> AsyncIterator[Running]:
    config = gateway_config(sagas={"database": log.database, "stuck_after": 60})
    async with running(config, upstream=EchoUpstream()) as r:
        yield r


async def test_the_saga_endpoints_need_the_admin_token(gateway: Running) -> None:
    for method, path in (
        ("GET", "/admin/sagas"),
        ("GET", "/admin/sagas/order-2"),
        ("POST", "/admin/sagas/order-2/resolve"),
        ("GET", "/admin/reconcile"),
    ):
        response = await gateway.admin.request(method, path, json={"reason": "x"})
        problem(response, 401, "admin_unauthorized")
        bad = await gateway.admin.request(
            method, path, headers={"Authorization": "Bearer wrong"}, json={"reason": "x"}
        )
        problem(bad, 401, "admin_unauthorized")
    assert (await gateway.admin.get("/admin/sagas/order-2", headers=ADMIN_HEADERS)).json()[
        "state"
    ] == "needs_attention"


async def test_list_and_filters(gateway: Running) -> None:
    async def ids(query: str) -> list[str]:
        response = await gateway.admin.get(f"/admin/sagas{query}", headers=ADMIN_HEADERS)
        assert response.status_code == 200, response.text
        return [run["id"] for run in response.json()["sagas"]]

    assert sorted(await ids("")) == ["order-1", "order-2", "order-3"]
    assert await ids("?state=needs_attention") == ["order-2"]
    assert await ids("?name=other") == []
    assert len(await ids("?limit=2")) == 2
    assert await ids("?older_than=1h") == []
    assert len(await ids("?older_than=0")) == 3


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("?state=sleeping", "state: expected one of"),
        ("?limit=0", "limit: expected a whole number from 1 to 1000"),
        ("?limit=abc", "limit: expected a whole number"),
        ("?older_than=soon", "older_than: expected seconds or a duration"),
        ("?color=red", "unknown parameter"),
        ("?state=running&state=completed", "expected once"),
    ],
)
async def test_a_bad_query_is_a_400(gateway: Running, query: str, says: str) -> None:
    response = await gateway.admin.get(f"/admin/sagas{query}", headers=ADMIN_HEADERS)
    assert says in problem(response, 400, "admin_bad_request")["detail"]


async def test_show_gives_the_run_and_its_timeline(gateway: Running) -> None:
    response = await gateway.admin.get("/admin/sagas/order-2", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["error"].startswith("charge: compensation failed")
    assert [s["undo_attempts"] for s in shown["steps"]] == [2, 0]
    kinds = [entry["kind"] for entry in shown["timeline"]]
    assert kinds[0] == "created"
    assert kinds[-1] == "needs_attention"


async def test_an_unknown_saga_or_path_is_a_404(gateway: Running) -> None:
    for method, path in (
        ("GET", "/admin/sagas/order-9"),
        ("POST", "/admin/sagas/order-9/resolve"),
        ("POST", "/admin/sagas/order-2/explode"),
        ("GET", "/admin/sagas/order-2/retry"),
        ("GET", "/admin/sagas/"),
    ):
        response = await gateway.admin.request(
            method, path, headers=ADMIN_HEADERS, json={"reason": "x"}
        )
        problem(response, 404, "admin_not_found")


async def test_an_action_records_who_and_why(gateway: Running, log: SagaLog) -> None:
    response = await gateway.admin.post(
        "/admin/sagas/order-2/resolve",
        headers=ADMIN_HEADERS,
        json={"reason": "refunded by hand, ticket 77", "actor": "ana"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "resolved"
    last = log.timeline("order-2")[-1]
    assert (last.kind, last.detail, last.actor) == ("resolve", "refunded by hand, ticket 77", "ana")


async def test_the_actor_defaults_to_admin(gateway: Running, log: SagaLog) -> None:
    response = await gateway.admin.post(
        "/admin/sagas/order-2/retry", headers=ADMIN_HEADERS, json={"reason": "provider is back"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "compensating"
    assert log.timeline("order-2")[-1].actor == "admin"


@pytest.mark.parametrize("action", ["retry", "compensate", "resolve"])
async def test_an_action_the_state_refuses_is_a_409(
    gateway: Running, log: SagaLog, action: str
) -> None:
    before = len(log.timeline("order-1"))
    response = await gateway.admin.post(
        f"/admin/sagas/order-1/{action}", headers=ADMIN_HEADERS, json={"reason": "why not"}
    )
    body = problem(response, 409, "saga_action_refused")
    assert "the saga is completed" in body["detail"]
    assert len(log.timeline("order-1")) == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "reason: expected a string"),
        ({"reason": 3}, "reason: expected a string"),
        ({"reason": "é"}, "reason: expected 1-500 printable ASCII"),
        ({"reason": "ok", "actor": "two words"}, "actor: expected"),
        ({"reason": "ok", "extra": 1}, "unknown fields"),
    ],
)
async def test_a_bad_body_is_a_400(
    gateway: Running, log: SagaLog, body: dict[str, Any], says: str
) -> None:
    response = await gateway.admin.post(
        "/admin/sagas/order-2/resolve", headers=ADMIN_HEADERS, json=body
    )
    assert says in problem(response, 400, "admin_bad_request")["detail"]
    run = log.get("order-2")
    assert run is not None
    assert run.state == "needs_attention"


async def test_reconcile_reports_what_needs_a_person(gateway: Running) -> None:
    before = await gateway.admin.get("/admin/reconcile", headers=ADMIN_HEADERS)
    assert before.status_code == 200, before.text
    assert before.json() == {"report": None}  # no sweep ran yet, and the request ran none
    sweeper = gateway.gateway.sweeper
    assert sweeper is not None
    assert sweeper.last is None
    await sweeper.sweep_once()
    response = await gateway.admin.get("/admin/reconcile", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    report = response.json()["report"]
    assert report["needs_person"] is True
    assert report["parts"] == ["keys", "sagas"]
    found = [(f["kind"], f["subject"]) for f in report["findings"]]
    assert found == [("saga_needs_attention", "order-2")]
    counts = {(c["name"], c["state"]): c["count"] for c in report["saga_counts"]}
    assert counts == {
        ("checkout", "completed"): 1,
        ("checkout", "needs_attention"): 1,
        ("checkout", "running"): 1,
    }


async def test_without_a_sagas_table_the_endpoints_are_404() -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as r:
        for path in ("/admin/sagas", "/admin/sagas/order-1", "/admin/reconcile"):
            response = await r.admin.get(path, headers=ADMIN_HEADERS)
            assert "[sagas]" in problem(response, 404, "admin_not_found")["detail"]


def test_a_bad_sagas_table_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n[admin]\ntoken = "admin-token-for-tests"\n'
        '[sagas]\ndatabase = "mysql://db"\nprefix = "Bad"\nstuck_after = 0\ncolor = 1\n'
    )
    with pytest.raises(ConfigurationError) as raised:
        load_config(str(path))
    message = str(raised.value)
    assert f"{path}:6: sagas.database: expected a sqlite:///path or postgresql:// URL" in message
    assert f"{path}:8: sagas.stuck_after: expected seconds from 1" in message
    assert f"{path}:9: sagas.color" in message
    path.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n[admin]\ntoken = "admin-token-for-tests"\n'
        '[sagas]\ndatabase = "sqlite:///x.db"\nprefix = "Bad"\n'
    )
    with pytest.raises(ConfigurationError) as raised:
        load_config(str(path))
    assert f"{path}:7: sagas.prefix: expected lowercase letters" in str(raised.value)


def test_the_config_masks_the_sagas_database() -> None:
    config = gateway_config(sagas={"database": "postgresql://app:hunter2-saga@db.internal/shop"})
    assert config.sagas is not None
    assert config.sagas.reconcile_interval == 30.0
    shown = config.effective()["sagas"]
    assert "hunter2-saga" not in shown["database"]
    assert shown["stuck_after"] == 900.0


async def test_the_gateway_sweeps_at_start_and_logs_each_finding(
    log: SagaLog, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(sagas={"database": log.database, "reconcile_interval": 3600})
    caplog.set_level("WARNING", logger="surefoot.gateway")
    async with running(config, upstream=EchoUpstream()) as r:
        await r.gateway.startup()
        sweeper = r.gateway.sweeper
        assert sweeper is not None
        with anyio.fail_after(GUARD):  # the first sweep, or the test fails
            while sweeper.last is None:  # noqa: ASYNC110 - waits for the sweep, not for time
                await asyncio.sleep(0)
        exposed = r.gateway.metrics.render()[0].decode()
    lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith("surefoot.gateway")]
    (line,) = [line for line in lines if "order-2" in line]
    assert line.startswith(
        "reconcile: saga_needs_attention order-2 (checkout): charge: compensation failed: "
        "RuntimeError: the payment provider answered 503 [age "
    )
    assert 'surefoot_sagas{saga="checkout",state="needs_attention"} 1.0' in exposed
