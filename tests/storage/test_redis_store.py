"""``RedisStore`` beyond the shared contract suites.

Construction and URLs; one script call per step, and the scripts coming back after a real
``SCRIPT FLUSH``; the server's clock; keys expiring by themselves; Redis Cluster slots;
failures (nothing listening, a server that never answers, a reply that comes too late,
a script error) as ``StoreUnavailable``; coalescing; sliding logs kept as sorted sets (and
an older surefoot's converted on first touch). The Lua scripts' decisions are compared
with the Python references in ``test_redis_differential.py``.

Round trips are counted (commands a counting client sends, and pipelines), never timed.
Every test writes under a prefix of its own and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.credentials import CredentialProvider
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from _services import RedisServer, service_url
from _support import T0, free_port, unanswered_port
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency._core import (
    Begin,
    InProgress,
    Outcome,
    Replay,
    Reserved,
    State,
    Step,
    StoredResponse,
)
from surefoot.ratelimit import (
    ALGORITHM_BY_NAME,
    ALGORITHMS,
    Item,
    Limit,
    ListLog,
    LogEntry,
    RateLimitDecision,
)
from surefoot.storage import store_from_url
from surefoot.storage.redis import SEND_AT, RedisStore, _Connection

pytestmark = pytest.mark.anyio

LEASE, TTL = 30.0, 3600.0
OK = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}')
KINDS = ["redis", "redis_cluster"]
NO_RETRY = Retry(NoBackoff(), 0)
SLIDING_LOG = ALGORITHM_BY_NAME["sliding_log"]


def begin_req(token: str, mode: str = "unknown") -> Begin:
    return Begin("fp", token, LEASE, TTL, mode)  # type: ignore[arg-type]


class CountingRedis(Redis):
    """A client that counts the commands it sends (a round trip each) in ``sent``."""

    sent: Counter[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent[str(args[0]).upper()] += 1
        return await super().execute_command(*args, **options)


class CountingCluster(RedisCluster):
    sent: Counter[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent[str(args[0]).upper()] += 1
        return await super().execute_command(*args, **options)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Round trips: the commands counting clients send, and every pipeline (one round
    trip per node, however many commands it carries); on a standalone server, the
    scripts sent on the store's pipelined connection, by SHA or whole."""
    counts: Counter[str] = Counter()
    send, resend = _Connection.send, _Connection._resend

    def counted_send(self: Any, *args: Any, **kwargs: Any) -> None:
        counts["EVALSHA"] += 1
        send(self, *args, **kwargs)

    def counted_resend(self: Any, *args: Any) -> None:
        counts["EVAL"] += 1
        resend(self, *args)

    monkeypatch.setattr(_Connection, "send", counted_send)
    monkeypatch.setattr(_Connection, "_resend", counted_resend)
    for cls in (Pipeline, ClusterPipeline):
        execute = cls.execute

        async def counted(self: Any, *args: Any, _execute: Any = execute, **kwargs: Any) -> Any:
            counts["PIPELINE"] += 1
            return await _execute(self, *args, **kwargs)

        monkeypatch.setattr(cls, "execute", counted)
    return counts


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What the pipelined connections write, one entry per ``write()``."""
    written: list[bytes] = []
    flush = _Connection._flush

    def recorded(self: Any) -> None:
        if self._transport is not None and self._out:
            written.append(b"".join(self._out))
        flush(self)

    monkeypatch.setattr(_Connection, "_flush", recorded)
    return written


def counting_client(kind: str, sent: Counter[str]) -> Any:
    url = service_url(kind)
    client: Any
    if kind == "redis_cluster":
        client = CountingCluster.from_url(
            "redis://" + url.removeprefix("redis+cluster://"), retry=NO_RETRY
        )
    else:
        client = CountingRedis.from_url(url, retry=NO_RETRY)
    client.sent = sent
    return client


def round_trips(sent: Counter[str]) -> int:
    return sent["EVALSHA"] + sent["EVAL"] + sent["PIPELINE"]


async def drop(client: Any, prefix: str) -> None:
    """Delete every key under ``prefix`` (on every primary of a cluster)."""
    if isinstance(client, RedisCluster):
        keys = [
            k
            for node in client.get_primaries()
            async for k in client.scan_iter(match=f"{prefix}*", count=1000, target_nodes=node)
        ]
    else:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    for key in keys:
        await client.delete(key)


Make = Callable[..., RedisStore]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Stores on the real servers, each under a fresh prefix, dropped afterwards (with
    their clients, also those a test passed in)."""
    made: list[tuple[RedisStore, Any]] = []

    def factory(
        kind: str = "redis", *, client: Any = None, timeout: float = 5.0, **options: Any
    ) -> RedisStore:
        prefix = f"test:rs:{uuid.uuid4().hex[:12]}:"
        if client is None:
            url = service_url(kind)
            if kind == "redis_cluster":
                url = "redis://" + url.removeprefix("redis+cluster://")
                client = RedisCluster.from_url(url, retry=NO_RETRY)
            else:
                client = Redis.from_url(url, retry=NO_RETRY)
        options.setdefault("clock", "caller")
        store = RedisStore(client, prefix=prefix, timeout=timeout, **options)
        made.append((store, client))
        return store

    yield factory
    for store, client in made:
        await store.aclose()
        await drop(client, store.prefix)
        await client.aclose()


# -- construction -------------------------------------------------------------------------


async def test_from_url_reads_its_own_options_and_passes_redis_ones_on() -> None:
    store = RedisStore.from_url(
        "redis://127.0.0.1:6379/0?prefix=api:&clock=caller&timeout=0.25&coalesce=false"
        "&max_connections=7&client_name=billing"
    )
    try:
        assert (store.prefix, store.clock, store.timeout, store.coalesce) == (
            "api:",
            "caller",
            0.25,
            False,
        )
        client: Any = store._client
        assert isinstance(client, Redis)
        assert client.connection_pool.max_connections == 7
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["client_name"] == "billing"
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
        assert kwargs["retry"].get_retries() == 0  # a lost reply is never sent twice
    finally:
        await store.aclose()


async def test_the_defaults_and_the_registry() -> None:
    store = store_from_url("redis://127.0.0.1:6379")
    cluster = store_from_url("redis+cluster://127.0.0.1:7000?prefix=api:")
    try:
        assert isinstance(store, RedisStore)
        assert (store.prefix, store.clock, store.timeout, store.coalesce) == (
            "surefoot:",
            "server",
            0.05,
            True,
        )
        assert store.rate_limit_algorithms == ALGORITHMS
        assert isinstance(cluster, RedisStore)
        assert isinstance(cluster._client, RedisCluster)
        assert repr(cluster) == (
            "RedisStore(<RedisCluster>, prefix='api:', clock='server', timeout=0.05, coalesce=True)"
        )
    finally:
        await store.aclose()
        await cluster.aclose()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("colour=red", "unknown options ['colour']; expected prefix, clock, timeout"),
        ("clock=sundial", "clock: expected 'server' or 'caller', got 'sundial'"),
        ("timeout=0", "timeout: expected a positive number of seconds, got '0'"),
        ("timeout=-1", "timeout: expected a positive number of seconds"),
        ("timeout=soon", "timeout: expected a positive number of seconds, got 'soon'"),
        ("timeout=inf", "timeout: expected a positive number of seconds"),
        ("coalesce=maybe", "coalesce: expected true or false, got 'maybe'"),
        ("db=first", "db: expected an integer, got 'first'"),
        ("health_check_interval=often", "health_check_interval: expected an integer"),
        ("prefix=api:{x}:", "RedisStore.prefix: expected a string without '{' or '}'"),
        ("ssl_certfile=/c.pem", "unknown options ['ssl_certfile']"),  # needs rediss://
    ],
)
async def test_bad_url_options_name_the_option_and_what_is_expected(
    query: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("{", r"\{")):
        RedisStore.from_url(f"redis://:hunter2@127.0.0.1:6379/0?{query}")


async def test_a_message_never_shows_the_password() -> None:
    for url in (
        "redis://:hunter2@127.0.0.1:6379/0?colour=red",
        "redis+cluster://admin:hunter2@127.0.0.1:7000/3",
        "redis://:hunter2@127.0.0.1:6379/0?db=first",
        # A password with an unencoded '/' or '?' (it used to be shown as a port, or as
        # the name of an unknown option).
        "redis://u:hun/ter2@127.0.0.1:6379/0",
        "redis://u:hun?ter2@127.0.0.1:6379/0",
    ):
        with pytest.raises(ConfigurationError) as info:
            store_from_url(url)
        assert "hunter2" not in str(info.value)
        assert "hun" not in str(info.value)
        assert "ter2" not in str(info.value)


async def test_tls_options_go_with_rediss_and_other_schemes_are_refused() -> None:
    store = RedisStore.from_url("rediss://cache.internal:6380/0?ssl_cert_reqs=none&prefix=p:")
    try:
        client: Any = store._client
        pool = client.connection_pool
        assert pool.connection_class.__name__ == "SSLConnection"
        assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    finally:
        await store.aclose()
    with pytest.raises(ConfigurationError, match="expected the scheme redis://, rediss://"):
        RedisStore.from_url("http://127.0.0.1:6379")


async def test_the_constructor_checks_its_arguments() -> None:
    client = Redis()
    try:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"prefix": "a}"}, "prefix: expected a string without"),
            ({"clock": "local"}, "clock: expected 'server' or 'caller'"),
            ({"timeout": 0}, "timeout: expected a positive number"),
            ({"timeout": True}, "timeout: expected a positive number"),
            ({"coalesce": "yes"}, "coalesce: expected True or False"),
        ]
        for options, message in cases:
            with pytest.raises(ConfigurationError, match=message):
                RedisStore(client, **options)
        with pytest.raises(ConfigurationError, match=r"expected a redis\.asyncio\.Redis"):
            RedisStore("redis://127.0.0.1")  # type: ignore[arg-type]
        decoding = Redis(decode_responses=True)
        with pytest.raises(ConfigurationError, match="decode_responses=False"):
            RedisStore(decoding)
        await decoding.aclose()
    finally:
        await client.aclose()


# -- one round trip per step --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_every_step_is_one_script_call(kind: str, make: Make, sent: Counter[str]) -> None:
    client = counting_client(kind, sent)
    store = make(kind, client=client, coalesce=False)
    slots = Limit(3, 60, algorithm="concurrency")
    steps: list[Callable[[], Any]] = [
        lambda: store.begin("k", begin_req("t1"), T0),
        lambda: store.finish("k", "t1", Outcome(Step.MARK_UNKNOWN), T0),
        lambda: store.resolve("k", OK, T0),
        lambda: store.begin("k", begin_req("t2"), T0),
        lambda: store.get("k", T0),
        lambda: store.forget("k", T0),
        lambda: store.acquire([Item("rl:{a}:s", "concurrency", slots, token="x")], T0),
        lambda: store.release("rl:{a}:s", "x", T0),
    ]
    for step in steps:  # loads every script the server may not have yet
        await step()
    for step in steps:
        sent.clear()
        await step()
        assert sent == {"EVALSHA": 1}, step
    sent.clear()
    assert await make(kind, client=client, clock="server").purge(T0) == 0
    assert sent == {}  # Redis expires records itself


@pytest.mark.parametrize("kind", KINDS)
async def test_scripts_come_back_after_script_flush(
    kind: str, make: Make, sent: Counter[str]
) -> None:
    client = counting_client(kind, sent)
    store = make(kind, client=client)
    token_bucket = Item("rl:{a}:b", "token_bucket", Limit(5, 60, algorithm="token_bucket"))
    assert await store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, took_over=False)
    assert (await store.acquire([token_bucket], T0))[1][0].remaining == 4

    async def flush() -> None:
        if isinstance(client, RedisCluster):
            await client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
        else:
            await client.script_flush()

    await flush()

    sent.clear()
    assert await store.begin("k", begin_req("t2"), T0 + 1) == InProgress(T0 + LEASE)
    assert sent == {"EVALSHA": 1, "EVAL": 1}  # NOSCRIPT, then sent whole
    sent.clear()
    assert await store.begin("k", begin_req("t3"), T0 + 2) == InProgress(T0 + LEASE)
    assert sent == {"EVALSHA": 1}  # loaded again: by SHA from now on
    assert (await store.acquire([token_bucket], T0))[1][0].remaining == 3
    assert await store.finish("k", "t1", Outcome(Step.COMPLETE, OK), T0 + 3)
    assert await store.begin("k", begin_req("t4"), T0 + 4) == Replay(OK)

    # Steps queued behind a call in flight go in a pipeline; lost scripts come back there.
    await flush()
    sent.clear()
    results = await asyncio.gather(
        store.acquire([token_bucket], T0),
        *(store.begin(f"p{n}", begin_req(f"t{n}"), T0) for n in range(3)),
        store.get("k", T0 + 5),
    )
    assert results[1:4] == [Reserved(f"t{n}", 1, took_over=False) for n in range(3)]
    record = results[4]
    assert record is not None
    assert record.response == OK
    if kind == "redis_cluster":
        assert sent == {"EVALSHA": 1, "EVAL": 1, "PIPELINE": 2}  # NOSCRIPT, then whole
    else:
        # One pipeline: the batch of acquires and each other step, all answered NOSCRIPT,
        # each sent again whole.
        assert sent == {"EVALSHA": 5, "EVAL": 5}
        sent.clear()
        assert await store.get("p0", T0) is not None
        assert sent == {"EVALSHA": 1}


async def test_steps_refuse_what_the_python_references_refuse(make: Make) -> None:
    store = make()
    await store.begin("k", begin_req("t1"), T0)
    with pytest.raises(ValueError, match="needs the response to keep"):
        await store.finish("k", "t1", Outcome(Step.COMPLETE), T0)
    record = await store.get("k", T0)
    assert record is not None
    assert record.state is State.IN_FLIGHT  # unchanged
    with pytest.raises(ConfigurationError, match="expected an algorithm among"):
        await store.acquire([Item("rl:{a}", "leaky_sieve", Limit(5, 60))], T0)


# -- the server's clock -------------------------------------------------------------------


async def test_on_the_server_clock_a_callers_clock_cannot_refill_a_limit(make: Make) -> None:
    # 3 per hour: a token comes back every 20 minutes of the server's clock.
    limit = Limit(3, 3600, algorithm="token_bucket")
    item = Item("rl:{a}:hour", "token_bucket", limit)
    server = make(clock="server")
    caller = make(clock="caller")
    skewed = [0.0, T0, T0 + 86400, 1e10, T0 - 86400, 2e10]

    on_server = [(await server.acquire([item], now))[0] for now in skewed]
    on_caller = [(await caller.acquire([item], now))[0] for now in skewed]

    assert on_server == [True, True, True, False, False, False]
    assert on_caller == [True, True, True, True, False, True]  # each jump refills


async def test_on_the_server_clock_a_skewed_caller_cannot_take_over_a_live_lease(
    make: Make,
) -> None:
    store = make(clock="server")
    assert isinstance(await store.begin("k", begin_req("t1", "reexecute"), 1000.0), Reserved)

    # The caller's clock says the lease ran out long ago; the server's says it has not.
    later = 1000.0 + 100 * LEASE
    second = await store.begin("k", begin_req("t2", "reexecute"), later)
    assert isinstance(second, InProgress)
    # Handed back on the caller's clock: the lease ends LEASE after it was taken, minus
    # the (server) time that passed between the two calls.
    assert later + LEASE - 5 < second.lease_expires_at <= later + LEASE

    record = await store.get("k", 50.0)
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert 50.0 + LEASE - 5 < record.lease_expires_at <= 50.0 + LEASE
    assert 50.0 + TTL - 5 < record.expires_at <= 50.0 + TTL
    [(key, listed)] = await store.records(50.0)
    assert key == "k"
    assert 50.0 + TTL - 5 < listed.expires_at <= 50.0 + TTL


async def test_on_the_server_clock_a_quota_counts_in_the_servers_calendar_day(
    make: Make,
) -> None:
    store = make(clock="server")
    quota = Limit(2, 86400, algorithm="quota", period="day", timezone="UTC")
    item = Item("rl:{a}:day", "quota", quota)
    today = time.time()
    yesterday = today - 86400  # a caller whose clock is a day behind

    decisions = [(await store.acquire([item], yesterday))[1][0] for _ in range(2)]
    admitted, [refused] = await store.acquire([item], today)

    assert [d.allowed for d in decisions] == [True, True]
    assert not admitted
    # Counted in the server's day, whichever period the caller's clock was in.
    assert 0 < refused.reset_after <= 86400
    assert refused.retry_after == refused.reset_after


@pytest.mark.parametrize("clock", ["caller", "server"])
async def test_a_tuple_of_items_is_encoded_once_and_each_call_carries_its_own_time(
    clock: str, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make(clock=clock)
    encoded: list[Any] = []
    encode = store._encoded

    def counted(items: Any, now: float) -> Any:
        encoded.append(items)
        return encode(items, now)

    monkeypatch.setattr(store, "_encoded", counted)
    # A bucket refilled in a day: no window boundary to cross on the server's clock.
    items = (Item("rl:{a}:b", "token_bucket", Limit(100, 86400)),)
    now = time.time() if clock == "server" else T0

    first = [(await store.acquire(items, now))[1][0].remaining for _ in range(3)]
    later = (await store.acquire(items, now + 86400))[1][0].remaining  # a day later
    as_list = [*items]  # the same items in a list, which could change: never kept
    await store.acquire(as_list, now)
    await store.acquire(as_list, now)

    assert first == [99, 98, 97]
    # The cached encoding carries no time: on the caller's clock a call a day later finds
    # the bucket full again; on the server's, the server's time is the one read.
    assert later == (99 if clock == "caller" else 96)
    assert encoded == [items, as_list, as_list]


async def test_a_quota_is_encoded_for_each_call_its_period_depending_on_the_time(
    make: Make,
) -> None:
    store = make(clock="caller")
    items = (Item("rl:{a}:day", "quota", Limit(2, 86400, algorithm="quota", period="day")),)

    today = [(await store.acquire(items, T0))[0] for _ in range(3)]
    tomorrow = await store.acquire(items, T0 + 86400)

    assert today == [True, True, False]
    assert tomorrow[0]
    assert tomorrow[1][0].remaining == 1


# -- expiry -------------------------------------------------------------------------------


async def test_keys_expire_when_their_state_is_spent(make: Make) -> None:
    store = make(clock="caller")
    client: Any = store._client
    # One token of five, refilled at 5 per minute: full again 12 s later.
    bucket = Item("rl:{a}:b", "token_bucket", Limit(5, 60, algorithm="token_bucket"))
    await store.acquire([bucket], T0)  # a caller's time long past: expiry is relative
    ttl = await client.pttl(store.prefix + bucket.key)
    assert 6_000 < ttl <= 12_001

    await store.begin("k", begin_req("t1"), T0)
    ttl = await client.pttl(store.prefix + "k")
    assert (TTL - 5) * 1000 < ttl <= TTL * 1000 + 1

    # A refused request writes nothing, and a state equivalent to none is deleted.
    huge = bucket._replace(key="rl:{a}:huge", cost=6)
    assert not (await store.acquire([huge], T0))[0]
    assert not await client.exists(store.prefix + huge.key)
    slots = Limit(2, 60, algorithm="concurrency")
    await store.acquire([Item("rl:{a}:s", "concurrency", slots, token="x")], T0)
    await store.acquire([Item("rl:{a}:s", "concurrency", slots, token="y")], T0)
    await store.release("rl:{a}:s", "x", T0)
    assert await client.exists(store.prefix + "rl:{a}:s")
    await store.release("rl:{a}:s", "y", T0)
    assert not await client.exists(store.prefix + "rl:{a}:s")


async def test_a_sliding_window_kept_by_an_older_surefoot_decides_as_python_does(
    make: Make,
) -> None:
    # Before the time of the last admission was kept, a state was three numbers: the
    # window [T0, T0 + 10) with 4 before it and 6 in it.
    store = make(clock="caller")
    client: Any = store._client
    limit = Limit(10, 10, algorithm="sliding_window")
    for n, at in enumerate((T0 + 5, T0 + 15, T0 + 25)):
        key = f"rl:{{a}}:old{n}"
        await client.eval(
            "return redis.call('SET', KEYS[1], cmsgpack.pack({tonumber(ARGV[1]), 4, 6}))",
            1,
            store.prefix + key,
            repr(T0),
        )
        _, [got] = await store.acquire([Item(key, "sliding_window", limit)], at)
        want, _ = ALGORITHM_BY_NAME["sliding_window"].decide((T0, 4, 6), at, 1, limit)
        assert tuple(got) == pytest.approx(tuple(want), abs=1e-9)
        assert got.remaining == [1, 6, 9][n]


# -- sliding logs -------------------------------------------------------------------------


def entries(members: list[tuple[bytes, float]]) -> list[LogEntry]:
    """A sliding log's sorted set (members with their scores) as its entries."""
    out = []
    for member, score in members:
        time_, total, cost = (float(part) for part in member.split(b":"))
        assert score == total
        out.append(LogEntry(time_, int(total), int(cost)))
    return out


@pytest.mark.parametrize("kind", KINDS)
async def test_a_sliding_log_is_a_sorted_set_of_its_live_entries(kind: str, make: Make) -> None:
    store = make(kind)
    client: Any = store._client
    limit = Limit(5, 10, algorithm="sliding_log")
    item = Item("rl:{a}:log", "sliding_log", limit)
    key = store.prefix + item.key
    state = None

    async def step(now: float, cost: int) -> RateLimitDecision:
        nonlocal state
        _, [got] = await store.acquire([item._replace(cost=cost)], now)
        want, new = SLIDING_LOG.decide(state, now, cost, limit)
        if want.allowed:
            state = new
        assert tuple(got) == pytest.approx(tuple(want), abs=1e-9)
        return got

    for now, cost in ((T0, 1), (T0, 2), (T0 + 4, 1), (T0 + 4.5, 1)):
        assert (await step(now, cost)).allowed
    assert await client.type(key) == b"zset"
    logged = entries(await client.zrange(key, 0, -1, withscores=True))
    assert logged == [(T0, 1, 1), (T0, 3, 2), (T0 + 4, 4, 1), (T0 + 4.5, 5, 1)]
    # It expires when its newest entry leaves the window: a window after the last step.
    assert 9_000 < await client.pttl(key) <= 10_001

    # A refusal counts nothing, but the entries that left the window go.
    assert not (await step(T0 + 10, 4)).allowed
    assert entries(await client.zrange(key, 0, -1, withscores=True)) == logged[2:]
    assert not (await step(T0 + 10, 4)).allowed
    # Once all of it has left the window, an admission starts a log of one entry.
    assert (await step(T0 + 30, 5)).allowed
    assert [e.cost for e in entries(await client.zrange(key, 0, -1, withscores=True))] == [5]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_clock_that_steps_back_logs_at_the_newest_entrys_time(
    kind: str, make: Make
) -> None:
    store = make(kind)
    client: Any = store._client
    limit = Limit(3, 10, algorithm="sliding_log")
    item = Item("rl:{a}:log", "sliding_log", limit)
    state = None
    for now in (T0 + 10, T0 + 5, T0 + 7, T0 + 14.5):
        _, [got] = await store.acquire([item], now)
        want, state = SLIDING_LOG.decide(state, now, 1, limit)
        assert tuple(got) == pytest.approx(tuple(want), abs=1e-9)
    # Logged at T0 + 10, not earlier: its reset is from there, and it refuses at T0 + 14.5.
    assert [got.allowed, got.reset_after] == [False, pytest.approx(5.5)]
    members = await client.zrange(store.prefix + item.key, 0, -1, withscores=True)
    assert [e.time for e in entries(members)] == [T0 + 10] * 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cost", [1, 12])
async def test_a_sliding_log_kept_by_an_older_surefoot_is_converted_on_first_touch(
    kind: str, cost: int, make: Make
) -> None:
    # Before, a log was a MessagePack list (t1, c1, t2, c2...) under a string key, its
    # times as the caller's clock gave them (here one stepped back), costs of 0 logged too.
    store = make(kind)
    client: Any = store._client
    limit = Limit(6, 10, algorithm="sliding_log")
    item = Item("rl:{a}:old", "sliding_log", limit, cost)
    key = store.prefix + item.key
    old = [T0, 1, T0 + 2, 2, T0 + 1, 1, T0 + 3, 0]
    pack = "return redis.call('SET', KEYS[1], cmsgpack.pack(cjson.decode(ARGV[1])), 'PX', 60000)"
    await client.eval(pack, 1, key, json.dumps(old))

    _, [got] = await store.acquire([item], T0 + 5)

    log = ListLog([LogEntry(T0, 1, 1), LogEntry(T0 + 2, 3, 2), LogEntry(T0 + 2, 4, 1)])
    want, _ = SLIDING_LOG.decide(log, T0 + 5, cost, limit)
    assert tuple(got) == pytest.approx(tuple(want), abs=1e-9)
    assert got.allowed is (cost == 1)
    assert await client.type(key) == b"zset"
    kept = [*log, LogEntry(T0 + 5, 5, 1)] if got.allowed else list(log)
    assert entries(await client.zrange(key, 0, -1, withscores=True)) == kept
    assert 0 < await client.pttl(key) <= 15_001


async def test_a_request_of_no_cost_leaves_no_entry(make: Make) -> None:
    # The gateway's admin API reads a limit with a cost of 0: it must leave no trace.
    store = make()
    client: Any = store._client
    limit = Limit(5, 10, algorithm="sliding_log")
    item = Item("rl:{a}:log", "sliding_log", limit)
    await store.acquire([item], T0)
    _, [peek] = await store.acquire([item._replace(cost=0)], T0 + 3)
    assert (peek.allowed, peek.remaining, peek.available_after) == (True, 4, pytest.approx(7))
    assert await client.zcard(store.prefix + item.key) == 1
    await store.acquire([item._replace(key="rl:{a}:never", cost=0)], T0)
    assert await client.exists(store.prefix + "rl:{a}:never") == 0


# -- Redis Cluster ------------------------------------------------------------------------


async def test_a_request_whose_keys_span_slots_is_a_configuration_error(
    make: Make, sent: Counter[str]
) -> None:
    client = counting_client("redis_cluster", sent)
    store = make("redis_cluster", client=client)
    limit = Limit(5, 60)
    items = [Item("rl:{alice}:a", "fixed_window", limit), Item("rl:{bob}:a", "fixed_window", limit)]
    assert key_slot((store.prefix + items[0].key).encode()) != key_slot(
        (store.prefix + items[1].key).encode()
    )
    with pytest.raises(ConfigurationError, match="must share a Redis Cluster hash slot"):
        await store.acquire(items, T0)
    assert round_trips(sent) == 0  # refused before anything was sent
    admitted, _ = await store.acquire(items[:1], T0)
    assert admitted


async def test_records_and_purge_cover_every_primary_of_a_cluster(make: Make) -> None:
    store = make("redis_cluster")
    client: Any = store._client
    assert await store.records(T0) == []  # the first call: learns the cluster's nodes
    keys = [f"k{n}" for n in range(30)]
    for n, key in enumerate(keys):
        await store.begin(key, begin_req(f"t{n}"), T0 + n)
    nodes = {client.get_node_from_key(store.prefix + key).name for key in keys}
    assert len(nodes) == 3

    listed = await store.records(T0 + 100, limit=100)
    assert [k for k, _ in listed] == keys  # oldest write first
    assert len(await store.records(T0 + 100, limit=7)) == 7
    assert await store.purge(T0 + TTL + 9.5) == 10  # k0..k9 expired by then
    assert [k for k, _ in await store.records(T0 + 100)] == keys[10:]


# -- failures -----------------------------------------------------------------------------


async def every_step_fails_as_store_unavailable(store: RedisStore) -> None:
    item = Item("rl:{a}:b", "token_bucket", Limit(5, 60, algorithm="token_bucket"))
    steps: list[Any] = [
        store.begin("k", begin_req("t1"), T0),
        store.finish("k", "t1", Outcome(Step.RELEASE), T0),
        store.get("k", T0),
        store.release("rl:{a}:s", "x", T0),
        *(store.acquire([item], T0) for _ in range(5)),  # coalesced: five waiters
    ]
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, StoreUnavailable), outcome
        assert outcome.fields == {"retry_after": 1}
        cause = outcome.__cause__
        assert isinstance(cause, RedisError | RedisClusterException | OSError | TimeoutError)


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_nothing_listening_is_store_unavailable(scheme: str) -> None:
    store = RedisStore.from_url(f"{scheme}://127.0.0.1:{free_port()}?timeout=0.2")
    try:
        await every_step_fails_as_store_unavailable(store)
    finally:
        await store.aclose()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts connections, reads everything and never answers."""
    tasks: set[asyncio.Task[Any]] = set()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_a_server_that_never_answers_is_store_unavailable(
    scheme: str, silent_port: int
) -> None:
    store = RedisStore.from_url(f"{scheme}://127.0.0.1:{silent_port}?timeout=0.2")
    try:
        await every_step_fails_as_store_unavailable(store)
    finally:
        await store.aclose()


class StallingProxy:
    """A TCP proxy to Redis that holds the server's replies (or, with ``hold_requests``,
    the client's commands) while ``gate`` is closed."""

    def __init__(self, port: int, *, hold_requests: bool = False) -> None:
        self.port = port
        self.hold_requests = hold_requests
        self.gate = asyncio.Event()
        self.gate.set()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, gated: bool
        ) -> None:
            try:
                while data := await source.read(65536):
                    if gated:
                        await self.gate.wait()
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(
            pump(reader, upstream_writer, self.hold_requests),
            pump(upstream_reader, writer, not self.hold_requests),
        )

    async def aclose(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_a_call_that_timed_out_leaves_no_reply_behind_for_the_next() -> None:
    url = service_url("redis")
    proxy = StallingProxy(int(url.rsplit(":", 1)[1].split("/")[0]))
    # A client of the user's, without socket timeouts: only the store's own bound.
    client = Redis(host="127.0.0.1", port=await proxy.start(), retry=NO_RETRY)
    prefix = f"test:rs:{uuid.uuid4().hex[:12]}:"
    store = RedisStore(client, prefix=prefix, clock="caller", timeout=0.3, coalesce=False)
    try:
        assert await store.begin("a", begin_req("ta"), T0) == Reserved("ta", 1, took_over=False)
        slots = Limit(1, 60, algorithm="concurrency")
        # Load the scripts that give back (while the gate is closed, NOSCRIPT could not
        # come back to ask for them).
        assert not await store.finish("a", "nobody", Outcome(Step.RELEASE), T0)
        await store.release("rl:{a}:s", "nobody", T0)
        proxy.gate.clear()
        with pytest.raises(StoreUnavailable):
            await store.begin("b", begin_req("tb"), T0)
        proxy.gate.set()  # the late reply now reaches its connection, if still open

        record = await store.get("a", T0)
        assert record is not None
        assert record.token == "ta"
        assert await store.begin("c", begin_req("tc"), T0) == Reserved("tc", 1, took_over=False)
        # The timed-out call did run on the server; its reservation is given back.
        await asyncio.gather(*store._background)
        assert await store.begin("b", begin_req("tb2"), T0) == Reserved("tb2", 1, took_over=False)

        # So is a concurrency slot.
        proxy.gate.clear()
        with pytest.raises(StoreUnavailable):
            await store.acquire([Item("rl:{a}:s", "concurrency", slots, token="x")], T0)
        proxy.gate.set()
        await asyncio.gather(*store._background)
        admitted, _ = await store.acquire([Item("rl:{a}:s", "concurrency", slots, token="y")], T0)
        assert admitted
    finally:
        await client.aclose()
        await proxy.aclose()
        direct = Redis.from_url(url)
        await drop(direct, prefix)
        await direct.aclose()


async def test_an_error_inside_a_script_is_store_unavailable_without_its_text(
    make: Make,
) -> None:
    store = make()
    client: Any = store._client
    await client.rpush(store.prefix + "rl:{a}:list", "not a state")
    item = Item("rl:{a}:list", "fixed_window", Limit(5, 60))
    with pytest.raises(StoreUnavailable) as info:
        await store.acquire([item], T0)
    assert isinstance(info.value.__cause__, ResponseError)
    assert "WRONGTYPE" in str(info.value.__cause__)
    assert "WRONGTYPE" not in str(info.value)


# -- coalescing ---------------------------------------------------------------------------


@pytest.mark.parametrize("coalesce", [True, False])
async def test_concurrent_acquires_share_round_trips(
    coalesce: bool, make: Make, sent: Counter[str]
) -> None:
    client = counting_client("redis", sent)
    store = make(client=client, coalesce=coalesce)
    # A fixed window: its key lives until the window ends (a bucket refilled in a blink
    # would expire in real time while the caller's clock stands still).
    item = Item("rl:{a}:w", "fixed_window", Limit(10_000, 3600))
    await store.acquire([item], T0)  # loads the script
    sent.clear()

    async def four() -> list[bool]:
        return [(await store.acquire([item], T0))[0] for _ in range(4)]

    results = await asyncio.gather(*(four() for _ in range(64)))
    assert all(all(r) for r in results)
    if coalesce:
        assert round_trips(sent) < 64  # 256 decisions: several per round trip
    else:
        assert round_trips(sent) == 64 * 4
    # Every decision was counted once.
    assert (await store.acquire([item], T0))[1][0].remaining == 10_000 - 1 - 256 - 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("coalesce", [True, False])
async def test_concurrent_steps_share_round_trips(
    kind: str, coalesce: bool, make: Make, sent: Counter[str]
) -> None:
    client = counting_client(kind, sent)
    store = make(kind, client=client, coalesce=coalesce)
    await store.begin("warm", begin_req("t"), T0)  # loads the script
    sent.clear()

    decisions = await asyncio.gather(
        *(store.begin(f"k{n % 32}", begin_req(f"t{n}"), T0) for n in range(64))
    )

    # Each key reserved exactly once (in arrival order when coalesced).
    for n in range(32):
        pair = {decisions[n], decisions[n + 32]}
        assert InProgress(T0 + LEASE) in pair
        assert pair - {InProgress(T0 + LEASE)} <= {
            Reserved(f"t{n}", 1, took_over=False),
            Reserved(f"t{n + 32}", 1, took_over=False),
        }
    if coalesce:
        assert decisions[:32] == [Reserved(f"t{n}", 1, took_over=False) for n in range(32)]
    if kind == "redis" or not coalesce:
        # Standalone: every step pipelined on one connection (only acquires are batched).
        assert sent == {"EVALSHA": 64}
    else:
        assert round_trips(sent) < 64 / 4


def capacity_limit(algorithm: str) -> Limit:
    """A limit that admits exactly 100 requests at one instant."""
    if algorithm == "leaky_queue":
        return Limit(100, 3600, algorithm=algorithm, max_wait=99 * 36.0)
    if algorithm == "quota":
        return Limit(100, 86400, algorithm=algorithm, period="day")
    return Limit(100, 3600, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
async def test_8x64_concurrent_tasks_on_one_key_admit_exactly_the_limit(
    algorithm: str, make: Make
) -> None:
    first = make()
    # Eight stores with their own clients (as eight processes would have), one prefix.
    clients = [Redis.from_url(service_url("redis"), retry=NO_RETRY) for _ in range(7)]
    stores = [first] + [
        RedisStore(c, prefix=first.prefix, clock="caller", timeout=5.0) for c in clients
    ]
    limit = capacity_limit(algorithm)

    async def one(store: RedisStore, n: int) -> Any:
        item = Item("rl:{a}:hot", algorithm, limit, token=f"t{n}.{id(store)}")
        return await store.acquire([item], T0)

    try:
        results = await asyncio.gather(*(one(store, n) for n in range(64) for store in stores))
    finally:
        for store in stores[1:]:
            await store.aclose()
        for client in clients:
            await client.aclose()
    admitted = [decisions[0] for ok, decisions in results if ok]
    assert len(admitted) == 100
    assert sorted(d.remaining for d in admitted) == list(range(100))


async def test_coalescing_in_a_cluster_sends_one_script_per_slot_and_keeps_each_limit(
    make: Make, sent: Counter[str]
) -> None:
    client = counting_client("redis_cluster", sent)
    store = make("redis_cluster", client=client)
    principals = ["alice", "bob", "carol", "dave"]
    assert len({key_slot(f"{store.prefix}rl:{{{p}}}:x".encode()) for p in principals}) == 4
    limit = Limit(20, 60, algorithm="sliding_log")
    await store.acquire([Item("rl:{warm}:x", "sliding_log", limit)], T0)
    sent.clear()

    async def one(principal: str) -> tuple[str, bool]:
        ok, _ = await store.acquire([Item(f"rl:{{{principal}}}:x", "sliding_log", limit)], T0)
        return principal, ok

    results = await asyncio.gather(*(one(p) for _ in range(50) for p in principals))
    assert Counter(p for p, ok in results if ok) == dict.fromkeys(principals, 20)
    assert round_trips(sent) < len(results) / 4


async def test_cancelled_callers_leave_the_others_their_answers(make: Make) -> None:
    store = make()
    item = Item("rl:{a}:w", "fixed_window", Limit(100, 60))
    await store.acquire([item._replace(key="rl:{a}:warm")], T0)  # a connection, a script
    tasks = [asyncio.create_task(store.acquire([item], T0)) for _ in range(2 * SEND_AT + 4)]
    # One turn of the loop: two full batches are on the wire, the last four wait for theirs.
    await asyncio.sleep(0)
    first, waiting = 0, 2 * SEND_AT
    tasks[first].cancel()
    tasks[waiting].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    # A cancelled caller's request is left out of the batch still waiting, and counted in
    # one already sent; the others are answered.
    assert isinstance(results[first], asyncio.CancelledError)
    assert isinstance(results[waiting], asyncio.CancelledError)
    answered = [r for n, r in enumerate(results) if n not in (first, waiting)]
    assert all(not isinstance(r, BaseException) and r[0] for r in answered)
    assert 100 - 1 - (await store.acquire([item], T0))[1][0].remaining == len(tasks) - 1


async def test_closing_fails_the_calls_not_sent_and_answers_those_on_the_wire(
    make: Make,
) -> None:
    store = make()
    item = Item("rl:{a}:w", "fixed_window", Limit(100, 60))
    await store.acquire([item], T0)  # a connection, a script
    sent = [asyncio.create_task(store.get("k", T0)) for _ in range(3)]  # pipelined at once
    batched = [asyncio.create_task(store.acquire([item], T0)) for _ in range(5)]
    await asyncio.sleep(0)  # one turn: the gets are written, the acquires wait for the batch
    await store.aclose()
    assert await asyncio.gather(*sent) == [None] * 3
    results = await asyncio.gather(*batched, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)


async def test_an_error_in_one_pipelined_step_fails_that_step_alone(make: Make) -> None:
    store = make()
    client: Any = store._client
    await client.rpush(store.prefix + "broken", "not a record")
    await store.begin("warm", begin_req("t"), T0)
    results = await asyncio.gather(
        store.get("warm", T0),  # in flight first: the others queue behind it
        store.begin("a", begin_req("ta"), T0),
        store.begin("broken", begin_req("tb"), T0),
        store.begin("c", begin_req("tc"), T0),
        return_exceptions=True,
    )
    assert results[1] == Reserved("ta", 1, took_over=False)
    assert isinstance(results[2], StoreUnavailable)
    assert isinstance(results[2].__cause__, ResponseError)
    assert results[3] == Reserved("tc", 1, took_over=False)


# -- the pipelined connection (standalone) ------------------------------------------------


@pytest.mark.parametrize("coalesce", [True, False])
async def test_the_calls_of_one_loop_turn_leave_in_one_write(
    coalesce: bool, make: Make, sent: Counter[str], writes: list[bytes]
) -> None:
    store = make(coalesce=coalesce)
    item = Item("rl:{a}:w", "fixed_window", Limit(100, 3600))
    await store.acquire([item], T0)  # a connection, a script
    await store.begin("warm", begin_req("t"), T0)
    writes.clear()
    sent.clear()

    acquires = SEND_AT - 1  # fewer than a batch sent early (next test)
    results = await asyncio.gather(
        *(store.acquire([item], T0) for _ in range(acquires)),
        *(store.begin(f"k{n}", begin_req(f"t{n}"), T0) for n in range(5)),
        store.get("warm", T0),
    )

    assert [ok for ok, _ in results[:acquires]] == [True] * acquires
    assert results[acquires:-1] == [Reserved(f"t{n}", 1, took_over=False) for n in range(5)]
    # Coalesced, the acquires are one script call; else one each. One write either way.
    assert sent == {"EVALSHA": (1 if coalesce else acquires) + 5 + 1}
    assert len(writes) == 1
    assert writes[0].count(b"EVALSHA") == sent["EVALSHA"]


async def test_a_full_batch_of_acquires_leaves_at_once_and_all_decide_in_arrival_order(
    make: Make, sent: Counter[str], writes: list[bytes]
) -> None:
    store = make()
    item = Item("rl:{a}:w", "fixed_window", Limit(100, 3600))
    await store.acquire([item], T0)  # a connection, a script
    writes.clear()
    sent.clear()

    calls = 2 * SEND_AT + 3
    results = await asyncio.gather(*(store.acquire([item], T0) for _ in range(calls)))

    # Two full batches, each written as soon as it filled, and the rest at the turn's end.
    assert sent == {"EVALSHA": 3}
    assert [w.count(b"EVALSHA") for w in writes] == [1, 1, 1]
    # One decision each, in the order the calls were made, as one call per request would.
    assert [decisions[0].remaining for _, decisions in results] == list(range(98, 98 - calls, -1))


async def test_a_timed_out_connection_fails_all_its_calls_and_the_next_call_works() -> None:
    url = service_url("redis")
    proxy = StallingProxy(int(url.rsplit(":", 1)[1].split("/")[0]))
    client = Redis(host="127.0.0.1", port=await proxy.start(), retry=NO_RETRY)
    prefix = f"test:rs:{uuid.uuid4().hex[:12]}:"
    store = RedisStore(client, prefix=prefix, clock="caller", timeout=0.3, coalesce=False)
    item = Item("rl:{a}:w", "fixed_window", Limit(100, 3600))
    try:
        await store.acquire([item], T0)
        assert await store.get("a", T0) is None
        first = store._conn
        proxy.gate.clear()
        outcomes = await asyncio.gather(
            *(store.acquire([item], T0) for _ in range(3)),
            *(store.get(f"k{n}", T0) for n in range(3)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            assert isinstance(outcome, StoreUnavailable), outcome
            assert isinstance(outcome.__cause__, TimeoutError)
        assert first is not None
        assert first.closed
        proxy.gate.set()

        assert await store.get("a", T0) is None  # on a new connection
        assert store._conn is not first
        # The three timed-out acquires did run: a count charged stays charged.
        assert (await store.acquire([item], T0))[1][0].remaining == 100 - 5
    finally:
        await store.aclose()
        await client.aclose()
        await proxy.aclose()
        direct = Redis.from_url(url)
        await drop(direct, prefix)
        await direct.aclose()


class TricklingProxy(StallingProxy):
    """A TCP proxy to Redis that passes the server's replies on ``chunk`` bytes at a
    time, ``pause`` seconds apart: a server busy but alive, answering slowly."""

    def __init__(self, port: int, *, chunk: int, pause: float) -> None:
        super().__init__(port)
        self.chunk, self.pause = chunk, pause

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def requests() -> None:
            while data := await reader.read(65536):
                upstream_writer.write(data)

        async def replies() -> None:
            while data := await upstream_reader.read(65536):
                for i in range(0, len(data), self.chunk):
                    writer.write(data[i : i + self.chunk])
                    await asyncio.sleep(self.pause)

        try:
            with contextlib.suppress(OSError):
                await asyncio.gather(requests(), replies())
        finally:
            writer.close()
            upstream_writer.close()


async def test_a_busy_server_that_keeps_answering_is_no_outage() -> None:
    """Calls wait past their timeout while replies keep coming: Redis is slow, not down.
    Failing every call on the wire for it would turn one slow moment into 503s."""
    url = service_url("redis")
    proxy = TricklingProxy(int(url.rsplit(":", 1)[1].split("/")[0]), chunk=16, pause=0.02)
    client = Redis(host="127.0.0.1", port=await proxy.start(), retry=NO_RETRY)
    prefix = f"test:rs:{uuid.uuid4().hex[:12]}:"
    store = RedisStore(client, prefix=prefix, clock="caller", timeout=0.3, coalesce=False)
    item = Item("rl:{a}:w", "fixed_window", Limit(100, 3600))
    try:
        await store.acquire([item], T0)  # connected, the script loaded
        # Twenty replies of 40 to 60 bytes, 16 bytes every 20 ms: the last comes after
        # about a second (several timeouts), yet Redis is never silent for 0.3 s, so a
        # loaded machine has room before a pause could look like silence.
        results = await asyncio.gather(*(store.acquire([item], T0) for _ in range(20)))
        assert sorted(r[1][0].remaining for r in results) == list(range(79, 99))
    finally:
        await store.aclose()
        await client.aclose()
        await proxy.aclose()
        direct = Redis.from_url(url)
        await drop(direct, prefix)
        await direct.aclose()


async def test_a_killed_connection_fails_its_pending_calls_and_the_next_call_reconnects() -> None:
    url = service_url("redis")
    proxy = StallingProxy(int(url.rsplit(":", 1)[1].split("/")[0]), hold_requests=True)
    name = f"surefoot-test-{uuid.uuid4().hex[:8]}"
    client = Redis(host="127.0.0.1", port=await proxy.start(), client_name=name, retry=NO_RETRY)
    admin = Redis.from_url(url)
    prefix = f"test:rs:{uuid.uuid4().hex[:12]}:"
    # A long timeout: the calls must fail because the connection died, not on the watchdog.
    store = RedisStore(client, prefix=prefix, clock="caller", timeout=30.0)
    try:
        assert await store.begin("a", begin_req("ta"), T0) == Reserved("ta", 1, took_over=False)
        ours = [c for c in await admin.client_list() if c["name"] == name]
        assert len(ours) == 1  # CLIENT SETNAME was honoured

        proxy.gate.clear()  # commands held: the calls below stay pending
        started = time.monotonic()
        calls = [asyncio.create_task(store.get("a", T0)) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert await admin.client_kill_filter(_id=ours[0]["id"]) == 1
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert time.monotonic() - started < 10
        for outcome in outcomes:
            assert isinstance(outcome, StoreUnavailable), outcome
            assert isinstance(outcome.__cause__, RedisError | OSError), outcome.__cause__
        proxy.gate.set()

        record = await store.get("a", T0)
        assert record is not None
        assert record.token == "ta"
    finally:
        await store.aclose()
        await client.aclose()
        await proxy.aclose()
        await drop(admin, prefix)
        await admin.aclose()


async def test_noscript_in_the_middle_of_a_pipeline_sends_those_scripts_whole(
    make: Make, sent: Counter[str]
) -> None:
    store = make()
    client: Any = store._client
    item = Item("rl:{a}:w", "fixed_window", Limit(100, 3600))
    await store.begin("a", begin_req("ta"), T0)
    await store.acquire([item], T0)
    await client.script_flush()  # the server forgets every script
    await client.script_load(store_script_source("get"))  # ...but learns this one again
    sent.clear()

    results = await asyncio.gather(
        store.get("a", T0),
        store.begin("b", begin_req("tb"), T0),
        store.get("b", T0),
        store.acquire([item], T0),
        store.begin("a", begin_req("tx"), T0),
    )

    assert results[0] is not None
    assert results[0].token == "ta"
    assert results[1] == Reserved("tb", 1, took_over=False)
    # Sent again after the pipeline: the get of "b" ran before the begin that makes it.
    assert results[2] is None
    assert results[3][1][0].remaining == 100 - 2
    assert results[4] == InProgress(T0 + LEASE)
    assert sent == {"EVALSHA": 5, "EVAL": 3}  # the two gets were found by SHA
    sent.clear()
    assert await store.begin("c", begin_req("tc"), T0) == Reserved("tc", 1, took_over=False)
    assert sent == {"EVALSHA": 1}


def store_script_source(name: str) -> str:
    from surefoot.storage import redis as module

    script: Any = getattr(module, f"_{name.upper()}")
    source: str = script.source
    return source


@contextlib.contextmanager
def private_redis(*options: str) -> Iterator[int]:
    """A redis-server of this test's own on a free port, stopped at the end."""
    with RedisServer(*options) as server:
        yield server.port


async def test_the_password_and_the_database_of_the_url_are_honoured() -> None:
    with private_redis("--requirepass", "s3cret") as port:
        store = RedisStore.from_url(
            f"redis://:s3cret@127.0.0.1:{port}/3?prefix=p:&clock=caller&timeout=2"
        )
        wrong = RedisStore.from_url(f"redis://:nope@127.0.0.1:{port}/3?timeout=2")
        direct = Redis(host="127.0.0.1", port=port, password="s3cret", db=3)
        try:
            assert await store.begin("k", begin_req("t"), T0) == Reserved("t", 1, took_over=False)
            assert await direct.exists("p:k") == 1  # in database 3
            with pytest.raises(StoreUnavailable) as info:
                await wrong.get("k", T0)
            assert isinstance(info.value.__cause__, ResponseError)
            assert "s3cret" not in str(info.value.__cause__)
        finally:
            await store.aclose()
            await wrong.aclose()
            await direct.aclose()


async def test_the_database_of_the_url_is_honoured_on_the_shared_server() -> None:
    url = service_url("redis").rsplit("/", 1)[0] + "/3"
    prefix = f"test:rs:{uuid.uuid4().hex[:12]}:"
    store = RedisStore.from_url(f"{url}?prefix={prefix}&clock=caller&timeout=5")
    other = Redis.from_url(url.rsplit("/", 1)[0] + "/0")
    direct = Redis.from_url(url)
    try:
        assert await store.begin("k", begin_req("t"), T0) == Reserved("t", 1, took_over=False)
        assert await direct.exists(prefix + "k") == 1
        assert await other.exists(prefix + "k") == 0
    finally:
        await store.aclose()
        await drop(direct, prefix)
        await direct.aclose()
        await other.aclose()


async def test_a_batch_reply_the_store_cannot_read_fails_its_callers_instead_of_hanging() -> None:
    from surefoot.storage.redis import _Batch

    def unreadable(requests: object, reply: object) -> list[object]:
        raise ValueError("garbled")

    loop = asyncio.get_running_loop()
    futures = [loop.create_future(), loop.create_future()]
    batch = _Batch(unreadable, [], futures)
    batch.set_result([b"not", b"decisions"])
    assert batch.done()
    for future in futures:
        with pytest.raises(StoreUnavailable) as raised:
            await future
        assert isinstance(raised.value.__cause__, ValueError)


async def test_a_call_requeued_when_the_credential_provider_fails_is_answered() -> None:
    class Flaky(CredentialProvider):
        asked = 0

        def get_credentials(self) -> tuple[str]:
            Flaky.asked += 1
            if Flaky.asked == 1:
                return ("secret",)
            raise RuntimeError("the token service is down")

    with unanswered_port() as port:
        client = Redis(
            host="127.0.0.1",
            port=port,
            credential_provider=Flaky(),
            socket_connect_timeout=0.15,
        )
        store = RedisStore(client, prefix="test:rs:flaky:", timeout=1)
        first = asyncio.ensure_future(store.get("a", T0))
        for _ in range(100):  # until the connection attempt has begun (turns, not time)
            if store._conn is not None and store._conn._early:
                break
            await asyncio.sleep(0)
        assert store._conn is not None
        assert store._conn._early
        late = asyncio.ensure_future(store.get("b", T0))  # requeued when it fails
        _, pending = await asyncio.wait({first, late}, timeout=10)
        for task in pending:
            task.cancel()
        await store.aclose()
    assert pending == set()
    for task in (first, late):
        assert isinstance(task.exception(), StoreUnavailable)


@pytest.mark.parametrize("value", ["0", "-0", "0.1", "-2.5", "1e-300", "123456789.125", "inf"])
async def test_fmt_writes_every_float_as_the_format_does(value: str) -> None:
    """``common.lua``'s ``fmt`` writes 0 without ``string.format`` (a fast path): every
    float still comes out as '%.17g' writes it, the sign of -0 included."""
    client = Redis.from_url(service_url("redis"))
    script = (
        store_script_source("acquire").split("local function clock")[0]
        + "local x = tonumber(ARGV[1])\nreturn {fmt(x), string.format('%.17g', x)}"
    )
    try:
        written, formatted = await client.eval(script, 0, value)
    finally:
        await client.aclose()
    assert written == formatted
