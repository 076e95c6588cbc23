"""Events of the idempotency middleware, one frozen dataclass per decision.

Each carries the request id, the scoped store key (what an operator passes to
``resolve`` or ``forget``), the hashed principal, the method and the path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = [
    "ExecutedUnprotected",
    "IdempotencyEvent",
    "KeyInvalid",
    "KeyMissing",
    "KeyReserved",
    "KeyReused",
    "LeaseExpired",
    "OutcomeUnknown",
    "RecordsExceeded",
    "ReservationAbandoned",
    "RequestInProgress",
    "ReservationReleased",
    "ResponseReplayed",
    "ResponseStored",
    "StaleFinish",
    "StoreBypassed",
    "StoreFailed",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class IdempotencyEvent(Event):
    name: ClassVar[str] = "idempotency.event"

    method: str
    path: str
    principal: str
    store_key: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyReserved(IdempotencyEvent):
    """A request got the key and is executing (``generation`` counts executions)."""

    name: ClassVar[str] = "idempotency.reserved"
    generation: int
    took_over: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseReplayed(IdempotencyEvent):
    """A duplicate got the stored response."""

    name: ClassVar[str] = "idempotency.replayed"
    status: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestInProgress(IdempotencyEvent):
    """A duplicate arrived while the original was executing (409, or after waiting)."""

    name: ClassVar[str] = "idempotency.in_progress"
    level: ClassVar[int] = logging.WARNING
    waited: float


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyReused(IdempotencyEvent):
    """The key came with a different request (422)."""

    name: ClassVar[str] = "idempotency.key_reused"
    level: ClassVar[int] = logging.WARNING


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyMissing(IdempotencyEvent):
    """A request that needs a key came without one (``rejected`` False in rollout mode)."""

    name: ClassVar[str] = "idempotency.key_missing"
    level: ClassVar[int] = logging.WARNING
    rejected: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyInvalid(IdempotencyEvent):
    """The key was malformed, or the header and the body disagreed (400)."""

    name: ClassVar[str] = "idempotency.key_invalid"
    level: ClassVar[int] = logging.WARNING
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseExpired(IdempotencyEvent):
    """A reservation's lease ran out (its worker died or hung); ``action`` says what followed."""

    name: ClassVar[str] = "idempotency.lease_expired"
    level: ClassVar[int] = logging.ERROR
    action: str  # "reexecute" or "unknown"


@dataclass(frozen=True, kw_only=True, slots=True)
class OutcomeUnknown(IdempotencyEvent):
    """A key is (or became) outcome unknown; it needs ``resolve`` or ``forget``."""

    name: ClassVar[str] = "idempotency.unknown"
    level: ClassVar[int] = logging.ERROR
    reason: str  # "server_error", "lease_expired" or "pending"


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordsExceeded(IdempotencyEvent):
    """The principal holds as many records as its quota allows: 429, nothing executed.

    ``kind`` is ``"records"`` (``max_records_per_principal``) or ``"unknown"``
    (``max_unknown_per_principal``).
    """

    name: ClassVar[str] = "idempotency.records_exceeded"
    level: ClassVar[int] = logging.WARNING
    kind: str
    limit: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseStored(IdempotencyEvent):
    """The executed request's response was kept (``body_stored`` False if too large)."""

    name: ClassVar[str] = "idempotency.stored"
    status: int
    body_stored: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ReservationReleased(IdempotencyEvent):
    """The reservation was dropped so that a retry can execute."""

    name: ClassVar[str] = "idempotency.released"
    status: int | None  # None when the handler raised


@dataclass(frozen=True, kw_only=True, slots=True)
class ReservationAbandoned(IdempotencyEvent):
    """The request was cancelled mid-flight; its reservation is left to the lease."""

    name: ClassVar[str] = "idempotency.abandoned"
    level: ClassVar[int] = logging.ERROR


@dataclass(frozen=True, kw_only=True, slots=True)
class StaleFinish(IdempotencyEvent):
    """A finisher whose lease was taken over was fenced out; its result was not kept."""

    name: ClassVar[str] = "idempotency.stale_finish"
    level: ClassVar[int] = logging.ERROR
    status: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreFailed(IdempotencyEvent):
    """This request's store call failed; ``action`` says what followed.

    ``phase`` ``"begin"``: ``action`` is ``"fail_closed"`` (503, nothing executed) or
    ``"fail_open"`` (executed unprotected). ``phase`` ``"finish"`` (after the handler ran):
    ``action`` is ``"left_to_lease"``: the client got the handler's response and the
    reservation stays until its lease expires. ``phase`` ``"resolve"`` or ``"remember"``:
    the ``OutcomeResolver`` failed; ``action`` is ``"unknown"`` (the key stays unknown).
    """

    name: ClassVar[str] = "idempotency.store_failed"
    level: ClassVar[int] = logging.ERROR
    phase: str  # "begin", "finish", "resolve" or "remember"
    action: str  # "fail_closed", "fail_open" or "left_to_lease"
    error: str  # the exception's class name, never its text


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreBypassed(IdempotencyEvent):
    """The store is down: it was not called, and ``action`` followed (as for ``StoreFailed``).

    One per protected request during an outage; the outage itself is one
    ``surefoot.storage.StoreDown`` and one ``StoreRecovered``.
    """

    name: ClassVar[str] = "idempotency.store_bypassed"
    phase: str
    action: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecutedUnprotected(IdempotencyEvent):
    """The store was down and the route fails open: the request executed without a key.

    A retry of it may have executed twice; its response carried
    ``Idempotency-Status: unprotected``. ``reason`` is ``"store_failed"`` (this request's
    call failed) or ``"store_down"`` (the store was known to be down).
    """

    name: ClassVar[str] = "idempotency.unprotected"
    level: ClassVar[int] = logging.WARNING
    reason: str
