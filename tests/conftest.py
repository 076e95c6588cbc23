from __future__ import annotations

import pytest

from _services import service_url
from _support import T0
from surefoot.events import Event
from surefoot.testing import ManualClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    """The test's clock: at ``T0`` until the test moves it."""
    return ManualClock(T0)


@pytest.fixture
def events() -> list[Event]:
    """Where the test's hooks put the events (``hooks=[events.append]``)."""
    return []


@pytest.fixture(scope="session")
def redis_url() -> str:
    return service_url("redis")


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    return service_url("redis_cluster")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    return service_url("postgres")
