"""The exactly-once drill's webhook scenario (``target = "webhooks"``).

Senders deliver signed Standard Webhooks events (each a charge) through a chaos proxy that
loses answers after the event was processed and delivers events twice, to the ledger app
behind a ``WebhookReceiver`` (``tools.drill.receiver``); the audit requires each event
booked exactly once. The slow tests run ``tools/drill/webhooks-ci.toml`` on SQLite and on
a private Redis, and the comparison run without the receiver, which must book some
events twice (or the drill could not tell).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from surefoot.errors import ConfigurationError
from surefoot.storage import SqliteStore
from surefoot.webhooks import StandardWebhooks
from tools.drill import DrillReport, Scenario, run_drill
from tools.drill.__main__ import main
from tools.drill.receiver import SECRET_VARIABLE, build_receiver
from tools.drill.receiver import main as receiver_main

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tools" / "drill" / "webhooks-ci.toml"

WEBHOOKS = """\
[drill]
target = "webhooks"
clients = 2
payments = 3

[chaos.client]
[[chaos.client.rules]]
name = "lost"
fault = "fail_after"
probability = 0.2
"""


def problems(tmp_path: Path, text: str) -> str:
    path = tmp_path / "drill.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        Scenario.from_toml(path)
    return str(info.value).replace(str(path), "F")


def test_the_ci_scenario_loads() -> None:
    scenario = Scenario.from_toml(SCENARIO)
    assert (scenario.target, scenario.total, scenario.store) == ("webhooks", 200, "sqlite")
    assert scenario.description
    assert scenario.upstream_rules == ()
    kinds = {rule.fault.kind for rule in scenario.client_rules}
    assert {"fail_after", "duplicate"} <= kinds
    assert Scenario.from_toml(SCENARIO).overridden(target="gateway").target == "gateway"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            WEBHOOKS.replace('target = "webhooks"', 'target = "queue"'),
            "F:2: drill.target: expected 'gateway', 'webhooks', 'outbox' or 'saga', got 'queue'",
        ),
        (
            WEBHOOKS
            + '\n[chaos.upstream]\n[[chaos.upstream.rules]]\nname = "x"\nfault = "reset"\n',
            "F:12: chaos.upstream: expected no [[chaos.upstream.rules]] with target = 'webhooks'",
        ),
        (
            WEBHOOKS.replace("payments = 3", "payments = 3\nfail_after_commit = 0.1"),
            "F:5: drill.fail_after_commit: expected 0 with target = 'webhooks'",
        ),
    ],
)
def test_webhook_scenario_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    message = problems(tmp_path, text)
    assert expected in message, message


def test_an_override_to_webhooks_is_checked_again() -> None:
    scenario = Scenario.from_toml(ROOT / "examples" / "drills" / "ci-small.toml")
    with pytest.raises(ConfigurationError, match=r"expected no \[\[chaos\.upstream\.rules\]\]"):
        scenario.overridden(target="webhooks")


@pytest.mark.anyio
@pytest.mark.parametrize("bare", [False, True])
async def test_the_receiver_books_each_event_once_unless_bare(tmp_path: Path, bare: bool) -> None:
    secret = "whsec_" + base64.b64encode(b"surefoot-drill-test-secret-32-by").decode()
    store = None if bare else SqliteStore(tmp_path / "store.db")
    app = build_receiver(str(tmp_path / "ledger.db"), store, secret=secret)
    body = b'{"amount":500,"currency":"eur","customer":"cus_1","reference":"evt-1"}'
    headers = StandardWebhooks(secrets=(secret,)).sign(
        body, event_id="evt-1", timestamp=int(time.time())
    )
    headers["content-type"] = "application/json"
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            first = await client.post("/charges", content=body, headers=headers)
            again = await client.post("/charges", content=body, headers=headers)
            unsigned = await client.post(
                "/charges", content=body, headers={"content-type": "application/json"}
            )
            audit = (await client.get("/audit")).json()
    finally:
        if store is not None:
            await store.aclose()
    assert first.status_code == again.status_code == 201
    if bare:
        assert first.json()["id"] != again.json()["id"]
        assert unsigned.status_code == 201
        assert (audit["charges"], audit["duplicated_references"]) == (3, ["evt-1"])
    else:
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        assert (unsigned.status_code, unsigned.json()["code"]) == (400, "webhook_signature_missing")
        assert (audit["charges"], audit["duplicated_references"]) == (1, [])


def test_the_receiver_command_needs_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as info:
        receiver_main(["--port", "1", "--ledger", "l.db", "--store", "memory://"])
    assert info.value.code == 2


# -- real drills --------------------------------------------------------------------------------


def assert_exactly_once(report: DrillReport, scenario: Scenario) -> None:
    a = report.audit
    assert (a.duplicated, a.missing, a.mismatched, a.stray) == (0, 0, 0, 0), report.to_dict()
    assert a.expected == a.succeeded == a.recorded == scenario.total
    assert report.ok
    assert report.target == "webhooks"
    # The faults really happened: every kind the plan names was injected at least once...
    kinds = {rule.fault.kind for rule in scenario.client_rules}
    injected = report.faults["client"]
    assert {kind for kind in kinds if injected.get(kind, 0) > 0} == kinds, injected
    assert report.faults["upstream"] == {}
    # ...and some senders were told the stored answer of an event already processed.
    assert a.replayed > 0
    assert report.retries_per_payment > 0


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (the drill starts a private one)"
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_the_webhook_drill_duplicates_and_loses_nothing(store: str) -> None:
    if store == "redis":
        require_redis_server()
    scenario = Scenario.from_toml(SCENARIO).overridden(store=store)
    report = run_drill(scenario)
    assert report.store == store
    assert_exactly_once(report, scenario)


@pytest.mark.slow
def test_without_the_receiver_the_same_deliveries_book_events_twice(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    args = [str(SCENARIO), "--no-idempotency", "--clients", "2", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output
    data = json.loads(out.read_text())
    assert (data["target"], data["idempotency"], data["ok"]) == ("webhooks", False, False)
    assert data["audit"]["duplicated"] > 0
    assert data["audit"]["missing"] == 0
