#!/usr/bin/env python3
"""Write docs/images/dashboard.png: the dashboard's first screen (1366x768) in Chromium.

The run is the one of tests/gateway/test_dashboard_browser.py (its upstream, its policy
file, ``surefoot serve`` with three workers on SQLite, its traffic), kept going for
``--seconds`` (default 600) so that the charts have some history, with a round of bursts
(429s, replays, reused keys, unknown outcomes, shed requests) every ``--every`` seconds,
and a second client refused by the tight policy.
Needs what the test needs: Playwright for Python and the system's Chromium
(/usr/bin/chromium, Debian package ``chromium``).

Usage: .venv/bin/python scripts/dashboard_screenshot.py [--seconds 600] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "dashboard.png"


def scenario() -> Any:
    """The test module, whose upstream, gateway and traffic this run reuses."""
    sys.path[:0] = [str(ROOT / "tests" / "gateway"), str(ROOT / "tests")]
    return importlib.import_module("test_dashboard_browser")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="load before the shot")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between bursts")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    test = scenario()
    with tempfile.TemporaryDirectory() as tmp, test.running_upstream() as upstream:
        gateway = test.serve(Path(tmp), upstream)
        try:
            gateway.wait_ready()
            with test.Load(gateway.url) as load:
                end = time.monotonic() + args.seconds
                rounds = 0
                while True:
                    load.bursts()
                    # a second client over the tight limit, less often refused than the first
                    for n in range(8):
                        load.post("/orders", "carol", f"c-{rounds}-{n}", {"n": n})
                    rounds += 1
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    time.sleep(min(args.every, left))
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=test.CHROMIUM)
                    try:
                        page = browser.new_page()
                        test.open_dashboard(page, gateway.admin)
                        test.wait_for_charts(page)
                        page.locator("#panel-top .bars li").first.wait_for()
                        page.locator("#panel-alerts tbody tr").first.wait_for()
                        page.wait_for_timeout(1000)  # the tops and alerts drawn
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(args.out))
                    finally:
                        browser.close()
        finally:
            gateway.server.stop()
    print(f"{args.out}: {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
