from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from surefoot.cli import main
from surefoot.clock import SystemClock
from surefoot.errors import catalogue_markdown
from surefoot.idempotency._core import Begin, Outcome, Replay, Step
from surefoot.storage import SqliteStore


def test_help_lists_only_working_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "errors" in result.output
    assert "keys" in result.output


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "surefoot", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("surefoot, version ")


def test_errors_formats() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["errors", "--markdown"]).output == catalogue_markdown()
    entries = json.loads(runner.invoke(main, ["errors", "--json"]).output)
    by_code = {e["code"]: e for e in entries}
    assert {"code": "store_unavailable", "status": 503}.items() <= by_code[
        "store_unavailable"
    ].items()
    assert "idempotency_key_reused" in runner.invoke(main, ["errors"]).output


def _seed(path: Path) -> tuple[str, str]:
    """One unknown and one in-flight record; returns their store keys."""

    async def go() -> None:
        store = SqliteStore(path)
        now = SystemClock().now()
        for key in ("idem:unknown", "idem:flight"):
            req = Begin(fingerprint="f", token=key, lease=30, ttl=3600, on_lease_expiry="unknown")
            await store.begin(key, req, now)
        await store.finish("idem:unknown", "idem:unknown", Outcome(Step.MARK_UNKNOWN), now)
        await store.aclose()

    asyncio.run(go())
    return "idem:unknown", "idem:flight"


def test_keys_list_resolve_forget_purge(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    unknown, flight = _seed(db)
    url = f"sqlite:///{db}"
    runner = CliRunner()
    listed = runner.invoke(main, ["keys", "list", "--store", url, "--state", "unknown"])
    assert listed.exit_code == 0, listed.output
    assert unknown in listed.output
    assert flight not in listed.output

    refused = runner.invoke(main, ["keys", "resolve", "--store", url, flight, "--status", "201"])
    assert refused.exit_code == 1
    assert "still in flight" in refused.output

    ok = runner.invoke(
        main, ["keys", "resolve", "--store", url, unknown, "--status", "201", "--body", '{"id":7}']
    )
    assert ok.exit_code == 0, ok.output

    async def replayed() -> object:
        store = SqliteStore(db)
        req = Begin(fingerprint="f", token="x", lease=30, ttl=3600, on_lease_expiry="unknown")
        decision = await store.begin(unknown, req, SystemClock().now())
        await store.aclose()
        return decision

    decision = asyncio.run(replayed())
    assert isinstance(decision, Replay)
    assert decision.response.body == b'{"id":7}'

    assert runner.invoke(main, ["keys", "forget", "--store", url, flight]).exit_code == 0
    again = runner.invoke(main, ["keys", "forget", "--store", url, flight])
    assert again.exit_code == 1
    assert "no live record" in again.output
    purged = runner.invoke(main, ["keys", "purge", "--store", url])
    assert purged.output == "purged 0 expired records\n"


def test_bad_store_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["keys", "list", "--store", "nosuch://x"])
    assert result.exit_code == 2
    assert "expected one of the schemes" in result.output


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/typo.db"
    result = CliRunner().invoke(main, ["keys", "list", "--store", url])
    assert result.exit_code == 2
    assert "no database file at" in result.output
    assert not (tmp_path / "typo.db").exists()


def test_keys_list_json(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    unknown, flight = _seed(db)
    result = CliRunner().invoke(main, ["keys", "list", "--store", f"sqlite:///{db}", "--json"])
    rows = {r["store_key"]: r for r in json.loads(result.output)}
    assert rows[unknown]["state"] == "unknown"
    assert rows[flight]["state"] == "in_flight"
