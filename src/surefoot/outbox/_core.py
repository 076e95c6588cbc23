"""The pure core of sending webhooks: what one attempt's result does to its delivery and
to its endpoint. No I/O, no clock: ``now`` and the jitter's random draw are parameters.

A message is recorded once (``Outbox.enqueue``) and fanned out, in the same transaction,
to one delivery per matching enabled endpoint. A delivery's states::

    PENDING ──claim (due, endpoint enabled, not paused, under its concurrency)──► SENDING
    SENDING ──2xx──► DELIVERED
    SENDING ──failure, schedule not exhausted──► PENDING (next_at = now + the next delay)
    SENDING ──failure, schedule exhausted; or 410──► FAILED
    SENDING ──not sent (rate limit, open breaker, endpoint disabled meanwhile)──► PENDING
    SENDING ──lease ran out (the worker died or hung)──► claimable again
    FAILED / DELIVERED ──resend, recover──► PENDING (attempts start again)

Rule 1: a claim is by state and due time, never by "id greater than the last one seen":
        a row whose sequence number was drawn before a slower transaction committed is
        claimed whenever it becomes visible.
Rule 2: a claim holds a fresh token and a lease longer than the request timeout; the
        result of an attempt is recorded only where the row still holds that token, so a
        worker whose lease ran out (and whose delivery another worker took over) changes
        nothing. Delivery is at least once, always under the same message id.
Rule 3: only 2xx delivers. 3xx, other 4xx, 5xx, timeouts and connection errors fail
        the attempt and follow the schedule; 410 fails the delivery and disables the
        endpoint ("gone"); 429 and 503 with ``Retry-After`` also pause the whole endpoint
        until then, and the next attempt of this delivery is no sooner.
Rule 4: an endpoint's ``failing_since`` is set by its first failed attempt after a
        success and cleared by any success; an attempt that fails ``disable_after``
        seconds or more after it disables the endpoint ("failing"). A disabled endpoint
        keeps its undelivered messages: enabling it delivers them.
Rule 5: a delivery not attempted (rate limit, open breaker) keeps its attempt count.
Rule 6: the schedule's delays never decrease; the jitter moves each delay by at most
        ``jitter`` of itself, either way.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
from dataclasses import dataclass
from typing import NamedTuple, NoReturn
from urllib.parse import urlsplit

from surefoot.errors import ConfigurationError

__all__ = [
    "DEFAULT_SCHEDULE",
    "SINCE",
    "DeliveryState",
    "Judgement",
    "Result",
    "RetrySchedule",
    "is_event_pattern",
    "is_event_type",
    "is_name",
    "judge",
    "matches",
    "parse_since",
]

#: The Standard Webhooks specification's example: immediately, then 5 s, 5 min, 30 min,
#: 2 h, 5 h, 10 h, 14 h, 20 h and 24 h after each failure (75 h 35 min 5 s in all).
DEFAULT_SCHEDULE: tuple[float, ...] = (
    0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0,
)  # fmt: skip
#: A Retry-After longer than this is read as this (a consumer cannot park us for a month).
MAX_RETRY_AFTER = 86400.0
_MAX_DELAY = 7 * 86400.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: What ``parse_since`` accepts, for error messages.
SINCE = (
    "unix seconds, an ISO-8601 time (2026-12-06T14:00:00Z; UTC when it names no offset) "
    "or a duration back from now (30m, 2h, 3d, 1w)"
)
_EVENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class DeliveryState(enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


def _fail(name: str, expected: str, got: object) -> NoReturn:
    raise ConfigurationError(f"{name}: expected {expected}, got {got!r}")


def is_name(value: object) -> bool:
    """Whether ``value`` can name an endpoint or a tenant (1 to 64 of ``A-Z a-z 0-9 _ . : -``)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def is_event_type(value: object) -> bool:
    """Whether ``value`` can be an event type (``invoice.paid``: up to 128 characters)."""
    return isinstance(value, str) and _EVENT_TYPE.fullmatch(value) is not None


def is_event_pattern(value: object) -> bool:
    """Whether ``value`` is an event type or a family of them (``invoice.*``)."""
    return isinstance(value, str) and is_event_type(value.removesuffix(".*"))


def matches(event_type: str, accepted: tuple[str, ...] | None) -> bool:
    """Whether an endpoint that accepts ``accepted`` (None: everything) gets ``event_type``.

    ``invoice.*`` accepts every type that starts with ``invoice.``.
    """
    if accepted is None:
        return True
    return any(
        event_type.startswith(a[:-1]) if a.endswith(".*") else event_type == a for a in accepted
    )


def check_url(url: object, field: str = "url") -> str:
    """``url`` if it can be an endpoint (http or https, a host, no credentials), else raise."""
    if not isinstance(url, str) or not 0 < len(url) <= 2048 or not url.isascii():
        _fail(field, "an http:// or https:// URL of at most 2048 ASCII characters", url)
    # A URL that may carry credentials is never shown in a message (messages reach logs).
    shown = "<hidden>" if "@" in url else url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        _fail(field, "an http:// or https:// URL", shown)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(field, "an http:// or https:// URL with a host", shown)
    if parts.username is not None or parts.password is not None:
        # A consumer authenticates us by the signature, not by credentials in the URL.
        _fail(field, "a URL without user:password@ (deliveries are signed instead)", shown)
    if any(c in url for c in " \t\r\n#"):
        _fail(field, "a URL without spaces or a #fragment", url)
    return url


def parse_since(text: str, now: float) -> float:
    """The moment ``text`` names, as ``recover``'s ``since`` (the CLI's ``--since``, the
    admin API's ``?since=``): unix seconds, an ISO-8601 time (UTC when it names no
    offset) or a duration back from ``now``.

    Raises:
        ValueError: none of those (the message is ``SINCE``).
    """
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration is not None:
        return now - float(duration[1]) * _DURATION_UNITS[duration[2]]
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(SINCE) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(SINCE)
    return seconds


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When a delivery is attempted: ``delays[0]`` after the message is recorded, then
    ``delays[n]`` after the n-th attempt failed; after ``len(delays)`` attempts it fails.

    Example:
        >>> RetrySchedule((0, 10, 60), jitter=0.0).delay(1, rnd=0.5)
        10.0
    """

    delays: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.1

    def __post_init__(self) -> None:
        delays: object = self.delays
        if isinstance(delays, str | bytes) or not isinstance(delays, tuple | list):
            _fail("schedule", "a list of delays in seconds", delays)
        if not 1 <= len(delays) <= 100:
            _fail("schedule", "between 1 and 100 delays", list(delays))
        previous = 0.0
        for index, delay in enumerate(delays):
            ok = isinstance(delay, int | float) and not isinstance(delay, bool)
            if not ok or not math.isfinite(delay) or not 0 <= delay <= _MAX_DELAY:
                _fail(f"schedule[{index}]", "seconds between 0 and 604800 (7 days)", delay)
            if delay < previous:
                _fail(
                    f"schedule[{index}]",
                    f"a delay no shorter than the one before ({previous:g} s): "
                    "a schedule never decreases",
                    delay,
                )
            previous = float(delay)
        ok = isinstance(self.jitter, int | float) and not isinstance(self.jitter, bool)
        if not ok or not 0 <= self.jitter <= 0.5:
            _fail("jitter", "a fraction between 0 and 0.5", self.jitter)
        object.__setattr__(self, "delays", tuple(float(d) for d in delays))
        object.__setattr__(self, "jitter", float(self.jitter))

    @property
    def span(self) -> float:
        """Seconds from the first attempt to the last one, without jitter."""
        return sum(self.delays[1:])

    def delay(self, attempts: int, rnd: float) -> float | None:
        """Seconds before attempt ``attempts + 1`` (None: the schedule is exhausted).

        ``rnd`` is a uniform draw in [0, 1) for the jitter.
        """
        if attempts >= len(self.delays):
            return None
        base = self.delays[attempts]
        return base * (1.0 + self.jitter * (2.0 * rnd - 1.0))


class Result(NamedTuple):
    """What one attempt got: a response ``status`` (and its ``Retry-After`` in seconds,
    when it had one), or a transport ``error`` (a short description, never the body)."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Judgement(NamedTuple):
    """What an attempt's result does: the delivery's new state and due time, and the
    endpoint's new ``failing_since``, pause and (when it must be disabled) the reason."""

    state: DeliveryState
    next_at: float | None
    failing_since: float | None
    paused_until: float | None = None
    disable: str | None = None


def judge(
    result: Result,
    *,
    attempts: int,
    now: float,
    schedule: RetrySchedule,
    rnd: float,
    failing_since: float | None,
    disable_after: float,
) -> Judgement:
    """The consequence of attempt number ``attempts`` (1 for the first) ending in ``result``."""
    if result.delivered:
        return Judgement(DeliveryState.DELIVERED, None, None)  # Rules 3, 4
    since = now if failing_since is None else failing_since
    if result.status == 410:
        return Judgement(DeliveryState.FAILED, None, since, disable="gone")
    disable = "failing" if now - since >= disable_after else None
    pause = None
    delay = schedule.delay(attempts, rnd)
    if result.retry_after is not None and result.status in (429, 503):
        wait = min(max(result.retry_after, 0.0), MAX_RETRY_AFTER)
        pause = now + wait
        delay = None if delay is None else max(delay, wait)
    if delay is None:
        return Judgement(DeliveryState.FAILED, None, since, pause, disable)
    return Judgement(DeliveryState.PENDING, now + delay, since, pause, disable)
