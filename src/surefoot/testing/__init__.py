"""Helpers for testing code that uses surefoot (public API).

``ManualClock`` drives time by hand instead of sleeping; ``assert_idempotent`` and
``aassert_idempotent`` check that an endpoint really executes a keyed request once.
"""

from __future__ import annotations

from surefoot.testing._assertions import aassert_idempotent, assert_idempotent
from surefoot.testing._clock import ManualClock

__all__ = ["ManualClock", "aassert_idempotent", "assert_idempotent"]
