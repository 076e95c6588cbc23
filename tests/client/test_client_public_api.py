"""``surefoot.client``: cores stay free of I/O; the RecordingSleep testing helper.

The public names are pinned in ``tests/test_public_api.py`` with every other package.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import surefoot.client
from surefoot.testing import ManualClock, RecordingSleep

CORE = ["_flow", "_policy", "_budget", "_retry_after", "_events", "_breaker_protocol", "_cache"]
IO = {"asyncio", "httpx", "anyio", "time", "socket", "trio"}


def test_client_core_imports_no_io_library() -> None:
    """STYLE.md: a core never imports asyncio or httpx and never reads the clock."""
    package = Path(surefoot.client.__file__).parent
    for name in CORE:
        tree = ast.parse((package / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & IO, (name, imported & IO)


def test_recording_sleep_records_and_advances_the_clock() -> None:
    clock = ManualClock(100.0)
    sleep = RecordingSleep(clock)
    sleep(1.5)
    asyncio.run(sleep.asleep(2.0))
    sleep(-1.0)  # a negative wait is recorded, and does not move time backwards
    assert sleep.calls == [1.5, 2.0, -1.0]
    assert sleep.total == 2.5
    assert clock.now() == 103.5
    assert "calls=[1.5, 2.0, -1.0]" in repr(sleep)
    sleep.clear()
    assert sleep.calls == []
    assert RecordingSleep().clock.now() == ManualClock().now()
