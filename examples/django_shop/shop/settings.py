"""The shop's settings: Django's few, and ``SUREFOOT``, the policy file's tables.

``SHOP_STORE`` (environment) is the store every gunicorn worker shares; by default a SQLite
file in the working directory. ``redis://127.0.0.1:6379/0`` shares it beyond one machine.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "only-for-the-demo")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
USE_TZ = True

INSTALLED_APPS = [
    "rest_framework",
    "surefoot.django",  # manage.py surefoot keys ...
]

MIDDLEWARE = [
    "surefoot.django.ProblemMiddleware",
    "surefoot.django.RateLimitHeadersMiddleware",  # SurefootThrottle's RateLimit fields
    "surefoot.django.RateLimitMiddleware",
    "surefoot.django.IdempotencyMiddleware",
]

# The gateway's policy file, as a dict: the same tables, fields and messages.
SUREFOOT = {
    "stores": {"default": os.environ.get("SHOP_STORE", "sqlite:///surefoot.db")},
    "identity": {"address_limits": []},
    "routes": [
        # Every charge needs a key: a retried charge replays, it never charges twice.
        {"match": "POST /v1/charges", "idempotency": {"required": True, "ttl": 86400}},
    ],
    "rate_limit": {
        "policies": [
            {"name": "charges", "limits": ["20/minute"], "routes": ["POST /v1/charges"]},
        ],
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
