"""``Sweeper``: one pass over what may need a person, across the project.

A sweep looks at three places, each only when it is given:

- idempotency keys in outcome unknown: a ``LookupResolver`` settles those it can
  (``reconcile_once``); those that remain are listed with their age;
- sagas (a ``SagaLog``): with a ``SagaWorker`` (the application's definitions), every
  due saga whose lease ran out is driven as far as it goes; then the sagas a person
  should look at are listed: ``needs_attention`` ones, running or compensating ones
  unchanged for ``stuck_after`` seconds, running ones past their deadline, and
  compensating ones whose undo failed more than once;
- the outbox (``Outbox``): endpoints disabled, failing, or with failed deliveries.

Rule 1: a sweep changes nothing a person has not asked for: it settles keys only as the
        gateway's reconciler does (a lookup's answer), and drives sagas only through
        ``SagaWorker.run_once``, whose claims (leases and fences, ``surefoot.saga.log``
        Rule 1) let sweepers on many hosts run at once, each saga claimed by one of them
        at a time.
Rule 2: a part that fails (its database down, the upstream unreachable) does not stop
        the others: its failure is in the report (``errors``), and the report says a
        person is needed. The error is in an operator's words: a database failure is the
        driver's first line, the database URL's secrets masked (``surefoot._masking``),
        with the command that creates missing tables; such a part is also listed in
        ``unavailable`` (``surefoot reconcile`` exits 1 for it).
Rule 3: the report is a frozen value; ``needs_person`` is True when it lists anything.
Rule 4: ``sweep_once`` sweeps; it never loops. The gateway runs it every
        ``reconcile_interval`` (``Gateway._sweep``), ``surefoot reconcile`` once or every
        ``--interval``, each logging or printing the report once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from surefoot._masking import masked_text
from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency import State

if TYPE_CHECKING:
    from surefoot.gateway._lookup import LookupResolver
    from surefoot.outbox import Outbox
    from surefoot.saga import SagaLog, SagaRun, SagaWorker
    from surefoot.storage import IdempotencyStore

__all__ = ["Finding", "Report", "Sweeper"]

_log = logging.getLogger("surefoot.gateway.reconciler")

#: The kinds of finding, in the order a report lists them.
KINDS = (
    "unknown_key",
    "saga_needs_attention",
    "saga_stuck",
    "saga_past_deadline",
    "saga_compensation_failing",
    "endpoint_disabled",
    "endpoint_failing",
    "deliveries_failed",
)
#: The command that creates a part's missing tables (Rule 2).
_INIT = {"sagas": "surefoot sagas init", "webhooks": "surefoot webhooks init"}
#: How many times ``run_once`` is called at most in one sweep (a saga that keeps
#: failing with no backoff would otherwise keep the sweep going).
MAX_ROUNDS = 1000


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a person should look at.

    Attributes:
        kind: one of ``KINDS``.
        subject: the key, the saga's id or the endpoint's name.
        detail: what is wrong, in a few words (a saga's error, an endpoint's reason).
        age: seconds since it went wrong (or since the saga last changed), if known.
        name: the saga's name (sagas only).
    """

    kind: str
    subject: str
    detail: str
    age: float | None = None
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Report:
    """What one sweep did and found.

    Attributes:
        at: when the sweep started.
        settled_keys: unknown keys a lookup settled.
        driven_sagas: sagas claimed and driven (with a worker).
        findings: what needs a person, in ``KINDS`` order.
        saga_counts: ``(name, state, how many, oldest updated_at)`` (``SagaLog.counts``).
        errors: the parts that failed, one line each (Rule 2).
        parts: the parts swept (``keys``, ``sagas``, ``webhooks``).
        unavailable: the parts that failed because their database is unavailable or has
            no tables (each also has its line in ``errors``).
    """

    at: float
    settled_keys: int = 0
    driven_sagas: int = 0
    findings: tuple[Finding, ...] = ()
    saga_counts: tuple[tuple[str, str, int, float], ...] = ()
    errors: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()

    @property
    def needs_person(self) -> bool:
        """True when something needs a person (Rule 3)."""
        return bool(self.findings or self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "parts": list(self.parts),
            "needs_person": self.needs_person,
            "settled_keys": self.settled_keys,
            "driven_sagas": self.driven_sagas,
            "findings": [f.as_dict() for f in self.findings],
            "saga_counts": [
                {"name": n, "state": s, "count": c, "oldest_updated_at": o}
                for n, s, c, o in self.saga_counts
            ],
            "errors": list(self.errors),
            "unavailable": list(self.unavailable),
        }


@dataclass
class _Sweep:
    now: float
    settled_keys: int = 0
    driven_sagas: int = 0
    findings: list[Finding] = field(default_factory=list)
    counts: list[tuple[str, str, int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)


class Sweeper:
    """Sweeps the idempotency keys, the sagas and the outbox it is given.

    Example::

        sweeper = Sweeper(saga_log=SagaLog("sqlite:///shop.db"), stuck_after=900)
        report = await sweeper.sweep_once()
        for finding in report.findings:
            print(finding.kind, finding.subject, finding.detail)

    Args:
        resolver: the gateway's ``LookupResolver`` (settles unknown keys).
        store: the idempotency store whose unknown keys are listed (default: the
            resolver's).
        saga_log: the sagas' log.
        saga_worker: a worker with the application's definitions: due sagas are driven.
        outbox: the outbox whose endpoints are checked.
        stuck_after: seconds a running or compensating saga may stay unchanged.
        limit: at most this many items of each kind are listed.
        clock: time source (default: the system's).
        on_report: called with each report (the gateway logs it and sets its metrics
            there).

    Raises:
        ConfigurationError: ``stuck_after`` is not a number of seconds above 0, or
            ``limit`` not a whole number from 1 to 1000.
    """

    def __init__(
        self,
        *,
        resolver: LookupResolver | None = None,
        store: IdempotencyStore | None = None,
        saga_log: SagaLog | None = None,
        saga_worker: SagaWorker | None = None,
        outbox: Outbox | None = None,
        stuck_after: float = 900.0,
        limit: int = 100,
        clock: Clock | None = None,
        on_report: Callable[[Report], None] | None = None,
    ) -> None:
        self.resolver = resolver
        self.store = store if store is not None else (resolver.store if resolver else None)
        self.saga_log = saga_log
        self.saga_worker = saga_worker
        self.outbox = outbox
        if (
            isinstance(stuck_after, bool)
            or not isinstance(stuck_after, int | float)
            or not math.isfinite(stuck_after)
            or stuck_after <= 0
        ):
            raise ConfigurationError(
                f"Sweeper.stuck_after: expected seconds above 0, got {stuck_after!r}"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ConfigurationError(
                f"Sweeper.limit: expected a whole number from 1 to 1000, got {limit!r}"
            )
        self.stuck_after = float(stuck_after)
        self.limit = limit
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.on_report = on_report
        #: The last sweep's report (None before the first).
        self.last: Report | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(
            part
            for part, given in (
                ("keys", self.store is not None),
                ("sagas", self.saga_log is not None),
                ("webhooks", self.outbox is not None),
            )
            if given
        )

    async def sweep_once(self) -> Report:
        """One sweep (Rule 2: a part that fails is reported, the others go on)."""
        sweep = _Sweep(self.clock.now())
        for part, run in (
            ("keys", self._keys),
            ("sagas", self._sagas),
            ("webhooks", self._webhooks),
        ):
            if part not in self.parts:
                continue
            try:
                await run(sweep)
            except Exception as exc:
                sweep.errors.append(f"{part}: {self._failure(part, exc)}"[:300])
                if isinstance(exc, StoreUnavailable):
                    sweep.unavailable.append(part)
                _log.warning("sweep: the %s part failed", part, exc_info=True)
        order = {kind: n for n, kind in enumerate(KINDS)}
        report = Report(
            at=sweep.now,
            settled_keys=sweep.settled_keys,
            driven_sagas=sweep.driven_sagas,
            findings=tuple(sorted(sweep.findings, key=lambda f: order[f.kind])),
            saga_counts=tuple(sweep.counts),
            errors=tuple(sweep.errors),
            parts=self.parts,
            unavailable=tuple(sweep.unavailable),
        )
        self.last = report
        if self.on_report is not None:
            self.on_report(report)
        return report

    def _failure(self, part: str, exc: Exception) -> str:
        """What failed, in one line an operator can act on (Rule 2)."""
        cause = exc.__cause__ if isinstance(exc, StoreUnavailable) and exc.__cause__ else exc
        # The driver's first line says what failed; the rest quotes SQL or gives advice.
        first = " ".join((str(cause).strip().splitlines() or [""])[0].split())
        source = {"sagas": self.saga_log, "webhooks": self.outbox}.get(part)
        database = getattr(source, "database", None)
        if isinstance(database, str) and database:
            first = masked_text(first, database)
        if not isinstance(exc, StoreUnavailable):
            return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        text = first or type(cause).__name__
        missing = "no such table" in text or "does not exist" in text
        advice = f": create the tables with {_INIT[part]}" if missing and part in _INIT else ""
        return f"the database is unavailable ({text}){advice}"

    # -- the parts ---------------------------------------------------------------------------

    async def _keys(self, sweep: _Sweep) -> None:
        if self.resolver is not None:
            sweep.settled_keys = await self.resolver.reconcile_once(limit=self.limit)
        from surefoot.gateway._lookup import LOOKUP_PREFIX

        assert self.store is not None
        now = self.clock.now()
        records = await self.store.records(now, state=State.UNKNOWN, limit=self.limit)
        for key, record in records:
            if key.startswith(LOOKUP_PREFIX):
                continue
            age = round(max(0.0, now - (record.expires_at - record.ttl)), 3)
            sweep.findings.append(
                Finding("unknown_key", key, "outcome unknown: settle it or release it", age)
            )

    async def _sagas(self, sweep: _Sweep) -> None:
        log = self.saga_log
        assert log is not None
        if self.saga_worker is not None:
            for _ in range(MAX_ROUNDS):
                claimed = await self.saga_worker.run_once()
                sweep.driven_sagas += claimed
                if not claimed:
                    break
        now = self.clock.now()
        seen: set[str] = set()

        def add(kind: str, run: SagaRun, detail: str, age: float) -> None:
            if run.id not in seen:
                seen.add(run.id)
                sweep.findings.append(Finding(kind, run.id, detail, round(age, 3), run.name))

        attention = await asyncio.to_thread(log.runs, state="needs_attention", limit=self.limit)
        for run in attention:
            add("saga_needs_attention", run, run.error or "needs attention", now - run.updated_at)
        active: list[SagaRun] = []
        for state in ("running", "compensating"):
            active += await asyncio.to_thread(log.runs, state=state, limit=1000)
        for run in active:
            undoes = [s for s in run.steps if s.get("undo_attempts", 0) > 1]
            if run.state == "compensating" and undoes:
                step = undoes[0]
                add(
                    "saga_compensation_failing",
                    run,
                    f"{step['name']}: undo failed {step['undo_attempts']} times"
                    + (f" ({step['error']})" if step.get("error") else ""),
                    now - run.updated_at,
                )
            elif run.state == "running" and run.deadline_at is not None and run.deadline_at < now:
                add("saga_past_deadline", run, "running past its deadline", now - run.deadline_at)
            elif now - run.updated_at >= self.stuck_after:
                add(
                    "saga_stuck",
                    run,
                    f"{run.state}, unchanged for {_age(now - run.updated_at)}"
                    + (f", held by {run.owner}" if run.owner else ", no worker holds it"),
                    now - run.updated_at,
                )
        kept = dict.fromkeys(KINDS, 0)
        trimmed: list[Finding] = []
        for finding in sweep.findings:
            kept[finding.kind] += 1
            if kept[finding.kind] <= self.limit:
                trimmed.append(finding)
        sweep.findings = trimmed
        sweep.counts = await asyncio.to_thread(log.counts)

    async def _webhooks(self, sweep: _Sweep) -> None:
        outbox = self.outbox
        assert outbox is not None
        now = self.clock.now()
        endpoints = await asyncio.to_thread(outbox.endpoints)
        stats = {s.endpoint: s for s in await asyncio.to_thread(outbox.stats)}
        for endpoint in endpoints:
            if not endpoint.enabled:
                sweep.findings.append(
                    Finding(
                        "endpoint_disabled", endpoint.name, endpoint.disabled_reason or "disabled"
                    )
                )
            elif endpoint.failing_since is not None:
                age = round(max(0.0, now - endpoint.failing_since), 3)
                sweep.findings.append(
                    Finding("endpoint_failing", endpoint.name, f"failing for {_age(age)}", age)
                )
            stat = stats.get(endpoint.name)
            if stat is not None and stat.failed:
                plural = "y" if stat.failed == 1 else "ies"
                sweep.findings.append(
                    Finding(
                        "deliveries_failed",
                        endpoint.name,
                        f"{stat.failed} failed deliver{plural} (surefoot webhooks recover)",
                    )
                )


def _age(seconds: float) -> str:
    """``seconds`` as a short age: ``42s``, ``17m``, ``5h``, ``3d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def describe(report: Report) -> Sequence[str]:
    """One line per finding and per failed part, as the gateway logs them."""
    lines = [
        f"reconcile: {f.kind} {f.subject}"
        + (f" ({f.name})" if f.name else "")
        + f": {f.detail}"
        + (f" [age {_age(f.age)}]" if f.age is not None else "")
        for f in report.findings
    ]
    lines += [f"reconcile: part failed: {error}" for error in report.errors]
    return lines
