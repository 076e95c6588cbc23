"""The dashboard in real Chromium (Debian package ``chromium``, driven by Playwright with
the system browser): ``surefoot serve`` on SQLite with three workers, in front of a small
upstream, under generated load (requests, 429s from a tight policy, replays and reused
keys, outcomes left unknown by the upstream's 500s, requests shed at the concurrency
limit); the page, given the admin token, fills every panel; the built-in alerting fires
``SurefootOutcomesUnknown`` (``unknown_for = 0``, evaluated every second), and a silence
made in the page shows the alert as silenced and is listed by ``GET /admin/silences``;
expiring it in the page ends it.

The charge route has a lookup the upstream cannot answer (503): the reconciler, which
runs only for routes with a lookup, counts the unknown keys
(``surefoot_idempotency_unknown_keys``) and cannot settle them.

Nothing in the page may log a console error, throw, or ask anything of another server
than the admin API. A screenshot of each panel goes to ``$SUREFOOT_ARTIFACTS`` (default:
the test's temporary folder), with ``dashboard.png``, the first screen at 1366x768;
``scripts/dashboard_screenshot.py`` runs the same gateway and traffic for longer and
writes ``docs/images/dashboard.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    GatewayProcess,
    settled,
    surefoot_serve,
    toml_config,
)

from _support import http_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1366, "height": 768}
#: Panels drawn from /admin/series, each expected to have data under the load.
CHARTS = (
    "requests",
    "refusals",
    "replays",
    "unknown",
    "breakers",
    "store-latency",
    "store-errors",
    "shed",
)
#: Panels of features the file does not configure: hidden.
HIDDEN = ("webhooks", "sagas")
PANELS = ("alerts", *CHARTS, "top", "top-keys", "silences")
ALERT = "SurefootOutcomesUnknown"
#: What a legend shows for a series without a value.
NO_VALUE = "\N{EN DASH}"
#: The tight policy's limit on POST /orders, and what the refused client sends.
TIGHT = 4
REFUSED_SENDS = 20
#: Slow requests at once: far more than the three workers' concurrency limits together.
SLOW = 40

BODY = f"""
[upstream.breaker]
minimum_calls = 1000

[upstream.concurrency]
limit = 4

[[clients]]
name = "alpha"
api_key = "sk_alpha"

[[clients]]
name = "bravo"
api_key = "sk_bravo"

[[clients]]
name = "carol"
api_key = "sk_carol"

[idempotency]
methods = ["POST"]
reconcile_interval = 1

[[rate_limit.policies]]
name = "tight"
limits = ["{TIGHT}/minute"]
routes = ["POST /orders"]

[[rate_limit.policies]]
name = "standard"
limits = ["100000/minute"]

[[routes]]
match = "POST /charges"
[routes.idempotency]
on_server_error = "unknown"
[routes.idempotency.lookup]
path = "/lookup/{{key}}"

[alerts]
window = 60
baseline = 3600
hold = 0
unknown_for = 0
evaluate_every = 1
runbook_base = "https://example.test/observability"

[top]
flush_every = 1
"""


class _Upstream(BaseHTTPRequestHandler):
    """``POST /charges`` answers 500 and the lookup of a charge 503 (its outcome stays
    unknown, counted by the reconciler), ``GET /slow`` takes a while (requests beyond the
    concurrency limit are shed), anything else 200 or 201."""

    protocol_version = "HTTP/1.1"

    def _answer(self, status: int) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"path": self.path}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        self._answer(503 if self.path.startswith("/lookup/") else 200)

    def do_POST(self) -> None:
        self._answer(500 if self.path.startswith("/charges") else 201)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def running_upstream() -> contextlib.AbstractContextManager[str]:
    """The upstream on a free port of 127.0.0.1, in a thread: its URL."""
    return http_server(_Upstream)


def serve(tmp: Path, upstream: str) -> GatewayProcess:
    """``surefoot serve`` with three workers on SQLite in ``tmp`` (not yet ready)."""
    config = toml_config(upstream, f"sqlite:///{tmp}/store.db", BODY)
    return surefoot_serve(tmp, config, "--workers", "3")


def open_dashboard(page: Page, admin: str) -> None:
    """Load the page at 1366x768 and give it the admin token."""
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{admin}/admin/dashboard")
    page.fill("#token-input", ADMIN_TOKEN)
    page.click("#login-form button[type=submit]")


def wait_for_charts(page: Page) -> None:
    """Until every chart of ``CHARTS`` has points."""
    for name in CHARTS:
        page.wait_for_selector(f"#panel-{name}[data-points]:not([data-points='0'])")


@pytest.fixture
def upstream() -> Iterator[str]:
    with running_upstream() as url:
        yield url


def _chromium() -> str:
    """The system's Chromium: skipped when it (or Playwright) is missing, a failure
    instead when ``SUREFOOT_REQUIRE_SERVICES=1`` (as in CI)."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install playwright; no browser download)"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is not installed (Debian package chromium)"
    if missing is not None:
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return CHROMIUM


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where the screenshots go: ``$SUREFOOT_ARTIFACTS`` (CI keeps it), else a folder of
    the test's own."""
    folder = Path(os.environ.get("SUREFOOT_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Load:
    """Traffic through the gateway: a steady trickle in a thread (so that every chart has
    lines, not points), and the bursts the panels and the alert are about."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=10)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.sent = 0

    def post(self, path: str, client: str, key: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"x-api-key": f"sk_{client}", "idempotency-key": key}
        return self.client.post(path, json=body, headers=headers)

    def _trickle(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.wait(0.1):
                client.get(f"/items/{self.sent % 7}", headers={"x-api-key": "sk_bravo"})
                client.get("/missing/404", headers={"x-api-key": "sk_bravo"})
                self.sent += 1

    def bursts(self) -> None:
        """One round of each kind of traffic the panels show."""
        run = time.monotonic_ns()
        # 429s: alpha sends far more than the tight policy allows; bravo stays under it.
        statuses = [
            self.post("/orders", "alpha", f"a-{run}-{n}", {"n": n}).status_code
            for n in range(REFUSED_SENDS)
        ]
        assert statuses.count(429) >= REFUSED_SENDS - TIGHT, statuses
        admitted = self.post("/orders", "bravo", f"b-{run}", {"n": 0})
        assert admitted.status_code == 201, admitted.text
        # Replays (the same key and body again) and reused keys (another body).
        key = f"dup-{run}"
        assert self.post("/payments", "carol", key, {"amount": 1}).status_code == 201
        for _ in range(6):
            replay = settled(lambda: self.post("/payments", "carol", key, {"amount": 1}))
            assert replay.headers.get("idempotent-replayed") == "true", replay.text
        for amount in range(2, 5):
            assert self.post("/payments", "carol", key, {"amount": amount}).status_code == 422
        # Outcomes left unknown: the upstream answers 500 to a charge.
        for n in range(3):
            self.post("/charges", "carol", f"charge-{run}-{n}", {"n": n})
        # More requests at once than the upstream's concurrency limit: some are shed.
        with ThreadPoolExecutor(SLOW) as pool:
            slow = list(pool.map(lambda n: self.client.get(f"/slow/{n}"), range(SLOW)))
        assert 503 in [r.status_code for r in slow]

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)
        self.client.close()


def _silences(admin: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{admin}/admin/silences", headers=ADMIN_HEADERS, timeout=5)
    assert response.status_code == 200, response.text
    silences: list[dict[str, Any]] = response.json()["silences"]
    return silences


def test_the_dashboard_shows_the_gateway_under_load(
    tmp_path: Path, upstream: str, artifacts: Path
) -> None:
    from playwright.sync_api import ConsoleMessage, Request, Response, sync_playwright

    chromium = _chromium()
    gateway = serve(tmp_path, upstream)
    problems: list[str] = []
    elsewhere: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning", "assert"):
            problems.append(f"console {message.type}: {message.text}")

    def request(sent: Request) -> None:
        if not sent.url.startswith(f"{gateway.admin}/admin/") and sent.url != "data:,":
            elsewhere.append(sent.url)

    def response(received: Response) -> None:
        if received.status >= 400:
            problems.append(f"HTTP {received.status}: {received.url}")

    try:
        gateway.wait_ready()
        with Load(gateway.url) as load, sync_playwright() as playwright:
            load.bursts()
            browser = playwright.chromium.launch(executable_path=chromium)
            try:
                page = browser.new_page()
                page.on("console", console)
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.on("requestfailed", lambda failed: problems.append(f"failed: {failed.url}"))
                page.on("request", request)
                page.on("response", response)
                open_dashboard(page, gateway.admin)
                _check_panels(page, load)
                _check_silence(page, gateway.admin, artifacts)
            finally:
                browser.close()
    finally:
        gateway.server.stop()

    assert problems == []
    assert elsewhere == []


def _check_panels(page: Page, load: Load) -> None:
    """Every chart drawn with values in its legend, the top offenders listed, the alert
    shown; absent features' panels hidden."""
    wait_for_charts(page)
    for name in CHARTS:
        panel = page.locator(f"#panel-{name}")
        assert panel.locator("canvas").count() >= 1
        values = panel.locator(".legend .value").all_text_contents()
        assert values, name
        assert NO_VALUE not in values, (name, values)
        assert all(values), (name, values)
    for name in HIDDEN:
        assert page.locator(f"#panel-{name}").is_hidden()
    assert "tight" in page.locator("#panel-refusals .legend .name").all_text_contents()
    # The age comes from a second request (/admin/unknown), after the charts are drawn.
    page.locator("#unknown-oldest", has_text="Oldest now: ").wait_for()
    assert page.text_content("#unknown-oldest").startswith("Oldest now: ")

    # Top offenders: the refused client under the tight policy, the admitted one, the
    # keys reused with another body and the clients with unknown outcomes.
    load.bursts()  # a second round, after the page's first read
    tight = page.locator("#panel-top .top-block[data-list='refused']", has_text="tight")
    tight.locator(".bar-label", has_text="alpha").wait_for()
    assert "bravo" not in tight.locator(".bar-label").all_text_contents()
    page.select_option("#top-list", "admitted")
    admitted = page.locator("#panel-top .top-block[data-list='admitted']", has_text="tight")
    admitted.locator(".bar-label", has_text="bravo").wait_for()
    page.select_option("#top-list", "refused")
    tight.locator(".bar-label", has_text="alpha").wait_for()
    keys = page.locator("#panel-top-keys")
    keys.locator("[data-list='reused'] .bar-label", has_text="carol").first.wait_for()
    keys.locator("[data-list='unknown'] .bar-label", has_text="carol").wait_for()

    row = page.locator(f"#panel-alerts tr[data-alertname='{ALERT}']")
    row.wait_for()
    assert row.get_attribute("data-silenced") == "false"
    row.locator(".state-firing").wait_for()


def _check_silence(page: Page, admin: str, artifacts: Path) -> None:
    """Screenshots, then a silence made in the page mutes the alert; expired, it ends."""
    page.screenshot(path=str(artifacts / "dashboard.png"))
    for name in PANELS:
        page.locator(f"#panel-{name}").screenshot(path=str(artifacts / f"{name}.png"))

    row = page.locator(f"#panel-alerts tr[data-alertname='{ALERT}']")
    row.locator("button.silence").click()
    dialog = page.locator("#silence-dialog")
    assert dialog.is_visible()
    assert dialog.locator(".matcher .name").nth(0).input_value() == "alertname"
    assert dialog.locator(".matcher .value").nth(0).input_value() == ALERT
    page.fill("#silence-comment", "settling the charges by hand")
    page.fill("#silence-author", "dashboard-test")
    dialog.locator("button[type=submit]").click()
    silenced = f"#panel-alerts tr[data-alertname='{ALERT}'][data-silenced='true']"
    page.wait_for_selector(silenced)
    assert dialog.is_hidden()
    (silence,) = [s for s in _silences(admin) if s["active"]]
    assert silence["comment"] == "settling the charges by hand"
    assert silence["created_by"] == "dashboard-test"
    assert {"name": "alertname", "op": "=", "value": ALERT} in silence["matchers"]
    assert page.get_attribute(f"{silenced} .silenced-by", "title") == silence["id"]
    listed = page.locator(f"#panel-silences tr[data-id='{silence['id']}']")
    listed.wait_for()
    page.locator("#panel-alerts").screenshot(path=str(artifacts / "alerts-silenced.png"))

    # Expired from the page: listed as expired, the alert no longer muted.
    listed.locator("button.expire").click()
    page.wait_for_selector(f"#panel-silences tr[data-id='{silence['id']}'][data-state='expired']")
    page.wait_for_selector(f"#panel-alerts tr[data-alertname='{ALERT}'][data-silenced='false']")
    assert not [s for s in _silences(admin) if s["active"]]
