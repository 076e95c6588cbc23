"""surefoot for Django: idempotency keys and rate limits configured in ``settings.SUREFOOT``.

``settings.SUREFOOT`` holds the tables of the gateway's policy file that apply inside an
app (``stores``, ``identity``, ``clients``, ``idempotency``, ``rate_limit``, ``routes``), or
``{"config": "policy.toml"}``; the gateway's own code validates it
(``surefoot.gateway.app_settings``). On it:

- ``IdempotencyMiddleware`` and ``RateLimitMiddleware``: the ``surefoot.wsgi`` guards as
  Django middlewares; ``ProblemMiddleware`` answers a ``SurefootError`` a view raised.
- ``@idempotent(...)`` and ``@rate_limit("10/minute")``: the same for one view.
- ``SurefootThrottle``: a Django REST framework throttle class, with
  ``RateLimitHeadersMiddleware`` adding its ``RateLimit`` fields to DRF's responses.
- ``transactional_claim(request)``: ``TransactionalKeys`` inside ``transaction.atomic()``.
- ``manage.py surefoot keys list|resolve|forget|purge`` (with ``"surefoot.django"`` in
  ``INSTALLED_APPS``, label ``surefoot``).

Every name is imported on first use: ``import surefoot.django`` reads no settings and
imports no part of Django. Needs ``surefoot[django]`` (and the gateway extra's
dependencies, which validate the settings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names

if TYPE_CHECKING:
    from surefoot.django._settings import surefoot_settings
    from surefoot.django.decorators import idempotent, rate_limit
    from surefoot.django.middleware import (
        IdempotencyMiddleware,
        ProblemMiddleware,
        RateLimitHeadersMiddleware,
        RateLimitMiddleware,
    )
    from surefoot.django.throttling import SurefootThrottle
    from surefoot.django.transactional import TransactionalClaim, transactional_claim
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {
            "surefoot.django._settings": ("surefoot_settings",),
            "surefoot.django.decorators": ("idempotent", "rate_limit"),
            "surefoot.django.middleware": (
                "IdempotencyMiddleware",
                "ProblemMiddleware",
                "RateLimitHeadersMiddleware",
                "RateLimitMiddleware",
            ),
            "surefoot.django.throttling": ("SurefootThrottle",),
            "surefoot.django.transactional": ("TransactionalClaim", "transactional_claim"),
        },
        extra=("django", "django"),
    )

__all__ = [
    "IdempotencyMiddleware",
    "ProblemMiddleware",
    "RateLimitHeadersMiddleware",
    "RateLimitMiddleware",
    "SurefootThrottle",
    "TransactionalClaim",
    "idempotent",
    "rate_limit",
    "surefoot_settings",
    "transactional_claim",
]
