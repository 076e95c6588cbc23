"""examples/django_shop: its session script runs for real (gunicorn, 4 workers, curl) and
shows what docs/django.md says it shows."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def test_the_session_replays_refuses_and_throttles() -> None:
    if shutil.which("curl") is None:  # pragma: no cover
        pytest.fail("curl is needed by examples/django_shop/session.sh")
    result = subprocess.run(
        ["bash", str(ROOT / "examples/django_shop/session.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    charges = [line for line in out.splitlines() if line.startswith('{"id": "ch_')]
    assert len(charges) == 2
    assert charges[0] == charges[1]  # the retry: the first charge's bytes
    assert "idempotent-replayed: true" in out
    assert '"code":"idempotency_key_reused"' in out
    assert '"code":"idempotency_key_missing"' in out
    assert "HTTP/1.1 429 Too Many Requests" in out
    retry_after = next(
        line.split(": ")[1] for line in out.splitlines() if line.startswith("Retry-After: ")
    )
    assert f'ratelimit: "drf.ProductsThrottle";r=0;t={retry_after}' in out
    assert "completed" in out
