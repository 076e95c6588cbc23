"""``check_start``: what ``surefoot check-config`` finds beyond the file itself.

``load_config`` checks the file alone and opens nothing (``_config`` Rule 2). Before a
deploy, ``check-config`` also wants to know what would stop ``surefoot serve`` at start,
and what would hurt it once running, without starting it.

Rule 1: an *error* is what would stop the start whatever the network does: an upstream
        app that cannot be imported, a store URL its driver refuses (a bad option, a
        missing driver extra, a PostgreSQL schema that is not migrated), an SQLite file
        in a directory that does not exist, a store whose server answers by refusing the
        gateway (its login, its database: Redis ``WRONGPASS``, ``ERR AUTH``, ``ERR DB
        index``; PostgreSQL ``FATAL:``), reported with the server's reason, masked.
Rule 2: a *warning* is what may be different when the gateway starts: a network store
        (Redis, PostgreSQL) that does not answer within ``store_timeout`` seconds (a
        refused or reset connection included); or what the gateway would do although it
        is valid: a webhook endpoint that forgets its event ids (``retention``) before its
        sender stops delivering them (the scheme's ``horizon``: retries and manual
        resends), so a late delivery would run its event again.
Rule 3: nothing is written. An SQLite store is never opened (opening creates and migrates
        its file): its options are checked on an in-memory database of the same URL. A
        network store is connected, asked for one key that does not exist, and closed.
Rule 4: ``[webhooks.send]``'s database is checked like a store: an SQLite file needs its
        directory (an error), a PostgreSQL server must let the gateway in (refused: an
        error) and answer within ``store_timeout`` (else a warning). Its tables are not
        checked: ``surefoot serve`` creates them at start if they are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from surefoot._masking import masked_text, masked_url
from surefoot.clock import SystemClock
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.gateway._config import GatewayConfig
from surefoot.gateway._gateway import _import_app
from surefoot.storage import IdempotencyStore, store_from_url

__all__ = ["StartCheck", "check_start"]

_PROBE_KEY = "surefoot-check-config"


@dataclass(frozen=True, slots=True)
class StartCheck:
    """What ``check_start`` found: ``errors`` stop the start, ``warnings`` may not."""

    errors: tuple[str, ...]
    warnings: tuple[str, ...]


async def check_start(config: GatewayConfig, *, store_timeout: float = 2.0) -> StartCheck:
    """What would stop (errors) or may hurt (warnings) ``surefoot serve`` with ``config``.

    Example:
        >>> found = asyncio.run(check_start(load_config("gateway.toml")))
        >>> found.errors, found.warnings
        ((), ())

    Args:
        config: a validated policy file.
        store_timeout: seconds each network store has to answer.
    """
    errors: list[str] = []
    warnings: list[str] = []
    app = config.root.upstream.app
    if app is not None:
        try:
            _import_app(app)
        except ConfigurationError as exc:
            errors.append(str(exc))
    warnings.extend(_retention_warnings(config))
    used = dict.fromkeys(
        (
            config.root.idempotency.store,
            config.root.rate_limit.store,
            *(webhook.store for webhook in config.webhooks.values()),
        )
    )
    for name in used:
        url = config.store_url(name)
        where = f"stores.{name} ({masked_url(url)})"
        try:
            await _probe(url, store_timeout)
        except ConfigurationError as exc:
            errors.append(f"{where}: {exc}")
        except (StoreUnavailable, TimeoutError) as exc:
            cause = exc.__cause__ or exc
            reason = masked_text(" ".join(f"{type(cause).__name__}: {cause}".split()), url)
            if _refused(cause):
                errors.append(f"{where}: refused the connection ({reason})")
                continue
            # A cancelled wait has nothing more to say than the timeout.
            silent = isinstance(cause, TimeoutError | asyncio.CancelledError)
            detail = "" if silent else f" ({reason})"
            warnings.append(f"{where}: did not answer within {store_timeout:g} s{detail}")
    if config.sender is not None:
        await _check_outbox(config.sender.database, store_timeout, errors, warnings)
    return StartCheck(tuple(errors), tuple(warnings))


async def _check_outbox(url: str, seconds: float, errors: list[str], warnings: list[str]) -> None:
    """Rule 4: the outbox's database, reachable without writing anything."""
    where = f"webhooks.send.database ({masked_url(url)})"
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path
        parent = Path(path).parent
        if path and path != ":memory:" and not parent.is_dir():
            errors.append(f"{where}: no directory {str(parent)!r} for the database file")
        return
    try:
        import psycopg
    except ImportError:
        errors.append(f"{where}: PostgreSQL needs psycopg: pip install 'surefoot[postgres]'")
        return

    def connect() -> None:
        psycopg.connect(url, connect_timeout=max(1, math.ceil(seconds))).close()

    try:
        await asyncio.wait_for(asyncio.to_thread(connect), seconds + 1)
    except (psycopg.Error, TimeoutError) as exc:
        reason = masked_text(" ".join(f"{type(exc).__name__}: {exc}".split()), url)
        if _refused(exc):
            errors.append(f"{where}: refused the connection ({reason})")
        else:
            detail = "" if isinstance(exc, TimeoutError) else f" ({reason})"
            warnings.append(f"{where}: did not answer within {seconds:g} s{detail}")


def _retention_warnings(config: GatewayConfig) -> list[str]:
    """Rule 2: each endpoint whose retention is shorter than its scheme's horizon."""
    found = []
    for index, table in enumerate(config.root.webhooks.receive):
        webhook = config.webhooks.get(table.name)
        if webhook is None or webhook.path != table.path:
            continue  # not built (a problem of the file): nothing to warn about
        endpoint = webhook.endpoint
        horizon = endpoint.scheme.horizon
        if horizon is None or endpoint.retention >= horizon:
            continue
        found.append(
            f"webhooks.receive[{index}] ({endpoint.name}): retention = "
            f"{_seconds(endpoint.retention)} is shorter than the {_seconds(horizon)} over "
            f"which a {table.scheme} sender may deliver an event again (retries and manual "
            "resends): such a late delivery would run its event a second time; set "
            f"retention = {math.ceil(horizon)} or more"
        )
    return found


def _seconds(value: float) -> str:
    """``2851200 s (33 days)``, ``3600 s (0.0417 days)``."""
    return f"{value:.0f} s ({value / 86400:.3g} days)"


async def _probe(url: str, seconds: float) -> None:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # Rule 3: the same options on an in-memory database, and the file's directory.
        query = f"?{parts.query}" if parts.query else ""
        store_from_url(f"sqlite:///:memory:{query}")
        path = Path(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path.parent.is_dir():
            raise ConfigurationError(f"no directory {str(path.parent)!r} for the database file")
        return
    store = store_from_url(url)
    try:
        await _answer(store, seconds)
    finally:
        with contextlib.suppress(Exception):
            await store.aclose()


async def _answer(store: IdempotencyStore, seconds: float) -> None:
    last: StoreUnavailable | None = None
    try:
        async with asyncio.timeout(seconds):
            opener = getattr(store, "open", None)
            if opener is not None:
                await opener()
            # A store without open() connects on its first call, which may spend that
            # call's short timeout connecting: ask again until the check's own timeout.
            while True:
                try:
                    await store.get(_PROBE_KEY, SystemClock().now())
                    return
                except StoreUnavailable as exc:
                    if _refused(exc.__cause__):
                        raise  # the same on every try (Rule 1)
                    last = exc
                    await asyncio.sleep(0.1)
    except TimeoutError:
        if last is not None:
            raise last from last.__cause__
        raise


#: How a Redis server refuses a client, as opposed to failing to answer (Rule 1).
_REDIS_REFUSALS = (
    "WRONGPASS",
    "NOAUTH",
    "NOPERM",
    "ERR AUTH",
    "ERR invalid password",
    "ERR DB index",
)


def _refused(cause: BaseException | None) -> bool:
    """Whether ``cause`` is a store's server refusing the gateway itself (Rule 1): its
    answer will be the same at every start. The drivers are optional extras: each is
    imported only to recognise its own errors."""
    try:
        from redis.exceptions import AuthenticationError, RedisError
    except ImportError:  # pragma: no cover - the extra is part of the test setup
        pass
    else:
        if isinstance(cause, AuthenticationError):
            return True
        if isinstance(cause, RedisError):
            return str(cause).startswith(_REDIS_REFUSALS)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the extra is part of the test setup
        pass
    else:
        if isinstance(cause, psycopg.OperationalError):
            # libpq quotes the server's own answer after "FATAL:" (a refused role,
            # password or database); a network failure has none.
            return "FATAL:" in str(cause)
    return False
