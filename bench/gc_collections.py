"""The cyclic garbage collector's work in ``surefoot decide`` and ``surefoot serve`` under
wrk, with surefoot's threshold (``surefoot._heap``) and with Python's, in one run.

Usage::

    .venv/bin/python bench/gc_collections.py                 # 3 rounds x 10 s, about 3 min
    .venv/bin/python bench/gc_collections.py --quick         # 1 round x 4 s
    .venv/bin/python bench/gc_collections.py --json out.json

Theory of operation:
1. The servers are ``bench/edge.py``'s ``decide-redis`` and ``serve-redis`` (its policy
   file on the Redis server of ``--redis-url``, under a key prefix of their own, deleted
   after each run; the upstream is ``bench/gateway.py``'s, under uvicorn), each one worker,
   started afresh for every run by this file's ``--child`` mode: it installs a
   ``gc.callbacks`` hook that counts each generation's collections and the time spent in
   them, writes the counts to a file every 0.2 s, then runs ``surefoot decide`` or
   ``surefoot serve`` as the command line does. For the ``python`` arm it first makes
   ``surefoot._heap.collect_less_often`` do nothing, so the server keeps Python's
   threshold (700); the ``surefoot`` arm is the server as shipped.
2. Each run: ``--warmup`` seconds of wrk, the counts read, ``--duration`` seconds of wrk,
   the counts read again; the figures are the differences (collections, their
   milliseconds, the collector's microseconds per request), beside req/s and the
   server's CPU time per request.
3. Runs are interleaved (every round runs every configuration, rotated), the table shows
   medians over rounds. With two or more CPUs and ``taskset``, the server is pinned to one
   CPU, wrk and the upstream to another (``--no-pin``: nothing pinned).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h

import edge
import gateway as g

ARMS = ("python", "surefoot")
SERVERS = ("decide", "serve")


@dataclass(frozen=True)
class Config:
    server: str  # "decide" or "serve"
    arm: str  # "python": Python's threshold; "surefoot": surefoot._heap's

    @property
    def name(self) -> str:
        return f"{self.server}-redis-{self.arm}"


CONFIGS = [Config(server, arm) for server in SERVERS for arm in ARMS]


# -- the child: a server whose collections are counted ----------------------------------------


def child(counts_path: str, arm: str, command: list[str]) -> None:
    import gc

    import surefoot._heap
    from surefoot.cli import main

    if arm == "python":
        surefoot._heap.collect_less_often = lambda: None
    counts = {str(g): [0, 0.0] for g in range(3)}
    started = [0.0]

    def hook(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            count = counts[str(info["generation"])]
            count[0] += 1
            count[1] += time.perf_counter() - started[0]

    def write() -> None:
        path = Path(counts_path)
        while True:
            snapshot = {"counts": counts, "threshold": gc.get_threshold()}
            path.with_suffix(".tmp").write_text(json.dumps(snapshot))
            path.with_suffix(".tmp").replace(path)
            time.sleep(0.2)

    gc.callbacks.append(hook)
    threading.Thread(target=write, daemon=True).start()
    sys.argv = ["surefoot", *command]
    main()


# -- the parent -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=3, quick={"rounds": 1, "duration": 4, "warmup": 1})
    h.add_wrk_options(parser, duration=10)
    h.option(parser, "--redis-url", "redis://127.0.0.1:6379/0", "the Redis server (keys under "
             "'sfbench-gc-*' only, deleted after each run)")  # fmt: skip
    h.add_pin_options(parser, what="the server, and wrk with the upstream,")
    h.add_output_options(parser, check=False)
    return h.parse(parser, argv)


def read_counts(path: Path) -> dict[str, Any]:
    for _ in range(50):
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.1)
    raise h.BenchError(f"{path}: the server wrote no counts")


def one_run(
    args: argparse.Namespace, config: Config, upstream: h.Child, cpus: h.CpuPlan, redis: Any
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sfbench-gc-") as tmp:
        workdir = Path(tmp)
        prefix = f"sfbench-gc-{secrets.token_hex(6)}:"
        store = h.with_query(args.redis_url, f"prefix={prefix}&timeout=0.25")
        policy = workdir / "policy.toml"
        policy.write_text(edge.POLICY_TOML.format(upstream=upstream.base, store=store))
        port = h.free_port()
        counts = workdir / "counts.json"
        argv = [
            *cpus.server, sys.executable, __file__, "--child", str(counts), config.arm, "--",
            config.server, "--config", str(policy), "--port", str(port), "--workers", "1",
        ]  # fmt: skip
        server = h.Child(config.name, argv, workdir / "server.log", {"TMPDIR": tmp}, port)
        try:
            if config.server == "decide":
                server.wait_http(server.base + "/readyz")
                script, url = edge.DECIDE_LUA, server.base + "/decide"
            else:
                server.wait_http(server.base + g.GET_PATH)
                script, url = h.GET_LUA, server.base + g.GET_PATH
            if args.warmup:
                h.wrk_load(args, cpus, script, url, args.warmup)
            time.sleep(0.3)
            before, cpu_before = read_counts(counts), server.cpu_seconds()
            result = h.wrk_load(args, cpus, script, url, args.duration)
            time.sleep(0.3)
            after, cpu_after = read_counts(counts), server.cpu_seconds()
        finally:
            server.stop()
            redis.delete(prefix)
    run = h.wrk_figures(result, config.name)
    requests = max(run["requests"], 1)
    row: dict[str, Any] = {
        "config": config.name,
        "req_s": run["rps"],
        "errors": run["error_count"],
        "cpu_us": (cpu_after - cpu_before) * 1e6 / requests,
        "threshold": after["threshold"][0],
    }
    for generation in ("0", "1", "2"):
        n0, s0 = before["counts"][generation]
        n1, s1 = after["counts"][generation]
        row[f"gen{generation}"] = n1 - n0
        row[f"gen{generation}_ms"] = (s1 - s0) * 1e3
    row["gc_us"] = sum(row[f"gen{g}_ms"] for g in "012") * 1e3 / requests
    return row


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        counts, arm, _, *command = sys.argv[2:]
        child(counts, arm, command)
        return 0
    args = parse_args(argv)
    h.require_executable("wrk")
    h.require_modules(["uvicorn", "redis", "surefoot.edge"], "bench,gateway,redis")
    cpus = h.split_cpus(args.no_pin)
    redis = h.BenchRedis(args.redis_url)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sfbench-gc-up-") as tmp:
        upstream = h.start_uvicorn(
            "upstream", "gateway:upstream_app", Path(tmp), workers=1, lifespan=False,
            prefix=cpus.load,
        )  # fmt: skip
        try:
            upstream.wait_http(upstream.base + g.GET_PATH)
            for round_no in range(args.rounds):
                for config in h.rotated(CONFIGS, round_no):
                    row = one_run(args, config, upstream, cpus, redis)
                    print(f"round {round_no + 1}: {format_row(row)}", flush=True)
                    rows.append(row)
        finally:
            upstream.stop()
    table = [median_row(config.name, [r for r in rows if r["config"] == config.name])
             for config in CONFIGS]  # fmt: skip
    print("\nmedians over rounds:")
    for row in table:
        print(format_row(row))
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rows, "medians": table}, indent=2))
    return 0


def median_row(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in rows[0] if k != "config"]
    return {"config": name, **{k: h.median(r[k] for r in rows) for k in keys}}


def format_row(row: dict[str, Any]) -> str:
    return (
        f"{row['config']:<22} threshold {row['threshold']:>6,.0f}  {row['req_s']:>8,.0f} req/s  "
        f"CPU {row['cpu_us']:>5.1f} us/req  collections {row['gen0']:,.0f}/{row['gen1']:,.0f}/"
        f"{row['gen2']:,.0f} taking {row['gen0_ms']:,.0f}/{row['gen1_ms']:,.0f}/"
        f"{row['gen2_ms']:,.0f} ms  collector {row['gc_us']:.2f} us/req  errors {row['errors']}"
    )


if __name__ == "__main__":
    sys.exit(main())
