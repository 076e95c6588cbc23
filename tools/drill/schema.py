"""The schema of a drill scenario file: plain pydantic models (``surefoot._config``).

``scenario.py`` validates a file with ``File`` and builds the ``Scenario`` from it; the
fault plans of ``[chaos.client]`` and ``[chaos.upstream]`` are ``surefoot.chaos``'s own
``FaultPlanTable``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from surefoot._config import described
from surefoot.chaos import FaultPlanTable

__all__ = ["File"]

_SECONDS = "a finite number of seconds > 0"
_SECONDS0 = "a finite number of seconds >= 0"
_WHOLE = "a whole number from 1 to {}"
_PROXY = "'client', 'upstream' or 'both'"


class _Table(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class Drill(_Table):
    name: str | None = described("a name for the reports", None, min_length=1)
    description: str = described("text", "")
    clients: int = described(_WHOLE.format(1024), ge=1, le=1024)
    payments: int = described(_WHOLE.format(1_000_000) + " (per client)", ge=1, le=1_000_000)
    target: Literal["gateway", "webhooks", "outbox", "saga"] = described(
        "'gateway', 'webhooks', 'outbox' or 'saga'", "gateway"
    )
    store: Literal["sqlite", "redis"] = described("'sqlite' or 'redis'", "sqlite")
    workers: int = described(_WHOLE.format(16), 1, ge=1, le=16)
    upstream_workers: int = described(_WHOLE.format(16), 1, ge=1, le=16)
    seed: int = described("a whole number", 1)
    idempotency: bool = described("true or false", True)
    deadline: float = described(_SECONDS, 60.0, gt=0)
    attempt_timeout: float = described(_SECONDS, 5.0, gt=0)
    fail_after_commit: float = described("a share in [0, 1]", 0.0, ge=0, le=1)
    settle: float = described(_SECONDS0, 10.0, ge=0)


class Gateway(_Table):
    lease: float = described(_SECONDS, 5.0, gt=0)
    read_timeout: float = described(_SECONDS, 2.0, gt=0)
    total_timeout: float = described(_SECONDS, 3.0, gt=0)
    not_found_after: float = described(_SECONDS0, 3.0, ge=0)
    reconcile_interval: float = described(_SECONDS, 1.0, gt=0)
    store_timeout: float = described(_SECONDS, 0.5, gt=0)
    access_log: bool = described("true or false", False)
    log_level: Literal["debug", "info", "warning", "error"] = described(
        "'debug', 'info', 'warning' or 'error'", "warning"
    )


class Outbox(_Table):
    workers: int = described(_WHOLE.format(16), 2, ge=1, le=16)
    rollback: float = described("a share in [0, 1)", 0.1, ge=0, lt=1)
    pace: float = described(_SECONDS0, 0.0, ge=0)
    worker_kills: int = described("a whole number from 0 to 1000", 3, ge=0, le=1000)
    kill_every: float = described(_SECONDS, 1.0, gt=0)
    down: float = described(_SECONDS0, 0.5, ge=0)
    kill_app: bool = described("true or false", True)
    kill_app_after: float = described("a share of transactions done, in [0, 1]", 0.5, ge=0, le=1)
    lease: float = described(_SECONDS, 2.0, gt=0)
    timeout: float = described(_SECONDS, 1.5, ge=0.1, le=300)
    schedule: list[Annotated[float, Field(ge=0)]] = described(
        "a list of 1 to 100 delays in seconds >= 0, never decreasing",
        default_factory=lambda: [0.0, 0.2, 0.5, 1.0, 2.0, 2.0, 2.0],
        min_length=1,
        max_length=100,
    )
    jitter: float = described("a fraction between 0 and 0.5", 0.1, ge=0, le=0.5)
    rate_limit: str | None = described("a limit such as '100/second'", None, min_length=1)
    concurrency: int = described(_WHOLE.format(1000), 10, ge=1, le=1000)
    breaker: bool = described("true or false", True)


class Saga(_Table):
    database: Literal["sqlite", "postgresql"] = described("'sqlite' or 'postgresql'", "sqlite")
    workers: int = described(_WHOLE.format(16), 2, ge=1, le=16)
    concurrency: int = described(_WHOLE.format(1000), 8, ge=1, le=1000)
    pace: float = described(_SECONDS0, 0.0, ge=0)
    worker_kills: int = described("a whole number from 0 to 1000", 4, ge=0, le=1000)
    kill_every: float = described(_SECONDS, 2.0, gt=0)
    down: float = described(_SECONDS0, 0.3, ge=0)
    lease: float = described(_SECONDS, 3.0, gt=0)
    attempt_timeout: float = described(_SECONDS, 0.5, gt=0)
    step_attempts: int = described(_WHOLE.format(1000), 8, ge=1, le=1000)
    backoff: float = described(_SECONDS0, 0.1, ge=0)
    refused: float = described("a share of shipments refused, in [0, 1]", 0.1, ge=0, le=1)
    declined: float = described("a share of cards declined, in [0, 1]", 0.0, ge=0, le=1)
    unavailable: float = described("a share of charges answered 503, in [0, 1]", 0.1, ge=0, le=1)
    timeout: float = described("a share of charges never answered, in [0, 1]", 0.05, ge=0, le=1)
    lost: float = described("a share of charges answered 502, in [0, 1]", 0.05, ge=0, le=1)


class Chaos(_Table):
    client: FaultPlanTable | None = described("a fault plan table ([chaos.client])", None)
    upstream: FaultPlanTable | None = described("a fault plan table ([chaos.upstream])", None)


class _Event(_Table):
    at: float | None = described("seconds >= 0 after the first payment", None, ge=0)
    after: float | None = described("a share of payments done, in [0, 1]", None, ge=0, le=1)

    @model_validator(mode="after")
    def _when(self) -> _Event:
        if (self.at is None) == (self.after is None):
            raise ValueError(
                "expected exactly one of at (seconds) and after (a share of payments done)"
            )
        return self


class PauseChaos(_Event):
    action: Literal["pause_chaos"]
    proxy: Literal["client", "upstream", "both"] = described(_PROXY, "both")


class ResumeChaos(_Event):
    action: Literal["resume_chaos"]
    proxy: Literal["client", "upstream", "both"] = described(_PROXY, "both")


class Flap(_Event):
    action: Literal["flap"]
    proxy: Literal["client", "upstream", "both"] = described(_PROXY, "upstream")
    down: float = described(_SECONDS, 1.0, gt=0)
    up: float = described(_SECONDS, 1.0, gt=0)
    times: int = described(_WHOLE.format(1000), 3, ge=1, le=1000)


class RestartGateway(_Event):
    action: Literal["restart_gateway"]
    down: float = described(_SECONDS0, 1.0, ge=0)


class RestartRedis(_Event):
    action: Literal["restart_redis"]
    down: float = described(_SECONDS0, 1.0, ge=0)


# In the order of scenario.ACTIONS: a message lists the actions in this order.
_AnyEvent = Annotated[
    PauseChaos | ResumeChaos | Flap | RestartGateway | RestartRedis,
    Field(discriminator="action"),
]


class File(_Table):
    drill: Drill = described("a [drill] table with clients and payments")
    gateway: Gateway = described("a [gateway] table", default_factory=Gateway)
    outbox: Outbox = described("an [outbox] table", default_factory=Outbox)
    saga: Saga = described("a [saga] table", default_factory=Saga)
    chaos: Chaos = described("a [chaos] table", default_factory=Chaos)
    events: list[_AnyEvent] = described("a list of [[events]] tables", default_factory=list)
