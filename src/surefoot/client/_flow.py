"""The retry flow: every retry decision of the outbound client, written once, without I/O.

``retry_flow`` is a generator driven by a sync and an async driver (``transport.py``), in
the manner of httpx's auth flow. It yields steps and is sent what came of them::

    flow yields            driver does                           driver sends back
    Attempt(n, timeout)    send the request (timeout capped)     Reply(response, status, ...)
                                                                 or Raised(error, kind)
    Sleep(seconds)         wait                                  Woke(at)

and finally returns the response to hand to the caller, or raises ``UpstreamUnavailable``,
``UpstreamTimeout`` (or the breaker's ``CircuitOpen``). Each value sent back carries ``at``,
the clock's time when the step ended: the flow never reads the clock.

Theory of operation, per logical request:
1. Count the request in the retry budget; the deadline is ``now + policy.deadline``.
2. Before each attempt, ask the breaker for a permit (``CircuitOpen`` ends the flow with no
   network call); cap the attempt's timeout by what is left of the deadline.
3. Judge the outcome. A failure is a transport error, a status in ``retry_statuses``, or a
   problem code in ``retry_problem_codes``; anything else is the answer, returned as is.
4. Retry a failure only if every rule below allows it, else give up (``RetriesExhausted``).

Rule 1: a request is *safe* to send again when its method is idempotent or it carries an
idempotency key. An unsafe request is retried only after an error that proves it never left
(``CONNECT_FAILED``, ``CONNECT_TIMEOUT``); a timeout or a lost connection after sending a
POST without a key may have charged the card, so it is never retried.
Rule 2: a problem whose code the surefoot catalogue marks not retryable (``configuration_error``,
``idempotency_key_reused``...) is final, whatever its status.
Rule 3: the wait before retry ``n`` is the policy's jittered backoff, or the server's
``Retry-After`` if longer. A wait that would end past the deadline is never begun: the flow
fails at once with ``UpstreamTimeout``. A ``Retry-After`` above ``max_retry_after`` is not
waited for.
Rule 4: a retry also needs ``max_attempts`` not reached and the budget's consent; the budget
is asked last, so a retry that does not happen never spends it.
Rule 5: giving up after a response with a retry status returns that response (httpx's
convention) unless ``raise_on_exhausted``; giving up after a transport error or at the
deadline raises. The error's ``reason`` lists every attempt's failure in order and why the
flow stopped; the error carries ``attempts``, ``failures``, ``stopped`` and ``response``.
Rule 6: every breaker permit is settled exactly once: ``on_result`` after an outcome,
``release`` when the attempt was abandoned (an exception thrown in, or the flow closed).
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from surefoot.client import _events as ev
from surefoot.client._breaker_protocol import Breaker
from surefoot.client._budget import RetryBudget
from surefoot.client._policy import RetryPolicy
from surefoot.client._retry_after import parse_retry_after
from surefoot.errors import (
    CircuitOpen,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    catalogue,
)
from surefoot.events import EventHook, emit, wanted

__all__ = [
    "FINAL_PROBLEM_CODES",
    "Attempt",
    "ErrorKind",
    "Raised",
    "Reply",
    "Sleep",
    "Stop",
    "Target",
    "Woke",
    "emit_event",
    "problem_code",
    "retry_flow",
    "wants_body",
]

R = TypeVar("R")

#: Codes of the surefoot catalogue that say "do not retry the same request".
FINAL_PROBLEM_CODES: frozenset[str] = frozenset(c.code for c in catalogue() if not c.retryable)
_PROBLEM_JSON = "application/problem+json"
# A problem document is small; a bigger body is not parsed for its code.
_MAX_PROBLEM_BYTES = 64 * 1024

Stop = Literal[
    "max_attempts",
    "deadline",
    "budget",
    "not_safe",
    "final",
    "retry_after_too_long",
    "body_not_replayable",
    "circuit_open",
]


class ErrorKind(enum.Enum):
    """What a transport error says about whether the request reached the upstream."""

    #: The connection could not be made: nothing was sent.
    CONNECT_FAILED = "connect_failed"
    #: Connecting, or waiting for a pooled connection, timed out: nothing was sent.
    CONNECT_TIMEOUT = "connect_timeout"
    #: Writing the request or reading the response timed out: it may have been processed.
    RESPONSE_TIMEOUT = "response_timeout"
    #: The connection broke mid-exchange (reset, closed early): it may have been processed.
    CONNECTION_LOST = "connection_lost"

    @property
    def may_have_reached(self) -> bool:
        return self is ErrorKind.RESPONSE_TIMEOUT or self is ErrorKind.CONNECTION_LOST

    @property
    def timed_out(self) -> bool:
        return self is ErrorKind.CONNECT_TIMEOUT or self is ErrorKind.RESPONSE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Target:
    """The logical request, as far as the flow needs it."""

    method: str
    host: str
    path: str
    request_id: str
    #: The request carries an idempotency key (its own, or one the transport added).
    keyed: bool = False
    #: The body can be sent again (bytes, not a one-shot stream).
    replayable: bool = True


@dataclass(frozen=True, slots=True)
class Attempt:
    """Step: send the request (attempt ``number``, from 1); ``timeout`` caps its timeouts."""

    number: int
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Sleep:
    """Step: wait ``seconds``, then send back ``Woke``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Reply(Generic[R]):
    """Outcome: a response arrived (its body already read if ``wants_body`` said so)."""

    response: R
    status: int
    at: float
    retry_after: str | None = None
    problem_code: str | None = None


@dataclass(frozen=True, slots=True)
class Raised:
    """Outcome: the attempt failed with a transport error of a known ``kind``."""

    error: BaseException
    kind: ErrorKind
    at: float


@dataclass(frozen=True, slots=True)
class Woke:
    """Outcome: the sleep is over."""

    at: float


def wants_body(policy: RetryPolicy, status: int) -> bool:
    """Whether the driver must read a response's body before sending its ``Reply``.

    Only responses the flow might retry are read: their problem code decides, and a
    response that is retried must be read and closed so its connection can be reused.
    """
    return status in policy.retry_statuses or status == 409


def problem_code(content_type: str | None, body: bytes) -> str | None:
    """The ``code`` member of an ``application/problem+json`` body, else None."""
    if content_type is None or len(body) > _MAX_PROBLEM_BYTES:
        return None
    if content_type.split(";", 1)[0].strip().lower() != _PROBLEM_JSON:
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    code = document.get("code") if isinstance(document, dict) else None
    return code if isinstance(code, str) else None


def retry_flow(
    policy: RetryPolicy,
    target: Target,
    *,
    now: float,
    rng: random.Random,
    budget: RetryBudget | None = None,
    breaker: Breaker | None = None,
    hooks: Sequence[EventHook] = (),
) -> Generator[Attempt | Sleep, Reply[R] | Raised | Woke, R]:
    """Drive one logical request through its attempts (see the module docstring)."""
    deadline_at = None if policy.deadline is None else now + policy.deadline
    safe = target.keyed or target.method in policy.idempotent_methods
    failures: list[str] = []
    delay = policy.backoff_base  # the previous delay, for decorrelated jitter
    if budget is not None:
        budget.record_request(now)
    attempt = 0
    while True:
        attempt += 1
        timeout = policy.attempt_timeout
        if deadline_at is not None:
            left = deadline_at - now
            timeout = left if timeout is None else min(timeout, left)
        permit: object = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except CircuitOpen as exc:
                if failures:
                    _exhausted(
                        hooks,
                        target,
                        now,
                        failures,
                        "circuit_open",
                        _reason(failures, "the circuit breaker opened"),
                        exc.code,
                    )
                raise
        started = now
        try:
            outcome = yield Attempt(attempt, timeout)
        except BaseException:
            if breaker is not None:
                breaker.release(permit)
            raise
        assert not isinstance(outcome, Woke), "an Attempt is answered by a Reply or Raised"
        now = outcome.at
        retry_after: float | None = None
        stop: Stop | None = None
        if isinstance(outcome, Reply):
            status, code = outcome.status, outcome.problem_code
            if code is not None and code in policy.retry_problem_codes:
                unhealthy, label = False, f"{status} {code}"
            elif status in policy.retry_statuses:
                unhealthy, label = True, str(status) if code is None else f"{status} {code}"
                if code in FINAL_PROBLEM_CODES:
                    stop = "final"
            else:
                unhealthy, label = False, None
            if breaker is not None:
                breaker.on_result(
                    permit, failed=unhealthy, duration=now - started, status=status, error=None
                )
            if label is None:
                if failures:
                    emit_event(
                        hooks, ev.RetrySucceeded, target, now, attempt=attempt, status=status
                    )
                return outcome.response
            if stop is None and not safe:
                stop = "not_safe"
            if outcome.retry_after is not None:
                retry_after = parse_retry_after(outcome.retry_after, now)
            status_or_none: int | None = status
            error_name: str | None = None
        else:
            if breaker is not None:
                breaker.on_result(
                    permit, failed=True, duration=now - started, status=None, error=outcome.error
                )
            label = error_name = type(outcome.error).__name__
            status_or_none = None
            if outcome.kind.may_have_reached and not safe:
                stop = "not_safe"
        if stop is None and not target.replayable:
            stop = "body_not_replayable"
        failures.append(label)
        emit_event(
            hooks,
            ev.AttemptFailed,
            target,
            now,
            attempt=attempt,
            reason=label,
            status=status_or_none,
            error=error_name,
            duration=now - started,
        )
        pause = 0.0
        why = ""
        if stop is None:
            if attempt >= policy.max_attempts:
                stop, why = "max_attempts", f"max_attempts={policy.max_attempts} reached"
            elif deadline_at is not None and now >= deadline_at:
                stop, why = "deadline", f"the {_s(policy.deadline)} s deadline passed"
            else:
                pause = policy.backoff(attempt, previous=delay, rng=rng)
                if retry_after is not None:
                    pause = max(pause, retry_after)
                if deadline_at is not None and now + pause >= deadline_at:
                    asked = "the upstream asked to wait" if retry_after == pause else "backoff is"
                    stop, why = (
                        "deadline",
                        (
                            f"{asked} {_s(pause)} s, past the {_s(policy.deadline)} s deadline "
                            f"({_s(deadline_at - now)} s left); failed now instead of waiting"
                        ),
                    )
                elif retry_after is not None and retry_after > policy.max_retry_after:
                    stop, why = (
                        "retry_after_too_long",
                        (
                            f"the upstream asked to wait {_s(retry_after)} s, more than "
                            f"max_retry_after={_s(policy.max_retry_after)} s"
                        ),
                    )
                elif budget is not None and not budget.try_retry(now):
                    stop, why = "budget", "the retry budget is spent (too many recent retries)"
        else:
            why = _STOP_TEXT[stop].format(method=target.method, code=_code_of(outcome))
        if stop is not None:
            return _give_up(policy, target, hooks, now, outcome, failures, stop, why)
        emit_event(
            hooks,
            ev.RetryScheduled,
            target,
            now,
            attempt=attempt,
            delay=pause,
            retry_after=retry_after,
        )
        delay = pause
        if pause > 0:
            woke = yield Sleep(pause)
            assert isinstance(woke, Woke), "a Sleep is answered by Woke"
            now = woke.at
            if deadline_at is not None and now >= deadline_at:
                why = f"the {_s(policy.deadline)} s deadline passed while waiting to retry"
                return _give_up(policy, target, hooks, now, outcome, failures, "deadline", why)


_STOP_TEXT: dict[Stop, str] = {
    "not_safe": "{method} without an idempotency key is not safe to retry once sent",
    "final": "the upstream marked its answer final ({code})",
    "body_not_replayable": "the request body is a stream that cannot be sent again",
}

_ADVICE: dict[Stop, str] = {
    "not_safe": (
        "The request may have taken effect; check before sending it again, "
        "or send an Idempotency-Key so that it can be retried safely."
    ),
    "final": "Retrying the same request will not help.",
    "body_not_replayable": "It was not retried because its body cannot be sent twice.",
}
_RETRY_LATER = "Retrying later may help."


def _code_of(outcome: Reply[Any] | Raised) -> str | None:
    return outcome.problem_code if isinstance(outcome, Reply) else None


def _s(seconds: float | None) -> str:
    """Seconds for a reason text: at most millisecond precision, no exponent below 1e6."""
    return f"{round(seconds or 0.0, 3):g}"


def _reason(failures: Sequence[str], why: str) -> str:
    count = len(failures)
    attempts = "1 attempt" if count == 1 else f"{count} attempts"
    return f"{attempts} failed ({', '.join(failures)}); {why}"


def _give_up(
    policy: RetryPolicy,
    target: Target,
    hooks: Sequence[EventHook],
    now: float,
    last: Reply[R] | Raised,
    failures: list[str],
    stop: Stop,
    why: str,
) -> R:
    reason = _reason(failures, why)
    advice = _ADVICE.get(stop, _RETRY_LATER)
    error: UpstreamError
    if stop == "deadline":
        error = UpstreamTimeout(reason=reason, advice=advice)
    elif isinstance(last, Reply):
        if not policy.raise_on_exhausted:
            _exhausted(hooks, target, now, failures, stop, reason, None)
            return last.response
        error = UpstreamUnavailable(reason=reason, advice=advice)
    elif last.kind.timed_out:
        error = UpstreamTimeout(reason=reason, advice=advice)
    else:
        error = UpstreamUnavailable(reason=reason, advice=advice)
    # Not template fields: fields become problem members, and a response is not JSON.
    error.__dict__.update(
        attempts=len(failures),
        failures=tuple(failures),
        stopped=stop,
        response=last.response if isinstance(last, Reply) else None,
    )
    _exhausted(hooks, target, now, failures, stop, reason, error.code)
    raise error from (last.error if isinstance(last, Raised) else None)


def _exhausted(
    hooks: Sequence[EventHook],
    target: Target,
    now: float,
    failures: Sequence[str],
    stop: Stop,
    reason: str,
    raised: str | None,
) -> None:
    emit_event(
        hooks,
        ev.RetriesExhausted,
        target,
        now,
        attempt=len(failures),
        stopped=stop,
        reason=reason,
        raised=raised,
    )


def emit_event(
    hooks: Sequence[EventHook],
    cls: type[ev.ClientEvent],
    target: Target,
    now: float,
    **fields: Any,
) -> None:
    """Emit a ``cls`` event about ``target`` if a hook wants it (the drivers' events too)."""
    if hooks and wanted(hooks, cls):
        event = cls(
            at=now,
            request_id=target.request_id,
            method=target.method,
            host=target.host,
            path=target.path,
            **fields,
        )
        emit(hooks, event)
