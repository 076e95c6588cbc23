"""Constants and small helpers shared by the test modules (fixtures live in conftest.py).

Imported as ``from _support import T0`` (``tests/`` is on the path, as for ``_services``),
also by the worker modules that tests start in other processes.
"""

from __future__ import annotations

import socket
from typing import Any

from surefoot.events import Event

#: The tests' "now": 2023-11-14 22:13:20 UTC, 20 s into a minute, 6400 s before midnight
#: (``ManualClock``'s default start).
T0 = 1_700_000_000.0


def of(events: list[Event], cls: type[Any]) -> list[Any]:
    """The events of class ``cls``, in order."""
    return [e for e in events if isinstance(e, cls)]


def free_port() -> int:
    """A TCP port nobody listens on right now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
