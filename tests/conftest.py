from __future__ import annotations

from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess

import pytest

from _services import service_url
from _support import GUARD, SPAWN, T0
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


@pytest.fixture
def spawn() -> Iterator[Callable[..., BaseProcess]]:
    """Start spawned worker processes; kill whatever is still alive at the end."""
    started: list[BaseProcess] = []

    def start(target: Callable[..., None], *args: object) -> BaseProcess:
        process = SPAWN.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(GUARD)
