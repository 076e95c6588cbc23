"""The sweeper (``surefoot.gateway._reconcile``) and ``surefoot reconcile``: unknown keys
settled by lookups, sagas driven by several processes at once (each once), and the report
of what needs a person, with its exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from _support import GUARD, free_port
from surefoot.cli import main
from surefoot.errors import ConfigurationError
from surefoot.gateway._lookup import LOOKUP_PREFIX, LookupResolver, _Pending
from surefoot.gateway._reconcile import Sweeper, describe
from surefoot.gateway._schema import Lookup
from surefoot.idempotency import Begin, Outcome, Reserved, State, Step, StoredResponse
from surefoot.metrics import PrometheusMetrics
from surefoot.outbox import Outbox
from surefoot.saga import Retry, Saga, SagaLog, SagaWorker
from surefoot.saga import Step as SagaStep
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

#: The application module the sweeping processes import (``--app reconcile_shop:sagas``):
#: each step's effect is one line in the ledger file named by the saga's input.
SHOP = """
from surefoot.saga import Retry, Saga, Step, StepFailed

def _effect(ctx, what):
    with open(ctx.input["ledger"], "a") as ledger:
        ledger.write(f"{what} {ctx.saga_id}\\n")

def charge(ctx):
    _effect(ctx, "charge")

def refund(ctx):
    _effect(ctx, "refund-failed")
    raise RuntimeError("the payment provider answered 503")

def ship(ctx):
    _effect(ctx, "ship")
    if ctx.input.get("no_courier"):
        raise StepFailed("no courier")

checkout = Saga("checkout", [
    Step("charge", charge, compensate=refund, undo_retry=Retry(attempts=2, initial=0, maximum=0)),
    Step("ship", ship),
])
sagas = [checkout]
twice = [checkout, Saga("checkout", [Step("other", lambda ctx: None)])]
"""


def begin(token: str) -> Begin:
    return Begin(fingerprint="f", token=token, lease=5.0, ttl=3600.0, on_lease_expiry="unknown")


async def unknown_key(store: MemoryStore, key: str, clock: ManualClock) -> None:
    assert isinstance(await store.begin(key, begin("t1"), clock.now()), Reserved)
    assert await store.finish(key, "t1", Outcome(Step.MARK_UNKNOWN), clock.now())


async def save_lookup(store: MemoryStore, key: str, clock: ManualClock) -> None:
    """The lookup the gateway saves beside a key that became unknown (``_lookup`` Rule 4)."""
    pending = _Pending(
        method="GET",
        target="/charges/by-reference/r1",
        headers=(),
        found=(200,),
        not_found=(404,),
        status=201,
        timeout=1.0,
        not_found_after=2.0,
        since=clock.now(),
    )
    companion = LOOKUP_PREFIX + key
    assert isinstance(await store.begin(companion, begin("c"), clock.now()), Reserved)
    saved = StoredResponse(200, (), pending.dumps())
    assert await store.finish(companion, "c", Outcome(Step.COMPLETE, saved), clock.now())


def resolver(store: MemoryStore, clock: ManualClock, asked: list[str]) -> LookupResolver:
    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json={"id": "ch_1"})

    return LookupResolver(
        store=store,
        client=httpx.AsyncClient(transport=httpx.MockTransport(answer)),
        base_url="http://upstream",
        lookups={"POST /charges": Lookup(path="/charges/by-reference/{body.reference}")},
        key_header="Idempotency-Key",
        body_field=None,
        ttl=3600.0,
        not_found_after=2.0,
        clock=clock,
        hooks=[],
    )


async def test_a_key_in_outcome_unknown_is_settled_by_its_lookup(clock: ManualClock) -> None:
    store = MemoryStore()
    await unknown_key(store, "idem:settled", clock)
    await save_lookup(store, "idem:settled", clock)
    await unknown_key(store, "idem:no-lookup", clock)  # a worker died: nothing was saved
    clock.advance(42)
    asked: list[str] = []
    sweeper = Sweeper(resolver=resolver(store, clock, asked), clock=clock)

    report = await sweeper.sweep_once()

    assert asked == ["/charges/by-reference/r1"]
    assert report.settled_keys == 1
    record = await store.get("idem:settled", clock.now())
    assert record is not None
    assert record.state is State.COMPLETED
    assert record.response is not None
    assert record.response.status == 201
    assert [(f.kind, f.subject) for f in report.findings] == [("unknown_key", "idem:no-lookup")]
    assert report.findings[0].age == 42.0
    assert report.needs_person
    assert sweeper.last is report
    assert describe(report) == [
        "reconcile: unknown_key idem:no-lookup: outcome unknown: settle it or release it [age 42s]"
    ]


async def test_the_report_lists_what_needs_a_person(tmp_path: Path, clock: ManualClock) -> None:
    calls: list[str] = []

    def charge(ctx: Any) -> None:
        calls.append(ctx.saga_id)

    def refund(ctx: Any) -> None:
        raise RuntimeError("refund service down")

    def ship(ctx: Any) -> None:
        if ctx.input.get("fail"):
            raise RuntimeError("courier API down")

    checkout = Saga(
        "checkout",
        [
            SagaStep("charge", charge, compensate=refund,
                     undo_retry=Retry(attempts=5, initial=100, maximum=100)),
            SagaStep("ship", ship, retry=Retry(attempts=1)),
        ],
        deadline=3600,
    )  # fmt: skip
    log = SagaLog(f"sqlite:///{tmp_path / 'shop.db'}", clock=clock)
    log.create_tables()
    worker = SagaWorker(log, [checkout], hooks=[])
    # order-1: its refund fails, and waits 100 s for its next try: compensating, failing.
    await worker.start(checkout, "order-1", {"fail": True})
    clock.advance(100)
    await worker.run_once()
    # order-4: started and never driven, past its deadline (an hour).
    log.start(checkout, "order-4", {})
    clock.advance(3700)
    # order-2: started and never driven (its worker died): stuck after 15 min.
    log.start(checkout, "order-2", {})
    clock.advance(1000)
    # order-3: closed by a person: nothing to report.
    log.start(checkout, "order-3", {})
    log.resolve("order-3", reason="done by hand", actor="ana")
    metrics = PrometheusMetrics()
    sweeper = Sweeper(
        saga_log=log,
        stuck_after=900,
        clock=clock,
        on_report=lambda r: metrics.set_saga_counts(r.saga_counts, now=r.at),
    )

    report = await sweeper.sweep_once()

    found = {(f.kind, f.subject) for f in report.findings}
    assert found == {
        ("saga_compensation_failing", "order-1"),
        ("saga_stuck", "order-2"),
        ("saga_past_deadline", "order-4"),
    }
    (failing,) = [f for f in report.findings if f.kind == "saga_compensation_failing"]
    assert "charge: undo failed 2 times (RuntimeError: refund service down)" in failing.detail
    assert report.needs_person
    exposed = metrics.render()[0].decode()
    assert 'surefoot_sagas{saga="checkout",state="running"} 2.0' in exposed
    assert 'surefoot_sagas{saga="checkout",state="resolved"} 1.0' in exposed
    assert 'surefoot_saga_oldest_seconds{state="running"}' in exposed
    await worker.aclose()
    log.close()


async def test_needs_attention_sagas_are_listed_with_their_error(tmp_path: Path) -> None:
    def refund(ctx: Any) -> None:
        raise RuntimeError("refund service down")

    def ship(ctx: Any) -> None:
        raise RuntimeError("no courier")

    checkout = Saga(
        "checkout",
        [
            SagaStep("charge", lambda ctx: None, compensate=refund,
                     undo_retry=Retry(attempts=1)),
            SagaStep("ship", ship, retry=Retry(attempts=1)),
        ],
    )  # fmt: skip
    log = SagaLog(f"sqlite:///{tmp_path / 'shop.db'}")
    log.create_tables()
    worker = SagaWorker(log, [checkout], hooks=[])
    await worker.start(checkout, "order-1", {})
    await worker.start(checkout, "order-2", {})
    await worker.aclose()

    report = await Sweeper(saga_log=log).sweep_once()

    assert [(f.kind, f.subject, f.name) for f in report.findings] == [
        ("saga_needs_attention", "order-1", "checkout"),
        ("saga_needs_attention", "order-2", "checkout"),
    ]
    assert report.findings[0].detail.startswith("charge: compensation failed")
    log.close()


async def test_a_part_that_fails_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    log = SagaLog(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables
    outbox = Outbox(f"sqlite:///{tmp_path / 'outbox.db'}")
    outbox.create_tables()
    outbox.add_endpoint("acme", url="https://acme.example/hooks", secrets=["whsec_" + "A" * 44])
    outbox.disable("acme", reason="asked by the customer")

    report = await Sweeper(saga_log=log, outbox=outbox).sweep_once()

    assert report.parts == ("sagas", "webhooks")
    assert report.unavailable == ("sagas",)
    (error,) = report.errors
    assert error.startswith("sagas: the database is unavailable (no such table: surefoot_saga_")
    assert error.endswith("): create the tables with surefoot sagas init")
    assert "Retry the same request" not in error
    assert [(f.kind, f.subject, f.detail) for f in report.findings] == [
        ("endpoint_disabled", "acme", "asked by the customer")
    ]
    log.close()
    outbox.close()


# -- surefoot reconcile ------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "reconcile_shop.py").write_text(SHOP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("reconcile_shop", None)
    return tmp_path


def shop_sagas() -> Any:
    import reconcile_shop  # type: ignore[import-not-found]

    return reconcile_shop


def test_reconcile_exits_0_when_nothing_needs_a_person(shop: Path) -> None:
    url = f"sqlite:///{shop / 'shop.db'}"
    SagaLog(url).create_tables()
    result = CliRunner().invoke(main, ["reconcile", "--saga-database", url])
    assert result.exit_code == 0, result.output
    assert "nothing needs a person" in result.output


def test_reconcile_drives_due_sagas_and_exits_3_for_what_remains(shop: Path) -> None:
    url = f"sqlite:///{shop / 'shop.db'}"
    log = SagaLog(url)
    log.create_tables()
    ledger = str(shop / "ledger")
    app = shop_sagas()
    log.start(app.checkout, "order-1", {"ledger": ledger})
    log.start(app.checkout, "order-2", {"ledger": ledger, "no_courier": True})

    result = CliRunner().invoke(
        main, ["reconcile", "--saga-database", url, "--app", "reconcile_shop:sagas", "--json"]
    )

    assert result.exit_code == 3, result.output
    report = json.loads(result.output)
    assert report["driven_sagas"] == 2
    assert [(f["kind"], f["subject"]) for f in report["findings"]] == [
        ("saga_needs_attention", "order-2")
    ]
    states = {run.id: run.state for run in log.runs()}
    assert states == {"order-1": "completed", "order-2": "needs_attention"}
    text = CliRunner().invoke(main, ["reconcile", "--saga-database", url])
    assert text.exit_code == 3
    assert "saga_needs_attention" in text.output
    assert "something needs a person (exit status 3)" in text.output
    log.close()


@pytest.mark.parametrize(
    ("args", "says", "code"),
    [
        ((), "nothing to sweep", 2),
        (("--once", "--interval", "5", "--saga-database", "sqlite:///x.db"), "not both", 2),
        (("--app", "reconcile_shop:sagas"), "--app needs the sagas' database", 2),
        (("--saga-database", "sqlite:///x.db", "--stuck-after", "soon"), "--stuck-after", 2),
        (("--saga-database", "sqlite:///x.db", "--stuck-after", "0s"), "--stuck-after", 2),
        (("--saga-database", "sqlite:///x.db", "--app", "bad_syntax:sagas"), "SyntaxError", 2),
        (("--saga-database", "sqlite:///x.db", "--app", "reconcile_shop:twice"), "twice", 2),
        (("--saga-database", "sqlite:///missing.db"), "no database file", 2),
        (("--config", "missing.toml"), "missing.toml", 1),
    ],
)
def test_reconcile_refuses_bad_options_in_one_line(
    shop: Path, args: tuple[str, ...], says: str, code: int
) -> None:
    if "sqlite:///x.db" in args:
        SagaLog("sqlite:///x.db").create_tables()
    (shop / "bad_syntax.py").write_text("def broken(:\n")
    result = CliRunner().invoke(main, ["reconcile", *args], env={"SUREFOOT_SAGA_DATABASE": None})
    assert result.exit_code == code, result.output
    assert says in result.output
    assert "Traceback" not in result.output


def test_reconcile_with_a_gateway_config_sweeps_its_tables(shop: Path) -> None:
    sagas = f"sqlite:///{shop / 'shop.db'}"
    SagaLog(sagas).create_tables()
    outbox = Outbox(f"sqlite:///{shop / 'outbox.db'}")
    outbox.create_tables()
    outbox.add_endpoint("acme", url="https://acme.example/hooks", secrets=["whsec_" + "A" * 44])
    outbox.disable("acme", reason="asked by the customer")
    outbox.close()
    (shop / "gateway.toml").write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n'
        f'[stores]\ndefault = "sqlite:///{shop / "keys.db"}"\n'
        '[admin]\ntoken = "admin-token-for-tests"\n'
        f'[sagas]\ndatabase = "{sagas}"\n'
        f'[webhooks.send]\ndatabase = "sqlite:///{shop / "outbox.db"}"\n'
    )
    result = CliRunner().invoke(main, ["reconcile", "--config", "gateway.toml", "--json"])
    assert result.exit_code == 3, result.output
    report = json.loads(result.output)
    assert report["parts"] == ["keys", "sagas", "webhooks"]
    assert report["errors"] == []
    assert [(f["kind"], f["subject"]) for f in report["findings"]] == [
        ("endpoint_disabled", "acme")
    ]


@pytest.mark.slow
def test_two_sweeping_processes_drive_each_stuck_saga_once(shop: Path) -> None:
    url = f"sqlite:///{shop / 'shop.db'}"
    log = SagaLog(url)
    log.create_tables()
    ledger = shop / "ledger"
    app = shop_sagas()
    ids = [f"order-{n}" for n in range(200)]
    for saga_id in ids:
        log.start(app.checkout, saga_id, {"ledger": str(ledger), "no_courier": saga_id[-1] == "7"})
    command = [
        sys.executable, "-m", "surefoot", "reconcile", "--saga-database", url,
        "--app", "reconcile_shop:sagas", "--json",
    ]  # fmt: skip
    sweepers = [
        subprocess.Popen(
            command, cwd=shop, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=GUARD) for p in sweepers]
    for process, (_out, err) in zip(sweepers, outputs, strict=True):
        assert process.returncode == 3, err  # the no_courier sagas need a person
        assert "Traceback" not in err
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["driven_sagas"] for r in reports) >= len(ids)

    effects = Counter(ledger.read_text().splitlines())
    failing = [i for i in ids if i.endswith("7")]
    expected = Counter(
        {f"charge {i}": 1 for i in ids}
        | {f"ship {i}": 1 for i in ids}
        | {f"refund-failed {i}": 2 for i in failing}
    )
    assert effects == expected  # each step ran once; each failing undo its two attempts
    states = Counter(run.state for run in log.runs(limit=1000))
    assert states == {"completed": len(ids) - len(failing), "needs_attention": len(failing)}
    log.close()


async def test_an_unreachable_database_is_reported_with_its_password_masked(
    tmp_path: Path,
) -> None:
    outbox = Outbox(f"postgresql://app:hunter2-outbox@127.0.0.1:{free_port()}/shop")
    report = await Sweeper(outbox=outbox).sweep_once()
    assert report.unavailable == ("webhooks",)
    (error,) = report.errors
    assert error.startswith("webhooks: the database is unavailable (")
    assert "hunter2-outbox" not in error
    assert "create the tables" not in error
    outbox.close()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"stuck_after": 0}, "Sweeper.stuck_after: expected seconds above 0, got 0"),
        ({"stuck_after": float("nan")}, "Sweeper.stuck_after: expected seconds above 0"),
        ({"stuck_after": True}, "Sweeper.stuck_after: expected seconds above 0"),
        ({"limit": 0}, "Sweeper.limit: expected a whole number from 1 to 1000, got 0"),
        ({"limit": 1001}, "Sweeper.limit: expected a whole number from 1 to 1000, got 1001"),
        ({"limit": 2.5}, "Sweeper.limit: expected a whole number from 1 to 1000, got 2.5"),
    ],
)
def test_the_sweeper_refuses_a_bad_stuck_after_or_limit(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Sweeper(**options)
    assert says in str(raised.value)


def test_reconcile_exits_1_when_a_database_has_no_tables_and_sweeps_the_rest(
    shop: Path,
) -> None:
    (shop / "empty.db").touch()
    outbox = Outbox(f"sqlite:///{shop / 'outbox.db'}")
    outbox.create_tables()
    outbox.add_endpoint("acme", url="https://acme.example/hooks", secrets=["whsec_" + "A" * 44])
    outbox.disable("acme", reason="asked by the customer")
    outbox.close()
    args = ["reconcile", "--saga-database", "sqlite:///empty.db"]
    args += ["--outbox-database", "sqlite:///outbox.db"]

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 1, result.output
    assert "could not sweep sagas: the database is unavailable (no such table: " in result.output
    assert "create the tables with surefoot sagas init" in result.output
    assert "endpoint_disabled" in result.output  # the other part was swept
    assert "StoreUnavailable" not in result.output
    assert "Retry the same request" not in result.output
    assert "(exit status 1)" in result.output
    report = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    assert report["unavailable"] == ["sagas"]


def test_reconcile_masks_the_password_of_a_database_that_does_not_answer(shop: Path) -> None:
    url = f"postgresql://app:hunter2-saga@127.0.0.1:{free_port()}/shop"
    result = CliRunner().invoke(main, ["reconcile", "--saga-database", url])
    assert result.exit_code == 1, result.output
    assert "could not sweep sagas: the database is unavailable (" in result.output
    assert "hunter2-saga" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_with_an_interval_it_sweeps_until_sigterm_and_exits_0(shop: Path) -> None:
    url = f"sqlite:///{shop / 'shop.db'}"
    SagaLog(url).create_tables()
    sweeper = subprocess.Popen(
        [sys.executable, "-m", "surefoot", "reconcile", "--saga-database", url,
         "--interval", "3600"],
        cwd=shop, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each report as it is printed
    )  # fmt: skip
    try:
        assert sweeper.stdout is not None
        first = [sweeper.stdout.readline()]  # each readline blocks until a line is printed
        while "needs a person" not in first[-1] and first[-1]:
            first.append(sweeper.stdout.readline())
        sweeper.send_signal(signal.SIGTERM)
        _out, err = sweeper.communicate(timeout=GUARD)
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
            sweeper.communicate()
    assert sweeper.returncode == 0, err
    assert first[-1] == "nothing needs a person\n"
    assert "Traceback" not in err
