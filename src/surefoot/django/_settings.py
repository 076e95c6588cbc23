"""``settings.SUREFOOT`` read once per process, and the guards every adapter shares.

Rule 1: one reading. ``surefoot_settings()`` validates ``settings.SUREFOOT`` with the
        gateway's own code (``surefoot.gateway.app_settings``) on first use, and again
        only after Django says the setting changed (``setting_changed``: tests'
        ``override_settings``). A missing ``SUREFOOT`` is a ``ConfigurationError`` naming it.
        A relative ``{"config": path}`` is read from ``settings.BASE_DIR`` when it is set,
        and so is a relative SQLite store of a dict (``sqlite:///surefoot.db``), as Django
        reads its database: not from the directory the server was started in.
Rule 2: one guard of each kind per process and per reading: the middlewares, the
        decorators and the DRF throttle share their stores (one connection pool, one SQLite
        file handle), so the counters of one policy are the same counters wherever they are
        checked.
Rule 3: the principal of a request (``DjangoIdentity``): an API key of ``[[clients]]``,
        else Django's authenticated user (``user:<pk>``), else any other credential
        header, else the address. A header every visitor shares (a staging site's Basic
        auth, an app-wide ``X-API-Key``, a refreshed JWT) never makes logged-in users one
        principal, nor one user a new principal. The user is read only when no client key
        decides first.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from surefoot.errors import ConfigurationError
from surefoot.identity import Identity

if TYPE_CHECKING:
    from surefoot._asgi import Scope
    from surefoot.gateway import AppSettings

__all__ = ["cached", "surefoot_settings"]

SOURCE = "settings.SUREFOOT"
_T = TypeVar("_T")

_lock = threading.RLock()
_state: dict[str, Any] = {}
_cache: dict[Hashable, Any] = {}


def surefoot_settings() -> AppSettings:
    """The validated ``settings.SUREFOOT`` (Rule 1).

    Example:
        >>> surefoot_settings().rate_limit_policies

    Raises:
        ConfigurationError: ``SUREFOOT`` is missing or invalid; the message starts with
            ``settings.SUREFOOT``, names the field and what is expected.
    """
    with _lock:
        current: AppSettings | None = _state.get("settings")
        if current is not None:
            return current
        from django.conf import settings

        _connect()
        data = getattr(settings, "SUREFOOT", None)
        if data is None:
            raise ConfigurationError(
                f"{SOURCE}: required: a dict of the policy file's tables (stores, identity, "
                "clients, idempotency, rate_limit, routes) or {'config': 'path/to/policy.toml'}"
            )
        from surefoot.gateway import app_settings

        current = app_settings(
            _based(data, getattr(settings, "BASE_DIR", None)),
            source=SOURCE,
            identity=DjangoIdentity,
        )
        _state["settings"] = current
        return current


def _based(data: object, base: object) -> object:
    """``{"config": path}`` with a relative path read from ``settings.BASE_DIR`` (when set),
    as Django reads its other files, and a dict's relative SQLite stores too (Rule 1);
    anything else as it is."""
    if not isinstance(base, str | os.PathLike):
        return data
    if isinstance(data, dict) and isinstance(data.get("stores"), dict):
        stores = {
            name: _sqlite_based(url, base) if isinstance(url, str) else url
            for name, url in data["stores"].items()
        }
        return {**data, "stores": stores}
    if not (isinstance(data, dict) and len(data) == 1 and isinstance(data.get("config"), str)):
        return data
    path = Path(data["config"])
    if path.is_absolute():
        return data
    return {"config": str(Path(base) / path)}


def _sqlite_based(url: str, base: str | os.PathLike[str]) -> str:
    """``sqlite:///relative.db`` as ``sqlite:////BASE_DIR/relative.db``; others unchanged."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix) or url[len(prefix) :].startswith("/"):
        return url
    return prefix + str(Path(base) / url[len(prefix) :])


def cached(key: Hashable, build: Callable[[AppSettings], _T]) -> _T:
    """``build(settings)`` made once per process and per reading of the settings (Rule 2)."""
    try:  # built already: no lock on a request's path (``reset`` clears under the lock)
        found: _T = _cache[key]
        return found
    except KeyError:
        pass
    with _lock:
        settings = surefoot_settings()
        if key in _cache:
            value: _T = _cache[key]
            return value
        value = build(settings)
        _cache[key] = value
        return value


def reset() -> None:
    """Forget the settings and the guards built from them (the stores stay open for
    whoever holds them; the next use reads ``settings.SUREFOOT`` again)."""
    with _lock:
        _state.clear()
        _cache.clear()


def _changed(*, setting: str, **_: object) -> None:
    if setting == "SUREFOOT":
        reset()


def _connect() -> None:
    from django.core.signals import setting_changed

    # The dispatch_uid makes a repeated call a no-op.
    setting_changed.connect(_changed, dispatch_uid="surefoot.django.settings")


class DjangoUser:
    """A Django user as ``Identity`` reads it (``is_authenticated``, ``identity``), looked up
    only when asked (Rule 3): ``request.user`` may cost a session and a database query."""

    __slots__ = ("_get",)

    def __init__(self, get: Callable[[], object]) -> None:
        self._get = get

    @property
    def is_authenticated(self) -> bool:
        user = self._get()
        return bool(getattr(user, "is_authenticated", False))

    @property
    def identity(self) -> str:
        user = self._get()
        pk = getattr(user, "pk", None)
        if pk is not None:
            return str(pk)
        get_username = getattr(user, "get_username", None)
        return str(get_username()) if callable(get_username) else str(user)


def user_of(request: Any) -> DjangoUser | None:
    """``request.user`` (Django's or DRF's) for ``Identity``, read lazily; None when the
    request has no ``user`` attribute (no ``AuthenticationMiddleware``)."""
    if not hasattr(request, "_request") and "user" not in vars(request):
        return None
    return DjangoUser(lambda: getattr(request, "user", None))


class DjangoIdentity(Identity):
    """``Identity`` with Django's authenticated user before credentials that are not an
    API key of ``[[clients]]`` (Rule 3)."""

    def _client(self, scope: Scope) -> str | None:
        """The principal of a ``[[clients]]`` API key the request carries (None: none)."""
        if not self.lists_credentials:
            return None
        credential, known = self._credential(scope)
        return credential if known else None

    def __call__(self, scope: Scope) -> str:
        return self._client(scope) or self._user(scope) or super().__call__(scope)

    def rate_limit_principal(self, scope: Scope) -> str:
        return self._client(scope) or self._user(scope) or super().rate_limit_principal(scope)
