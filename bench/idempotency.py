"""Throughput of ``IdempotencyMiddleware`` against the bare app, under uvicorn and wrk.

Usage::

    .venv/bin/python bench/idempotency.py                   # 3 rounds x 8 s per run
    .venv/bin/python bench/idempotency.py --quick           # 1 round x 2 s: a smoke run
    .venv/bin/python bench/idempotency.py --rounds 1 --duration 2 --warmup 1   # quick look
    .venv/bin/python bench/idempotency.py --json results.json --check
    .venv/bin/python bench/idempotency.py --configs redis-unique,redis-replay   # and bare

Theory of operation:
1. Each configuration (``CONFIGS``) is one uvicorn process (uvloop, httptools, one
   worker, no access log) serving ``bench/_idempotency_app.py`` on 127.0.0.1 and a free
   port; the environment variable ``SUREFOOT_BENCH_STORE`` tells it which store to use.
   Each run starts a fresh server (and a fresh SQLite file in a temporary directory)
   whose store is prefilled with ``--prefill`` completed records (a long-running server's
   steady state: a full ``memory://`` store), waits until it answers, checks that it
   behaves (201, and a replay for the replay key), warms it up, loads it with wrk for
   ``--duration`` seconds, reads its CPU time and RSS, stops it.
2. Runs are interleaved: every round runs every configuration once, so the ratio of a
   configuration to ``bare`` is taken within a round, and drift of a noisy machine hits
   both sides alike. The table shows medians over rounds.
3. With two or more CPUs and ``taskset``, the server is pinned to one CPU and wrk to
   another, so they do not compete for a core.
4. ``bench/idempotency.lua`` builds the requests: a new key per request ("unique"), or one
   key primed before the timed run, so every timed request is a replay ("replay").
5. The ``redis-`` configurations use ``store_from_url("redis://...?prefix=...")`` on a
   private ``redis-server`` that the script starts (``bench/_harness.py``'s
   ``RedisServer``: a free port, nothing saved, stopped at the end) on wrk's CPU, so that
   the uvicorn process keeps its core as with the in-process stores, or on the server of
   ``--redis-url``. Each run writes under a new key prefix (the prefill included) and
   deletes its keys afterwards; the Redis server's CPU time per request is reported
   beside the uvicorn process's.

The targets (ratio to bare, from the issues): unique-key POST at least 0.8 with the memory
store, 0.6 with SQLite and 0.5 on Redis; replays at least 1.0 with the memory store and
SQLite, 0.5 on Redis.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _harness as h

APP = "_idempotency_app:app"
BODY = b'{"amount":1000,"currency":"eur","customer":"cus_4QFJOjw2pOmAGJ","description":"bench"}'


@dataclass(frozen=True)
class Config:
    name: str
    store: str  # "bare", "memory", "sqlite" or "redis"
    mode: str  # "unique" or "replay" (see idempotency.lua)
    target: float | None  # minimum ratio to bare
    meaning: str


CONFIGS = (
    Config("bare", "bare", "unique", None, "the app alone; POST /charges with a new key each"),
    Config("memory-unique", "memory", "unique", 0.8, "memory:// store; a new key per POST"),
    Config("sqlite-unique", "sqlite", "unique", 0.6, "sqlite store; a new key per POST"),
    Config("memory-replay", "memory", "replay", 1.0, "memory:// store; every POST is a replay"),
    Config("sqlite-replay", "sqlite", "replay", 1.0, "sqlite store; every POST is a replay"),
    Config("redis-unique", "redis", "unique", 0.5, "redis store (defaults); a new key per POST"),
    Config("redis-replay", "redis", "replay", 0.5, "redis store; every POST is a replay"),
)


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark IdempotencyMiddleware (memory and SQLite stores) against the "
        "bare Starlette app under uvicorn, loaded by wrk.",
    )
    h.add_rounds(parser, 3)
    h.add_wrk_options(parser, duration=8)
    h.add_quick(parser, rounds=1, duration=2, warmup=1)
    parser.add_argument(
        "--prefill",
        type=int,
        default=10_000,
        help="completed records written to each store before it serves, so that a run "
        "measures a long-running server: memory:// holds at most 10,000 (default: 10000)",
    )
    parser.add_argument(
        "--configs",
        default=",".join(c.name for c in CONFIGS),
        help="comma-separated configurations to run; bare is always run (default: all)",
    )
    h.add_pin_options(parser, what="the server and wrk")
    h.add_redis_options(parser, used_by="the redis- configurations")
    parser.add_argument(
        "--redis-options",
        default="",
        help="query options added to surefoot's store URL, as in 'timeout=0.5&coalesce=false' "
        "(default: none, the store's defaults)",
    )
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    names = h.names(parser, "--configs", args.configs, (c.name for c in CONFIGS))
    h.check_wrk_options(parser, args)
    if args.prefill < 0:
        parser.error("expected --prefill >= 0")
    args.configs = [c for c in CONFIGS if c.name == "bare" or c.name in names]
    return args


def check_tools(configs: list[Config]) -> None:
    h.require_executable("wrk")
    modules = ["uvicorn", "uvloop", "httptools", "starlette", "surefoot"]
    if any(c.store == "redis" for c in configs):
        modules.append("redis")
    h.require_modules(modules, "test")


def environment() -> dict[str, Any]:
    return h.environment(
        ("surefoot", "uvicorn", "uvloop", "httptools", "starlette"), {"wrk": ["wrk", "--version"]}
    )


# -- one run --------------------------------------------------------------------------------


def post(url: str, key: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    return h.http(url, "POST", BODY, headers)


def start_server(
    config: Config,
    workdir: Path,
    prefix: list[str],
    prefill: int,
    redis: h.BenchRedis | None,
    redis_prefix: str,
    redis_options: str = "",
) -> h.Child:
    """One uvicorn process serving the bench app with one store configuration."""
    if config.store == "redis" and redis is None:
        raise h.BenchError(f"{config.name}: no Redis server")
    store = {
        "bare": "",
        "memory": "memory://",
        "sqlite": f"sqlite:///{workdir / 'idempotency.db'}",
        "redis": ""
        if redis is None
        else h.with_query(redis.url, f"prefix={redis_prefix}:", redis_options),
    }[config.store]
    env = {"SUREFOOT_BENCH_STORE": store, "SUREFOOT_BENCH_PREFILL": str(prefill)}
    return h.start_uvicorn(config.name, APP, workdir, env=env, prefix=prefix)


def run_one(
    args: argparse.Namespace,
    config: Config,
    cpus: h.CpuPlan,
    round_no: int,
    redis: h.BenchRedis | None,
) -> dict[str, Any]:
    def load(url: str, duration: int, lua: list[str]) -> dict[str, Any]:
        return h.wrk(
            h.POST_LUA,
            url,
            threads=args.threads,
            connections=args.connections,
            duration=duration,
            args=lua,
            prefix=cpus.load,
        )

    # Redis CPU is read for every configuration: what the others cost it (nothing) shows.
    redis_prefix = f"sfbench-{secrets.token_hex(6)}"  # this server's keys on Redis
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-") as tmp:
        server = start_server(
            config, Path(tmp), cpus.server, args.prefill, redis, redis_prefix, args.redis_options
        )
        try:
            server.wait_http(server.base + "/health", timeout=120.0)
            url = server.base + "/charges"
            nonce = secrets.token_hex(4)
            replay_key = f"replay-{nonce}"
            # Sanity first: a protected POST answers 201; the replay key then replays.
            status, _, body = post(url, f"sanity-{nonce}")
            if status != 201:
                raise h.BenchError(f"{config.name}: POST answered {status}: {body[:200]!r}")
            if config.mode == "replay":
                check_replay(config, url, replay_key, prime=True)
            if args.warmup > 0:
                load(url, args.warmup, [config.mode, f"w{nonce}", replay_key])
            cpu_before = server.cpu_seconds()
            redis_before = redis.cpu_seconds() if redis else 0.0
            result = load(url, args.duration, [config.mode, nonce, replay_key])
            cpu = server.cpu_seconds() - cpu_before
            redis_cpu = redis.cpu_seconds() - redis_before if redis else None
            memory = server.memory()
            if config.mode == "replay":
                check_replay(config, url, replay_key, prime=False)
        finally:
            server.stop()
            if config.store == "redis" and redis is not None:
                redis.delete(redis_prefix)
    figures = h.wrk_figures(result, f"{config.name} in {args.duration} s")
    requests = figures["requests"]
    return {
        "round": round_no,
        "config": config.name,
        **figures,
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_request": cpu / requests * 1e6,
        "redis_cpu_us_per_request": None if redis_cpu is None else redis_cpu / requests * 1e6,
        "rss_mib": memory.get("VmRSS"),
        "peak_rss_mib": memory.get("VmHWM"),
    }


def check_replay(config: Config, url: str, key: str, *, prime: bool) -> None:
    """Prime ``key`` (first POST executes) and check that a second POST is a replay."""
    if prime:
        status, _, body = post(url, key)
        if status != 201:
            raise h.BenchError(f"{config.name}: priming POST answered {status}: {body[:200]!r}")
    status, headers, body = post(url, key)
    if status != 201 or headers.get("idempotent-replayed") != "true":
        raise h.BenchError(
            f"{config.name}: expected a replay (201, Idempotent-Replayed: true), got {status} "
            f"{headers.get('idempotent-replayed')!r}: {body[:200]!r}"
        )


# -- report ---------------------------------------------------------------------------------


def summarize(configs: list[Config], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bare = h.by_round(runs, config="bare")
    rows = []
    for config in configs:
        mine = h.by_round(runs, config=config.name)
        ratio = h.Spread.range(h.paired(mine, bare, lambda r, b: r["rps"] / b["rps"]))
        cpu_ratio = h.median(
            h.paired(mine, bare, lambda r, b: b["cpu_us_per_request"] / r["cpu_us_per_request"])
        )
        errors = sum(r["error_count"] for r in mine.values())
        rows.append(
            {
                "config": config.name,
                "meaning": config.meaning,
                "rps": h.median(r["rps"] for r in mine.values()),
                "ratio": ratio.median,
                "ratio_min": ratio.low,
                "ratio_max": ratio.high,
                "target": config.target,
                # A failed request is cheap: a target is met only if every answer was 2xx.
                "met": None
                if config.target is None
                else ratio.median >= config.target and not errors,
                "cpu_us_per_request": h.median(r["cpu_us_per_request"] for r in mine.values()),
                "cpu_ratio": cpu_ratio,
                "redis_cpu_us_per_request": h.median_known(
                    r["redis_cpu_us_per_request"] for r in mine.values()
                ),
                "server_cpu_share": h.median(
                    r["cpu_seconds"] / r["seconds"] for r in mine.values()
                ),
                "p99_ms": h.median(r["latency_ms"]["p99"] for r in mine.values()),
                "rss_mib": h.median_known(r["rss_mib"] for r in mine.values()),
                "errors": errors,
            }
        )
    return rows


COLUMNS = (
    h.Column("configuration", "<14"), h.Column("req/s", ">7"), h.Column("ratio", ">5"),
    h.Column("(min-max)", ">9"), h.Column("target", ">6"), h.Column("met", ">3"),
    h.Column("CPU us/req", ">10"), h.Column("CPU ratio", ">9"), h.Column("Redis us", ">8"),
    h.Column("p99 ms", ">7"), h.Column("RSS MiB", ">7"), h.Column("errors", ">6"),
)  # fmt: skip


def print_report(
    args: argparse.Namespace,
    context: dict[str, Any],
    runs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
) -> None:
    env = context["environment"]
    print()
    print(f"command:  {context['command']}")
    print(
        f"load:     wrk {args.threads} threads, {args.connections} connections, "
        f"{args.duration} s per run after {args.warmup} s warm-up, {args.rounds} round(s), "
        "configurations interleaved"
    )
    print(f"stores:   a fresh store per run, prefilled with {args.prefill:,} completed records")
    print(f"redis:    {context['redis']}")
    print(f"cpus:     {context['cpus']}")
    print(h.machine_line(context))
    print(
        f"software: Python {env['python']}, surefoot {env['surefoot']} ({env['git']}), "
        f"uvicorn {env['uvicorn']} (uvloop {env['uvloop']}, httptools {env['httptools']}), "
        f"starlette {env['starlette']}, {env['wrk']}"
    )
    print()
    cells = [
        [
            row["config"],
            f"{row['rps']:,.0f}",
            f"{row['ratio']:.2f}",
            f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}",
            h.target_text(row["target"], ">="),
            h.met_text(row["met"]),
            f"{row['cpu_us_per_request']:,.0f}",
            f"{row['cpu_ratio']:.2f}",
            h.num(row["redis_cpu_us_per_request"], ",.1f"),
            f"{row['p99_ms']:.1f}",
            h.num(row["rss_mib"], ".1f", "?"),
            str(row["errors"]),
        ]
        for row in rows
    ]
    print("\n".join(h.text_table(COLUMNS, cells)))
    print()
    print("req/s, CPU us/req, p99, RSS: median over rounds.")
    print("ratio: median of the per-round req/s ratios to bare (min-max: their spread);")
    print("       this is the figure the targets apply to.")
    print("CPU us/req: server CPU time (user + system) per request during the timed run;")
    print("CPU ratio: bare's CPU us/req over this one's, the median per round: the req/s ratio")
    print("       to expect with a whole idle core, less sensitive to other load on the machine.")
    print("Redis us: Redis server CPU time per request during the timed run (all configurations")
    print("       run while it is up: near 0 for those that do not use it).")
    print("RSS: server resident memory after the timed run (VmRSS).")
    print("errors: wrk socket errors, timeouts (over 5 s) and non-2xx answers, all rounds;")
    print("       a configuration with errors does not meet its target.")
    print()
    h.print_wrk_rounds(runs, [row["config"] for row in rows], args.rounds, 16)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    check_tools(configs)
    cpus = h.split_cpus(args.no_pin)
    redis: h.BenchRedis | None = None
    if any(c.store == "redis" for c in configs):
        # On wrk's CPU: the uvicorn process keeps its core, as with an in-process store.
        redis = h.BenchRedis(args.redis_url, cpus.load, args.redis_server)
    context: dict[str, Any] = {
        "command": h.command_line(argv),
        "cpus": cpus.sentence,
        "redis": ("not used" if redis is None else redis.where(cpus.load))
        + f"; store options: {args.redis_options or 'the defaults'}",
        "environment": environment(),
        "load_before": h.load_average(),
    }
    total = args.rounds * len(configs) * (args.duration + args.warmup)
    print(
        f"{len(configs)} configurations x {args.rounds} rounds, about {total} s of load; "
        f"{cpus.sentence}",
        flush=True,
    )
    runs = []
    for round_no in range(1, args.rounds + 1):
        for config in configs:
            run = run_one(args, config, cpus, round_no, redis)
            runs.append(run)
            print(
                f"  round {round_no} {config.name:<14} {run['rps']:>9,.0f} req/s"
                f"  {run['cpu_us_per_request']:>6,.0f} CPU us/req"
                f"  p99 {run['latency_ms']['p99']:.1f} ms  errors {run['error_count']}",
                flush=True,
            )
    context["load_after"] = h.load_average()
    if redis is not None:
        redis.stop()
    rows = summarize(configs, runs)
    print_report(args, context, runs, rows)
    if args.json:
        settings = ("rounds", "duration", "warmup", "connections", "threads", "prefill")
        h.write_json(
            args.json,
            {
                **context,
                "settings": {name: getattr(args, name) for name in settings},
                "configs": [asdict(c) for c in configs],
                "summary": rows,
                "runs": runs,
            },
        )
    missed = [row["config"] for row in rows if row["met"] is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(h.run(main))
