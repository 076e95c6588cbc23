"""``surefoot probe``: does a partner's API really honour idempotency keys and its own rate
limits? (docs/probe.md)

Example:
    >>> plan = load_plan("probe.toml")
    >>> report = await run_probe(plan)
    >>> report.exit_status, to_markdown(report)
    >>> print(integration_toml(report, "payments"))

The vocabulary is ``_model``'s; a file becomes a ``Plan`` (``_plan``, its schema in
``_schema``); ``HttpProbeClient`` (``_client``) sends every request within the plan's
bounds; ``run_probe`` (``_run``) runs the checks (``_idempotency``, ``_limits``); a
``Report`` (``_report``) says what they found and which client policy that justifies.
The client and the run are imported on first use, so importing the plan loads neither
asyncio, httpx nor pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.probe._model import (
    BudgetExhausted,
    Effect,
    Exchange,
    Finding,
    ProbeClient,
    Target,
    Verdict,
)
from surefoot.probe._plan import Plan, describe, load_plan, plan_from_dict
from surefoot.probe._report import (
    Report,
    integration_policy,
    integration_toml,
    to_json,
    to_markdown,
    to_table,
)

if TYPE_CHECKING:
    from surefoot.probe._client import HostRefused, HttpProbeClient
    from surefoot.probe._run import CHECKS, Check, run_probe
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.probe._client": ("HostRefused", "HttpProbeClient"),
            "surefoot.probe._run": ("CHECKS", "Check", "run_probe"),
        },
        extra=("httpx", "client"),
    )

__all__ = [
    "CHECKS",
    "BudgetExhausted",
    "Check",
    "Effect",
    "Exchange",
    "Finding",
    "HostRefused",
    "HttpProbeClient",
    "Plan",
    "ProbeClient",
    "Report",
    "Target",
    "Verdict",
    "describe",
    "integration_policy",
    "integration_toml",
    "load_plan",
    "plan_from_dict",
    "run_probe",
    "to_json",
    "to_markdown",
    "to_table",
]
