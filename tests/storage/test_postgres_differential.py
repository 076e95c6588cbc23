"""Hypothesis: ``PostgresStore``'s SQL decides exactly as the Python references.

The PL/pgSQL functions re-implement ``surefoot.ratelimit._core.plan`` (over every
algorithm of ``_algorithms``) and the state machine of ``surefoot.idempotency._core``.
Random sequences are played on a ``PostgresStore(clock="caller")`` and on the Python
functions over a dict of states, and every answer must match: ``allowed``, ``remaining``
and verdicts equal, times within 1e-9 (in practice equal: both compute in IEEE doubles,
operation for operation). The reference forgets a rate-limit state at its
``expires_at``, as every store does.

Inputs are chosen where floats bite: times near today's epoch seconds with random
fractions (where a float is 2.4e-7 s coarse), windows that are not binary fractions
(0.1 s, 2.5 s), bursts above and below the amount, costs beyond what a limit can ever
admit (``inf``), time standing still, and time going backwards a little (hosts' clocks
disagree). Several acquires sent at once are decided in one batch, in order. Sliding logs
are also played long: bursts of up to 1,500 requests on logs of up to 4,000 entries,
after which the log's table must hold the reference's entries and no others.

The helpers the SQL needs beyond PostgreSQL's own (Python's float ``%``, ``math.ulp``,
calendar periods read as ``zoneinfo`` reads them) are checked against Python directly,
the periods over time zones whose midnight is skipped or repeated.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from surefoot.idempotency import _core
from surefoot.idempotency._core import Begin, Outcome, Record, Step, StoredResponse
from surefoot.ratelimit import Item, Limit, RateLimitDecision, plan
from surefoot.ratelimit._algorithms import Concurrency, quota_period
from surefoot.storage.postgres import _BATCH, PostgresStore, migrate

pytestmark = pytest.mark.anyio

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EPOCH = 1_776_000_000.0  # April 2026


@pytest.fixture
async def pg(
    postgres_dsn: str,
) -> AsyncIterator[tuple[PostgresStore, psycopg.AsyncConnection[Any], str]]:
    """A store on the caller's clock, and a raw connection, on a fresh migrated schema."""
    schema = f"surefoot_test_{uuid.uuid4().hex[:12]}"
    await migrate(postgres_dsn, schema=schema)
    # Hypothesis examples share this store and each starts at a random instant, so time
    # goes back between examples: a background purge at one example's "now" would
    # delete the live rows of the next. No purge runs (the first is due at 1e12).
    store = PostgresStore(
        postgres_dsn, schema=schema, clock="caller", timeout=10, purge_interval=1e12
    )
    store._next_purge_at = 1e12
    conn = await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True)
    try:
        await store.open()
        yield store, conn, schema
    finally:
        await store.aclose()
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


# -- rate limits --------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Paris", "America/Havana", "Australia/Lord_Howe", "Pacific/Apia"]
WINDOWS = [1.0, 60.0, 0.5, 2.5, 0.1, 3.0, 3600.0]


@st.composite
def limits(draw: st.DrawFn) -> Limit:
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
    amount = draw(st.integers(1, 7))
    if algorithm == "quota":
        period: Any = draw(st.sampled_from(["day", "month"]))
        zone = draw(st.sampled_from(ZONES))
        return Limit(amount, 86400, algorithm="quota", period=period, timezone=zone)
    return Limit(
        amount,
        draw(st.sampled_from(WINDOWS)),
        algorithm=algorithm,
        burst=draw(st.none() | st.integers(1, 9)),
        max_wait=draw(st.sampled_from([0.0, 0.25, 0.3, 1.0, 1.5])),
        lease=draw(st.sampled_from([0.5, 2.0, 30.0])),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Limit], list[Any], float]:
    """Limits (one per key) and a schedule of acquire batches and releases."""
    keys = draw(st.lists(limits(), min_size=1, max_size=3))
    start = EPOCH + draw(
        st.integers(0, 86400 * 40).map(float) | st.floats(0, 86400 * 40, allow_nan=False)
    )
    # Steps on each limit's own grid (its interval, fractions of its window) make exact
    # ties and refills to the brim, where only the float slack decides.
    grid = [limit.window / limit.amount for limit in keys] + [limit.window / 32 for limit in keys]
    steps: list[Any] = []
    for _ in range(draw(st.integers(1, 12))):
        dt = draw(
            st.just(0.0)
            | st.builds(lambda step, n: step * n, st.sampled_from(grid), st.integers(1, 3))
            | st.builds(lambda step, n: step * n, st.sampled_from(grid), st.integers(1, 40))
            | st.floats(0, 5, allow_nan=False)
            | st.floats(-0.5, 0, allow_nan=False)
            | st.sampled_from([0.1, 0.2, 0.25, 1.0, 60.0, 3600.0, 86400.0])
        )
        slotted = [k for k, limit in enumerate(keys) if limit.algorithm == "concurrency"]
        if slotted and draw(st.integers(0, 3)) == 0:
            key = draw(st.sampled_from(slotted))
            steps.append(("release", dt, key, draw(st.sampled_from("abc"))))
            continue
        batch = []
        for _ in range(draw(st.integers(1, 3))):
            items = draw(
                st.lists(
                    st.tuples(
                        st.integers(0, len(keys) - 1),
                        st.integers(1, 3) | st.integers(1, 12),
                        st.booleans() | st.just(True),
                        st.sampled_from("abc"),
                    ),
                    min_size=1,
                    max_size=3,
                )
            )
            batch.append(items)
        steps.append(("acquire", dt, batch))
    return keys, steps, start


def same(ours: RateLimitDecision, theirs: RateLimitDecision) -> bool:
    def close(a: float, b: float) -> bool:
        return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-9)

    return (
        ours.allowed == theirs.allowed
        and ours.remaining == theirs.remaining
        and all(close(a, b) for a, b in zip(ours[2:], theirs[2:], strict=True))
    )


def _brim(algorithm: str) -> tuple[list[Limit], list[Any], float]:
    """One unit per 0.1 s, a second request two float steps (at today's epoch times)
    before the first one's effect has worn off: computed from timestamps, the elapsed
    time falls a hair short, and only the float slack (``_slack``) makes the bucket full
    (empty, the queue free) as the exact arithmetic says."""
    once = [[(0, 1, True, "a")]]
    limit = Limit(1, 0.1, algorithm=algorithm, burst=1 if algorithm == "gcra" else 2, max_wait=0.0)
    steps = [("acquire", 0.0, once), ("acquire", 0.1 - 2 * math.ulp(EPOCH), once)]
    return [limit], steps, EPOCH


@PROPERTY
@given(scenario=scenarios())
@example(scenario=_brim("token_bucket"))
@example(scenario=_brim("leaky_bucket"))
@example(scenario=_brim("gcra"))
@example(scenario=_brim("leaky_queue"))
async def test_acquire_and_release_decide_as_plan_does(
    pg: tuple[PostgresStore, Any, str], scenario: tuple[list[Limit], list[Any], float]
) -> None:
    store = pg[0]
    limits_, steps, now = scenario
    prefix = f"rl:{uuid.uuid4().hex}:"
    states: dict[str, tuple[Any, float]] = {}  # key -> (state, expires_at)

    def state_of(key: str, at: float) -> Any:
        state, expires_at = states.get(key, (None, 0.0))
        return state if expires_at > at else None

    for step in steps:
        now += step[1]
        if step[0] == "release":
            key, token = prefix + str(step[2]), step[3]
            held = state_of(key, now)
            if held is not None:
                new = Concurrency.release(held, token, now)
                if new is None:
                    del states[key]
                else:
                    states[key] = (new, Concurrency.expires_at(new))
            await store.release(key, token, now)
            continue
        requests = [
            [
                Item(prefix + str(k), limits_[k].algorithm or "", limits_[k], cost, enforce, token)
                for k, cost, enforce, token in request
            ]
            for request in step[2]
        ]
        expected = []
        for items in requests:
            admitted, decisions, writes = plan([state_of(i.key, now) for i in items], items, now)
            for write in writes:
                states[write.key] = (write.state, write.expires_at)
            expected.append((admitted, decisions))
        # Sent together: one batch, decided in this order.
        got = await asyncio.gather(*(store.acquire(items, now) for items in requests))
        for (admitted, decisions), (ours_admitted, ours) in zip(expected, got, strict=True):
            assert ours_admitted == admitted
            assert all(map(same, ours, decisions)), (ours, decisions)


# -- long sliding logs --------------------------------------------------------------------

# Bursts of up to 1,500 requests on one log (in batches of 64), the clock moving
# by fractions of the window (entries leave one by one, by the dozen or all at once) or
# stepping back a little, costs that make a refusal look far into the log for the entry
# that frees enough (a third of the amount) or can never pass; some requests also meet a
# fixed window that refuses them, so that the log's admission is not written.
LOG_STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("advance"),
            st.sampled_from([-0.01, 0.0, 1e-6, 0.1, 0.37, 0.5, 0.999, 1.0, 1.5]),  # windows
        ),
        st.tuples(
            st.just("burst"),
            st.sampled_from([1, 40, 300, 1500]),  # requests
            st.sampled_from([1, 1, 2, 3, -3, -1]),  # cost of each: -3 is amount // 3, -1 amount + 1
            st.sampled_from([0.0, 1e-7, 1e-4, 1e-3]),  # windows between two requests
            st.booleans(),  # through a fixed window too
        ),
    ),
    min_size=1,
    max_size=6,
)


@settings(PROPERTY, max_examples=25)
@given(
    amount=st.sampled_from([60, 900, 4000]),
    window=st.sampled_from([2.5, 60.0, 3600.0]),
    steps=LOG_STEPS,
    start=st.sampled_from([EPOCH, EPOCH + 0.123456]),
)
async def test_long_sliding_logs_decide_as_the_reference_and_keep_only_its_entries(
    pg: tuple[PostgresStore, Any, str], amount: int, window: float, steps: list[Any], start: float
) -> None:
    store, conn, schema = pg
    log = Limit(amount, window, algorithm="sliding_log")
    cap = Limit(amount // 2, window)
    key = f"rl:{uuid.uuid4().hex}:log"
    states: dict[str, tuple[Any, float]] = {}  # key -> (state, expires_at)

    def state_of(key: str, at: float) -> Any:
        state, expires_at = states.get(key, (None, 0.0))
        return state if expires_at > at else None

    now = start
    for step in steps:
        if step[0] == "advance":
            now += step[1] * window
            continue
        _, count, cost, spacing, capped = step
        cost = {-3: amount // 3, -1: amount + 1}.get(cost, cost)
        calls, expected = [], []
        for i in range(count):
            at = now + i * spacing * window
            items = [Item(key, "sliding_log", log, cost)]
            if capped:
                items.append(Item(key + ":cap", "fixed_window", cap))
            admitted, decisions, writes = plan([state_of(it.key, at) for it in items], items, at)
            for write in writes:
                states[write.key] = (write.state, write.expires_at)
            expected.append((admitted, decisions))
            calls.append((items, at))
        now += (count - 1) * spacing * window
        # A batch at a time: batches sent at once may take the key's lock in any order.
        got = []
        for first in range(0, count, _BATCH):
            got += await asyncio.gather(*(store.acquire(*c) for c in calls[first : first + _BATCH]))
        for (admitted, decisions), (ours_admitted, ours) in zip(expected, got, strict=True):
            assert ours_admitted == admitted
            assert all(map(same, ours, decisions)), (ours, decisions)
    # The table holds the reference's entries, no more: at most the amount of them.
    cursor = await conn.execute(
        f'SELECT time, cost FROM "{schema}".surefoot_ratelimit_log WHERE key = %s ORDER BY total',
        (key,),
    )
    kept = await cursor.fetchall()
    assert len(kept) <= amount
    state = state_of(key, now)
    if state is not None:
        assert kept == [(entry.time, entry.cost) for entry in state]


# -- idempotency --------------------------------------------------------------------------

RESPONSES = [
    StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}'),
    StoredResponse(500, (), b""),
    StoredResponse(200, ((b"x-a", b"\xe9\x00"), (b"x-a", b"")), None),
]


@st.composite
def idempotency_steps(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 20))):
        dt = draw(
            st.just(0.0) | st.sampled_from([0.5, 10.0, 30.0, 60.0, 600.0]) | st.floats(0, 100)
        )
        key = draw(st.sampled_from("xyz"))
        kind = draw(st.sampled_from(["begin", "begin", "finish", "resolve", "forget", "get"]))
        if kind == "begin":
            steps.append(
                (
                    kind,
                    dt,
                    key,
                    draw(st.sampled_from(["fp1", "fp2"])),
                    draw(st.sampled_from([10.0, 30.0])),
                    draw(st.sampled_from([60.0, 600.0])),
                    draw(st.sampled_from(["reexecute", "unknown"])),
                    # (max_records, max_unknown): the quotas of the keys' owner (Rule 7).
                    draw(st.sampled_from([(0, 0), (1, 0), (2, 0), (2, 1), (0, 1), (3, 1)])),
                )
            )
        elif kind == "finish":
            step = draw(st.sampled_from([Step.COMPLETE, Step.RELEASE, Step.MARK_UNKNOWN]))
            response = draw(st.sampled_from(RESPONSES)) if step is Step.COMPLETE else None
            outcome = Outcome(step, response)  # type: ignore[arg-type]
            steps.append((kind, dt, key, draw(st.integers(0, 5)), outcome))
        elif kind == "resolve":
            steps.append((kind, dt, key, draw(st.sampled_from(RESPONSES))))
        else:
            steps.append((kind, dt, key))
    return steps


def usage(records: dict[str, Record], now: float) -> _core.Usage:
    """The owner's usage as ``_core`` Rule 7 defines it, from the reference's records."""
    live = [r for r in records.values() if _core.classify(r, now) is not _core.State.ABSENT]
    unknown = [r for r in live if r.state is _core.State.UNKNOWN]
    return _core.Usage(
        len(live),
        len(unknown),
        min((r.expires_at for r in live), default=math.inf),
        min((r.expires_at for r in unknown), default=math.inf),
    )


@PROPERTY
@given(steps=idempotency_steps(), start=st.floats(0, 1e6, allow_nan=False), owned=st.booleans())
async def test_idempotency_steps_follow_the_core_state_machine(
    pg: tuple[PostgresStore, Any, str], steps: list[tuple[Any, ...]], start: float, owned: bool
) -> None:
    store = pg[0]
    # Owned keys (one principal's, from scoped_key) count against its quotas; others not.
    principal = f"cred:{uuid.uuid4().hex}"
    prefix = f"idem:{uuid.uuid4().hex}:"
    records: dict[str, Record] = {}
    tokens: list[str] = []
    now = EPOCH + start
    # Begins (or finishes) at one instant are sent together: one batch, in this order.
    together: list[tuple[str, Any, Any]] = []  # (kind, call, expected answer)

    async def send() -> None:
        answers = await asyncio.gather(*(call() for _, call, _ in together))
        assert list(answers) == [expected for _, _, expected in together]
        together.clear()

    for step in steps:
        kind, dt, key = step[:3]
        if together and (dt or kind != together[-1][0]):
            await send()
        now += dt
        stored = _core.scoped_key(principal, key) if owned else prefix + key
        record = records.get(key)
        call: Any
        if kind == "begin":
            token = f"t{len(tokens)}"
            tokens.append(token)
            request = Begin(step[3], token, step[4], step[5], step[6], *step[7])
            counted = owned and _core.charges_quota(record, request, now)
            expected, new = _core.begin(
                record, request, now, usage(records, now) if counted else None
            )
            call = functools.partial(store.begin, stored, request, now)
        elif kind == "finish":
            token = tokens[step[3]] if step[3] < len(tokens) else "never-issued"
            expected, new = _core.finish(record, token, step[4], now)
            call = functools.partial(store.finish, stored, token, step[4], now)
        elif kind == "resolve":
            expected, new = _core.resolve(record, step[3], now)
            call = functools.partial(store.resolve, stored, step[3], now)
        elif kind == "forget":
            expected, new = _core.forget(record, now)
            call = functools.partial(store.forget, stored, now)
        else:
            new = record
            expected = None if _core.classify(record, now) is _core.State.ABSENT else record
            call = functools.partial(store.get, stored, now)
        together.append((kind, call, expected))
        if kind not in ("begin", "finish"):
            await send()
        if new is None:
            records.pop(key, None)
        else:
            records[key] = new
    if together:
        await send()


# -- the SQL helpers ----------------------------------------------------------------------


async def _each(conn: Any, query: str, *arrays: list[Any]) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(query, arrays)
    return list(await cursor.fetchall())


@PROPERTY
@given(
    pairs=st.lists(
        st.tuples(
            st.floats(0, 4e9, allow_nan=False) | st.floats(0, 1e6, allow_nan=False),
            st.sampled_from(WINDOWS) | st.floats(1e-3, 1e6, allow_nan=False),
        ),
        min_size=1,
        max_size=50,
    )
)
async def test_fmod_is_pythons_float_modulo_exactly(
    pg: tuple[PostgresStore, Any, str], pairs: list[tuple[float, float]]
) -> None:
    _, conn, schema = pg
    rows = await _each(
        conn,
        f'SELECT "{schema}".surefoot_fmod(x, y) FROM unnest(%s::float8[], %s::float8[]) '
        "WITH ORDINALITY AS u(x, y, n) ORDER BY n",
        [x for x, _ in pairs],
        [y for _, y in pairs],
    )
    assert [r for (r,) in rows] == [x % y for x, y in pairs]


@PROPERTY
@given(
    xs=st.lists(
        st.floats(0, 1e308, allow_nan=False)
        | st.sampled_from([0.0, 5e-324, 1.0, 2.0**-1022, 1.7e9]),
        min_size=1,
        max_size=50,
    )
)
async def test_ulp_is_math_ulp(pg: tuple[PostgresStore, Any, str], xs: list[float]) -> None:
    _, conn, schema = pg
    rows = await _each(
        conn,
        f'SELECT "{schema}".surefoot_ulp(x) FROM unnest(%s::float8[]) '
        "WITH ORDINALITY AS u(x, n) ORDER BY n",
        xs,
    )
    assert [r for (r,) in rows] == [math.ulp(x) for x in xs]


#: Zones whose days do not all start at one midnight: a skipped midnight (Sao Paulo,
#: Beirut, Santiago, Havana in spring), a repeated one (Havana in autumn), half-hour
#: shifts (Lord Howe), a skipped day (Apia, 2011), +14 h (Kiritimati), -3:30 (St Johns).
CALENDARS = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Havana",
    "America/Sao_Paulo",
    "Asia/Beirut",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "America/St_Johns",
]


async def _periods(
    conn: Any, schema: str, times: list[float], period: str, zone: str
) -> list[tuple[float, float]]:
    rows = await _each(
        conn,
        f"SELECT p.period_start, p.period_end FROM unnest(%s::float8[]) WITH ORDINALITY "
        f'AS u(t, n), LATERAL "{schema}".surefoot_quota_period(u.t, %s, %s) AS p ORDER BY u.n',
        times,
        period,  # type: ignore[arg-type]
        zone,  # type: ignore[arg-type]
    )
    return [(start, end) for start, end in rows]


@PROPERTY
@given(
    zone=st.sampled_from(CALENDARS),
    period=st.sampled_from(["day", "month"]),
    times=st.lists(st.floats(946684800, 2145916800, allow_nan=False), min_size=1, max_size=30),
)
async def test_quota_periods_computed_by_the_database_are_pythons(
    pg: tuple[PostgresStore, Any, str], zone: str, period: str, times: list[float]
) -> None:
    _, conn, schema = pg
    ours = await _periods(conn, schema, times, period, zone)
    assert ours == [quota_period(t, period, zone) for t in times]


async def test_quota_periods_around_every_day_boundary_of_difficult_zones(
    pg: tuple[PostgresStore, Any, str],
) -> None:
    """Every day of 2008-2024 in each zone: a second before, at, and after its start."""
    _, conn, schema = pg
    first = datetime(2008, 1, 1, tzinfo=UTC).timestamp()
    last = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    for zone in CALENDARS:
        starts = []
        t = first
        while t < last:
            start, end = quota_period(t, "day", zone)
            starts.append(start)
            t = end
        times = list(itertools.chain.from_iterable((s - 1, s, s + 0.5) for s in starts))
        ours = await _periods(conn, schema, times, "day", zone)
        theirs = [quota_period(t, "day", zone) for t in times]
        assert ours == theirs, zone


async def test_an_instant_just_before_midnight_is_in_the_day_it_ends(
    pg: tuple[PostgresStore, Any, str],
) -> None:
    # to_timestamp rounds to the microsecond: half a microsecond before midnight it
    # reached the next day, where quota_period (which corrects the same rounding) does not.
    _, conn, schema = pg
    midnight = 2145916800.0  # 2038-01-01 00:00 UTC
    times = [math.nextafter(midnight, 0.0), midnight]
    assert await _periods(conn, schema, times, "day", "UTC") == [
        (midnight - 86400.0, midnight),
        (midnight, midnight + 86400.0),
    ]


# -- webhook ordering records ---------------------------------------------------------------

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
@given(steps=ORDER_STEPS, start=st.floats(0, 1e6, allow_nan=False))
async def test_ordering_steps_follow_the_core_state_machine(
    pg: tuple[PostgresStore, Any, str], steps: list[Any], start: float
) -> None:
    from surefoot.webhooks import _order

    store = pg[0]
    # Examples share the schema: keys of their own.
    example = uuid.uuid4().hex
    keys = [_order.ordering_key(example, str(n)) for n in range(3)]
    model: dict[str, _order.OrderRecord | None] = dict.fromkeys(keys)
    now = EPOCH + start
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
