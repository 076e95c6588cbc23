"""The client processes of ``test_flask_gunicorn.py`` (kept apart: a spawned process
imports only what it runs, no pytest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from _support import GUARD, write_result

CALLS = 50  # per client process


def post_charges(base: str, barrier: Any, out: Path) -> None:
    """POST one identical keyed charge ``CALLS`` times, together with the other clients;
    write each answer's status, body and ``Idempotent-Replayed``."""
    answers = []
    with httpx.Client(base_url=base, timeout=GUARD) as client:
        barrier.wait(GUARD)
        for _ in range(CALLS):
            r = client.post(
                "/charges",
                json={"amount": 500, "currency": "eur"},
                headers={"Idempotency-Key": "order-42", "X-API-Key": "sk_test_acme"},
            )
            replayed = r.headers.get("idempotent-replayed")
            code = r.json().get("code") if r.status_code >= 400 else None
            answers.append([r.status_code, r.text if r.status_code < 400 else code, replayed])
    write_result(out, answers)


def get_limited(base: str, barrier: Any, out: Path) -> None:
    """GET the limited route ``CALLS`` times with one API key; write the statuses."""
    statuses = []
    with httpx.Client(base_url=base, timeout=GUARD) as client:
        barrier.wait(GUARD)
        for _ in range(CALLS):
            r = client.get("/limited", headers={"X-API-Key": "sk_test_acme"})
            statuses.append(r.status_code)
    write_result(out, statuses)
