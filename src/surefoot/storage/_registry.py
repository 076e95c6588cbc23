"""``store_from_url``: stores chosen by URL scheme through an explicit registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

from surefoot._masking import masked_url, split_url
from surefoot.errors import ConfigurationError
from surefoot.idempotency import IdempotencyStore
from surefoot.ratelimit import RateLimitStore
from surefoot.storage.memory import MemoryStore
from surefoot.storage.sqlite import SqliteStore
from surefoot.webhooks import OrderingStore

__all__ = ["STORES", "Store", "store_from_url"]


@runtime_checkable
class Store(IdempotencyStore, RateLimitStore, OrderingStore, Protocol):
    """What every store in this package is: a home for idempotency records, for
    rate-limit counters and for the webhook ordering guard's records at once (one store
    can serve both middlewares and the webhook receiver)."""


def _memory(url: str) -> Store:
    options = _options(url)
    on_full = options.pop("on_full", "refuse")
    if on_full not in ("refuse", "evict"):
        raise ConfigurationError(f"store URL: on_full: expected refuse or evict, got {on_full!r}")
    sized: dict[str, int] = {}  # without max_records, MemoryStore's own default
    if "max_records" in options:
        sized["max_records"] = _int(options.pop("max_records"), "max_records")
    store = MemoryStore(on_full="evict" if on_full == "evict" else "refuse", **sized)
    _no_more(url, options)
    return store


def _sqlite(url: str) -> Store:
    path = urlsplit(url).path
    path = path[1:] if path.startswith("/") else path
    if not path:
        raise ConfigurationError(
            "store URL: expected a database file, as in sqlite:///relative.db or sqlite:////abs.db"
        )
    options = _options(url)
    synchronous = options.pop("synchronous", "NORMAL").upper()
    if synchronous not in ("NORMAL", "FULL"):
        raise ConfigurationError(
            f"store URL: synchronous: expected NORMAL or FULL, got {synchronous!r}"
        )
    lock_timeout = _float(options.pop("lock_timeout", "5"), "lock_timeout")
    _no_more(url, options)
    return SqliteStore(
        path, synchronous="FULL" if synchronous == "FULL" else "NORMAL", lock_timeout=lock_timeout
    )


def _lazy(module: str, cls: str, extra: str) -> Callable[[str], Store]:
    """A factory for a store whose driver comes with an optional extra."""

    def factory(url: str) -> Store:
        try:
            store_cls: Any = getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            raise ConfigurationError(
                f"store URL {masked_url(url)!r}: {cls} needs its driver: "
                f"pip install 'surefoot[{extra}]' ({exc})"
            ) from None
        store: Store = store_cls.from_url(url)
        return store

    return factory


def _options(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def _no_more(url: str, options: dict[str, str]) -> None:
    if options:
        raise ConfigurationError(
            f"store URL {masked_url(url)!r}: unknown options {sorted(options)}"
        )


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"store URL: {name}: expected an integer, got {value!r}") from None


def _float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"store URL: {name}: expected seconds, got {value!r}") from None


_redis = _lazy("surefoot.storage.redis", "RedisStore", "redis")
_postgres = _lazy("surefoot.storage.postgres", "PostgresStore", "postgres")

#: URL scheme -> factory(url). Each factory validates its own options.
STORES: dict[str, Callable[[str], Store]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
    "redis+cluster": _redis,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def store_from_url(url: str) -> Store:
    """A store described by ``url``.

    Example:
        >>> store_from_url("memory://")
        MemoryStore(max_records=10000)
        >>> store_from_url("sqlite:///idempotency.db")  # relative; sqlite:////abs.db is absolute
        SqliteStore('idempotency.db')
        >>> store_from_url("redis://127.0.0.1:6379/0?prefix=api:")  # needs surefoot[redis]
        >>> store_from_url("postgresql://app@db/app")  # needs surefoot[postgres]

    Raises:
        ConfigurationError: a URL that cannot be split, an unknown scheme or bad options,
            naming what is expected (the URL masked).
    """
    scheme = split_url(url).scheme
    factory = STORES.get(scheme)
    if factory is None:
        raise ConfigurationError(
            f"store URL {masked_url(url)!r}: expected one of the schemes {sorted(STORES)}, "
            f"got {scheme!r}"
        )
    return factory(url)
