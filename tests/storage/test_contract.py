"""One contract suite, run over every store.

Each test speaks only the ``IdempotencyStore`` protocol, so a new store (Redis, PostgreSQL)
joins by adding a fixture parameter.
"""

from __future__ import annotations

import asyncio

import pytest

from _support import T0
from surefoot.idempotency._core import (
    Begin,
    InProgress,
    Mismatch,
    NotStored,
    Outcome,
    OverQuota,
    Replay,
    Reserved,
    State,
    Step,
    StoredResponse,
    Unknown,
    scoped_key,
)
from surefoot.storage import IdempotencyStore

pytestmark = pytest.mark.anyio

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


# -- per-principal quotas (_core Rule 7) -----------------------------------------------------


def quota_req(
    token: str, records: int = 0, unknown: int = 0, mode: str = "unknown", fp: str = "fp"
) -> Begin:
    return begin_req(token, fp=fp, mode=mode)._replace(max_records=records, max_unknown=unknown)


def a(key: str) -> str:
    return scoped_key("cred:alice", key)


def b(key: str) -> str:
    return scoped_key("cred:bob", key)


async def test_a_principal_at_its_quota_is_refused_and_another_is_not(
    store: IdempotencyStore,
) -> None:
    assert await store.begin(a("1"), quota_req("t1", records=3), T0) == Reserved("t1", 1, False)
    await store.begin(a("2"), quota_req("t2", records=3), T0 + 1)
    assert await store.finish(a("2"), "t2", Outcome(Step.COMPLETE, OK), T0 + 2)
    await store.begin(a("3"), quota_req("t3", records=3), T0 + 3)
    assert await store.finish(a("3"), "t3", Outcome(Step.MARK_UNKNOWN), T0 + 4)
    # Three live records, in flight, completed and unknown: a fourth key is refused, and
    # told to come back when the first of them (a("1"), written at T0) expires.
    refused = await store.begin(a("4"), quota_req("t4", records=3), T0 + 10)
    assert refused == OverQuota("records", 3, TTL - 10)
    assert await store.get(a("4"), T0 + 10) is None
    # Operators list them under the keys the middleware uses.
    assert {key for key, _ in await store.records(T0 + 10)} == {a("1"), a("2"), a("3")}
    # Its own keys are answered as ever; another principal is not affected.
    assert await store.begin(a("1"), quota_req("t5", records=3), T0 + 11) == InProgress(T0 + LEASE)
    assert await store.begin(a("2"), quota_req("t6", records=3), T0 + 12) == Replay(OK)
    assert await store.begin(b("4"), quota_req("t7", records=3), T0 + 13) == Reserved(
        "t7", 1, False
    )
    # Keys of no principal (not made by scoped_key) count against nothing.
    for i in range(4):
        assert isinstance(await store.begin(f"k{i}", quota_req(f"u{i}", records=3), T0), Reserved)


async def test_released_forgotten_and_expired_records_free_the_quota(
    store: IdempotencyStore,
) -> None:
    for i in range(2):
        await store.begin(a(f"{i}"), quota_req(f"t{i}", records=2), T0 + i)
    assert isinstance(await store.begin(a("x"), quota_req("tx", records=2), T0 + 5), OverQuota)
    assert await store.finish(a("0"), "t0", Outcome(Step.RELEASE), T0 + 6)
    assert isinstance(await store.begin(a("x"), quota_req("tx", records=2), T0 + 7), Reserved)
    assert isinstance(await store.begin(a("y"), quota_req("ty", records=2), T0 + 8), OverQuota)
    assert await store.forget(a("x"), T0 + 9)
    assert isinstance(await store.begin(a("y"), quota_req("ty", records=2), T0 + 10), Reserved)
    # a("1"), reserved at T0 + 1, expires at T0 + 1 + TTL: then there is room again.
    refused = await store.begin(a("z"), quota_req("tz", records=2), T0 + TTL)
    assert refused == OverQuota("records", 2, 1.0)
    assert isinstance(await store.begin(a("z"), quota_req("tz", records=2), T0 + TTL + 1), Reserved)


async def test_purged_records_free_the_quota(store: IdempotencyStore) -> None:
    for i in range(2):
        await store.begin(a(f"{i}"), quota_req(f"t{i}", records=2, unknown=1), T0)
    await store.finish(a("0"), "t0", Outcome(Step.MARK_UNKNOWN), T0)
    await store.purge(T0 + TTL + 1)
    # Purged (or, on Redis's server clock, expired by Redis): nothing of them counts.
    assert isinstance(
        await store.begin(a("x"), quota_req("tx", records=2, unknown=1), T0 + TTL + 2), Reserved
    )
    await store.finish(a("x"), "tx", Outcome(Step.MARK_UNKNOWN), T0 + TTL + 2)
    assert isinstance(
        await store.begin(a("y"), quota_req("ty", records=2, unknown=1), T0 + TTL + 3), OverQuota
    )


async def test_unknown_outcomes_have_a_quota_of_their_own(store: IdempotencyStore) -> None:
    def req(token: str) -> Begin:
        return quota_req(token, records=100, unknown=2)

    await store.begin(a("1"), req("t1"), T0)
    assert await store.finish(a("1"), "t1", Outcome(Step.MARK_UNKNOWN), T0 + 1)
    await store.begin(a("2"), req("t2"), T0 + 2)
    # A lease that ran out, seen by a retry with on_lease_expiry="unknown", counts too.
    assert await store.begin(a("2"), req("t2b"), T0 + 2 + LEASE) == Unknown(lease_expired_now=True)
    refused = await store.begin(a("3"), req("t3"), T0 + 100)
    # Unknown records expire a TTL after they became unknown: a("1") at T0 + 1 + TTL.
    assert refused == OverQuota("unknown", 2, TTL + 1 - 100)
    assert isinstance(await store.begin(b("3"), req("t4"), T0 + 100), Reserved)
    # Settling one (an operator, or the late finisher) frees a place.
    assert await store.resolve(a("1"), OK, T0 + 101)
    assert isinstance(await store.begin(a("3"), req("t3"), T0 + 102), Reserved)
    await store.finish(a("3"), "t3", Outcome(Step.MARK_UNKNOWN), T0 + 103)
    assert isinstance(await store.begin(a("4"), req("t5"), T0 + 104), OverQuota)
    assert await store.finish(a("2"), "t2", Outcome(Step.COMPLETE, OK), T0 + 105)
    assert isinstance(await store.begin(a("4"), req("t5"), T0 + 106), Reserved)


async def test_a_take_over_is_never_refused_by_the_quota(store: IdempotencyStore) -> None:
    await store.begin(a("1"), quota_req("t1", records=1, mode="reexecute"), T0)
    taken = await store.begin(a("1"), quota_req("t2", records=1, mode="reexecute"), T0 + LEASE)
    assert taken == Reserved("t2", 2, took_over=True)
    assert isinstance(await store.begin(a("2"), quota_req("t3", records=1), T0 + LEASE), OverQuota)


async def test_concurrent_new_keys_of_one_principal_never_exceed_its_quota(
    store: IdempotencyStore,
) -> None:
    decisions = await asyncio.gather(
        *(store.begin(a(f"{i}"), quota_req(f"t{i}", records=5), T0) for i in range(40))
    )
    assert sum(isinstance(d, Reserved) for d in decisions) == 5
    assert all(isinstance(d, Reserved | OverQuota) for d in decisions)
