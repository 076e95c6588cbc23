"""surefoot.testing.FlakyStore fails, stalls and comes back exactly when told to.

While up it is the store it wraps: the contract suites run over it too
(the "flaky" store of tests/storage/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from _support import T0
from surefoot.errors import StoreUnavailable
from surefoot.events import Event
from surefoot.idempotency import (
    Begin,
    IdempotencyMiddleware,
    Outcome,
    Reserved,
    Step,
    StoredResponse,
    StoreFailed,
)
from surefoot.ratelimit import Item, Limit
from surefoot.storage import (
    IdempotencyStore,
    MemoryStore,
    RateLimitStore,
    SqliteStore,
    StoreDown,
    StoreHealth,
    StoreRecovered,
)
from surefoot.testing import FlakyStore, ManualClock

pytestmark = pytest.mark.anyio

OK = StoredResponse(200, (), b"ok")


def begin(token: str = "t1") -> Begin:
    return Begin(fingerprint="fp", token=token, lease=30, ttl=3600, on_lease_expiry="unknown")


def slot(token: str) -> Item:
    return Item("rl:a", "concurrency", Limit(1, 1, algorithm="concurrency"), token=token)


@pytest.fixture
async def store() -> AsyncIterator[FlakyStore]:
    s = FlakyStore(MemoryStore())
    yield s
    await s.aclose()


async def refused(call: Coroutine[Any, Any, object]) -> StoreUnavailable:
    with pytest.raises(StoreUnavailable) as raised:
        await call
    return raised.value


async def reserves(store: FlakyStore, key: str = "k") -> bool:
    return isinstance(await store.begin(key, begin(), T0), Reserved)


# -- up ------------------------------------------------------------------------------------------


async def test_while_up_every_call_reaches_the_wrapped_store_and_is_counted(
    store: FlakyStore,
) -> None:
    assert await store.begin("k", begin(), T0) == Reserved("t1", 1, took_over=False)
    assert await store.wrapped.get("k", T0) is not None  # kept by the real store
    assert await store.finish("k", "t1", Outcome(Step.RELEASE), T0)
    admitted, _ = await store.acquire([slot("a")], T0)
    full, _ = await store.acquire([slot("b")], T0)  # the real store's one slot is taken
    await store.release("rl:a", "a", T0)
    assert (admitted, full) == (True, False)
    assert store.calls == {"begin": 1, "finish": 1, "acquire": 2, "release": 1}


async def test_it_is_both_kinds_of_store_and_shows_the_one_it_wraps(tmp_path: Path) -> None:
    sqlite = SqliteStore(tmp_path / "s.db")
    store = FlakyStore(sqlite)
    assert isinstance(store, IdempotencyStore)
    assert isinstance(store, RateLimitStore)
    assert store.wrapped is sqlite
    assert store.rate_limit_algorithms == sqlite.rate_limit_algorithms
    store.rate_limit_algorithms = frozenset({"gcra"})
    assert sqlite.rate_limit_algorithms == frozenset({"gcra"})
    assert repr(store) == f"FlakyStore({sqlite!r})"
    await store.aclose()


def test_it_refuses_what_is_not_a_whole_store() -> None:
    with pytest.raises(TypeError, match="expected a store that is both an IdempotencyStore and"):
        FlakyStore(object())  # type: ignore[arg-type]


# -- down, fail_next, up -------------------------------------------------------------------------


async def test_down_fails_every_operation_as_a_network_store_would_until_up(
    store: FlakyStore,
) -> None:
    store.down()
    error = await refused(store.begin("k", begin(), T0))
    assert error.fields == {"retry_after": 1}
    assert isinstance(error.__cause__, ConnectionError)  # events report "ConnectionError"
    for call in (
        store.finish("k", "t1", Outcome(Step.RELEASE), T0),
        store.resolve("k", OK, T0),
        store.forget("k", T0),
        store.get("k", T0),
        store.records(T0),
        store.purge(T0),
        store.acquire([slot("a")], T0),
        store.release("rl:a", "a", T0),
    ):
        await refused(call)
    await store.aclose()  # never faulted
    assert await store.wrapped.get("k", T0) is None  # nothing reached the real store
    store.up()
    assert await reserves(store)
    assert store.calls["begin"] == 2


async def test_down_of_some_operations_leaves_the_others_working(store: FlakyStore) -> None:
    store.down("finish", "release")
    assert await reserves(store)
    await refused(store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0))
    assert (await store.acquire([slot("a")], T0))[0]
    await refused(store.release("rl:a", "a", T0))
    record = await store.get("k", T0)
    assert record is not None
    assert record.response is None  # still in flight: the finish never arrived


async def test_down_after_lets_that_many_more_calls_through_first(store: FlakyStore) -> None:
    store.down("begin", after=2)
    assert await reserves(store, "a")
    assert await reserves(store, "b")
    await refused(store.begin("c", begin(), T0))
    await refused(store.begin("d", begin(), T0))
    assert store.calls["begin"] == 4


async def test_fail_next_fails_that_many_calls_of_each_operation_then_works(
    store: FlakyStore,
) -> None:
    store.fail_next("begin", count=2)
    await refused(store.begin("k", begin(), T0))
    assert await store.get("k", T0) is None  # not named: working
    await refused(store.begin("k", begin(), T0))
    assert await reserves(store)
    store.fail_next()  # one call of each operation
    await refused(store.get("k", T0))
    await refused(store.purge(T0))
    assert await store.get("k", T0) is not None


async def test_the_error_raised_can_be_chosen_per_store_or_per_fault() -> None:
    store = FlakyStore(MemoryStore(), error=TimeoutError)
    store.down("get")
    with pytest.raises(TimeoutError):
        await store.get("k", T0)
    disk = OSError("disk I/O error")
    store.fail_next("begin", error=disk)
    with pytest.raises(OSError, match="disk I/O error") as raised:
        await store.begin("k", begin(), T0)
    assert raised.value is disk

    def leaky() -> StoreUnavailable:
        error = StoreUnavailable("redis at hunter2@db refused", retry_after=3)
        error.__cause__ = ConnectionRefusedError("hunter2")
        return error

    store.down("acquire", error=leaky)
    assert (await refused(store.acquire([slot("a")], T0))).fields["retry_after"] == 3
    fresh = await refused(store.acquire([slot("a")], T0))
    assert isinstance(fresh.__cause__, ConnectionRefusedError)
    await store.aclose()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.down("begn"), "FlakyStore.down: unknown operation 'begn', expected one of"),
        (lambda s: s.stall("aclose"), "FlakyStore.stall: unknown operation 'aclose'"),
        (lambda s: s.down(after=-1), "FlakyStore.down: after: expected calls >= 0, got -1"),
        (lambda s: s.fail_next(count=0), "FlakyStore.fail_next: expected a count >= 1, got 0"),
    ],
)
def test_mistakes_are_refused_at_once(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(FlakyStore(MemoryStore()))


# -- stalls ----------------------------------------------------------------------------------------


async def test_a_stalled_call_waits_until_resumed_and_counts_on_arrival(
    store: FlakyStore,
) -> None:
    store.stall("begin")
    waiting = asyncio.create_task(store.begin("k", begin(), T0))
    await store.wait_for_calls(1, "begin")
    assert store.calls["begin"] == 1
    assert await store.get("k", T0) is None  # not named: answered; the begin is held
    assert not waiting.done()
    store.resume()
    assert await waiting == Reserved("t1", 1, took_over=False)


async def test_calls_held_while_the_store_went_down_fail_when_let_through(
    store: FlakyStore,
) -> None:
    store.stall()
    calls = [asyncio.create_task(store.acquire([slot(f"t{n}")], T0)) for n in range(3)]
    await store.wait_for_calls(3, "acquire")
    store.down()
    store.resume()
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call


async def test_a_cancelled_stalled_call_never_reaches_the_store_and_up_releases_the_rest(
    store: FlakyStore,
) -> None:
    store.stall("begin")
    cancelled = asyncio.create_task(store.begin("a", begin(), T0))
    held = asyncio.create_task(store.begin("b", begin(), T0))
    await store.wait_for_calls(2, "begin")
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    store.up()
    assert await held == Reserved("t1", 1, took_over=False)
    assert await store.wrapped.get("a", T0) is None
    assert store.calls["begin"] == 2  # counted on arrival, cancelled or not


# -- what a user sees through a middleware ------------------------------------------------------


async def test_an_outage_and_its_recovery_through_the_idempotency_middleware() -> None:
    executions = 0

    async def charge(request: Request) -> Response:
        nonlocal executions
        executions += 1
        return JSONResponse({"charge": executions}, status_code=201)

    store = FlakyStore(MemoryStore())
    clock = ManualClock(T0)
    events: list[Event] = []
    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/charges", charge, methods=["POST"])]),
        store=store,
        clock=clock,
        hooks=[events.append],
        store_health=StoreHealth(jitter=0),
    )
    headers = {"Idempotency-Key": "k"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        store.down()
        down = await c.post("/charges", headers=headers)
        store.up()
        clock.advance(1)  # past the backoff: the next request probes the store
        ok = await c.post("/charges", headers=headers)
        replay = await c.post("/charges", headers=headers)
    assert (down.status_code, down.json()["code"]) == (503, "store_unavailable")
    assert (ok.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert executions == 1
    [failed] = [e for e in events if isinstance(e, StoreFailed)]
    assert (failed.phase, failed.error) == ("begin", "ConnectionError")
    [went_down] = [e for e in events if isinstance(e, StoreDown)]
    assert went_down.store == "MemoryStore"  # the wrapped store, as for any store wrapper
    assert len([e for e in events if isinstance(e, StoreRecovered)]) == 1
