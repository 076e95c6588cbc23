"""The gateway sending webhooks (``[webhooks.send]``): the policy file's table and its
problems with their lines, the outbox's delivery tasks inside the gateway with its event
hooks, and the admin API on the outbox's endpoints, deliveries and messages.

Messages are recorded as an application records them (its own ``sqlite3`` connection,
``BEGIN IMMEDIATE``, ``Outbox.enqueue``, ``COMMIT``) and delivered by the gateway's worker
to a receiver on 127.0.0.1 (``allow_private = true``). Time is a ``ManualClock``: a retry
is due when the test moves the clock, and the test polls the outbox's deliveries with a
deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    EchoUpstream,
    Running,
    gateway_config,
    problem,
    running,
)

from _support import T0
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.gateway import check_start, config_from_dict, load_config
from surefoot.outbox import Outbox, WebhookAttempted
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"outbox-gateway-test-secret-32by").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"outbox-gateway-test-rolled-32byt").decode()
PASSWORD = "hunter2-outbox-db-password"


# -- a consumer of the webhooks -------------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 recording each POST; ``statuses[path]`` lists the
    statuses to answer there in turn (then 200)."""

    url: str = ""
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for p, _, body in self.received if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with found.lock:
                found.received.append((self.path, dict(self.headers.items()), body))
                waiting = found.statuses.get(self.path) or [200]
                status = waiting.pop(0) if found.statuses.get(self.path) else waiting[0]
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- the gateway ------------------------------------------------------------------------------


@dataclass
class Sending:
    """A started gateway with an outbox: its admin client, outbox, clock and events."""

    run: Running
    outbox: Outbox
    database: Path
    clock: ManualClock
    events: list[Event]

    @property
    def admin(self) -> httpx.AsyncClient:
        return self.run.admin

    def enqueue(self, event_type: str, data: object, **options: Any) -> str:
        """One message, recorded as the application records it (Rule 1 of ``outbox``)."""
        conn = sqlite3.connect(self.database, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            message_id = self.outbox.enqueue(conn, event_type, data, **options)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return message_id

    async def state(self, message_id: str, endpoint: str) -> str:
        found = await asyncio.to_thread(
            self.outbox.deliveries, endpoint=endpoint, message_id=message_id
        )
        return found[0].state.value

    async def until(
        self, message_id: str, endpoint: str, state: str, *, attempts: int | None = None
    ) -> None:
        """Poll the delivery until it is in ``state`` (after ``attempts`` attempts, if
        given), with a deadline: a guard against a worker that never gets there, not a
        wait for time to pass."""
        deadline = time.monotonic() + 20
        while True:
            [found] = await asyncio.to_thread(
                self.outbox.deliveries, endpoint=endpoint, message_id=message_id
            )
            if found.state.value == state and attempts in (None, found.attempts):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{message_id} to {endpoint}: {found}, never {state}")
            await asyncio.sleep(0.02)


SEND = {"schedule": [0, 60], "allow_private": True, "event_types": ["invoice.*"]}


@pytest.fixture
async def sending(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Sending]:
    database = tmp_path / "app.db"
    config = gateway_config(webhooks={"send": {"database": f"sqlite:///{database}", **SEND}})
    clock = ManualClock(T0)
    events: list[Event] = []
    async with running(config, upstream=EchoUpstream(), clock=clock, hooks=[events.append]) as r:
        await r.gateway.startup()
        r.admin.headers.update(ADMIN_HEADERS)
        assert r.gateway.sender is not None
        outbox = r.gateway.sender.outbox
        for name in ("acme", "beta"):
            await asyncio.to_thread(
                outbox.add_endpoint, name, url=f"{receiver.url}/{name}", secrets=[SECRET]
            )
        yield Sending(r, outbox, database, clock, events)


# -- delivering -------------------------------------------------------------------------------


async def test_a_committed_message_is_delivered_by_the_gateways_worker_its_events_to_its_hooks(
    sending: Sending, receiver: Receiver
) -> None:
    message_id = sending.enqueue("invoice.paid", {"invoice": 42})

    await sending.until(message_id, "acme", "delivered")
    await sending.until(message_id, "beta", "delivered")

    [body] = receiver.at("/acme")
    assert body["type"] == "invoice.paid"
    assert body["data"] == {"invoice": 42}
    [(_, headers, _)] = [r for r in receiver.received if r[0] == "/acme"]
    assert headers["webhook-id"] == message_id
    assert headers["webhook-signature"].startswith("v1,")
    attempted = [e for e in sending.events if isinstance(e, WebhookAttempted)]
    assert {(e.endpoint, e.outcome) for e in attempted} == {
        ("acme", "delivered"),
        ("beta", "delivered"),
    }


async def test_a_rolled_back_message_is_never_delivered(
    sending: Sending, receiver: Receiver
) -> None:
    conn = sqlite3.connect(sending.database, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    lost = sending.outbox.enqueue(conn, "invoice.paid", {"invoice": 1})
    conn.execute("ROLLBACK")
    conn.close()
    kept = sending.enqueue("invoice.paid", {"invoice": 2})

    await sending.until(kept, "acme", "delivered")

    assert [b["data"] for b in receiver.at("/acme")] == [{"invoice": 2}]
    response = await sending.admin.get(f"/admin/outbox/messages/{lost}/attempts")
    problem(response, 404, "admin_not_found")


async def test_a_failed_attempt_is_retried_when_the_clock_reaches_its_schedule(
    sending: Sending, receiver: Receiver
) -> None:
    receiver.statuses["/acme"] = [500]
    message_id = sending.enqueue("invoice.paid", {"invoice": 7})
    await sending.until(message_id, "beta", "delivered")
    await sending.until(message_id, "acme", "pending", attempts=1)
    attempts = await sending.admin.get(f"/admin/outbox/messages/{message_id}/attempts")
    assert [(a["endpoint"], a["status"]) for a in attempts.json()["attempts"]] == [
        ("acme", 500),
        ("beta", 200),
    ]

    sending.clock.advance(120)  # past 60 s and its jitter

    await sending.until(message_id, "acme", "delivered")
    attempts = await sending.admin.get(f"/admin/outbox/messages/{message_id}/attempts")
    assert [a["status"] for a in attempts.json()["attempts"] if a["endpoint"] == "acme"] == [
        500,
        200,
    ]


# -- the admin API ----------------------------------------------------------------------------


async def test_endpoints_are_listed_and_shown_without_their_secrets(sending: Sending) -> None:
    await asyncio.to_thread(sending.outbox.rotate_secret, "acme", OTHER_SECRET)

    listed = await sending.admin.get("/admin/outbox/endpoints")
    one = await sending.admin.get("/admin/outbox/endpoints/acme")

    assert listed.status_code == 200
    assert [e["name"] for e in listed.json()["endpoints"]] == ["acme", "beta"]
    assert one.status_code == 200
    assert one.json()["enabled"] is True
    assert one.json()["secrets"] == 2  # how many, never which
    for response in (listed, one):
        assert SECRET not in response.text
        assert OTHER_SECRET not in response.text
        assert SECRET.removeprefix("whsec_") not in response.text


async def test_a_disabled_endpoint_keeps_its_messages_until_it_is_enabled(
    sending: Sending, receiver: Receiver
) -> None:
    receiver.statuses["/acme"] = [500]
    message_id = sending.enqueue("invoice.paid", {"invoice": 3})
    await sending.until(message_id, "acme", "pending", attempts=1)

    disabled = await sending.admin.post("/admin/outbox/endpoints/acme/disable")
    assert disabled.status_code == 200
    assert disabled.json()["enabled"] is False
    assert disabled.json()["disabled_reason"] == "manual"
    sending.clock.advance(120)  # acme's retry is due
    # beta's delivery of a later message is claimed in a pass that would claim acme's.
    later = sending.enqueue("invoice.paid", {"invoice": 4})
    await sending.until(later, "beta", "delivered")
    assert await sending.state(message_id, "acme") == "pending"
    assert len(receiver.at("/acme")) == 1

    enabled = await sending.admin.post("/admin/outbox/endpoints/acme/enable")
    assert enabled.status_code == 200
    assert enabled.json()["enabled"] is True
    await sending.until(message_id, "acme", "delivered")
    assert [b["data"] for b in receiver.at("/acme")] == [{"invoice": 3}, {"invoice": 3}]


async def test_recover_queues_again_the_failed_messages_recorded_since_a_time(
    sending: Sending, receiver: Receiver
) -> None:
    receiver.statuses["/acme"] = [500, 500]
    message_id = sending.enqueue("invoice.paid", {"invoice": 9})
    await sending.until(message_id, "acme", "pending", attempts=1)
    sending.clock.advance(120)
    await sending.until(message_id, "acme", "failed")
    failed = await sending.admin.get("/admin/outbox/deliveries?endpoint=acme&state=failed")
    assert [d["message_id"] for d in failed.json()["deliveries"]] == [message_id]

    later = datetime.datetime.fromtimestamp(T0 + 10, datetime.UTC).isoformat()
    none = await sending.admin.post("/admin/outbox/endpoints/acme/recover", params={"since": later})
    assert none.json()["requeued"] == 0
    recovered = await sending.admin.post(
        "/admin/outbox/endpoints/acme/recover", params={"since": str(int(T0) - 1)}
    )

    assert recovered.status_code == 200
    assert recovered.json() == {"endpoint": "acme", "since": T0 - 1, "requeued": 1}
    await sending.until(message_id, "acme", "delivered")
    assert len(receiver.at("/acme")) == 3


async def test_resend_delivers_a_delivered_message_again_and_refuses_a_pending_one(
    sending: Sending, receiver: Receiver
) -> None:
    message_id = sending.enqueue("invoice.paid", {"invoice": 5})
    await sending.until(message_id, "acme", "delivered")

    resent = await sending.admin.post(
        f"/admin/outbox/messages/{message_id}/resend", params={"endpoint": "acme"}
    )

    assert resent.status_code == 200
    assert resent.json() == {"message_id": message_id, "endpoint": "acme", "resent": True}
    await sending.until(message_id, "acme", "delivered")
    assert [b["data"] for b in receiver.at("/acme")] == [{"invoice": 5}, {"invoice": 5}]

    receiver.statuses["/beta"] = [500]
    waiting = sending.enqueue("invoice.paid", {"invoice": 6})
    await sending.until(waiting, "beta", "pending", attempts=1)
    refused = await sending.admin.post(
        f"/admin/outbox/messages/{waiting}/resend", params={"endpoint": "beta"}
    )
    assert "pending" in problem(refused, 400, "admin_bad_request")["detail"]


async def test_stats_and_deliveries_report_the_backlog(
    sending: Sending, receiver: Receiver
) -> None:
    receiver.statuses["/acme"] = [500, 500]
    first = sending.enqueue("invoice.paid", {"invoice": 1})
    second = sending.enqueue("invoice.voided", {"invoice": 1})
    await sending.until(first, "acme", "pending", attempts=1)
    await sending.until(second, "acme", "pending", attempts=1)
    await sending.until(second, "beta", "delivered")
    await sending.admin.post("/admin/outbox/endpoints/acme/disable")

    stats = await sending.admin.get("/admin/outbox/stats")
    listed = await sending.admin.get("/admin/outbox/deliveries", params={"endpoint": "acme"})
    one = await sending.admin.get(
        "/admin/outbox/deliveries", params={"message": first, "limit": "1"}
    )

    by_name = {s["endpoint"]: s for s in stats.json()["endpoints"]}
    assert (by_name["acme"]["enabled"], by_name["acme"]["pending"]) == (False, 2)
    assert (by_name["beta"]["pending"], by_name["beta"]["failed"]) == (0, 0)
    assert [d["message_id"] for d in listed.json()["deliveries"]] == [second, first]
    assert [d["message_id"] for d in one.json()["deliveries"]] == [first]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/outbox/endpoints/nobody"),
        ("POST", "/admin/outbox/endpoints/nobody/enable"),
        ("POST", "/admin/outbox/endpoints/nobody/disable"),
        ("POST", "/admin/outbox/endpoints/nobody/recover?since=0"),
        ("GET", "/admin/outbox/messages/msg_unknown/attempts"),
        ("POST", "/admin/outbox/messages/msg_unknown/resend?endpoint=acme"),
        ("GET", "/admin/outbox/nothing"),
        ("DELETE", "/admin/outbox/endpoints/acme"),
        ("POST", "/admin/outbox/endpoints/acme/explode"),
        ("GET", "/admin/outbox/endpoints/acme/enable"),
    ],
)
async def test_an_unknown_endpoint_message_or_route_is_404(
    sending: Sending, method: str, path: str
) -> None:
    response = await sending.admin.request(method, path)
    problem(response, 404, "admin_not_found")


@pytest.mark.parametrize(
    ("method", "path", "said"),
    [
        ("GET", "/admin/outbox/deliveries?limit=0", "limit"),
        ("GET", "/admin/outbox/deliveries?limit=10001", "limit"),
        ("GET", "/admin/outbox/deliveries?state=lost", "state"),
        ("GET", "/admin/outbox/deliveries?tenant=x", "tenant"),
        ("GET", "/admin/outbox/deliveries?limit=1&limit=2", "limit"),
        ("POST", "/admin/outbox/endpoints/acme/recover", "since"),
        ("POST", "/admin/outbox/endpoints/acme/recover?since=yesterday", "since"),
        ("POST", "/admin/outbox/endpoints/acme/recover?since=-5", "since"),
        ("POST", "/admin/outbox/messages/msg_x/resend", "endpoint"),
        ("GET", "/admin/outbox/endpoints?all=1", "all"),
        ("GET", "/admin/outbox/endpoints/%FF", "endpoint"),
    ],
)
async def test_a_bad_query_value_is_400_saying_what_was_expected(
    sending: Sending, method: str, path: str, said: str
) -> None:
    response = await sending.admin.request(method, path)
    assert said in problem(response, 400, "admin_bad_request")["detail"]


async def test_a_post_with_a_body_other_than_an_empty_object_is_400(sending: Sending) -> None:
    response = await sending.admin.post("/admin/outbox/endpoints/acme/disable", json=[1])
    problem(response, 400, "admin_bad_request")
    shown = await sending.admin.get("/admin/outbox/endpoints/acme")
    assert shown.json()["enabled"] is True


async def test_the_outbox_endpoints_need_the_admin_token(sending: Sending) -> None:
    for method, path in (
        ("GET", "/admin/outbox/endpoints"),
        ("POST", "/admin/outbox/endpoints/acme/disable"),
    ):
        response = await sending.admin.request(
            method, path, headers={"Authorization": "Bearer wrong"}
        )
        problem(response, 401, "admin_unauthorized")
    assert (await sending.admin.get("/admin/outbox/endpoints/acme")).json()["enabled"] is True


async def test_without_a_webhooks_send_table_the_outbox_endpoints_are_404() -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as r:
        assert r.gateway.sender is None
        for method, path in (
            ("GET", "/admin/outbox/endpoints"),
            ("GET", "/admin/outbox/stats"),
            ("POST", "/admin/outbox/endpoints/acme/enable"),
        ):
            response = await r.admin.request(method, path, headers=ADMIN_HEADERS)
            assert "webhooks.send" in problem(response, 404, "admin_not_found")["detail"]


# -- the database's password ------------------------------------------------------------------


async def test_the_databases_password_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUREFOOT_TEST_OUTBOX_PASSWORD", PASSWORD)
    # Port 1: nothing listens, so every call to the database fails, and says so.
    url = "postgresql://app:${SUREFOOT_TEST_OUTBOX_PASSWORD}@127.0.0.1:1/app"
    config = gateway_config(webhooks={"send": {"database": url}})
    assert config.sender is not None
    assert config.sender.database == f"postgresql://app:{PASSWORD}@127.0.0.1:1/app"
    assert PASSWORD not in repr(config.sender)
    assert PASSWORD not in json.dumps(config.effective())

    found = await check_start(config, store_timeout=0.5)
    assert any("webhooks.send.database" in line for line in found.warnings + found.errors)
    assert PASSWORD not in repr(found)

    async with running(config, upstream=EchoUpstream()) as r:
        shown = await r.admin.get("/admin/config", headers=ADMIN_HEADERS)
        listed = await r.admin.get("/admin/outbox/endpoints", headers=ADMIN_HEADERS)
        with pytest.raises(ConfigurationError) as raised:
            await r.gateway.startup()

    assert shown.status_code == 200
    assert "app:***@127.0.0.1:1" in shown.text
    problem(listed, 503, "store_unavailable")
    assert "webhooks.send.database" in str(raised.value)
    for text in (shown.text, listed.text, str(raised.value)):
        assert PASSWORD not in text


async def test_check_config_finds_a_missing_directory_for_the_sqlite_database(
    tmp_path: Path,
) -> None:
    config = gateway_config(webhooks={"send": {"database": f"sqlite:///{tmp_path}/missing/app.db"}})

    found = await check_start(config)

    assert any("webhooks.send.database" in e and "no directory" in e for e in found.errors)


async def test_with_no_workers_the_gateway_serves_the_admin_api_and_delivers_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    database = tmp_path / "app.db"
    send = {"database": f"sqlite:///{database}", "workers": 0, "allow_private": True}
    async with running(gateway_config(webhooks={"send": send}), upstream=EchoUpstream()) as r:
        await r.gateway.startup()
        assert r.gateway.sender is not None
        assert r.gateway.sender.workers == []
        outbox = r.gateway.sender.outbox
        await asyncio.to_thread(
            outbox.add_endpoint, "acme", url=f"{receiver.url}/acme", secrets=[SECRET]
        )
        response = await r.admin.get("/admin/outbox/endpoints", headers=ADMIN_HEADERS)
        assert [e["name"] for e in response.json()["endpoints"]] == ["acme"]


# -- the policy file --------------------------------------------------------------------------

HEAD = (
    '[upstream]\nurl = "http://upstream.test"\n\n'
    '[stores]\ndefault = "memory://"\n\n'
    '[admin]\ntoken = "t"\n\n'
    "[webhooks.send]\n"
    'database = "sqlite:///app.db"\n'
)  # [webhooks.send] is line 10, its database line 11


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


BAD_FIELDS = [
    pytest.param(
        HEAD.replace("sqlite:///app.db", "mysql://u:pw-not-shown@db/app"),
        11, "webhooks.send.database", "expected a sqlite:///path or postgresql:// URL",
        id="database-scheme",
    ),
    pytest.param(
        HEAD.replace("sqlite:///app.db", "sqlite:///app.db?mode=ro"),
        11, "webhooks.send.database", "without ?options", id="database-sqlite-options",
    ),
    pytest.param(
        HEAD.replace("sqlite:///app.db", "postgresql://u:${SUREFOOT_TEST_UNSET}@db/app"),
        11, "webhooks.send.database", "'SUREFOOT_TEST_UNSET' is not set", id="database-env",
    ),
    pytest.param(
        HEAD.replace('database = "sqlite:///app.db"\n', ""),
        10, "webhooks.send.database", "required", id="database-missing",
    ),
    pytest.param(
        HEAD + 'prefix = "Outbox-Tables"\n',
        12, "webhooks.send.prefix", "expected a lower-case SQL name", id="prefix",
    ),
    pytest.param(
        HEAD + 'event_types = ["invoice paid"]\n',
        12, "webhooks.send.event_types[0]", "expected an event type", id="event-types-item",
    ),
    pytest.param(
        HEAD + "event_types = []\n",
        12, "webhooks.send.event_types", "expected event types", id="event-types-empty",
    ),
    pytest.param(
        HEAD + "schedule = [0, 60, 30]\n",
        12, "webhooks.send.schedule[2]", "a schedule never decreases", id="schedule-decreases",
    ),
    pytest.param(
        HEAD + 'schedule = [0, "soon"]\n',
        12, "webhooks.send.schedule[1]", "expected delays in seconds", id="schedule-item",
    ),
    pytest.param(
        HEAD + "schedule = []\n",
        12, "webhooks.send.schedule", "between 1 and 100 delays", id="schedule-empty",
    ),
    pytest.param(
        HEAD + "disable_after = 10\n",
        12, "webhooks.send.disable_after", "seconds between 60 and 7776000", id="disable-after",
    ),
    pytest.param(
        HEAD + "retention = 3600\n",
        12, "webhooks.send.retention", "longer than the schedule's span", id="retention",
    ),
    pytest.param(
        HEAD + "timeout = 0\n",
        12, "webhooks.send.timeout", "seconds between 0.1 and 300", id="timeout",
    ),
    pytest.param(
        HEAD + "workers = -1\n",
        12, "webhooks.send.workers", "delivery tasks from 0 to 64", id="workers",
    ),
    pytest.param(
        HEAD + "max_in_flight = 0\n",
        12, "webhooks.send.max_in_flight", "from 1 to 10000", id="max-in-flight",
    ),
    pytest.param(
        HEAD + 'allow_private = "yes"\n',
        12, "webhooks.send.allow_private", "true or false", id="allow-private",
    ),
    pytest.param(
        HEAD + 'allow_networks = ["10.0.0.0/33"]\n',
        12, "webhooks.send.allow_networks", "networks such as '10.0.0.0/8'",
        id="allow-networks",
    ),
    pytest.param(
        HEAD + 'allow_private = true\nallow_networks = ["10.0.0.0/8"]\n',
        13, "webhooks.send.allow_networks", "not both", id="allow-both",
    ),
    pytest.param(
        HEAD + "workerz = 2\n",
        12, "webhooks.send.workerz", "did you mean 'workers'", id="unknown-field",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "field", "expected"), BAD_FIELDS)
def test_a_bad_webhooks_send_field_is_refused_with_its_line_field_and_what_was_expected(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    line: int,
    field: str,
    expected: str,
) -> None:
    monkeypatch.delenv("SUREFOOT_TEST_UNSET", raising=False)
    path = write(tmp_path, text)

    with pytest.raises(ConfigurationError) as raised:
        load_config(path)

    message = str(raised.value)
    assert f"{path}:{line}: {field}: " in message
    assert expected in message
    assert "pw-not-shown" not in message


def test_a_valid_table_is_built_with_the_outboxs_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, HEAD + "schedule = [0, 5, 5, 300]\n"))

    sender = config.sender
    assert sender is not None
    assert (sender.prefix, sender.timeout, sender.workers) == ("surefoot_webhook", 15.0, 1)
    assert sender.schedule == (0.0, 5.0, 5.0, 300.0)
    assert sender.allow_private is False
    assert (
        load_config(
            write(
                tmp_path,
                HEAD.replace("[webhooks.send]\n", "#\n").replace(
                    'database = "sqlite:///app.db"\n', ""
                ),
            )
        ).sender
        is None
    )


def test_allow_networks_are_handed_to_the_worker_as_networks(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, HEAD + 'allow_networks = ["10.0.0.0/8"]\n'))

    assert config.sender is not None
    assert config.sender.allow_private == ("10.0.0.0/8",)


async def test_a_reload_that_changes_webhooks_send_is_logged_and_applied_at_start_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    send: dict[str, Any] = {"database": f"sqlite:///{tmp_path}/app.db", "workers": 0}
    async with running(gateway_config(webhooks={"send": send}), upstream=EchoUpstream()) as r:
        before = r.gateway.sender

        await r.gateway.reload(gateway_config(webhooks={"send": {**send, "timeout": 5}}))

        assert r.gateway.sender is before
        assert before is not None
        assert before.sender.timeout == 15.0
        assert "webhooks.send" in caplog.text


def test_config_from_dict_refuses_a_bad_database_without_quoting_its_password() -> None:
    base: dict[str, Any] = {
        "upstream": {"url": "http://u.test"},
        "admin": {"token": "t"},
        "webhooks": {"send": {"database": f"mysql://app:{PASSWORD}@db/app"}},
    }
    with pytest.raises(ConfigurationError) as raised:
        config_from_dict(base)
    assert "app:***@db/app" in str(raised.value)
    assert PASSWORD not in str(raised.value)


async def test_on_postgresql_the_gateway_creates_the_tables_delivers_and_answers_the_admin_api(
    postgres_dsn: str, receiver: Receiver
) -> None:
    import secrets

    import psycopg

    prefix = "gw_outbox_" + secrets.token_hex(4)  # this test's own tables
    send = {"database": postgres_dsn, "prefix": prefix, "allow_private": True}
    try:
        async with running(gateway_config(webhooks={"send": send}), upstream=EchoUpstream()) as r:
            await r.gateway.startup()
            assert r.gateway.sender is not None
            outbox = r.gateway.sender.outbox
            await asyncio.to_thread(
                outbox.add_endpoint, "acme", url=f"{receiver.url}/acme", secrets=[SECRET]
            )
            with psycopg.connect(postgres_dsn) as conn, conn.transaction():
                message_id = outbox.enqueue(conn, "invoice.paid", {"invoice": 11})

            deadline = time.monotonic() + 20
            while (await asyncio.to_thread(outbox.deliveries))[0].state.value != "delivered":
                assert time.monotonic() < deadline, "never delivered"
                await asyncio.sleep(0.02)
            r.admin.headers.update(ADMIN_HEADERS)
            attempts = await r.admin.get(f"/admin/outbox/messages/{message_id}/attempts")
            listed = await r.admin.get("/admin/outbox/endpoints")

        assert [b["data"] for b in receiver.at("/acme")] == [{"invoice": 11}]
        assert [a["status"] for a in attempts.json()["attempts"]] == [200]
        assert [e["name"] for e in listed.json()["endpoints"]] == ["acme"]
        assert SECRET not in listed.text
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            for table in ("attempts", "deliveries", "messages", "endpoints"):
                conn.execute(f"DROP TABLE IF EXISTS {prefix}_{table}")
