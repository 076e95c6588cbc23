from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
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


# -- what an operator gives is checked before anything is stored -----------------------------


def _state(db: Path, key: str) -> str:
    async def go() -> str:
        store = SqliteStore(db)
        record = await store.get(key, SystemClock().now())
        await store.aclose()
        assert record is not None
        return record.state.value

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("options", "option", "message"),
    [
        (["--status", "201", "--body", "{x:1}"], "--body", "body: expected JSON"),
        (["--status", "201", "--body", "NaN"], "--body", "NaN is not JSON"),
        (["--status", "201", "--content-type", "application/json\r\nX-Evil: 1"],
         "--content-type", "content_type: expected a media type"),
        (["--status", "201", "--content-type", "text/plain\x00"],
         "--content-type", "content_type: expected a media type"),
        (["--status", "204", "--body", "x", "--content-type", "text/plain"],
         "--body", "a 204 answer has no body"),
        (["--status", "99999"], "--status", "99999 is not in the range 200<=x<=599"),
        (["--status", "100"], "--status", "100 is not in the range 200<=x<=599"),
    ],
)  # fmt: skip
def test_keys_resolve_refuses_what_must_never_be_stored(
    tmp_path: Path, options: list[str], option: str, message: str
) -> None:
    db = tmp_path / "k.db"
    unknown, _ = _seed(db)

    result = CliRunner().invoke(
        main, ["keys", "resolve", "--store", f"sqlite:///{db}", unknown, *options]
    )

    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output
    assert option in result.output
    assert message in result.output
    assert _state(db, unknown) == "unknown"


def test_keys_resolve_stores_a_checked_answer(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    unknown, _ = _seed(db)
    url = f"sqlite:///{db}"

    text = CliRunner().invoke(
        main,
        ["keys", "resolve", "--store", url, unknown, "--status", "200", "--body", "done",
         "--content-type", "text/plain; charset=utf-8"],
    )  # fmt: skip

    assert text.exit_code == 0, text.output

    async def stored() -> object:
        store = SqliteStore(db)
        record = await store.get(unknown, SystemClock().now())
        await store.aclose()
        assert record is not None
        return record.response

    assert asyncio.run(stored()) == (
        200,
        ((b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"4")),
        b"done",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "list", "--limit", "0"], "Invalid value for '--limit'"),
        (["keys", "purge", "--limit", "-1"], "Invalid value for '--limit'"),
        (["keys", "forget", "idem:a\nb"], "store_key: expected 1 to 1024 printable characters"),
        (["keys", "forget", "k" * 1025], "store_key: expected 1 to 1024 printable characters"),
    ],
)
def test_keys_commands_refuse_bad_numbers_and_keys(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    db = tmp_path / "k.db"
    _seed(db)
    result = CliRunner().invoke(main, [*argv[:2], "--store", f"sqlite:///{db}", *argv[2:]])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_store_url_error_names_no_secret() -> None:
    url = "memory://?password=PW-1&ssl_password=PW-2&token=PW-3"
    result = CliRunner().invoke(main, ["keys", "list", "--store", url])
    assert result.exit_code == 2
    assert "PW-" not in result.output
    assert "password=***&ssl_password=***&token=***" in result.output


def test_a_postgres_that_refuses_the_login_says_why(postgres_dsn: str) -> None:
    # The pool used to give up after 5 s saying only that it timed out.
    parts = urlsplit(postgres_dsn)
    netloc = f"surefoot_no_such_role:PW-1@{parts.hostname}:{parts.port}"
    url = parts._replace(netloc=netloc).geturl()
    result = CliRunner().invoke(main, ["keys", "list", "--store", url])
    assert result.exit_code == 1, result.output
    assert "the store is unavailable (connection failed: " in result.output
    assert 'FATAL: role "surefoot_no_such_role" does not exist' in result.output
    assert "PW-" not in result.output


@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "purge"], ["migrate"]])
@pytest.mark.parametrize("url", ["redis://u:PW-1@[::1/0", "postgresql://u:PW-1@[::1/db"])
def test_a_store_url_that_cannot_be_split_is_a_usage_error(command: list[str], url: str) -> None:
    # urlsplit's ValueError ("Invalid IPv6 URL") used to escape as a traceback.
    result = CliRunner().invoke(main, [*command, "--store", url])
    assert result.exit_code == 2, result.output
    masked = url.replace("PW-1", "***")
    assert f"Invalid value for --store: store URL {masked!r} cannot be read" in result.output
    assert "PW-" not in result.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "localhost"], "Invalid value for --listen: expected HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], "Invalid value for --listen: expected HOST:PORT"),
        (["--upstream", "ftp://x"], "Invalid value for --upstream: expected an absolute"),
        (["--upstream", "http://[::1"], "Invalid value for --upstream: expected an absolute"),
    ],
)
def test_surefoot_chaos_refuses_a_bad_address(argv: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["chaos", "--upstream", "http://127.0.0.1:9", *argv])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_surefoot_chaos_never_echoes_the_upstreams_password() -> None:
    result = CliRunner().invoke(main, ["chaos", "--upstream", "ftp://user:TOPSECRET@up.test"])
    assert result.exit_code == 2, result.output
    assert "expected an absolute http:// or https:// URL, got 'ftp://user:***@up.test'" in (
        result.output
    )
    assert "TOPSECRET" not in result.output


def test_surefoot_chaos_announces_its_upstream_masked() -> None:
    surefoot = str(Path(sys.executable).with_name("surefoot"))
    upstream = "http://user:TOPSECRET@127.0.0.1:9"
    command = [surefoot, "chaos", "--listen", "127.0.0.1:0", "--upstream", upstream]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()  # the banner, once it listens
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert "-> http://user:***@127.0.0.1:9; 0 rules" in line, line
    assert "TOPSECRET" not in line


# -- extras ------------------------------------------------------------------------------------

#: Runs the command line as if the modules named in argv[1] were not installed.
WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # "import name" now fails as if it were not installed
from surefoot.cli import main
main(sys.argv[2:], prog_name="surefoot")
"""


@pytest.mark.parametrize(
    ("missing", "argv", "line"),
    [
        ("httpx", ["chaos", "--upstream", "http://127.0.0.1:9"],
         "Error: surefoot chaos needs the 'client' extra: pip install 'surefoot[client]' "
         "(missing: httpx)"),
        ("h11,pydantic", ["chaos", "--upstream", "http://127.0.0.1:9"],
         "Error: surefoot chaos needs the 'client' extra: pip install 'surefoot[client]' "
         "(missing: h11, pydantic)"),
        ("uvicorn", ["serve", "--config", "gateway.toml"],
         "Error: surefoot serve needs the 'gateway' extra: pip install 'surefoot[gateway]' "
         "(missing: uvicorn)"),
        ("pydantic,prometheus_client", ["check-config", "gateway.toml"],
         "Error: surefoot check-config needs the 'gateway' extra: "
         "pip install 'surefoot[gateway]' (missing: pydantic, prometheus_client)"),
    ],
)  # fmt: skip
def test_a_command_without_its_extra_says_which_in_one_line(
    missing: str, argv: list[str], line: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT, missing, *argv], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr == line + "\n"


def test_commands_without_extras_work_without_them(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    _seed(db)
    gone = "httpx,h11,pydantic,uvicorn,httptools,prometheus_client,fastapi"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT, gone, "keys", "list", "--store", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "idem:unknown" in result.stdout


@pytest.mark.parametrize(
    ("package", "missing", "message"),
    [
        ("surefoot.gateway", "httpx",
         "surefoot.gateway needs the 'gateway' extra: pip install 'surefoot[gateway]'"),
        ("surefoot.gateway", "prometheus_client",
         "surefoot.gateway needs the 'gateway' extra: pip install 'surefoot[gateway]'"),
        ("surefoot.chaos", "h11",
         "surefoot.chaos needs the 'client' extra: pip install 'surefoot[client]'"),
    ],
)  # fmt: skip
def test_importing_a_package_without_its_extra_names_the_extra(
    package: str, missing: str, message: str
) -> None:
    code = f"import sys\nsys.modules[{missing!r}] = None\nimport {package}\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"ImportError: {message}"
