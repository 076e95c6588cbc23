"""The exactly-once drill's pure half: what to run (``Scenario``) and what came of it (``audit``).

A scenario file (``examples/drills/*.toml``, run by ``python -m tools.drill``) describes one
drill; ``runner.py`` runs it. Map of the file::

    [drill]                  clients, payments (per client), target, store, workers, seed,
                             idempotency, deadline, attempt_timeout, fail_after_commit, settle
    [gateway]                the generated policy's knobs: lease, read_timeout, total_timeout,
                             not_found_after, reconcile_interval, store_timeout, access_log,
                             log_level
    [chaos.client]           a fault plan between the clients and the gateway
    [[chaos.client.rules]]   (seed, paused, rules: a ``surefoot.chaos.FaultPlanTable``)
    [chaos.upstream]         a fault plan between the gateway and the upstream
    [[chaos.upstream.rules]]
    [[events]]               at = seconds | after = share of payments done, action = ...

Rule 1: a scenario from a file is validated as a whole: one ``ConfigurationError`` lists every
        problem as ``file:line: path: expected ..., got ...`` (``surefoot._config``);
        a scenario changed in code (``Scenario.overridden``) is checked again.
Rule 2: the audit compares what each client was finally told with the ledger, per reference:
        *duplicated*, a reference booked more than once; *lost*, a 201 whose reference is not
        booked; *unfinished*, a payment with no 201 before its deadline (``missing`` is lost
        plus unfinished); *mismatched*, a 201 whose charge id is not the one booked; *stray*,
        a booking for a reference no client sent. A drill passes when all five are zero.
Rule 3: this module does no I/O, never reads the clock and draws no randomness; pydantic is
        imported only when a file is validated.
Rule 4: ``target = "webhooks"`` drills a ``WebhookReceiver`` instead of the gateway: the
        clients are webhook senders, each payment one signed event delivered to the ledger
        app through the receiver, in one process (``tools.drill.receiver``). There is no
        upstream side (no ``[chaos.upstream]`` rules), and the app never fails after
        committing (``fail_after_commit = 0``): the receiver releases an event whose
        handler failed so that the sender's retry runs it, which books a handler that
        committed anyway twice, by design (a handler must be transactional).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from surefoot._config import Problems, dotted, read_toml
from surefoot.chaos import Delay, Rule
from surefoot.errors import ConfigurationError

__all__ = [
    "ACTIONS",
    "DrillAudit",
    "DrillEvent",
    "DrillReport",
    "GatewaySettings",
    "Payment",
    "Scenario",
    "audit",
    "drill_markdown",
    "gateway_policy",
    "latency",
]

Store = Literal["sqlite", "redis"]
Target = Literal["gateway", "webhooks"]
Side = Literal["client", "upstream"]
Action = Literal["pause_chaos", "resume_chaos", "flap", "restart_gateway", "restart_redis"]
#: What an ``[[events]]`` entry can do, in the order of the documentation.
ACTIONS: tuple[Action, ...] = (
    "pause_chaos",
    "resume_chaos",
    "flap",
    "restart_gateway",
    "restart_redis",
)
SIDES: tuple[Side, ...] = ("client", "upstream")
_CHAOS_ACTIONS = ("pause_chaos", "resume_chaos", "flap")


# -- the scenario ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class DrillEvent:
    """Something done to the system while the payments run.

    It happens ``at`` seconds after the first payment starts, or once a share ``after`` (0
    to 1) of the payments is done; exactly one of the two is set.

    Args:
        action: ``pause_chaos`` / ``resume_chaos`` (the ``proxies``' plans inject nothing /
            inject again), ``flap`` (``times`` cycles of ``down`` seconds with the proxies'
            rules in force, then ``up`` seconds paused), ``restart_gateway`` (SIGKILL the
            gateway's process group, wait ``down`` seconds, start it again on the same
            ports), ``restart_redis`` (the same for the private redis-server).
        proxies: which chaos proxies a chaos action steers.
    """

    action: Action
    at: float | None = None
    after: float | None = None
    proxies: tuple[Side, ...] = SIDES
    down: float = 1.0
    up: float = 1.0
    times: int = 3

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigurationError(
                f"DrillEvent.action: expected one of {', '.join(ACTIONS)}, got {self.action!r}"
            )
        if (self.at is None) == (self.after is None):
            raise ConfigurationError(
                "DrillEvent: expected exactly one of at (seconds) and after (a share of payments)"
            )
        if self.at is not None and not self.at >= 0:
            raise ConfigurationError(f"DrillEvent.at: expected seconds >= 0, got {self.at!r}")
        if self.after is not None and not 0 <= self.after <= 1:
            raise ConfigurationError(f"DrillEvent.after: expected 0 to 1, got {self.after!r}")
        if not self.proxies or any(side not in SIDES for side in self.proxies):
            raise ConfigurationError(
                f"DrillEvent.proxies: expected 'client' and/or 'upstream', got {self.proxies!r}"
            )
        if not (self.down >= 0 and self.up >= 0 and self.times >= 1):
            raise ConfigurationError("DrillEvent: expected down, up >= 0 and times >= 1")

    def describe(self) -> str:
        """One line: what and when (``restart_gateway (down 1 s) after 30%``)."""
        what: str = self.action
        if self.action in _CHAOS_ACTIONS:
            what += f" {'+'.join(self.proxies)}"
        if self.action == "flap":
            what += f" ({self.times} x {_num(self.down)} s down, {_num(self.up)} s up)"
        elif self.action in ("restart_gateway", "restart_redis"):
            what += f" (down {_num(self.down)} s)"
        when = f"at {_num(self.at)} s" if self.at is not None else f"after {self.after:.0%}"
        return f"{what} {when}"


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewaySettings:
    """The knobs of the policy file the drill writes for ``surefoot serve``.

    Args:
        lease: seconds before a reservation whose worker vanished counts as abandoned (its
            key then becomes outcome unknown).
        read_timeout, total_timeout: the gateway's patience with the upstream.
        not_found_after: seconds a key must have been unknown before a lookup answering 404
            releases it; keep it above the longest a request can linger on its way to the
            upstream after the gateway gave up on it, or a retry books it twice.
        reconcile_interval: seconds between the reconciler's passes.
        store_timeout: seconds a Redis call may take (the store's default, 50 ms, is for
            production, not for a loaded two-core machine running the whole drill).
        access_log: write the gateway's JSON access lines to its log file.
        log_level: the lowest level of the gateway's event lines (``"info"``: every
            decision, for investigating a failed drill with ``keep``).
    """

    lease: float = 5.0
    read_timeout: float = 2.0
    total_timeout: float = 3.0
    not_found_after: float = 3.0
    reconcile_interval: float = 1.0
    store_timeout: float = 0.5
    access_log: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "warning"


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """One drill: how many clients pay how often, through which faults, on which store.

    Example:
        >>> scenario = Scenario.from_toml("examples/drills/ci-small.toml")
        >>> scenario.overridden(store="redis", payments=10).total
        40

    Args:
        name: names the drill in reports.
        clients: concurrent clients; each makes ``payments`` payments one after another.
        target: what the clients pay through: ``"gateway"`` (``surefoot serve`` in front of
            the upstream) or ``"webhooks"`` (the clients are webhook senders, and a
            ``WebhookReceiver`` in the ledger app's process runs each event once; Rule 4).
        store: the gateway's idempotency store: ``"sqlite"`` (a file) or ``"redis"`` (a
            private redis-server with an append-only file).
        workers: the gateway's worker processes; ``upstream_workers`` the upstream's.
        seed: seeds the fault plans, the upstream's failures and the clients' jitter.
        idempotency: protect ``POST /charges`` at the gateway (False: the comparison run).
        deadline: seconds a client keeps trying one payment before giving up.
        attempt_timeout: seconds one attempt may take.
        fail_after_commit: the upstream's own share of charges booked then answered 500.
        settle: seconds the audit waits, at most, for outcome-unknown keys to be settled.
        client_rules, upstream_rules: the two chaos proxies' rules; ``*_paused``: start
            paused; ``*_seed``: their seeds (default: derived from ``seed``).
        events: what happens to the system while the payments run.
    """

    name: str
    description: str = ""
    clients: int = 4
    payments: int = 50
    target: Target = "gateway"
    store: Store = "sqlite"
    workers: int = 1
    upstream_workers: int = 1
    seed: int = 1
    idempotency: bool = True
    deadline: float = 60.0
    attempt_timeout: float = 5.0
    fail_after_commit: float = 0.0
    settle: float = 10.0
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    client_rules: tuple[Rule, ...] = ()
    client_paused: bool = False
    client_seed: int | None = None
    upstream_rules: tuple[Rule, ...] = ()
    upstream_paused: bool = False
    upstream_seed: int | None = None
    events: tuple[DrillEvent, ...] = ()
    source: str = "<scenario>"

    def __post_init__(self) -> None:
        conflicts = _conflicts({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if conflicts:
            raise ConfigurationError(
                "; ".join(f"{self.source}: {dotted(loc)}: {message}" for loc, message in conflicts)
            )

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Scenario:
        """The scenario in the TOML file at ``path``.

        Raises:
            ConfigurationError: the file cannot be read, is not TOML, or is invalid; every
                problem is listed as ``file:line: path: expected ..., got ...``.
        """
        data, source, lines = read_toml(path)
        name = os.path.splitext(os.path.basename(source))[0]
        return _from_data(data, source, lines, name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Scenario:
        """The scenario in ``data`` (a parsed TOML document); the same checks."""
        return _from_data(data, source, None, "drill")

    @property
    def total(self) -> int:
        """Payments in all."""
        return self.clients * self.payments

    def seeds(self) -> dict[str, int]:
        """The seeds in use: the ``client`` and ``upstream`` plans, ``legacy`` (the upstream
        app's failures) and ``jitter`` (the clients' backoff)."""
        return {
            "client": self.seed * 4 + 1 if self.client_seed is None else self.client_seed,
            "upstream": self.seed * 4 + 2 if self.upstream_seed is None else self.upstream_seed,
            "legacy": self.seed * 4 + 3,
            "jitter": self.seed * 4 + 4,
        }

    def overridden(self, **changes: Any) -> Scenario:
        """A copy with ``changes`` (``store="redis"``, ``idempotency=False``, ``clients=8``...).

        Raises:
            ConfigurationError: the changed scenario is inconsistent (a ``restart_redis``
                event on the SQLite store...).
        """
        changes = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **changes)

    def longest_delay(self) -> float:
        """The longest a ``delay`` rule holds a request back, in seconds."""
        return max(
            (
                rule.fault.seconds + rule.fault.jitter
                for rule in (*self.client_rules, *self.upstream_rules)
                if isinstance(rule.fault, Delay)
            ),
            default=0.0,
        )


def _conflicts(values: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong in a scenario's field ``values``, mostly across fields."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    for name in ("clients", "payments", "workers", "upstream_workers"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            found.append((("drill", name), f"expected a whole number >= 1, got {value!r}"))
    store = values["store"]
    if store not in ("sqlite", "redis"):
        found.append((("drill", "store"), f"expected 'sqlite' or 'redis', got {store!r}"))
    target = values["target"]
    if target not in ("gateway", "webhooks"):
        found.append((("drill", "target"), f"expected 'gateway' or 'webhooks', got {target!r}"))
    if target == "webhooks":
        if values["upstream_rules"]:
            found.append(
                (
                    ("chaos", "upstream"),
                    "expected no [[chaos.upstream.rules]] with target = 'webhooks' (the receiver "
                    "runs in the ledger app's process: there is no upstream side), got "
                    f"{len(values['upstream_rules'])}",
                )
            )
        if values["fail_after_commit"]:
            found.append(
                (
                    ("drill", "fail_after_commit"),
                    "expected 0 with target = 'webhooks' (a receiver releases an event "
                    "whose handler failed: the sender's retry books a handler that "
                    f"committed anyway again), got {_num(values['fail_after_commit'])}",
                )
            )
    deadline, attempt_timeout = values["deadline"], values["attempt_timeout"]
    if not 0 < attempt_timeout <= deadline:
        found.append(
            (
                ("drill", "attempt_timeout"),
                f"expected seconds > 0 and <= deadline ({_num(deadline)}), "
                f"got {_num(attempt_timeout)}",
            )
        )
    rules = {"client": values["client_rules"], "upstream": values["upstream_rules"]}
    for index, event in enumerate(values["events"]):
        if event.action == "restart_redis" and store != "redis":
            found.append(
                (
                    ("events", index, "action"),
                    f"restart_redis needs store = 'redis', got store = {store!r}",
                )
            )
        if event.action in _CHAOS_ACTIONS:
            for side in event.proxies:
                if not rules[side]:
                    found.append(
                        (
                            ("events", index, "proxy"),
                            f"{event.action} steers the {side} proxy, whose plan has no rules "
                            f"(add [[chaos.{side}.rules]])",
                        )
                    )
    return found


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


# -- the gateway's policy ----------------------------------------------------------------------


def gateway_policy(
    scenario: Scenario,
    *,
    upstream_url: str,
    store_url: str,
    port: int,
    admin_port: int,
    admin_token: str,
) -> str:
    """The policy file ``surefoot serve`` runs in the drill (TOML text).

    ``POST /charges`` is protected unless ``scenario.idempotency`` is False: a failure that
    may have done the work makes its key outcome unknown, settled by a lookup of the charge
    by its reference (on a retry and by the reconciler); no rate limit, no breaker.
    """
    g = scenario.gateway
    route = '[[routes]]\nmatch = "POST /charges"\n'
    if scenario.idempotency:
        route += (
            "[routes.idempotency]\n"
            'on_server_error = "unknown"\n'
            f"lease = {g.lease!r}\n"
            'on_lease_expiry = "unknown"\n'
            "[routes.idempotency.lookup]\n"
            'path = "/charges/by-reference/{body.reference}"\n'
            "found = [200]\n"
            "not_found = [404]\n"
            "status = 201\n"
            f"not_found_after = {g.not_found_after!r}\n"
            f"timeout = {max(g.read_timeout, 1.0)!r}\n"
        )
    else:
        route += "idempotency = false\n"
    return (
        "# Written by the drill (python -m tools.drill) for one run; not meant to be edited.\n"
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f"workers = {scenario.workers}\n"
        f"access_log = {str(g.access_log).lower()}\n"
        f"log_level = {_toml_string(g.log_level)}\n"
        "shutdown_timeout = 1\n\n"
        "[upstream]\n"
        f"url = {_toml_string(upstream_url)}\n"
        "connect_timeout = 1\n"
        f"read_timeout = {g.read_timeout!r}\n"
        f"total_timeout = {g.total_timeout!r}\n"
        "max_connections = 200\n\n"
        "[stores]\n"
        f"default = {_toml_string(store_url)}\n\n"
        "[idempotency]\n"
        'store = "default"\n'
        'methods = ["POST"]\n'
        f"reconcile_interval = {g.reconcile_interval!r}\n"
        f"lease = {g.lease!r}\n\n" + route + "\n[admin]\n"
        'host = "127.0.0.1"\n'
        f"port = {admin_port}\n"
        f"token = {_toml_string(admin_token)}\n"
    )


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the audit -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Payment:
    """What one client was finally told about one payment.

    ``status`` is the last HTTP status it got (None: only errors), ``charge_id`` the id in
    its 201, ``attempts`` the requests it sent for it, ``seconds`` how long it took from the
    first attempt to the final answer, ``replayed`` whether the final answer was a replay
    (``Idempotent-Replayed: true``), ``error`` its last failure.
    """

    reference: str
    client: int
    status: int | None
    charge_id: str | None
    attempts: int
    seconds: float = 0.0
    replayed: bool = False
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """The client got a 201 with a charge id."""
        return self.status == 201 and self.charge_id is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class DrillAudit:
    """The ledger against the clients' final answers (see Rule 2 for each count).

    ``examples`` names up to five references per non-zero problem, for investigation.
    """

    expected: int
    succeeded: int
    recorded: int
    duplicated: int
    extra_charges: int
    lost: int
    unfinished: int
    unfinished_booked: int
    mismatched: int
    stray: int
    unknown_keys: int
    replayed: int
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        """Payments lost (told 201, not booked) or unfinished (never told 201)."""
        return self.lost + self.unfinished

    @property
    def ok(self) -> bool:
        """Nothing duplicated, missing, mismatched or stray."""
        return not (self.duplicated or self.missing or self.mismatched or self.stray)


def audit(
    payments: Iterable[Payment], ledger: Mapping[str, Sequence[str]], *, unknown_keys: int = 0
) -> DrillAudit:
    """Compare the clients' final answers with ``ledger`` (reference -> booked charge ids).

    Example:
        >>> audit([Payment(reference="r1", client=0, status=201, charge_id="ch_1", attempts=2)],
        ...       {"r1": ["ch_1", "ch_2"]}).duplicated
        1
    """
    examples: dict[str, list[str]] = {}

    def note(problem: str, reference: str) -> None:
        listed = examples.setdefault(problem, [])
        if len(listed) < 5:
            listed.append(reference)

    expected = succeeded = lost = unfinished = unfinished_booked = mismatched = replayed = 0
    references: set[str] = set()
    for payment in payments:
        expected += 1
        references.add(payment.reference)
        booked = ledger.get(payment.reference, ())
        if payment.succeeded:
            succeeded += 1
            replayed += payment.replayed
            if not booked:
                lost += 1
                note("lost", payment.reference)
            elif payment.charge_id not in booked:
                mismatched += 1
                note("mismatched", payment.reference)
        else:
            unfinished += 1
            note("unfinished", payment.reference)
            if booked:
                unfinished_booked += 1
    duplicated = extra = stray = recorded = 0
    for reference, ids in ledger.items():
        recorded += len(ids)
        if len(ids) > 1:
            duplicated += 1
            extra += len(ids) - 1
            note("duplicated", reference)
        if reference not in references:
            stray += 1
            note("stray", reference)
    return DrillAudit(
        expected=expected,
        succeeded=succeeded,
        recorded=recorded,
        duplicated=duplicated,
        extra_charges=extra,
        lost=lost,
        unfinished=unfinished,
        unfinished_booked=unfinished_booked,
        mismatched=mismatched,
        stray=stray,
        unknown_keys=unknown_keys,
        replayed=replayed,
        examples={problem: tuple(refs) for problem, refs in examples.items()},
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class DrillReport:
    """One drill's results.

    ``seconds`` is the payment phase (first payment started to last one done), ``wall`` the
    whole drill (start-up and audit included); ``latency`` how long payments took, first
    attempt to final answer (``p50``, ``p99``, ``max``, in seconds); ``faults`` the faults
    injected per proxy and kind; ``events`` what was done to the system, with its time;
    ``target`` what the clients paid through (``"gateway"`` or ``"webhooks"``).
    """

    scenario: str
    store: str
    idempotency: bool
    clients: int
    payments: int
    workers: int
    seed: int
    audit: DrillAudit
    attempts: int
    seconds: float
    wall: float
    faults: Mapping[str, Mapping[str, int]]
    latency: Mapping[str, float] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    target: str = "gateway"

    @property
    def ok(self) -> bool:
        """Nothing duplicated, missing, mismatched or stray."""
        return self.audit.ok

    @property
    def throughput(self) -> float:
        """Payments per second of the payment phase."""
        return self.audit.expected / self.seconds if self.seconds > 0 else 0.0

    @property
    def retries_per_payment(self) -> float:
        """Requests sent beyond the first, per payment."""
        expected = self.audit.expected
        return (self.attempts - expected) / expected if expected else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (``--json``)."""
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "audit"
        }
        a = self.audit
        data["audit"] = {
            f.name: getattr(a, f.name) for f in dataclasses.fields(a) if f.name != "examples"
        }
        data["audit"]["missing"] = a.missing
        data["audit"]["examples"] = {k: list(v) for k, v in a.examples.items()}
        data["faults"] = {side: dict(kinds) for side, kinds in self.faults.items()}
        data["latency"] = {name: round(value, 3) for name, value in self.latency.items()}
        data["events"] = list(self.events)
        data.update(
            ok=self.ok,
            throughput=round(self.throughput, 2),
            retries_per_payment=round(self.retries_per_payment, 3),
            seconds=round(self.seconds, 3),
            wall=round(self.wall, 3),
        )
        return data


def latency(payments: Iterable[Payment]) -> dict[str, float]:
    """How long payments took: ``p50``, ``p99`` and ``max`` seconds (nearest rank)."""
    ordered = sorted(payment.seconds for payment in payments)
    if not ordered:
        return {}

    def rank(share: float) -> float:
        return ordered[max(0, math.ceil(share * len(ordered)) - 1)]

    return {"p50": rank(0.5), "p99": rank(0.99), "max": ordered[-1]}


def drill_markdown(reports: Sequence[DrillReport]) -> str:
    """The reports as a Markdown table, one row each (for ``docs/reliability.md``)."""
    head = (
        "| scenario | store | idempotency | payments | faults injected | payments/s | "
        "retries/payment | duplicated | missing | mismatched | wall |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    rows = []
    for r in reports:
        a = r.audit
        faults = sum(n for kinds in r.faults.values() for n in kinds.values())
        missing = f"{a.missing}" + (
            f" ({a.lost} lost, {a.unfinished} unfinished)" if a.missing else ""
        )
        rows.append(
            f"| {r.scenario} | {r.store} | {'on' if r.idempotency else 'off'} | "
            f"{r.clients} x {r.payments} | {faults} | {r.throughput:.1f} | "
            f"{r.retries_per_payment:.2f} | {a.duplicated} | {missing} | {a.mismatched} | "
            f"{r.wall:.0f} s |"
        )
    return head + "\n".join(rows) + "\n"


# -- reading a file --------------------------------------------------------------------------------


def _from_data(
    data: Mapping[str, Any], source: str, lines: Sequence[str] | None, name: str
) -> Scenario:
    problems = Problems(source, lines, "the drill scenario")
    from tools.drill.schema import File

    model = problems.validated(File, data)
    plans = {side: getattr(model.chaos, side) for side in SIDES}
    for side, plan in plans.items():
        for loc, message in plan.duplicate_names(("chaos", side)) if plan is not None else ():
            problems.add(loc, message)
    problems.raise_if_any()
    drill, gw = model.drill, model.gateway
    options: dict[str, Any] = {
        "name": drill.name or name,
        "description": drill.description,
        "clients": drill.clients,
        "payments": drill.payments,
        "target": drill.target,
        "store": drill.store,
        "workers": drill.workers,
        "upstream_workers": drill.upstream_workers,
        "seed": drill.seed,
        "idempotency": drill.idempotency,
        "deadline": drill.deadline,
        "attempt_timeout": drill.attempt_timeout,
        "fail_after_commit": drill.fail_after_commit,
        "settle": drill.settle,
        "gateway": GatewaySettings(**gw.model_dump()),
        "events": tuple(_event(event) for event in model.events),
        "source": source,
    }
    for side, plan in plans.items():
        if plan is not None:
            options[f"{side}_rules"] = plan.to_rules()
            options[f"{side}_paused"] = plan.paused
            options[f"{side}_seed"] = plan.seed
    for loc, message in _conflicts({**_defaults(), **options}):
        problems.add(loc, message)
    problems.raise_if_any()
    return Scenario(**options)


def _defaults() -> dict[str, Any]:
    """Every field of ``Scenario`` that has a default, with it."""
    out: dict[str, Any] = {}
    for spec in dataclasses.fields(Scenario):
        if spec.default is not dataclasses.MISSING:
            out[spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            out[spec.name] = spec.default_factory()
    return out


def _event(model: Any) -> DrillEvent:
    proxy: Any = getattr(model, "proxy", "both")
    proxies: tuple[Side, ...] = SIDES if proxy == "both" else (proxy,)
    extra = {name: getattr(model, name) for name in ("down", "up", "times") if hasattr(model, name)}
    return DrillEvent(action=model.action, at=model.at, after=model.after, proxies=proxies, **extra)
