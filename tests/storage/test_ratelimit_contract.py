"""The rate-limit store contract, run over every store.

The shared tests speak only the ``RateLimitStore`` protocol, so a new store (Redis,
PostgreSQL) joins by adding a fixture parameter. Every limit is a natural one ("5 per
second, bursts of 8"), decided at explicit ``now`` values near today's epoch seconds, as
a deployment sees them. The promises only one store makes come last: ``SqliteStore``
keeps counters across a reopen and purges expired ones, ``MemoryStore`` bounds how many
it holds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from _support import T0
from surefoot.errors import ConfigurationError
from surefoot.ratelimit import ALGORITHMS, Item, Limit, RateLimitDecision, plan
from surefoot.ratelimit._algorithms import CounterState
from surefoot.storage import MemoryStore, RateLimitStore, SqliteStore

pytestmark = pytest.mark.anyio

MARGIN = 0.01  # seconds either side of a retry_after when checking it is the exact wait


@dataclass(frozen=True)
class Case:
    """A limit, how many requests of cost 1 it admits at one instant, and then the wait."""

    limit: Limit
    capacity: int
    retry_after: float


CASES = {
    "fixed_window": Case(Limit(5, 60, algorithm="fixed_window"), 5, 40.0),
    "sliding_log": Case(Limit(5, 60, algorithm="sliding_log"), 5, 60.0),
    # Next minute, the 5 of this one weigh 5 * (1 - t/60): 4 once t = 12 s. 40 + 12.
    "sliding_window": Case(Limit(5, 60, algorithm="sliding_window"), 5, 52.0),
    "token_bucket": Case(Limit(5, 1, algorithm="token_bucket", burst=8), 8, 0.2),
    "leaky_bucket": Case(Limit(5, 1, algorithm="leaky_bucket", burst=8), 8, 0.2),
    "gcra": Case(Limit(5, 1, algorithm="gcra", burst=8), 8, 0.2),
    # Spaced 0.2 s apart and delayed at most 1 s: delays 0, 0.2, ..., 1.0.
    "leaky_queue": Case(Limit(5, 1, algorithm="leaky_queue", max_wait=1.0), 6, 0.2),
    "concurrency": Case(Limit(5, 1, algorithm="concurrency", lease=30.0), 5, 1.0),
    "quota": Case(Limit(5, 86400, algorithm="quota", period="day"), 5, 6400.0),
}
assert set(CASES) == ALGORITHMS

_tokens = itertools.count()


def item(algorithm: str, key: str = "rl:{alice}", *, cost: int = 1, enforce: bool = True) -> Item:
    """One request's item; each gets its own concurrency token."""
    limit = CASES[algorithm].limit
    return Item(key, algorithm, limit, cost=cost, enforce=enforce, token=f"t{next(_tokens)}")


async def decide(store: RateLimitStore, one: Item, now: float) -> RateLimitDecision:
    admitted, [decision] = await store.acquire([one], now)
    assert admitted is decision.allowed
    return decision


async def burst(
    store: RateLimitStore, algorithm: str, n: int, now: float = T0, key: str = "rl:{alice}"
) -> list[RateLimitDecision]:
    return [await decide(store, item(algorithm, key), now) for _ in range(n)]


def admitted_count(decisions: Sequence[RateLimitDecision]) -> int:
    return sum(d.allowed for d in decisions)


@pytest.fixture(params=sorted(ALGORITHMS))
def algorithm(request: pytest.FixtureRequest, store: RateLimitStore) -> str:
    name: str = request.param
    if name not in store.rate_limit_algorithms:
        pytest.skip(f"{store!r} does not run {name}")
    return name


# -- one key ------------------------------------------------------------------------------


async def test_the_store_is_a_rate_limit_store_of_known_algorithms(store: RateLimitStore) -> None:
    assert isinstance(store, RateLimitStore)
    assert store.rate_limit_algorithms <= ALGORITHMS
    assert store.rate_limit_algorithms


async def test_admits_exactly_its_limit_at_one_instant_then_refuses(
    store: RateLimitStore, algorithm: str
) -> None:
    case = CASES[algorithm]
    decisions = await burst(store, algorithm, case.capacity + 3)

    admitted, refused = decisions[: case.capacity], decisions[case.capacity :]
    assert [d.allowed for d in decisions] == [True] * case.capacity + [False] * 3
    assert [d.remaining for d in admitted] == list(range(case.capacity - 1, -1, -1))
    assert all(d.retry_after == 0.0 for d in admitted)
    for d in refused:
        assert d.remaining == 0
        assert d.retry_after == pytest.approx(case.retry_after, abs=1e-6)
    if algorithm == "leaky_queue":
        interval = case.limit.window / case.limit.amount
        delays = [d.delay for d in admitted]
        assert delays == pytest.approx([n * interval for n in range(case.capacity)], abs=1e-6)


async def test_a_refused_request_is_admitted_once_its_retry_after_has_passed(
    store: RateLimitStore, algorithm: str
) -> None:
    if algorithm == "concurrency":
        pytest.skip("a slot comes back on release or lease expiry: see the concurrency tests")
    case = CASES[algorithm]
    await burst(store, algorithm, case.capacity + 1)
    # Refusals are not counted: the wait is the same as after the last admission.
    assert not (await decide(store, item(algorithm), T0 + case.retry_after - MARGIN)).allowed
    assert (await decide(store, item(algorithm), T0 + case.retry_after + MARGIN)).allowed


async def test_fifty_concurrent_acquires_admit_exactly_the_limit(
    store: RateLimitStore, algorithm: str
) -> None:
    case = CASES[algorithm]
    results = await asyncio.gather(*(store.acquire([item(algorithm)], T0) for _ in range(50)))

    admitted = [decision for ok, [decision] in results if ok]
    assert len(admitted) == case.capacity
    # Each admission saw the count left by the previous one: none decided on a stale state.
    assert sorted(d.remaining for d in admitted) == list(range(case.capacity))


async def test_a_cost_beyond_what_the_limit_can_ever_admit_waits_forever_and_charges_nothing(
    store: RateLimitStore, algorithm: str
) -> None:
    if algorithm == "leaky_queue":
        pytest.skip("a queue admits any cost when empty, and spaces the next requests out")
    case = CASES[algorithm]
    huge = await decide(store, item(algorithm, cost=case.capacity + 1), T0)
    assert (huge.allowed, huge.retry_after) == (False, math.inf)
    assert huge.available_after == 0.0  # nothing used: nothing to come back
    assert admitted_count(await burst(store, algorithm, case.capacity + 1)) == case.capacity


def pure_burst(algorithm: str, n: int) -> list[RateLimitDecision]:
    """The decisions of ``n`` requests at ``T0``, by the pure algorithm."""
    states: dict[str, CounterState] = {}
    out = []
    for _ in range(n):
        one = item(algorithm)
        _, [decision], writes = plan([states.get(one.key)], [one], T0)
        states.update((write.key, write.state) for write in writes)
        out.append(decision)
    return out


async def test_available_after_is_the_algorithms_and_then_one_more_unit_is_admitted(
    store: RateLimitStore, algorithm: str
) -> None:
    # RateLimit's t: when more quota is available, as every store computes it.
    if algorithm == "concurrency":
        pytest.skip("a slot frees when a response ends, not at a time: no t to wait for")
    case = CASES[algorithm]
    decisions = await burst(store, algorithm, case.capacity + 1)
    expected = pure_burst(algorithm, case.capacity + 1)
    assert [d.available_after for d in decisions] == pytest.approx(
        [d.available_after for d in expected], abs=1e-6
    )
    last = decisions[case.capacity - 1]  # the last admitted: nothing left
    assert last.remaining == 0
    assert 0 < last.available_after <= case.limit.window
    assert not (await decide(store, item(algorithm), T0 + last.available_after - MARGIN)).allowed
    assert (await decide(store, item(algorithm), T0 + last.available_after + MARGIN)).allowed


async def test_a_sliding_window_forgets_its_counts_a_window_after_the_last_admission(
    store: RateLimitStore,
) -> None:
    # A burst at the start of a minute has left the last minute a minute later, whatever
    # the weighting of the previous window supposes (it would wait 12 s more).
    start = T0 + 40  # T0 is 20 s into a minute
    decisions = await burst(store, "sliding_window", 6, now=start)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[4].available_after == pytest.approx(60.0)
    assert decisions[5].retry_after == pytest.approx(60.0)
    assert not (await decide(store, item("sliding_window"), start + 60 - MARGIN)).allowed
    assert admitted_count(await burst(store, "sliding_window", 6, now=start + 60)) == 5


# -- several keys -------------------------------------------------------------------------


async def test_one_principal_exhausting_its_limit_never_affects_another(
    store: RateLimitStore, algorithm: str
) -> None:
    case = CASES[algorithm]
    assert admitted_count(await burst(store, algorithm, 20, key="rl:{alice}")) == case.capacity

    bob = await burst(store, algorithm, case.capacity + 1, key="rl:{bob}")
    assert [d.allowed for d in bob] == [True] * case.capacity + [False]
    assert bob[0].remaining == case.capacity - 1
    assert not (await decide(store, item(algorithm, "rl:{alice}"), T0)).allowed


async def test_a_refused_request_charges_none_of_the_limits_that_allowed_it(
    store: RateLimitStore,
) -> None:
    per_second = Item("rl:{alice}:second", "token_bucket", Limit(2, 1, algorithm="token_bucket"))
    per_minute = Item("rl:{alice}:minute", "fixed_window", Limit(10, 60))
    slots = Limit(5, 1, algorithm="concurrency", lease=30.0)

    def held(token: str) -> Item:
        return Item("rl:{alice}:slots", "concurrency", slots, token=token)

    for n in range(2):
        admitted, decisions = await store.acquire([per_minute, per_second, held(f"r{n}")], T0)
        assert admitted
        assert [d.remaining for d in decisions] == [9 - n, 1 - n, 4 - n]

    admitted, decisions = await store.acquire([per_minute, per_second, held("r2")], T0)
    assert not admitted
    assert [d.allowed for d in decisions] == [True, False, True]
    assert [d.remaining for d in decisions] == [7, 0, 2]  # what they would have left

    # Neither the minute nor the slots were charged for the refused request.
    assert (await decide(store, per_minute, T0)).remaining == 7
    assert [(await decide(store, held(f"s{n}"), T0)).allowed for n in range(4)] == [
        True,
        True,
        True,
        False,
    ]


async def test_a_request_admitted_by_every_limit_charges_every_limit(
    store: RateLimitStore,
) -> None:
    items = [item(name, f"rl:{{alice}}:{name}") for name in sorted(ALGORITHMS)]
    admitted, decisions = await store.acquire(items, T0)
    assert admitted
    for one, decision in zip(items, decisions, strict=True):
        assert decision.remaining == CASES[one.algorithm].capacity - 1
        again = await decide(store, item(one.algorithm, one.key), T0)
        assert again.remaining == CASES[one.algorithm].capacity - 2


async def test_a_shadow_limit_decides_and_reports_but_never_refuses(store: RateLimitStore) -> None:
    enforced = Item("rl:{alice}:enforced", "fixed_window", Limit(10, 60))
    shadow = Item("rl:{alice}:shadow", "fixed_window", Limit(2, 60), enforce=False)

    results = [await store.acquire([enforced, shadow], T0) for _ in range(4)]

    assert [admitted for admitted, _ in results] == [True] * 4
    assert [(s.allowed, s.remaining) for _, [_, s] in results] == [
        (True, 1),
        (True, 0),
        (False, 0),
        (False, 0),
    ]
    assert [e.remaining for _, [e, _] in results] == [9, 8, 7, 6]
    # A request of shadow limits only is never refused either.
    admitted, [alone] = await store.acquire([shadow], T0)
    assert admitted
    assert not alone.allowed


async def test_a_shadow_limit_is_not_charged_for_a_request_an_enforced_one_refused(
    store: RateLimitStore,
) -> None:
    enforced = Item("rl:{alice}:enforced", "fixed_window", Limit(1, 60))
    shadow = Item("rl:{alice}:shadow", "sliding_log", Limit(5, 60), enforce=False)

    first = await store.acquire([enforced, shadow], T0)
    second = await store.acquire([shadow, enforced], T0 + 1)
    third = await store.acquire([enforced, shadow], T0 + 2)

    assert [r[0] for r in (first, second, third)] == [True, False, False]
    assert first[1][1].remaining == 4
    assert (second[1][0].allowed, second[1][0].remaining) == (True, 3)
    assert third[1][1].remaining == 3  # the second request left no trace


# -- concurrency --------------------------------------------------------------------------

SLOTS = Limit(3, 1, algorithm="concurrency", lease=30.0)


def slot(token: str, cost: int = 1) -> Item:
    return Item("rl:{alice}:slots", "concurrency", SLOTS, cost=cost, token=token)


async def test_a_released_slot_is_free_for_the_next_request(store: RateLimitStore) -> None:
    assert [(await decide(store, slot(f"t{n}"), T0 + n)).remaining for n in range(3)] == [2, 1, 0]
    full = await decide(store, slot("t3"), T0 + 3)
    assert (full.allowed, full.remaining, full.retry_after) == (False, 0, 1.0)

    await store.release("rl:{alice}:slots", "t1", T0 + 4)
    assert (await decide(store, slot("t3"), T0 + 5)).allowed
    assert not (await decide(store, slot("t4"), T0 + 5)).allowed

    # Releasing a token that holds nothing, twice, or on a key never seen frees nothing.
    await store.release("rl:{alice}:slots", "nobody", T0 + 6)
    await store.release("rl:{alice}:slots", "t1", T0 + 6)
    await store.release("rl:nowhere", "t1", T0 + 6)
    assert not (await decide(store, slot("t4"), T0 + 7)).allowed

    await store.release("rl:{alice}:slots", "t0", T0 + 8)
    assert not (await decide(store, slot("t4", cost=2), T0 + 9)).allowed  # one slot, not two
    assert (await decide(store, slot("t4"), T0 + 9)).allowed


async def test_a_slot_whose_worker_never_released_it_comes_back_when_its_lease_ends(
    store: RateLimitStore,
) -> None:
    for n in range(3):
        assert (await decide(store, slot(f"t{n}"), T0 + n)).allowed
    assert not (await decide(store, slot("late"), T0 + SLOTS.lease - 0.5)).allowed

    # t0's lease ran out at T0 + 30; t1's and t2's have not.
    taken = await decide(store, slot("t3"), T0 + SLOTS.lease)
    assert (taken.allowed, taken.remaining) == (True, 0)
    assert not (await decide(store, slot("t4"), T0 + SLOTS.lease)).allowed

    # The crashed worker finishing late frees nothing of t3's slot.
    await store.release("rl:{alice}:slots", "t0", T0 + SLOTS.lease + 0.5)
    assert not (await decide(store, slot("t4"), T0 + SLOTS.lease + 0.5)).allowed

    # Every lease over: as if the key had never been seen.
    later = T0 + 10 * SLOTS.lease
    assert [(await decide(store, slot(f"u{n}"), later)).remaining for n in range(4)] == [2, 1, 0, 0]


# -- expiry -------------------------------------------------------------------------------


def expiry_of(algorithm: str, n: int) -> float:
    """When the state left by ``n`` requests at ``T0`` expires, by the pure algorithm."""
    states: dict[str, CounterState] = {}
    expires_at = T0
    for _ in range(n):
        one = item(algorithm)
        _, _, writes = plan([states.get(one.key)], [one], T0)
        for write in writes:
            states[write.key], expires_at = write.state, write.expires_at
    return expires_at


def observed(decisions: Sequence[RateLimitDecision]) -> list[float]:
    return [float(field) for d in decisions for field in tuple(d)]


async def test_an_expired_state_is_treated_as_absent(store: RateLimitStore, algorithm: str) -> None:
    case = CASES[algorithm]
    await burst(store, algorithm, case.capacity + 1)
    expires_at = expiry_of(algorithm, case.capacity)
    assert expires_at > T0

    used = await burst(store, algorithm, case.capacity + 1, now=expires_at)
    fresh = await burst(store, algorithm, case.capacity + 1, now=expires_at, key="rl:{carol}")
    assert [d.allowed for d in used] == [True] * case.capacity + [False]
    assert observed(used) == pytest.approx(observed(fresh), abs=1e-6)


# -- SqliteStore only ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
async def test_sqlite_counters_survive_reopening_the_file(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    first = SqliteStore(tmp_path / "r.db")
    try:
        assert admitted_count(await burst(first, name, case.capacity - 1)) == case.capacity - 1
    finally:
        await first.aclose()

    again = SqliteStore(tmp_path / "r.db")
    try:
        decisions = await burst(again, name, 2, now=T0 + 0.001)
    finally:
        await again.aclose()
    assert [d.allowed for d in decisions] == [True, False]
    assert decisions[0].remaining == 0


def counter_keys(store: SqliteStore) -> set[str]:
    return {key for (key,) in store._db.execute("SELECT key FROM surefoot_ratelimit")}


async def test_sqlite_purges_expired_counters_in_batches_on_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.db", purge_interval=60, purge_batch=2)
    per_second = Limit(1, 1, algorithm="fixed_window")
    long_lease = Limit(5, 1, algorithm="concurrency", lease=3600.0)

    def hit(key: str) -> Item:
        return Item(key, "fixed_window", per_second)

    try:
        # The first write purges (nothing has expired yet) and schedules the next purge.
        for n in range(5):
            await store.acquire([hit(f"rl:old{n}")], T0)  # each expires at T0 + 1
        await store.acquire([item("quota", "rl:day")], T0)
        await store.acquire([Item("rl:{alice}:slots", "concurrency", long_lease, token="t")], T0)
        await store.acquire([hit("rl:new0")], T0 + 30)
        assert len(counter_keys(store)) == 8  # five expired, but it is not purge time yet

        await store.acquire([hit("rl:new1")], T0 + 60)
        assert len(counter_keys(store)) == 9 - 2
        # A full batch brings the next purge forward by a second only.
        await store.acquire([hit("rl:new2")], T0 + 60.5)
        assert len(counter_keys(store)) == 8
        for n in range(3, 8):
            await store.acquire([hit(f"rl:new{n}")], T0 + 58 + n)
            assert {"rl:day", "rl:{alice}:slots", f"rl:new{n}"} <= counter_keys(store)
        assert counter_keys(store) == {"rl:day", "rl:{alice}:slots", "rl:new7"}
    finally:
        await store.aclose()


async def test_sqlite_a_released_key_leaves_no_row(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "r.db")
    try:
        await store.acquire([slot("t0")], T0)
        await store.acquire([slot("t1")], T0)
        await store.release("rl:{alice}:slots", "t0", T0)
        assert counter_keys(store) == {"rl:{alice}:slots"}
        await store.release("rl:{alice}:slots", "t1", T0)
        assert counter_keys(store) == set()
    finally:
        await store.aclose()


# -- MemoryStore only ---------------------------------------------------------------------


def minute(key: str) -> Item:
    return Item(key, "fixed_window", Limit(1, 60, algorithm="fixed_window"))


def twice(key: str) -> Item:
    return Item(key, "fixed_window", Limit(2, 60, algorithm="fixed_window"))


async def test_memory_holds_at_most_max_counters_dropping_the_least_recently_used() -> None:
    store = MemoryStore(max_counters=3)
    for key in ("rl:a", "rl:b", "rl:c"):
        assert (await decide(store, twice(key), T0)).remaining == 1
    assert (await decide(store, twice("rl:a"), T0 + 1)).remaining == 0  # a: most recent now
    assert (await decide(store, twice("rl:d"), T0 + 2)).remaining == 1  # pushes b out
    assert len(store._counters) == 3

    assert not (await decide(store, twice("rl:a"), T0 + 3)).allowed
    assert (await decide(store, twice("rl:c"), T0 + 3)).remaining == 0
    # b was dropped: its client starts afresh, the documented price of the bound.
    assert (await decide(store, twice("rl:b"), T0 + 4)).remaining == 1
    assert len(store._counters) == 3


async def test_memory_a_client_kept_at_its_limit_is_not_the_first_evicted() -> None:
    store = MemoryStore(max_counters=2)
    assert (await decide(store, minute("rl:{alice}"), T0)).allowed
    assert (await decide(store, minute("rl:{bob}"), T0 + 1)).allowed
    # Alice keeps knocking: she is the most recently used key, though refused.
    assert not (await decide(store, minute("rl:{alice}"), T0 + 2)).allowed
    assert (await decide(store, minute("rl:{carol}"), T0 + 3)).allowed
    # Bob, unused since T0 + 1, made room; evicting Alice would hand her a fresh limit.
    assert not (await decide(store, minute("rl:{alice}"), T0 + 4)).allowed


async def test_memory_max_counters_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="max_counters"):
        MemoryStore(max_counters=0)
