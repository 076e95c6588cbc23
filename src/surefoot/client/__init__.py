"""Calling unreliable APIs: an httpx transport that retries only what is safe to retry.

``ResilientTransport`` / ``AsyncResilientTransport`` wrap another httpx transport and run
each request through one sans-I/O retry flow (``_flow.py``): idempotent methods and keyed
POST/PATCH are retried on connection errors, timeouts and retry statuses, with jittered
exponential backoff, ``Retry-After``, a total deadline, a shared ``RetryBudget`` and an
optional circuit breaker (``Breaker``). Around each attempt the drivers take a ``Bulkhead``
slot (a concurrency cap) and a ``Throttle`` token (a rate cap from the rate-limit core's
token bucket, local or shared through a store); around the whole request a ``StaleCache``
serves the last good GET answer when the upstream fails. ``load_integrations`` builds
one ``Integration`` (its own breaker, throttle, bulkhead, cache and loggers) per API
declared in a TOML file. Inside ``with idempotency_scope(prefix):`` keyless POST/PATCH
requests get the keys ``prefix:1``, ``prefix:2``... in order, the same on a re-run.
See ``docs/client.md``.

Errors raised (``surefoot.errors``)::

    UpstreamError
    ├── UpstreamUnavailable   every attempt failed, or retrying was not safe
    ├── UpstreamTimeout       the deadline (or a wait longer than it), or a last timeout
    ├── CircuitOpen           raised by CircuitBreaker.acquire(): nothing was sent
    └── UpstreamThrottled     no Throttle token or Bulkhead slot in time: nothing was sent
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("httpx") is None:  # pragma: no cover - only without the extra
    raise ImportError("surefoot.client needs httpx: pip install 'surefoot[client]'")

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.client._breaker import (
    BreakerState,
    BreakerStateChanged,
    CallNotPermitted,
    CircuitBreaker,
)
from surefoot.client._breaker_protocol import Breaker
from surefoot.client._budget import RetryBudget
from surefoot.client._events import (
    AttemptFailed,
    BulkheadFull,
    ClientEvent,
    RetriesExhausted,
    RetryScheduled,
    RetrySucceeded,
    StaleServed,
    ThrottleRefused,
    ThrottleWaited,
)
from surefoot.client._policy import DEFAULT_RETRY_STATUSES, IDEMPOTENT_METHODS, RetryPolicy
from surefoot.client._scope import idempotency_scope

if TYPE_CHECKING:
    from surefoot.client._bulkhead import Bulkhead
    from surefoot.client._cache import STALE_HEADER, StaleCache
    from surefoot.client._cache_store import CacheStore
    from surefoot.client._integrations import (
        Integration,
        integrations_from_dict,
        load_integrations,
    )
    from surefoot.client._schema import BreakerTable
    from surefoot.client._throttle import Throttle
    from surefoot.client.transport import AsyncResilientTransport, ResilientTransport
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.client._bulkhead": ("Bulkhead",),
            "surefoot.client._cache": ("STALE_HEADER", "StaleCache"),
            "surefoot.client._cache_store": ("CacheStore",),
            "surefoot.client._integrations": (
                "Integration",
                "integrations_from_dict",
                "load_integrations",
            ),
            "surefoot.client._schema": ("BreakerTable",),  # imports pydantic
            "surefoot.client._throttle": ("Throttle",),
            "surefoot.client.transport": ("AsyncResilientTransport", "ResilientTransport"),
        },
    )

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "STALE_HEADER",
    "AsyncResilientTransport",
    "AttemptFailed",
    "Breaker",
    "BreakerState",
    "BreakerStateChanged",
    "BreakerTable",
    "Bulkhead",
    "BulkheadFull",
    "CacheStore",
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
    "idempotency_scope",
    "integrations_from_dict",
    "load_integrations",
]
