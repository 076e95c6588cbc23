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
    "ClientEvent",
    "RetriesExhausted",
    "RetryScheduled",
    "RetrySucceeded",
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
