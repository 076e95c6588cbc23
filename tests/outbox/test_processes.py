"""The outbox's promises across real OS processes, real stores and injected crashes.

Each test runs over one SQLite file and over PostgreSQL, with tables of its own prefix.
The consumer is a real HTTP server in its own process: surefoot's ``WebhookReceiver`` in
front of an app that appends each processed event to a ledger, behind a logger of every
raw delivery that also verifies it with the ``standardwebhooks`` library (see
``_outbox_workers``). Workers are spawned processes running ``OutboxWorker.run()``; the
application is one too. Time is real here (processes cannot share a manual clock through
the HTTP stack), so schedules are short and every wait is a bounded poll on a condition.

The CI-sized runs take a few seconds each; ``SUREFOOT_OUTBOX_SOAK=1`` adds larger ones.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from _outbox_workers import (
    EVENT_TYPE,
    HANG_PATH,
    PATH,
    WHSEC,
    application,
    consumer,
    outbox_worker,
    read_arrivals,
    read_ledger,
)

from _services import store_url_sync
from _support import GUARD, SPAWN
from surefoot.chaos import Abort, ChaosProxy, FailAfter, FaultPlan, Hang, Reset, Rule
from surefoot.outbox import DeliveryState, Outbox, RetrySchedule

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
]

SOAK = os.environ.get("SUREFOOT_OUTBOX_SOAK") == "1"
soak = pytest.mark.skipif(not SOAK, reason="a soak run: set SUREFOOT_OUTBOX_SOAK=1")
SIZES = ["ci", pytest.param("soak", marks=soak)]

SCHEDULE = [0, 0.2, 0.5, 1, 1]
WORKER = {"timeout": 1, "lease": 2, "poll_interval": 0.05, "allow_private": True}
TABLES = ("endpoints", "messages", "deliveries", "attempts", "orders")


# -- fixtures and helpers --------------------------------------------------------------------


@dataclass
class Db:
    url: str
    prefix: str
    kind: str

    def outbox(self, schedule: list[float] = SCHEDULE) -> Outbox:
        return Outbox(self.url, prefix=self.prefix, schedule=RetrySchedule(tuple(schedule), 0.0))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return conn.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg:
            cursor = pg.execute(sql)
            return cursor.fetchall() if cursor.description is not None else []

    def enqueue(self, outbox: Outbox, orders: range) -> list[str]:
        """One committed transaction that enqueues an event per order."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                ids = [outbox.enqueue(conn, EVENT_TYPE, {"order": n}) for n in orders]
                conn.execute("COMMIT")
            finally:
                conn.close()
            return ids
        import psycopg

        with psycopg.connect(self.url) as pg, pg.transaction():
            return [outbox.enqueue(pg, EVENT_TYPE, {"order": n}) for n in orders]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """The application's database, with the outbox's tables under a prefix of the test's
    own (dropped afterwards) and an orders table."""
    kind: str = request.param
    prefix = f"t{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/app.db"
    else:
        url = request.getfixturevalue("postgres_dsn")
    found = Db(url, prefix, kind)
    outbox = found.outbox()
    outbox.create_tables()
    outbox.close()
    found.query(f"CREATE TABLE {prefix}_orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
    yield found
    for table in TABLES:
        found.query(f"DROP TABLE IF EXISTS {prefix}_{table}")


@dataclass
class Consumer:
    folder: Path
    base: str

    @property
    def url(self) -> str:
        return self.base + PATH

    def ledger(self) -> list[dict[str, Any]]:
        return read_ledger(self.folder)

    def arrivals(self, path: str = PATH) -> list[tuple[str, float, str, bool]]:
        return [a for a in read_arrivals(self.folder) if a[2] == path]


@pytest.fixture
def consuming(spawn: Callable[..., BaseProcess], tmp_path: Path) -> Consumer:
    folder = tmp_path / "consumer"
    folder.mkdir()
    port, ready = SPAWN.Value("i", 0), SPAWN.Event()
    spawn(consumer, folder, port, ready)
    assert ready.wait(GUARD), "the consumer never started"
    return Consumer(folder, f"http://127.0.0.1:{port.value}")


def wait_for(condition: Callable[[], bool], what: str, guard: float = GUARD) -> None:
    """Poll ``condition`` until it holds (at most ``guard`` seconds, then fail)."""
    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill(*processes: BaseProcess) -> None:
    for process in processes:
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
    for process in processes:
        process.join(GUARD)
        assert process.exitcode == -signal.SIGKILL


def states(outbox: Outbox, endpoint: str) -> collections.Counter[DeliveryState]:
    return collections.Counter(d.state for d in outbox.deliveries(endpoint=endpoint, limit=10000))


def start_workers(
    spawn: Callable[..., BaseProcess],
    db: Db,
    count: int,
    schedule: list[float] = SCHEDULE,
    **settings: Any,
) -> list[BaseProcess]:
    options = {**WORKER, **settings}
    return [spawn(outbox_worker, db.url, db.prefix, schedule, options) for _ in range(count)]


def assert_once_each(consumer: Consumer, ids: list[str], path: str = PATH) -> None:
    """Every message processed exactly once by the consumer's app; every delivery on the
    wire carried one of those ids and verified with the reference library."""
    ledger = consumer.ledger()
    assert sorted(e["id"] for e in ledger) == sorted(ids)
    arrivals = consumer.arrivals(path)
    assert {a[0] for a in arrivals} == set(ids)
    assert [a for a in read_arrivals(consumer.folder) if not a[3]] == []  # 0 bad signatures


# -- 1. the application dies after a COMMIT ------------------------------------------------


@pytest.mark.parametrize("death", ["sigkill", "exit_after_commit"])
@pytest.mark.parametrize("size", SIZES)
def test_a_crashed_application_sends_every_committed_event_and_no_rolled_back_one(
    db: Db, spawn: Callable[..., BaseProcess], consuming: Consumer, death: str, size: str
) -> None:
    rng = random.Random()
    outbox = db.outbox()
    outbox.add_endpoint("orders", url=consuming.url, secrets=[WHSEC])
    committed = SPAWN.Value("i", 0)
    at = rng.randint(5, 30) if size == "ci" else rng.randint(100, 400)
    exit_after = at if death == "exit_after_commit" else None
    app = spawn(application, db.url, db.prefix, committed, exit_after, 100_000)
    if death == "sigkill":
        wait_for(lambda: committed.value >= at, f"{at} commits")
        kill(app)  # anywhere: inside a transaction, in enqueue, between two of them
    else:
        app.join(GUARD)
        assert app.exitcode == 0
    orders = sorted(r[0] for r in db.query(f"SELECT id FROM {db.prefix}_orders"))
    assert len(orders) >= at
    assert all(n % 3 != 2 for n in orders)  # the rolled-back ones left no row

    workers = start_workers(spawn, db, 2)
    wait_for(
        lambda: states(outbox, "orders")[DeliveryState.DELIVERED] == len(orders),
        "every committed event delivered",
    )
    kill(*workers)
    ledger = consuming.ledger()
    assert sorted(e["data"]["order"] for e in ledger) == orders
    assert all(e["data"]["kept"] and e["type"] == EVENT_TYPE for e in ledger)
    assert_once_each(consuming, [d.message_id for d in outbox.deliveries(limit=10000)])
    assert len(outbox.deliveries(limit=10000)) == len(orders)
    outbox.close()


# -- 2. a worker dies between the POST and the record ----------------------------------------


def test_a_worker_killed_after_the_consumer_processed_is_redelivered_under_the_same_id(
    db: Db, spawn: Callable[..., BaseProcess], consuming: Consumer
) -> None:
    outbox = db.outbox()
    outbox.add_endpoint("orders", url=consuming.url, secrets=[WHSEC], concurrency=10)
    ids = db.enqueue(outbox, range(10))
    (consuming.folder / "hold").touch()  # the consumer processes, then holds its answers
    # Its timeout leaves a busy machine time to see all processed and kill it before its
    # requests time out (a timeout would be recorded: not this scenario).
    [doomed] = start_workers(spawn, db, 1, timeout=4, lease=5)
    wait_for(lambda: len(consuming.ledger()) == len(ids), "the consumer to process all")
    kill(doomed)  # every request in flight, processed, unanswered, unrecorded
    assert states(outbox, "orders") == {DeliveryState.SENDING: len(ids)}
    (consuming.folder / "hold").unlink()

    workers = start_workers(spawn, db, 2)  # they take over once the lease ran out
    wait_for(
        lambda: states(outbox, "orders")[DeliveryState.DELIVERED] == len(ids),
        "the redeliveries",
    )
    kill(*workers)
    assert_once_each(consuming, ids)
    seen = collections.Counter(a[0] for a in consuming.arrivals())
    assert set(seen) == set(ids)
    assert all(count >= 2 for count in seen.values())  # each went twice, under its own id
    for message_id in ids:
        # The dead worker's attempt was never recorded; the next one was attempt 2.
        assert [(a.attempt, a.status) for a in outbox.attempts(message_id)] == [(2, 204)]
    outbox.close()


@soak
def test_workers_killed_at_random_lose_nothing_and_the_consumer_runs_each_once(
    db: Db, spawn: Callable[..., BaseProcess], consuming: Consumer
) -> None:
    rng = random.Random()
    outbox = db.outbox()
    outbox.add_endpoint("orders", url=consuming.url, secrets=[WHSEC], concurrency=20)
    ids = db.enqueue(outbox, range(300))
    workers = start_workers(spawn, db, 3)
    for _ in range(10):
        delivered = states(outbox, "orders")[DeliveryState.DELIVERED]
        if delivered == len(ids):
            break
        target = min(delivered + rng.randint(1, 30), len(ids))

        def progressed(target: int = target) -> bool:
            return states(outbox, "orders")[DeliveryState.DELIVERED] >= target

        wait_for(progressed, "progress")
        victim = workers.pop(rng.randrange(len(workers)))
        kill(victim)
        workers += start_workers(spawn, db, 1)
    wait_for(
        lambda: states(outbox, "orders")[DeliveryState.DELIVERED] == len(ids),
        "every delivery",
        guard=120,
    )
    kill(*workers)
    assert_once_each(consuming, ids)
    outbox.close()


# -- 3. a hostile network --------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_through_resets_503s_hangs_and_lost_answers_each_event_reaches_the_app_once(
    db: Db, spawn: Callable[..., BaseProcess], consuming: Consumer, size: str
) -> None:
    rules = [
        Rule(name="reset", fault=Reset(), methods=("POST",), probability=0.15),
        Rule(
            name="busy", fault=Abort(status=503, retry_after=1), methods=("POST",), probability=0.08
        ),
        Rule(name="hang", fault=Hang(), methods=("POST",), probability=0.1),
        Rule(name="lost", fault=FailAfter(lose="reset"), methods=("POST",), probability=0.1),
    ]
    plan = FaultPlan(rules, seed=11)
    schedule = [0, 0.1, 0.2, 0.3] + [0.5] * 10  # 14 attempts: 0.4**14, every event gets out
    outbox = db.outbox(schedule)
    with ChaosProxy(upstream=consuming.base, plan=plan, hooks=[], hang_max=5).running() as proxy:
        outbox.add_endpoint("orders", url=proxy.url + PATH, secrets=[WHSEC])
        ids = db.enqueue(outbox, range(20 if size == "ci" else 200))
        # The breaker (minimum 10 calls, opens for 30 s) would stall a test this hostile.
        workers = start_workers(spawn, db, 2, schedule, breaker=False)
        wait_for(
            lambda: states(outbox, "orders")[DeliveryState.DELIVERED] == len(ids),
            "every event through the faults",
            guard=GUARD if size == "ci" else 300,
        )
        kill(*workers)
    assert set(plan.counts("kind")) == {"reset", "abort", "hang", "fail_after"}
    assert_once_each(consuming, ids)
    seen = collections.Counter(a[0] for a in consuming.arrivals())
    assert sum(seen.values()) > len(ids)  # the lost answers were sent again
    outbox.close()


# -- 4. a per-endpoint rate limit across worker processes ------------------------------------


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


@pytest.mark.parametrize("size", SIZES)
def test_a_rate_limit_of_10_per_second_holds_across_four_worker_processes(
    db: Db, spawn: Callable[..., BaseProcess], tmp_path: Path, consuming: Consumer, size: str
) -> None:
    outbox = db.outbox()
    outbox.add_endpoint("orders", url=consuming.url, secrets=[WHSEC], rate_limit="10/second")
    ids = db.enqueue(outbox, range(40 if size == "ci" else 200))
    with store_url_sync(db.kind if db.kind == "postgres" else "sqlite", tmp_path) as rate_url:
        # SQLite: the outbox's own file (the default); PostgreSQL: a migrated schema.
        rate = {"rate_store": rate_url} if db.kind == "postgres" else {}
        workers = start_workers(spawn, db, 4, **rate)
        wait_for(
            lambda: states(outbox, "orders")[DeliveryState.DELIVERED] == len(ids),
            "every delivery",
            guard=GUARD if size == "ci" else 60,
        )
        kill(*workers)
    assert_once_each(consuming, ids)
    arrived = {a[0]: a[1] for a in consuming.arrivals()}
    attempted = {m: a.at for m in ids for a in outbox.attempts(m)}
    assert len(attempted) == len(ids)  # never failed: each went once
    t0 = min(arrived.values())
    timeline = sorted((arrived[m] - t0, attempted[m] - t0) for m in ids)
    shown = "\n".join(f"arrived {a:7.3f}  attempt at {b:7.3f}" for a, b in timeline)
    # The moments the requests left: each within the worker's margin of its admission,
    # which the sliding log counts over a window longer by that margin. (The consumer's
    # arrival times add its own queueing, so they are not the measure of the sender.)
    assert most_in_one_second(list(attempted.values())) <= 10, shown
    outbox.close()


# -- 5. a dead endpoint beside a healthy one -------------------------------------------------


def test_an_endpoint_that_hangs_never_delays_another_one(
    db: Db, spawn: Callable[..., BaseProcess], consuming: Consumer
) -> None:
    outbox = db.outbox()
    # Registered first, so it is claimed first; it accepts connections and never answers.
    outbox.add_endpoint("dead", url=consuming.base + HANG_PATH, secrets=[WHSEC], concurrency=5)
    outbox.add_endpoint("healthy", url=consuming.url, secrets=[WHSEC], concurrency=5)
    ids = db.enqueue(outbox, range(30))  # each message goes to both endpoints
    # Every attempt to the dead endpoint hangs longer than the test may take: none ends.
    timeout = 4 * GUARD
    workers = start_workers(spawn, db, 2, timeout=timeout, lease=3 * timeout)

    def dead_attempts() -> int:
        return sum(len(outbox.attempts(m, endpoint="dead")) for m in ids)

    wait_for(
        lambda: (
            states(outbox, "healthy")[DeliveryState.DELIVERED] == len(ids) or dead_attempts() > 0
        ),
        "the healthy endpoint's deliveries, or the dead one's first timeout",
    )
    # Every healthy delivery is done while the dead endpoint's first attempts still hang,
    # and the dead one holds no more than its concurrency in flight.
    assert states(outbox, "healthy") == {DeliveryState.DELIVERED: len(ids)}
    assert dead_attempts() == 0
    assert states(outbox, "dead") == {DeliveryState.SENDING: 5, DeliveryState.PENDING: 25}
    assert len(consuming.arrivals(HANG_PATH)) == 5
    kill(*workers)
    assert_once_each(consuming, ids)
    outbox.close()


@pytest.mark.anyio
async def test_a_slow_rate_store_never_lets_two_sends_through_within_one_period(
    tmp_path: Path,
) -> None:
    import httpx

    from surefoot.outbox import OutboxWorker
    from surefoot.storage import store_from_url
    from surefoot.testing import ManualClock

    clock = ManualClock(1_700_000_000.0)
    outbox = Outbox(f"sqlite:///{tmp_path}/app.db", clock=clock)
    outbox.create_tables()
    outbox.add_endpoint(
        "orders", url="http://127.0.0.1:9/hooks", secrets=[WHSEC], rate_limit="1/second"
    )
    store: Any = store_from_url(f"sqlite:///{tmp_path}/rate.db")

    class SlowStore:
        """The shared rate store, 0.9 s away for its first caller (a lock held, a cold start)."""

        slow = True

        async def acquire(self, items: Any, now: float) -> Any:
            if self.slow:
                self.slow = False
                clock.advance(0.9)
            return await store.acquire(items, now)

        async def aclose(self) -> None:
            await store.aclose()

    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now())
        return httpx.Response(204)

    worker = OutboxWorker(
        outbox,
        rate_store=SlowStore(),  # type: ignore[arg-type]
        transport=httpx.MockTransport(answer),
        allow_private=True,
        hooks=[],
    )
    try:
        db = Db(outbox.database, outbox.prefix, "sqlite")
        db.enqueue(outbox, range(2))
        # The first admission is 0.9 s old when its request would leave: it goes back
        # unsent (its slot stays used), as does the second, refused.
        assert await worker.run_once() == 2
        assert sent == []
        for _ in range(50):
            clock.advance(0.1)
            await worker.run_once()
            if len(sent) == 2:
                break
    finally:
        await worker.aclose()
        await store.aclose()
        outbox.close()
    assert len(sent) == 2
    assert sent[1] - sent[0] >= 1.0  # 1/second, as the consumer sees it
