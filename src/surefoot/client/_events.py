"""Events of the outbound client, one frozen dataclass per step of the retry flow.

Each carries the request id (the request's ``X-Request-Id``, else its idempotency key,
else a per-process counter), the method, the host and the path (never the query string,
which may hold credentials) and the attempt number. Reasons are short and machine-made:
a status (``503``, ``409 idempotency_request_in_progress``) or an exception class name
(``ConnectError``), never an exception's text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from surefoot.events import Event

__all__ = [
    "AttemptFailed",
    "BulkheadFull",
    "ClientEvent",
    "RetriesExhausted",
    "RetryScheduled",
    "RetrySucceeded",
    "StaleServed",
    "ThrottleRefused",
    "ThrottleWaited",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientEvent(Event):
    name: ClassVar[str] = "client.event"

    method: str
    host: str
    path: str
    attempt: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptFailed(ClientEvent):
    """An attempt got a retry status, a retryable problem, or a transport error."""

    name: ClassVar[str] = "client.attempt_failed"
    level: ClassVar[int] = logging.WARNING
    reason: str  # "503", "409 idempotency_request_in_progress", "ConnectError"
    status: int | None
    error: str | None  # the exception's class name
    duration: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryScheduled(ClientEvent):
    """Another attempt follows after ``delay`` seconds (``attempt`` is the one that failed)."""

    name: ClassVar[str] = "client.retry_scheduled"
    delay: float
    retry_after: float | None  # what the server asked for, if it did


@dataclass(frozen=True, kw_only=True, slots=True)
class RetriesExhausted(ClientEvent):
    """The flow gave up after ``attempt`` attempts; ``stopped`` says why.

    ``stopped`` is one of ``max_attempts``, ``deadline``, ``budget``, ``not_safe``,
    ``final``, ``retry_after_too_long``, ``body_not_replayable`` or ``circuit_open``;
    ``raised`` is the problem code of the error raised, None when the last response was
    returned to the caller.
    """

    name: ClassVar[str] = "client.retries_exhausted"
    level: ClassVar[int] = logging.ERROR
    stopped: str
    reason: str
    raised: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrySucceeded(ClientEvent):
    """An attempt after at least one failed one got a final answer (``status``)."""

    name: ClassVar[str] = "client.retry_succeeded"
    status: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ThrottleWaited(ClientEvent):
    """Attempt ``attempt`` waited ``delay`` seconds for a token of the client-side throttle."""

    name: ClassVar[str] = "client.throttle_waited"
    integration: str
    limit: str  # "100 requests per minute"
    delay: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ThrottleRefused(ClientEvent):
    """No token within the throttle's ``max_wait`` (or the deadline): nothing was sent.

    ``retry_after`` is how long the next token was still away, in seconds.
    """

    name: ClassVar[str] = "client.throttle_refused"
    level: ClassVar[int] = logging.WARNING
    integration: str
    limit: str
    retry_after: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BulkheadFull(ClientEvent):
    """Attempt ``attempt`` found every slot of the bulkhead taken.

    ``waited`` is how long it waited for one; ``refused`` is True when it got none
    (``UpstreamThrottled`` was raised, nothing was sent).
    """

    name: ClassVar[str] = "client.bulkhead_full"
    level: ClassVar[int] = logging.WARNING
    integration: str
    max_concurrent: int
    waited: float
    refused: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class StaleServed(ClientEvent):
    """The upstream failed and a cached response ``age`` seconds old was served instead.

    ``reason`` is the problem code of the error that was swallowed (``upstream_unavailable``,
    ``circuit_open``...) or the status of the last response (``"503"``); ``attempt`` is
    the number of attempts made, when known.
    """

    name: ClassVar[str] = "client.stale_served"
    level: ClassVar[int] = logging.WARNING
    age: float
    reason: str
