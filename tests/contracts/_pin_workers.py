"""The worker process of ``test_pins.py``'s race (kept apart: a spawned worker imports only
what it runs, no pytest)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from _support import T0
from surefoot.contracts import VersionPins
from surefoot.storage import store_from_url

CLIENTS = [f"client:new-{n:02d}" for n in range(20)]
GUARD = 30.0  # seconds a wait may last before the test fails instead of hanging


def candidate(worker: int) -> str:
    """The version worker ``worker`` would pin its new clients to."""
    return f"2024-0{worker + 1}-01"


def pinner(url: str, barrier: Any, worker: int, out: Path) -> None:
    """Pin every one of ``CLIENTS`` to this worker's candidate at once, together with the
    other workers; write what each call returned, ``[pin, made]`` per client."""

    async def main() -> list[tuple[str | None, bool]]:
        store: Any = store_from_url(url)
        try:
            pins = VersionPins(store)
            barrier.wait(GUARD)
            return list(
                await asyncio.gather(*(pins.pin(c, candidate(worker), T0) for c in CLIENTS))
            )
        finally:
            await store.aclose()

    out.write_text(json.dumps(asyncio.run(main())))
