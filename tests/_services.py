"""Real servers for the tests: where to find them, and what to do when one is missing."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

#: Where the tests find real servers (the machine's defaults; .ci/run starts them).
SERVICES = {
    "redis": ("SUREFOOT_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "redis_cluster": ("SUREFOOT_REDIS_CLUSTER_URL", "redis+cluster://127.0.0.1:7000"),
    "postgres": ("SUREFOOT_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
}


def service_url(name: str) -> str:
    """The URL of a real server the test needs: skipped when it is not running, a failure
    instead when ``SUREFOOT_REQUIRE_SERVICES=1`` (as in CI)."""
    variable, default = SERVICES[name]
    url = os.environ.get(variable, default)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 0
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({variable}): {exc}"
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url
