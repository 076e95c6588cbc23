"""The schema of a fault plan's ``[chaos]`` table: plain pydantic models (``surefoot._config``).

Imported only when a plan is read from configuration (``FaultPlan.from_toml``); a table of
another file that holds a fault plan (a drill scenario's ``[chaos.client]``) embeds
``FaultPlanTable``, public as ``surefoot.chaos.FaultPlanTable``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from surefoot._config import Loc, described, dotted
from surefoot.chaos._plan import (
    _METHOD,
    _NAME,
    MAX_HOLD,
    MAX_WINDOW,
    Abort,
    Delay,
    Duplicate,
    FailAfter,
    FaultPlan,
    FaultSpec,
    Hang,
    Reorder,
    Reset,
    Rule,
    SlowBody,
)

__all__ = ["FaultPlanTable"]

_SECONDS0 = "a finite number of seconds >= 0"


class _Common(BaseModel):
    """The fields of every rule; each fault's rule adds its own."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)
    name: str = described("a name of letters, digits, '_', '-' and '.'")
    methods: list[str] = described(
        "a list of upper-case methods, such as ['POST']", default_factory=list
    )
    path: Annotated[str, Field(min_length=1)] = described("a glob such as '/v1/charges*'", "*")
    headers: dict[str, str] = described(
        "a table of header names to text values", default_factory=dict
    )
    probability: Annotated[float, Field(ge=0, le=1)] = described("a number in [0, 1]", 1.0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"expected a name of letters, digits, '_', '-' and '.', got {value!r}")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        for method in value:
            if not _METHOD.fullmatch(method):
                raise ValueError(f"expected upper-case method names such as 'POST', got {method!r}")
        return value

    def spec(self) -> FaultSpec:
        raise NotImplementedError

    def rule(self) -> Rule:
        """The ``Rule`` this table describes."""
        return Rule(
            name=self.name,
            fault=self.spec(),
            methods=tuple(self.methods),
            path=self.path,
            headers=self.headers,
            probability=self.probability,
        )


class _DelayRule(_Common):
    fault: Literal["delay"]
    seconds: Annotated[float, Field(ge=0)] = described(_SECONDS0)
    jitter: Annotated[float, Field(ge=0)] = described(_SECONDS0, 0.0)

    def spec(self) -> FaultSpec:
        return Delay(seconds=self.seconds, jitter=self.jitter)


class _AbortRule(_Common):
    fault: Literal["abort"]
    status: Annotated[int, Field(ge=100, le=599)] = described("an HTTP status 100-599", 503)
    retry_after: Annotated[float, Field(ge=0)] | None = described(_SECONDS0, None)

    def spec(self) -> FaultSpec:
        return Abort(status=self.status, retry_after=self.retry_after)


class _ResetRule(_Common):
    fault: Literal["reset"]

    def spec(self) -> FaultSpec:
        return Reset()


class _HangRule(_Common):
    fault: Literal["hang"]
    phase: Literal["read", "pool"] = described("'read' or 'pool'", "read")

    def spec(self) -> FaultSpec:
        return Hang(phase=self.phase)


class _FailAfterRule(_Common):
    fault: Literal["fail_after"]
    lose: Literal["reset", "502", "truncate"] = described("'reset', '502' or 'truncate'", "reset")

    def spec(self) -> FaultSpec:
        return FailAfter(lose=self.lose)


class _DuplicateRule(_Common):
    fault: Literal["duplicate"]
    concurrent: bool = described("true or false", False)

    def spec(self) -> FaultSpec:
        return Duplicate(concurrent=self.concurrent)


class _SlowBodyRule(_Common):
    fault: Literal["slow_body"]
    bytes_per_second: Annotated[float, Field(gt=0)] = described(
        "a finite number of bytes per second > 0"
    )

    def spec(self) -> FaultSpec:
        return SlowBody(bytes_per_second=self.bytes_per_second)


class _ReorderRule(_Common):
    fault: Literal["reorder"]
    window: Annotated[int, Field(ge=2, le=MAX_WINDOW)] = described(
        f"a whole number of requests 2-{MAX_WINDOW}"
    )
    hold: Annotated[float, Field(gt=0, le=MAX_HOLD)] = described(
        f"a finite number of seconds > 0 and <= {MAX_HOLD:g}", 5.0
    )

    def spec(self) -> FaultSpec:
        return Reorder(window=self.window, hold=self.hold)


# In the order of FAULT_KINDS: a message lists the kinds in this order.
_AnyRule = Annotated[
    _DelayRule
    | _AbortRule
    | _ResetRule
    | _HangRule
    | _FailAfterRule
    | _DuplicateRule
    | _SlowBodyRule
    | _ReorderRule,
    Field(discriminator="fault"),
]


class FaultPlanTable(BaseModel):
    """A ``[chaos]`` table: the fault plan of a configuration file, validated.

    Example:
        >>> table = FaultPlanTable.model_validate({"seed": 1, "rules": [
        ...     {"name": "down", "fault": "abort", "status": 503}]})
        >>> table.plan()
        FaultPlan([down], seed=1)

    Warning:
        Rule names are checked to be unique by ``duplicate_names``, not by validation:
        a file reports them with the line of the rule.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)
    seed: int | None = described("a whole number", None)
    paused: bool = described("true or false", False)
    rules: list[_AnyRule] = described("a list of [[chaos.rules]] tables", default_factory=list)

    def duplicate_names(self, at: Loc = ("chaos",)) -> list[tuple[Loc, str]]:
        """Each rule whose name an earlier one has, as (location, message); the table
        is at ``at`` in its file."""
        found: list[tuple[Loc, str]] = []
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                first = dotted((*at, "rules", seen[rule.name]))
                message = f"expected a unique name, got {rule.name!r} (also {first})"
                found.append(((*at, "rules", index, "name"), message))
            seen.setdefault(rule.name, index)
        return found

    def to_rules(self) -> tuple[Rule, ...]:
        """The ``Rule`` objects of the table, in order."""
        return tuple(rule.rule() for rule in self.rules)

    def plan(self) -> FaultPlan:
        """The ``FaultPlan`` of the table (its names must be unique: ``duplicate_names``)."""
        return FaultPlan(self.to_rules(), seed=self.seed, paused=self.paused)
