"""``LoadShedder``: a concurrency limit on the upstream that keeps room for critical requests.

Stripe's fleet usage load shedder in miniature, per gateway process:

Rule 1: at most ``limit`` requests are forwarded at once.
Rule 2: ``reserved = ceil(limit * critical_share)`` of those slots are kept for critical
        requests (by route or by client): a normal request is admitted only while fewer
        than ``limit - reserved`` requests are in flight, a critical one while fewer than
        ``limit``. Under overload normal traffic is shed first and critical traffic
        still gets through.
Rule 3: a refused request is answered at once (503 ``service_overloaded`` with
        ``Retry-After``), never queued: a queue in front of a saturated upstream only adds
        latency to requests that will time out anyway.
Rule 4: every admitted request releases its slot exactly once, however it ends.

Pure and synchronous: the event loop serialises ``try_acquire`` and ``release``.
"""

from __future__ import annotations

import math

from surefoot.errors import ConfigurationError

__all__ = ["LoadShedder"]


class LoadShedder:
    """Counts requests in flight and decides which to shed.

    Example:
        >>> shedder = LoadShedder(limit=10, critical_share=0.2)
        >>> shedder.try_acquire(critical=False)
        True
    """

    def __init__(self, *, limit: int, critical_share: float = 0.2) -> None:
        if limit < 1 or not 0 <= critical_share < 1:
            raise ConfigurationError(
                "LoadShedder: expected limit >= 1 and critical_share in [0, 1), "
                f"got {limit!r} and {critical_share!r}"
            )
        self.limit = limit
        self.critical_share = critical_share
        self.reserved = min(limit - 1, math.ceil(limit * critical_share))
        self.in_flight = 0

    def try_acquire(self, *, critical: bool) -> bool:
        """True when the request may go (and holds a slot until ``release``)."""
        cap = self.limit if critical else self.limit - self.reserved
        if self.in_flight >= cap:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """A request that held a slot ended."""
        if self.in_flight <= 0:
            raise RuntimeError("LoadShedder.release without a slot held")
        self.in_flight -= 1

    def __repr__(self) -> str:
        return (
            f"LoadShedder(limit={self.limit}, reserved={self.reserved}, in_flight={self.in_flight})"
        )
