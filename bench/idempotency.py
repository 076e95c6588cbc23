"""Throughput of ``IdempotencyMiddleware`` against the bare app, under uvicorn and wrk.

Usage::

    .venv/bin/python bench/idempotency.py                   # 3 rounds x 8 s per run
    .venv/bin/python bench/idempotency.py --quick           # 1 round x 2 s: a smoke run
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
from dataclasses import dataclass
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
    parser = h.new_parser(__doc__, rounds=3, quick={"rounds": 1, "duration": 2})
    h.add_wrk_options(parser, duration=8)
    h.option(
        parser,
        "--prefill",
        10_000,
        "completed records written to each store before it serves, so that a run "
        "measures a long-running server: memory:// holds at most 10,000",
    )
    h.add_selection(parser, "--configs", CONFIGS, "bare")
    h.add_pin_options(parser, what="the server and wrk")
    h.add_redis_options(parser, used_by="the redis- configurations", store_options=True)
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    h.check_wrk_options(parser, args)
    if args.prefill < 0:
        parser.error("expected --prefill >= 0")
    return args


def check_tools(configs: list[Config]) -> None:
    h.require_executable("wrk")
    modules = ["uvicorn", "uvloop", "httptools", "starlette", "surefoot"]
    if any(c.store == "redis" for c in configs):
        modules.append("redis")
    h.require_modules(modules, "test")


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
    if config.store == "redis":
        if redis is None:
            raise h.BenchError(f"{config.name}: no Redis server")
        store = h.with_query(redis.url, f"prefix={redis_prefix}:", redis_options)
    else:
        store = {
            "bare": "",
            # A long-running server's full store makes room by evicting its oldest completed
            # records; refusing (the default since issue 12) would answer every new key 503.
            "memory": "memory://?on_full=evict",
            "sqlite": f"sqlite:///{workdir / 'idempotency.db'}",
        }[config.store]
    env = {"SUREFOOT_BENCH_STORE": store, "SUREFOOT_BENCH_PREFILL": str(prefill)}
    return h.start_uvicorn(config.name, APP, workdir, env=env, prefix=prefix)


def run_one(config: Config, at: h.ServerRound) -> h.Run:
    args, cpus, redis = at.args, at.cpus, at.redis

    def load(url: str, duration: int, lua: list[str]) -> dict[str, Any]:
        return h.wrk_load(args, cpus, h.POST_LUA, url, duration, lua)

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
            run = h.timed_wrk(
                server,
                redis,
                lambda: load(url, args.duration, [config.mode, nonce, replay_key]),
                f"{config.name} in {args.duration} s",
            )
            if config.mode == "replay":
                check_replay(config, url, replay_key, prime=False)
        finally:
            server.stop()
            if config.store == "redis" and redis is not None:
                redis.delete(redis_prefix)
    return {"round": at.number, "config": config.name, **run}


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    check_tools(configs)
    return h.compare_servers(
        args,
        configs,
        run_one,
        width=14,
        uses_redis=any(c.store == "redis" for c in configs),
        packages=("surefoot", "uvicorn", "uvloop", "httptools", "starlette"),
        software="uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), "
        "starlette {starlette}, {wrk}",
        lines=[
            ("stores", f"a fresh store per run, prefilled with {args.prefill:,} completed records")
        ],
        also=["prefill"],
    )


if __name__ == "__main__":
    sys.exit(h.run(main))
