"""One contract suite, run over every store.

Each test speaks only the ``IdempotencyStore`` protocol, so a new store (Redis, PostgreSQL)
joins by adding a fixture parameter.
"""

from __future__ import annotations

import asyncio

import pytest

from surefoot.idempotency._core import (
    Begin,
    InProgress,
    Mismatch,
    NotStored,
    Outcome,
    Replay,
    Reserved,
    State,
    Step,
    StoredResponse,
    Unknown,
)
from surefoot.storage import IdempotencyStore

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
LEASE, TTL = 30.0, 3600.0
OK = StoredResponse(201, ((b"content-type", b"application/json"), (b"x-a", b"\xe9")), b'{"id":1}')


def begin_req(token: str, fp: str = "fp", mode: str = "unknown") -> Begin:
    return Begin(fingerprint=fp, token=token, lease=LEASE, ttl=TTL, on_lease_expiry=mode)  # type: ignore[arg-type]


async def test_reserve_complete_replay_byte_for_byte(store: IdempotencyStore) -> None:
    decision = await store.begin("k", begin_req("t1"), T0)
    assert decision == Reserved("t1", 1, took_over=False)
    assert await store.begin("k", begin_req("t2"), T0 + 1) == InProgress(T0 + LEASE)
    assert await store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 2)
    assert await store.begin("k", begin_req("t3"), T0 + 3) == Replay(OK)


async def test_mismatch_is_reported_and_changes_nothing(store: IdempotencyStore) -> None:
    await store.begin("k", begin_req("t1"), T0)
    assert await store.begin("k", begin_req("t2", fp="other"), T0 + 1) == Mismatch()
    record = await store.get("k", T0 + 1)
    assert record is not None
    assert record.token == "t1"


async def test_release_lets_the_next_request_execute(store: IdempotencyStore) -> None:
    await store.begin("k", begin_req("t1"), T0)
    assert await store.finish("k", "t1", Outcome(Step.RELEASE), T0 + 1)
    assert await store.get("k", T0 + 1) is None
    assert await store.begin("k", begin_req("t2"), T0 + 2) == Reserved("t2", 1, took_over=False)


async def test_unknown_outcome_holds_until_resolved(store: IdempotencyStore) -> None:
    await store.begin("k", begin_req("t1"), T0)
    assert await store.finish("k", "t1", Outcome(Step.MARK_UNKNOWN), T0 + 1)
    assert await store.begin("k", begin_req("t2"), T0 + 2) == Unknown(lease_expired_now=False)
    assert await store.resolve("k", OK, T0 + 3)
    assert await store.begin("k", begin_req("t3"), T0 + 4) == Replay(OK)
    assert not await store.resolve("k", OK, T0 + 5)  # completed: nothing to resolve


async def test_expired_lease_reexecute_fences_the_late_finisher(store: IdempotencyStore) -> None:
    await store.begin("k", begin_req("t1", mode="reexecute"), T0)
    took = await store.begin("k", begin_req("t2", mode="reexecute"), T0 + LEASE)
    assert took == Reserved("t2", 2, took_over=True)
    late = StoredResponse(500, (), b"late")
    assert not await store.finish("k", "t1", Outcome(Step.COMPLETE, late), T0 + LEASE + 1)
    assert await store.finish("k", "t2", Outcome(Step.COMPLETE, OK), T0 + LEASE + 2)
    assert not await store.finish("k", "t1", Outcome(Step.RELEASE), T0 + LEASE + 3)
    assert await store.begin("k", begin_req("t3"), T0 + LEASE + 4) == Replay(OK)


async def test_expired_lease_unknown_mode_never_reexecutes(store: IdempotencyStore) -> None:
    await store.begin("k", begin_req("t1"), T0)
    assert await store.begin("k", begin_req("t2"), T0 + LEASE) == Unknown(lease_expired_now=True)
    assert await store.begin("k", begin_req("t3"), T0 + LEASE + 1) == Unknown(
        lease_expired_now=False
    )
    record = await store.get("k", T0 + LEASE + 1)
    assert record is not None
    assert record.state is State.UNKNOWN
    # The original worker was only slow: its result resolves the unknown outcome.
    assert await store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + LEASE + 2)
    assert await store.begin("k", begin_req("t4"), T0 + LEASE + 3) == Replay(OK)


async def test_response_too_large_replays_as_not_stored(store: IdempotencyStore) -> None:
    await store.begin("k", begin_req("t1"), T0)
    big = StoredResponse(200, ((b"content-length", b"9999999"),), None)
    assert await store.finish("k", "t1", Outcome(Step.COMPLETE, big), T0 + 1)
    assert await store.begin("k", begin_req("t2"), T0 + 2) == NotStored(200)


async def test_ttl_expiry_and_purge(store: IdempotencyStore) -> None:
    for i in range(5):
        await store.begin(f"k{i}", begin_req(f"t{i}"), T0 + i)
        await store.finish(f"k{i}", f"t{i}", Outcome(Step.COMPLETE, OK), T0 + i)
    assert await store.get("k0", T0 + TTL) is None
    assert await store.get("k4", T0 + TTL) is not None
    assert await store.purge(T0 + TTL + 2, limit=2) == 2
    assert await store.purge(T0 + TTL + 2, limit=100) == 1
    assert await store.purge(T0 + TTL + 2) == 0
    remaining = await store.records(T0 + TTL + 2)
    assert [k for k, _ in remaining] == ["k3", "k4"]


async def test_forget_and_records_by_state(store: IdempotencyStore) -> None:
    await store.begin("a", begin_req("ta"), T0)
    await store.begin("b", begin_req("tb"), T0)
    await store.finish("b", "tb", Outcome(Step.MARK_UNKNOWN), T0)
    await store.begin("c", begin_req("tc"), T0)
    await store.finish("c", "tc", Outcome(Step.COMPLETE, OK), T0)
    unknown = await store.records(T0 + 1, state=State.UNKNOWN)
    assert [k for k, _ in unknown] == ["b"]
    assert [k for k, _ in await store.records(T0 + 1, state=State.IN_FLIGHT)] == ["a"]
    assert [k for k, _ in await store.records(T0 + LEASE, state=State.LEASE_EXPIRED)] == ["a"]
    assert len(await store.records(T0 + 1, limit=2)) == 2
    assert await store.forget("b", T0 + 2)
    assert not await store.forget("b", T0 + 2)
    assert await store.begin("b", begin_req("tb2"), T0 + 3) == Reserved("tb2", 1, took_over=False)


async def test_concurrent_begins_reserve_exactly_once(store: IdempotencyStore) -> None:
    decisions = await asyncio.gather(
        *(store.begin("hot", begin_req(f"t{i}"), T0) for i in range(50))
    )
    reserved = [d for d in decisions if isinstance(d, Reserved)]
    assert len(reserved) == 1
    assert all(isinstance(d, InProgress) for d in decisions if d not in reserved)
