"""The Django app of surefoot: ``INSTALLED_APPS = [..., "surefoot.django"]``.

It brings ``manage.py surefoot keys ...``, the migration that creates
``TransactionalKeys``' table on SQLite and PostgreSQL (``manage.py migrate surefoot``), and
system checks whenever Django runs them (``manage.py check``, ``runserver``, ``migrate``):

- ``surefoot.E001``: ``settings.SUREFOOT`` is invalid (its message);
- ``surefoot.E002``: a surefoot middleware before ``AuthenticationMiddleware`` (or without
  it) while ``django.contrib.auth`` is installed: users would be keyed by their address;
- ``surefoot.W001``: a ``memory://`` store (each worker process counts and keys alone);
- ``surefoot.W002``: ``[server] trusted_proxies`` covers every address (``0.0.0.0/0``,
  ``::/0``): any client can choose its address with ``X-Forwarded-For``.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig

__all__ = ["SurefootConfig"]


class SurefootConfig(AppConfig):  # type: ignore[misc]
    """``surefoot.django``, under the label ``surefoot``."""

    name = "surefoot.django"
    label = "surefoot"
    verbose_name = "surefoot"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        checks.register(check_settings, checks.Tags.compatibility)
        checks.register(check_middleware_order, checks.Tags.compatibility)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``settings.SUREFOOT`` validated: one ``surefoot.E001`` error with its message."""
    from django.core import checks

    from surefoot.django._settings import surefoot_settings
    from surefoot.errors import ConfigurationError

    try:
        settings = surefoot_settings()
    except ConfigurationError as exc:
        return [checks.Error(str(exc), id="surefoot.E001")]
    found: list[Any] = []
    for name, url in sorted(settings.stores.items()):
        if url.startswith("memory:"):
            found.append(
                checks.Warning(
                    f"settings.SUREFOOT: stores.{name}: {url!r} is kept in each worker "
                    "process: keys and counters are not shared between workers",
                    hint="use sqlite:///surefoot.db (one machine) or redis://... (several)",
                    id="surefoot.W001",
                )
            )
    for network in settings.config.root.server.trusted_proxies:
        if str(network).strip().endswith("/0"):
            found.append(
                checks.Warning(
                    f"settings.SUREFOOT: server.trusted_proxies: {network!r} trusts every "
                    "address: any client chooses the address it is limited by with "
                    "X-Forwarded-For",
                    hint="list only the addresses of your proxies",
                    id="surefoot.W002",
                )
            )
    return found


#: surefoot's middlewares that need ``request.user``.
GUARDS = ("surefoot.django.RateLimitMiddleware", "surefoot.django.IdempotencyMiddleware")
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"


def check_middleware_order(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``surefoot.E002``: a surefoot middleware that would not see ``request.user``."""
    from django.apps import apps
    from django.conf import settings
    from django.core import checks

    if not apps.is_installed("django.contrib.auth"):
        return []
    middleware = [str(name) for name in getattr(settings, "MIDDLEWARE", None) or []]
    auth = next((i for i, name in enumerate(middleware) if _authenticates(name)), None)
    return [
        checks.Error(
            f"settings.MIDDLEWARE: {name} is before {AUTHENTICATION}"
            if auth is not None
            else f"settings.MIDDLEWARE: {name} without {AUTHENTICATION}",
            hint=(
                f"put {name} after {AUTHENTICATION}: without request.user every user "
                "behind one address is one principal and shares idempotency keys"
            ),
            id="surefoot.E002",
        )
        for index, name in enumerate(middleware)
        if name in GUARDS and (auth is None or index < auth)
    ]


def _authenticates(name: str) -> bool:
    """Whether middleware ``name`` is ``AuthenticationMiddleware`` or a subclass of it."""
    if name == AUTHENTICATION:
        return True
    from django.contrib.auth.middleware import (
        AuthenticationMiddleware,
    )
    from django.utils.module_loading import import_string

    try:
        found = import_string(name)
    except ImportError:
        return False
    return isinstance(found, type) and issubclass(found, AuthenticationMiddleware)
