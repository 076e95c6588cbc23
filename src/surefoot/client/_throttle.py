"""``Throttle``: cap the rate of outgoing requests to an upstream (a partner's "100/minute").

The bucket is the rate-limit core's token bucket (``surefoot.ratelimit``, algorithm
``token_bucket``): ``Throttle`` only holds its state (local) or names its key in a
``RateLimitStore`` (shared), and turns a refusal into a wait or an error.

Theory of operation, per attempt (the drivers in ``transport.py`` run it):
1. Decide one token at ``now``. Allowed: send. Refused: the decision's ``retry_after`` is
   exactly when the next token is due.
2. If the time already waited plus ``retry_after`` stays within ``max_wait`` (and within
   what is left of the retry deadline), sleep ``retry_after`` with the driver's sleep, then
   decide again (a concurrent caller may have taken that token: waits are not queued).
3. Else raise ``UpstreamThrottled``: nothing was sent.

Rule 1: every attempt takes a token, retries included: the partner counts every request.
Rule 2: local state is guarded by a lock and decided without blocking, so one throttle is
safe to share between threads and asyncio tasks; a shared throttle is one atomic store
operation per decision (N processes never send more than the limit).
Rule 3: a refused decision spends nothing (the core's Rule 1), so a caller that gives up
costs the others nothing.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine
from typing import Any

from surefoot.errors import ConfigurationError, UpstreamThrottled
from surefoot.ratelimit import ALGORITHM_BY_NAME, Item, Limit, RateLimitStore, parse_limit

__all__ = ["Throttle"]

_ALGORITHM = "token_bucket"
_BUCKET = ALGORITHM_BY_NAME[_ALGORITHM]


class Throttle:
    """A client-side rate cap: requests wait for a token, then fail with ``UpstreamThrottled``.

    Example:
        >>> throttle = Throttle("100/minute", name="shipping")
        >>> transport = ResilientTransport(httpx.HTTPTransport(), throttle=throttle)
        >>> shared = Throttle("100/minute", name="shipping", store=SqliteStore("limits.db"))

    Args:
        limit: ``"100/minute"``, ``"20/5 minutes"``..., or a ``surefoot.ratelimit.Limit``
            (its algorithm, if set, must be ``token_bucket``).
        name: names the upstream in errors and events, and the store key.
        burst: how many requests may go at once after a quiet spell (the bucket's
            capacity); default the limit's ``burst``, else its amount.
        max_wait: the longest one attempt waits for a token, in seconds; 0 never waits.
        store: a ``RateLimitStore`` (``SqliteStore``, ``RedisStore``...) to share the bucket
            between processes; default none: the bucket lives in this object (per process).
        key: the store key; default ``"surefoot:client:throttle:<name>"``.

    Warning:
        With a store, the sync transport runs the store's coroutines on an event loop
        thread of this throttle's own, and the async transport awaits them on the caller's
        loop. Give each event loop its own store object (several on one SQLite file or one
        Redis are fine: that is what sharing is for), and call ``close()`` when done.
    """

    def __init__(
        self,
        limit: str | Limit,
        *,
        name: str = "default",
        burst: int | None = None,
        max_wait: float = 10.0,
        store: RateLimitStore | None = None,
        key: str | None = None,
    ) -> None:
        parsed = parse_limit(limit)
        if parsed.algorithm not in (None, _ALGORITHM):
            raise ConfigurationError(
                f"Throttle.limit: expected a token_bucket limit, got algorithm {parsed.algorithm!r}"
            )
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)):
            raise ConfigurationError(f"Throttle.burst: expected a whole number >= 1, got {burst!r}")
        if not isinstance(max_wait, int | float) or not 0 <= max_wait < math.inf:
            raise ConfigurationError(
                f"Throttle.max_wait: expected a finite number of seconds >= 0, got {max_wait!r}"
            )
        if store is not None and not (
            callable(getattr(store, "acquire", None))
            and _ALGORITHM in getattr(store, "rate_limit_algorithms", ())
        ):
            raise ConfigurationError(
                "Throttle.store: expected a RateLimitStore that runs token_bucket "
                f"(with acquire(items, now)), got {type(store).__name__}"
            )
        self.limit = Limit(
            parsed.amount,
            parsed.window,
            algorithm=_ALGORITHM,
            burst=burst if burst is not None else parsed.burst,
        )
        self.name = name
        self.max_wait = float(max_wait)
        self.store = store
        self.key = key if key is not None else f"surefoot:client:throttle:{name}"
        self.described = self.limit.describe()
        self._item = Item(self.key, _ALGORITHM, self.limit)
        self._lock = threading.Lock()
        self._state: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- deciding one token: seconds until it is due, 0.0 when taken --------------------

    def take(self, now: float) -> float:
        """Take a token at ``now`` (blocking on the store, if any): 0.0, else the wait."""
        if self.store is None:
            return self._take_local(now)
        return self._run(self._take_shared(now))

    async def atake(self, now: float) -> float:
        """``take`` for the event loop: the store's coroutine is awaited here."""
        if self.store is None:
            return self._take_local(now)
        return await self._take_shared(now)

    def _take_local(self, now: float) -> float:
        with self._lock:
            decision, state = _BUCKET.decide(self._state, now, 1, self.limit)
            if decision.allowed:
                self._state = state
        return 0.0 if decision.allowed else float(decision.retry_after)

    async def _take_shared(self, now: float) -> float:
        assert self.store is not None
        admitted, decisions = await self.store.acquire([self._item], now)
        return 0.0 if admitted else float(decisions[0].retry_after)

    def refusal(self, due_in: float) -> UpstreamThrottled:
        """The error for a request that got no token; the next one is ``due_in`` seconds away."""
        return UpstreamThrottled(
            integration=self.name,
            limit=self.described,
            retry_after=max(1, math.ceil(due_in)),
        )

    # -- the sync transport's event loop for store coroutines ---------------------------

    def _run(self, coroutine: Coroutine[Any, Any, float]) -> float:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"surefoot-throttle-{self.name}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def close(self) -> None:
        """Stop the event loop thread the sync transport used for the store (if any)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __repr__(self) -> str:
        where = "local" if self.store is None else type(self.store).__name__
        return f"Throttle(name={self.name!r}, limit={self.described!r}, {where})"
