"""``StaleCache``: serve the last good answer to a GET when the upstream fails (stale-if-error).

The transports store every complete 2xx answer to a GET (status, headers, raw body) and,
when a later GET to the same resource fails, answer from the cache instead of raising,
if the stored answer is at most ``max_staleness`` seconds old. The cache's own logic is
I/O-free: ``now`` is a parameter and it holds plain bytes; with a store (Rule 5) the
store's calls go through ``_cache_store.StoreRunner``.

Keys: the URL (with its query), the values of the request headers the stored response's
``Vary`` names, and a digest of the request's ``Authorization`` and ``Cookie`` headers, so
one credential is never answered from another's response. A response with ``Vary: *``
or ``Cache-Control: no-store`` is never stored. One URL and credential keep the ``Vary``
names of their latest answer (variants with other names are looked up with those).

Rule 1: only GET is stored and only GET is served; a POST's answer is never replayed.
Rule 2: an answer is served only when the upstream failed (an ``UpstreamError``: transport
errors after retries, a timeout, an open circuit, a throttle refusal) or retries ended on a
retry status (a 503...), and only while its age is at most ``max_staleness``.
Rule 3: the cache is bounded: at most ``max_entries`` answers and ``max_bytes`` of bodies;
least recently used answers go first; a body over ``max_entry_bytes`` is not stored.
Rule 4: thread-safe (one lock, never held across I/O), so one cache may serve threads,
tasks and several transports.
Rule 5: with a ``store`` (a ``CacheStore``: ``MemoryStore``, ``SqliteStore``, ``RedisStore``)
the answers live in the store, not here, so every process of a service shares them: one
entry per URL and credential (the latest answer, with the values of the request headers its
``Vary`` names; a request with other values finds no stale copy), encoded by ``_encode``
and kept until ``max_staleness`` has passed. ``max_entries`` and ``max_bytes`` bound only
the in-memory cache; ``max_entry_bytes`` bounds both. The store is best effort
(``_cache_store``): a failed write is dropped, a failed read is "no stale copy".
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from surefoot.client._cache_store import CacheStore, StoreRunner
from surefoot.errors import ConfigurationError

__all__ = ["STALE_HEADER", "CachedResponse", "StaleCache"]

#: The header that marks a served stale answer; its value is the answer's age in seconds.
STALE_HEADER = "X-Surefoot-Stale"
# Hop-by-hop headers describe one connection, not the answer (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_CREDENTIALS = ("authorization", "cookie")

_Key = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored answer: status, headers (hop-by-hop removed), raw body and when it came."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    vary: tuple[str, ...]


class StaleCache:
    """An in-memory LRU of last good GET answers, served when the upstream fails.

    Example:
        >>> cache = StaleCache(max_staleness=600, max_entries=1000, max_bytes=16 * 2**20)
        >>> transport = ResilientTransport(httpx.HTTPTransport(), cache=cache)

    Args:
        max_staleness: the oldest answer served, in seconds since it was received.
        max_entries: answers kept at most.
        max_bytes: body bytes kept at most, all answers together.
        max_entry_bytes: the largest body stored; default ``max_bytes // 8`` (a
            single answer cannot flush the whole cache).
        store: a ``CacheStore`` (``MemoryStore``, ``SqliteStore``, ``RedisStore``) that
            keeps the answers instead, shared by every process using it; default none
            (in this object's memory).

    Served answers carry ``X-Surefoot-Stale: <age in whole seconds>`` and an ``Age``
    header, and emit a ``StaleServed`` event.

    Warning:
        A stale answer is old data presented as an answer: use it for reads where
        "a few minutes old" beats an error (a catalogue, a price list), not for balances.

        With a store, both transports call it on an event loop thread of this cache's own
        (the sync transport waits for the answer, the async one awaits it without blocking
        its event loop). Give the cache a store object of its own,
        used by no other event loop (several on one SQLite file or one Redis are fine: that
        is what sharing is for), and call ``close()`` when done.
    """

    def __init__(
        self,
        *,
        max_staleness: float = 300.0,
        max_entries: int = 1000,
        max_bytes: int = 16 * 2**20,
        max_entry_bytes: int | None = None,
        store: CacheStore | None = None,
    ) -> None:
        if not isinstance(max_staleness, int | float) or not 0 < max_staleness < math.inf:
            raise ConfigurationError(
                f"StaleCache.max_staleness: expected a finite number of seconds > 0, "
                f"got {max_staleness!r}"
            )
        for field, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"StaleCache.{field}: expected a whole number >= 1, got {value!r}"
                )
        if max_entry_bytes is None:
            max_entry_bytes = max(1, max_bytes // 8)
        if (
            isinstance(max_entry_bytes, bool)
            or not isinstance(max_entry_bytes, int)
            or not 1 <= max_entry_bytes <= max_bytes
        ):
            raise ConfigurationError(
                "StaleCache.max_entry_bytes: expected a whole number from 1 to max_bytes, "
                f"got {max_entry_bytes!r}"
            )
        if store is not None and not (
            callable(getattr(store, "cache_get", None))
            and callable(getattr(store, "cache_put", None))
        ):
            raise ConfigurationError(
                "StaleCache.store: expected a CacheStore (with cache_get(key, now) and "
                f"cache_put(key, value, expires_at, now)), got {type(store).__name__}"
            )
        self.store = store
        self._runner = StoreRunner(store) if store is not None else None
        self.max_staleness = float(max_staleness)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[_Key, CachedResponse] = OrderedDict()
        # The Vary'd header names last seen per URL and credentials, to build lookup keys.
        self._vary: dict[tuple[str, str], tuple[str, ...]] = {}
        self._variants: dict[tuple[str, str], int] = {}  # entries per URL and credential
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        """Body bytes held now."""
        return self._bytes

    @staticmethod
    def storable(status: int, headers: Mapping[str, str]) -> bool:
        """Whether an answer with this status and headers may be stored."""
        if not 200 <= status < 300:
            return False
        vary = _tokens(headers.get("vary", ""))
        return "*" not in vary and "no-store" not in _tokens(headers.get("cache-control", ""))

    def put(
        self,
        url: str,
        request_headers: Mapping[str, str],
        status: int,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> bool:
        """Store an answer to ``GET url``; False when it is not storable or too big (or,
        with a store, when the store failed: logged, never raised)."""
        prepared = self._prepare(url, request_headers, status, headers, body, now)
        if prepared is None:
            return False
        entry, who, values = prepared
        if self._runner is not None:
            value = _encode(entry, values)
            return self._runner.put(_store_key(url, who), value, now + self.max_staleness, now)
        self._remember(url, who, values, entry)
        return True

    async def aput(
        self,
        url: str,
        request_headers: Mapping[str, str],
        status: int,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> bool:
        """``put`` for the async transport: a store's round trip never blocks the event loop."""
        if self._runner is None:
            return self.put(url, request_headers, status, headers, body, now)
        prepared = self._prepare(url, request_headers, status, headers, body, now)
        if prepared is None:
            return False
        entry, who, values = prepared
        value = _encode(entry, values)
        return await self._runner.aput(_store_key(url, who), value, now + self.max_staleness, now)

    def _prepare(
        self,
        url: str,
        request_headers: Mapping[str, str],
        status: int,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> tuple[CachedResponse, str, tuple[str, ...]] | None:
        """The entry to keep, whose credentials and Vary'd values; None if not storable."""
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        lowered = {k.lower(): v for k, v in items}
        if not self.storable(status, lowered) or len(body) > self.max_entry_bytes:
            return None
        vary = tuple(sorted(_tokens(lowered.get("vary", ""))))
        kept = tuple((k, v) for k, v in items if k.lower() not in _HOP_BY_HOP)
        entry = CachedResponse(status, kept, body, now, vary)
        return entry, _credentials(request_headers), _values(request_headers, vary)

    def _remember(self, url: str, who: str, values: tuple[str, ...], entry: CachedResponse) -> None:
        """Keep ``entry`` in memory, evicting the oldest beyond the bounds."""
        body = entry.body
        key = (url, who, values)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._vary[(url, who)] = entry.vary
            self._entries[key] = entry
            self._variants[(url, who)] = self._variants.get((url, who), 0) + 1
            self._bytes += len(body)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._evict_oldest()

    def get(
        self, url: str, request_headers: Mapping[str, str], now: float
    ) -> CachedResponse | None:
        """The stored answer to ``GET url`` if it is at most ``max_staleness`` old."""
        who = _credentials(request_headers)
        if self._runner is not None:
            raw = self._runner.get(_store_key(url, who), now)
            return self._fresh(raw, request_headers, now)
        with self._lock:
            vary = self._vary.get((url, who))
            if vary is None:
                return None
            key = (url, who, _values(request_headers, vary))
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now - entry.stored_at > self.max_staleness:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry

    async def aget(
        self, url: str, request_headers: Mapping[str, str], now: float
    ) -> CachedResponse | None:
        """``get`` for the async transport: a store's round trip never blocks the event loop."""
        if self._runner is None:
            return self.get(url, request_headers, now)
        raw = await self._runner.aget(_store_key(url, _credentials(request_headers)), now)
        return self._fresh(raw, request_headers, now)

    def _fresh(
        self, raw: bytes | None, request_headers: Mapping[str, str], now: float
    ) -> CachedResponse | None:
        """A stored value as an answer to this request, if it is one and fresh enough."""
        found = _decode(raw)
        if found is None:
            return None
        stored, values = found
        if values != _values(request_headers, stored.vary):
            return None
        return stored if now - stored.stored_at <= self.max_staleness else None

    def close(self, *, close_store: bool = False) -> None:
        """Stop the event loop thread that runs the store's calls (if any).

        With ``close_store=True``, first close the store (``aclose()``) on that thread, where
        its connections were made; leave it False for a store you close yourself.
        """
        if self._runner is not None:
            self._runner.close(close_store=close_store)

    def clear(self) -> None:
        """Forget every answer held in memory (a store's answers expire by themselves)."""
        with self._lock:
            self._entries.clear()
            self._vary.clear()
            self._variants.clear()
            self._bytes = 0

    def _evict_oldest(self) -> None:
        key = next(iter(self._entries))
        self._drop(key)

    def _drop(self, key: _Key) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.body)
        url, who, _ = key
        left = self._variants[(url, who)] - 1
        if left:
            self._variants[(url, who)] = left
        else:
            del self._variants[(url, who)]
            del self._vary[(url, who)]

    def __repr__(self) -> str:
        if self.store is not None:
            return (
                f"StaleCache(store={type(self.store).__name__}, "
                f"max_staleness={self.max_staleness:g})"
            )
        return (
            f"StaleCache(entries={len(self._entries)}/{self.max_entries}, "
            f"bytes={self._bytes}/{self.max_bytes}, max_staleness={self.max_staleness:g})"
        )


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def _values(request_headers: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(request_headers.get(name, "") for name in names)


def _credentials(request_headers: Mapping[str, str]) -> str:
    found = [request_headers.get(name) for name in _CREDENTIALS]
    if not any(found):
        return ""
    joined = "\n".join(value or "" for value in found)
    return hashlib.sha256(joined.encode()).hexdigest()


def _store_key(url: str, who: str) -> str:
    """The store key of one URL and credential (a digest: URLs can be long)."""
    return hashlib.sha256(f"{url}\n{who}".encode()).hexdigest()


def _encode(entry: CachedResponse, values: tuple[str, ...]) -> bytes:
    """An entry for a store: a JSON line (everything but the body), then the body."""
    head = {
        "status": entry.status,
        "headers": [list(pair) for pair in entry.headers],
        "stored_at": entry.stored_at,
        "vary": list(entry.vary),
        "values": list(values),
    }
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + entry.body


def _decode(value: bytes | None) -> tuple[CachedResponse, tuple[str, ...]] | None:
    """An entry and its Vary'd request values, or None for anything unreadable."""
    if value is None:
        return None
    line, newline, body = value.partition(b"\n")
    try:
        head = json.loads(line)
        status, stored_at = head["status"], head["stored_at"]
        headers = tuple((str(k), str(v)) for k, v in head["headers"])
        vary = tuple(str(name) for name in head["vary"])
        values = tuple(str(v) for v in head["values"])
    except (ValueError, TypeError, KeyError):
        return None
    if not newline or not isinstance(status, int) or not isinstance(stored_at, int | float):
        return None
    return CachedResponse(status, headers, body, float(stored_at), vary), values
