"""Defining a saga: its steps (an action, an optional compensation and lookup each),
written as plain Python functions, sync or async.

Each function takes one argument, a ``StepContext``: the saga's id and input, the results
of the steps done so far, and ``key``, the stem of the idempotency keys its outbound
calls carry (``saga:<id>:<step>``, and ``saga:<id>:<step>:undo`` in a compensation).

A step's action returns its result (JSON-serialisable: it is stored, and given to the
later steps and to its own compensation). It fails for good by raising ``StepFailed``,
one of the exceptions in its ``fails_on``, or an ``httpx.HTTPStatusError`` whose status
is in its ``final_statuses``; anything else it raises is transient and retried.
A lookup returns the action's result when the action happened, or ``None`` when it did
not; raising means "cannot tell yet".
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from surefoot.errors import ConfigurationError
from surefoot.saga._core import Failed, Plan, PlanStep, Retry

__all__ = ["Saga", "Step", "StepContext", "StepFailed", "StepFunction"]

#: Step names, saga names and saga ids: printable ASCII without spaces.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_MAX_ERROR = 500
DEFAULT_UNDO_RETRY = Retry(attempts=10, initial=1.0, maximum=300.0)


class StepFailed(Exception):
    """Raised by a step's action: a business failure (a card declined, a shipment refused).
    Not retried; the saga compensates the steps done before it."""


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step's function is given.

    Attributes:
        saga_id: the saga's id (the caller's, e.g. the order number).
        saga: the saga's name.
        step: this step's name.
        attempt: 1 for the first run of this action (or compensation), 2 for the next...
        input: the saga's input, as stored (JSON types).
        results: the results of the steps done so far, by step name.
        key: the stem of the idempotency keys of this function's outbound calls.
    """

    saga_id: str
    saga: str
    step: str
    attempt: int
    input: Any
    results: Mapping[str, Any]
    key: str

    @property
    def result(self) -> Any:
        """This step's own result (in a compensation; ``None`` if its outcome is unknown)."""
        return self.results.get(self.step)


StepFunction: TypeAlias = Callable[[StepContext], Any | Awaitable[Any]]
_F = TypeVar("_F", bound=StepFunction)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a saga.

    Args:
        name: unique within the saga.
        action: the function doing the work.
        compensate: the function undoing it (it may be called when the action's outcome is
            unknown, so it must accept that there is nothing to undo).
        lookup: the function telling whether the action happened (a read-only call).
        retry: how often and how fast the action (and the lookup) are retried.
        undo_retry: the same for the compensation.
        fails_on: exceptions that are business failures (never retried).
        final_statuses: HTTP statuses that are business failures when the action raises
            ``httpx.HTTPStatusError`` (``response.raise_for_status()``).
    """

    name: str
    action: StepFunction
    compensate: StepFunction | None = None
    lookup: StepFunction | None = None
    retry: Retry = field(default_factory=Retry)
    undo_retry: Retry = DEFAULT_UNDO_RETRY
    fails_on: tuple[type[BaseException], ...] = ()
    final_statuses: Iterable[int] = frozenset()

    def __post_init__(self) -> None:
        where = f"Step {self.name!r}"
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"Step.name: expected 1-64 letters, digits or _.:- (not starting with a "
                f"punctuation mark), got {self.name!r}"
            )
        for attr in ("action", "compensate", "lookup"):
            value = getattr(self, attr)
            if (value is not None or attr == "action") and not callable(value):
                raise ConfigurationError(f"{where}.{attr}: expected a function, got {value!r}")
        for attr in ("retry", "undo_retry"):
            if not isinstance(getattr(self, attr), Retry):
                raise ConfigurationError(f"{where}.{attr}: expected a Retry")
        fails_on = self.fails_on
        if not isinstance(fails_on, tuple | list) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in fails_on
        ):
            raise ConfigurationError(
                f"{where}.fails_on: expected a tuple of exception classes, got {fails_on!r}"
            )
        object.__setattr__(self, "fails_on", tuple(fails_on))
        statuses = self.final_statuses
        if not isinstance(statuses, Iterable) or not all(
            isinstance(s, int) and 400 <= s <= 599 for s in statuses
        ):
            raise ConfigurationError(
                f"{where}.final_statuses: expected HTTP statuses from 400 to 599, got {statuses!r}"
            )
        object.__setattr__(self, "final_statuses", frozenset(statuses))

    def judge(self, exc: BaseException) -> Failed:
        """What an exception raised by the action means: final, or transient."""
        error = describe(exc)
        if isinstance(exc, (StepFailed, *self.fails_on)):
            return Failed(error, final=True)
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return Failed(error, final=status in frozenset(self.final_statuses))


class Saga:
    """A named workflow of steps, each undone in reverse order when a later one fails.

    Example::

        checkout = Saga("checkout", [
            Step("reserve", reserve_stock, compensate=release_stock),
            Step("charge", charge_card, compensate=refund, lookup=find_charge,
                 final_statuses={402}),
            Step("ship", book_shipment, fails_on=(ShipmentRefused,)),
        ], deadline=3600)

    or step by step, with decorators::

        checkout = Saga("checkout")

        @checkout.step("reserve")
        def reserve_stock(ctx): ...

        @checkout.compensation("reserve")
        def release_stock(ctx): ...

    Args:
        name: the saga's name, recorded with each run (workers find the definition by it).
        steps: the steps, in order.
        deadline: seconds after its start past which a running saga starts no new step
            and compensates instead (``None``: no deadline).

    Warning:
        Steps are matched to a stored run by name and position: deploying a definition
        with steps added, removed or reordered while runs are open makes those runs
        ``needs_attention`` ("the definition changed"), never guessed.
    """

    def __init__(
        self, name: str, steps: Iterable[Step] = (), *, deadline: float | None = None
    ) -> None:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigurationError(
                f"Saga.name: expected 1-64 letters, digits or _.:-, got {name!r}"
            )
        if deadline is not None and (
            not isinstance(deadline, int | float) or not 0 < deadline <= 366 * 86400
        ):
            raise ConfigurationError(
                f"Saga {name!r}.deadline: expected seconds up to a year, or None, got {deadline!r}"
            )
        self.name = name
        self.deadline = deadline
        self._steps: list[Step] = []
        for step in steps:
            self.add(step)

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, steps={self.names!r})"

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(self._steps)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self._steps)

    def add(self, step: Step) -> None:
        """Append a step (a ``ConfigurationError`` if its name is taken)."""
        if not isinstance(step, Step):
            raise ConfigurationError(f"Saga {self.name!r}: expected a Step, got {step!r}")
        if step.name in self.names:
            raise ConfigurationError(f"Saga {self.name!r}: step {step.name!r} is defined twice")
        self._steps.append(step)

    def step(self, name: str, **options: Any) -> Callable[[_F], _F]:
        """Decorator: the function is the action of a new step ``name`` (``options`` as
        for ``Step``)."""

        def register(action: _F) -> _F:
            self.add(Step(name, action, **options))
            return action

        return register

    def compensation(self, name: str) -> Callable[[_F], _F]:
        """Decorator: the function undoes step ``name`` (defined before)."""
        return self._attach(name, "compensate")

    def lookup(self, name: str) -> Callable[[_F], _F]:
        """Decorator: the function looks up whether step ``name`` happened."""
        return self._attach(name, "lookup")

    def _attach(self, name: str, attr: str) -> Callable[[_F], _F]:
        index = self._index(name, attr)

        def register(function: _F) -> _F:
            step = self._steps[index]
            if getattr(step, attr) is not None:
                raise ConfigurationError(
                    f"Saga {self.name!r}: step {name!r} already has a {attr} function"
                )
            values = {f: getattr(step, f) for f in step.__dataclass_fields__}
            self._steps[index] = Step(**{**values, attr: function})
            return function

        return register

    def _index(self, name: str, attr: str) -> int:
        if name not in self.names:
            raise ConfigurationError(
                f"Saga {self.name!r}: a {attr} function for step {name!r}, which is not "
                f"defined (steps: {', '.join(self.names) or 'none yet'})"
            )
        return self.names.index(name)

    def plan(self) -> Plan:
        """The core's view of the steps (a ``ConfigurationError`` for a saga without any)."""
        if not self._steps:
            raise ConfigurationError(f"Saga {self.name!r}: expected at least one step")
        return Plan(
            tuple(
                PlanStep(
                    s.name, s.compensate is not None, s.lookup is not None, s.retry, s.undo_retry
                )
                for s in self._steps
            )
        )


def describe(exc: BaseException) -> str:
    """An exception as a timeline shows it: its type and the first line of its message,
    cut at 500 characters, with unprintable characters escaped."""
    lines = str(exc).splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:_MAX_ERROR]
    # Control characters (a NUL above all: PostgreSQL's text refuses it) as escapes.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
