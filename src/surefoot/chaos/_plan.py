"""The fault plan: which request gets which fault, decided without I/O and without a clock.

A ``FaultPlan`` is an ordered list of ``Rule`` objects and one seeded ``random.Random``.
``decide(method, path, headers)`` walks the rules in order; for each rule that matches the
request it draws once from the generator, and the first rule whose draw falls under its
``probability`` wins: its fault is returned as a ``Fault`` (the rule's name, the fault's
parameters, and the drawn delay for ``Delay``). The transports (``transport.py``) apply it.

Rule 1: the same seed and the same sequence of ``decide`` calls give the same faults. Every
matching rule draws exactly once per call (even at probability 1.0), and a ``Delay`` that
hits draws its jitter once more, so a rule's presence never depends on another's outcome.
Rule 2: a rule matches when the method is one of its ``methods`` (any when empty), the path
matches its glob (``fnmatch``, case-sensitive: ``*`` also crosses ``/``), and every one of its
``headers`` is present with exactly that value (names case-insensitive).
Rule 3: ``decide``, ``replace``, ``pause``, ``resume`` and ``counts`` are thread-safe (one
lock). A paused plan decides nothing and draws nothing; ``replace`` keeps the generator and
the counts going, so a run stays reproducible across a change made at the same point.
Rule 4: every fault returned by ``decide`` is counted, by rule name and by fault kind.
Rule 5: a plan from configuration is validated as a whole: one ``ConfigurationError``
lists every problem as ``file:line: chaos.rules[N].field: expected ..., got ...``.
Rule 6: this module never imports httpx or asyncio and never reads the clock; pydantic is
imported only when a configuration is validated (the schema is ``_schema.FaultPlanTable``).
Rule 7: ``release_order(n)`` is the order in which a ``Reorder`` batch of ``n`` held
requests goes through: a permutation of ``range(n)`` (positions in arrival order), drawn by
a Fisher-Yates shuffle with ``n - 1`` draws of ``random()`` (stable across Python versions,
unlike ``random.shuffle``). A paused plan draws nothing and keeps the arrival order. The
holding and the waiting are the adapters' (``transport.py``, ``proxy.py``); the plan only
decides which requests are held (``decide``) and in which order they go (``release_order``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import random as _random
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from surefoot._config import Problems, read_toml, require_pydantic
from surefoot._masking import shown
from surefoot.errors import ConfigurationError

__all__ = [
    "FAULT_KINDS",
    "Abort",
    "Delay",
    "Duplicate",
    "FailAfter",
    "Fault",
    "FaultPlan",
    "FaultSpec",
    "Hang",
    "Reorder",
    "Reset",
    "Rule",
    "SlowBody",
]

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_METHOD = re.compile(r"[A-Z]+")
#: The largest ``Reorder.window``: a batch is held in memory, one waiting request each.
MAX_WINDOW = 1000
#: The longest ``Reorder.hold``, in seconds.
MAX_HOLD = 3600.0


# -- faults --------------------------------------------------------------------------------


def _seconds(owner: str, name: str, value: object, *, positive: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):  # type: ignore[operator]
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(f"{owner}.{name}: expected a finite number {bound}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Delay:
    """Wait ``seconds`` plus a uniform draw in ``[0, jitter]``, then forward the request."""

    kind: ClassVar[str] = "delay"
    seconds: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        _seconds("Delay", "seconds", self.seconds)
        _seconds("Delay", "jitter", self.jitter)


@dataclass(frozen=True, kw_only=True, slots=True)
class Abort:
    """Answer ``status`` at once (with ``Retry-After`` if set); the upstream is never called."""

    kind: ClassVar[str] = "abort"
    status: int = 503
    retry_after: float | None = None

    def __post_init__(self) -> None:
        status = self.status
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ConfigurationError(
                f"Abort.status: expected an HTTP status 100-599, got {status!r}"
            )
        if self.retry_after is not None:
            _seconds("Abort", "retry_after", self.retry_after)


@dataclass(frozen=True, kw_only=True, slots=True)
class Reset:
    """Fail with a connection error before forwarding (``httpx.ConnectError``)."""

    kind: ClassVar[str] = "reset"


@dataclass(frozen=True, kw_only=True, slots=True)
class Hang:
    """Never answer: wait the request's ``read`` (or ``pool``) timeout, then raise it.

    The upstream is never called. Without that timeout the wait never ends.
    """

    kind: ClassVar[str] = "hang"
    phase: Literal["read", "pool"] = "read"

    def __post_init__(self) -> None:
        if self.phase not in ("read", "pool"):
            raise ConfigurationError(f"Hang.phase: expected 'read' or 'pool', got {self.phase!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class FailAfter:
    """Forward, let the upstream finish, then lose its answer.

    ``lose``: ``"reset"`` (``httpx.ReadError``), ``"502"`` (a 502 instead of the answer) or
    ``"truncate"`` (half the body, then ``httpx.RemoteProtocolError``).
    """

    kind: ClassVar[str] = "fail_after"
    lose: Literal["reset", "502", "truncate"] = "reset"

    def __post_init__(self) -> None:
        if self.lose not in ("reset", "502", "truncate"):
            raise ConfigurationError(
                f"FailAfter.lose: expected 'reset', '502' or 'truncate', got {self.lose!r}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class Duplicate:
    """Deliver the request to the upstream twice; the caller gets one answer.

    In sequence (default) the copy is sent once the first answer was read, and the caller
    gets the copy's answer (as if the first was lost and the request sent again).
    ``concurrent=True`` sends both at once and the caller gets the original's answer.
    """

    kind: ClassVar[str] = "duplicate"
    concurrent: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class SlowBody:
    """Deliver the response body at ``bytes_per_second``."""

    kind: ClassVar[str] = "slow_body"
    bytes_per_second: float

    def __post_init__(self) -> None:
        _seconds("SlowBody", "bytes_per_second", self.bytes_per_second, positive=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Reorder:
    """Hold matching requests, then let them through one at a time in a shuffled order.

    A batch opens with the first held request and closes when ``window`` requests are
    held or ``hold`` seconds after it opened, whichever comes first; its requests then go
    through in ``FaultPlan.release_order`` order, each once the one before it was answered
    (or failed, or its caller gave up). Only adapters that can hold one request while
    another arrives apply it (``AsyncChaosTransport``, ``ChaosProxy``).
    """

    kind: ClassVar[str] = "reorder"
    window: int
    hold: float = 5.0

    def __post_init__(self) -> None:
        window = self.window
        if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= MAX_WINDOW:
            raise ConfigurationError(
                f"Reorder.window: expected a whole number of requests 2-{MAX_WINDOW}, "
                f"got {window!r}"
            )
        _seconds("Reorder", "hold", self.hold, positive=True)
        if self.hold > MAX_HOLD:
            raise ConfigurationError(
                f"Reorder.hold: expected at most {MAX_HOLD:g} seconds, got {self.hold!r}"
            )


FaultSpec = Delay | Abort | Reset | Hang | FailAfter | Duplicate | SlowBody | Reorder
_SPECS: tuple[type[FaultSpec], ...] = (
    Delay,
    Abort,
    Reset,
    Hang,
    FailAfter,
    Duplicate,
    SlowBody,
    Reorder,
)
#: Every fault kind, in the order of the documentation.
FAULT_KINDS: tuple[str, ...] = tuple(spec.kind for spec in _SPECS)


@dataclass(frozen=True, kw_only=True, slots=True)
class Fault:
    """A decision: apply ``spec`` (from rule ``rule``) to this request.

    ``delay`` is the wait drawn for a ``Delay`` (seconds plus jitter), else 0.0.
    """

    rule: str
    spec: FaultSpec
    delay: float = 0.0

    @property
    def kind(self) -> str:
        """The fault's kind: ``"delay"``, ``"abort"``..."""
        return self.spec.kind


# -- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    """When to inject ``fault``.

    Example:
        >>> Rule(name="charges-reset", fault=Reset(), methods=("POST",),
        ...      path="/v1/charges*", probability=0.2)

    Args:
        name: unique in its plan (letters, digits, ``_``, ``-``, ``.``); counts and events
            name it.
        fault: the fault to apply.
        methods: the methods it applies to (upper case); empty means every method.
        path: a glob over the URL path (no query string), ``*`` by default.
        headers: headers the request must carry with exactly these values.
        probability: the chance, in [0, 1], that a matching request gets the fault.
    """

    name: str
    fault: FaultSpec
    methods: tuple[str, ...] = ()
    path: str = "*"
    headers: Mapping[str, str] = field(default_factory=dict)
    probability: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"Rule.name: expected letters, digits, '_', '-' and '.', got {self.name!r}"
            )
        if not isinstance(self.fault, _SPECS):
            raise ConfigurationError(
                f"Rule.fault: expected one of {', '.join(s.__name__ for s in _SPECS)}, "
                f"got {type(self.fault).__name__}"
            )
        methods = tuple(self.methods)
        for method in methods:
            if not isinstance(method, str) or not _METHOD.fullmatch(method):
                raise ConfigurationError(
                    f"Rule.methods: expected upper-case method names, got {method!r}"
                )
        object.__setattr__(self, "methods", methods)
        if not isinstance(self.path, str) or not self.path:
            raise ConfigurationError(
                f"Rule.path: expected a glob such as '/v1/*', got {self.path!r}"
            )
        headers = {}
        for name, value in dict(self.headers).items():
            if not isinstance(name, str) or not name or not isinstance(value, str):
                raise ConfigurationError(
                    f"Rule.headers: expected header names to text values, got {name!r}: {value!r}"
                )
            headers[name.lower()] = value
        object.__setattr__(self, "headers", headers)
        p = self.probability
        if (
            isinstance(p, bool)
            or not isinstance(p, int | float)
            or not (0.0 <= p <= 1.0)  # also refuses nan
        ):
            raise ConfigurationError(f"Rule.probability: expected a number in [0, 1], got {p!r}")

    def to_dict(self) -> dict[str, Any]:
        """The rule as a ``[[chaos.rules]]`` table (``FaultPlan.from_dict`` reads it back)."""
        spec = {f.name: getattr(self.fault, f.name) for f in dataclasses.fields(self.fault)}
        return {
            "name": self.name,
            "fault": self.fault.kind,
            **spec,
            "methods": list(self.methods),
            "path": self.path,
            "headers": dict(self.headers),
            "probability": self.probability,
        }

    def matches(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        """Whether a request matches (Rule 2); ``headers`` has lower-case names."""
        if self.methods and method.upper() not in self.methods:
            return False
        if not fnmatch.fnmatchcase(path, self.path):
            return False
        return all(headers.get(name) == value for name, value in self.headers.items())


def _checked_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    checked = tuple(rules)
    seen: set[str] = set()
    for rule in checked:
        if not isinstance(rule, Rule):
            raise ConfigurationError(f"FaultPlan.rules: expected Rule objects, got {rule!r}")
        if rule.name in seen:
            raise ConfigurationError(f"FaultPlan.rules: rule name {rule.name!r} is used twice")
        seen.add(rule.name)
    return checked


# -- the plan --------------------------------------------------------------------------------


class FaultPlan:
    """An ordered list of rules and a seeded generator: the same seed, the same faults.

    Example:
        >>> plan = FaultPlan(
        ...     [Rule(name="slow", fault=Delay(seconds=0.5, jitter=0.2), probability=0.1),
        ...      Rule(name="lost", fault=FailAfter(lose="reset"), methods=("POST",))],
        ...     seed=42,
        ... )
        >>> plan.decide("POST", "/v1/charges", {})
        Fault(rule='lost', spec=FailAfter(lose='reset'), delay=0.0)

    Args:
        rules: the rules, first match first.
        seed: the generator's seed; None for a random one (``seed`` then says which).
        paused: start paused (decide nothing until ``resume()``).

    Warning:
        Reproducible means the same sequence of ``decide`` and ``release_order`` calls.
        Requests sent concurrently reach ``decide`` in whatever order they arrive, so only a
        sequential run (or one request at a time per plan) replays exactly; a ``Reorder``
        batch closed by its ``hold`` draws its order whenever the hold ends.
    """

    def __init__(
        self, rules: Iterable[Rule] = (), *, seed: int | None = None, paused: bool = False
    ) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError(f"FaultPlan.seed: expected a whole number, got {seed!r}")
        self._rules = _checked_rules(rules)
        #: The seed in use (drawn at random when none was given).
        self.seed: int = seed if seed is not None else _random.SystemRandom().getrandbits(64)
        self._random = _random.Random(self.seed)
        self._paused = bool(paused)
        self._lock = threading.Lock()
        self._by_rule: dict[str, int] = {}
        self._by_kind: dict[str, int] = {}

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> FaultPlan:
        """The plan in the ``[chaos]`` table of the TOML file at ``path``.

        Example:
            >>> plan = FaultPlan.from_toml("chaos.toml")

        Raises:
            ConfigurationError: the file cannot be read, is not TOML, or is invalid; every
                problem is listed as ``file:line: chaos.rules[N].field: expected ..., got ...``.
        """
        data, source, lines = read_toml(path)
        return _from_data(data, source, lines)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> FaultPlan:
        """The plan in ``data["chaos"]`` (a parsed TOML document); same checks as ``from_toml``.

        Example:
            >>> FaultPlan.from_dict({"chaos": {"seed": 1, "rules": [
            ...     {"name": "down", "fault": "abort", "status": 503}]}})
        """
        return _from_data(data, source, None)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in use, in order."""
        with self._lock:
            return self._rules

    @property
    def paused(self) -> bool:
        """True while the plan injects nothing."""
        return self._paused

    def decide(self, method: str, path: str, headers: Mapping[str, str]) -> Fault | None:
        """The fault for this request, or None (see Rule 1 and Rule 2)."""
        lowered = {str(k).lower(): v for k, v in headers.items()}
        with self._lock:
            if self._paused:
                return None
            draw = self._random.random
            for rule in self._rules:
                if not rule.matches(method, path, lowered):
                    continue
                if draw() >= rule.probability:
                    continue
                spec = rule.fault
                delay = 0.0
                if isinstance(spec, Delay):
                    delay = spec.seconds + (draw() * spec.jitter if spec.jitter else 0.0)
                self._by_rule[rule.name] = self._by_rule.get(rule.name, 0) + 1
                self._by_kind[spec.kind] = self._by_kind.get(spec.kind, 0) + 1
                return Fault(rule=rule.name, spec=spec, delay=delay)
        return None

    def release_order(self, n: int) -> tuple[int, ...]:
        """The order in which a ``Reorder`` batch of ``n`` held requests goes (Rule 7).

        Example:
            >>> FaultPlan(seed=1).release_order(4)
            (3, 1, 2, 0)

        Returns:
            A permutation of ``range(n)``: first the position (in arrival order) of the
            request that goes first. The arrival order itself while the plan is paused.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_WINDOW:
            raise ConfigurationError(
                f"FaultPlan.release_order.n: expected a whole number 0-{MAX_WINDOW}, got {n!r}"
            )
        order = list(range(n))
        with self._lock:
            if self._paused:
                return tuple(order)
            draw = self._random.random
            for i in range(n - 1, 0, -1):
                j = int(draw() * (i + 1))
                order[i], order[j] = order[j], order[i]
        return tuple(order)

    def replace(self, rules: Iterable[Rule]) -> None:
        """Use ``rules`` from the next ``decide`` on (the generator and counts go on)."""
        checked = _checked_rules(rules)
        with self._lock:
            self._rules = checked

    def pause(self) -> None:
        """Inject nothing until ``resume()``."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        """Inject again after ``pause()``."""
        with self._lock:
            self._paused = False

    def counts(self, by: Literal["rule", "kind"] = "rule") -> dict[str, int]:
        """Faults injected so far, by rule name (default) or by fault kind (``"reset"``...)."""
        with self._lock:
            return dict(self._by_rule if by == "rule" else self._by_kind)

    def __repr__(self) -> str:
        names = ", ".join(rule.name for rule in self.rules)
        state = ", paused" if self._paused else ""
        return f"FaultPlan([{names}], seed={self.seed}{state})"


# -- configuration ---------------------------------------------------------------------------


def _from_data(data: Mapping[str, Any], source: str, lines: Sequence[str] | None) -> FaultPlan:
    problems = Problems(source, lines, "chaos")
    table = data.get("chaos") if isinstance(data, Mapping) else None
    if not isinstance(table, Mapping):
        got = "" if table is None else f", got {shown(table)}"
        problems.add(("chaos",), "expected a [chaos] table with [[chaos.rules]] tables" + got)
        problems.raise_if_any()
    require_pydantic("fault plans from configuration")
    from surefoot.chaos._schema import FaultPlanTable

    model = problems.validated(FaultPlanTable, table, at=("chaos",))  # type: ignore[arg-type]
    for loc, message in model.duplicate_names(("chaos",)):
        problems.add(loc, message)
    problems.raise_if_any()
    return model.plan()
