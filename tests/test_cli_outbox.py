"""``surefoot webhooks``' sending side: the outbox's tables, endpoints, deliveries and worker."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from _support import GUARD, free_port
from surefoot.cli import main
from surefoot.outbox import Outbox, OutboxWorker

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture
def url(tmp_path: Path) -> str:
    """An outbox database with its tables."""
    database = f"sqlite:///{tmp_path / 'app.db'}"
    result = CliRunner().invoke(main, ["webhooks", "init", "--database", database])
    assert result.exit_code == 0, result.output
    return database


def cli(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        main, ["webhooks", *args], env={"SUREFOOT_OUTBOX_DATABASE": url, **(env or {})}
    )


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def add(url: str, name: str = "acme", *extra: str) -> Result:
    result = cli(
        url, "add-endpoint", name, "--url", "https://acme.example/hooks", "--secret-env", "S",
        *extra, env={"S": SECRET},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def enqueue(url: str, event_type: str = "invoice.paid") -> str:
    """One message, committed with the application's change."""
    outbox = Outbox(url)
    db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        message_id = outbox.enqueue(db, event_type, {"invoice": 42})
        db.execute("COMMIT")
    finally:
        db.close()
        outbox.close()
    return message_id


def deliver_once(url: str, status: int) -> None:
    """One worker pass whose every attempt gets ``status`` (one attempt before failing)."""

    async def go() -> None:
        outbox = Outbox(url, schedule=[0.0])
        transport = httpx.MockTransport(lambda request: httpx.Response(status))
        worker = OutboxWorker(
            outbox, transport=transport, resolver=public_address, breaker=False, hooks=[]
        )
        try:
            assert await worker.run_once() >= 1
        finally:
            await worker.aclose()
            outbox.close()

    asyncio.run(go())


async def public_address(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def test_without_a_database_the_error_says_how_to_give_one() -> None:
    result = CliRunner().invoke(main, ["webhooks", "endpoints"], env={})
    assert result.exit_code == 2
    assert "--database URL or $SUREFOOT_OUTBOX_DATABASE" in result.output
    assert "Traceback" not in result.output


def test_a_missing_file_or_tables_are_one_line_errors(tmp_path: Path) -> None:
    missing = cli(f"sqlite:///{tmp_path / 'typo.db'}", "endpoints")
    assert missing.exit_code == 2
    assert "no database file at" in missing.output
    assert not (tmp_path / "typo.db").exists()
    sqlite3.connect(tmp_path / "empty.db").close()
    empty = cli(f"sqlite:///{tmp_path / 'empty.db'}", "endpoints")
    assert empty.exit_code == 1
    assert "surefoot webhooks init" in empty.output
    assert "Traceback" not in empty.output
    bad_prefix = cli(f"sqlite:///{tmp_path / 'empty.db'}", "endpoints", "--prefix", "No-Way")
    assert bad_prefix.exit_code == 2
    assert "--prefix" in bad_prefix.output


def test_init_twice_changes_nothing(url: str) -> None:
    add(url)
    again = cli(url, "init")
    assert again.exit_code == 0, again.output
    assert [e["name"] for e in as_json(cli(url, "endpoints", "--json"))] == ["acme"]


def test_a_generated_secret_is_printed_once_and_never_listed(url: str) -> None:
    added = cli(
        url, "add-endpoint", "acme", "--url", "https://acme.example/hooks", "--generate-secret",
        "--event-type", "invoice.*", "--event-type", "customer.created",
        "--rate-limit", "10/second", "--concurrency", "3", "--tenant", "t1",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    (secret,) = [w for w in added.output.split() if w.startswith("whsec_")]
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    add(url, "beta")
    listed = cli(url, "endpoints")
    assert listed.exit_code == 0
    assert "acme" in listed.output
    assert "beta" in listed.output
    endpoints = as_json(cli(url, "endpoints", "--json", "--tenant", "t1"))
    assert endpoints == [
        {
            "name": "acme", "tenant": "t1", "url": "https://acme.example/hooks",
            "event_types": ["invoice.*", "customer.created"], "rate_limit": "10/second",
            "concurrency": 3, "enabled": True, "disabled_reason": None, "failing_since": None,
            "secrets": 1,
        }
    ]  # fmt: skip
    for output in (listed.output, cli(url, "endpoints", "--json").output):
        assert "whsec_" not in output
        assert SECRET.removeprefix("whsec_")[:20] not in output


def test_secrets_come_from_the_environment_only(url: str) -> None:
    base = ("add-endpoint", "acme", "--url", "https://acme.example/hooks")
    added = cli(url, *base, "--secret-env", "A", "--secret-env", "B",
                env={"A": SECRET, "B": OTHER_SECRET})  # fmt: skip
    assert added.exit_code == 0, added.output
    assert SECRET not in added.output
    assert OTHER_SECRET not in added.output
    assert as_json(cli(url, "endpoints", "--json"))[0]["secrets"] == 2

    neither = cli(url, "add-endpoint", "beta", "--url", "https://b.example/")
    both = cli(url, "add-endpoint", "beta", "--url", "https://b.example/", "--generate-secret",
               "--secret-env", "A", env={"A": SECRET})  # fmt: skip
    unset = cli(url, "add-endpoint", "beta", "--url", "https://b.example/", "--secret-env", "NOPE")
    weak = cli(url, "add-endpoint", "beta", "--url", "https://b.example/", "--secret-env", "W",
               env={"W": "whsec_c2hvcnQ="})  # fmt: skip
    for result in (neither, both, unset, weak):
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
    assert "--secret-env" in unset.output
    assert "NOPE" in unset.output
    assert "--secret-env" in weak.output
    assert "c2hvcnQ" not in weak.output
    assert [e["name"] for e in as_json(cli(url, "endpoints", "--json"))] == ["acme"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--url", "ftp://acme.example/"), "--url"),
        (("--url", "https://a.example/", "--rate-limit", "10/fortnight"), "--rate-limit"),
        (("--url", "https://a.example/", "--concurrency", "0"), "--concurrency"),
        (("--url", "https://a.example/", "--event-type", "bad type"), "--event-type"),
        (("--url", "https://a.example/", "--tenant", "no spaces"), "--tenant"),
    ],
)
def test_an_invalid_endpoint_names_its_option(url: str, args: tuple[str, ...], option: str) -> None:
    result = cli(url, "add-endpoint", "acme", *args, "--generate-secret")
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}" in result.output
    assert "whsec_" not in result.output
    assert as_json(cli(url, "endpoints", "--json")) == []


def test_a_taken_name_is_refused(url: str) -> None:
    add(url)
    again = cli(url, "add-endpoint", "acme", "--url", "https://x.example/", "--generate-secret")
    assert again.exit_code == 2
    assert "a name no other endpoint has" in again.output


@pytest.mark.parametrize(
    "args",
    [
        ("enable", "nope"),
        ("disable", "nope"),
        ("rotate-secret", "nope", "--generate-secret"),
        ("recover", "nope", "--since", "2h"),
        ("resend", "msg_1", "--endpoint", "nope"),
        ("deliveries", "--endpoint", "nope"),
        ("attempts", "msg_1", "--endpoint", "nope"),
    ],
)
def test_an_unknown_endpoint_says_so(url: str, args: tuple[str, ...]) -> None:
    result = cli(url, *args)
    assert result.exit_code == 1, result.output
    assert result.output == "Error: no endpoint named 'nope'\n"


def test_disable_and_enable(url: str) -> None:
    add(url)
    disabled = cli(url, "disable", "acme", "--reason", "migrating")
    assert disabled.exit_code == 0, disabled.output
    (endpoint,) = as_json(cli(url, "endpoints", "--json"))
    assert (endpoint["enabled"], endpoint["disabled_reason"]) == (False, "migrating")
    again = cli(url, "disable", "acme", "--reason", "other")
    assert "already disabled (migrating)" in again.output
    assert cli(url, "disable", "acme", "--reason", "").exit_code == 2
    assert cli(url, "enable", "acme").exit_code == 0
    (endpoint,) = as_json(cli(url, "endpoints", "--json"))
    assert (endpoint["enabled"], endpoint["disabled_reason"]) == (True, None)


def test_rotate_secret_keeps_the_old_one_for_a_while(url: str) -> None:
    add(url)
    rotated = cli(url, "rotate-secret", "acme", "--generate-secret", "--keep-old-for", "3600")
    assert rotated.exit_code == 0, rotated.output
    assert "for 3600 s more, with the older one" in rotated.output
    assert rotated.output.count("whsec_") == 1
    assert as_json(cli(url, "endpoints", "--json"))[0]["secrets"] == 2
    from_env = cli(url, "rotate-secret", "acme", "--secret-env", "N", "--keep-old-for", "0",
                   env={"N": OTHER_SECRET})  # fmt: skip
    assert from_env.exit_code == 0, from_env.output
    assert "whsec_" not in from_env.output
    too_long = cli(url, "rotate-secret", "acme", "--generate-secret", "--keep-old-for", "9999999")
    assert too_long.exit_code == 2
    assert "whsec_" not in too_long.output


def test_deliveries_attempts_resend_and_recover(url: str) -> None:
    add(url)
    message_id = enqueue(url)
    (pending,) = as_json(cli(url, "deliveries", "--json"))
    assert (pending["message_id"], pending["state"], pending["attempts"]) == (
        message_id, "pending", 0,
    )  # fmt: skip
    created = datetime.datetime.fromisoformat(pending["created_at"])
    assert pending["created_at"].endswith("Z")
    assert created.utcoffset() == datetime.timedelta(0)
    refused = cli(url, "resend", message_id, "--endpoint", "acme")
    assert refused.exit_code == 1
    assert "is pending: nothing resent" in refused.output

    deliver_once(url, 500)
    (failed,) = as_json(cli(url, "deliveries", "--state", "failed", "--json"))
    assert (failed["attempts"], failed["last_status"]) == (1, 500)
    assert as_json(cli(url, "deliveries", "--state", "pending", "--json")) == []
    (attempt,) = as_json(cli(url, "attempts", message_id, "--json"))
    assert (attempt["endpoint"], attempt["attempt"], attempt["status"]) == ("acme", 1, 500)
    assert attempt["at"].endswith("Z")
    table = cli(url, "attempts", message_id)
    assert table.exit_code == 0
    assert "500" in table.output
    assert cli(url, "deliveries", "--message", message_id).exit_code == 0
    unknown = cli(url, "attempts", "msg_nope")
    assert (unknown.exit_code, unknown.output) == (1, "Error: no delivery of message msg_nope\n")

    resent = cli(url, "resend", message_id, "--endpoint", "acme")
    assert resent.exit_code == 0, resent.output
    (again,) = as_json(cli(url, "deliveries", "--json"))
    assert (again["state"], again["attempts"]) == ("pending", 0)
    no_message = cli(url, "resend", "msg_nope", "--endpoint", "acme")
    assert (no_message.exit_code, no_message.output) == (1, "Error: no message msg_nope\n")

    deliver_once(url, 500)
    future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
    none = cli(url, "recover", "acme", "--since", future)
    assert none.exit_code == 0
    assert "queued 0 deliveries to acme" in none.output
    recovered = cli(url, "recover", "acme", "--since", "2h")
    assert recovered.exit_code == 0, recovered.output
    assert "queued 1 delivery to acme" in recovered.output
    assert as_json(cli(url, "deliveries", "--json"))[0]["state"] == "pending"
    bad = cli(url, "recover", "acme", "--since", "last tuesday")
    assert bad.exit_code == 2
    assert "--since" in bad.output

    deliver_once(url, 204)
    delivered = as_json(cli(url, "deliveries", "--endpoint", "acme", "--json"))
    assert [d["state"] for d in delivered] == ["delivered"]
    assert [a["status"] for a in as_json(cli(url, "attempts", message_id, "--json"))] == [
        500, 500, 204,
    ]  # fmt: skip


# -- the worker, as an operator runs it -----------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]]
    arrived: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).got.append((dict(self.headers.items()), body))
        type(self).arrived.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"got": [], "arrived": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_the_worker_delivers_then_stops_on_sigterm(
    url: str, receiver: tuple[str, type[_Receiver]]
) -> None:
    hook_url, handler = receiver
    added = cli(url, "add-endpoint", "local", "--url", hook_url, "--generate-secret")
    assert added.exit_code == 0, added.output
    (secret,) = [w for w in added.output.split() if w.startswith("whsec_")]
    message_id = enqueue(url)
    port = free_port()
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "surefoot", "webhooks", "worker", "--database", url,
            "--allow-private", "--timeout", "5", "--metrics-port", str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert handler.arrived.wait(GUARD), "the worker never delivered"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=GUARD) as scrape:
            assert "# TYPE surefoot_webhooks_sent_total counter" in scrape.read().decode()
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=GUARD)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in err

    ((headers, body),) = handler.got
    assert headers["webhook-id"] == message_id
    assert json.loads(body)["data"] == {"invoice": 42}
    signed = f"{message_id}.{headers['webhook-timestamp']}.".encode() + body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    # What was in flight when SIGTERM came was recorded before the worker exited.
    (delivery,) = as_json(cli(url, "deliveries", "--json"))
    assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == (
        "delivered", 1, 204,
    )  # fmt: skip


def test_the_worker_refuses_bad_options_in_one_line(url: str) -> None:
    for args, option in (
        (("--timeout", "0"), "--timeout"),
        (("--max-in-flight", "0"), "--max-in-flight"),
        (("--allow-network", "not-a-network"), "--allow-network"),
    ):
        result = cli(url, "worker", *args)
        assert result.exit_code == 2, result.output
        assert f"Invalid value for {option}" in result.output
    both = cli(url, "worker", "--allow-private", "--allow-network", "10.0.0.0/8")
    assert both.exit_code == 2


def test_recover_queues_what_an_endpoint_missed_while_disabled(url: str) -> None:
    add(url)
    assert cli(url, "disable", "acme").exit_code == 0
    enqueue(url)
    assert as_json(cli(url, "deliveries", "--json")) == []
    assert cli(url, "enable", "acme").exit_code == 0
    recovered = cli(url, "recover", "acme", "--since", "30m")
    assert recovered.exit_code == 0, recovered.output
    assert "queued 1 delivery to acme" in recovered.output
    assert [d["state"] for d in as_json(cli(url, "deliveries", "--json"))] == ["pending"]
