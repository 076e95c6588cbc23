"""Fault injection: make an httpx client meet resets, lost answers, duplicates and stalls.

A ``FaultPlan`` (``_plan.py``: pure, seeded, reproducible) decides per request which fault
applies, from ordered ``Rule`` objects or a TOML ``[chaos]`` table
(``FaultPlan.from_toml``); ``ChaosTransport`` / ``AsyncChaosTransport`` (``transport.py``)
wrap another httpx transport and apply it, and ``ChaosProxy`` (``proxy.py``, the
``surefoot chaos`` command) applies it on the wire in front of any server, driven between
test steps through its control API (``ChaosControl``). Each injected fault is counted by the plan
(``plan.counts()``) and emitted as a ``FaultInjected`` event. See ``docs/chaos.md``.

The exactly-once drill (``drill.py``, ``surefoot chaos drill``) runs a ``Scenario`` file: clients
pay through a chaos proxy on each side of ``surefoot serve`` in front of the example payments
API, then ``run_drill`` audits the ledger into a ``DrillReport``. See ``docs/reliability.md``.

Errors raised (``surefoot.errors``)::

    ConfigurationError   an invalid rule, plan or file (file:line: field: expected ..., got ...)
    DrillError           (not a SurefootError) a drill could not run: a process did not start

The faults themselves surface as what a real network gives: ``httpx.ConnectError``,
``httpx.ReadError``, ``httpx.ReadTimeout`` / ``httpx.PoolTimeout``,
``httpx.RemoteProtocolError``, or a made-up response (``X-Surefoot-Chaos: <rule>``).
"""

from __future__ import annotations

import importlib.util

if not all(
    importlib.util.find_spec(name) for name in ("httpx", "h11", "pydantic")
):  # pragma: no cover
    # Only without the extra: one line naming it, not the first import that fails.
    raise ImportError("surefoot.chaos needs the 'client' extra: pip install 'surefoot[client]'")

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
    Reset,
    Rule,
    SlowBody,
)
from surefoot.chaos._scenario import DrillAudit, DrillEvent, DrillReport, Scenario
from surefoot.chaos.drill import DrillError, arun_drill, drill_markdown, drill_table, run_drill
from surefoot.chaos.proxy import ChaosControl, ChaosProxy
from surefoot.chaos.transport import (
    CHAOS_HEADER,
    COPY_EXTENSION,
    AsyncChaosTransport,
    ChaosTransport,
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
    "DrillAudit",
    "DrillError",
    "DrillEvent",
    "DrillReport",
    "Duplicate",
    "FailAfter",
    "Fault",
    "FaultInjected",
    "FaultPlan",
    "FaultSpec",
    "Hang",
    "Reset",
    "Rule",
    "Scenario",
    "SlowBody",
    "arun_drill",
    "drill_markdown",
    "drill_table",
    "run_drill",
]
