"""Sagas per second (3 steps, local partners) and the durable log's overhead per step.

Usage::

    .venv/bin/python bench/saga.py                        # SQLite and PostgreSQL, 1 and 4 workers
    .venv/bin/python bench/saga.py --quick                # a smoke run
    .venv/bin/python bench/saga.py --rounds 3 --json out.json --check

Theory of operation:
1. The partners are one uvicorn process (uvloop, httptools) serving ``receiver_app``
   below: it answers 200 and a small JSON body to every POST and counts it, and how many
   carried an ``Idempotency-Key`` starting with ``saga:``; ``GET /count`` says both.
2. The saga (``bench``) has three steps, ``reserve``, ``charge`` and ``ship``; each is an
   async function that POSTs a small JSON body to its partner (``/reserve``...) with
   ``httpx.AsyncClient`` through ``surefoot.client.AsyncResilientTransport`` (default
   retry policy), so each call carries the key ``saga:<id>:<step>:1``, as in production,
   and calls ``raise_for_status``. Each step has a compensation (never called here).
3. Throughput: for each store (a new SQLite file, or new PostgreSQL tables under a
   prefix of their own, dropped after the run) ``--sagas`` sagas are recorded with
   ``SagaLog.start`` beforehand (not timed). ``--workers`` processes (multiprocessing,
   spawn) each build a ``SagaWorker`` with its defaults (concurrency 16, poll interval
   1 s, uvloop) and say they are ready; the clock starts when they are told to go and
   each calls ``run()``; the bench polls ``SagaLog.counts`` every 50 ms until every saga
   is completed, and the clock stops at the last one's ``updated_at`` (read from the
   table): sagas per second from the workers' start to the last completion. Beside it,
   once a round, the same three calls made directly, 16 at a time in this process: what
   the client alone does in one process.
4. Overhead per step: in this process (uvloop), ``--sequential`` sagas one after the
   other with ``SagaWorker.start`` (inline: record, claim, run the three steps, each
   result committed before the next step, read the run back), interleaved with the same
   three POSTs made directly in a loop with the same client (each in an
   ``idempotency_scope`` of its own, so the requests are the same size), after
   ``--warmup`` untimed ones of each. Overhead per step = (saga - direct) / 3 at p50,
   p90 and p99. The log's own methods are timed inside their threads, so the report
   also splits the overhead into database time (per transaction) and the rest (the
   ``asyncio.to_thread`` hops and the state machine).
5. Checks: every saga completed, the partners got three POSTs per saga, each with its
   saga key; nothing failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from functools import partial
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

from surefoot.client import AsyncResilientTransport, idempotency_scope
from surefoot.saga import Saga, SagaLog, SagaWorker, Step, StepContext

STEPS = ("reserve", "charge", "ship")
TARGET_OVERHEAD = 0.002  # seconds per step, p50, PostgreSQL


# -- the partners (run by uvicorn in its own process) -------------------------------------------

_posts = 0
_keyed = 0
_ANSWER = b'{"ok":true,"id":"p_1"}'


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _posts, _keyed
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        _posts += 1
        for name, value in scope["headers"]:
            if name == b"idempotency-key" and value.startswith(b"saga:"):
                _keyed += 1
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _ANSWER})
        return
    body = json.dumps({"posts": _posts, "keyed": _keyed}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def receiver_count(base: str) -> tuple[int, int]:
    counts = json.loads(h.http(base + "/count")[2])
    return int(counts["posts"]), int(counts["keyed"])


# -- the saga -------------------------------------------------------------------------------------


class Partners:
    """The three partners' calls, made with one client through the resilient transport."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.AsyncClient(
            transport=AsyncResilientTransport(httpx.AsyncHTTPTransport(trust_env=False)),
            trust_env=False,
        )

    async def call(self, step: str, order: str) -> Any:
        response = await self.client.post(
            f"{self.base}/{step}", json={"order": order, "amount": 1200}
        )
        response.raise_for_status()
        return response.json()

    async def reserve(self, ctx: StepContext) -> Any:
        return await self.call("reserve", ctx.saga_id)

    async def charge(self, ctx: StepContext) -> Any:
        return await self.call("charge", ctx.saga_id)

    async def ship(self, ctx: StepContext) -> Any:
        return await self.call("ship", ctx.saga_id)

    async def undo(self, ctx: StepContext) -> Any:
        return await self.call(f"undo-{ctx.step}", ctx.saga_id)

    def saga(self) -> Saga:
        return Saga(
            "bench",
            [
                Step("reserve", self.reserve, compensate=self.undo),
                Step("charge", self.charge, compensate=self.undo),
                Step("ship", self.ship, compensate=self.undo),
            ],
        )

    async def direct(self, order: str) -> None:
        """The same three calls, made directly (each with a key, as the saga's are)."""
        for step in STEPS:
            with idempotency_scope(f"direct:{order}:{step}"):
                await self.call(step, order)


def new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coroutine)


# -- the store ------------------------------------------------------------------------------------


class Db:
    """A fresh ``SagaLog`` (its own tables) and the bench's own connection to read them."""

    def __init__(self, store: str, workdir: Path, postgres: str) -> None:
        self.prefix = "bench_saga_" + uuid.uuid4().hex[:8]
        if store == "sqlite":
            path = workdir / f"{self.prefix}.db"
            self.url = f"sqlite:///{path}"
        else:
            self.url = postgres
        self.log = SagaLog(self.url, prefix=self.prefix)
        self.log.create_tables()
        if store == "sqlite":
            self.conn: Any = sqlite3.connect(path, isolation_level=None)
        else:
            import psycopg

            self.conn = psycopg.connect(postgres, autocommit=True)

    def states(self) -> dict[str, int]:
        return {state: n for _, state, n, _ in self.log.counts()}

    def last_completed(self) -> float:
        sql = f"SELECT MAX(updated_at) FROM {self.prefix}_runs WHERE state = 'completed'"
        return float(self.conn.execute(sql).fetchone()[0])

    def drop(self) -> None:
        self.log.close()
        if not isinstance(self.conn, sqlite3.Connection):
            for table in ("log", "runs"):
                self.conn.execute(f"DROP TABLE IF EXISTS {self.prefix}_{table}")
        self.conn.close()


# -- throughput: worker processes ---------------------------------------------------------------


def worker_process(url: str, prefix: str, base: str, ready: Event, go: Event, stop: Event) -> None:
    """One worker process: ready, then ``run()`` from ``go`` until ``stop``."""
    partners = Partners(base)
    log = SagaLog(url, prefix=prefix)
    worker = SagaWorker(log, [partners.saga()])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A thread of its own waits for ``stop``: the default executor's threads are the
        # worker's (every commit is an ``asyncio.to_thread``).
        threading.Thread(
            target=partial(call_when_set, stop, loop, worker.stop), daemon=True
        ).start()
        await worker.run()
        await worker.aclose()
        await partners.client.aclose()
        log.close()

    ready.set()
    go.wait()
    run_async(main())


def call_when_set(
    event: Event, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]
) -> None:
    event.wait()
    loop.call_soon_threadsafe(callback)


def wait_completed(db: Db, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = db.states()
        if states.get("completed", 0) >= total:
            return
        others = {s: n for s, n in states.items() if s not in ("running", "completed")}
        if others:
            raise h.BenchError(f"sagas not completed: {others}")
        if time.monotonic() > deadline:
            raise h.BenchError(f"after {timeout:g} s: {states}")
        time.sleep(0.05)


def throughput_run(
    args: argparse.Namespace, store: str, workers: int, base: str, workdir: Path
) -> dict[str, Any]:
    db = Db(store, workdir, args.postgres)
    spawn = multiprocessing.get_context("spawn")
    go, stop = spawn.Event(), spawn.Event()
    readies = [spawn.Event() for _ in range(workers)]
    processes = [
        spawn.Process(
            target=worker_process,
            args=(db.url, db.prefix, base, ready, go, stop),
            name=f"saga-worker-{i}",
        )
        for i, ready in enumerate(readies)
    ]
    try:
        saga = Partners(base).saga()
        for i in range(args.sagas):
            db.log.start(saga, f"order-{i}", {"sku": "A1", "amount": 1200})
        for process in processes:
            process.start()
        for ready, process in zip(readies, processes, strict=True):
            if not ready.wait(60):
                raise h.BenchError(f"{process.name} not ready after 60 s")
        posts_before, keyed_before = receiver_count(base)
        started = time.time()
        go.set()
        wait_completed(db, args.sagas, timeout=300)
        rate = args.sagas / (db.last_completed() - started)
        posts, keyed = receiver_count(base)
        posts, keyed = posts - posts_before, keyed - keyed_before
        states = db.states()
        checks = {
            "completed": states.get("completed", 0) == args.sagas,
            "three posts each": posts == 3 * args.sagas,
            "keyed": keyed == posts,
        }
        return {
            "store": store,
            "workers": workers,
            "sagas": args.sagas,
            "rate": rate,
            "posts": posts,
            "keyed": keyed,
            "checks": checks,
        }
    finally:
        stop.set()
        go.set()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join(5)
        db.drop()


def direct_rate(args: argparse.Namespace, base: str) -> float:
    """Triples of direct calls per second in this process, 16 at a time (a worker's
    default concurrency): the client's own ceiling for one worker process."""

    async def go() -> float:
        partners = Partners(base)
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with gate:
                await partners.direct(f"rate-{i}")

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.sagas)))
        elapsed = time.perf_counter() - began
        await partners.client.aclose()
        return float(args.sagas / elapsed)

    rate: float = run_async(go())
    return rate


# -- overhead per step: one process, sequential -------------------------------------------------


class Timed:
    """Wraps ``SagaLog`` methods on one instance: calls and seconds spent inside each
    (measured in the thread that runs it, so without the hop to it)."""

    def __init__(self, log: SagaLog, names: tuple[str, ...]) -> None:
        self.calls = dict.fromkeys(names, 0)
        self.seconds = dict.fromkeys(names, 0.0)
        for name in names:
            setattr(log, name, self.wrap(name, getattr(log, name)))

    def wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - began
                self.calls[name] += 1

        return timed

    def reset(self) -> None:
        for name in self.calls:
            self.calls[name] = 0
            self.seconds[name] = 0.0


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def overhead_run(args: argparse.Namespace, store: str, base: str, workdir: Path) -> dict[str, Any]:
    db = Db(store, workdir, args.postgres)
    timed = Timed(db.log, ("start", "claim", "commit", "get"))

    async def go() -> dict[str, Any]:
        partners = Partners(base)
        saga = partners.saga()
        worker = SagaWorker(db.log, [saga])
        sagas: list[float] = []
        direct: list[float] = []
        states: dict[str, int] = {}
        timing = False

        async def one_saga(order: str) -> None:
            began = time.perf_counter()
            run = await worker.start(saga, order, {})
            elapsed = time.perf_counter() - began
            if timing:
                sagas.append(elapsed)
                states[run.state] = states.get(run.state, 0) + 1

        async def one_direct(order: str) -> None:
            began = time.perf_counter()
            await partners.direct(order)
            if timing:
                direct.append(time.perf_counter() - began)

        for i in range(args.warmup + args.sequential):
            timing = i >= args.warmup
            if i == args.warmup:
                timed.reset()
            order = f"order-{i}"
            # Alternate which goes first, so neither always follows the other.
            first, second = (one_saga, one_direct) if i % 2 else (one_direct, one_saga)
            await first(order)
            await second(order)
        await worker.aclose()
        await partners.client.aclose()
        n = len(sagas)
        figures: dict[str, Any] = {"store": store, "sagas": n, "states": states}
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            figures[f"saga_{label}"] = quantile(sagas, q)
            figures[f"direct_{label}"] = quantile(direct, q)
            figures[f"step_{label}"] = (quantile(sagas, q) - quantile(direct, q)) / len(STEPS)
        figures["saga_mean"] = statistics.fmean(sagas)
        figures["direct_mean"] = statistics.fmean(direct)
        figures["db_calls"] = {k: v / n for k, v in timed.calls.items()}
        figures["db_ms"] = {k: v / n * 1000 for k, v in timed.seconds.items()}
        figures["checks"] = {"completed": states == {"completed": n}}
        return figures

    try:
        posts_before, keyed_before = receiver_count(base)
        figures: dict[str, Any] = run_async(go())
        posts, keyed = receiver_count(base)
        total = args.warmup + args.sequential
        figures["checks"]["posts"] = posts - posts_before == 2 * len(STEPS) * total
        figures["checks"]["keyed"] = keyed - keyed_before == len(STEPS) * total
        return figures
    finally:
        db.drop()


# -- the report -----------------------------------------------------------------------------------


def spread(runs: list[dict[str, Any]], key: str, scale: float = 1.0, spec: str = ".2f") -> str:
    s = h.Spread.range([r[key] * scale for r in runs])
    return f"{s.median:{spec}} ({s.low:{spec}}-{s.high:{spec}})"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = h.new_parser(__doc__, rounds=1, quick={"sagas": 200, "sequential": 50, "warmup": 5})
    h.add_database_options(parser)
    h.option(parser, "--sagas", 1000, "sagas recorded beforehand for the throughput")
    h.option(parser, "--sequential", 500, "sagas (and direct triples) run one by one")
    h.option(parser, "--warmup", 20, "untimed sagas (and direct triples) before those")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    stores, counts = h.databases(parser, args)
    context: dict[str, Any] = {
        "command": h.command_line(argv),
        "environment": h.environment(["surefoot", "httpx", "psycopg", "uvicorn", "uvloop"]),
        "load_before": h.load_average(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="surefoot-saga-bench-"))
    receiver = h.start_uvicorn("partners", "saga:receiver_app", workdir, lifespan=False)
    receiver.wait_http(receiver.base + "/count")
    runs: list[dict[str, Any]] = []
    overheads: list[dict[str, Any]] = []
    directs: list[float] = []
    for round_no in range(args.rounds):
        directs.append(direct_rate(args, receiver.base))
        print(f"round {round_no} direct calls, 16 at a time: {directs[-1]:7.0f} triples/s")
        for store in h.rotated(stores, round_no):
            over = overhead_run(args, store, receiver.base, workdir)
            over["round"] = round_no
            overheads.append(over)
            print(
                f"round {round_no} {store:<8} sequential: saga p50 {over['saga_p50'] * 1000:.2f} "
                f"ms, direct p50 {over['direct_p50'] * 1000:.2f} ms, per step "
                f"{over['step_p50'] * 1000:.2f} ms",
                flush=True,
            )
            for workers in h.rotated(counts, round_no):
                run = throughput_run(args, store, workers, receiver.base, workdir)
                run["round"] = round_no
                runs.append(run)
                print(
                    f"round {round_no} {store:<8} {workers} worker(s): {run['rate']:7.0f} sagas/s",
                    flush=True,
                )
    receiver.stop()
    context["load_after"] = h.load_average()
    h.print_header(
        context,
        [
            ("load", f"{args.sagas} sagas of 3 steps recorded beforehand, then W workers"),
            ("", f"{args.sequential} sagas one by one beside the direct calls"),
        ],
        "httpx {httpx}, psycopg {psycopg}, uvicorn {uvicorn}, uvloop {uvloop}",
    )
    print()
    columns = [
        h.Column("store", "<9"), h.Column("workers", ">7"),
        h.Column("sagas/s (min-max)", ">18"), h.Column("checks", "<6"),
    ]  # fmt: skip
    rows = []
    summary: list[dict[str, Any]] = []
    for store in stores:
        for workers in counts:
            mine = [r for r in runs if r["store"] == store and r["workers"] == workers]
            ok = all(all(r["checks"].values()) for r in mine)
            rows.append(
                [store, str(workers), spread(mine, "rate", spec=".0f"), "ok" if ok else "FAILED"]
            )
            summary.append(
                {"store": store, "workers": workers, "rate": h.median(r["rate"] for r in mine),
                 "met": None}
            )  # fmt: skip
    for line in h.text_table(columns, rows):
        print(line)
    direct = h.Spread.range(directs)
    print(
        f"the same 3 calls made directly, 16 at a time in one process: {direct.median:.0f} "
        f"({direct.low:.0f}-{direct.high:.0f}) triples/s"
    )
    print()
    columns = [
        h.Column("store", "<9"), h.Column("quantile", "<8"),
        h.Column("saga ms", ">19"), h.Column("direct ms", ">19"),
        h.Column("per step ms", ">19"), h.Column("target", ">6"), h.Column("met", ">3"),
    ]  # fmt: skip
    rows = []
    for store in stores:
        mine = [r for r in overheads if r["store"] == store]
        for q in ("p50", "p90", "p99"):
            step = h.median(r[f"step_{q}"] for r in mine)
            target = TARGET_OVERHEAD if store == "postgres" and q == "p50" else None
            met = None if target is None else step < target
            rows.append(
                [
                    store,
                    q,
                    spread(mine, f"saga_{q}", 1000),
                    spread(mine, f"direct_{q}", 1000),
                    spread(mine, f"step_{q}", 1000),
                    "-" if target is None else f"<{target * 1000:g}",
                    h.met_text(met),
                ]
            )
            if target is not None:
                summary.append({"store": store, "overhead_p50": step, "met": met})
    for line in h.text_table(columns, rows):
        print(line)
    print("\nper saga, median of rounds: the log's calls (count, ms inside the thread)")
    for store in stores:
        mine = [r for r in overheads if r["store"] == store]
        parts = []
        db_total = 0.0
        for name in ("start", "claim", "commit", "get"):
            ms = h.median(r["db_ms"][name] for r in mine)
            db_total += ms
            parts.append(f"{name} {mine[0]['db_calls'][name]:.0f}x {ms:.2f}")
        gap = h.median((r["saga_mean"] - r["direct_mean"]) * 1000 for r in mine)
        print(
            f"  {store:<8} {', '.join(parts)}; database {db_total:.2f} ms of the "
            f"{gap:.2f} ms mean gap, the rest (thread hops, state machine) {gap - db_total:.2f} ms"
        )
    print(
        f"\ntarget: overhead per step < {TARGET_OVERHEAD * 1000:g} ms p50 on PostgreSQL "
        f"(median of {args.rounds} round(s); min-max over rounds)"
    )
    failed = [r for r in runs + overheads if not all(r["checks"].values())]
    for r in failed:
        print(f"checks failed: {r['store']} {r.get('workers', 'sequential')}: "
              f"{json.dumps(r['checks'])}")  # fmt: skip
    settings = h.settings(args, "sagas", "sequential", "warmup", "stores", "workers")
    status = h.finish(args, context, settings, summary, runs, overheads=overheads, directs=directs)
    return 2 if failed else status


if __name__ == "__main__":
    sys.exit(h.run(main))
