from __future__ import annotations

import pytest

from _support import T0
from surefoot.errors import ConfigurationError, StoreCapacityExceeded
from surefoot.idempotency._core import Begin, Outcome, Reserved, Step, StoredResponse
from surefoot.storage import MemoryStore, store_from_url

pytestmark = pytest.mark.anyio

OK = StoredResponse(200, (), b"ok")


def req(token: str) -> Begin:
    return Begin(fingerprint="fp", token=token, lease=30, ttl=600, on_lease_expiry="unknown")


async def test_full_store_refuses_rather_than_drop_a_live_record_by_default() -> None:
    store = MemoryStore(max_records=2)
    await store.begin("done", req("t1"), T0)
    await store.finish("done", "t1", Outcome(Step.COMPLETE, OK), T0)
    await store.begin("flight", req("t2"), T0)
    with pytest.raises(StoreCapacityExceeded):
        await store.begin("new", req("t3"), T0 + 1)
    # The completed record is still replayed inside its TTL: no second execution.
    assert await store.get("done", T0 + 1) is not None
    # Once it has expired, its room is taken.
    assert isinstance(await store.begin("new", req("t3"), T0 + 600), Reserved)
    assert await store.get("done", T0 + 600) is None


async def test_a_full_store_says_when_its_first_record_expires() -> None:
    # A store full of completed records living for hours used to say "retry in 1 second".
    store = MemoryStore(max_records=3)
    for n, at in enumerate((T0, T0 + 100, T0 + 50)):
        await store.begin(f"k{n}", req(f"t{n}"), at)
        await store.finish(f"k{n}", f"t{n}", Outcome(Step.COMPLETE, OK), at)
    with pytest.raises(StoreCapacityExceeded) as info:
        await store.begin("new", req("t9"), T0 + 200.5)
    assert info.value.fields == {"retry_after": 400}  # k0 expires at T0 + 600
    assert "nothing was executed. Retry the same request in 400 seconds." in str(info.value)
    with pytest.raises(StoreCapacityExceeded) as info:
        await store.begin("new", req("t9"), T0 + 599.9)
    assert info.value.fields == {"retry_after": 1}  # never 0


async def test_full_store_evicts_completed_but_never_in_flight_or_unknown() -> None:
    store = MemoryStore(max_records=3, on_full="evict")
    await store.begin("flight", req("t1"), T0)
    await store.begin("unknown", req("t2"), T0)
    await store.finish("unknown", "t2", Outcome(Step.MARK_UNKNOWN), T0)
    await store.begin("done", req("t3"), T0)
    await store.finish("done", "t3", Outcome(Step.COMPLETE, OK), T0)
    assert isinstance(await store.begin("new", req("t4"), T0 + 1), Reserved)
    assert len(store) == 3
    assert await store.get("done", T0 + 1) is None
    assert await store.get("flight", T0 + 1) is not None
    assert await store.get("unknown", T0 + 1) is not None
    # Nothing evictable left: refuse rather than risk a second execution.
    with pytest.raises(StoreCapacityExceeded):
        await store.begin("more", req("t5"), T0 + 2)


async def test_full_store_drops_an_expired_record_first() -> None:
    store = MemoryStore(max_records=2)
    await store.begin("old", req("t1"), T0)
    await store.begin("done", req("t2"), T0 + 500)
    await store.finish("done", "t2", Outcome(Step.COMPLETE, OK), T0 + 500)
    assert isinstance(await store.begin("new", req("t3"), T0 + 601), Reserved)
    assert await store.get("done", T0 + 601) is not None


def test_max_records_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match=r"MemoryStore.max_records: expected a positive"):
        MemoryStore(max_records=0)


def test_on_full_is_refuse_or_evict_also_by_url() -> None:
    assert MemoryStore().on_full == "refuse"
    store = store_from_url("memory://?max_records=5&on_full=evict")
    assert isinstance(store, MemoryStore)
    assert store.on_full == "evict"
    with pytest.raises(ConfigurationError, match=r"MemoryStore.on_full: expected"):
        MemoryStore(on_full="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"on_full: expected refuse or evict"):
        store_from_url("memory://?on_full=drop")
