"""The exactly-once drill's outbox scenario (``target = "outbox"``): the sending side.

Applications commit charges with their ``charge.created`` events enqueued in the same
SQLite transaction (some rolled back after the enqueue); outbox worker processes deliver
them through a chaos proxy to the webhook drill's receiver while the drill SIGKILLs
workers, and an application right after a COMMIT. The slow test runs
``tools/drill/outbox-ci.toml``; the fast ones cover the scenario file, the audit's
arithmetic, the reports, the application's restart and the receiver's wire log.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from surefoot.errors import ConfigurationError
from surefoot.storage import SqliteStore
from surefoot.webhooks import StandardWebhooks
from tools.drill import (
    DrillAudit,
    DrillReport,
    OutboxAudit,
    Scenario,
    drill_markdown,
    drill_table,
    run_drill,
)
from tools.drill.outbox import TABLE_PREFIX, charge_id, rolls_back, setup
from tools.drill.outbox import main as outbox_main
from tools.drill.receiver import build_receiver
from tools.drill.scenario import Wire, outbox_audit

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tools" / "drill" / "outbox-ci.toml"
SECRET = "whsec_" + base64.b64encode(b"surefoot-drill-test-secret-32-by").decode()

OUTBOX = """\
[drill]
target = "outbox"
clients = 2
payments = 3

[outbox]
workers = 2
lease = 2
timeout = 1.5
schedule = [0, 0.2, 0.5]

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


# -- scenario files ------------------------------------------------------------------------------


def test_the_ci_scenario_loads() -> None:
    scenario = Scenario.from_toml(SCENARIO)
    assert (scenario.target, scenario.store, scenario.total) == ("outbox", "sqlite", 240)
    o = scenario.outbox
    assert (o.workers >= 2, o.worker_kills >= 1, o.kill_app) == (True, True, True)
    assert 0 < o.rollback < 1
    assert o.timeout < o.lease
    kinds = {rule.fault.kind for rule in scenario.client_rules}
    assert {"fail_after", "duplicate", "abort", "reset", "hang"} <= kinds
    assert scenario.upstream_rules == ()


def test_a_small_file_loads_with_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(OUTBOX)
    scenario = Scenario.from_toml(path)
    assert scenario.outbox.schedule == (0.0, 0.2, 0.5)
    assert (scenario.outbox.rollback, scenario.outbox.kill_app) == (0.1, True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            OUTBOX.replace('target = "outbox"', 'target = "queue"'),
            "F:2: drill.target: expected 'gateway', 'webhooks', 'outbox' or 'saga', got 'queue'",
        ),
        (
            OUTBOX + '\n[chaos.upstream]\n[[chaos.upstream.rules]]\nname = "x"\nfault = "reset"\n',
            "F:18: chaos.upstream: expected no [[chaos.upstream.rules]] with target = 'outbox'",
        ),
        (
            OUTBOX.replace("payments = 3", "payments = 3\nfail_after_commit = 0.1"),
            "F:5: drill.fail_after_commit: expected 0 with target = 'outbox'",
        ),
        (
            OUTBOX.replace("lease = 2", "lease = 1.5"),
            "F:8: outbox.lease: expected seconds longer than timeout (1.5)",
        ),
        (
            OUTBOX.replace("[0, 0.2, 0.5]", "[0, 0.5, 0.2]"),
            "F:10: outbox.schedule[2]: expected a delay no shorter than the one before (0.5 s)",
        ),
        (
            OUTBOX.replace("[0, 0.2, 0.5]", "[0, -1]"),
            "F:10: outbox.schedule[1]: expected a list of 1 to 100 delays",
        ),
        (
            OUTBOX.replace("workers = 2", "workers = 2\nrollback = 1"),
            "F:8: outbox.rollback: expected a share in [0, 1), got 1",
        ),
        (
            OUTBOX.replace("workers = 2", "workers = 0"),
            "F:7: outbox.workers: expected a whole number from 1 to 16, got 0",
        ),
        (
            OUTBOX.replace("workers = 2", 'workers = 2\nrate_limit = "lots"'),
            "F:8: outbox.rate_limit: expected a limit such as '100/second', got 'lots'",
        ),
        (
            OUTBOX.replace("workers = 2", "workers = 2\nkills = 3"),
            "F:8: outbox.kills: unknown field",
        ),
    ],
)  # fmt: skip
def test_outbox_scenario_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    message = problems(tmp_path, text)
    assert expected in message, message


def test_an_override_to_outbox_is_checked_again() -> None:
    scenario = Scenario.from_toml(ROOT / "examples" / "drills" / "ci-small.toml")
    with pytest.raises(ConfigurationError, match=r"target = 'outbox'"):
        scenario.overridden(target="outbox")


# -- the audit ---------------------------------------------------------------------------------


def clean() -> dict[str, Any]:
    """Two committed charges delivered once each (one after a duplicate absorbed), one
    rolled back: the arguments of a passing audit."""
    return {
        "transactions": 3,
        "committed": ["c1", "c2"],
        "rolled_back": ["c3"],
        "ledger": {"c1": ["ch_1"], "c2": ["ch_2"]},
        "deliveries": {"c1": ("delivered", 1), "c2": ("delivered", 3)},
        "wire": [
            Wire(webhook_id="c1", event="c1", status=201),
            Wire(webhook_id="c2", event="c2", status=201),
            Wire(webhook_id="c2", event="c2", status=201, absorbed=True),
        ],
        "worker_kills": 4,
        "app_kills": 1,
    }


def test_a_clean_outbox_run_passes() -> None:
    a = outbox_audit(**clean())
    assert a.ok
    assert (a.transactions, a.committed, a.rolled_back, a.booked, a.messages) == (3, 2, 1, 2, 2)
    assert (a.attempts, a.requests, a.absorbed) == (4, 3, 1)
    assert (a.worker_kills, a.app_kills) == (4, 1)
    assert all(getattr(a, name) == 0 for name in OutboxAudit.PROBLEMS)
    assert a.examples == {}


@pytest.mark.parametrize(
    ("change", "problem", "count", "example"),
    [
        ({"ledger": {"c1": ["ch_1"]}}, "lost", 1, "c2"),
        ({"ledger": {"c1": ["ch_1", "ch_9"], "c2": ["ch_2"]}}, "doubled", 1, "c1"),
        ({"ledger": {"c1": ["ch_1"], "c2": ["ch_2"], "c3": ["ch_3"]}},
         "rolled_back_booked", 1, "c3"),
        ({"ledger": {"c1": ["ch_1"], "c2": ["ch_2"], "zz": ["ch_3"]}}, "stray", 1, "zz"),
        ({"deliveries": {"c1": ("delivered", 1)}}, "unrecorded", 1, "c2"),
        ({"deliveries": {"c1": ("delivered", 1), "c2": ("delivered", 1), "c3": ("pending", 0)}},
         "orphaned", 1, "c3"),
        ({"deliveries": {"c1": ("delivered", 1), "c2": ("failed", 7)}}, "undelivered", 1, "c2"),
        ({"deliveries": {"c1": ("delivered", 1), "c2": ("sending", 2)}}, "undelivered", 1, "c2"),
        ({"transactions": 5}, "unaccounted", 2, None),
        ({"rolled_back": ["c3", "c2"]}, "unaccounted", 1, None),
        ({"wire": [Wire(webhook_id="c1", event="c1"), Wire(webhook_id="msg_x", event="c2")]},
         "id_changed", 1, "c2"),
        ({"wire": [Wire(webhook_id="c1", event="c1"), Wire(webhook_id=None, event="c1")]},
         "id_changed", 1, "c1"),
    ],
)  # fmt: skip
def test_outbox_audit_arithmetic(
    change: dict[str, object], problem: str, count: int, example: str | None
) -> None:
    a = outbox_audit(**{**clean(), **change})
    assert getattr(a, problem) == count
    assert not a.ok
    others = [name for name in OutboxAudit.PROBLEMS if name != problem and getattr(a, name)]
    assert others == []
    if example is not None:
        noted = {"doubled": "duplicated", "undelivered": "unfinished"}.get(problem, problem)
        assert example in a.examples[noted]


def test_a_doubled_charge_counts_its_extra_bookings() -> None:
    a = outbox_audit(**{**clean(), "ledger": {"c1": ["a", "b", "c"], "c2": ["d"]}})
    assert (a.doubled, a.extra_charges, a.booked) == (1, 2, 4)


def test_the_outbox_audit_reads_in_the_other_targets_terms() -> None:
    a = outbox_audit(
        **{
            **clean(),
            "ledger": {"c1": ["ch_1", "ch_9"], "c3": ["ch_3"]},
            "deliveries": {"c1": ("delivered", 1), "c2": ("failed", 7)},
        }
    )
    d = a.drill_audit()
    assert isinstance(d, DrillAudit)
    assert (d.expected, d.succeeded, d.recorded) == (2, 1, 3)
    assert (d.duplicated, d.extra_charges, d.lost, d.unfinished) == (1, 1, 1, 1)
    assert (d.stray, d.mismatched, d.replayed) == (1, 0, 1)
    assert not d.ok


def report(outbox: OutboxAudit) -> DrillReport:
    return DrillReport(
        scenario="outbox-ci",
        store="sqlite",
        idempotency=True,
        clients=2,
        payments=3,
        workers=1,
        seed=1,
        audit=outbox.drill_audit(),
        attempts=outbox.attempts,
        seconds=2.0,
        wall=9.0,
        faults={"client": {"duplicate": 1}, "upstream": {}},
        target="outbox",
        outbox=outbox,
    )


def test_an_outbox_report_serialises_and_tabulates() -> None:
    passing = report(outbox_audit(**clean()))
    # A delivery left failing is not a duplicate or a loss in the ledger, and still fails.
    failing_outbox = outbox_audit(**{**clean(), "deliveries": {"c1": ("delivered", 1)}})
    failing = report(failing_outbox)
    assert (passing.ok, failing.ok) == (True, False)
    data = json.loads(json.dumps(passing.to_dict()))
    assert data["target"] == "outbox"
    assert (data["outbox"]["committed"], data["outbox"]["worker_kills"]) == (2, 4)
    assert data["audit"]["duplicated"] == 0
    table = drill_markdown([passing, failing])
    outbox_rows = [line for line in table.splitlines() if "| outbox-ci | sqlite | 2 |" in line]
    assert outbox_rows == [
        "| outbox-ci | sqlite | 2 | 1 | 4 | 1 | 4 | 1 | 0 | 0 | 0 | 0 | 0 | 9 s |",
        "| outbox-ci | sqlite | 2 | 1 | 4 | 1 | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 9 s |",
    ]
    console = Console(width=200, record=True)
    console.print(drill_table([passing, failing]))
    text = console.export_text()
    for shown in ("worker kills / app kills", "unrecorded", "PASS", "FAIL"):
        assert shown in text


# -- the application and the receiver ---------------------------------------------------------


def run_app(db: Path, journal: Path, *extra: str) -> None:
    args = ["app", "--database", str(db), "--client", "0", "--journal", str(journal)]
    outbox_main([*args, "--rollback", "0.4", "--seed", "3", *extra])


def test_an_application_commits_and_rolls_back_with_its_events(tmp_path: Path) -> None:
    db, journal = tmp_path / "app.db", tmp_path / "app-0.journal"
    setup(str(db), url="http://127.0.0.1:9/charges", secret=SECRET)
    run_app(db, journal, "--transactions", "10")
    undone = {charge_id(0, n) for n in range(10) if rolls_back(3, 0, n, 0.4)}
    assert 0 < len(undone) < 10
    with sqlite3.connect(db) as conn:
        charges = {row[0] for row in conn.execute("SELECT id FROM charges")}
        messages = {row[0] for row in conn.execute(f"SELECT id FROM {TABLE_PREFIX}_messages")}
        states = {row[0] for row in conn.execute(f"SELECT state FROM {TABLE_PREFIX}_deliveries")}
    conn.close()
    assert charges == messages == {charge_id(0, n) for n in range(10)} - undone
    assert states == {"pending"}
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert {line["id"] for line in lines if line["outcome"] == "rollback"} == undone


def test_a_restarted_application_carries_on_after_its_last_commit(tmp_path: Path) -> None:
    db, journal = tmp_path / "app.db", tmp_path / "app-0.journal"
    setup(str(db), url="http://127.0.0.1:9/charges", secret=SECRET)
    run_app(db, journal, "--transactions", "4")
    # The crash the drill makes: a COMMIT the journal never heard of.
    lines = journal.read_text().splitlines()
    committed = [line for line in lines if json.loads(line)["outcome"] == "commit"]
    journal.write_text("".join(line + "\n" for line in lines if line != committed[-1]))
    run_app(db, journal, "--transactions", "8")
    with sqlite3.connect(db) as conn:
        numbers = sorted(n for (n,) in conn.execute("SELECT n FROM charges"))
    conn.close()
    assert numbers == [n for n in range(8) if not rolls_back(3, 0, n, 0.4)]


@pytest.mark.anyio
async def test_the_outbox_receiver_unwraps_envelopes_and_logs_the_wire(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    wire = tmp_path / "wire.jsonl"
    app = build_receiver(str(tmp_path / "ledger.db"), store, secret=SECRET, wire=str(wire))
    data = {"amount": 500, "currency": "eur", "customer": "cus_1", "reference": "chg-0-0"}
    body = json.dumps({"type": "charge.created", "timestamp": "t", "data": data}).encode()
    headers = StandardWebhooks(secrets=(SECRET,)).sign(
        body, event_id="chg-0-0", timestamp=int(time.time())
    )
    headers["content-type"] = "application/json"
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            first = await client.post("/charges", content=body, headers=headers)
            again = await client.post("/charges", content=body, headers=headers)
            audit = (await client.get("/audit")).json()
    finally:
        await store.aclose()
    assert first.status_code == again.status_code == 201
    assert (first.json()["reference"], first.json()["amount"]) == ("chg-0-0", 500)
    assert (audit["charges"], audit["duplicated_references"]) == (1, [])
    lines = [json.loads(line) for line in wire.read_text().splitlines()]
    assert lines == [
        {"webhook_id": "chg-0-0", "event": "chg-0-0", "status": 201, "absorbed": False},
        {"webhook_id": "chg-0-0", "event": "chg-0-0", "status": 201, "absorbed": True},
    ]


# -- the real drill ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_outbox_drill_delivers_each_commit_once_and_no_rollback() -> None:
    scenario = Scenario.from_toml(SCENARIO)
    result = run_drill(scenario)
    o = result.outbox
    assert o is not None
    assert result.ok, result.to_dict()
    assert all(getattr(o, name) == 0 for name in OutboxAudit.PROBLEMS)
    assert o.committed + o.rolled_back == o.transactions == scenario.total
    assert o.rolled_back > 0
    assert o.booked == o.committed == o.messages
    # The crashes really happened...
    assert (o.worker_kills, o.app_kills) == (scenario.outbox.worker_kills, 1)
    # ...and so did the faults: every kind the plan names, and duplicates the receiver absorbed.
    kinds = {rule.fault.kind for rule in scenario.client_rules}
    injected = result.faults["client"]
    assert {kind for kind in kinds if injected.get(kind, 0) > 0} == kinds, injected
    assert o.absorbed > 0
    assert o.attempts > o.committed
