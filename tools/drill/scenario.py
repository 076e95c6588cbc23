"""The exactly-once drill's pure half: what to run (``Scenario``) and what came of it (``audit``).

A scenario file (``examples/drills/*.toml``, run by ``python -m tools.drill``) describes one
drill; ``runner.py`` runs it. Map of the file::

    [drill]                  clients, payments (per client), target, store, workers, seed,
                             idempotency, deadline, attempt_timeout, fail_after_commit, settle
    [gateway]                the generated policy's knobs: lease, read_timeout, total_timeout,
                             not_found_after, reconcile_interval, store_timeout, access_log,
                             log_level
    [outbox]                 target = "outbox" only: workers, rollback, pace, worker_kills,
                             kill_every, down, kill_app, kill_app_after, lease, timeout,
                             schedule, jitter, rate_limit, concurrency, breaker
    [saga]                   target = "saga" only: database, workers, concurrency, pace,
                             worker_kills, kill_every, down, lease, attempt_timeout,
                             step_attempts, backoff, refused, declined, unavailable,
                             timeout, lost
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
Rule 5: ``target = "outbox"`` drills the sending side: each client is an application
        process committing charges to its own SQLite file, each a business row and
        ``Outbox.enqueue`` in one transaction (a share ``rollback`` rolled back after the
        enqueue), and ``[outbox] workers`` ``OutboxWorker`` processes deliver them to the
        webhook drill's receiver through the clients' chaos proxy, while the drill
        SIGKILLs workers and, once, an application right after a COMMIT. The audit
        (``outbox_audit``) compares the applications' databases with the ledger, the
        outbox's deliveries and the requests the receiver saw: every committed charge
        booked exactly once, no rolled-back one booked, every delivery delivered, one
        ``webhook-id`` per event on the wire. The same refusals as Rule 4 hold.
Rule 6: ``target = "saga"`` drills sagas (``tools.drill.saga``): ``clients x payments``
        orders, each a ``checkout`` saga (``examples/checkout``: reserve stock, charge,
        ship), run by ``[saga] workers`` ``SagaWorker`` processes against the example's
        partners, whose payments partner fails on its own (503 before the work, no
        answer or a 502 after it); the drill SIGKILLs workers as it goes. The audit
        (``saga_audit``) reads the partners' ledger and the saga log: no reservation
        left reserved without a shipment (*orphaned*), no order charged twice
        (*double_charged*), no charge standing without a shipment (*charged_unshipped*),
        no shipment without a charge standing (*shipped_unpaid*), no order reserved or
        shipped twice, and every saga finished (*unfinished*); sagas that need a person
        are counted and listed apart (*needs_attention*). There is no chaos proxy
        (no ``[chaos.*]`` rules) and no ``[[events]]``.
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
    "OutboxAudit",
    "OutboxSettings",
    "Payment",
    "SagaAudit",
    "SagaSettings",
    "Wire",
    "Scenario",
    "audit",
    "drill_markdown",
    "gateway_policy",
    "latency",
    "outbox_audit",
    "ranks",
    "saga_audit",
]

Store = Literal["sqlite", "redis"]
Target = Literal["gateway", "webhooks", "outbox", "saga"]
TARGETS: tuple[Target, ...] = ("gateway", "webhooks", "outbox", "saga")
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
class OutboxSettings:
    """The sending side of ``target = "outbox"`` (Rule 5).

    Args:
        workers: ``OutboxWorker`` processes delivering the applications' events.
        rollback: the share of the applications' transactions rolled back after the
            enqueue (their events must never be delivered).
        pace: seconds an application waits between two transactions.
        worker_kills: how many times a worker process, chosen at random, is SIGKILLed at
            a random moment (every ``kill_every`` seconds on average, from half to one and
            a half times that) and started again ``down`` seconds later.
        kill_app, kill_app_after: SIGKILL the first application once, right after the
            COMMIT of its first committed transaction from this share of its
            transactions on, then start it again (it carries on where its database says).
        lease, timeout: the workers' lease on a claimed delivery and their patience with
            one attempt (the lease must be longer).
        schedule, jitter: the outbox's retry schedule (seconds; never decreasing).
        rate_limit, concurrency: the receiver's endpoint's limits (``"100/second"``,
            requests in flight), shared by every worker.
        breaker: the workers' per-endpoint circuit breaker.
    """

    workers: int = 2
    rollback: float = 0.1
    pace: float = 0.0
    worker_kills: int = 3
    kill_every: float = 1.0
    down: float = 0.5
    kill_app: bool = True
    kill_app_after: float = 0.5
    lease: float = 2.0
    timeout: float = 1.5
    schedule: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0, 2.0, 2.0, 2.0)
    jitter: float = 0.1
    rate_limit: str | None = None
    concurrency: int = 10
    breaker: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaSettings:
    """The saga drill's knobs (``target = "saga"``, Rule 6).

    Args:
        database: where the saga log lives: ``"sqlite"`` (a file in the drill's directory)
            or ``"postgresql"`` (``$SUREFOOT_POSTGRES_DSN``, in tables of a fresh prefix
            dropped at the end).
        workers, concurrency: ``SagaWorker`` processes, and sagas each runs at once.
        pace: seconds between two orders started (0: all at once).
        worker_kills, kill_every, down: how many times a worker process, chosen at random,
            is SIGKILLed (every ``kill_every`` seconds on average) and started again
            ``down`` seconds later.
        lease: the workers' lease on a claimed saga.
        attempt_timeout: seconds one HTTP attempt to a partner may take.
        step_attempts, backoff: each step's runs and its first backoff (seconds).
        refused, declined: the shares of orders whose address shipping refuses, and
            whose card payments declines.
        unavailable, timeout, lost: the payments partner's shares of charge requests
            answered 503 before the work, never answered after it, answered 502 after it.
    """

    database: Literal["sqlite", "postgresql"] = "sqlite"
    workers: int = 2
    concurrency: int = 8
    pace: float = 0.0
    worker_kills: int = 4
    kill_every: float = 2.0
    down: float = 0.3
    lease: float = 3.0
    attempt_timeout: float = 0.5
    step_attempts: int = 8
    backoff: float = 0.1
    refused: float = 0.1
    declined: float = 0.0
    unavailable: float = 0.1
    timeout: float = 0.05
    lost: float = 0.05


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
            the upstream), ``"webhooks"`` (the clients are webhook senders, and a
            ``WebhookReceiver`` in the ledger app's process runs each event once; Rule 4)
            or ``"outbox"`` (the clients are applications whose transactions enqueue
            webhooks that outbox workers deliver to that receiver; Rule 5).
        store: the gateway's idempotency store: ``"sqlite"`` (a file) or ``"redis"`` (a
            private redis-server with an append-only file).
        workers: the gateway's worker processes; ``upstream_workers`` the upstream's.
        seed: seeds the fault plans, the upstream's failures and the clients' jitter.
        idempotency: protect ``POST /charges`` at the gateway (False: the comparison run).
        deadline: seconds a client keeps trying one payment before giving up.
        attempt_timeout: seconds one attempt may take.
        fail_after_commit: the upstream's own share of charges booked then answered 500.
        settle: seconds the audit waits, at most, for outcome-unknown keys to be settled
            (``target = "outbox"``: for every delivery to be delivered).
        outbox: the sending side of ``target = "outbox"``.
        saga: the saga drill's knobs (``target = "saga"``; ``clients x payments`` orders).
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
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    saga: SagaSettings = field(default_factory=SagaSettings)
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
        app's failures), ``jitter`` (the clients' backoff; with ``target = "outbox"``, the
        applications' rollbacks, the workers' jitter and which worker is killed when)."""
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
    if target not in TARGETS:
        found.append(
            (
                ("drill", "target"),
                f"expected 'gateway', 'webhooks', 'outbox' or 'saga', got {target!r}",
            )
        )
    if target in ("webhooks", "outbox"):
        if values["upstream_rules"]:
            found.append(
                (
                    ("chaos", "upstream"),
                    f"expected no [[chaos.upstream.rules]] with target = '{target}' (the "
                    "receiver runs in the ledger app's process: there is no upstream side), "
                    f"got {len(values['upstream_rules'])}",
                )
            )
        if values["fail_after_commit"]:
            found.append(
                (
                    ("drill", "fail_after_commit"),
                    f"expected 0 with target = '{target}' (a receiver releases an event "
                    "whose handler failed: the sender's retry books a handler that "
                    f"committed anyway again), got {_num(values['fail_after_commit'])}",
                )
            )
    if target == "outbox":
        found.extend(_outbox_conflicts(values["outbox"]))
    if target == "saga":
        found.extend(_saga_conflicts(values))
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


def _saga_conflicts(values: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with a saga drill (Rule 6) across its fields."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    for side in SIDES:
        if values[f"{side}_rules"]:
            found.append(
                (
                    ("chaos", side),
                    "expected no [[chaos.*.rules]] with target = 'saga' (the payments partner "
                    f"fails on its own: [saga] unavailable, timeout, lost), got "
                    f"{len(values[f'{side}_rules'])}",
                )
            )
    if values["events"]:
        found.append(
            (
                ("events",),
                f"expected no [[events]] with target = 'saga', got {len(values['events'])}",
            )
        )
    g: SagaSettings = values["saga"]
    faults = g.unavailable + g.timeout + g.lost
    if faults > 1:
        found.append(
            (
                ("saga", "unavailable"),
                f"expected unavailable + timeout + lost <= 1, got {_num(faults)}",
            )
        )
    return found


def _outbox_conflicts(o: OutboxSettings) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong in an ``[outbox]`` table across its fields (the schema checks each)."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    if not 0.1 <= o.timeout < o.lease:
        found.append(
            (
                ("outbox", "lease"),
                f"expected seconds longer than timeout ({_num(o.timeout)}): a lease shorter "
                f"than an attempt hands a delivery still in flight to another worker, got "
                f"{_num(o.lease)}",
            )
        )
    previous = 0.0
    for index, delay in enumerate(o.schedule):
        if delay < previous:
            found.append(
                (
                    ("outbox", "schedule", index),
                    f"expected a delay no shorter than the one before ({_num(previous)} s): a "
                    f"schedule never decreases, got {_num(delay)}",
                )
            )
        previous = max(previous, delay)
    if o.rate_limit is not None:
        from surefoot.ratelimit import parse_limit

        try:
            parse_limit(o.rate_limit)
        except ConfigurationError:
            found.append(
                (
                    ("outbox", "rate_limit"),
                    f"expected a limit such as '100/second', got {o.rate_limit!r}",
                )
            )
    if o.workers < 1:
        found.append((("outbox", "workers"), f"expected a whole number >= 1, got {o.workers!r}"))
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
class Wire:
    """One request that reached the receiver (``target = "outbox"``): its ``webhook_id``
    header, the ``event`` its body is about (the charge's reference), and whether the
    receiver ``absorbed`` it (answered it from its idempotency layer: a duplicate)."""

    webhook_id: str | None
    event: str | None
    status: int | None = None
    absorbed: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxAudit:
    """The sending side's audit (``target = "outbox"``, Rule 5).

    Figures: ``transactions`` the applications were to run, ``committed`` and
    ``rolled_back`` of them, ``booked`` ledger charges, ``messages`` in the outboxes,
    ``attempts`` deliveries attempted (claims that were not put back unsent: a killed
    worker's included), ``requests`` that reached the receiver and ``absorbed`` of them
    (duplicates answered without the app), ``worker_kills`` and ``app_kills``.

    Problems (all must be 0): ``lost`` (committed, never booked), ``doubled`` (booked more
    than once; ``extra_charges`` the extra bookings), ``rolled_back_booked``, ``stray``
    (booked, never attempted by an application), ``unrecorded`` (committed without an
    outbox message), ``orphaned`` (a message of a transaction not committed),
    ``undelivered`` (a delivery not ``delivered`` at the end), ``unaccounted`` (a
    transaction neither committed nor rolled back), ``id_changed`` (an event that reached
    the receiver under another ``webhook-id`` than its own).
    """

    transactions: int
    committed: int
    rolled_back: int
    booked: int
    messages: int
    attempts: int
    requests: int
    absorbed: int
    worker_kills: int
    app_kills: int
    lost: int
    doubled: int
    extra_charges: int
    rolled_back_booked: int
    stray: int
    unrecorded: int
    orphaned: int
    undelivered: int
    unaccounted: int
    id_changed: int
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    #: The problem counts, in the order of the reports.
    PROBLEMS = (
        "lost",
        "doubled",
        "rolled_back_booked",
        "stray",
        "unrecorded",
        "orphaned",
        "undelivered",
        "unaccounted",
        "id_changed",
    )

    @property
    def ok(self) -> bool:
        """Every problem count is 0."""
        return not any(getattr(self, name) for name in self.PROBLEMS)

    def drill_audit(self) -> DrillAudit:
        """The same run in the other targets' terms (a committed charge is a payment; told
        201: delivered; lost: booked nowhere though delivered; unfinished: not delivered)."""
        examples = self.examples
        return DrillAudit(
            expected=self.committed,
            succeeded=self.committed - self.undelivered,
            recorded=self.booked,
            duplicated=self.doubled,
            extra_charges=self.extra_charges,
            lost=self.lost,
            unfinished=self.undelivered,
            unfinished_booked=0,
            mismatched=self.id_changed,
            stray=self.stray + self.rolled_back_booked + self.orphaned + self.unaccounted,
            unknown_keys=0,
            replayed=self.absorbed,
            examples={
                name: examples[name]
                for name in ("lost", "duplicated", "stray", "unfinished")
                if name in examples
            },
        )


def outbox_audit(
    *,
    transactions: int,
    committed: Iterable[str],
    rolled_back: Iterable[str],
    ledger: Mapping[str, Sequence[str]],
    deliveries: Mapping[str, tuple[str, int]],
    wire: Iterable[Wire],
    worker_kills: int = 0,
    app_kills: int = 0,
) -> OutboxAudit:
    """Audit an outbox drill (Rule 5).

    Args:
        transactions: the transactions the applications were to run.
        committed: the ids of the charges in the applications' databases.
        rolled_back: the ids of the charges whose transaction the applications rolled back.
        ledger: reference (a charge id) -> the ids the ledger booked for it.
        deliveries: message id -> (the delivery's state, its attempts), one endpoint.
        wire: every request that reached the receiver.

    Example:
        >>> a = outbox_audit(transactions=2, committed=["c1"], rolled_back=["c2"],
        ...                  ledger={"c1": ["ch_1"]}, deliveries={"c1": ("delivered", 2)},
        ...                  wire=[Wire(webhook_id="c1", event="c1")])
        >>> a.ok, a.committed, a.attempts
        (True, 1, 2)
    """
    examples: dict[str, list[str]] = {}

    def note(problem: str, reference: str) -> None:
        listed = examples.setdefault(problem, [])
        if len(listed) < 5:
            listed.append(reference)

    done, said_undone = set(committed), set(rolled_back)
    undone = said_undone - done  # a charge in the database was committed, whatever was said
    lost = doubled = extra = undone_booked = stray = booked = 0
    for reference in sorted(done):
        if not ledger.get(reference):
            lost += 1
            note("lost", reference)
    for reference, ids in ledger.items():
        booked += len(ids)
        if len(ids) > 1:
            doubled += 1
            extra += len(ids) - 1
            note("duplicated", reference)
        if reference in undone:
            undone_booked += 1
            note("rolled_back_booked", reference)
        elif reference not in done:
            stray += 1
            note("stray", reference)
    unrecorded = orphaned = undelivered = 0
    for reference in sorted(done - deliveries.keys()):
        unrecorded += 1
        note("unrecorded", reference)
    for message_id, (state, _) in sorted(deliveries.items()):
        if message_id not in done:
            orphaned += 1
            note("orphaned", message_id)
        elif state != "delivered":
            undelivered += 1
            note("unfinished", message_id)
    requests = absorbed = 0
    seen: dict[str, set[str | None]] = {}
    for request in wire:
        requests += 1
        absorbed += request.absorbed
        seen.setdefault(request.event or "", set()).add(request.webhook_id)
    id_changed = 0
    for event, webhook_ids in sorted(seen.items()):
        if webhook_ids != {event}:
            id_changed += 1
            note("id_changed", event)
    unaccounted = max(0, transactions - len(done | undone)) + len(done & said_undone)
    return OutboxAudit(
        transactions=transactions,
        committed=len(done),
        rolled_back=len(undone),
        booked=booked,
        messages=len(deliveries),
        attempts=sum(attempts for _, attempts in deliveries.values()),
        requests=requests,
        absorbed=absorbed,
        worker_kills=worker_kills,
        app_kills=app_kills,
        lost=lost,
        doubled=doubled,
        extra_charges=extra,
        rolled_back_booked=undone_booked,
        stray=stray,
        unrecorded=unrecorded,
        orphaned=orphaned,
        undelivered=undelivered,
        unaccounted=unaccounted,
        id_changed=id_changed,
        examples={problem: tuple(refs) for problem, refs in examples.items()},
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class SagaAudit:
    """The saga drill's audit (``target = "saga"``, Rule 6).

    Figures: ``orders`` started, and by final state ``completed``, ``compensated``,
    ``resolved``; ``charges``, ``refunds`` and ``shipments`` in the partners' ledger;
    ``worker_kills``. ``needs_attention`` (sagas waiting for a person) is counted and its
    sagas listed in ``attention``, apart from the problems.

    Problems (all must be 0): ``orphaned`` (an order with a reservation still reserved and
    no shipment), ``double_charged`` (an order charged more than once; ``extra_charges``
    the extra ones), ``charged_unshipped`` (a charge neither shipped nor refunded),
    ``shipped_unpaid`` (a shipment without a charge that stands), ``double_reserved``,
    ``double_shipped``, ``unfinished`` (a saga still running or compensating), ``stray``
    (an entry in the ledger for an order never started), ``wrong_state`` (a completed saga
    without its shipment, or a compensated one with it). ``orphaned``, ``charged_unshipped``
    and ``shipped_unpaid`` are not counted for a saga in ``needs_attention`` or
    ``resolved``: a person has it in hand.
    """

    orders: int
    completed: int
    compensated: int
    resolved: int
    needs_attention: int
    charges: int
    refunds: int
    shipments: int
    worker_kills: int
    orphaned: int
    double_charged: int
    extra_charges: int
    charged_unshipped: int
    shipped_unpaid: int
    double_reserved: int
    double_shipped: int
    unfinished: int
    stray: int
    wrong_state: int
    attention: tuple[str, ...] = ()
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    #: The problem counts, in the order of the reports.
    PROBLEMS = (
        "orphaned",
        "double_charged",
        "charged_unshipped",
        "shipped_unpaid",
        "double_reserved",
        "double_shipped",
        "unfinished",
        "stray",
        "wrong_state",
    )

    @property
    def ok(self) -> bool:
        """Every problem count is 0."""
        return not any(getattr(self, name) for name in self.PROBLEMS)

    def drill_audit(self) -> DrillAudit:
        """The same run in the other targets' terms (an order is a payment; finished:
        told 201; a charge twice: duplicated; a charge or a reservation left standing, or
        a shipment unpaid: stray)."""
        examples = self.examples
        return DrillAudit(
            expected=self.orders,
            succeeded=self.orders - self.unfinished,
            recorded=self.charges,
            duplicated=self.double_charged + self.double_reserved + self.double_shipped,
            extra_charges=self.extra_charges,
            lost=0,
            unfinished=self.unfinished,
            unfinished_booked=0,
            mismatched=self.wrong_state,
            stray=self.orphaned + self.charged_unshipped + self.shipped_unpaid + self.stray,
            unknown_keys=self.needs_attention,
            replayed=0,
            examples=dict(examples),
        )


def saga_audit(
    *,
    states: Mapping[str, str],
    reservations: Mapping[str, Sequence[tuple[str, str]]],
    charges: Mapping[str, Sequence[str]],
    refunds: Mapping[str, str],
    shipments: Mapping[str, Sequence[str]],
    worker_kills: int = 0,
) -> SagaAudit:
    """Audit a saga drill (Rule 6).

    Args:
        states: each order's saga state, by order id (every order started).
        reservations: order -> its reservations' (id, state), state ``reserved`` or
            ``released``.
        charges: order -> its charge ids.
        refunds: charge id -> refund id.
        shipments: order -> its shipment ids.
        worker_kills: how many workers the drill killed.

    Example:
        >>> a = saga_audit(states={"o1": "completed"}, reservations={"o1": [("r1", "reserved")]},
        ...                charges={"o1": ["c1", "c2"]}, refunds={}, shipments={"o1": ["s1"]})
        >>> a.double_charged, a.extra_charges, a.ok
        (1, 1, False)
    """
    examples: dict[str, list[str]] = {}
    counts = dict.fromkeys(SagaAudit.PROBLEMS, 0)

    def note(problem: str, order: str, n: int = 1) -> None:
        counts[problem] += n
        listed = examples.setdefault(problem, [])
        if len(listed) < 5:
            listed.append(order)

    extra = 0
    for order in sorted({*reservations, *charges, *shipments} - set(states)):
        note("stray", order)
    for order, state in sorted(states.items()):
        held = [r for r, s in reservations.get(order, ()) if s == "reserved"]
        paid = [c for c in charges.get(order, ()) if c not in refunds]
        shipped = list(shipments.get(order, ()))
        # A saga a person has (or will have) in hand is listed, not counted as a loss; a
        # second charge, reservation or shipment is counted whatever the state.
        settled = state not in ("needs_attention", "resolved")
        if settled and held and not shipped:
            note("orphaned", order)
        if len(charges.get(order, ())) > 1:
            note("double_charged", order)
            extra += len(charges[order]) - 1
        if settled and paid and not shipped:
            note("charged_unshipped", order)
        if settled and shipped and not paid:
            note("shipped_unpaid", order)
        if len(reservations.get(order, ())) > 1:
            note("double_reserved", order)
        if len(shipped) > 1:
            note("double_shipped", order)
        if state in ("running", "compensating"):
            note("unfinished", order)
        if (state == "completed") != bool(shipped) and state in ("completed", "compensated"):
            note("wrong_state", order)
    by_state = {s: sum(1 for v in states.values() if v == s) for s in set(states.values())}
    return SagaAudit(
        orders=len(states),
        completed=by_state.get("completed", 0),
        compensated=by_state.get("compensated", 0),
        resolved=by_state.get("resolved", 0),
        needs_attention=by_state.get("needs_attention", 0),
        charges=sum(len(v) for v in charges.values()),
        refunds=len(refunds),
        shipments=sum(len(v) for v in shipments.values()),
        worker_kills=worker_kills,
        extra_charges=extra,
        attention=tuple(sorted(o for o, s in states.items() if s == "needs_attention")),
        examples={k: tuple(v) for k, v in examples.items()},
        **counts,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class DrillReport:
    """One drill's results.

    ``seconds`` is the payment phase (first payment started to last one done), ``wall`` the
    whole drill (start-up and audit included); ``latency`` how long payments took, first
    attempt to final answer (``p50``, ``p99``, ``max``, in seconds); ``faults`` the faults
    injected per proxy and kind; ``events`` what was done to the system, with its time;
    ``target`` what the clients paid through (``"gateway"``, ``"webhooks"`` or
    ``"outbox"`` or ``"saga"``); ``outbox`` the sending side's audit of an outbox drill;
    ``saga`` the saga drill's audit.
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
    outbox: OutboxAudit | None = None
    saga: SagaAudit | None = None

    @property
    def ok(self) -> bool:
        """Nothing duplicated, missing, mismatched or stray (an outbox or a saga drill: and
        every problem of its own audit 0)."""
        return (
            self.audit.ok
            and (self.outbox is None or self.outbox.ok)
            and (self.saga is None or self.saga.ok)
        )

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
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("audit", "outbox", "saga")
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
        if self.outbox is not None:
            o = self.outbox
            data["outbox"] = {
                f.name: getattr(o, f.name) for f in dataclasses.fields(o) if f.name != "examples"
            }
            data["outbox"]["examples"] = {k: list(v) for k, v in o.examples.items()}
        if self.saga is not None:
            g = self.saga
            data["saga"] = {
                f.name: getattr(g, f.name) for f in dataclasses.fields(g) if f.name != "examples"
            }
            data["saga"]["attention"] = list(g.attention)
            data["saga"]["examples"] = {k: list(v) for k, v in g.examples.items()}
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
    return ranks(payment.seconds for payment in payments)


def ranks(seconds: Iterable[float]) -> dict[str, float]:
    """``p50``, ``p99`` and ``max`` of ``seconds`` (nearest rank); empty when there are none."""
    ordered = sorted(seconds)
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
    table = head + "\n".join(rows) + "\n"
    outboxes = [r for r in reports if r.outbox is not None]
    if not outboxes:
        return table
    table += (
        "\n| scenario | store | committed | rolled back | worker kills | app kills | "
        "deliveries attempted | duplicates absorbed | lost | doubled | rolled back booked | "
        "undelivered | webhook-id changed | wall |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: |\n"
    )
    for r in outboxes:
        o = r.outbox
        assert o is not None
        table += (
            f"| {r.scenario} | {r.store} | {o.committed} | {o.rolled_back} | {o.worker_kills} | "
            f"{o.app_kills} | {o.attempts} | {o.absorbed} | {o.lost} | {o.doubled} | "
            f"{o.rolled_back_booked} | {o.undelivered} | {o.id_changed} | {r.wall:.0f} s |\n"
        )
    return table


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
        "outbox": OutboxSettings(
            **{**model.outbox.model_dump(), "schedule": tuple(model.outbox.schedule)}
        ),
        "saga": SagaSettings(**model.saga.model_dump()),
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
