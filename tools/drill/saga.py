"""The saga drill (``target = "saga"``, ``scenario`` Rule 6): checkouts run by workers that
are killed, against partners that fail.

    drill ──SagaLog.start──► saga log ◄── SagaWorker processes ──► partners (uvicorn:
    (clients x payments      (sagas.db or (``[saga] workers``,      stock, payments,
     orders)                 PostgreSQL)  SIGKILLed as it goes)     shipping; partners.db)

The saga log is ``sagas.db`` in the drill's directory (``[saga] database = "sqlite"``) or
tables of a fresh prefix (``drill`` and 8 hex digits) on ``$SUREFOOT_POSTGRES_DSN``
(``"postgresql"``), dropped at the end of the run, whichever way it ends. The drill reads
the log only through ``SagaLog``'s public API, the same on both databases.

``python -m tools.drill.saga worker --database D --prefix P --partners URL --ready F ...`` is
one worker process: it runs the ``checkout`` saga of ``examples/checkout`` (its HTTP
attempts and its steps' retries sized by the scenario), creates ``--ready`` once it runs,
and stops cleanly on SIGTERM (the drill SIGKILLs it).

``arun_saga_drill`` starts the partners (``examples.checkout.partners``, the payments
partner failing as ``[saga]`` says, each fault appended to ``faults.jsonl``), the workers
and the orders, kills workers at random moments, waits until every saga is finished (or
``[drill] deadline`` seconds after the last order started), stops everything and audits
the partners' ledger and the saga log (``scenario.saga_audit``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surefoot.saga import SagaLog, SagaRun

__all__ = ["arun_saga_drill", "main", "order_input"]

#: The PostgreSQL server of a ``database = "postgresql"`` drill, unless
#: ``$SUREFOOT_POSTGRES_DSN`` names another.
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: ``SagaLog.runs`` lists at most this many sagas at once.
_RUNS_LIMIT = 1000
_ACTIVE = ("running", "compensating")


def order_input(seed: int, n: int, *, refused: float, declined: float) -> dict[str, Any]:
    """Order ``n``'s input: the same in every run of the seed (one draw per order)."""
    draw = random.Random(f"{seed}:order:{n}")
    return {
        "sku": f"sku-{n % 7}",
        "quantity": 1 + n % 3,
        "amount": 500 + 10 * (n % 100),
        "card": "declined" if draw.random() < declined else "tok_visa",
        "address": "1 Nowhere Lane" if draw.random() < refused else f"{n} Main Street",
    }


def _saga(partners: str, attempt_timeout: float, step_attempts: int, backoff: float) -> Any:
    from examples.checkout.checkout import build

    from surefoot.client import RetryPolicy
    from surefoot.saga import Retry

    return build(
        partners,
        retry=RetryPolicy(
            max_attempts=2, attempt_timeout=attempt_timeout, backoff_base=0.05, backoff_max=0.2
        ),
        step_retry=Retry(attempts=step_attempts, initial=backoff, maximum=max(backoff, 1.0)),
    )


# -- a worker ------------------------------------------------------------------------------------


async def _work(args: argparse.Namespace) -> None:
    from surefoot.saga import SagaLog, SagaWorker

    log = SagaLog(args.database, prefix=args.prefix)
    worker = SagaWorker(
        log,
        [_saga(args.partners, args.attempt_timeout, args.step_attempts, args.backoff)],
        concurrency=args.concurrency,
        lease=args.lease,
        poll_interval=0.05,
        step_timeout=30.0,
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    await asyncio.to_thread(Path(args.ready).touch)
    try:
        await worker.run()
    finally:
        await worker.aclose()
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.drill.saga")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="one saga worker")
    worker.add_argument("--database", required=True)
    worker.add_argument("--prefix", default="surefoot_saga")
    worker.add_argument("--partners", required=True)
    worker.add_argument("--ready", required=True)
    worker.add_argument("--concurrency", type=int, default=8)
    worker.add_argument("--lease", type=float, default=3.0)
    worker.add_argument("--attempt-timeout", type=float, default=0.5)
    worker.add_argument("--step-attempts", type=int, default=8)
    worker.add_argument("--backoff", type=float, default=0.1)
    args = parser.parse_args(argv)
    asyncio.run(_work(args))


# -- the drill -----------------------------------------------------------------------------------


def _finished(saga_log: SagaLog) -> int:
    """How many sagas are finished (neither running nor compensating)."""
    return sum(n for _, state, n, _ in saga_log.counts() if state not in _ACTIVE)


def _runs(saga_log: SagaLog, total: int) -> list[SagaRun]:
    """The orders' sagas (``order-0`` ... ``order-{total - 1}``), as summaries when they fit
    in one ``runs`` listing."""
    if total <= _RUNS_LIMIT:
        return saga_log.runs(limit=_RUNS_LIMIT)
    found = (saga_log.get(f"order-{n}") for n in range(total))
    return [run for run in found if run is not None]


def _step_runs(saga_log: SagaLog, runs: list[SagaRun]) -> int:
    """Steps run and undone, all attempts (the timelines' ``started`` and ``compensating``)."""
    kinds = ("started", "compensating")
    return sum(sum(1 for entry in saga_log.timeline(run.id) if entry.kind in kinds) for run in runs)


def _drop_tables(saga_log: SagaLog) -> None:
    """Drop a PostgreSQL drill's tables (their prefix is the run's own)."""
    saga_log.close()
    conn = saga_log.connect()
    try:
        with conn.transaction() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {saga_log.prefix}_log, {saga_log.prefix}_runs")
    finally:
        conn.close()


async def arun_saga_drill(
    scenario: Any, *, directory: Path, progress: Any, log: Any, started: float
) -> Any:
    """Run the saga drill ``scenario`` in ``directory``; its ``DrillReport``."""
    from examples.checkout.partners import read_ledger

    from surefoot.saga import SagaLog
    from tools.drill.runner import (
        ROOT,
        DrillError,
        _answers,
        _environment,
        _free_port,
        _Process,
        _until_ready,
    )
    from tools.drill.scenario import DrillReport, ranks, saga_audit

    s, g = scenario, scenario.saga
    env = _environment(directory, ROOT)
    database = directory / "sagas.db"
    if g.database == "postgresql":
        log_url = os.environ.get("SUREFOOT_POSTGRES_DSN", POSTGRES_DSN)
        prefix = f"drill{uuid.uuid4().hex[:8]}"
    else:
        log_url, prefix = f"sqlite:///{database}", "surefoot_saga"
    ledger_db = directory / "partners.db"
    fault_log = directory / "faults.jsonl"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env_partners = {
        **env,
        "CHECKOUT_PARTNERS_DB": str(ledger_db),
        "CHECKOUT_FAULTS": f"unavailable={g.unavailable},timeout={g.timeout},lost={g.lost},"
        f"seed={s.seed}",
        "CHECKOUT_FAULT_LOG": str(fault_log),
    }
    partners = _Process(
        "partners (uvicorn examples.checkout.partners)",
        [
            *(sys.executable, "-m", "uvicorn", "--factory", "examples.checkout.partners:from_env"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        log=directory / "partners.log",
        cwd=ROOT,
        env=env_partners,
    )
    workers: list[_Process] = []
    fired: list[str] = []
    kills = 0
    down: set[int] = set()  # workers the killer has killed and not started again yet
    t0 = time.monotonic()

    def note(line: str) -> None:
        fired.append(f"{time.monotonic() - t0:6.1f} s  {line}")
        log(f"{time.monotonic() - t0:.1f} s: {line}")

    async def start_worker(index: int) -> None:
        ready = directory / f"worker-{index}.ready"
        ready.unlink(missing_ok=True)
        workers[index].start()

        async def is_ready() -> bool:
            return ready.exists()

        await _until_ready(workers[index], is_ready)

    async def kill_workers() -> None:
        nonlocal kills
        rng = random.Random(f"kills:{s.seed}")
        for _ in range(g.worker_kills):
            await asyncio.sleep(g.kill_every * rng.uniform(0.5, 1.5))
            index = rng.randrange(len(workers))
            down.add(index)
            await asyncio.to_thread(workers[index].kill)
            kills += 1
            note(f"SIGKILL saga worker {index} (down {g.down:g} s)")
            await asyncio.sleep(g.down)
            await start_worker(index)
            down.discard(index)

    saga_log = SagaLog(log_url, prefix=prefix)
    try:
        killer: asyncio.Task[None] | None = None
        try:
            await asyncio.to_thread(saga_log.create_tables)
            partners.start()
            await _until_ready(partners, lambda: _answers(url + "/payments/charges?reference=-"))
            for index in range(g.workers):
                command = [sys.executable, "-m", "tools.drill.saga", "worker"]
                command += ["--database", log_url, "--prefix", prefix, "--partners", url]
                command += ["--ready", str(directory / f"worker-{index}.ready")]
                command += ["--concurrency", str(g.concurrency), "--lease", repr(g.lease)]
                command += ["--attempt-timeout", repr(g.attempt_timeout)]
                command += ["--step-attempts", str(g.step_attempts), "--backoff", repr(g.backoff)]
                workers.append(
                    _Process(
                        f"saga worker {index} (tools.drill.saga worker)",
                        command,
                        log=directory / f"worker-{index}.log",
                        cwd=ROOT,
                        env=env,
                    )
                )
                await start_worker(index)
            log(f"{g.workers} saga workers -> partners {url}; log {saga_log!r}")

            saga = _saga(url, g.attempt_timeout, g.step_attempts, g.backoff)
            killer = asyncio.ensure_future(kill_workers())
            begun = time.monotonic()
            for n in range(s.total):
                data = order_input(s.seed, n, refused=g.refused, declined=g.declined)
                await asyncio.to_thread(saga_log.start, saga, f"order-{n}", data)
                if g.pace:
                    await asyncio.sleep(g.pace)
            deadline = time.monotonic() + s.deadline
            while True:
                done = await asyncio.to_thread(_finished, saga_log)
                if progress is not None:
                    progress(done, s.total)
                if killer.done():
                    killer.result()  # a worker that did not start again
                for index, worker in enumerate(workers):
                    if not worker.alive and index not in down:
                        raise worker.failed("exited during the run")
                if done == s.total or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            seconds = time.monotonic() - begun
            if done < s.total:
                log(f"{s.total - done} sagas not finished after {s.deadline:g} s")
        finally:
            if killer is not None:
                killer.cancel()
                await asyncio.gather(killer, return_exceptions=True)
            for worker in workers:
                await asyncio.to_thread(worker.stop)
            await asyncio.to_thread(partners.stop)

        if not ledger_db.exists():
            raise DrillError(f"the partners left no ledger ({ledger_db})")
        ledger = await asyncio.to_thread(read_ledger, str(ledger_db))
        runs = await asyncio.to_thread(_runs, saga_log, s.total)
        states = {run.id: run.state for run in runs}
        result = saga_audit(
            states=states,
            reservations=ledger.reservations,
            charges=ledger.charges,
            refunds=ledger.refunds,
            shipments=ledger.shipments,
            worker_kills=kills,
        )
        faults = collections.Counter(
            json.loads(line)["fault"] for line in _lines(fault_log) if line.strip()
        )
        for problem, orders in result.examples.items():
            log(f"{problem}: e.g. {', '.join(orders)}")
        if result.attention:
            log(f"needs_attention: {', '.join(result.attention)}")
        return DrillReport(
            scenario=s.name,
            store=g.database,  # where the saga log lives
            idempotency=s.idempotency,
            clients=s.clients,
            payments=s.payments,
            workers=g.workers,
            seed=s.seed,
            audit=result.drill_audit(),
            attempts=await asyncio.to_thread(_step_runs, saga_log, runs),
            seconds=seconds,
            wall=time.monotonic() - started,
            faults={"payments": dict(faults)},
            latency=ranks([r.updated_at - r.created_at for r in runs if r.state not in _ACTIVE]),
            events=tuple(fired),
            target=s.target,
            saga=result,
        )
    finally:
        if g.database == "postgresql":
            await asyncio.to_thread(_drop_tables, saga_log)
        saga_log.close()


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    main()
