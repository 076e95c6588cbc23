"""The exactly-once drill: a tool of the checkout, not part of the installed library.

It runs the example payments API (``examples/legacy_payments``) behind ``surefoot serve``,
with a chaos proxy on each side, pays through the faults from many clients, and audits the
ledger (see ``docs/reliability.md``)::

    .venv/bin/python -m tools.drill examples/drills/ci-small.toml [--store redis] [--json F]

Map: ``scenario.py`` (pure: the scenario file, the audit, the reports), ``schema.py`` (the
scenario file's pydantic models), ``runner.py`` (processes, proxies, clients: ``run_drill``),
``receiver.py`` (the webhook drill's receiver process: ``target = "webhooks"``),
``outbox.py`` (the outbox drill's applications and workers: ``target = "outbox"``),
``__main__.py`` (the command). It uses surefoot's public names only, and the configuration
toolkit ``surefoot._config`` that every configuration file of the project shares.
"""

from __future__ import annotations

import importlib.util

# What the drill runs: the gateway (``surefoot[gateway]``) and the example API (``[examples]``).
if _missing := [
    name
    for name in ("httpx", "h11", "pydantic", "uvicorn", "httptools", "prometheus_client", "fastapi")
    if importlib.util.find_spec(name) is None
]:
    # One line naming the extras, not the first import that fails.
    raise ImportError(
        "tools.drill needs the 'gateway' and 'examples' extras: "
        f"pip install -e '.[gateway,examples]' (missing: {', '.join(_missing)})"
    )

from tools.drill.runner import DrillError, arun_drill, drill_table, run_drill
from tools.drill.scenario import (
    DrillAudit,
    DrillEvent,
    DrillReport,
    OutboxAudit,
    Scenario,
    drill_markdown,
)

__all__ = [
    "DrillAudit",
    "DrillError",
    "DrillEvent",
    "DrillReport",
    "OutboxAudit",
    "Scenario",
    "arun_drill",
    "drill_markdown",
    "drill_table",
    "run_drill",
]
