"""What a ``sliding_log`` decision costs as its log grows, on every store (issue 14).

Usage::

    .venv/bin/python bench/sliding_log.py                    # 1,000 / 10,000 / 60,000 entries
    .venv/bin/python bench/sliding_log.py --quick            # 1 round x 20 calls, 1,000 / 60,000
    .venv/bin/python bench/sliding_log.py --stores sqlite,postgres --entries 100,1000
    .venv/bin/python bench/sliding_log.py --redis-url redis://cache:6379/0 --dsn postgresql://app@db/api

Theory of operation:
1. The stores (``--stores``, default all): ``memory`` (``MemoryStore``), ``sqlite`` (a
   ``SqliteStore`` in a temporary file), ``redis`` (``RedisStore``; a private redis-server,
   or ``--redis-url``'s, keys under ``sfbench-*`` deleted at the end) and ``postgres``
   (``PostgresStore`` on one connection of ``--dsn``, default ``SUREFOOT_POSTGRES_DSN``,
   else the local test database; a schema of its own, ``sfbench_*``, dropped at the end).
   Every store decides on the caller's clock (``clock="caller"``) and never purges
   during the run: each key's time is its own.
2. One key per log size N, seeded untimed with N entries of cost 1, 1/16 s apart: the
   window W = N/16 s, the oldest entry exactly W before the first timed call. Every time
   is a binary fraction, so that no rounding moves an entry across the window's edge.
   The seeding goes through the store's public ``acquire`` (N admissions, in chunks of
   concurrent calls that a coalescing store batches), but for PostgreSQL, where that
   took 34 s for 61,000 entries on a loaded machine: there one SQL statement writes the
   rows of ``surefoot_ratelimit_log`` (or, for a surefoot before migration 0005, the
   flat array t1,c1,t2,c2,... of the counters row, to compare with an older checkout).
3. Two workloads per key, each ``--calls`` sequential ``await store.acquire((item,), now)``:
   ``refused``, amount N - 1 and time standing still, so every decision refuses and looks
   up when it could pass; ``admitted``, amount N and time moving 1/16 s per call, so that
   at each call one entry leaves the window and one enters: every decision admits, and
   the log stays at N entries. ``floor`` is a ``fixed_window`` acquire on the same store.
   Before the first round, every key, workload and floor runs 20 untimed calls, so that
   no round pays for what the seeding left behind (a SQLite checkpoint of its log).
4. Measures per run: the wall time and a CPU time per decision: of the server (Redis:
   every thread of the private server, else ``INFO cpu``; PostgreSQL: the one backend
   behind the store's connection, from ``/proc/PID/schedstat``, when it runs on this
   machine) or, for the in-process stores, of this whole process. CPU is the steadier
   figure on a shared machine.
5. Rounds are interleaved (every store, key and workload once per round, the order
   rotated by one each round); the table shows medians over rounds, and the ratio of each
   log's cost (CPU if measured, else wall time) to the smallest log's on the same store,
   taken within each round. Target (issue 14): at 60,000 entries within 2x of the cost
   at 1,000, on every store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _harness as h

STORES = ("memory", "sqlite", "redis", "postgres")
DSN = "postgresql://postgres@127.0.0.1:5432/test"
T0 = 1_776_000_000.0  # April 2026: where a float is 2.4e-7 s coarse
STEP = 1 / 16  # seconds between two entries: a binary fraction
TARGET = 2.0  # at most this multiple of the smallest log's cost
CHUNK = 1_000  # seeding: concurrent acquires awaited together
WARM_CALLS = 20  # untimed calls of each key and workload before the first round


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    quick = {"rounds": 1, "calls": 20, "entries": "1000,60000"}
    parser = h.new_parser(__doc__, rounds=5, quick=quick)
    h.option(parser, "--calls", 200, "timed decisions per store, key, workload and round")
    h.option(parser, "--entries", "1000,10000,60000", "comma-separated log sizes")
    h.option(parser, "--stores", ",".join(STORES), "comma-separated stores")
    h.option(parser, "--dsn", os.environ.get("SUREFOOT_POSTGRES_DSN", DSN), "PostgreSQL")
    h.add_redis_options(parser, used_by="the redis store")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    args.store_names = h.names(parser, "--stores", args.stores, STORES, required=True)
    try:
        args.sizes = sorted({int(n) for n in args.entries.split(",")})
    except ValueError:
        parser.error("--entries: expected comma-separated whole numbers")
    if min(args.sizes) < 2 or min(args.rounds, args.calls) < 1:
        parser.error("expected --entries >= 2, --rounds and --calls >= 1")
    return args


class Log:
    """One key's sliding log of ``size`` entries, and where its time stands."""

    def __init__(self, size: int) -> None:
        from surefoot.ratelimit import Item, Limit

        self.size = size
        self.window = size * STEP
        self.key = f"rl:{{bench}}:{size}"
        self.calls = 0  # admitted so far: the log has moved on by as many steps
        self.refused = (Item(self.key, "sliding_log", Limit(size - 1, self.window)),)
        self.admitted = (Item(self.key, "sliding_log", Limit(size, self.window)),)

    @property
    def now(self) -> float:
        return T0 + self.calls * STEP

    async def seed(self, store: Any) -> None:
        """Admissions at T0 - W, T0 - W + STEP, ...: at T0 the first has just left."""
        start = T0 - self.window
        for first in range(0, self.size, CHUNK):
            times = [start + i * STEP for i in range(first, min(first + CHUNK, self.size))]
            answers = await asyncio.gather(*(store.acquire(self.admitted, t) for t in times))
            if not all(ok for ok, _ in answers):
                raise h.BenchError(f"{self.size:,} entries: the seeding was not all admitted")


class Store:
    """One store under test: how it opens, what CPU it counts and how it is cleaned up."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        self.where = ""
        self.cpu_ns: Callable[[], int | None] = time.process_time_ns
        self.cleanups: list[Callable[[], Any]] = []
        self.seed: Callable[[Any, Log], Awaitable[None]] = lambda store, log: log.seed(store)

    async def open(self) -> Any:
        opener = getattr(self, f"_open_{self.name}")
        store = await opener()
        self.cleanups.insert(0, store.aclose)
        return store

    async def _open_memory(self) -> Any:
        from surefoot.storage.memory import MemoryStore

        self.where = "MemoryStore (CPU: this process)"
        return MemoryStore(max_counters=10**7)

    async def _open_sqlite(self) -> Any:
        from surefoot.storage.sqlite import SqliteStore

        folder = tempfile.TemporaryDirectory(prefix="surefoot-sliding-log-")
        self.cleanups.append(folder.cleanup)
        self.where = "SqliteStore in a temporary file (CPU: this process, its thread included)"
        return SqliteStore(Path(folder.name) / "bench.db", purge_interval=1e12)

    async def _open_redis(self) -> Any:
        import redis.asyncio

        from surefoot.storage.redis import RedisStore

        bench_redis = h.BenchRedis(self.args.redis_url, executable=self.args.redis_server)
        prefix = f"sfbench-{uuid.uuid4().hex[:8]}:"
        self.cleanups += [lambda: bench_redis.delete(prefix), bench_redis.stop]
        client = redis.asyncio.Redis.from_url(bench_redis.url)
        self.cleanups.insert(0, client.aclose)
        self.where = f"RedisStore, {bench_redis.describe()}"
        self.cpu_ns = lambda: int(bench_redis.cpu_seconds() * 1e9)
        return RedisStore(client, prefix=prefix, clock="caller", timeout=60.0)

    async def _open_postgres(self) -> Any:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        from surefoot.storage.postgres import PostgresStore, migrate

        schema = f"sfbench_{uuid.uuid4().hex[:8]}"
        await migrate(self.args.dsn, schema=schema)

        async def drop() -> None:
            async with await psycopg.AsyncConnection.connect(self.args.dsn, autocommit=True) as c:
                await c.execute(f"DROP SCHEMA {schema} CASCADE")

        self.cleanups.append(drop)
        # One connection: every decision runs in one server process, whose CPU time is read.
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.args.dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True)
        self.cleanups.insert(0, pool.close)
        async with pool.connection() as conn:
            [(pid,)] = await (await conn.execute("SELECT pg_backend_pid()")).fetchall()
        stat = Path(f"/proc/{pid}/schedstat")  # only when the server is on this machine

        def backend_ns() -> int | None:
            try:
                return int(stat.read_text().split()[0])
            except OSError:
                return None

        async def seed(store: Any, log: Log) -> None:
            async with pool.connection() as conn:
                await seed_postgres(conn, schema, log)

        self.cpu_ns, self.seed = backend_ns, seed
        self.where = f"PostgresStore, {server(self.args.dsn)} (CPU: its one backend)"
        return PostgresStore(pool, schema=schema, clock="caller", timeout=60.0, purge_interval=1e12)

    async def close(self) -> None:
        for cleanup in self.cleanups:
            with contextlib.suppress(Exception):  # clean up as much as can be
                done = cleanup()
                if asyncio.iscoroutine(done):
                    await done


async def seed_postgres(conn: Any, schema: str, log: Log) -> None:
    """``log.seed``'s entries, written by SQL in the store's own format."""
    start, w = T0 - log.window, log.window
    cursor = await conn.execute("SELECT to_regclass(%s)", (f"{schema}.surefoot_ratelimit_log",))
    if (await cursor.fetchone())[0] is not None:
        await conn.execute(
            f"INSERT INTO {schema}.surefoot_ratelimit_log "
            "(key, total, time, cost, expires_at, kept_from) "
            "SELECT %s, i + 1, %s + i * %s, 1, %s + i * %s + %s, 1 "
            "FROM generate_series(0, %s - 1) AS i",
            (log.key, start, STEP, start, STEP, w, log.size),
        )
    else:  # a surefoot before migration 0005: (t1, c1, t2, c2, ...) in the counters row
        numbers = [x for i in range(log.size) for x in (start + i * STEP, 1.0)]
        await conn.execute(
            f"INSERT INTO {schema}.surefoot_ratelimit VALUES (%s, %s, NULL, %s)",
            (log.key, numbers, numbers[-2] + w),
        )


#: What one timed run does: a store, and a log and its workload, or the floor and "floor".
Work = tuple[Store, Any, Any, str]


async def timed(work: Work, calls: int) -> h.Run:
    """Wall and CPU microseconds per decision; every answer checked."""
    where, store, log, workload = work
    acquire = store.acquire
    cpu, started = where.cpu_ns(), time.perf_counter()
    for _ in range(calls):
        if workload == "floor":
            ok = (await acquire(log, T0))[0]
        elif workload == "refused":
            ok = not (await acquire(log.refused, log.now))[0]
        else:
            ok = (await acquire(log.admitted, log.now))[0]
            log.calls += 1
        if not ok:
            raise h.BenchError(f"{where.name} {workload}: a decision went the wrong way")
    wall, spent = time.perf_counter() - started, where.cpu_ns()
    cpu_us = None if cpu is None or spent is None else (spent - cpu) / 1e3 / calls
    size = log.size if isinstance(log, Log) else 0
    return {
        "store": where.name,
        "workload": workload,
        "entries": size,
        "us": wall * 1e6 / calls,
        "cpu_us": cpu_us,
    }


async def bench(args: argparse.Namespace, stores: list[Store]) -> list[h.Run]:
    from surefoot.ratelimit import Item, Limit

    floor = (Item("rl:{bench}:floor", "fixed_window", Limit(10**12, 60.0)),)
    work: list[Work] = []
    runs: list[h.Run] = []
    try:
        for where in stores:
            store = await where.open()
            started = time.perf_counter()
            for size in args.sizes:
                log = Log(size)
                await where.seed(store, log)
                await store.acquire(log.refused, log.now)  # untimed: a first decision
                work += [(where, store, log, w) for w in ("refused", "admitted")]
            work.append((where, store, floor, "floor"))
            seconds = time.perf_counter() - started
            print(
                f"{where.name}: seeded {sum(args.sizes):,} entries in {seconds:.1f} s", flush=True
            )
        for each in work:  # untimed: what seeding left to do (a WAL checkpoint...) is done
            await timed(each, WARM_CALLS)
        for round_no in range(1, args.rounds + 1):
            for each in h.rotated(work, round_no):
                runs.append({"round": round_no, **await timed(each, args.calls)})
            print(f"round {round_no}/{args.rounds} done", flush=True)
    finally:
        for where in stores:
            await where.close()
    return runs


def cost_ratio(figure: str) -> Callable[[h.Run, h.Run], float]:
    return lambda run, base: float(run[figure] / base[figure])


def summarize(args: argparse.Namespace, runs: list[h.Run]) -> list[h.Run]:
    """Per store, workload and size: medians over rounds, and the ratio to the smallest
    log's cost (CPU if measured, else wall time) within each round."""
    rows = []
    smallest = args.sizes[0]
    for store in args.store_names:
        mine_all = [r for r in runs if r["store"] == store]
        figure = "us" if any(r["cpu_us"] is None for r in mine_all) else "cpu_us"
        for workload, sizes in (("refused", args.sizes), ("admitted", args.sizes), ("floor", [0])):
            base = h.by_round(mine_all, workload=workload, entries=sizes[0])
            for size in sizes:
                mine = h.by_round(mine_all, workload=workload, entries=size)
                ratio = h.Spread.range(h.paired(mine, base, cost_ratio(figure)))
                judged = size > smallest
                rows.append(
                    {
                        "store": store,
                        "workload": workload,
                        "entries": size,
                        "figure": figure,
                        "us": h.median(r["us"] for r in mine.values()),
                        "cpu_us": h.median_known(r["cpu_us"] for r in mine.values()),
                        "ratio": ratio.median,
                        "ratio_min": ratio.low,
                        "ratio_max": ratio.high,
                        "target": TARGET if judged else None,
                        "met": ratio.median <= TARGET if judged else None,
                    }
                )
    return rows


def server(dsn: str) -> str:
    """Where the database is, without the password."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    host, port = info.get("host", "localhost"), info.get("port", 5432)
    return f"PostgreSQL at {host}:{port}/{info.get('dbname', '')}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = h.load_average()
    print(
        f"{len(args.store_names)} stores x {len(args.sizes)} logs x 2 workloads x "
        f"{args.rounds} rounds x {args.calls} calls",
        flush=True,
    )
    stores = [Store(name, args) for name in args.store_names]
    runs = asyncio.run(bench(args, stores))
    context: dict[str, Any] = {
        "command": args.command,
        "environment": h.environment(["surefoot", "psycopg", "redis"]),
        "load_before": load_before,
        "load_after": h.load_average(),
    }
    rows = summarize(args, runs)
    h.print_header(
        context,
        [(s.name, s.where) for s in stores],
        "psycopg {psycopg}, redis-py {redis}",
        shared="this script and the servers",
    )
    columns = [
        h.Column("store", "<8"),
        h.Column("workload", "<9"),
        h.Column("entries", ">7"),
        h.Column("CPU us", ">7"),
        h.Column("wall us", ">7"),
        *h.ratio_columns(f"x {args.sizes[0]:,}", 8),
    ]
    cells = [
        [
            row["store"],
            row["workload"],
            f"{row['entries']:,}" if row["entries"] else "-",
            h.num(row["cpu_us"], ".1f"),
            f"{row['us']:.1f}",
            *h.ratio_cells(row, "<="),
        ]
        for row in rows
    ]
    print()
    print("\n".join(h.text_table(columns, cells)))
    settings = h.settings(args, "rounds", "calls", "entries", "stores")
    return h.finish(args, context, settings, rows, runs)


if __name__ == "__main__":
    raise SystemExit(h.run(main))
