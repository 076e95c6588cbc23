"""The webhooks example: the session of docs/webhooks.md against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.webhooks.app import create_app

from _support import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "STRIPE_WEBHOOK_SECRET": "whsec_5f3d0c8b2a9e41d7",
    "GITHUB_WEBHOOK_SECRET": "It's a Secret to Everybody",
    "PARTNER_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


@pytest.mark.slow
def test_the_session_of_the_docs(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        **SECRETS,
        "WEBHOOKS_LEDGER": str(tmp_path / "ledger.db"),
        "SUREFOOT_STORE": f"sqlite:///{tmp_path / 'store.db'}",
    }
    serve = [sys.executable, "-m", "uvicorn", "--factory", "examples.webhooks.app:create_app"]
    server = subprocess.Popen(
        [*serve, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def send(*args: str) -> str:
        command = [sys.executable, "-m", "examples.webhooks.send", *args, "--url", url]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    try:
        with httpx.Client(base_url=url, timeout=5) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http.get("/handled").status_code == 200:
                        break
                except httpx.TransportError:
                    pass  # not listening yet
                assert server.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
            said = [
                send("stripe", "evt_1", "charge.succeeded"),
                send("stripe", "evt_1", "charge.succeeded"),
                send("stripe", "evt_2", "charge.succeeded", "--tamper"),
                send("github", "72d3162e"),
                send("github", "72d3162e"),
                send("partner", "msg_2", "--version", "2"),
                send("partner", "msg_1", "--version", "1"),
            ]
            handled: list[dict[str, Any]] = http.get("/handled").json()
    finally:
        server.terminate()
        server.wait(30)

    assert said[0] == '200 {"handled":"evt_1"}'
    assert said[1] == '200 (replayed) {"handled":"evt_1"}'
    assert said[2].startswith("401 ")
    assert "webhook_signature_mismatch" in said[2]
    assert said[3:5] == ['200 {"handled":"72d3162e"}', '200 (replayed) {"handled":"72d3162e"}']
    assert said[6] == '200 {"status":"stale","event_id":"msg_1","newest":2.0}'
    assert [(h["sender"], h["event_id"]) for h in handled] == [
        ("stripe", "evt_1"),
        ("github", "72d3162e"),
        ("partner", "msg_2"),
    ]


def test_a_missing_secret_stops_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    with pytest.raises(SystemExit, match="STRIPE_WEBHOOK_SECRET"):
        create_app()
