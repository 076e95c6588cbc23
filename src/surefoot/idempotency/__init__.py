"""Idempotency keys: a retried write executes once, and every retry gets the same answer.

The state machine lives in ``_core`` (sans-I/O), the HTTP adapter in ``middleware``;
records live in a store from ``surefoot.storage``.
"""

from __future__ import annotations

from surefoot.idempotency._core import (
    Begin,
    InProgress,
    Mismatch,
    NotStored,
    Outcome,
    OverQuota,
    Record,
    Replay,
    Reserved,
    State,
    Step,
    StoredResponse,
    Unknown,
    scoped_key,
)
from surefoot.idempotency._events import (
    ExecutedUnprotected,
    IdempotencyEvent,
    KeyInvalid,
    KeyMissing,
    KeyReserved,
    KeyReused,
    LeaseExpired,
    OutcomeUnknown,
    RecordsExceeded,
    RequestInProgress,
    ReservationAbandoned,
    ReservationReleased,
    ResponseReplayed,
    ResponseStored,
    StaleFinish,
    StoreBypassed,
    StoreFailed,
)
from surefoot.idempotency._policy import IdempotencyPolicy
from surefoot.idempotency.middleware import IdempotencyMiddleware, OutcomeResolver, Resolution
from surefoot.idempotency.transactional import AsyncClaim, Claim, TransactionalKeys

__all__ = [
    "AsyncClaim",
    "Begin",
    "Claim",
    "ExecutedUnprotected",
    "IdempotencyEvent",
    "IdempotencyMiddleware",
    "IdempotencyPolicy",
    "InProgress",
    "KeyInvalid",
    "KeyMissing",
    "KeyReserved",
    "KeyReused",
    "LeaseExpired",
    "Mismatch",
    "NotStored",
    "Outcome",
    "OutcomeResolver",
    "OutcomeUnknown",
    "OverQuota",
    "Record",
    "RecordsExceeded",
    "Replay",
    "RequestInProgress",
    "ReservationAbandoned",
    "ReservationReleased",
    "Reserved",
    "ResponseReplayed",
    "Resolution",
    "ResponseStored",
    "StaleFinish",
    "State",
    "Step",
    "StoreBypassed",
    "StoreFailed",
    "StoredResponse",
    "TransactionalKeys",
    "Unknown",
    "scoped_key",
]
