"""Fault injection: make an httpx client meet resets, lost answers, duplicates, stalls and
requests that arrive out of order.

A ``FaultPlan`` (``_plan.py``: pure, seeded, reproducible) decides per request which fault
applies, from ordered ``Rule`` objects or a TOML ``[chaos]`` table
(``FaultPlan.from_toml``); ``ChaosTransport`` / ``AsyncChaosTransport`` (``transport.py``)
wrap another httpx transport and apply it, and ``ChaosProxy`` (``proxy.py``, the
``surefoot chaos`` command) applies it on the wire in front of any server, driven between
test steps through its control API (``ChaosControl``). Each injected fault is counted by the plan
(``plan.counts()``) and emitted as a ``FaultInjected`` event. See ``docs/chaos.md``.
``FaultPlanTable`` (``_schema.py``) is the ``[chaos]`` table's schema, for other files that
hold a fault plan. The transports, the proxy and the schema are imported on first use, so
importing the plan loads neither asyncio, httpx nor pydantic.

The exactly-once drill that puts this in front of ``surefoot serve`` is a tool of the
checkout, not of this package: ``python -m tools.drill`` (``docs/reliability.md``).

Errors raised (``surefoot.errors``)::

    ConfigurationError   an invalid rule, plan or file (file:line: field: expected ..., got ...)

The faults themselves surface as what a real network gives: ``httpx.ConnectError``,
``httpx.ReadError``, ``httpx.ReadTimeout`` / ``httpx.PoolTimeout``,
``httpx.RemoteProtocolError``, or a made-up response (``X-Surefoot-Chaos: <rule>``).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if not all(
    importlib.util.find_spec(name) for name in ("httpx", "h11", "pydantic")
):  # pragma: no cover
    # Only without the extra: one line naming it, not the first import that fails.
    raise ImportError("surefoot.chaos needs the 'client' extra: pip install 'surefoot[client]'")

from surefoot._lazy import lazy_names
from surefoot.chaos._events import ChaosEvent, FaultInjected
from surefoot.chaos._plan import (
    FAULT_KINDS,
    Abort,
    Delay,
    Duplicate,
    FailAfter,
    Fault,
    FaultPlan,
    FaultSpec,
    Hang,
    Reorder,
    Reset,
    Rule,
    SlowBody,
)

if TYPE_CHECKING:
    from surefoot.chaos._schema import FaultPlanTable
    from surefoot.chaos.proxy import ChaosControl, ChaosProxy
    from surefoot.chaos.transport import (
        CHAOS_HEADER,
        COPY_EXTENSION,
        AsyncChaosTransport,
        ChaosTransport,
    )
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.chaos._schema": ("FaultPlanTable",),
            "surefoot.chaos.proxy": ("ChaosControl", "ChaosProxy"),
            "surefoot.chaos.transport": (
                "CHAOS_HEADER",
                "COPY_EXTENSION",
                "AsyncChaosTransport",
                "ChaosTransport",
            ),
        },
    )

__all__ = [
    "CHAOS_HEADER",
    "COPY_EXTENSION",
    "FAULT_KINDS",
    "Abort",
    "AsyncChaosTransport",
    "ChaosControl",
    "ChaosEvent",
    "ChaosProxy",
    "ChaosTransport",
    "Delay",
    "Duplicate",
    "FailAfter",
    "Fault",
    "FaultInjected",
    "FaultPlan",
    "FaultPlanTable",
    "FaultSpec",
    "Hang",
    "Reorder",
    "Reset",
    "Rule",
    "SlowBody",
]
