"""What a ``sliding_log`` decision costs on PostgreSQL as its log grows (issue 14).

Usage::

    .venv/bin/python bench/postgres_sliding_log.py             # 1,000 / 10,000 / 60,000 entries
    .venv/bin/python bench/postgres_sliding_log.py --quick     # 1 round x 20 calls
    .venv/bin/python bench/postgres_sliding_log.py --dsn postgresql://app@db/api --entries 100,1000

Theory of operation:
1. The server: ``--dsn`` (default: ``SUREFOOT_POSTGRES_DSN``, else the local test database).
   The script migrates a schema of its own (``sfbench_*``) and drops it at the end.
2. One key per log size N, seeded untimed by SQL in the store's own format (rows of
   ``surefoot_ratelimit_log``, or, for a surefoot before migration 0005, the flat array
   of the counters row): N entries of cost 1, 1/16 s apart, the window W = N/16 s, the
   oldest entry exactly W before the first timed call. Every time is a binary fraction,
   so that no rounding moves an entry across the window's edge.
3. Two workloads per key, each ``--calls`` sequential ``await store.acquire((item,), now)``
   on a ``PostgresStore(clock="caller")`` (one call per batch): ``refused``, amount N - 1
   and time standing still, so every decision refuses and looks up when it could pass;
   ``admitted``, amount N and time moving 1/16 s per call, so that at each call one entry
   leaves the window and one enters: every decision admits, and the log stays at N
   entries. ``floor`` is a ``fixed_window`` acquire on the same store: the round trip,
   the function call and one row.
4. Measures per run: the CPU time of the server process behind the store's one connection
   (``/proc/PID/schedstat``, when the server runs on this machine: the steadier figure on
   a shared machine) and the wall time, the round trip included, each per decision.
5. Rounds are interleaved (every key and workload once per round, the order rotated by one
   each round); the table shows medians over rounds, and the ratio of each log's cost
   (server CPU, else wall time) to the smallest log's, taken within each round. Target
   (issue 14): at 60,000 entries within 2x of the cost at 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import _harness as h

DSN = "postgresql://postgres@127.0.0.1:5432/test"
T0 = 1_776_000_000.0  # April 2026: where a float is 2.4e-7 s coarse
STEP = 1 / 16  # seconds between two entries: a binary fraction
TARGET = 2.0  # at most this multiple of the smallest log's cost


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=5, quick={"rounds": 1, "calls": 20})
    h.option(parser, "--calls", 200, "timed decisions per key, workload and round")
    h.option(parser, "--entries", "1000,10000,60000", "comma-separated log sizes")
    h.option(parser, "--dsn", os.environ.get("SUREFOOT_POSTGRES_DSN", DSN), "PostgreSQL")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    try:
        args.sizes = [int(n) for n in args.entries.split(",")]
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
        self.key = f"rl:bench:{size}"
        self.calls = 0  # admitted so far: the log has moved on by as many steps
        self.refused = (Item(self.key, "sliding_log", Limit(size - 1, self.window)),)
        self.admitted = (Item(self.key, "sliding_log", Limit(size, self.window)),)

    @property
    def now(self) -> float:
        return T0 + self.calls * STEP

    async def seed(self, conn: Any, schema: str) -> None:
        """Entries at T0 - W, T0 - W + STEP, ...: at T0 the first has just left."""
        start, w = T0 - self.window, self.window
        cursor = await conn.execute("SELECT to_regclass(%s)", (f"{schema}.surefoot_ratelimit_log",))
        if (await cursor.fetchone())[0] is not None:
            await conn.execute(
                f"INSERT INTO {schema}.surefoot_ratelimit_log "
                "(key, total, time, cost, expires_at, kept_from) "
                "SELECT %s, i + 1, %s + i * %s, 1, %s + i * %s + %s, 1 "
                "FROM generate_series(0, %s - 1) AS i",
                (self.key, start, STEP, start, STEP, w, self.size),
            )
        else:  # a surefoot before migration 0005: (t1, c1, t2, c2, ...) in the counters row
            numbers = [x for i in range(self.size) for x in (start + i * STEP, 1.0)]
            await conn.execute(
                f"INSERT INTO {schema}.surefoot_ratelimit VALUES (%s, %s, NULL, %s)",
                (self.key, numbers, numbers[-2] + w),
            )


#: What one timed run does: a log and a workload, or the floor's items and "floor".
Work = tuple[Any, str]


class Backend:
    """The one server process behind the store's one connection, and its CPU time."""

    def __init__(self, pid: int) -> None:
        self.stat = Path(f"/proc/{pid}/schedstat")  # only when the server is on this machine

    def ns(self) -> int | None:
        try:
            return int(self.stat.read_text().split()[0])
        except OSError:
            return None


async def timed(store: Any, backend: Backend, work: Work, calls: int) -> h.Run:
    """Wall and server CPU microseconds per decision; every answer checked."""
    acquire, (log, workload) = store.acquire, work
    cpu, started = backend.ns(), time.perf_counter()
    for _ in range(calls):
        if isinstance(log, tuple):  # the floor
            ok = (await acquire(log, T0))[0]
        elif workload == "refused":
            ok = not (await acquire(log.refused, log.now))[0]
        else:
            ok = (await acquire(log.admitted, log.now))[0]
            log.calls += 1
        if not ok:
            raise h.BenchError(f"{workload}: a decision went the wrong way")
    wall, spent = time.perf_counter() - started, backend.ns()
    server = None if cpu is None or spent is None else (spent - cpu) / 1e3 / calls
    size = log.size if isinstance(log, Log) else 0
    return {"workload": workload, "entries": size, "us": wall * 1e6 / calls, "server_us": server}


async def bench(args: argparse.Namespace) -> list[h.Run]:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    from surefoot.ratelimit import Item, Limit
    from surefoot.storage.postgres import PostgresStore, migrate

    schema = f"sfbench_{uuid.uuid4().hex[:8]}"
    await migrate(args.dsn, schema=schema)
    conn = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
    # One connection: every decision runs in one server process, whose CPU time is read.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        args.dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    # No purge but the first: the keys' clocks are their own, and a purge on one key's time
    # would delete the entries of a key whose time is behind.
    store = PostgresStore(pool, schema=schema, clock="caller", timeout=60.0, purge_interval=1e12)
    logs = [Log(size) for size in args.sizes]
    runs: list[h.Run] = []
    try:
        async with pool.connection() as pooled:
            [(pid,)] = await (await pooled.execute("SELECT pg_backend_pid()")).fetchall()
        backend = Backend(pid)
        for log in logs:
            await log.seed(conn, schema)
            await store.acquire(log.refused, log.now)  # untimed: plans made, log converted
        floor = (Item("rl:bench:floor", "fixed_window", Limit(10**12, 60.0)),)
        work: list[Work] = [(log, w) for log in logs for w in ("refused", "admitted")]
        work.append((floor, "floor"))
        for round_no in range(1, args.rounds + 1):
            for each in h.rotated(work, round_no):
                run = await timed(store, backend, each, args.calls)
                runs.append({"round": round_no, **run})
            print(f"round {round_no}/{args.rounds} done", flush=True)
    finally:
        await store.aclose()
        await pool.close()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
    return runs


def summarize(args: argparse.Namespace, runs: list[h.Run]) -> list[h.Run]:
    """Per workload and size: medians over rounds, and the ratio to the smallest log's
    cost (server CPU if measured, else wall time) within each round."""
    rows = []
    smallest = min(args.sizes)
    figure = "us" if any(r["server_us"] is None for r in runs) else "server_us"
    for workload, sizes in (("refused", args.sizes), ("admitted", args.sizes), ("floor", [0])):
        base = h.by_round(runs, workload=workload, entries=sizes[0])
        for size in sizes:
            mine = h.by_round(runs, workload=workload, entries=size)
            ratio = h.Spread.range(h.paired(mine, base, lambda r, b: r[figure] / b[figure]))
            judged = size > smallest
            rows.append(
                {
                    "workload": workload,
                    "entries": size,
                    "us": h.median(r["us"] for r in mine.values()),
                    "server_us": h.median_known(r["server_us"] for r in mine.values()),
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
        f"{len(args.sizes)} logs x 2 workloads x {args.rounds} rounds x {args.calls} calls",
        flush=True,
    )
    runs = asyncio.run(bench(args))
    context: dict[str, Any] = {
        "command": args.command,
        "environment": h.environment(["surefoot", "psycopg"]),
        "load_before": load_before,
        "load_after": h.load_average(),
    }
    rows = summarize(args, runs)
    h.print_header(
        context,
        [("server", server(args.dsn))],
        "psycopg {psycopg}",
        shared="this script and PostgreSQL",
    )
    columns = [
        h.Column("workload", "<9"),
        h.Column("entries", ">7"),
        h.Column("server CPU us", ">13"),
        h.Column("wall us", ">7"),
        *h.ratio_columns(f"x {min(args.sizes):,}", 8),
    ]
    cells = [
        [
            row["workload"],
            f"{row['entries']:,}" if row["entries"] else "-",
            h.num(row["server_us"], ".0f"),
            f"{row['us']:.0f}",
            *h.ratio_cells(row, "<="),
        ]
        for row in rows
    ]
    print()
    print("\n".join(h.text_table(columns, cells)))
    settings = h.settings(args, "rounds", "calls", "entries")
    return h.finish(args, context, settings, rows, runs)


if __name__ == "__main__":
    raise SystemExit(h.run(main))
