"""The worker process of ``test_quota_processes.py`` (kept apart: a spawned worker imports
only what it runs, no pytest)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from _support import T0
from surefoot.idempotency import Begin, OverQuota, Reserved, scoped_key
from surefoot.storage import store_from_url

PRINCIPAL = "cred:racer"
QUOTA = 25
GUARD = 30.0  # seconds a wait may last before the test fails instead of hanging


def racer(url: str, barrier: Any, worker: int, keys: int, out: Path) -> None:
    """Begin ``keys`` new keys of ``PRINCIPAL`` at once, together with the other workers;
    write how many were reserved and how many refused over the quota."""

    async def main() -> dict[str, int]:
        store: Any = store_from_url(url)
        try:
            request = Begin("fp", "", 30.0, 3600.0, "unknown", max_records=QUOTA)
            barrier.wait(GUARD)
            decisions = await asyncio.gather(
                *(
                    store.begin(
                        scoped_key(PRINCIPAL, f"w{worker}-k{i}"),
                        request._replace(token=uuid.uuid4().hex),
                        T0,
                    )
                    for i in range(keys)
                )
            )
        finally:
            await store.aclose()
        return {
            "reserved": sum(isinstance(d, Reserved) for d in decisions),
            "refused": sum(isinstance(d, OverQuota) for d in decisions),
        }

    out.write_text(json.dumps(asyncio.run(main())))
