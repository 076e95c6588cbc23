"""The store side of ``StaleCache``: the ``CacheStore`` contract and the loop that drives it.

A ``CacheStore`` keeps opaque values under keys until they expire; ``MemoryStore``,
``SqliteStore`` and ``RedisStore`` implement it. ``StaleCache`` encodes its entries
(``_cache.py``, I/O-free) and hands them to a ``StoreRunner``, which runs the store's
coroutines on an event loop thread of its own, as ``Throttle`` does for the sync transport.

Rule 1: best effort. A failed ``cache_put`` is logged (``surefoot.client.cache``) and
forgotten; a failed ``cache_get`` is logged and read as "no stale copy", so the caller
raises the upstream's error, never the store's.
Rule 2: one event loop per store object: every call of one runner goes through its loop
thread, started at the first call and stopped by ``close()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["CacheStore", "StoreRunner"]

T = TypeVar("T")

_log = logging.getLogger("surefoot.client.cache")


@runtime_checkable
class CacheStore(Protocol):
    """Home of shared cache entries: opaque bytes under a key, readable until ``expires_at``
    (inclusive: an answer exactly ``max_staleness`` old is still served), then forgotten."""

    async def cache_get(self, key: str, now: float) -> bytes | None:
        """The value under ``key`` if ``now`` is at most its ``expires_at``; else None."""
        ...

    async def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        """Keep ``value`` under ``key`` (replacing any) until ``expires_at``."""
        ...


class StoreRunner:
    """Runs one ``CacheStore``'s calls, from any thread, on an event loop thread of its own."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def get(self, key: str, now: float) -> bytes | None:
        """The stored value, or None when absent, expired, or the store failed."""
        try:
            return self._run(self.store.cache_get(key, now))
        except Exception as exc:
            _log.warning("stale cache: reading %s failed: %r", type(self.store).__name__, exc)
            return None

    def put(self, key: str, value: bytes, expires_at: float, now: float) -> bool:
        """Store ``value``; False (logged) when the store failed."""
        try:
            self._run(self.store.cache_put(key, value, expires_at, now))
        except Exception as exc:
            _log.warning("stale cache: writing %s failed: %r", type(self.store).__name__, exc)
            return False
        return True

    async def aget(self, key: str, now: float) -> bytes | None:
        """``get`` for a caller on an event loop: awaits the store's own loop, never blocks."""
        try:
            return await asyncio.wrap_future(self._submit(self.store.cache_get(key, now)))
        except Exception as exc:
            _log.warning("stale cache: reading %s failed: %r", type(self.store).__name__, exc)
            return None

    async def aput(self, key: str, value: bytes, expires_at: float, now: float) -> bool:
        """``put`` for a caller on an event loop: awaits the store's own loop, never blocks."""
        try:
            coroutine = self.store.cache_put(key, value, expires_at, now)
            await asyncio.wrap_future(self._submit(coroutine))
        except Exception as exc:
            _log.warning("stale cache: writing %s failed: %r", type(self.store).__name__, exc)
            return False
        return True

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._submit(coroutine).result()

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coroutine`` on the store's loop thread (started on first use)."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="surefoot-stale-cache", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    def close(self, *, close_store: bool = False) -> None:
        """Stop the event loop thread (a later call starts a new one); with
        ``close_store``, first close the store on it (its connections belong to that loop)."""
        if close_store:
            aclose = getattr(self.store, "aclose", None)
            if aclose is not None:
                self._run(aclose())
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            # Calls still running end now (their callers get an error, never a hang),
            # and nothing is left half-open on a loop that is about to close.
            cancel = asyncio.run_coroutine_threadsafe(_cancel_all(), loop)
            with contextlib.suppress(Exception):
                cancel.result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


async def _cancel_all() -> None:
    """Cancel every other task of the running loop and wait for them to end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
