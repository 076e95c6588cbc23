"""Helpers for testing code that uses surefoot (public API).

``ManualClock`` drives time by hand instead of sleeping; ``RecordingSleep`` runs the
client's retries instantly and records its waits; ``CapturedEvents`` is a hook that keeps
every event, to assert on attempts and their reasons; ``assert_idempotent`` checks
that an endpoint really executes a keyed request once, and ``assert_rate_limited`` that
it admits exactly its limit and then answers a well-formed 429; ``FlakyStore`` wraps a
real store and fails, stalls or comes back when told to, to test outage behaviour.
"""

from __future__ import annotations

from surefoot.testing._assertions import aassert_idempotent, assert_idempotent
from surefoot.testing._client import RecordingSleep
from surefoot.testing._clock import ManualClock
from surefoot.testing._events import CapturedEvents
from surefoot.testing._ratelimit import aassert_rate_limited, assert_rate_limited
from surefoot.testing._store import FlakyStore

__all__ = [
    "CapturedEvents",
    "FlakyStore",
    "ManualClock",
    "RecordingSleep",
    "aassert_idempotent",
    "aassert_rate_limited",
    "assert_idempotent",
    "assert_rate_limited",
]
