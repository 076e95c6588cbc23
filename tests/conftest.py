from __future__ import annotations

import pytest

from _services import service_url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> str:
    return service_url("redis")


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    return service_url("redis_cluster")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    return service_url("postgres")
