"""``run_probe``: every check of every target, in order, within the plan's bounds.

``CHECKS`` maps a check's name (the ``checks = [...]`` values of a file) to its function,
``check(client, target, run) -> Finding``; it is filled from the checks' modules
(``_idempotency.IDEMPOTENCY_CHECKS``, ``_limits.LIMIT_CHECKS``).

Rule 1: checks run one at a time, targets in the file's order, each target's checks in
        its order; each yields exactly one ``Finding``, given to ``progress`` at once.
Rule 2: the first ``BudgetExhausted`` ends the check that met it ``inconclusive``; every
        check after it is ``skipped`` (nothing more is sent).
Rule 3: a check on a target that writes without an effect check is ``skipped`` unless side
        effects are accepted (the plan's or ``accept_side_effects``); a name ``CHECKS``
        does not hold is ``skipped``; a check that raises anything else ends
        ``inconclusive`` with the error, and the run goes on.
Rule 4: a client made here (none given) is closed here; one given is the caller's.
Rule 5: the report's ``base_url`` is the plan's with its secrets as ``***`` (a host taken
        from the environment is a secret), and its ``writes`` the targets that write.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from surefoot.clock import Clock, SystemClock
from surefoot.probe._model import BudgetExhausted, Finding, ProbeClient, Target, Verdict
from surefoot.probe._plan import Plan, redacted
from surefoot.probe._report import Report

if TYPE_CHECKING:
    import httpx

__all__ = ["CHECKS", "Check", "run_probe"]

#: A check: ``(client, target, run id) -> Finding``.
Check = Callable[[ProbeClient, Target, str], Awaitable[Finding]]

#: The registries the checks' modules export, by module.
_SOURCES = (
    ("surefoot.probe._idempotency", "IDEMPOTENCY_CHECKS"),
    ("surefoot.probe._limits", "LIMIT_CHECKS"),
)


def _registry() -> dict[str, Check]:
    checks: dict[str, Check] = {}
    for module, name in _SOURCES:
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # pragma: no cover - while a module is being written
            if exc.name != module:
                raise
            continue
        checks.update(getattr(found, name, {}))
    return checks


#: Every check by name.
CHECKS: dict[str, Check] = _registry()


async def run_probe(
    plan: Plan,
    *,
    client: ProbeClient | None = None,
    accept_side_effects: bool = False,
    progress: Callable[[Finding], object] | None = None,
    checks: dict[str, Check] | None = None,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Report:
    """Run ``plan``'s checks and report what they found.

    Example:
        >>> plan = load_plan("probe.toml")
        >>> report = await run_probe(plan)
        >>> print(to_markdown(report))

    Args:
        plan: what to send (``load_plan``).
        client: the door of every request; default an ``HttpProbeClient`` for ``plan``
            (over ``transport``, if given), closed at the end.
        accept_side_effects: run writes without an effect check (as ``--accept-side-effects``).
        progress: called with each finding as soon as it is made.
        checks: the checks by name; default ``CHECKS``.
        clock: measures the run's duration; default ``SystemClock()``.
        transport: the httpx transport of the default client (an ``httpx.ASGITransport``
            in tests).
    """
    registry = CHECKS if checks is None else checks
    clock = clock if clock is not None else SystemClock()
    started = clock.now()
    owned = None
    if client is None:
        from surefoot.probe._client import HttpProbeClient

        client = owned = HttpProbeClient.for_plan(plan, transport=transport, clock=clock)
    accept = accept_side_effects or plan.accept_side_effects
    run = client.render("{{run}}", 0)
    before = client.remaining()
    findings: list[Finding] = []
    exhausted: str | None = None
    try:
        for target in plan.targets:
            for name in target.checks:
                finding, spent = await _one(registry, client, target, name, run, accept, exhausted)
                if spent:
                    exhausted = finding.summary
                findings.append(finding)
                if progress is not None:
                    progress(finding)
        sent = _sent(client, before)
    finally:
        if owned is not None:
            await owned.aclose()
    return Report(
        findings=tuple(findings),
        run=run,
        source=plan.source,
        base_url=redacted(plan.base_url, plan.secrets),
        targets=tuple(target.name for target in plan.targets),
        required=plan.required,
        requests_sent=sent,
        max_requests=plan.max_requests,
        duration=max(0.0, clock.now() - started),
        key_header=next((t.key_header for t in plan.targets if t.writes), "Idempotency-Key"),
        writes=tuple(target.name for target in plan.targets if target.writes),
    )


def _sent(client: ProbeClient, before: int) -> int:
    """Requests sent: the client's count if it keeps one (the deadline zeroes ``remaining``)."""
    count = getattr(client, "sent", None)
    return count if isinstance(count, int) else before - client.remaining()


async def _one(
    registry: dict[str, Check],
    client: ProbeClient,
    target: Target,
    name: str,
    run: str,
    accept: bool,
    exhausted: str | None,
) -> tuple[Finding, bool]:
    """One check's finding, and whether it met the end of the budget (Rules 2 and 3)."""

    def skipped(summary: str, advice: str) -> tuple[Finding, bool]:
        return Finding(name, target.name, Verdict.SKIPPED, summary, advice), False

    if exhausted is not None:
        return skipped(
            f"not run: the probe's budget was spent ({exhausted})",
            "raise max_requests or max_duration in [probe], or probe fewer checks at once",
        )
    check = registry.get(name)
    if check is None:
        return skipped(
            f"not run: this surefoot has no check {name!r}", "upgrade surefoot, or drop it"
        )
    if target.writes and target.effect is None and not accept:
        return skipped(
            "not run: the target writes and has no effect check",
            "add [targets.effect] to count what a call created, or pass --accept-side-effects",
        )
    try:
        return await check(client, target, run), False
    except BudgetExhausted as exc:
        spent = Finding(
            name,
            target.name,
            Verdict.INCONCLUSIVE,
            f"the probe's budget ran out during the check: {exc}",
            "raise max_requests or max_duration in [probe], then probe again",
        )
        return spent, True
    except Exception as exc:  # a broken check (or a refused host) must not end the run
        broken = Finding(
            name,
            target.name,
            Verdict.INCONCLUSIVE,
            f"the check could not finish: {type(exc).__name__}: {exc}",
            "fix what the message says, then probe again",
            facts={"error": type(exc).__name__},
        )
        return broken, False
