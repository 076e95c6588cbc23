"""``Retry-After`` (RFC 9110 section 10.2.3): delay-seconds or an HTTP-date, as seconds to wait."""

from __future__ import annotations

import email.utils
from datetime import UTC

__all__ = ["parse_retry_after"]


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from ``now`` (epoch seconds); None when ``value`` is malformed.

    A date in the past means "now" (0); a number too long to be meant literally becomes
    ``inf`` (longer than any deadline), never an error.
    """
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # HTTP-dates are always GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
