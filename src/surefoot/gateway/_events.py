"""Events of the gateway: upstream failures, load shedding, unknown outcomes, reloads,
webhook events an operator made the gateway forget, and temporary rate-limit overrides.

The layers the gateway composes emit their own events too: ``ratelimit.*``,
``idempotency.*``, ``storage.down`` / ``storage.recovered`` and, for the upstream's
circuit breaker, ``breaker.state_changed`` and ``breaker.call_not_permitted``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = [
    "ConfigRefused",
    "ConfigReloaded",
    "GatewayEvent",
    "OutcomeResolved",
    "OverrideAdded",
    "OverrideEvent",
    "OverrideExpired",
    "OverrideRemoved",
    "RequestShed",
    "UpstreamFailed",
    "WebhookForgotten",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayEvent(Event):
    name: ClassVar[str] = "gateway.event"


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamFailed(GatewayEvent):
    """The upstream did not answer a forwarded request properly.

    ``reason`` is ``connect`` (never reached), ``timeout``, ``reset`` (the connection broke
    while the request was sent or the answer read) or ``status`` (it answered a 5xx).
    ``reached`` says whether the request may have been processed.
    """

    name: ClassVar[str] = "gateway.upstream_failed"
    level: ClassVar[int] = logging.WARNING
    method: str
    path: str
    route: str
    reason: str
    status: int | None
    reached: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestShed(GatewayEvent):
    """A request was refused with 503 because the upstream's concurrency limit was reached.

    ``priority`` is ``critical`` or ``normal``; ``in_flight`` the requests then running.
    """

    name: ClassVar[str] = "gateway.shed"
    level: ClassVar[int] = logging.WARNING
    method: str
    path: str
    route: str
    priority: str
    in_flight: int
    limit: int


@dataclass(frozen=True, kw_only=True, slots=True)
class OutcomeResolved(GatewayEvent):
    """An ``outcome unknown`` key was settled.

    ``how`` is ``lookup`` (on a client's retry), ``reconciler`` (in the background) or
    ``admin`` (an operator); ``result`` is ``found`` (the work happened: its result is now
    stored and replayed), ``not_found`` (it did not: the key is released) or, for
    ``admin``, ``resolved`` / ``released``.
    """

    name: ClassVar[str] = "gateway.outcome_resolved"
    level: ClassVar[int] = logging.WARNING
    store_key: str
    how: str
    result: str
    age: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigReloaded(GatewayEvent):
    """A new policy file is in force (``generation`` counts reloads from 0)."""

    name: ClassVar[str] = "gateway.reloaded"
    level: ClassVar[int] = logging.WARNING
    source: str
    generation: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigRefused(GatewayEvent):
    """A reload was refused; the configuration in force stays. ``error`` says why."""

    name: ClassVar[str] = "gateway.reload_refused"
    level: ClassVar[int] = logging.ERROR
    source: str
    error: str


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookForgotten(GatewayEvent):
    """An operator made the gateway forget a received webhook event (``DELETE
    /admin/webhooks/NAME/events/ID``): the sender's next delivery of it runs it again.

    ``was`` is the state it had (``completed``, ``lease_expired``...), ``status`` the
    stored answer's status, if any.
    """

    name: ClassVar[str] = "gateway.webhook_forgotten"
    level: ClassVar[int] = logging.WARNING
    endpoint: str
    event_id: str
    was: str
    status: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class OverrideEvent(GatewayEvent):
    """A temporary rate-limit override changed (``_overrides.py``): its ``override_id``,
    ``policy``, ``client`` (None: every client of the policy), ``limits`` and
    ``expires_at``, and who changed it (``by``) and why (``reason``)."""

    name: ClassVar[str] = "ratelimit.override"
    level: ClassVar[int] = logging.WARNING
    override_id: str
    policy: str
    client: str | None
    limits: tuple[str, ...]
    expires_at: float
    by: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class OverrideAdded(OverrideEvent):
    """An operator put an override in force on every worker (``replaced``: the id of the
    override of the same target it took the place of, if any); emitted once, by the
    worker that made it or, for the CLI's, the first worker to see it."""

    name: ClassVar[str] = "ratelimit.override_added"
    replaced: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class OverrideRemoved(OverrideEvent):
    """An operator ended an override before its expiry (``by`` and ``reason`` are the
    remover's), or a newer override of its target replaced it; emitted once, by the
    worker that ended it or, for the CLI's, the first worker to see it gone."""

    name: ClassVar[str] = "ratelimit.override_removed"


@dataclass(frozen=True, kw_only=True, slots=True)
class OverrideExpired(OverrideEvent):
    """An override reached its ``expires_at`` and reverted by itself (``by`` and
    ``reason`` are its maker's); logged once whatever the number of workers."""

    name: ClassVar[str] = "ratelimit.override_expired"
    level: ClassVar[int] = logging.INFO
