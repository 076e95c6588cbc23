"""The settings of the tests' Django project: ``django_settings(store_url)`` for
``settings.configure`` (conftest) and, as a settings module, for gunicorn (environment:
``SUREFOOT_TEST_STORE``, ``SUREFOOT_TEST_DATABASE``)."""

from __future__ import annotations

import os
from typing import Any

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "surefoot.django.ProblemMiddleware",
    "surefoot.django.RateLimitHeadersMiddleware",
    "surefoot.django.RateLimitMiddleware",
    "surefoot.django.IdempotencyMiddleware",
]


def surefoot(store_url: str) -> dict[str, Any]:
    return {
        "stores": {"default": store_url},
        "identity": {"address_limits": []},
        "idempotency": {"methods": ["POST"]},
        "routes": [
            {"match": "POST /charges", "idempotency": {"required": True}},
            {"match": "POST /stream", "idempotency": {"required": True}},
            {"match": "POST /unknown", "idempotency": {"on_server_error": "unknown"}},
            {"match": "POST /decorated", "idempotency": False},
            {"match": "POST /orders", "idempotency": False},
            {"match": "POST /pg/orders", "idempotency": False},
        ],
        "rate_limit": {
            "policies": [{"name": "shared", "limits": ["30/minute"], "routes": ["GET /limited"]}]
        },
    }


def django_settings(store_url: str, database: str, **databases: Any) -> dict[str, Any]:
    return {
        "DEBUG": False,
        "SECRET_KEY": "surefoot-tests",
        "ALLOWED_HOSTS": ["*"],
        "ROOT_URLCONF": "_django_urls",
        "INSTALLED_APPS": [
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "rest_framework",
            "surefoot.django",
        ],
        "MIDDLEWARE": MIDDLEWARE,
        "DATABASES": {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": database,
                "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
            },
            **databases,
        },
        "USE_TZ": True,
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "REST_FRAMEWORK": {"UNAUTHENTICATED_USER": None},
        "SUREFOOT": surefoot(store_url),
        "LOGGING_CONFIG": None,
    }


if "SUREFOOT_TEST_STORE" in os.environ:  # a settings module for gunicorn's workers
    globals().update(
        django_settings(os.environ["SUREFOOT_TEST_STORE"], os.environ["SUREFOOT_TEST_DATABASE"])
    )
