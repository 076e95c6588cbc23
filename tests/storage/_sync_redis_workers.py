"""The worker processes of ``test_sync_redis.py`` (kept apart: a spawned worker imports
only what it runs, no pytest)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from _support import T0
from surefoot.idempotency import Begin, Reserved
from surefoot.ratelimit import Item, Limit
from surefoot.storage.redis import SyncRedisStore

CALLS = 50  # per worker
GUARD = 30.0  # seconds a wait may last before the test fails instead of hanging
RACED_KEY = "idem:raced"
LIMIT = Limit(30, 60)  # 30 a minute
ITEM = Item("rl:{racer}:api", "sliding_window", LIMIT)


def begin_racer(url: str, barrier: Any, out: Path) -> None:
    """Begin ``RACED_KEY`` ``CALLS`` times, each with a token of its own, together with
    the other workers; write how many were reserved."""
    store = SyncRedisStore.from_url(url)
    try:
        barrier.wait(GUARD)
        decisions = [
            store.begin(RACED_KEY, Begin("fp", uuid.uuid4().hex, 30.0, 3600.0, "unknown"), T0)
            for _ in range(CALLS)
        ]
    finally:
        store.close()
    out.write_text(json.dumps({"reserved": sum(isinstance(d, Reserved) for d in decisions)}))


def acquire_racer(url: str, barrier: Any, out: Path) -> None:
    """Ask ``ITEM`` ``CALLS`` times together with the other workers; write how many
    requests were admitted."""
    store = SyncRedisStore.from_url(url)
    try:
        barrier.wait(GUARD)
        admitted = [store.acquire([ITEM], T0)[0] for _ in range(CALLS)]
    finally:
        store.close()
    out.write_text(json.dumps({"admitted": sum(admitted)}))
