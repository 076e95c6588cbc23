"""``surefoot sagas``: list, show, retry, compensate, resolve and run a worker, over a real
SQLite database."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from _support import GUARD
from surefoot.cli import main
from surefoot.saga import SagaLog, SagaWorker

SHOP = """
from surefoot.saga import Retry, Saga, Step, StepFailed

def reserve(ctx):
    return {"reservation": "r-" + ctx.saga_id}

def charge(ctx):
    if ctx.input.get("declined"):
        raise StepFailed("card declined")
    return {"charge": "ch-" + ctx.saga_id}

def refund(ctx):
    if ctx.input.get("refund_down"):
        raise RuntimeError("the payment provider answered 503")

def ship(ctx):
    if ctx.input.get("no_courier"):
        raise StepFailed("no courier")
    with open(ctx.input["ledger"], "a") as ledger:
        ledger.write(ctx.saga_id + "\\n")

checkout = Saga("checkout", [
    Step("reserve", reserve, compensate=lambda ctx: None),
    Step("charge", charge, compensate=refund, undo_retry=Retry(attempts=2, initial=0, maximum=0)),
    Step("ship", ship),
])
sagas = [checkout]
twice = [checkout, Saga("checkout", [Step("other", lambda ctx: None)])]
not_a_saga = 42
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The tiny application module ``shop_sagas`` (importable from ``tmp_path``)."""
    (tmp_path / "shop_sagas.py").write_text(SHOP)
    (tmp_path / "bad_syntax_sagas.py").write_text("def broken(:\n")
    (tmp_path / "raising_sagas.py").write_text("raise RuntimeError('no config: x\\ny')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import importlib

    sys.modules.pop("shop_sagas", None)
    return importlib.import_module("shop_sagas")


@pytest.fixture
def url(tmp_path: Path) -> str:
    database = f"sqlite:///{tmp_path / 'app.db'}"
    result = CliRunner().invoke(main, ["sagas", "init", "--database", database])
    assert result.exit_code == 0, result.output
    assert "surefoot_saga_runs, surefoot_saga_log" in result.output
    return database


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["sagas", *args], env={"SUREFOOT_SAGA_DATABASE": url})


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def run_sagas(url: str, app: Any, tmp_path: Path) -> None:
    """order-1 completed, order-2 compensated, order-3 needs_attention, order-4 running."""
    log = SagaLog(url)
    ledger = str(tmp_path / "ledger")

    async def go() -> None:
        worker = SagaWorker(log, app.sagas, hooks=[])
        await worker.start(app.checkout, "order-1", {"ledger": ledger})
        await worker.start(app.checkout, "order-2", {"ledger": ledger, "declined": True})
        await worker.start(
            app.checkout, "order-3", {"ledger": ledger, "no_courier": True, "refund_down": True}
        )
        while await worker.run_once():
            pass
        await worker.aclose()

    asyncio.run(go())
    log.start(app.checkout, "order-4", {"ledger": ledger})
    log.close()


@pytest.fixture
def stocked(url: str, app: Any, tmp_path: Path) -> str:
    run_sagas(url, app, tmp_path)
    return url


def test_without_a_database_the_error_says_how_to_give_one() -> None:
    result = CliRunner().invoke(main, ["sagas", "list"], env={"SUREFOOT_SAGA_DATABASE": None})
    assert result.exit_code == 2
    assert "expected --database URL or $SUREFOOT_SAGA_DATABASE" in result.output


def test_a_missing_file_or_tables_are_one_line_errors(tmp_path: Path) -> None:
    missing = cli(f"sqlite:///{tmp_path / 'nope.db'}", "list")
    assert missing.exit_code == 2
    assert "no database file at" in missing.output
    assert "surefoot sagas init" in missing.output
    (tmp_path / "empty.db").touch()
    empty = cli(f"sqlite:///{tmp_path / 'empty.db'}", "list")
    assert empty.exit_code == 1
    assert "the sagas' database is unavailable" in empty.output
    assert "create the tables with surefoot sagas init" in empty.output
    assert "Traceback" not in empty.output
    bad = cli("mysql://x", "list")
    assert bad.exit_code == 2
    assert "--database" in bad.output
    prefix = cli(f"sqlite:///{tmp_path / 'empty.db'}", "list", "--prefix", "Bad-Prefix")
    assert prefix.exit_code == 2
    assert "--prefix" in prefix.output


def test_init_twice_changes_nothing(url: str) -> None:
    again = cli(url, "init")
    assert again.exit_code == 0, again.output
    assert as_json(cli(url, "list", "--json")) == []


def test_list_shows_every_saga_with_its_current_step(stocked: str) -> None:
    rows = {row["id"]: row for row in as_json(cli(stocked, "list", "--json"))}
    assert {k: (r["state"], r["current_step"]) for k, r in rows.items()} == {
        "order-1": ("completed", None),
        "order-2": ("compensated", None),
        "order-3": ("needs_attention", "charge"),
        "order-4": ("running", "reserve"),
    }
    assert rows["order-3"]["error"].startswith("charge: compensation failed")
    assert rows["order-1"]["created_at"].endswith("Z")
    table = cli(stocked, "list")
    assert table.exit_code == 0, table.output
    for text in ("order-3", "needs_attention", "current step", "compensation failed"):
        assert text in table.output


def test_list_filters(stocked: str) -> None:
    attention = as_json(cli(stocked, "list", "--state", "needs_attention", "--json"))
    assert [r["id"] for r in attention] == ["order-3"]
    assert as_json(cli(stocked, "list", "--name", "other", "--json")) == []
    assert len(as_json(cli(stocked, "list", "--limit", "2", "--json"))) == 2
    # Everything was changed just now: nothing is an hour old.
    assert as_json(cli(stocked, "list", "--older-than", "1h", "--json")) == []
    assert len(as_json(cli(stocked, "list", "--older-than", "0s", "--json"))) == 4


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--state", "sleeping"), "--state"),
        (("--older-than", "soon"), "--older-than"),
        (("--older-than", "2026-12-06T10:00:00Z"), "--older-than"),
        (("--older-than", "1700000000"), "--older-than"),
        (("--limit", "0"), "--limit"),
    ],
)
def test_list_refuses_bad_filters_naming_the_option(
    stocked: str, args: tuple[str, ...], option: str
) -> None:
    result = cli(stocked, "list", *args)
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert "Traceback" not in result.output


def test_show_gives_the_steps_and_the_timeline(stocked: str) -> None:
    shown = as_json(cli(stocked, "show", "order-3", "--json"))
    assert shown["state"] == "needs_attention"
    assert [s["state"] for s in shown["steps"]] == ["done", "compensating", "failed"]
    assert shown["steps"][1]["undo_attempts"] == 2
    kinds = [e["kind"] for e in shown["timeline"]]
    assert kinds[0] == "created"
    assert kinds[-1] == "needs_attention"
    assert kinds.count("undo_failed") == 2
    assert shown["timeline"][0]["actor"] == "app"
    text = cli(stocked, "show", "order-3")
    assert text.exit_code == 0, text.output
    for part in ("saga order-3 (checkout): needs_attention", "undo attempts", "undo_failed"):
        assert part in text.output


def test_an_unknown_saga_is_one_line(stocked: str) -> None:
    for args in (
        ("show", "order-9"),
        ("retry", "order-9", "--reason", "x"),
        ("compensate", "order-9", "--reason", "x"),
        ("resolve", "order-9", "--reason", "x"),
    ):
        result = cli(stocked, *args)
        assert result.exit_code == 1, result.output
        assert result.output == "Error: no saga 'order-9'\n"


def test_resolve_records_who_and_why(stocked: str) -> None:
    result = cli(stocked, "resolve", "order-3", "--reason", "refunded by hand, ticket 77",
                 "--actor", "ana")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "resolve recorded by ana; it is now resolved" in result.output
    timeline = as_json(cli(stocked, "show", "order-3", "--json"))["timeline"]
    assert (timeline[-1]["kind"], timeline[-1]["detail"], timeline[-1]["actor"]) == (
        "resolve", "refunded by hand, ticket 77", "ana",
    )  # fmt: skip


def test_the_actor_defaults_to_the_user_name(stocked: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "olga")
    result = cli(stocked, "compensate", "order-4", "--reason", "customer cancelled")
    assert result.exit_code == 0, result.output
    shown = as_json(cli(stocked, "show", "order-4", "--json"))
    assert shown["state"] == "compensated"  # nothing was done yet: nothing to undo
    assert any(e["kind"] == "compensate" and e["actor"] == "olga" for e in shown["timeline"])


def test_retry_gives_a_stuck_compensation_another_chance(stocked: str) -> None:
    result = cli(stocked, "retry", "order-3", "--reason", "provider is back", "--actor", "ana")
    assert result.exit_code == 0, result.output
    assert "it is now compensating" in result.output
    run = as_json(cli(stocked, "show", "order-3", "--json"))
    assert run["steps"][1]["undo_attempts"] == 0


@pytest.mark.parametrize("action", ["retry", "compensate", "resolve"])
def test_an_action_on_a_finished_saga_is_refused(stocked: str, action: str) -> None:
    result = cli(stocked, action, "order-1", "--reason", "why not")
    assert result.exit_code == 1, result.output
    assert result.output == "Error: Nothing was changed: the saga is completed.\n"
    shown = as_json(cli(stocked, "show", "order-1", "--json"))
    assert shown["timeline"][-1]["kind"] == "finished"


def test_a_bad_reason_or_actor_names_its_option(stocked: str) -> None:
    reason = cli(stocked, "resolve", "order-3", "--reason", "é" * 3)
    assert reason.exit_code == 2
    assert "--reason" in reason.output
    actor = cli(stocked, "resolve", "order-3", "--reason", "ok", "--actor", "two words")
    assert actor.exit_code == 2
    assert "--actor" in actor.output
    missing = cli(stocked, "resolve", "order-3")
    assert missing.exit_code == 2
    assert "--reason" in missing.output
    assert as_json(cli(stocked, "show", "order-3", "--json"))["state"] == "needs_attention"


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("shop_sagas", "expected module:attribute"),
        ("no_such_module:x", "cannot import 'no_such_module'"),
        ("shop_sagas:missing", "has no attribute 'missing'"),
        ("shop_sagas:not_a_saga", "a Saga or a list of Sagas, got int"),
        ("bad_syntax_sagas:sagas", "cannot import 'bad_syntax_sagas': SyntaxError: "),
        ("raising_sagas:sagas", "cannot import 'raising_sagas': RuntimeError: no config: x\n"),
        ("shop_sagas:twice", "'checkout' is given twice"),
    ],
)
def test_the_worker_refuses_a_bad_app(url: str, app: Any, spec: str, text: str) -> None:
    result = cli(url, "worker", "--app", spec)
    assert result.exit_code == 2, result.output
    assert "--app" in result.output
    assert text in result.output
    assert "Traceback" not in result.output


def test_the_worker_refuses_bad_options(url: str, app: Any) -> None:
    for args, option in (
        (("--concurrency", "0"), "--concurrency"),
        (("--lease", "0.5"), "--lease"),
        (("--poll-interval", "0"), "--poll-interval"),
    ):
        result = cli(url, "worker", "--app", "shop_sagas:checkout", *args)
        assert result.exit_code == 2, result.output
        assert option in result.output


@pytest.mark.slow
def test_the_worker_runs_due_sagas_then_stops_on_sigterm(
    url: str, app: Any, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    log = SagaLog(url)
    log.start(app.checkout, "order-7", {"ledger": str(ledger)})
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "surefoot", "sagas", "worker", "--database", url,
            "--app", "shop_sagas:sagas", "--poll-interval", "0.05",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + GUARD
        while (run := log.get("order-7")) is not None and run.state == "running":
            assert time.monotonic() < deadline, "the worker never finished the saga"
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.02)  # polling for a condition, bounded by GUARD
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=GUARD)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
        log.close()
    assert worker.returncode == 0, err
    assert "Traceback" not in err
    assert "surefoot sagas worker: stopped" in err
    assert run is not None
    assert run.state == "completed"
    assert ledger.read_text() == "order-7\n"
