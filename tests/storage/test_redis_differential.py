"""Hypothesis: ``RedisStore``'s Lua scripts decide exactly as the Python references.

Random sequences of steps run twice: through the pure references over a dict of states
(``ratelimit._core.plan`` with ``_algorithms``; ``idempotency._core``) and through a
``RedisStore`` on the caller's clock against the real server. Every answer must agree:
``allowed``, ``remaining``, records and verdicts exactly, durations within 1e-9.

Times start near today's epoch seconds (where floats are 2.4e-7 s apart), or near zero
(where the algorithms' 1e-9 slack decides ties that rounding makes), and move by
zero, by small and large steps, and onto window and calendar boundaries (exactly, one
float step before, one after), where rounding decides. Windows are long enough (30 s and
up) that no key expires in real time while a sequence runs: on the caller's clock, Redis
still drops a key after its state's lifetime measured in real seconds.

The coalescing variant sends each request of a sequence as its own task, all at once: the
store queues them and decides them in batches, which must answer as one call each, in
order.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _services import service_url
from _support import T0
from surefoot.idempotency import _core
from surefoot.idempotency._core import Begin, Outcome, Record, Step, StoredResponse
from surefoot.ratelimit import Item, Limit, RateLimitDecision, plan
from surefoot.ratelimit._algorithms import Concurrency, quota_period
from surefoot.storage.redis import RedisStore

pytestmark = pytest.mark.anyio

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def _fresh(url: str, **options: str) -> AsyncIterator[RedisStore]:
    prefix = f"test:diff:{uuid.uuid4().hex[:12]}:"
    query = "&".join(
        f"{k}={v}"
        for k, v in {"prefix": prefix, "clock": "caller", "timeout": "5", **options}.items()
    )
    store = RedisStore.from_url(f"{url}?{query}")
    try:
        yield store
    finally:
        client: Any = store._client
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await store.aclose()


# -- rate limits ----------------------------------------------------------------------------

WINDOWS = [30.0, 60.0, 37.7, 41.3, 3600.0, 86400.0]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]


@st.composite
def limits(draw: st.DrawFn) -> tuple[str, Limit]:
    algorithm = draw(
        st.sampled_from(
            [
                "fixed_window",
                "sliding_log",
                "sliding_window",
                "token_bucket",
                "leaky_bucket",
                "leaky_queue",
                "gcra",
                "concurrency",
                "quota",
            ]
        )
    )
    amount = draw(st.integers(1, 4))
    if algorithm == "quota":
        period = draw(st.sampled_from(["day", "month"]))
        zone = draw(st.sampled_from(ZONES))
        return algorithm, Limit(amount, 86400, algorithm=algorithm, period=period, timezone=zone)
    window = draw(st.sampled_from(WINDOWS))
    burst = draw(st.none() | st.integers(1, 5))
    max_wait = draw(st.sampled_from([0.0, window / 8, window / amount, 2.3 * window / amount]))
    lease = draw(st.sampled_from([30.0, 45.5, 600.0]))
    return algorithm, Limit(
        amount, window, algorithm=algorithm, burst=burst, max_wait=max_wait, lease=lease
    )


def next_edge(algorithm: str, limit: Limit, now: float) -> float:
    """The next instant where ``limit`` changes window (or calendar period)."""
    if algorithm == "quota":
        return quota_period(now, limit.period or "day", limit.timezone)[1]
    return now - now % limit.window + limit.window


# A sequence step: ("advance", seconds) | ("edge", key, float steps off) |
# ("tick", key, n): n intervals of that key's limit (window / amount), where a bucket
# refills a whole unit up to rounding, and the float slack of the algorithms decides |
# ("acquire", [(key, cost, enforce)]) | ("release", n-th held token).
STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("advance"),
            st.sampled_from([0.0, 0.0, 1e-6, 0.1, 0.25, 1.0, 7.5, 29.9, 60.0, 3599.0, 86400.0]),
        ),
        st.tuples(st.just("edge"), st.integers(0, 2), st.sampled_from([-1, 0, 1])),
        st.tuples(st.just("tick"), st.integers(0, 2), st.integers(1, 3)),
        st.tuples(
            st.just("acquire"),
            st.lists(
                st.tuples(
                    st.integers(0, 2),
                    st.sampled_from([1, 1, 1, 2, 3, 12]),
                    st.sampled_from([True, True, True, False]),
                ),
                min_size=1,
                max_size=3,
            ),
        ),
        st.tuples(st.just("release"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=30,
)


def same(mine: RateLimitDecision, ref: RateLimitDecision) -> bool:
    if (mine.allowed, mine.remaining) != (ref.allowed, ref.remaining):
        return False
    return all(
        a == b or math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
        for a, b in zip(mine[2:], ref[2:], strict=True)
    )


async def run_rate_limits(
    store: RedisStore,
    keyed: list[tuple[str, Limit]],
    steps: list[Any],
    start: float,
    *,
    concurrently: bool,
) -> None:
    keys = [f"rl:{{p}}:{n}" for n in range(len(keyed))]
    states: dict[str, Any] = {}
    held: list[tuple[str, str]] = []
    now = start
    expected: list[tuple[bool, list[RateLimitDecision]]] = []
    pending: list[Any] = []  # coroutines, when sent concurrently
    for n, step in enumerate(steps):
        kind = step[0]
        if kind == "advance":
            now += step[1]
        elif kind == "edge":
            algorithm, limit = keyed[step[1]]
            now = next_edge(algorithm, limit, now)
            for _ in range(abs(step[2])):
                now = math.nextafter(now, math.inf if step[2] > 0 else -math.inf)
        elif kind == "tick":
            limit = keyed[step[1]][1]
            for _ in range(step[2]):
                now += limit.window / limit.amount
        elif kind == "acquire":
            items = []
            for i, (index, cost, enforce) in enumerate(step[1]):
                algorithm, limit = keyed[index]
                items.append(Item(keys[index], algorithm, limit, cost, enforce, f"t{n}.{i}"))
            admitted, decisions, writes = plan([states.get(i.key) for i in items], items, now)
            for write in writes:
                states[write.key] = write.state
            for item, decision in zip(items, decisions, strict=True):
                if admitted and decision.allowed and item.algorithm == "concurrency":
                    held.append((item.key, item.token))
            expected.append((admitted, decisions))
            if concurrently:
                pending.append(store.acquire(items, now))
            else:
                got = await store.acquire(items, now)
                assert got[0] == admitted, (got, admitted, decisions)
                assert all(same(g, r) for g, r in zip(got[1], decisions, strict=True)), (
                    got[1],
                    decisions,
                )
        elif held and not concurrently:
            key, token = held[step[1] % len(held)]
            state = states.get(key)
            if state is not None:
                new = Concurrency.release(state, token, now)
                if new is None:
                    del states[key]
                else:
                    states[key] = new
            await store.release(key, token, now)
    if concurrently:
        results = await asyncio.gather(*pending)
        for (admitted, decisions), got in zip(expected, results, strict=True):
            assert got[0] == admitted, (got, admitted, decisions)
            assert all(same(g, r) for g, r in zip(got[1], decisions, strict=True)), (
                got[1],
                decisions,
            )


@PROPERTY
@given(
    keyed=st.lists(limits(), min_size=3, max_size=3),
    steps=STEPS,
    start=st.sampled_from([T0, T0 + 0.1, 1_776_000_000.123456, 1_767_225_599.5, 0.0, 1000.0]),
)
async def test_rate_limit_scripts_decide_as_the_python_references(
    keyed: list[tuple[str, Limit]], steps: list[Any], start: float
) -> None:
    async for store in _fresh(service_url("redis"), coalesce="false"):
        await run_rate_limits(store, keyed, steps, start, concurrently=False)


@PROPERTY
@given(
    keyed=st.lists(limits(), min_size=3, max_size=3),
    steps=STEPS,
    start=st.sampled_from([T0, 1_767_225_599.5]),
)
async def test_coalesced_requests_decide_as_one_call_each_in_order(
    keyed: list[tuple[str, Limit]], steps: list[Any], start: float
) -> None:
    async for store in _fresh(service_url("redis")):
        await run_rate_limits(store, keyed, steps, start, concurrently=True)


# Long sliding logs: bursts of up to thousands of requests on one log (each its own call,
# sent at once through a coalescing store), with time moving by fractions of the window,
# so that entries leave the window by the dozen (popped 32 at a time) or all at once,
# and refusals look far into the log for the entry that frees enough. Some requests also
# pass a fixed window that refuses them, so that the log's admission is not written.
LOG_STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("advance"),
            st.sampled_from([0.0, 1e-6, 0.1, 0.37, 0.5, 0.999, 1.0, 1.5, 3.0]),  # windows
        ),
        st.tuples(
            st.just("burst"),
            st.sampled_from([1, 33, 300, 1500]),  # requests
            st.sampled_from([0, 1, 1, 2, 3, 12]),  # cost of each
            st.sampled_from([0.0, 1e-7, 1e-4, 1e-3]),  # windows between two requests
            st.booleans(),  # through a fixed window too
        ),
    ),
    min_size=1,
    max_size=10,
)


@settings(PROPERTY, max_examples=40)
@given(
    amount=st.sampled_from([40, 700, 3000]),
    window=st.sampled_from([30.0, 37.7, 3600.0]),
    steps=LOG_STEPS,
    start=st.sampled_from([T0, 1_776_000_000.123456, 0.0]),
)
@pytest.mark.parametrize("kind", ["redis", "redis_cluster"])
async def test_long_sliding_logs_decide_as_the_python_reference(
    kind: str, amount: int, window: float, steps: list[Any], start: float
) -> None:
    log = Limit(amount, window, algorithm="sliding_log")
    cap = Limit(amount // 2, window)
    states: dict[str, Any] = {}
    now = start
    async for store in _fresh(service_url(kind)):
        client: Any = store._client
        for step in steps:
            if step[0] == "advance":
                now += step[1] * window
                continue
            _, count, cost, spacing, capped = step
            calls, expected = [], []
            for i in range(count):
                at = now + i * spacing * window
                items = [Item("rl:{p}:log", "sliding_log", log, cost)]
                if capped:
                    items.append(Item("rl:{p}:cap", "fixed_window", cap))
                admitted, decisions, writes = plan([states.get(x.key) for x in items], items, at)
                for write in writes:
                    states[write.key] = write.state
                expected.append((admitted, decisions))
                calls.append(store.acquire(items, at))
            now += (count - 1) * spacing * window
            results = await asyncio.gather(*calls)
            for (admitted, decisions), got in zip(expected, results, strict=True):
                assert got[0] == admitted, (got, admitted, decisions)
                assert all(same(g, r) for g, r in zip(got[1], decisions, strict=True)), (
                    got[1],
                    decisions,
                )
            # The sorted set holds the entries still in the window at the last step, no more.
            live = [e for e in states.get("rl:{p}:log") or () if e.time > now - window]
            assert await client.zcard(store.prefix + "rl:{p}:log") == len(live) <= amount


# -- idempotency ----------------------------------------------------------------------------

LEASE, TTL = 30.0, 3600.0
RESPONSES = st.sampled_from(
    [
        StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}'),
        StoredResponse(200, ((b"x-a", b"\xe9\x00"), (b"x-a", b"")), b""),
        StoredResponse(500, (), None),
    ]
)
# (max_records, max_unknown) of a begin: the quotas of the keys' owner (_core Rule 7).
QUOTAS = st.sampled_from([(0, 0), (0, 0), (1, 0), (2, 0), (2, 1), (0, 1), (3, 2)])


def record_ops(
    key: st.SearchStrategy[int],
    quotas: st.SearchStrategy[tuple[int, int]],
    *,
    begins: int = 1,
    min_size: int = 1,
) -> st.SearchStrategy[list[Any]]:
    """Sequences of steps on the keys ``key`` draws; ``begins``: the weight of begins."""
    begin = st.tuples(
        st.just("begin"),
        key,
        st.sampled_from(["fp1", "fp1", "fp2"]),
        st.sampled_from(["reexecute", "unknown"]),
        quotas,
    )
    return st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.sampled_from([0.0, 1.0, LEASE, TTL])),
            # Onto the lease's or the record's end: exactly, a float step before or after.
            st.tuples(
                st.just("edge"),
                key,
                st.sampled_from(["lease", "ttl"]),
                st.sampled_from([-1, 0, 1]),
            ),
            *[begin] * begins,
            st.tuples(
                st.just("finish"),
                key,
                st.integers(0, 3),
                st.sampled_from([Step.COMPLETE, Step.RELEASE, Step.MARK_UNKNOWN]),
                st.none() | RESPONSES,
            ),
            st.tuples(st.just("resolve"), key, RESPONSES),
            st.tuples(st.just("forget"), key),
        ),
        min_size=min_size,
        max_size=30,
    )


OPS = record_ops(st.sampled_from([0, 0, 0, 1, 2]), QUOTAS)  # mostly one key: steps meet on it
# One owner's new keys under quotas that fill up: the quota decides often.
QUOTA_OPS = record_ops(
    st.integers(0, 3),
    st.sampled_from([(1, 0), (2, 0), (3, 0), (2, 1), (3, 1), (0, 1), (4, 2)]),
    begins=3,
    min_size=6,
)


def usage(records: dict[str, Record | None], now: float) -> _core.Usage:
    """The owner's usage as ``_core`` Rule 7 defines it, from the reference's records."""
    live = [r for r in records.values() if _core.classify(r, now) is not _core.State.ABSENT]
    unknown = [r for r in live if r is not None and r.state is _core.State.UNKNOWN]
    return _core.Usage(
        len(live),
        len(unknown),
        min((r.expires_at for r in live if r is not None), default=math.inf),
        min((r.expires_at for r in unknown if r is not None), default=math.inf),
    )


@PROPERTY
@given(ops=OPS, start=st.sampled_from([T0, 1_776_000_000.123456]), owned=st.booleans())
async def test_record_scripts_decide_as_the_python_state_machine(
    ops: list[Any], start: float, owned: bool
) -> None:
    await _against_the_core(ops, start, owned)


@PROPERTY
@given(ops=QUOTA_OPS, start=st.sampled_from([T0, 1_776_000_000.123456]))
async def test_record_scripts_count_quotas_as_the_python_state_machine(
    ops: list[Any], start: float
) -> None:
    await _against_the_core(ops, start, owned=True)


async def _against_the_core(ops: list[Any], start: float, owned: bool) -> None:
    # Owned keys (one principal's, from scoped_key) count against its quotas; others not.
    names = [_core.scoped_key("cred:p", f"k{n}") if owned else f"k{n}" for n in range(4)]
    async for store in _fresh(service_url("redis")):
        records: dict[str, Record | None] = {}
        tokens = [f"tok{n}" for n in range(4)]
        issued = 0
        now = start
        for op in ops:
            kind = op[0]
            key = names[op[1]] if kind != "advance" else ""
            if kind == "advance":
                now += op[1]
            elif kind == "edge":
                record = records.get(key)
                if record is not None:
                    edge = record.lease_expires_at if op[2] == "lease" else record.expires_at
                    if op[3]:
                        edge = math.nextafter(edge, math.inf * op[3])
                    # Owned records' time never steps back: counting an owner's records drops
                    # those it finds expired (Rule 7), and a clock stepped back past their end
                    # would have the reference count them again, not the store.
                    now = max(now, edge) if owned else edge
            elif kind == "begin":
                request = Begin(op[2], tokens[issued % 4], LEASE, TTL, op[3], *op[4])
                issued += 1
                seen = records.get(key)
                counted = owned and _core.charges_quota(seen, request, now)
                use = usage(records, now) if counted else None
                decision, records[key] = _core.begin(seen, request, now, use)
                assert await store.begin(key, request, now) == decision
            elif kind == "finish":
                outcome = Outcome(op[3], op[4])
                try:
                    accepted, new = _core.finish(records.get(key), tokens[op[2]], outcome, now)
                except ValueError:
                    with pytest.raises(ValueError, match="needs the response"):
                        await store.finish(key, tokens[op[2]], outcome, now)
                    continue
                records[key] = new
                assert await store.finish(key, tokens[op[2]], outcome, now) == accepted
            elif kind == "resolve":
                accepted, new = _core.resolve(records.get(key), op[2], now)
                if accepted:
                    records[key] = new
                assert await store.resolve(key, op[2], now) == accepted
            elif kind == "forget":
                accepted, records[key] = _core.forget(records.get(key), now)
                assert await store.forget(key, now) == accepted
            record = records.get(key)
            live = None if _core.classify(record, now) is _core.State.ABSENT else record
            if key:
                assert await store.get(key, now) == live


# -- webhook ordering records -----------------------------------------------------------------

ORDER_VERSIONS = st.sampled_from([0.0, 1.0, 1.5, 2.0, 1_700_000_000.123456]) | st.floats(
    -1e12, 1e12, allow_nan=False
)
ORDER_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 10.0, 30.0, 600.0])),
        # Onto a record's lease end or expiry: exactly, a float step before or after.
        st.tuples(
            st.just("edge"),
            st.integers(0, 2),
            st.sampled_from(["until", "expires"]),
            st.sampled_from([-1, 0, 1]),
        ),
        st.tuples(
            st.just("claim"),
            st.integers(0, 2),
            st.sampled_from("abc"),
            ORDER_VERSIONS,
            st.sampled_from([10.0, 30.0]),
            st.sampled_from([20.0, 600.0]),
        ),
        st.tuples(
            st.just("settle"),
            st.integers(0, 2),
            st.sampled_from("abc"),
            ORDER_VERSIONS,
            st.booleans(),
            st.sampled_from([20.0, 600.0]),
        ),
    ),
    max_size=30,
)


@PROPERTY
@given(steps=ORDER_STEPS, start=st.sampled_from([T0, 1_776_000_000.123456]))
async def test_ordering_scripts_decide_as_the_python_state_machine(
    steps: list[Any], start: float
) -> None:
    from surefoot.webhooks import _order

    keys = [_order.ordering_key("e", str(n)) for n in range(3)]
    async for store in _fresh(service_url("redis")):
        model: dict[str, _order.OrderRecord | None] = dict.fromkeys(keys)
        now = start
        for step in steps:
            if step[0] == "advance":
                now += step[1]
                continue
            key = keys[step[1]]
            record = model[key]
            if step[0] == "edge":
                if record is not None:
                    at = record.until if step[2] == "until" else record.expires
                    for _ in range(abs(step[3])):
                        at = math.nextafter(at, math.copysign(math.inf, step[3]))
                    now = max(now, at)
            elif step[0] == "claim":
                _, _, token, version, lease, retention = step
                model[key], want = _order.claim(
                    record, version=version, token=token, now=now, lease=lease, retention=retention
                )
                got = await store.order_claim(
                    key, version=version, token=token, now=now, lease=lease, retention=retention
                )
                assert got == want
            else:
                _, _, token, version, ok, retention = step
                model[key] = _order.settle(
                    record, token=token, version=version, ok=ok, now=now, retention=retention
                )
                await store.order_settle(
                    key, token=token, version=version, ok=ok, now=now, retention=retention
                )
            for k in keys:
                live = model[k]
                if _order.order_state(live, now) is _order.OrderState.ABSENT:
                    live = None
                assert await store.order_get(k, now) == live
