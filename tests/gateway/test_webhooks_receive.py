"""The gateway receiving webhooks (``[[webhooks.receive]]``): Stripe-signed events in front
of the legacy payments API, each booked once whatever the sender repeats; the policy file's
table, its problems with their lines; the admin API and ``surefoot webhooks`` on its events.

The legacy API has no webhook route: its ``POST /charges`` stands for the handler, and a
Stripe event whose body carries a charge books it. The ledger (``GET /audit``) counts what
really ran. Time is a ``ManualClock`` unless the CLI, which reads the system's, looks.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    ROOT,
    Running,
    Seen,
    gateway_config,
    legacy_upstream,
    problem,
    running,
    surefoot_serve,
    toml_config,
)
from click.testing import CliRunner
from examples.legacy_payments.app import create_app
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from _support import T0
from surefoot._asgi import Receive, Scope, Send
from surefoot.cli import main
from surefoot.errors import ConfigurationError
from surefoot.gateway import Gateway, GatewayConfig, check_start, load_config
from surefoot.idempotency import Begin
from surefoot.testing import ManualClock
from surefoot.webhooks import Stripe, webhook_store_key

pytestmark = pytest.mark.anyio

SECRET_ENV = "SUREFOOT_TEST_STRIPE_SECRET"
OLD_SECRET_ENV = "SUREFOOT_TEST_STRIPE_SECRET_OLD"
SECRET = "whsec_gateway_test_stripe_secret"
OLD_SECRET = "whsec_gateway_test_stripe_rolled_secret"
STRIPE = Stripe(secrets=(SECRET,))
PATH = "/charges"  # the legacy API's handler of the events


@pytest.fixture(autouse=True)
def stripe_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(OLD_SECRET_ENV, OLD_SECRET)


def event(event_id: str, amount: int = 1250, **fields: Any) -> bytes:
    """A Stripe event whose body the legacy API books as a charge (referenced by its id)."""
    body = {
        "id": event_id,
        "object": "event",
        "type": "charge.requested",
        "amount": amount,
        "currency": "eur",
        "customer": "cus_1",
        "reference": event_id,
        **fields,
    }
    return json.dumps(body).encode()


def signed(body: bytes, at: float, scheme: Stripe = STRIPE) -> dict[str, str]:
    return {**scheme.sign(body, timestamp=int(at)), "content-type": "application/json"}


class Witness:
    """The upstream: the legacy API, behind a recorder of what reaches it."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.seen: list[Seen] = []

    @property
    def deliveries(self) -> list[Seen]:
        return [s for s in self.seen if (s.method, s.path) == ("POST", PATH)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        self.seen.append(Seen(scope["method"], scope["path"], "", headers, body))
        given = False

        async def again() -> Any:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, again, send)


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    return Witness(create_app(str(tmp_path / "ledger.db")))


def stripe_config(tables: dict[str, Any] | None = None, **table: Any) -> GatewayConfig:
    """The Stripe endpoint on the legacy API's handler, ``table`` merged in; ``tables``
    are more tables of the file. ``[idempotency]`` is the gateway's default: every
    ``POST`` needs an ``Idempotency-Key``."""
    receive = {"path": PATH, "name": "stripe", "scheme": "stripe", "secrets_env": [SECRET_ENV]}
    return gateway_config(webhooks={"receive": [receive | table]}, **(tables or {}))


async def audit(gw: Running) -> dict[str, Any]:
    response = await gw.client.get("/audit")
    assert response.status_code == 200
    counts: dict[str, Any] = response.json()
    return counts


async def deliver(gw: Running, body: bytes, at: float, **extra: str) -> httpx.Response:
    return await gw.client.post(PATH, content=body, headers=signed(body, at) | extra)


# -- in front of the legacy API ---------------------------------------------------------------


async def test_each_stripe_event_is_booked_once_whatever_the_sender_repeats(
    witness: Witness, clock: ManualClock
) -> None:
    async with running(stripe_config(), upstream=witness, clock=clock) as gw:
        first = await deliver(gw, event("evt_1"), T0)
        clock.advance(60)
        again = await deliver(gw, event("evt_1"), clock.now())  # re-signed: a retry
        together = await asyncio.gather(
            *(deliver(gw, event("evt_2"), clock.now()) for _ in range(5))
        )
        clock.advance(60)
        later = await deliver(gw, event("evt_2"), clock.now())
        counts = await audit(gw)

    assert first.status_code == 201
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    statuses = sorted(r.status_code for r in together)
    assert statuses[0] == 201
    assert set(statuses) <= {201, 409}  # 409: the first delivery was still running
    for response in together:
        if response.status_code == 409:
            problem(response, 409, "idempotency_request_in_progress")
    assert later.status_code == 201
    assert later.headers["idempotent-replayed"] == "true"
    assert counts == {"charges": 2, "references": 2, "duplicated_references": []}
    assert [json.loads(s.body)["id"] for s in witness.deliveries] == ["evt_1", "evt_2"]


async def test_the_upstream_gets_the_bytes_that_were_signed_and_the_event_id(
    witness: Witness, clock: ManualClock
) -> None:
    # Spacing, key order and an escape a re-serialiser would change; no Idempotency-Key.
    body = (
        b'{"reference": "evt_raw",  "id":"evt_raw", "object" : "event",\n'
        b' "amount": 1250, "currency":"eur", "customer": "cus_\\u00e9"}'
    )
    async with running(stripe_config(), upstream=witness, clock=clock) as gw:
        response = await deliver(gw, body, T0, **{"Surefoot-Webhook-Id": "evt_forged"})
        keyless = await gw.client.post("/status/201", json={"no": "key"})

    assert response.status_code == 201, response.text
    [seen] = witness.deliveries
    assert seen.body == body
    assert seen.header("surefoot-webhook-id") == ["evt_raw"]
    assert seen.header("stripe-signature") == [signed(body, T0)["stripe-signature"]]
    # The gateway's idempotency layer still protects every other POST.
    problem(keyless, 400, "idempotency_key_missing")


BAD_DELIVERIES = [
    pytest.param(
        signed(event("evt_bad"), T0, Stripe(secrets=("whsec_someone_else",))),
        401, "webhook_signature_mismatch", id="wrong-secret",
    ),
    pytest.param(
        {"content-type": "application/json"}, 400, "webhook_signature_missing", id="unsigned",
    ),
    pytest.param(
        {"stripe-signature": "t=1700000000,v1=zz"}, 400, "webhook_signature_malformed",
        id="malformed",
    ),
    pytest.param(
        signed(event("evt_bad"), T0 - 301), 401, "webhook_timestamp_expired", id="expired",
    ),
    pytest.param(
        signed(event("evt_bad"), T0 + 301), 401, "webhook_timestamp_in_future", id="future",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "status", "code"), BAD_DELIVERIES)
async def test_a_delivery_that_fails_verification_reaches_nothing_and_stores_nothing(
    witness: Witness, clock: ManualClock, headers: dict[str, str], status: int, code: str
) -> None:
    body = event("evt_bad")
    async with running(stripe_config(), upstream=witness, clock=clock) as gw:
        response = await gw.client.post(PATH, content=body, headers=headers)
        counts = await audit(gw)
        stored = await gw.gateway.stack.webhook_stores["stripe"].get(
            webhook_store_key("stripe", "evt_bad"), clock.now()
        )

    problem(response, status, code)
    assert body.decode() not in response.text
    assert witness.deliveries == []
    assert counts["charges"] == 0
    assert stored is None


async def test_both_secrets_of_a_rolled_endpoint_are_accepted(
    witness: Witness, clock: ManualClock
) -> None:
    config = stripe_config(secrets_env=[SECRET_ENV, OLD_SECRET_ENV])
    async with running(config, upstream=witness, clock=clock) as gw:
        new = await deliver(gw, event("evt_new"), T0)
        body = event("evt_old")
        old = await gw.client.post(
            PATH, content=body, headers=signed(body, T0, Stripe(secrets=(OLD_SECRET,)))
        )

    assert (new.status_code, old.status_code) == (201, 201)


async def test_a_failure_before_the_commit_releases_the_event_for_the_senders_retry(
    witness: Witness, clock: ManualClock
) -> None:
    async with running(stripe_config(), upstream=witness, clock=clock) as gw:
        failed = await deliver(gw, event("evt_1"), T0, **{"X-Legacy-Fail": "before-commit"})
        clock.advance(60)
        retried = await deliver(gw, event("evt_1"), clock.now())
        counts = await audit(gw)

    problem(failed, 502, "upstream_unavailable")
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert counts["charges"] == 1


async def test_webhook_deliveries_are_rate_limited_before_anything_is_stored(
    witness: Witness, clock: ManualClock
) -> None:
    policy = {"name": "events", "limits": ["1/minute"], "routes": [f"POST {PATH}"]}
    config = stripe_config(tables={"rate_limit": {"policies": [policy]}})
    async with running(config, upstream=witness, clock=clock) as gw:
        first = await deliver(gw, event("evt_1"), T0)
        limited = await deliver(gw, event("evt_2"), T0)
        stored = await gw.gateway.stack.webhook_stores["stripe"].get(
            webhook_store_key("stripe", "evt_2"), clock.now()
        )

    assert first.status_code == 201
    problem(limited, 429, "rate_limit_exceeded")
    assert stored is None
    assert len(witness.deliveries) == 1


async def test_the_receivers_events_are_counted_by_the_gateways_metrics(
    witness: Witness, clock: ManualClock
) -> None:
    async with running(stripe_config(), upstream=witness, clock=clock) as gw:
        await deliver(gw, event("evt_1"), T0)
        await deliver(gw, event("evt_1"), T0)
        await gw.client.post(PATH, content=event("evt_2"), headers={"stripe-signature": "x"})
        response = await gw.admin.get("/metrics", headers=ADMIN_HEADERS)

    received = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "surefoot_webhooks_received_total"
        and sample.labels["endpoint"] == "stripe"
    }
    assert received == {"processed": 1, "duplicate": 1, "refused": 1}


@pytest.mark.slow
def test_surefoot_serve_books_each_stripe_event_once_for_the_legacy_api_in_its_process(
    tmp_path: Path,
) -> None:
    # Real sockets both sides: the events reach the legacy API through the proxy's pool.
    up_dir, gw_dir = tmp_path / "upstream", tmp_path / "gateway"
    up_dir.mkdir()
    gw_dir.mkdir()
    upstream, url = legacy_upstream(up_dir)
    table = (
        f'[[webhooks.receive]]\npath = "{PATH}"\nname = "stripe"\nscheme = "stripe"\n'
        f'secrets_env = ["{SECRET_ENV}"]\nretention = 2851200\n'
    )
    gateway = surefoot_serve(gw_dir, toml_config(url, f"sqlite:///{gw_dir}/store.db", table))
    try:
        upstream.wait_ready(url + "/health")
        gateway.wait_ready()
        with httpx.Client(base_url=gateway.url, timeout=10) as client:

            def post(body: bytes, scheme: Stripe = STRIPE) -> httpx.Response:
                return client.post(PATH, content=body, headers=signed(body, time.time(), scheme))

            first = post(event("evt_1"))
            again = post(event("evt_1"))
            with ThreadPoolExecutor(4) as pool:
                burst = list(pool.map(lambda _: post(event("evt_2")), range(4)))
            forged = post(event("evt_3"), Stripe(secrets=("whsec_someone_else",)))
        counts = httpx.get(url + "/audit").json()
        shown = gateway.admin_get("/admin/webhooks/stripe/events/evt_1")
    finally:
        gateway.server.stop()
        upstream.stop()

    assert first.status_code == 201, gateway.server.tail()
    assert (again.status_code, again.content) == (201, first.content)
    assert {r.status_code for r in burst} <= {201, 409}
    assert forged.status_code == 401
    assert counts == {"charges": 2, "references": 2, "duplicated_references": []}
    assert (shown["state"], shown["status"]) == ("completed", 201)


# -- the admin API ----------------------------------------------------------------------------


def event_url(event_id: str, name: str = "stripe") -> str:
    return f"/admin/webhooks/{name}/events/{quote(event_id, safe='')}"


async def test_the_admin_api_shows_an_event_and_forgets_it_for_the_next_delivery(
    witness: Witness, clock: ManualClock
) -> None:
    async with running(stripe_config(), upstream=witness, clock=clock) as gw:
        before = await gw.admin.get(event_url("evt_1"), headers=ADMIN_HEADERS)
        await deliver(gw, event("evt_1"), T0)
        clock.advance(10)
        done = await gw.admin.get(event_url("evt_1"), headers=ADMIN_HEADERS)
        forgotten = await gw.admin.delete(event_url("evt_1"), headers=ADMIN_HEADERS)
        after = await gw.admin.get(event_url("evt_1"), headers=ADMIN_HEADERS)
        again = await gw.admin.delete(event_url("evt_1"), headers=ADMIN_HEADERS)
        redelivered = await deliver(gw, event("evt_1"), clock.now())  # from the dashboard
        counts = await audit(gw)

    assert before.json() == {
        "endpoint": "stripe",
        "event_id": "evt_1",
        "store_key": webhook_store_key("stripe", "evt_1"),
        "state": "absent",
        "status": None,
    }
    shown = done.json()
    assert (shown["state"], shown["status"], shown["age"]) == ("completed", 201, 10)
    assert shown["expires_in"] == 7 * 86400 - 10
    assert (forgotten.status_code, forgotten.json()["forgotten"]) == (200, True)
    assert after.json()["state"] == "absent"
    problem(again, 404, "admin_not_found")
    assert redelivered.status_code == 201
    assert "idempotent-replayed" not in redelivered.headers
    assert counts["charges"] == 2  # forgetting is asking for it to run again


async def test_the_admin_api_never_forgets_an_event_being_processed(
    witness: Witness, clock: ManualClock
) -> None:
    event_id = "evt/with?odd%chars"  # any printable ASCII: percent-encoded in the path
    async with running(stripe_config(), upstream=witness, clock=clock) as gw:
        store = gw.gateway.stack.webhook_stores["stripe"]
        begun = Begin(fingerprint="f", token="t", lease=60, ttl=600, on_lease_expiry="reexecute")
        await store.begin(webhook_store_key("stripe", event_id), begun, clock.now())
        running_now = await gw.admin.get(event_url(event_id), headers=ADMIN_HEADERS)
        refused = await gw.admin.delete(event_url(event_id), headers=ADMIN_HEADERS)
        clock.advance(61)  # the worker died: its lease ran out
        abandoned = await gw.admin.get(event_url(event_id), headers=ADMIN_HEADERS)
        forgotten = await gw.admin.delete(event_url(event_id), headers=ADMIN_HEADERS)

    assert (running_now.json()["state"], running_now.json()["lease_expires_in"]) == (
        "in_flight",
        60,
    )
    assert "being processed" in problem(refused, 400, "admin_bad_request")["detail"]
    assert abandoned.json()["state"] == "lease_expired"
    assert forgotten.json()["forgotten"] is True


@pytest.mark.parametrize(
    ("method", "url", "headers", "status", "code"),
    [
        ("GET", event_url("evt_1", name="github"), ADMIN_HEADERS, 404, "admin_not_found"),
        ("DELETE", event_url("evt_1", name="nope"), ADMIN_HEADERS, 404, "admin_not_found"),
        ("GET", event_url("e" * 256), ADMIN_HEADERS, 400, "admin_bad_request"),
        ("GET", event_url("evt é"), ADMIN_HEADERS, 400, "admin_bad_request"),
        ("GET", "/admin/webhooks/stripe/events/", ADMIN_HEADERS, 400, "admin_bad_request"),
        ("GET", "/admin/webhooks/stripe/evt_1", ADMIN_HEADERS, 404, "admin_not_found"),
        ("GET", "/admin/webhooks/stripe/events/a/b", ADMIN_HEADERS, 404, "admin_not_found"),
        ("POST", event_url("evt_1"), ADMIN_HEADERS, 404, "admin_not_found"),
        ("GET", event_url("evt_1"), {}, 401, "admin_unauthorized"),
        ("DELETE", event_url("evt_1"), {"Authorization": "Bearer no"}, 401, "admin_unauthorized"),
    ],
)
async def test_admin_webhook_requests_out_of_bounds_are_problems(
    witness: Witness, method: str, url: str, headers: dict[str, str], status: int, code: str
) -> None:
    async with running(stripe_config(), upstream=witness) as gw:
        response = await gw.admin.request(method, url, headers=headers)

    assert response.status_code == status, response.text
    assert response.json()["code"] == code


# -- the policy file --------------------------------------------------------------------------

UPSTREAM = '[upstream]\nurl = "http://127.0.0.1:9000"\n'
ADMIN = f'\n[admin]\ntoken = "{ADMIN_TOKEN}"\n'
TABLE = (
    "\n[[webhooks.receive]]\n"
    'path = "/webhooks/stripe"\n'
    'name = "stripe"\n'
    'scheme = "stripe"\n'
    f'secrets_env = ["{SECRET_ENV}"]\n'
)  # lines 7 (the header) to 11 after UPSTREAM + ADMIN
VALID = UPSTREAM + ADMIN + TABLE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_a_webhooks_table_builds_its_endpoint_with_secrets_from_the_environment(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, VALID + "retention = 2851200\n"))

    [webhook] = config.webhooks.values()
    assert (webhook.path, webhook.store) == ("/webhooks/stripe", "default")
    endpoint = webhook.endpoint
    assert (endpoint.name, endpoint.retention, endpoint.lease) == ("stripe", 2851200, 60)
    assert isinstance(endpoint.scheme, Stripe)
    assert endpoint.scheme.secrets == (SECRET,)
    assert SECRET not in json.dumps(config.effective())


def test_an_hmac_table_configures_the_generic_scheme(tmp_path: Path) -> None:
    text = (
        UPSTREAM + ADMIN + "\n[[webhooks.receive]]\n"
        'path = "/webhooks/partner"\nname = "partner"\nscheme = "hmac"\n'
        f'secrets_env = ["{SECRET_ENV}"]\nheader = "X-Signature"\nprefix = "sha256="\n'
        'content = "{timestamp}.{body}"\ntimestamp_header = "X-Timestamp"\n'
        'id_header = "X-Delivery"\ntolerance = 60\n'
        '[webhooks.receive.ordering]\nobject_field = "data.id"\nversion_field = "data.v"\n'
    )
    endpoint = load_config(write(tmp_path, text)).webhooks["partner"].endpoint

    scheme: Any = endpoint.scheme
    assert (scheme.header, scheme.prefix, scheme.tolerance) == ("X-Signature", "sha256=", 60)
    assert (scheme.algorithm, scheme.encoding, scheme.id_header) == ("sha256", "hex", "X-Delivery")
    assert endpoint.ordering is not None
    assert (endpoint.ordering.object_field, endpoint.ordering.lease) == ("data.id", 30)


BAD_TABLES = [
    pytest.param(
        VALID.replace('"stripe"\nsecrets', '"paypal"\nsecrets'),
        10, "webhooks.receive[0].scheme",
        "expected 'standard_webhooks', 'stripe', 'github' or 'hmac', got 'paypal'",
        id="unknown-scheme",
    ),
    pytest.param(
        VALID.replace(SECRET_ENV, "SUREFOOT_TEST_UNSET"),
        11, "webhooks.receive[0].secrets_env[0]",
        "the environment variable 'SUREFOOT_TEST_UNSET' is not set",
        id="secret-unset",
    ),
    pytest.param(
        VALID.replace(f'["{SECRET_ENV}"]', f'["{SECRET_ENV}", "SUREFOOT_TEST_EMPTY"]'),
        11, "webhooks.receive[0].secrets_env[1]",
        "the environment variable 'SUREFOOT_TEST_EMPTY' is empty",
        id="secret-empty",
    ),
    pytest.param(
        VALID.replace(f'["{SECRET_ENV}"]', '["whsec_pasted_by_mistake"]'),
        11, "webhooks.receive[0].secrets_env",
        "expected names of environment variables, got what looks like a secret (hidden)",
        id="secret-pasted",
    ),
    pytest.param(
        VALID.replace(f'["{SECRET_ENV}"]', "[]"),
        11, "webhooks.receive[0].secrets_env", "expected 1 to 16 names of environment variables",
        id="no-secret",
    ),
    pytest.param(
        VALID.replace('"stripe"\nsecrets', '"standard_webhooks"\nsecrets'),
        11, "webhooks.receive[0].secrets_env[0]",
        f"the value of '{SECRET_ENV}': expected whsec_ or whpk_ followed by base64",
        id="secret-refused-by-the-scheme",
    ),
    pytest.param(
        VALID.replace('"/webhooks/stripe"', '"/webhooks//stripe"'),
        8, "webhooks.receive[0].path",
        "expected an exact path in canonical form (no template, no '//', '.' or '..' "
        "segment), such as '/webhooks/stripe', got '/webhooks//stripe' (it is '/webhooks/stripe')",
        id="path-not-canonical",
    ),
    pytest.param(
        VALID.replace('"/webhooks/stripe"', '"/webhooks/{name}"'),
        8, "webhooks.receive[0].path", "expected an exact path in canonical form",
        id="path-template",
    ),
    pytest.param(
        VALID + TABLE.replace('"stripe"\nscheme', '"stripe2"\nscheme'),
        14, "webhooks.receive[1].path", "'/webhooks/stripe' is received by an earlier table",
        id="path-twice",
    ),
    pytest.param(
        VALID + TABLE.replace("/webhooks/stripe", "/webhooks/other"),
        15, "webhooks.receive[1].name", "'stripe' is used by an earlier table",
        id="name-twice",
    ),
    pytest.param(
        VALID.replace('name = "stripe"', 'name = "Stripe Events"'),
        9, "webhooks.receive[0].name", "expected 1 to 64 of a-z, 0-9, '_', '.', '-'",
        id="bad-name",
    ),
    pytest.param(
        VALID + "retention = 30\n",
        12, "webhooks.receive[0].retention",
        "expected seconds from 60 to 7776000 (90 days), got 30",
        id="retention-too-short",
    ),
    pytest.param(
        VALID + "lease = 700000\n",
        12, "webhooks.receive[0].lease", "expected seconds above 0 and below the retention",
        id="lease-beyond-retention",
    ),
    pytest.param(
        VALID + "tolerance = -5\n",
        12, "webhooks.receive[0].tolerance", "expected seconds > 0 of clock difference",
        id="negative-tolerance",
    ),
    pytest.param(
        VALID.replace('"stripe"\nsecrets', '"github"\nsecrets') + "tolerance = 60\n",
        12, "webhooks.receive[0].tolerance", "GitHub signs no timestamp",
        id="tolerance-without-timestamp",
    ),
    pytest.param(
        VALID + 'header = "X-Signature"\n',
        12, "webhooks.receive[0].header", "only with scheme = \"hmac\", not 'stripe'",
        id="hmac-field-elsewhere",
    ),
    pytest.param(
        VALID.replace('"stripe"\nsecrets', '"hmac"\nsecrets') + 'event_id_header = "X-Id"\n',
        7, "webhooks.receive[0].header", "required with scheme = \"hmac\"",
        id="hmac-without-header",
    ),
    pytest.param(
        VALID.replace('"stripe"\nsecrets', '"hmac"\nsecrets') + 'header = "X-Sig"\n',
        7, "webhooks.receive[0]", "expected id_header, event_id_header or event_id_field",
        id="hmac-without-event-id",
    ),
    pytest.param(
        VALID.replace('"stripe"\nsecrets', '"hmac"\nsecrets')
        + 'header = "X-Sig"\nid_header = "X-Id"\ncontent = "{timestamp}.{body}"\n',
        14, "webhooks.receive[0].content", "{timestamp} only with timestamp_header set",
        id="hmac-bad-template",
    ),
    pytest.param(
        VALID + 'event_id_header = "X-Id"\nevent_id_field = "data.id"\n',
        13, "webhooks.receive[0].event_id_field",
        "expected event_id_header or event_id_field, not both",
        id="event-id-twice",
    ),
    pytest.param(
        VALID + 'event_id_field = "data..id"\n',
        12, "webhooks.receive[0].event_id_field", "expected a dotted JSON field path",
        id="bad-event-id-field",
    ),
    pytest.param(
        VALID + 'ordering = { object_field = "data.id", version_field = "v", lease = 0 }\n',
        12, "webhooks.receive[0].ordering.lease",
        "expected seconds above 0 and at most 3600, got 0",
        id="bad-ordering-lease",
    ),
    pytest.param(
        VALID + 'store = "shared"\n',
        12, "webhooks.receive[0].store", "expected a name from [stores] (default), got 'shared'",
        id="unknown-store",
    ),
    pytest.param(
        VALID + "max_bodyy = 10\n",
        12, "webhooks.receive[0].max_bodyy", "unknown field (did you mean 'max_body'?)",
        id="unknown-field",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "field", "expected"), BAD_TABLES)
def test_a_bad_webhooks_table_is_refused_with_its_line_field_and_what_was_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, line: int, field: str, expected: str
) -> None:
    monkeypatch.setenv("SUREFOOT_TEST_EMPTY", "")
    monkeypatch.delenv("SUREFOOT_TEST_UNSET", raising=False)
    path = write(tmp_path, text)

    with pytest.raises(ConfigurationError) as raised:
        load_config(path)

    message = str(raised.value)
    assert f"{path}:{line}: {field}: " in message
    assert expected in message
    assert SECRET not in message
    assert "pasted_by_mistake" not in message


def test_the_example_policy_files_webhooks_table_loads_once_uncommented(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # It is commented out so that the demo serves without a Stripe secret in its environment.
    text = (ROOT / "examples" / "gateway.toml").read_text()
    block = re.search(r"^# \[\[webhooks\.receive\]\]\n(?:#.*\n)+", text, re.M)
    assert block is not None
    uncommented = re.sub(r"^# ?", "", block.group(0), flags=re.M)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_from_the_environment")

    config = load_config(write(tmp_path, text.replace(block.group(0), uncommented)))

    [webhook] = config.webhooks.values()
    assert webhook.endpoint.retention >= (webhook.endpoint.scheme.horizon or 0)


@pytest.mark.parametrize(("retention", "warned"), [(None, True), (3600, True), (2851200, False)])
async def test_check_config_warns_of_a_retention_shorter_than_the_senders_horizon(
    tmp_path: Path, retention: int | None, warned: bool
) -> None:
    extra = "" if retention is None else f"retention = {retention}\n"
    store = f'\n[stores]\ndefault = "sqlite:///{tmp_path}/gw.db"\n'
    config = load_config(write(tmp_path, VALID + extra + store))

    found = await check_start(config)

    days = {None: "7", 3600: "0.0417"}.get(retention)
    expected = (
        f"webhooks.receive[0] (stripe): retention = {retention or 604800} s ({days} days) is "
        "shorter than the 2851200 s (33 days) over which a stripe sender may deliver an event "
        "again (retries and manual resends): such a late delivery would run its event a second "
        "time; set retention = 2851200 or more"
    )
    assert found.warnings == ((expected,) if warned else ())
    assert found.errors == ()


# -- surefoot webhooks ------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A policy file on an SQLite store in which the gateway received ``evt_1`` (201)."""
    store = f'\n[stores]\ndefault = "sqlite:///{tmp_path}/gw.db"\n'
    path = write(tmp_path, VALID.replace("/webhooks/stripe", PATH) + store)

    async def receive_one() -> None:
        witness = Witness(create_app(str(tmp_path / "ledger.db")))
        transport = httpx.ASGITransport(app=witness, raise_app_exceptions=False)
        gateway = Gateway(load_config(path), transport=transport)
        try:
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway), base_url="http://gateway.test"
            )
            async with client:
                body = event("evt_1")
                response = await client.post(PATH, content=body, headers=signed(body, time.time()))
                assert response.status_code == 201
        finally:
            await gateway.aclose()

    asyncio.run(receive_one())
    return path


def test_surefoot_webhooks_inspects_and_forgets_an_event_in_the_configured_store(
    served: Path,
) -> None:
    runner = CliRunner()
    config = ["--config", str(served)]

    shown = runner.invoke(main, ["webhooks", "inspect", *config, "stripe", "evt_1", "--json"])
    table = runner.invoke(main, ["webhooks", "inspect", *config, "stripe", "evt_1"])
    forgot = runner.invoke(main, ["webhooks", "forget", *config, "stripe", "evt_1"])
    absent = runner.invoke(main, ["webhooks", "inspect", *config, "stripe", "evt_1", "--json"])
    again = runner.invoke(main, ["webhooks", "forget", *config, "stripe", "evt_1"])

    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.output)
    assert (record["endpoint"], record["event_id"]) == ("stripe", "evt_1")
    assert (record["state"], record["status"]) == ("completed", 201)
    assert record["store_key"] == webhook_store_key("stripe", "evt_1")
    assert table.exit_code == 0
    assert re.search(r"stripe\s+│\s+evt_1\s+│\s+completed\s+│\s+201", table.output), table.output
    assert forgot.exit_code == 0, forgot.output
    assert forgot.output == (
        "forgot event evt_1 of stripe (it was completed, status 201): "
        "the sender's next delivery runs it again\n"
    )
    assert (absent.exit_code, json.loads(absent.output)["state"]) == (0, "absent")
    assert again.exit_code == 1
    assert "no live record of event evt_1 at stripe" in again.output


@pytest.mark.parametrize(
    ("arguments", "exit_code", "expected"),
    [
        (["github", "evt_1"], 2, "expected the name of a [[webhooks.receive]] table"),
        (["stripe", "e" * 256], 2, "expected 1 to 255 printable ASCII characters"),
        (["stripe", "evt é"], 2, "EVENT_ID"),
    ],
)
def test_surefoot_webhooks_refuses_what_names_no_event(
    served: Path, arguments: list[str], exit_code: int, expected: str
) -> None:
    for command in ("inspect", "forget"):
        result = CliRunner().invoke(
            main, ["webhooks", command, "--config", str(served), *arguments]
        )
        assert result.exit_code == exit_code, result.output
        assert expected in result.output


def test_surefoot_webhooks_reports_an_invalid_policy_file_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUREFOOT_TEST_UNSET", raising=False)
    path = write(tmp_path, VALID.replace(SECRET_ENV, "SUREFOOT_TEST_UNSET"))

    result = CliRunner().invoke(
        main, ["webhooks", "inspect", "--config", str(path), "stripe", "evt_1"]
    )

    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path}:11: webhooks.receive[0].secrets_env[0]: the environment variable "
        "'SUREFOOT_TEST_UNSET' is not set\n"
    )


# -- replaying an archived event ----------------------------------------------------------


def replay_url(event_id: str, name: str = "stripe") -> str:
    return event_url(event_id, name) + "/replay"


async def test_the_admin_api_replays_an_archived_event_and_the_legacy_api_books_it_again(
    witness: Witness, clock: ManualClock
) -> None:
    async with running(stripe_config(archive=True), upstream=witness, clock=clock) as gw:
        first = await deliver(gw, event("evt_1"), T0)
        clock.advance(3600)  # the signature's timestamp is long past its tolerance
        replayed = await gw.admin.post(replay_url("evt_1"), headers=ADMIN_HEADERS)
        redelivered = await deliver(gw, event("evt_1"), clock.now())  # the sender's retry
        shown = await gw.admin.get(event_url("evt_1"), headers=ADMIN_HEADERS)
        counts = await audit(gw)
        metrics = (await gw.admin.get("/metrics", headers=ADMIN_HEADERS)).text

    assert first.status_code == 201
    answer = replayed.json()
    assert (replayed.status_code, answer["result"], answer["status"]) == (200, "replayed", 201)
    assert (answer["endpoint"], answer["event_id"], answer["body_encoding"]) == (
        "stripe",
        "evt_1",
        "utf-8",
    )
    assert json.loads(answer["body"])["reference"] == "evt_1"
    assert ["content-type", "application/json"] in answer["headers"]
    original, again = witness.deliveries
    assert again.body == original.body == event("evt_1")
    assert again.header("surefoot-webhook-replay") == ["true"]
    assert original.header("surefoot-webhook-replay") == []
    assert again.header("stripe-signature") == original.header("stripe-signature")
    # Replay means run it again: the legacy API books the charge a second time.
    assert counts == {"charges": 2, "references": 1, "duplicated_references": ["evt_1"]}
    assert redelivered.headers["idempotent-replayed"] == "true"  # and once more is not run
    assert len(witness.deliveries) == 2
    assert (shown.json()["state"], shown.json()["status"]) == ("completed", 201)
    assert 'surefoot_webhooks_received_total{endpoint="stripe",outcome="replayed"} 1.0' in metrics


async def test_the_admin_api_replays_nothing_it_does_not_hold_nor_an_event_being_processed(
    witness: Witness, clock: ManualClock
) -> None:
    async with running(stripe_config(archive=True), upstream=witness, clock=clock) as gw:
        unknown = await gw.admin.post(replay_url("evt_none"), headers=ADMIN_HEADERS)
        store = gw.gateway.stack.webhook_stores["stripe"]
        await deliver(gw, event("evt_2"), T0)
        # A delivery of it running now (its lease not run out):
        begun = Begin(fingerprint="f", token="t", lease=60, ttl=600, on_lease_expiry="reexecute")
        await store.forget(webhook_store_key("stripe", "evt_2"), clock.now())
        await store.begin(webhook_store_key("stripe", "evt_2"), begun, clock.now())
        in_flight = await gw.admin.post(replay_url("evt_2"), headers=ADMIN_HEADERS)
        counts = await audit(gw)
    async with running(stripe_config(), upstream=witness, clock=clock) as gw:
        await deliver(gw, event("evt_3"), T0)
        not_kept = await gw.admin.post(replay_url("evt_3"), headers=ADMIN_HEADERS)

    assert "archived delivery" in problem(unknown, 404, "admin_not_found")["detail"]
    assert "being processed" in problem(in_flight, 400, "admin_bad_request")["detail"]
    assert counts["charges"] == 1
    problem(not_kept, 404, "admin_not_found")


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code"),
    [
        ("POST", replay_url("evt_1", name="nope"), b"", 404, "admin_not_found"),
        ("GET", replay_url("evt_1"), b"", 404, "admin_not_found"),
        ("DELETE", replay_url("evt_1"), b"", 404, "admin_not_found"),
        ("POST", event_url("evt_1") + "/again", b"", 404, "admin_not_found"),
        ("POST", replay_url("e" * 256), b"", 400, "admin_bad_request"),
        ("POST", replay_url("evt_1"), b'{"force": true}', 400, "admin_bad_request"),
    ],
)
async def test_admin_replay_requests_out_of_bounds_are_problems(
    witness: Witness, method: str, url: str, body: bytes, status: int, code: str
) -> None:
    async with running(stripe_config(archive=True), upstream=witness) as gw:
        response = await gw.admin.request(method, url, content=body, headers=ADMIN_HEADERS)
        unauthorized = await gw.admin.post(replay_url("evt_1"))

    problem(response, status, code)
    problem(unauthorized, 401, "admin_unauthorized")
    assert witness.deliveries == []


@pytest.mark.parametrize(
    ("text", "line", "field", "expected"),
    [
        pytest.param(
            VALID + "archive = true\n" + '\n[stores]\ndefault = "postgresql://db.test/app"\n',
            12, "webhooks.receive[0].archive",
            "store 'default' is PostgreSQL, which does not archive webhook events yet",
            id="archive-on-postgres",
        ),
        pytest.param(
            VALID + 'archive = "yes"\n', 12, "webhooks.receive[0].archive", "true or false",
            id="archive-not-a-bool",
        ),
    ],
)  # fmt: skip
def test_an_archive_the_store_cannot_keep_is_refused_with_its_line(
    tmp_path: Path, text: str, line: int, field: str, expected: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigurationError) as raised:
        load_config(path)

    assert f"{path}:{line}: {field}: " in str(raised.value)
    assert expected in str(raised.value)


def test_archive_is_off_unless_the_table_turns_it_on(tmp_path: Path) -> None:
    assert not load_config(write(tmp_path, VALID)).webhooks["stripe"].endpoint.archive
    archived = load_config(write(tmp_path, VALID + "archive = true\n"))
    assert archived.webhooks["stripe"].endpoint.archive
