"""The example app's ``/docs`` in real Chromium (Debian package ``chromium``, driven by
Playwright with the system browser): served by uvicorn on a free port, Swagger UI shows
the key parameter, the problem responses and the rate-limit headers that
``surefoot.openapi`` added, with every ``$ref`` resolved.

FastAPI's ``/docs`` loads Swagger UI from a CDN; here the same page
(``get_swagger_ui_html``) loads the copy of Swagger UI 5 that ``fastapi-offline`` ships,
so the test needs no network. Every operation is expanded (``docExpansion: full``).
A screenshot goes to ``$SUREFOOT_ARTIFACTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvicorn
from examples.openapi.app import create_app
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from _support import GUARD, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
PROBLEMS = ["400", "409", "413", "422", "429", "503"]


def _chromium() -> str:
    """The system's Chromium: skipped when it (or Playwright, or the offline Swagger UI) is
    missing, a failure instead when ``SUREFOOT_REQUIRE_SERVICES=1`` (as in CI)."""
    missing = None
    try:
        import fastapi_offline  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        missing = f"{exc.name} is not installed (pip install playwright fastapi-offline)"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is not installed (Debian package chromium)"
    if missing is not None:
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return CHROMIUM


@pytest.fixture
def served() -> Iterator[str]:
    """The example app, with an offline ``/offline-docs``, on uvicorn: its base URL."""
    import fastapi_offline

    app = create_app()
    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/offline-docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Payments",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.png",
            swagger_ui_parameters={"docExpansion": "full"},
        )

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + GUARD
    while not server.started:  # waits for a condition, with a deadline
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(GUARD)


def _operation(page: Page, operation_id: str) -> Locator:
    return page.locator(f"#operations-default-{operation_id}")


def _codes(operation: Locator) -> list[str]:
    rows = operation.locator("tr.response[data-code]")
    return [rows.nth(i).get_attribute("data-code") or "" for i in range(rows.count())]


def test_swagger_ui_shows_what_the_middlewares_add(served: str, tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 2400})
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda failed: problems.append(f"failed: {failed.url}"))
            page.on(
                "console",
                lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
            )
            page.goto(f"{served}/offline-docs")
            charge = _operation(page, "create_charge_charges_post")
            charge.locator("tr.response[data-code='429']").wait_for(timeout=GUARD * 1000)

            assert _codes(charge) == ["201", *PROBLEMS]
            key = charge.locator("tr[data-param-name='Idempotency-Key'][data-param-in='header']")
            assert key.count() == 1
            assert key.locator(".parameter__name.required").count() == 1
            too_many = charge.locator("tr.response[data-code='429']").inner_text()
            assert "Rate limit exceeded (rate_limit_exceeded)" in too_many
            for header in ("Retry-After", "RateLimit", "RateLimit-Policy", "X-Request-Id"):
                assert header in too_many
            assert (
                "Idempotent-Replayed" in charge.locator("tr.response[data-code='201']").inner_text()
            )

            refund = _operation(page, "refund_charges__charge_id__refunds_post")
            conflict = refund.locator("tr.response[data-code='409']").inner_text()
            assert "The charge is already refunded." in conflict  # the app's own, kept

            health = _operation(page, "health_health_get")
            assert _codes(health) == ["200"]
            assert "Idempotency-Key" not in health.inner_text()
            assert "RateLimit" not in health.inner_text()

            # Swagger UI lists the references it could not resolve here.
            assert page.locator(".errors-wrapper").count() == 0
            folder = Path(os.environ.get("SUREFOOT_ARTIFACTS") or tmp_path)
            folder.mkdir(parents=True, exist_ok=True)
            charge.screenshot(path=str(folder / "swagger-ui.png"))
        finally:
            browser.close()
    assert problems == []
