"""The public API is pinned: a change to any ``__all__`` must be deliberate."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "surefoot": ["__version__"],
    "surefoot.clock": ["Clock", "SystemClock"],
    "surefoot.events": ["Event", "EventHook", "LoggingHook", "emit", "wanted"],
    "surefoot.identity": ["Identity", "PrincipalResolver", "default_principal", "hash_credential"],
    "surefoot.storage": [
        "STORES",
        "HealthState",
        "IdempotencyStore",
        "MemoryStore",
        "RateLimitStore",
        "SqliteStore",
        "StoreDown",
        "StoreHealth",
        "StoreRecovered",
        "store_from_url",
    ],
    "surefoot.client": [
        "DEFAULT_RETRY_STATUSES",
        "IDEMPOTENT_METHODS",
        "STALE_HEADER",
        "AsyncResilientTransport",
        "AttemptFailed",
        "Breaker",
        "BreakerState",
        "BreakerStateChanged",
        "Bulkhead",
        "BulkheadFull",
        "CallNotPermitted",
        "CircuitBreaker",
        "ClientEvent",
        "Integration",
        "ResilientTransport",
        "RetriesExhausted",
        "RetryBudget",
        "RetryPolicy",
        "RetryScheduled",
        "RetrySucceeded",
        "StaleCache",
        "StaleServed",
        "Throttle",
        "ThrottleRefused",
        "ThrottleWaited",
        "integrations_from_dict",
        "load_integrations",
    ],
    "surefoot.testing": [
        "CapturedEvents",
        "ManualClock",
        "RecordingSleep",
        "aassert_idempotent",
        "aassert_rate_limited",
        "assert_idempotent",
        "assert_rate_limited",
    ],
    "surefoot.errors": [
        "DEFAULT_PROBLEM_BASE",
        "PROBLEM_CONTENT_TYPE",
        "BackendError",
        "CircuitOpen",
        "ClientError",
        "ConcurrencyLimitExceeded",
        "ConfigurationError",
        "IdempotencyKeyAmbiguous",
        "IdempotencyKeyInvalid",
        "IdempotencyKeyMissing",
        "IdempotencyKeyReused",
        "IdempotencyOutcomeUnknown",
        "IdempotencyRequestInProgress",
        "IdempotencyResponseNotStored",
        "QuotaExceeded",
        "RateLimitExceeded",
        "RequestBodyTooLarge",
        "StoreCapacityExceeded",
        "StoreUnavailable",
        "SurefootError",
        "UpstreamError",
        "UpstreamThrottled",
        "UpstreamTimeout",
        "UpstreamUnavailable",
        "catalogue",
        "catalogue_markdown",
        "problem_body",
        "problem_document",
        "problem_type_uri",
    ],
    "surefoot.ratelimit": [
        "ALGORITHMS",
        "ALGORITHM_BY_NAME",
        "Item",
        "Limit",
        "RateLimitAllowed",
        "RateLimitDecision",
        "RateLimitDependency",
        "RateLimitEvent",
        "RateLimitMiddleware",
        "RateLimitPolicy",
        "RateLimitRejected",
        "RateLimitShadowRejected",
        "RateLimitStoreBypassed",
        "RateLimitStoreFailed",
        "RateLimited",
        "RateLimiter",
        "Verdict",
        "install_problem_handler",
        "limit_key",
        "parse_limit",
        "plan",
    ],
    "surefoot.idempotency": [
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
        "OutcomeUnknown",
        "Record",
        "Replay",
        "RequestInProgress",
        "ReservationAbandoned",
        "ReservationReleased",
        "Reserved",
        "ResponseReplayed",
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
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_pinned(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} is in __all__ but missing"


def test_importing_storage_first_works() -> None:
    # storage and idempotency import each other's private modules; either order must work.
    import subprocess
    import sys

    for first in ("surefoot.storage", "surefoot.idempotency", "surefoot.cli"):
        code = f"import {first}; import surefoot.storage, surefoot.idempotency"
        subprocess.run([sys.executable, "-c", code], check=True)
