"""``surefoot probe``: dry run, configuration errors, reports and exit status."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from _support import GUARD
from surefoot.cli import main
from surefoot.client import load_integrations
from surefoot.probe import CHECKS, Finding, ProbeClient, Target, Verdict

SECRET = "sk_test_cli_0123456789"


def _probe_file(
    tmp_path: Path, port: int, checks: str = '["replay", "no_key"]', required: str = '["replay"]'
) -> Path:
    path = tmp_path / "probe.toml"
    path.write_text(
        textwrap.dedent(f"""\
        [probe]
        hosts = ["127.0.0.1:{port}"]
        max_requests = 20
        required = {required}

        [[targets]]
        name = "charge"
        url = "http://127.0.0.1:{port}/charges"
        headers = {{ Authorization = "Bearer ${{PARTNER_KEY}}" }}
        body = '{{"customer": "{{{{run}}}}-{{{{n}}}}"}}'
        checks = {checks}

        [targets.effect]
        url = "http://127.0.0.1:{port}/charges?customer={{{{run}}}}-{{{{n}}}}"
        count = "json:data"
        """)
    )
    return path


def test_a_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    path = _probe_file(tmp_path, 9)  # nothing listens there
    result = CliRunner().invoke(
        main, ["probe", "--config", str(path), "--dry-run"], env={"PARTNER_KEY": SECRET}
    )
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert f"probe plan from {path}: 1 target, 2 checks" in result.output
    assert "  Authorization: ***" in result.output
    assert "POST http://127.0.0.1:9/charges" in result.output


def test_a_missing_variable_is_exit_status_2_naming_the_field(tmp_path: Path) -> None:
    path = _probe_file(tmp_path, 9)
    result = CliRunner().invoke(main, ["probe", "--config", str(path)], env={"PARTNER_KEY": None})
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {path}:9: targets[0].headers.Authorization: the environment variable "
        "'PARTNER_KEY' is not set\n"
    )


def test_a_live_key_is_refused_without_being_shown(tmp_path: Path) -> None:
    live = "sk_live_0123456789abcdef"
    path = _probe_file(tmp_path, 9)
    result = CliRunner().invoke(main, ["probe", "--config", str(path)], env={"PARTNER_KEY": live})
    assert result.exit_code == 2
    assert live not in result.output
    assert "targets[0].headers.Authorization: expected a test-mode credential" in result.output


def test_an_invalid_name_is_a_usage_error(tmp_path: Path) -> None:
    path = _probe_file(tmp_path, 9)
    result = CliRunner().invoke(main, ["probe", "--config", str(path), "--name", "a.b"])
    assert result.exit_code == 2
    assert "Invalid value for --name: expected letters, digits" in result.output


@contextlib.contextmanager
def _serving() -> Iterator[tuple[int, list[str]]]:
    """A partner on a free port of 127.0.0.1, served by uvicorn in a thread."""
    received: list[str] = []

    async def charges(request: Request) -> Response:
        received.append(f"{request.method} {request.headers.get('authorization')}")
        return PlainTextResponse("{}", status_code=201)

    app = Starlette(routes=[Route("/charges", charges, methods=["GET", "POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(int(GUARD / 0.01)):  # bounded: until it listens
            if server.started:
                break
            time.sleep(0.01)
        assert server.started
        yield server.servers[0].sockets[0].getsockname()[1], received
    finally:
        server.should_exit = True
        thread.join(GUARD)


async def _failing(client: ProbeClient, target: Target, run: str) -> Finding:
    url = client.render(target.url, 0)
    lost = await client.send("POST", url, headers=target.headers, cut=True)
    again = await client.send("POST", url, headers=target.headers)
    assert (lost.status, lost.error, again.status) == (None, "cut by the probe", 201)
    return Finding("replay", target.name, Verdict.FAIL, "two effects", "never retry it",
                   (lost, again))  # fmt: skip


async def _passing(client: ProbeClient, target: Target, run: str) -> Finding:
    return Finding("no_key", target.name, Verdict.PASS, "refused", "always send a key")


def test_a_run_writes_its_reports_and_fails_on_a_required_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CHECKS, "replay", _failing)
    monkeypatch.setitem(CHECKS, "no_key", _passing)
    with _serving() as (port, received):
        path = _probe_file(tmp_path, port)
        out = tmp_path / "out"
        out.mkdir()
        arguments = ["probe", "--config", str(path), "--name", "legacy"]
        arguments += ["--markdown", str(out / "r.md"), "--json", str(out / "r.json")]
        arguments += ["--policy", str(out / "policy.toml")]
        result = CliRunner().invoke(main, arguments, env={"PARTNER_KEY": SECRET})
    assert result.exit_code == 1, result.output
    assert received == [f"POST Bearer {SECRET}"] * 2  # the cut one reached the partner
    assert "required checks failed: charge: replay" in result.output
    assert "2 requests in" in result.output
    assert "never retry it" in result.output  # the table
    for name in ("r.md", "r.json", "policy.toml"):
        assert SECRET not in (out / name).read_text()
    assert "| charge | replay | FAIL | two effects |" in (out / "r.md").read_text()
    document = json.loads((out / "r.json").read_text())
    assert [f["verdict"] for f in document["findings"]] == ["fail", "pass"]
    assert load_integrations(out / "policy.toml")["legacy"].auto_idempotency_key is False


def test_a_run_without_a_required_failure_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CHECKS, "no_key", _passing)
    path = _probe_file(tmp_path, 9, checks='["no_key"]', required='["no_key"]')
    result = CliRunner().invoke(main, ["probe", "--config", str(path)], env={"PARTNER_KEY": SECRET})
    assert result.exit_code == 0, result.output
    assert "0 requests in" in result.output
    assert "1 pass, 0 fail" in result.output


#: Runs the command line as if the modules named in argv[1] were not installed.
WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # "import name" now fails as if it were not installed
from surefoot.cli import main
main(sys.argv[2:], prog_name="surefoot")
"""


@pytest.mark.slow
def test_without_the_probe_extra_it_says_so_in_one_line(tmp_path: Path) -> None:
    path = _probe_file(tmp_path, 9)
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT, "httpx", "probe", "--config", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "Error: surefoot probe needs the 'probe' extra: pip install 'surefoot[probe]' "
        "(missing: httpx)\n"
    )


# -- review fixes: exit status 3, output files, markup ----------------------------------------


async def _unsure(client: ProbeClient, target: Target, run: str) -> Finding:
    return Finding("replay", target.name, Verdict.INCONCLUSIVE, "no effect seen", "probe again")


def test_a_required_check_that_did_not_pass_exits_3_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CHECKS, "replay", _unsure)
    path = _probe_file(tmp_path, 9, checks='["replay"]')
    result = CliRunner().invoke(main, ["probe", "--config", str(path)], env={"PARTNER_KEY": SECRET})
    assert result.exit_code == 3, result.output
    assert (
        "required checks did not pass (none failed): charge: replay (inconclusive)\n"
        in result.output
    )


def test_a_required_check_no_target_runs_is_exit_status_2(tmp_path: Path) -> None:
    path = _probe_file(tmp_path, 9, checks='["no_key"]', required='["replay"]')
    result = CliRunner().invoke(main, ["probe", "--config", str(path)], env={"PARTNER_KEY": SECRET})
    assert result.exit_code == 2
    assert f"{path}:4: probe.required: expected checks some target runs" in result.output


@pytest.mark.parametrize("option", ["--markdown", "--json", "--policy"])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    ran: list[str] = []

    async def recorded(client: ProbeClient, target: Target, run: str) -> Finding:
        ran.append(target.name)
        return await _passing(client, target, run)

    monkeypatch.setitem(CHECKS, "no_key", recorded)
    path = _probe_file(tmp_path, 9, checks='["no_key"]', required='["no_key"]')
    missing = tmp_path / "no" / "such" / "dir" / "out"
    result = CliRunner().invoke(
        main, ["probe", "--config", str(path), option, str(missing)], env={"PARTNER_KEY": SECRET}
    )
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {option}: cannot write {missing}: No such file or directory\n"
    )
    assert ran == []
    writable = tmp_path / "out.txt"
    result = CliRunner().invoke(
        main, ["probe", "--config", str(path), option, str(writable)], env={"PARTNER_KEY": SECRET}
    )
    assert result.exit_code == 0, result.output
    assert writable.read_text()


def test_the_files_are_written_before_the_table_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import surefoot.probe

    def broken(report: object) -> object:
        raise RuntimeError("the terminal failed")

    monkeypatch.setitem(CHECKS, "no_key", _passing)
    monkeypatch.setattr(surefoot.probe, "to_table", broken)
    path = _probe_file(tmp_path, 9, checks='["no_key"]', required='["no_key"]')
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        main, ["probe", "--config", str(path), "--json", str(out)], env={"PARTNER_KEY": SECRET}
    )
    assert isinstance(result.exception, RuntimeError)
    assert json.loads(out.read_text())["counts"]["pass"] == 1


def test_partner_markup_is_printed_as_it_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def echoing(client: ProbeClient, target: Target, run: str) -> Finding:
        return Finding("no_key", target.name, Verdict.PASS, "Retry-After: [/bold]", "[red]x[/]")

    monkeypatch.setitem(CHECKS, "no_key", echoing)
    path = _probe_file(tmp_path, 9, checks='["no_key"]', required='["no_key"]')
    result = CliRunner().invoke(main, ["probe", "--config", str(path)], env={"PARTNER_KEY": SECRET})
    assert result.exit_code == 0, result.output
    assert "Retry-After: [/bold]" in result.output
    assert "[red]x[/]" in result.output
