"""``FlakyStore``: a real store that goes down, stalls and comes back when a test says so.

Theory of operation: each call of a store operation is counted in ``calls`` when it
arrives, then waits while its operation is stalled, then fails if its operation is down
(or has failures left from ``fail_next``), and otherwise goes to the wrapped store. The
order matters: calls that arrived while the store was stalled fail when they are let
through if the store went down meanwhile, as requests in flight do during a real outage.

Faults are per operation: ``down("begin")`` leaves ``finish`` working; a method given no
operation applies to all of them. ``aclose`` is never faulted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from surefoot.errors import StoreUnavailable
from surefoot.idempotency import IdempotencyStore
from surefoot.ratelimit import RateLimitStore
from surefoot.storage import StoreWrapper

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from surefoot.storage import Store

__all__ = ["FlakyStore"]

T = TypeVar("T")

#: What a failing call raises: an exception, or a function (an exception class) making one.
ErrorSpec = BaseException | Callable[[], BaseException]

OPERATIONS = StoreWrapper.OPERATIONS


def store_down() -> StoreUnavailable:
    """What a network store raises when its server is unreachable: ``StoreUnavailable``
    (retry in 1 s) caused by a ``ConnectionError``, which events report as the error."""
    error = StoreUnavailable(retry_after=1)
    error.__cause__ = ConnectionError("FlakyStore: the store is down (on purpose)")
    return error


@dataclass
class _Fault:
    """How one operation fails: after ``spare`` more good calls, ``left`` times (None: until
    ``up()``), with ``error``."""

    error: ErrorSpec
    spare: int = 0
    left: int | None = None


class FlakyStore(StoreWrapper):
    """A store that fails on demand: wraps a real one, to test outage behaviour.

    Example:
        >>> store = FlakyStore(MemoryStore())
        >>> app = IdempotencyMiddleware(app, store=store, clock=clock)
        >>> store.down()  # every call fails, as with a store that cannot be reached
        >>> ...  # requests: 503 store_unavailable, nothing executed
        >>> store.up()
        >>> store.fail_next("finish")  # one blip, while a response is being stored
        >>> store.calls["begin"]
        2

    While up, it is the wrapped store (it passes the same contract suites); ``wrapped``
    is that store, and events (``StoreDown``) name it. A failing call raises ``error``:
    by default ``StoreUnavailable`` from a ``ConnectionError``, as the network stores do.
    The operations are the protocols' methods (``StoreWrapper.OPERATIONS``): ``begin``,
    ``finish``, ``resolve``, ``forget``, ``get``, ``records``, ``purge``
    (``IdempotencyStore``), ``acquire`` and ``release`` (``RateLimitStore``),
    ``order_claim``, ``order_settle`` and ``order_get`` (``OrderingStore``); its
    ``around`` is where they are counted, stalled and failed.

    Warning:
        A stalled call waits until ``resume()`` or ``up()``, however long: it is what a
        server that accepted a connection and went silent does. The rate limiter cuts it
        off after its ``store_timeout`` (a ``FlakyStore`` is never trusted to bound its own
        calls); the idempotency middleware has no such guard, so a test stalling
        ``begin`` must resume it or cancel the request.
    """

    def __init__(self, store: Store, *, error: ErrorSpec = store_down) -> None:
        if not isinstance(store, IdempotencyStore) or not isinstance(store, RateLimitStore):
            raise TypeError(
                "FlakyStore: expected a store that is both an IdempotencyStore and a "
                f"RateLimitStore (as every surefoot.storage store is), got {type(store).__name__}"
            )
        super().__init__(store)
        self._error = error
        self._faults: dict[str, _Fault] = {}
        self._stalled: set[str] = set()
        self._resumed: asyncio.Event | None = None
        self._arrived: asyncio.Event | None = None
        #: Calls received per operation, counted on arrival (stalled, failed or answered).
        self.calls: Counter[str] = Counter()

    @property
    def wrapped(self) -> Store:
        """The real store behind the faults."""
        store: Store = self._store
        return store

    # -- making it fail ----------------------------------------------------------------------

    def down(self, *operations: str, after: int = 0, error: ErrorSpec | None = None) -> None:
        """Fail every call of ``operations`` (all if none) until ``up()``.

        Args:
            operations: which operations fail; the others keep working.
            after: let this many more calls of each operation through first (a store that
                goes down in the middle of a request's conversation with it).
            error: raised instead of the store's default ``error``.
        """
        if after < 0:
            raise ValueError(f"FlakyStore.down: after: expected calls >= 0, got {after!r}")
        for operation in self._operations("down", operations):
            self._faults[operation] = _Fault(self._error if error is None else error, after)

    def fail_next(self, *operations: str, count: int = 1, error: ErrorSpec | None = None) -> None:
        """Fail the next ``count`` calls of each of ``operations`` (all if none), then work.

        Example:
            >>> store.fail_next("acquire", count=2)  # a blip: two decisions fail, then no more
        """
        if count < 1:
            raise ValueError(f"FlakyStore.fail_next: expected a count >= 1, got {count!r}")
        for operation in self._operations("fail_next", operations):
            self._faults[operation] = _Fault(self._error if error is None else error, 0, count)

    def stall(self, *operations: str) -> None:
        """Hold every call of ``operations`` (all if none) until ``resume()`` or ``up()``."""
        self._stalled.update(self._operations("stall", operations))
        if self._resumed is None:
            self._resumed = asyncio.Event()

    def resume(self) -> None:
        """Let the stalled calls go on (to fail, if their operation is down meanwhile)."""
        self._stalled.clear()
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    def up(self) -> None:
        """The store is back: every fault is lifted and the stalled calls go on."""
        self._faults.clear()
        self.resume()

    async def wait_for_calls(self, count: int, operation: str) -> None:
        """Return once ``operation`` has received ``count`` calls in all (``calls``).

        Example:
            >>> store.stall("acquire")
            >>> tasks = [asyncio.create_task(client.get("/")) for _ in range(4)]
            >>> await store.wait_for_calls(4, "acquire")  # all four are waiting on the store
        """
        self._operations("wait_for_calls", (operation,))
        while self.calls[operation] < count:
            if self._arrived is None:
                self._arrived = asyncio.Event()
            await self._arrived.wait()

    def _operations(self, method: str, operations: Sequence[str]) -> Sequence[str]:
        unknown = [o for o in operations if o not in OPERATIONS]
        if unknown:
            raise ValueError(
                f"FlakyStore.{method}: unknown operation {unknown[0]!r}, expected one of "
                + ", ".join(OPERATIONS)
            )
        return operations or OPERATIONS

    async def around(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        self.calls[operation] += 1
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None
        while operation in self._stalled and self._resumed is not None:
            await self._resumed.wait()
        fault = self._faults.get(operation)
        if fault is not None:
            if fault.spare:
                fault.spare -= 1
            else:
                if fault.left is not None:
                    fault.left -= 1
                    if not fault.left:
                        del self._faults[operation]
                error = fault.error
                raise error if isinstance(error, BaseException) else error()
        return await call()
