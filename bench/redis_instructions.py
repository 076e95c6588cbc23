"""Instructions per rate-limit decision in ``redis-server`` (callgrind): what surefoot's
acquire script costs the Redis server that every edge and gateway shares.

Usage::

    .venv/bin/python bench/redis_instructions.py                   # batches 1, 4 and 8, ~1 min
    .venv/bin/python bench/redis_instructions.py --batches 4 --calls 100
    .venv/bin/python bench/redis_instructions.py --json results.json

Theory of operation:
1. Redis runs scripts one at a time on one thread, so its CPU per decision bounds how many
   decisions a shard can make for every process sharing it. ``bench/redis_decisions.py``
   and ``bench/edge.py`` report it in microseconds, which drift by 20% or more on a shared
   machine; this counts instructions, the stable figure for changing a script.
2. Each batch size runs a private ``redis-server`` (``bench/_harness.py``'s, nothing saved)
   under ``valgrind --tool=callgrind --instr-atstart=no``.
3. The decisions are ``bench/edge.py``'s: one request of two sliding-window limits
   (1,000,000/second and 1,000,000,000/hour) that no request reaches, one principal, through
   ``RedisStore(coalesce=True)`` on the server's clock, as ``surefoot decide`` makes them. A
   batch of B is B acquires gathered in one loop turn, which the coalescing store sends as
   one script call (``surefoot.storage.redis``, Rule 7; at most ``SEND_AT``, 8, go in one
   call), as it does for B requests that arrive together; through NGINX,
   ``bench/edge.py``'s Redis figures put the usual batch at 3 to 7.
4. ``--warmup`` batches first (the script loaded, the keys made), then counting is switched
   on (``callgrind_control -i on``), ``--calls`` batches are sent one after the other, and
   counting is switched off. The figure is the server's instructions over the decisions
   made: everything Redis does for them (reading each command, running the script,
   writing the reply, its event loop). Redis's own timer (10 times a second) runs a little
   while counting is on: a small share, the same for every run of the same length.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _harness as h


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, quick={"calls": 50, "warmup": 5})
    h.option(parser, "--batches", "1,4,8", "comma-separated batch sizes (requests per call)")
    h.option(parser, "--calls", 300, "script calls counted per batch size")
    h.option(parser, "--warmup", 20, "script calls before counting")
    parser.add_argument(
        "--redis-server", default="redis-server", help="the redis-server executable to start"
    )
    h.add_output_options(parser, check=False)
    args = h.parse(parser, argv)
    from surefoot.storage.redis import SEND_AT

    args.batches = [int(b) for b in args.batches.split(",")]
    if not args.batches or min(args.batches) < 1 or args.calls < 1:
        parser.error("--batches and --calls must be positive")
    if max(args.batches) > SEND_AT:  # more would leave in two calls or more
        parser.error(f"--batches: at most {SEND_AT}, the requests of one script call")
    return args


def counting(pid: int, state: str) -> None:
    """Switch callgrind's counting in process ``pid`` ``"on"`` or ``"off"``."""
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)


async def decide(url: str, batch: int, warmup: int, calls: int, pid: int) -> int:
    """``warmup`` then ``calls`` batches of ``batch`` decisions, counted by callgrind in
    process ``pid``; the decisions admitted while counting."""
    import redis.asyncio

    from surefoot.ratelimit import Item, Limit
    from surefoot.storage.redis import RedisStore

    client = redis.asyncio.Redis.from_url(url)
    store = RedisStore(client, prefix="sfbench-instructions:", coalesce=True, timeout=30.0)
    items = (
        Item("rl:{bench}:second", "sliding_window", Limit(1_000_000, 1.0), 1, True, ""),
        Item("rl:{bench}:hour", "sliding_window", Limit(1_000_000_000, 3600.0), 1, True, ""),
    )

    async def one_call() -> int:
        results = await asyncio.gather(*(store.acquire(items, 0.0) for _ in range(batch)))
        return sum(1 for admitted, _ in results if admitted)

    try:
        for _ in range(warmup):
            await one_call()
        await asyncio.to_thread(counting, pid, "on")
        admitted = 0
        for _ in range(calls):
            admitted += await one_call()
        await asyncio.to_thread(counting, pid, "off")
    finally:
        await store.aclose()
        await client.aclose()
    return admitted


def measure(args: argparse.Namespace, batch: int, workdir: Path) -> dict[str, Any]:
    out = workdir / f"callgrind.{batch}"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    server = h.RedisServer(valgrind, args.redis_server)
    try:
        pid = server.child.process.pid
        admitted = asyncio.run(decide(server.url, batch, args.warmup, args.calls, pid))
    finally:
        server.stop()  # callgrind writes its counts as the server exits
    decisions = batch * args.calls
    if admitted != decisions:
        raise h.BenchError(f"batch {batch}: {admitted} of {decisions} decisions admitted")
    totals = [line for line in out.read_text().splitlines() if line.startswith("totals:")]
    if not totals:
        raise h.BenchError(f"{out}: no totals line")
    instructions = int(totals[0].split()[1])
    return {
        "batch": batch,
        "decisions": decisions,
        "instructions": instructions,
        "per_call": instructions / args.calls,
        "per_decision": instructions / decisions,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        h.require_executable(tool)
    h.require_modules(["redis", "surefoot.storage.redis"], "redis")
    rows = []
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-redis-instr-") as tmp:
        for batch in args.batches:
            row = measure(args, batch, Path(tmp))
            rows.append(row)
            print(
                f"  batch {batch}: {row['per_call']:,.0f} instructions per call, "
                f"{row['per_decision']:,.0f} per decision",
                flush=True,
            )
    print()
    print(
        h.markdown_table(
            ["batch", "instructions per call", "instructions per decision"],
            ([str(r["batch"]), f"{r['per_call']:,.0f}", f"{r['per_decision']:,.0f}"] for r in rows),
            left=(),
        )
    )
    context = {"command": args.command, "redis_server": args.redis_server}
    used = h.settings(args, "batches", "calls", "warmup")
    return h.finish(args, context, used, rows, rows)


if __name__ == "__main__":
    sys.exit(h.run(main))
