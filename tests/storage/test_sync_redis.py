"""``SyncRedisStore`` beyond the shared contract suites (which run over it as the kinds
``sync_redis`` and ``sync_redis_cluster``).

Construction and URLs (the grammar and the errors of ``RedisStore.from_url``); the same
decisions as ``RedisStore`` on the same steps, and one key space shared with it; the
server's clock; scripts coming back after a real ``SCRIPT FLUSH``; Redis Cluster slots
and scans; failures (nothing listening, a server that never answers, a reply lost after
the script ran, a script error) as ``StoreUnavailable``; threads and processes racing on
one key. Every test writes under a prefix of its own and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import socket
import struct
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from _sync_redis_workers import CALLS, GUARD, ITEM, LIMIT, RACED_KEY, acquire_racer, begin_racer
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.credentials import CredentialProvider
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from _services import service_url, store_url_sync
from _support import T0, forked_child, free_port
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency import (
    Begin,
    InProgress,
    Outcome,
    Reserved,
    State,
    Step,
    StoredResponse,
    scoped_key,
)
from surefoot.ratelimit import Item, Limit
from surefoot.storage.redis import RedisStore, SyncRedisStore

LEASE, TTL = 30.0, 3600.0
OK = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}')
KINDS = ["redis", "redis_cluster"]
NO_RETRY = Retry(NoBackoff(), 0)


def begin_req(token: str, fingerprint: str = "fp", **options: Any) -> Begin:
    return Begin(fingerprint, token, LEASE, TTL, "unknown", **options)


def direct_client(kind: str) -> Any:
    """A plain redis-py client of the test's own on the server (or cluster) of ``kind``."""
    url = service_url(kind)
    if kind == "redis_cluster":
        return redis.RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"))
    return redis.Redis.from_url(url)


def drop(kind: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (on every primary of a cluster)."""
    client = direct_client(kind)
    try:
        nodes = client.get_primaries() if kind == "redis_cluster" else [None]
        for node in nodes:
            extra = {} if node is None else {"target_nodes": node}
            for key in list(client.scan_iter(match=f"{prefix}*", count=1000, **extra)):
                client.delete(key)
    finally:
        client.close()


Make = Callable[..., SyncRedisStore]


@pytest.fixture
def make() -> Iterator[Make]:
    """Stores made by URL on the real servers, each under a fresh prefix (on the caller's
    clock unless asked), closed and dropped afterwards."""
    made: list[tuple[str, SyncRedisStore]] = []

    def factory(kind: str = "redis", *, prefix: str = "", query: str = "") -> SyncRedisStore:
        prefix = prefix or f"test:srs:{uuid.uuid4().hex[:12]}:"
        query = query or "clock=caller&timeout=5"
        store = SyncRedisStore.from_url(f"{service_url(kind)}?prefix={prefix}&{query}")
        made.append((kind, store))
        return store

    yield factory
    for kind, store in made:
        store.close()
        drop(kind, store.prefix)


# -- construction -------------------------------------------------------------------------


def test_from_url_reads_its_own_options_and_passes_redis_ones_on() -> None:
    store = SyncRedisStore.from_url(
        "redis://127.0.0.1:6379/2?prefix=api:&clock=caller&timeout=0.25&coalesce=false"
        "&client_name=web"
    )
    try:
        assert (store.prefix, store.clock, store.timeout) == ("api:", "caller", 0.25)
        client: Any = store._client
        assert type(client) is redis.Redis
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["socket_connect_timeout"] == 0.25
        assert (kwargs["db"], kwargs["client_name"]) == (2, "web")
        assert client.get_retry().get_retries() == 0  # a written command is never sent again
        assert not client.get_encoder().decode_responses
        assert repr(store) == (
            "SyncRedisStore(<Redis>, prefix='api:', clock='caller', timeout=0.25)"
        )
    finally:
        store.close()
    default = SyncRedisStore.from_url("redis://127.0.0.1:6379")
    assert (default.prefix, default.clock, default.timeout) == ("surefoot:", "server", 0.05)
    default.close()


def test_the_stores_connections_use_the_clients_settings_and_are_reused() -> None:
    prefix = f"test:srs:{uuid.uuid4().hex[:12]}:"
    name = f"sf-{uuid.uuid4().hex[:8]}"
    base = service_url("redis").rsplit("/", 1)[0]
    store = SyncRedisStore.from_url(f"{base}/3?prefix={prefix}&clock=caller&client_name={name}")
    checker = redis.Redis.from_url(f"{base}/3")

    def named(count: int) -> None:
        """Wait (a bounded poll: Redis sees a close a moment later) for ``count``
        connections with the client's name."""
        deadline = time.monotonic() + GUARD
        while sum(c["name"] == name for c in checker.client_list()) != count:
            assert time.monotonic() < deadline, f"never {count} connections named {name}"
            time.sleep(0.02)

    try:
        assert store.begin("k", begin_req("t"), T0) == Reserved("t", 1, took_over=False)
        assert checker.exists(prefix + "k")  # database 3, as the URL says
        # A thread per request (wsgiref, runserver): each takes the idle connection.
        for _ in range(20):
            thread = threading.Thread(target=store.get, args=("k", T0))
            thread.start()
            thread.join(GUARD)
        named(1)
        # Calls at once each need a connection; the idle ones stay for the next calls.
        gate = threading.Barrier(3)

        def together() -> None:
            gate.wait(GUARD)
            for _ in range(20):
                assert store.get("k", T0) is not None

        threads = [threading.Thread(target=together) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD)
        opened = sum(c["name"] == name for c in checker.client_list())
        assert 1 <= opened <= 3
        store.close()
        named(0)
        assert store.get("k", T0) is not None  # a call after close opens a new one
    finally:
        store.close()
        checker.delete(prefix + "k")
        checker.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_before_a_call(make: Make) -> None:
    store = make()
    assert store.get("k", T0) is None
    (wire,) = store._idle
    checker = direct_client("redis")
    try:
        # What a restart, the server's idle timeout or a proxy does to an idle connection.
        host, port = wire._sock.getsockname()
        assert checker.client_kill(f"{host}:{port}")
    finally:
        checker.close()
    deadline = time.monotonic() + GUARD
    while wire.quiet():  # the close reaches this side a moment later
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert store.get("k", T0) is None  # on a new connection: no call fails for it
    assert store._idle != [wire]


def test_a_credential_provider_is_asked_at_each_new_connection() -> None:
    asked: list[int] = []

    class Rotating(CredentialProvider):
        def get_credentials(self) -> tuple[str, str]:
            asked.append(1)
            return ("default", f"token-{len(asked)}")  # any password: the user is nopass

    url = service_url("redis")
    client = redis.Redis.from_url(url, credential_provider=Rotating())
    store = SyncRedisStore(client, prefix=f"test:srs:{uuid.uuid4().hex[:12]}:", timeout=5)
    try:
        assert asked == []  # nothing is asked before a connection is made
        for _ in range(3):
            assert store.get("k", T0) is None
            store.close()  # the next call opens a new connection
        assert len(asked) == 3
    finally:
        store.close()
        client.close()


def test_connecting_is_bounded_by_the_stores_timeout_not_the_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float | None] = []

    def unreachable(address: Any, timeout: float | None = None, *args: Any) -> socket.socket:
        waits.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    # redis-py's own connect timeout is 5 seconds unless told otherwise.
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=1.5)
    store = SyncRedisStore(client, timeout=0.2)
    with pytest.raises(StoreUnavailable) as info:
        store.acquire(SLOTS, T0)
    store.close()
    assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError)
    assert waits == [0.2]  # the store's own, and no give-back: nothing was sent


def test_a_failing_credential_provider_is_store_unavailable_and_sends_nothing() -> None:
    class Broken(CredentialProvider):
        def get_credentials(self) -> tuple[str, str]:
            raise RuntimeError("the token service is down")

    server = MuteScripts()
    client = redis.Redis(host="127.0.0.1", port=server.port, credential_provider=Broken())
    store = SyncRedisStore(client, timeout=0.2)
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.acquire(SLOTS, T0)
    finally:
        store.close()
        connections = server.close()
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert connections == []  # not even a connection: the credentials come first


def test_a_wire_closed_while_idle_is_never_taken_again(make: Make) -> None:
    store = make()
    assert store.get("k", T0) is None
    (wire,) = store._idle
    store.close()  # another thread's close() lands after a call put the wire back
    store._idle.append(wire)
    host, port = service_url("redis").removeprefix("redis://").split("/")[0].split(":")
    # A quiet, open socket, most often given the closed wire's descriptor number.
    with socket.create_connection((host, int(port))):
        assert not wire.quiet()
        assert store.get("k", T0) is None
    assert wire not in store._idle


def test_a_connection_reset_is_a_redis_connection_error() -> None:
    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        conn.recv(65536)  # the call arrived; the server goes away without an answer
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        store = SyncRedisStore.from_url(f"redis://127.0.0.1:{port}/0?timeout=5")
        try:
            with pytest.raises(StoreUnavailable) as info:
                store.get("k", T0)
        finally:
            store.close()
        thread.join(GUARD)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)


def test_a_client_whose_connections_the_store_cannot_open_carries_the_calls() -> None:
    tls = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=redis.SSLConnection))
    assert SyncRedisStore(tls)._direct is None
    plain = SyncRedisStore(redis.Redis(unix_socket_path="/run/redis.sock"))
    assert plain._direct is not None
    assert plain._direct.path == "/run/redis.sock"


def test_a_cluster_store_learns_the_topology_at_its_first_call(make: Make) -> None:
    store = make("redis_cluster", query="clock=caller&timeout=2")
    assert store._client is None  # nothing sent yet
    assert repr(store).startswith("SyncRedisStore(<RedisCluster>")
    assert store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, took_over=False)
    client: Any = store._client
    assert type(client) is redis.RedisCluster
    assert client.retry.get_retries() == 0
    node = client.get_primaries()[0].redis_connection.connection_pool.connection_kwargs
    assert (node["socket_timeout"], node["socket_connect_timeout"]) == (2.0, 2.0)


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
        ("prefix=api:{x}:", "SyncRedisStore.prefix: expected a string without '{' or '}'"),
        ("ssl_certfile=/c.pem", "unknown options ['ssl_certfile']"),  # needs rediss://
    ],
)
@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_bad_url_options_name_the_option_and_what_is_expected(
    scheme: str, query: str, message: str
) -> None:
    pattern = message.replace("[", r"\[").replace("{", r"\{")
    with pytest.raises(ConfigurationError, match=pattern) as info:
        SyncRedisStore.from_url(f"{scheme}://:hunter2@127.0.0.1:6379/0?{query}")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?colour=red&prefix=p:",
        "redis://127.0.0.1:6379/0?timeout=soon",
        "redis://127.0.0.1:6379/0?coalesce=maybe",
        "redis://127.0.0.1:6379/0?max_connections=lots",
        "redis+cluster://127.0.0.1:7000?client_nam=x",
        "rediss://127.0.0.1:6380/0?ssl_min_version=tls",
        "memcached://127.0.0.1:11211",
    ],
)
def test_a_url_is_refused_with_the_message_redis_store_gives(url: str) -> None:
    with pytest.raises(ConfigurationError) as sync_refusal:
        SyncRedisStore.from_url(url)
    with pytest.raises(ConfigurationError) as async_refusal:
        RedisStore.from_url(url)
    assert str(sync_refusal.value) == "Sync" + str(async_refusal.value)


def test_a_message_never_shows_the_password() -> None:
    for url in (
        "redis://:hunter2@127.0.0.1:6379/0?colour=red",
        "redis+cluster://admin:hunter2@127.0.0.1:7000/3",
        "redis://:hunter2@127.0.0.1:6379/0?db=first",
        "redis://u:hun/ter2@127.0.0.1:6379/0",
        "redis://u:hun?ter2@127.0.0.1:6379/0",
    ):
        with pytest.raises(ConfigurationError) as info:
            SyncRedisStore.from_url(url)
        for part in ("hunter2", "hun", "ter2"):
            assert part not in str(info.value), url


def test_a_cluster_has_one_database() -> None:
    with pytest.raises(ConfigurationError, match="db: a Redis Cluster has only the database 0"):
        SyncRedisStore.from_url("redis+cluster://127.0.0.1:7000/3")


def test_tls_options_go_with_rediss_and_other_schemes_are_refused() -> None:
    store = SyncRedisStore.from_url("rediss://cache.internal:6380/0?ssl_cert_reqs=none")
    try:
        pool: Any = store._client.connection_pool  # type: ignore[union-attr]
        assert pool.connection_class.__name__ == "SSLConnection"
        assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    finally:
        store.close()
    with pytest.raises(ConfigurationError, match="expected the scheme redis://, rediss://"):
        SyncRedisStore.from_url("http://127.0.0.1:6379")


def test_the_constructor_checks_its_arguments() -> None:
    client = redis.Redis()
    try:
        with pytest.raises(
            ConfigurationError, match=r"redis\.asyncio's clients go with RedisStore"
        ):
            SyncRedisStore(AsyncRedis())  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="decode_responses=False"):
            SyncRedisStore(redis.Redis(decode_responses=True))
        with pytest.raises(ConfigurationError, match=r"prefix: expected a string without '\{'"):
            SyncRedisStore(client, prefix="a{b}:")
        with pytest.raises(ConfigurationError, match="clock: expected 'server' or 'caller'"):
            SyncRedisStore(client, clock="sundial")  # type: ignore[arg-type]
        for timeout in (0, -1.0, float("inf"), True, "1"):
            with pytest.raises(ConfigurationError, match="timeout: expected a positive number"):
                SyncRedisStore(client, timeout=timeout)  # type: ignore[arg-type]
    finally:
        client.close()


def test_close_closes_only_a_client_the_store_made(make: Make) -> None:
    client = redis.Redis.from_url(service_url("redis"), retry=NO_RETRY)
    prefix = f"test:srs:{uuid.uuid4().hex[:12]}:"
    store = SyncRedisStore(client, prefix=prefix, clock="caller", timeout=5)
    try:
        assert store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, took_over=False)
        store.close()
        assert client.ping()  # still the user's, still open
    finally:
        client.close()
        drop("redis", prefix)


# -- the same store as RedisStore ---------------------------------------------------------

#: Steps run on both stores, with what each answers compared: (method, args, kwargs).
OWNER_KEY = scoped_key("cred:alice", "order-1")
STEPS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("begin", ("k1", begin_req("t1"), T0), {}),
    ("begin", ("k1", begin_req("t2"), T0 + 1), {}),
    ("get", ("k1", T0 + 1), {}),
    ("finish", ("k1", "t1", Outcome(Step.COMPLETE, OK), T0 + 2), {}),
    ("finish", ("k1", "t1", Outcome(Step.COMPLETE), T0 + 2), {}),
    ("begin", ("k1", begin_req("t3"), T0 + 3), {}),
    ("begin", ("k1", begin_req("t4", "other"), T0 + 3), {}),
    ("begin", ("k2", begin_req("t5"), T0 + 4), {}),
    ("begin", ("k2", begin_req("t6"), T0 + 4 + LEASE + 1), {}),
    ("resolve", ("k2", OK, T0 + 40), {}),
    ("get", ("k2", T0 + 40), {}),
    ("begin", (OWNER_KEY, begin_req("t7", max_records=1), T0 + 5), {}),
    ("begin", (scoped_key("cred:alice", "order-2"), begin_req("t8", max_records=1), T0 + 6), {}),
    ("get", (OWNER_KEY, T0 + 6), {}),
    ("records", (T0 + 50,), {}),
    # (A limit under the number of records answers those of the cluster nodes scanned
    # first, which differ with the prefix: both stores' answers are compared in full.)
    ("records", (T0 + 50,), {"state": State.COMPLETED, "limit": 2}),
    ("forget", ("k1", T0 + 60), {}),
    ("forget", ("k1", T0 + 60), {}),
    ("purge", (T0 + TTL + 5.5,), {}),
    ("records", (T0 + TTL + 5.5,), {}),
    *[
        ("acquire", ([Item("rl:{a}:" + algorithm, algorithm, Limit(2, 60))], T0 + n / 4), {})
        for algorithm in ("fixed_window", "sliding_window", "sliding_log", "token_bucket", "gcra")
        for n in range(4)
    ],
    ("acquire", ([Item("rl:{a}:q", "quota", Limit(1, 86400, period="day"), cost=1)], T0), {}),
    ("acquire", ([Item("rl:{a}:q", "quota", Limit(1, 86400, period="day"))], T0 + 1), {}),
    ("acquire", ([Item("rl:{a}:c", "concurrency", Limit(1, 60), token="x")], T0), {}),
    ("acquire", ([Item("rl:{a}:c", "concurrency", Limit(1, 60), token="y")], T0), {}),
    ("release", ("rl:{a}:c", "x", T0 + 1), {}),
    ("acquire", ([Item("rl:{a}:c", "concurrency", Limit(1, 60), token="y")], T0 + 1), {}),
    ("acquire", ([], T0), {}),
    ("board_put", ("b", "s1", b"one", T0 + 10, T0), {}),
    ("board_claim", ("b", "s1", b"two", T0 + 10, T0), {}),
    ("board_claim", ("b", "s2", b"two", T0 + 10, T0), {}),
    ("board_read", ("b", T0 + 1), {}),
    ("board_delete", ("b", "s1", T0 + 1), {}),
    ("board_read", ("b", T0 + 11), {}),
    (
        "order_claim",
        ("o1",),
        {"version": 1, "token": "a", "now": T0, "lease": 30, "retention": 600},
    ),
    (
        "order_claim",
        ("o1",),
        {"version": 2, "token": "b", "now": T0, "lease": 30, "retention": 600},
    ),
    (
        "order_settle",
        ("o1",),
        {"token": "a", "version": 1, "ok": True, "now": T0, "retention": 600},
    ),
    ("order_get", ("o1", T0 + 1), {}),
    ("cache_put", ("c", b"cached", T0 + 60, T0), {}),
    ("cache_get", ("c", T0), {}),
    ("cache_get", ("nothing", T0), {}),
]


def outcome_of(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # an error is an answer too: it must be the same one
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize("kind", KINDS)
def test_every_step_answers_as_redis_store_does(kind: str, make: Make) -> None:
    store = make(kind)
    sync_answers = [
        outcome_of(lambda step=step: getattr(store, step[0])(*step[1], **step[2]))  # type: ignore[misc]
        for step in STEPS
    ]

    async def run() -> list[Any]:
        prefix = f"test:srs:{uuid.uuid4().hex[:12]}:"
        reference = RedisStore.from_url(
            f"{service_url(kind)}?prefix={prefix}&clock=caller&timeout=5"
        )
        answers = []
        try:
            for name, args, kwargs in STEPS:
                try:
                    answers.append(await getattr(reference, name)(*args, **kwargs))
                except Exception as exc:
                    answers.append((type(exc).__name__, str(exc)))
        finally:
            await reference.aclose()
            drop(kind, prefix)
        return answers

    async_answers = asyncio.run(run())
    for step, mine, theirs in zip(STEPS, sync_answers, async_answers, strict=True):
        assert mine == theirs, step
    # Not all alike: the steps reach refusals, replays and conflicts.
    assert len({type(answer).__name__ for answer in sync_answers}) >= 8


@pytest.mark.parametrize("kind", KINDS)
def test_a_sync_and_an_async_store_on_one_prefix_share_records_and_limits(
    kind: str, make: Make
) -> None:
    store = make(kind)
    item = Item("rl:{bob}:api", "sliding_window", Limit(2, 60))
    assert store.begin("k", begin_req("sync"), T0) == Reserved("sync", 1, took_over=False)
    assert store.acquire([item], T0)[0]

    async def run() -> tuple[Any, ...]:
        url = f"{service_url(kind)}?prefix={store.prefix}&clock=caller&timeout=5"
        other = RedisStore.from_url(url)
        try:
            return (
                await other.begin("k", begin_req("async"), T0 + 1),
                (await other.acquire([item], T0 + 1))[0],
                (await other.acquire([item], T0 + 2))[0],
            )
        finally:
            await other.aclose()

    assert asyncio.run(run()) == (InProgress(T0 + LEASE), True, False)
    assert store.finish("k", "sync", Outcome(Step.RELEASE), T0 + 3)


# -- the server's clock ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_on_the_server_clock_a_skewed_caller_cannot_take_over_a_live_lease(
    kind: str, make: Make
) -> None:
    store = make(kind, query="clock=server&timeout=5")
    assert store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, took_over=False)
    # A caller whose clock says the lease ran out long ago: the server's says it did not.
    late = T0 + LEASE + 1000
    decision = store.begin("k", begin_req("t2"), late)
    assert isinstance(decision, InProgress)
    # Handed back on that caller's clock: the lease's end, seen from its ``now``.
    assert late < decision.lease_expires_at <= late + LEASE
    record = store.get("k", T0)
    assert record is not None
    assert T0 + TTL - 60 < record.expires_at <= T0 + TTL
    assert store.purge(T0 + 10 * TTL) == 0  # Redis expires records by itself


def test_on_the_server_clock_a_callers_clock_cannot_refill_a_limit(make: Make) -> None:
    store = make(query="clock=server&timeout=5")
    item = Item("rl:{a}:b", "fixed_window", Limit(2, 60))
    assert [store.acquire([item], T0 + n * 3600)[0] for n in range(3)] == [True, True, False]


# -- scripts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_scripts_come_back_after_script_flush(kind: str, make: Make) -> None:
    from surefoot.storage.redis import _ACQUIRE, _BEGIN

    store = make(kind)
    item = Item("rl:{a}:b", "token_bucket", Limit(5, 60, algorithm="token_bucket"))
    assert store.begin("k", begin_req("t1"), T0) == Reserved("t1", 1, took_over=False)
    assert store.acquire([item], T0)[0]
    client = direct_client(kind)
    try:
        nodes = client.get_primaries() if kind == "redis_cluster" else [None]

        def loaded(sha: str) -> list[bool]:
            return [_exists(client, sha, node) for node in nodes]

        for node in nodes:
            extra = {} if node is None else {"target_nodes": node}
            client.execute_command("SCRIPT", "FLUSH", **extra)
        assert not any(loaded(_BEGIN.sha))
        assert store.begin("k", begin_req("t2"), T0 + 1) == InProgress(T0 + LEASE)
        assert any(loaded(_BEGIN.sha))  # EVAL loaded it again
        decision = store.acquire([item], T0 + 1)
        assert decision[0]
        assert decision[1][0].remaining == 3
        assert any(loaded(_ACQUIRE.sha))
    finally:
        client.close()


def _exists(client: Any, sha: str, node: Any) -> bool:
    """Whether ``node`` (None: the standalone server) has the script ``sha``."""
    if node is None:
        return bool(client.script_exists(sha)[0])
    reply = client.execute_command("SCRIPT EXISTS", sha, target_nodes=node)
    return bool(reply[0] if isinstance(reply, list) else next(iter(reply.values()))[0])


# -- Redis Cluster --------------------------------------------------------------------------


def test_a_request_whose_keys_span_slots_is_refused_before_anything_is_sent() -> None:
    # Nothing listens here: a round trip would be StoreUnavailable, not this.
    store = SyncRedisStore.from_url(f"redis+cluster://127.0.0.1:{free_port()}?timeout=0.2")
    limit = Limit(5, 60)
    items = [Item("rl:{alice}:a", "fixed_window", limit), Item("rl:{bob}:a", "fixed_window", limit)]
    assert key_slot(b"surefoot:rl:{alice}:a") != key_slot(b"surefoot:rl:{bob}:a")
    with pytest.raises(ConfigurationError, match="must share a Redis Cluster hash slot"):
        store.acquire(items, T0)
    assert store._client is None
    store.close()


def test_records_and_purge_cover_every_primary_of_a_cluster(make: Make) -> None:
    store = make("redis_cluster")
    assert store.records(T0) == []
    keys = [f"k{n}" for n in range(30)]
    for n, key in enumerate(keys):
        store.begin(key, begin_req(f"t{n}"), T0 + n)
    client: Any = store._client
    assert len({client.get_node_from_key(store.prefix + key).name for key in keys}) == 3
    assert [k for k, _ in store.records(T0 + 100, limit=100)] == keys  # oldest write first
    assert len(store.records(T0 + 100, limit=7)) == 7
    assert store.purge(T0 + TTL + 9.5) == 10  # k0..k9 expired by then
    assert [k for k, _ in store.records(T0 + 100)] == keys[10:]


# -- failures -----------------------------------------------------------------------------


def every_step_fails_as_store_unavailable(store: SyncRedisStore) -> list[StoreUnavailable]:
    item = Item("rl:{a}:b", "token_bucket", Limit(5, 60, algorithm="token_bucket"))
    slot = Item("rl:{a}:s", "concurrency", Limit(1, 60), token="x")
    steps: list[Callable[[], Any]] = [
        lambda: store.begin("k", begin_req("t1"), T0),
        lambda: store.finish("k", "t1", Outcome(Step.RELEASE), T0),
        lambda: store.get("k", T0),
        lambda: store.records(T0),
        lambda: store.acquire([item], T0),
        lambda: store.acquire([slot], T0),
        lambda: store.release("rl:{a}:s", "x", T0),
        lambda: store.cache_get("c", T0),
        lambda: store.board_read("b", T0),
        lambda: store.order_claim("o", version=1, token="a", now=T0, lease=30, retention=60),
    ]
    failures = []
    for step in steps:
        with pytest.raises(StoreUnavailable) as info:
            step()
        failure = info.value
        assert failure.fields == {"retry_after": 1}
        assert isinstance(failure.__cause__, RedisError | RedisClusterException | OSError)
        failures.append(failure)
    return failures


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_nothing_listening_is_store_unavailable(scheme: str) -> None:
    store = SyncRedisStore.from_url(f"{scheme}://127.0.0.1:{free_port()}?timeout=0.2")
    try:
        every_step_fails_as_store_unavailable(store)
    finally:
        store.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts connections (the kernel does, from its backlog) and never
    answers: what is sent to it stays in its buffers, unread."""
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
        yield listener.getsockname()[1]


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_a_server_that_never_answers_is_store_unavailable_without_the_secret(
    scheme: str, silent_port: int
) -> None:
    store = SyncRedisStore.from_url(f"{scheme}://:hunter2@127.0.0.1:{silent_port}?timeout=0.2")
    try:
        failures = every_step_fails_as_store_unavailable(store)
    finally:
        store.close()
    for failure in failures:
        assert "hunter2" not in f"{failure} {failure!r} {failure.fields}"
        if scheme == "redis":
            assert isinstance(failure.__cause__, redis.exceptions.TimeoutError)


class LosingProxy:
    """A TCP proxy to Redis that, once ``lose_next`` is set, drops the next reply it gets
    from the server and closes that connection: the command ran, its answer never came.
    While ``gate`` is clear, it holds the server's replies instead."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.lose_next = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.lost = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += (client, server)
            for source, sink, replies in ((client, server, False), (server, client, True)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, replies), daemon=True
                )
                self.threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if replies and self.lose_next.is_set():
                    self.lose_next.clear()
                    self.lost += 1
                    break
                if replies:
                    self.gate.wait(GUARD)
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(GUARD)


@contextlib.contextmanager
def behind_a_proxy(timeout: float) -> Iterator[tuple[SyncRedisStore, LosingProxy]]:
    """A store on the shared server, through a ``LosingProxy`` of its own."""
    url = service_url("redis")
    proxy = LosingProxy(int(url.rsplit(":", 1)[1].split("/")[0]))
    prefix = f"test:srs:{uuid.uuid4().hex[:12]}:"
    store = SyncRedisStore.from_url(
        f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&clock=caller&timeout={timeout}"
    )
    try:
        yield store, proxy
    finally:
        proxy.gate.set()
        store.close()
        proxy.close()
        drop("redis", prefix)


@pytest.fixture
def proxied() -> Iterator[tuple[SyncRedisStore, LosingProxy]]:
    with behind_a_proxy(timeout=5) as pair:
        yield pair


def test_a_call_that_timed_out_leaves_no_reply_behind_for_the_next() -> None:
    with behind_a_proxy(timeout=0.3) as (store, proxy):
        assert store.begin("a", begin_req("ta"), T0) == Reserved("ta", 1, took_over=False)
        proxy.gate.clear()
        with pytest.raises(StoreUnavailable) as info:
            store.begin("b", begin_req("tb"), T0)
        assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError)
        proxy.gate.set()  # the late reply now reaches its connection, if still open
        record = store.get("a", T0)
        assert record is not None
        assert record.token == "ta"
        assert store.begin("c", begin_req("tc"), T0) == Reserved("tc", 1, took_over=False)


def test_a_reservation_whose_reply_was_lost_is_given_back(
    proxied: tuple[SyncRedisStore, LosingProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, proxy = proxied
    # Every script loaded, so that the lost reply is a script's that ran, never NOSCRIPT.
    assert store.begin("warm", begin_req("w"), T0) == Reserved("w", 1, took_over=False)
    assert store.finish("warm", "w", Outcome(Step.RELEASE), T0)

    # Without the give-back, the lost reply leaves a reservation nobody holds ...
    with monkeypatch.context() as patch:
        patch.setattr(SyncRedisStore, "_give_back", lambda self, calls: None)
        proxy.lose_next.set()
        with pytest.raises(StoreUnavailable):
            store.begin("a", begin_req("ta"), T0)
    assert proxy.lost == 1
    assert store.begin("a", begin_req("ta2"), T0) == InProgress(T0 + LEASE)

    # ... which the store gives back (under its own token) before it reports the failure.
    proxy.lose_next.set()
    with pytest.raises(StoreUnavailable) as info:
        store.begin("b", begin_req("tb"), T0)
    assert proxy.lost == 2
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert store.get("b", T0) is None
    assert store.begin("b", begin_req("tb2"), T0) == Reserved("tb2", 1, took_over=False)


def test_a_concurrency_slot_whose_reply_was_lost_is_given_back(
    proxied: tuple[SyncRedisStore, LosingProxy],
) -> None:
    store, proxy = proxied
    slots = Limit(1, 60, algorithm="concurrency")
    store.release("rl:{a}:s", "nobody", T0)  # the release script loaded
    proxy.lose_next.set()
    with pytest.raises(StoreUnavailable):
        store.acquire([Item("rl:{a}:s", "concurrency", slots, token="x")], T0)
    assert proxy.lost == 1
    admitted, _ = store.acquire([Item("rl:{a}:s", "concurrency", slots, token="y")], T0)
    assert admitted


class MuteScripts:
    """A server that speaks enough RESP to let redis-py connect (``HELLO`` and the
    like are answered) and never answers a script (``EVAL``, ``EVALSHA``): the script
    commands each connection received, in order. With ``handshake=False`` it answers
    nothing at all: a connection never gets past its ``HELLO``."""

    def __init__(self, *, handshake: bool = True) -> None:
        self.handshake = handshake
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self.listener.getsockname()[1]
        self.connections: list[list[str]] = []
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            scripts: list[str] = []
            self.connections.append(scripts)
            self.sockets.append(client)
            thread = threading.Thread(target=self._serve, args=(client, scripts), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket, scripts: list[str]) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                data += chunk
                while (parsed := _resp_command(data)) is not None:
                    command, data = parsed
                    name = command[0].upper().decode()
                    if name in ("EVAL", "EVALSHA"):
                        scripts.append(name)
                    elif self.handshake:
                        reply = b"%1\r\n$5\r\nproto\r\n:3\r\n" if name == "HELLO" else b"+OK\r\n"
                        client.sendall(reply)

    def close(self) -> list[list[str]]:
        """Stop; the script commands each connection received."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(GUARD)
        return self.connections


def _resp_command(data: bytes) -> tuple[list[bytes], bytes] | None:
    """The first whole command (an array of bulk strings) in ``data``, and the rest."""
    if b"\r\n" not in data:
        return None
    head, rest = data.split(b"\r\n", 1)
    parts: list[bytes] = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None
        size, rest = rest.split(b"\r\n", 1)
        length = int(size[1:])
        if len(rest) < length + 2:
            return None
        parts.append(rest[:length])
        rest = rest[length + 2 :]
    return parts, rest


SLOTS = [
    Item(f"rl:{{u}}:c{n}", "concurrency", Limit(5, 60, algorithm="concurrency"), token="t")
    for n in range(3)
]


def test_a_failed_acquire_gives_its_slots_back_in_one_round_trip() -> None:
    server = MuteScripts()
    store = SyncRedisStore.from_url(f"redis://127.0.0.1:{server.port}/0?timeout=0.2")
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.acquire(SLOTS, T0)
        assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError)
        with pytest.raises(StoreUnavailable):
            store.begin("k", begin_req("t"), T0)
    finally:
        store.close()
        connections = server.close()
    # The acquire, then its three releases sent together (none waited for the one
    # before it: the server never answered), on a new connection; the same for a begin.
    assert connections == [["EVALSHA"], ["EVAL", "EVAL", "EVAL"], ["EVALSHA"], ["EVAL"]]


@pytest.mark.parametrize("kind", KINDS)
def test_slots_given_back_together_are_free_again(kind: str, make: Make) -> None:
    store = make(kind)
    one = Limit(1, 60, algorithm="concurrency")
    held = [Item(f"rl:{{u}}:c{n}", "concurrency", one, token="a") for n in range(3)]
    others = [item._replace(token="b") for item in held]
    assert store.acquire(held, T0)[0]
    assert not store.acquire(others, T0)[0]
    store._give_back(store._slot_give_backs(held, T0))  # one pipeline
    assert store.acquire(others, T0)[0]


def test_a_call_that_could_not_connect_gives_nothing_back() -> None:
    server = MuteScripts(handshake=False)
    # A client name: the store's connection has a handshake (CLIENT SETNAME) to wait for.
    store = SyncRedisStore.from_url(
        f"redis://127.0.0.1:{server.port}/0?timeout=0.2&client_name=surefoot"
    )
    try:
        for call in (
            lambda: store.acquire(SLOTS, T0),
            lambda: store.begin("k", begin_req("t"), T0),
            lambda: store.order_claim("o", version=1, token="t", now=T0, lease=30, retention=60),
        ):
            with pytest.raises(StoreUnavailable):
                call()
    finally:
        store.close()
        connections = server.close()
    assert connections == [[], [], []]  # one connection per call, no script ever sent


def test_calls_that_find_a_cluster_being_connected_wait_one_timeout_at_most() -> None:
    store = SyncRedisStore.from_url("redis+cluster://127.0.0.1:1?timeout=0.2")
    entered, release = threading.Event(), threading.Event()
    attempts: list[int] = []

    def connect() -> Any:
        attempts.append(1)
        entered.set()
        release.wait(GUARD)
        raise RedisClusterException("the cluster never answered")

    store._connect = connect
    failures: list[BaseException] = []

    def call() -> None:
        try:
            store.get("k", T0)
        except BaseException as exc:  # collected, checked below
            failures.append(exc)

    first = threading.Thread(target=call)
    first.start()
    assert entered.wait(GUARD)
    # While the first call connects, the others give up after their timeout, unsent.
    others = [threading.Thread(target=call) for _ in range(8)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(GUARD)
    assert len(failures) == 8
    assert all(isinstance(f, StoreUnavailable) and f.fields == {"retry_after": 1} for f in failures)
    store.timeout = GUARD  # from here on, the failure is remembered for longer than the test
    release.set()
    first.join(GUARD)
    assert len(failures) == 9
    # A failed attempt is remembered for a timeout: the next call fails at once.
    with pytest.raises(StoreUnavailable) as info:
        store.get("k", T0)
    assert isinstance(info.value.__cause__, RedisClusterException)
    assert attempts == [1]
    store.close()


FORK = (
    multiprocessing.get_context("fork")
    if "fork" in multiprocessing.get_all_start_methods()
    else None
)


def _forked_begins(store: SyncRedisStore, barrier: Any, out: Path) -> None:
    forked_child()
    barrier.wait(GUARD)
    decisions = [
        type(store.begin("hot", begin_req(uuid.uuid4().hex), T0)).__name__ for _ in range(10)
    ]
    out.write_text(json.dumps(decisions))


@pytest.mark.slow
@pytest.mark.skipif(FORK is None, reason="no fork on this platform")
@pytest.mark.parametrize("kind", KINDS)
def test_a_store_used_before_a_fork_works_in_the_children(
    kind: str, make: Make, tmp_path: Path
) -> None:
    assert FORK is not None
    store = make(kind)
    assert store.begin("before", begin_req("p"), T0) == Reserved("p", 1, took_over=False)
    barrier = FORK.Barrier(3)
    outs = [tmp_path / f"child-{n}.json" for n in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        children = [
            FORK.Process(target=_forked_begins, args=(store, barrier, out), daemon=True)
            for out in outs
        ]
        for child in children:
            child.start()
    for child in children:
        child.join(GUARD * 2)
    assert [c.exitcode for c in children] == [0, 0, 0]
    decisions = [name for out in outs for name in json.loads(out.read_text())]
    assert sorted(set(decisions)) == ["InProgress", "Reserved"]
    assert decisions.count("Reserved") == 1
    # The parent's store still works.
    assert store.begin("hot", begin_req("p2"), T0) == InProgress(T0 + LEASE)
    assert store.begin("after", begin_req("p3"), T0) == Reserved("p3", 1, took_over=False)


def test_an_error_inside_a_script_is_store_unavailable_without_its_text(make: Make) -> None:
    store = make()
    client = direct_client("redis")
    try:
        client.rpush(store.prefix + "rl:{a}:list", "not a state")
    finally:
        client.close()
    with pytest.raises(StoreUnavailable) as info:
        store.acquire([Item("rl:{a}:list", "token_bucket", Limit(5, 60))], T0)
    assert "WRONGTYPE" not in str(info.value)
    assert "WRONGTYPE" in str(info.value.__cause__)


# -- threads and processes ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_threads_sharing_a_store_reserve_a_key_once(kind: str, make: Make) -> None:
    store = make(kind)
    barrier = threading.Barrier(8)
    decisions: list[Any] = []

    def racer() -> None:
        barrier.wait(GUARD)
        for _ in range(25):
            decisions.append(store.begin("raced", begin_req(uuid.uuid4().hex), T0))

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert len(decisions) == 200
    assert sum(isinstance(d, Reserved) for d in decisions) == 1
    assert sum(isinstance(d, InProgress) for d in decisions) == 199


CTX = multiprocessing.get_context("spawn")
WORKERS = 4


def race(url: str, target: Callable[..., None], tmp_path: Path) -> list[dict[str, int]]:
    """``target`` run in ``WORKERS`` spawned processes that start together; their outputs."""
    barrier = CTX.Barrier(WORKERS)
    outs = [tmp_path / f"{target.__name__}-{n}.json" for n in range(WORKERS)]
    processes = [
        CTX.Process(target=target, args=(url, barrier, outs[n]), daemon=True)
        for n in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(GUARD * 2)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    return [json.loads(out.read_text()) for out in outs]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_processes_racing_on_one_key_reserve_it_once(kind: str, tmp_path: Path) -> None:
    with store_url_sync(kind, tmp_path, options="timeout=5") as url:
        results = race(url, begin_racer, tmp_path)
        assert sum(r["reserved"] for r in results) == 1
        store = SyncRedisStore.from_url(url)
        try:
            record = store.get(RACED_KEY, T0)
        finally:
            store.close()
        assert record is not None
        assert record.state is State.IN_FLIGHT


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_processes_racing_on_a_limit_admit_exactly_the_limit(kind: str, tmp_path: Path) -> None:
    with store_url_sync(kind, tmp_path, options="timeout=5") as url:
        results = race(url, acquire_racer, tmp_path)
        assert LIMIT.amount < WORKERS * CALLS
        assert sum(r["admitted"] for r in results) == LIMIT.amount == 30
        assert ITEM.algorithm == "sliding_window"
