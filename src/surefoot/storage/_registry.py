"""``store_from_url``: stores chosen by URL scheme through an explicit registry."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

from surefoot.errors import ConfigurationError
from surefoot.storage._protocol import IdempotencyStore
from surefoot.storage.memory import MemoryStore
from surefoot.storage.sqlite import SqliteStore

__all__ = ["STORES", "store_from_url"]


def _memory(path: str, options: dict[str, str]) -> IdempotencyStore:
    return MemoryStore(max_records=_int(options.pop("max_records", "10000"), "max_records"))


def _sqlite(path: str, options: dict[str, str]) -> IdempotencyStore:
    if not path:
        raise ConfigurationError(
            "store URL: expected a database file, as in sqlite:///relative.db or sqlite:////abs.db"
        )
    synchronous = options.pop("synchronous", "NORMAL").upper()
    if synchronous not in ("NORMAL", "FULL"):
        raise ConfigurationError(
            f"store URL: synchronous: expected NORMAL or FULL, got {synchronous!r}"
        )
    return SqliteStore(path, synchronous="FULL" if synchronous == "FULL" else "NORMAL")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"store URL: {name}: expected an integer, got {value!r}") from None


#: URL scheme -> factory(path, query options). Extended by the Redis and PostgreSQL stores.
STORES: dict[str, Callable[[str, dict[str, str]], IdempotencyStore]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


def store_from_url(url: str) -> IdempotencyStore:
    """A store described by ``url``.

    Example:
        >>> store_from_url("memory://")
        MemoryStore(max_records=10000)
        >>> store_from_url("sqlite:///idempotency.db")  # relative; sqlite:////abs.db is absolute
        SqliteStore('idempotency.db')

    Raises:
        ConfigurationError: unknown scheme or bad options, naming what is expected.
    """
    parts = urlsplit(url)
    factory = STORES.get(parts.scheme)
    if factory is None:
        raise ConfigurationError(
            f"store URL {url!r}: expected one of the schemes {sorted(STORES)}, got {parts.scheme!r}"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    options = dict(parse_qsl(parts.query))
    store = factory(path, options)
    if options:
        raise ConfigurationError(f"store URL {url!r}: unknown options {sorted(options)}")
    return store
