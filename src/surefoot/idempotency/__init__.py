"""Idempotency keys: a retried write executes once, and every retry gets the same answer.

The state machine lives in ``_core`` (sans-I/O), the contract of its stores in ``_store``,
the HTTP adapter in ``middleware``, keys inside the caller's own transaction in
``transactional``; records live in a store from ``surefoot.storage``. The adapters are
imported on first use, so importing the core loads no I/O module. The core's transitions
(``begin``, ``finish``, ``resolve``, ``forget``, ``classify``, ``charges_quota``) are public
for stores: a store applies each of them as one atomic step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.idempotency._core import (
    Begin,
    Decision,
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
    Usage,
    begin,
    charges_quota,
    classify,
    finish,
    forget,
    key_owner,
    resolve,
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
from surefoot.idempotency._store import IdempotencyStore, SyncIdempotencyStore

if TYPE_CHECKING:
    from surefoot.idempotency.middleware import IdempotencyMiddleware, OutcomeResolver, Resolution
    from surefoot.idempotency.transactional import AsyncClaim, Claim, TransactionalKeys
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.idempotency.middleware": (
                "IdempotencyMiddleware",
                "OutcomeResolver",
                "Resolution",
            ),
            "surefoot.idempotency.transactional": ("AsyncClaim", "Claim", "TransactionalKeys"),
        },
    )

__all__ = [
    "AsyncClaim",
    "Begin",
    "Claim",
    "Decision",
    "ExecutedUnprotected",
    "IdempotencyEvent",
    "IdempotencyMiddleware",
    "IdempotencyPolicy",
    "IdempotencyStore",
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
    "SyncIdempotencyStore",
    "TransactionalKeys",
    "Unknown",
    "Usage",
    "begin",
    "charges_quota",
    "classify",
    "finish",
    "forget",
    "key_owner",
    "resolve",
    "scoped_key",
]
