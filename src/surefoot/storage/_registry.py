"""``store_from_url`` and ``sync_store_from_url``: stores chosen by URL scheme through
explicit registries (``STORES`` and ``SYNC_STORES``), one URL grammar for both."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

from surefoot._masking import masked_url, split_url
from surefoot.errors import ConfigurationError
from surefoot.idempotency import IdempotencyStore, SyncIdempotencyStore
from surefoot.ratelimit import RateLimitStore, SyncRateLimitStore
from surefoot.storage.memory import MemoryStore, SyncMemoryStore
from surefoot.storage.sqlite import SqliteStore, SyncSqliteStore
from surefoot.webhooks import OrderingStore

T = TypeVar("T")

__all__ = ["STORES", "SYNC_STORES", "Store", "SyncStore", "store_from_url", "sync_store_from_url"]


@runtime_checkable
class Store(IdempotencyStore, RateLimitStore, OrderingStore, Protocol):
    """What every store in this package is: a home for idempotency records, for
    rate-limit counters and for the webhook ordering guard's records at once (one store
    can serve both middlewares and the webhook receiver)."""


@runtime_checkable
class SyncStore(SyncIdempotencyStore, SyncRateLimitStore, Protocol):
    """What every synchronous store is (for WSGI servers, Django, Flask): a home for
    idempotency records and rate-limit counters at once, with blocking methods."""


def _memory(url: str) -> Store:
    return MemoryStore(**_memory_options(url))


def _sync_memory(url: str) -> SyncStore:
    return SyncMemoryStore(**_memory_options(url))


def _memory_options(url: str) -> dict[str, Any]:
    options = _options(url)
    on_full = options.pop("on_full", "refuse")
    if on_full not in ("refuse", "evict"):
        raise ConfigurationError(f"store URL: on_full: expected refuse or evict, got {on_full!r}")
    chosen: dict[str, Any] = {"on_full": "evict" if on_full == "evict" else "refuse"}
    if "max_records" in options:  # without it, the store's own default
        chosen["max_records"] = _int(options.pop("max_records"), "max_records")
    _no_more(url, options)
    return chosen


def _sqlite(url: str) -> Store:
    path, options = _sqlite_options(url)
    return SqliteStore(path, **options)


def _sync_sqlite(url: str) -> SyncStore:
    path, options = _sqlite_options(url)
    return SyncSqliteStore(path, **options)


def _sqlite_options(url: str) -> tuple[str, dict[str, Any]]:
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
    if not (lock_timeout > 0 and math.isfinite(lock_timeout)):  # NaN and inf wait for ever
        raise ConfigurationError(
            "store URL: lock_timeout: expected a finite number of seconds > 0, "
            f"got {lock_timeout!r}"
        )
    _no_more(url, options)
    return path, {"synchronous": synchronous, "lock_timeout": lock_timeout}


def _lazy(module: str, cls: str, extra: str) -> Callable[[str], Any]:
    """A factory for a store whose driver comes with an optional extra: the module and
    the class are looked up when a URL asks for them."""

    def factory(url: str) -> Any:
        try:
            store_cls: Any = getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            raise ConfigurationError(
                f"store URL {masked_url(url)!r}: {cls} needs its driver: "
                f"pip install 'surefoot[{extra}]' ({exc})"
            ) from None
        except AttributeError:
            raise ConfigurationError(
                f"store URL {masked_url(url)!r}: this surefoot has no {cls} ({module})"
            ) from None
        return store_cls.from_url(url)

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
_sync_redis = _lazy("surefoot.storage.redis", "SyncRedisStore", "redis")
_sync_postgres = _lazy("surefoot.storage.postgres", "SyncPostgresStore", "postgres")

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

#: URL scheme -> factory(url) of the synchronous twin (the same schemes and options).
SYNC_STORES: dict[str, Callable[[str], SyncStore]] = {
    "memory": _sync_memory,
    "sqlite": _sync_sqlite,
    "redis": _sync_redis,
    "rediss": _sync_redis,
    "redis+cluster": _sync_redis,
    "postgresql": _sync_postgres,
    "postgres": _sync_postgres,
}


def _factory(url: str, registry: Mapping[str, Callable[[str], T]]) -> Callable[[str], T]:
    """``registry``'s factory for ``url``'s scheme, or the error naming the schemes."""
    scheme = split_url(url).scheme
    factory = registry.get(scheme)
    if factory is None:
        raise ConfigurationError(
            f"store URL {masked_url(url)!r}: expected one of the schemes {sorted(registry)}, "
            f"got {scheme!r}"
        )
    return factory


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
    return _factory(url, STORES)(url)


def sync_store_from_url(url: str) -> SyncStore:
    """A synchronous store described by ``url``, for WSGI servers (Django, Flask): the
    blocking twin of what ``store_from_url(url)`` makes, from the same URLs.

    Example:
        >>> sync_store_from_url("memory://")
        SyncMemoryStore(max_records=10000, max_counters=100000, on_full='refuse')
        >>> sync_store_from_url("sqlite:///idempotency.db")  # shared by every worker process
        SyncSqliteStore('idempotency.db')
        >>> sync_store_from_url("redis://127.0.0.1:6379/0")  # SyncRedisStore, needs surefoot[redis]
        >>> sync_store_from_url("postgresql://app@db/app")  # SyncPostgresStore, surefoot[postgres]

    Raises:
        ConfigurationError: as ``store_from_url``.
    """
    return _factory(url, SYNC_STORES)(url)


def check_store_url(url: str) -> None:
    """Read ``url``'s scheme and options as its store would, opening nothing.

    For validating a configuration before the stores are opened (in each worker process,
    after the server forks). Memory, SQLite and Redis URLs are checked in full; a
    PostgreSQL URL's options go to libpq and are checked when the store opens, and a
    scheme whose driver is not installed is said when the store opens.

    Raises:
        ConfigurationError: as ``store_from_url`` would for the same URL.
    """
    _factory(url, STORES)
    scheme = split_url(url).scheme
    if scheme == "memory":
        _memory_options(url)
    elif scheme == "sqlite":
        _sqlite_options(url)
    elif scheme in ("redis", "rediss", "redis+cluster"):
        try:
            from surefoot.storage.redis import _url_options
        except ImportError:  # the driver is missing: said when the store opens
            return
        _url_options(url, "RedisStore")
