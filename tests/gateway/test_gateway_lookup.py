"""``LookupResolver.settle`` races: two settlers of one unknown key release it once."""

from __future__ import annotations

import httpx
import pytest

from surefoot.gateway._lookup import LookupResolver, _Pending
from surefoot.gateway._schema import Lookup
from surefoot.idempotency import Begin, Outcome, Reserved, State, Step
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

KEY = "idem:k1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def begin(token: str) -> Begin:
    return Begin(fingerprint="f", token=token, lease=5.0, ttl=3600.0, on_lease_expiry="unknown")


async def unknown_key(store: MemoryStore, clock: ManualClock) -> None:
    assert isinstance(await store.begin(KEY, begin("t1"), clock.now()), Reserved)
    assert await store.finish(KEY, "t1", Outcome(Step.MARK_UNKNOWN), clock.now())


def resolver(store: MemoryStore, clock: ManualClock) -> LookupResolver:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    lookup = Lookup(path="/charges/by-reference/{body.reference}")
    return LookupResolver(
        store=store,
        client=client,
        base_url="http://upstream",
        lookups={"POST /charges": lookup},
        key_header="Idempotency-Key",
        body_field=None,
        ttl=3600.0,
        not_found_after=2.0,
        clock=clock,
        hooks=[],
    )


def pending(since: float) -> _Pending:
    return _Pending(
        method="GET",
        target="/charges/by-reference/r1",
        headers=(),
        found=(200,),
        not_found=(404,),
        status=201,
        timeout=1.0,
        not_found_after=2.0,
        since=since,
    )


async def test_a_second_release_never_frees_a_retry_s_reservation() -> None:
    clock = ManualClock(1000.0)
    store = MemoryStore()
    await unknown_key(store, clock)
    settler = resolver(store, clock)
    clock.advance(5)
    assert await settler.settle(KEY, pending(1000.0), how="lookup", rid="a") == "release"
    # The first settler's retry reserves the key and runs; the second settler's 404 came
    # from before that run: its release is refused, the running retry keeps the key.
    assert isinstance(await store.begin(KEY, begin("t2"), clock.now()), Reserved)
    assert await settler.settle(KEY, pending(1000.0), how="lookup", rid="b") is None
    record = await store.get(KEY, clock.now())
    assert record is not None
    assert (record.state, record.token) == (State.IN_FLIGHT, "t2")


async def test_a_dead_worker_s_key_counts_its_age_from_its_lease() -> None:
    clock = ManualClock(1000.0)
    store = MemoryStore()
    assert isinstance(await store.begin(KEY, begin("t1"), clock.now()), Reserved)
    clock.advance(6)  # the worker died: the lease (5 s) ran out
    decision = await store.begin(KEY, begin("t2"), clock.now())
    assert decision.__class__.__name__ == "Unknown"
    settler = resolver(store, clock)
    # No saved lookup (since=-1): the age is counted from the lease's end, 1 s ago.
    assert await settler.settle(KEY, pending(-1.0), how="lookup", rid="a") is None
    clock.advance(1.5)
    assert await settler.settle(KEY, pending(-1.0), how="lookup", rid="a") == "release"
    assert await store.get(KEY, clock.now()) is None
