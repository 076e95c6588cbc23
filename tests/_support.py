"""Constants and small helpers shared by the test modules (fixtures live in conftest.py).

Imported as ``from _support import T0`` (``tests/`` is on the path, as for ``_services``),
also by the worker modules that tests start in other processes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from surefoot.errors import StoreUnavailable
from surefoot.events import Event

#: The tests' "now": 2023-11-14 22:13:20 UTC, 20 s into a minute, 6400 s before midnight
#: (``ManualClock``'s default start).
T0 = 1_700_000_000.0

#: A secret carried by store failures (``leaky_store_error``): no response may show it.
SECRET = "hunter2@10.0.0.7"


def leaky_store_error() -> StoreUnavailable:
    """A store failure as a careless driver reports it, with ``SECRET`` in its message, its
    fields and its cause (a ``ConnectionError``): ``FlakyStore(store, error=leaky_store_error)``."""
    error = StoreUnavailable(f"connect to {SECRET} refused", retry_after=1, host=SECRET)
    error.__cause__ = ConnectionError(f"connect to {SECRET} refused")
    return error


def store_error(cause: BaseException) -> Callable[[], StoreUnavailable]:
    """What a store raises when its driver fails with ``cause``: ``StoreUnavailable`` (retry
    in 1 s) from ``cause``, for ``FlakyStore(store, error=store_error(OSError("disk full")))``."""

    def error() -> StoreUnavailable:
        failure = StoreUnavailable(retry_after=1)
        failure.__cause__ = cause
        return failure

    return error


def of(events: list[Event], cls: type[Any]) -> list[Any]:
    """The events of class ``cls``, in order."""
    return [e for e in events if isinstance(e, cls)]


def free_port() -> int:
    """A TCP port nobody listens on right now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def public_event_types() -> list[type[Event]]:
    """Every event class a public package exports (for a hook's ``wants``)."""
    import importlib

    found: dict[str, type[Event]] = {}
    for package in (
        "idempotency",
        "ratelimit",
        "storage",
        "client",
        "gateway",
        "chaos",
        "webhooks",
    ):
        module = importlib.import_module(f"surefoot.{package}")
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, Event):
                found[value.__name__] = value
    return list(found.values())
