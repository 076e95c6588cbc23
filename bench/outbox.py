"""Webhooks from commit to acknowledged delivery per second: ``Outbox`` + ``OutboxWorker``.

Usage::

    .venv/bin/python bench/outbox.py                       # SQLite and PostgreSQL, 1 and 4 workers
    .venv/bin/python bench/outbox.py --quick               # a smoke run
    .venv/bin/python bench/outbox.py --stores postgres --workers 4 --json out.json --check

Theory of operation:
1. The receiver is one uvicorn process (uvloop, httptools) serving ``receiver_app``
   below: it answers 204 to every POST and counts it; ``GET /count`` says how many it got.
   It verifies nothing (the signatures are checked by the tests); what is measured is
   the sending side.
2. Each run gets a fresh outbox (a new SQLite file, or new PostgreSQL tables under a
   prefix of its own) with ``--endpoints`` endpoints, all pointing at the receiver, each
   accepting one event type (``bench.<i>``: one delivery per message), with a
   concurrency of 64 and no rate limit. ``--workers`` worker processes start and idle:
   ``surefoot webhooks worker --max-in-flight 128 --allow-network 127.0.0.0/8``, as a
   user runs them (uvloop, aiohttp, the default batch of 100 and poll interval of 0.25 s,
   breakers on, each attempt logged).
3. Throughput: ``--messages`` messages are committed in one transaction (their types
   round-robin over the endpoints); the clock starts at the COMMIT and stops when the
   last delivery is recorded as delivered (``updated_at`` of the last one, read from the
   database): deliveries per second from commit to acknowledgement.
4. Latency at half load: the bench commits one message per transaction at half the
   throughput just measured, for ``--duration`` seconds, then waits for every delivery;
   the latency of each is its ``updated_at`` (recorded as delivered) minus its
   ``created_at`` (recorded in the committing transaction), and the report gives p50,
   p99 and max. Both are wall-clock times of this machine.
5. Checks: every message was delivered once to the receiver (its count equals the
   deliveries), none failed, and every delivery took one attempt.
6. Senders, first: the worker's two ways of putting a POST on the wire (``_senders``:
   aiohttp's and an httpx transport's), each sending ``--posts`` POSTs of a webhook's
   size, 64 at a time, to the same receiver, interleaved over the rounds (uvloop): the
   ratio is why the worker sends with aiohttp when it is installed.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

TARGET_RATE = 1000.0  # deliveries/s, 4 workers, PostgreSQL
TARGET_P99 = 1.0  # seconds, at half load
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# -- the receiver (run by uvicorn in its own process) -----------------------------------------

_count = 0


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _count
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        _count += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = str(_count).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


# -- one run ------------------------------------------------------------------------------------


class Db:
    """The bench's own connection: commits messages as an application would."""

    def __init__(self, store: str, workdir: Path, postgres: str) -> None:
        from surefoot.outbox import Outbox

        self.prefix = "bench_" + uuid.uuid4().hex[:8]
        if store == "sqlite":
            path = workdir / f"{self.prefix}.db"
            self.url = f"sqlite:///{path}"
            self.conn: Any = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.begin = "BEGIN IMMEDIATE"
        else:
            import psycopg

            self.url = postgres
            self.conn = psycopg.connect(postgres, autocommit=True)
            self.begin = "BEGIN"
        self.outbox = Outbox(self.url, prefix=self.prefix, schedule=[0, 1, 5, 30])
        self.outbox.create_tables()

    def commit(self, types: list[str]) -> float:
        """Enqueue one message per type in one transaction; returns when COMMIT began."""
        self.conn.execute(self.begin)
        for t in types:
            self.outbox.enqueue(self.conn, t, {"bench": True, "type": t})
        committing = time.time()
        self.conn.execute("COMMIT")
        return committing

    def delivered(self) -> list[tuple[float, float, int]]:
        sql = (
            f"SELECT d.created_at, d.updated_at, d.attempts FROM {self.prefix}_deliveries d "
            "WHERE d.state = 'delivered'"
        )
        return [tuple(r) for r in self.conn.execute(sql).fetchall()]

    def count(self, *states: str) -> int:
        mark = "?" if isinstance(self.conn, sqlite3.Connection) else "%s"
        marks = ", ".join([mark] * len(states))
        sql = f"SELECT count(*) FROM {self.prefix}_deliveries WHERE state IN ({marks})"
        return int(self.conn.execute(sql, states).fetchone()[0])

    def drop(self) -> None:
        if not isinstance(self.conn, sqlite3.Connection):
            for table in ("attempts", "deliveries", "messages", "endpoints"):
                self.conn.execute(f"DROP TABLE IF EXISTS {self.prefix}_{table}")
        self.outbox.close()
        self.conn.close()


def wait_for(db: Db, total: int, timeout: float) -> None:
    """Until ``total`` deliveries are done; one count every 50 ms, which costs the database
    little beside the workers (the timed figures come from the rows, not from this)."""
    deadline = time.monotonic() + timeout
    while db.count("delivered", "failed") < total:
        if time.monotonic() > deadline:
            raise h.BenchError(
                f"only {db.count('delivered')} of {total} delivered after {timeout:g} s"
            )
        time.sleep(0.05)


def _delivering(worker: h.Child) -> bool:
    return any("delivering from" in line for line in worker.log_lines())


def receiver_count(base: str) -> int:
    return int(h.http(base + "/count")[2])


def sender_rate(kind: str, base: str, posts: int) -> float:
    """POSTs per second through one of the worker's senders, 64 at a time."""
    import asyncio

    import httpx
    import uvloop

    from surefoot.outbox._senders import AiohttpSender, HttpxSender

    body = b'{"type":"bench.e0","timestamp":"2026-12-06T00:00:00.000Z","data":{"bench":true}}'
    headers = {"content-type": "application/json", "webhook-id": "msg_bench"}

    async def go() -> float:
        sender = (
            AiohttpSender(64)
            if kind == "aiohttp"
            else HttpxSender(httpx.AsyncHTTPTransport(trust_env=False), 15.0)
        )
        gate = asyncio.Semaphore(64)
        url = httpx.URL(base + "/e0")

        async def one() -> None:
            async with gate:
                status, _ = await sender.post(url, headers, body, None)
                if status != 204:
                    raise h.BenchError(f"{kind}: the receiver answered {status}")

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(posts)))
        elapsed = time.perf_counter() - started
        await sender.aclose()
        return posts / elapsed

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(go())


def one_run(
    args: argparse.Namespace, store: str, workers: int, receiver: h.Child
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="surefoot-outbox-bench-"))
    db = Db(store, workdir, args.postgres)
    names = [f"e{i}" for i in range(args.endpoints)]
    for name in names:
        db.outbox.add_endpoint(
            name, url=receiver.base + f"/{name}", secrets=[SECRET],
            event_types=[f"bench.{name}"], concurrency=64,
        )  # fmt: skip
    children = [
        h.Child(
            f"worker {i}",
            [
                sys.executable,
                "-m",
                "surefoot",
                "webhooks",
                "worker",
                "--database",
                db.url,
                "--prefix",
                db.prefix,
                "--allow-network",
                "127.0.0.0/8",
                "--max-in-flight",
                "128",
            ],
            workdir / f"worker{i}.log",
        )
        for i in range(workers)
    ]
    try:
        for child in children:  # started (not timed): the CLI says so once it delivers
            child.wait_until(partial(_delivering, child), "start delivering")
        before = receiver_count(receiver.base)
        types = [f"bench.{names[i % len(names)]}" for i in range(args.messages)]
        started = db.commit(types)
        wait_for(db, args.messages, timeout=120)
        rows = db.delivered()
        rate = args.messages / (max(r[1] for r in rows) - started)
        # Half load: one message per transaction, paced.
        half = rate / 2
        interval = 1.0 / half
        sent = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.duration:
            due = t0 + sent * interval
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            db.commit([types[sent % len(types)]])
            sent += 1
        total = args.messages + sent
        wait_for(db, total, timeout=120)
        rows = db.delivered()
        everything = sorted(rows, key=lambda r: r[0])
        paced = everything[args.messages :]
        latencies = sorted(u - c for c, u, _ in paced)
        received = receiver_count(receiver.base) - before
        checks = {
            "delivered": len(rows) == total,
            "failed": db.count("failed") == 0,
            "received once": received == total,
            "one attempt each": all(a == 1 for _, _, a in rows),
        }
        return {
            "store": store,
            "workers": workers,
            "messages": args.messages,
            "rate": rate,
            "half_load": half,
            "paced": sent,
            "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "max": latencies[-1],
            "received": received,
            "checks": checks,
        }
    finally:
        for child in children:
            child.stop()
        db.drop()


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = h.new_parser(__doc__, rounds=1, quick={"messages": 500, "duration": 2, "posts": 500})
    h.add_database_options(parser)
    h.option(parser, "--messages", 5000, "messages committed at once for the throughput")
    h.option(parser, "--duration", 5.0, "seconds of paced commits at half load")
    h.option(parser, "--endpoints", 8, "endpoints (one event type each)")
    h.option(parser, "--posts", 3000, "POSTs per sender in the senders' comparison")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    stores, counts = h.databases(parser, args)
    context: dict[str, Any] = {
        "command": h.command_line(argv),
        "environment": h.environment(["surefoot", "httpx", "psycopg", "uvicorn"]),
        "load_before": h.load_average(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="surefoot-outbox-receiver-"))
    receiver = h.start_uvicorn("receiver", "outbox:receiver_app", workdir, lifespan=False)
    receiver.wait_http(receiver.base + "/count")
    senders: dict[str, list[float]] = {"aiohttp": [], "httpx": []}
    for round_no in range(args.rounds):
        for kind in h.rotated(list(senders), round_no):
            senders[kind].append(sender_rate(kind, receiver.base, args.posts))
    runs = []
    for round_no in range(args.rounds):
        for store in h.rotated(stores, round_no):
            for workers in counts:
                run = one_run(args, store, workers, receiver)
                run["round"] = round_no
                runs.append(run)
                print(
                    f"round {round_no} {store:<8} {workers} worker(s): {run['rate']:7.0f}/s, "
                    f"p99 {run['p99'] * 1000:6.1f} ms at {run['half_load']:.0f}/s",
                    flush=True,
                )
    receiver.stop()
    context["load_after"] = h.load_average()
    h.print_header(
        context,
        [("load", f"{args.messages} messages at once, then {args.duration:g} s at half load")],
        "httpx {httpx}, psycopg {psycopg}, uvicorn {uvicorn}",
    )
    columns = [
        h.Column("store", "<9"), h.Column("workers", ">7"), h.Column("deliveries/s", ">12"),
        h.Column("half load/s", ">11"), h.Column("p50 ms", ">7"), h.Column("p99 ms", ">7"),
        h.Column("max ms", ">7"), h.Column("checks", "<6"),
    ]  # fmt: skip
    rows = []
    summary = []
    for store in stores:
        for workers in counts:
            mine = [r for r in runs if r["store"] == store and r["workers"] == workers]
            rate = h.median(r["rate"] for r in mine)
            p99 = h.median(r["p99"] for r in mine)
            ok = all(all(r["checks"].values()) for r in mine)
            rows.append(
                [
                    store,
                    str(workers),
                    f"{rate:.0f}",
                    f"{h.median(r['half_load'] for r in mine):.0f}",
                    f"{h.median(r['p50'] for r in mine) * 1000:.1f}",
                    f"{p99 * 1000:.1f}",
                    f"{h.median(r['max'] for r in mine) * 1000:.1f}",
                    "ok" if ok else "FAILED",
                ]
            )
            met = None
            if store == "postgres" and workers == 4:
                met = ok and rate >= TARGET_RATE and p99 < TARGET_P99
            summary.append(
                {"store": store, "workers": workers, "rate": rate, "p99": p99, "met": met}
            )
    aiohttp, httpx_rate = h.median(senders["aiohttp"]), h.median(senders["httpx"])
    print(
        f"\nsenders: aiohttp {aiohttp:.0f} POST/s, httpx transport {httpx_rate:.0f} POST/s "
        f"({aiohttp / httpx_rate:.2f}x; {args.posts} POSTs, 64 at a time, median of "
        f"{args.rounds} round(s))"
    )
    print()
    for line in h.text_table(columns, rows):
        print(line)
    print(
        f"\ntarget: >= {TARGET_RATE:.0f} deliveries/s with 4 workers on PostgreSQL, "
        f"p99 < {TARGET_P99:g} s at half load"
    )
    failed = [r for r in runs if not all(r["checks"].values())]
    for r in failed:
        print(f"checks failed: {r['store']} {r['workers']}: {json.dumps(r['checks'])}")
    settings = h.settings(args, "messages", "duration", "endpoints", "posts")
    status = h.finish(args, context, settings, summary, runs, senders=senders)
    return 2 if failed else status


if __name__ == "__main__":
    sys.exit(h.run(main))
