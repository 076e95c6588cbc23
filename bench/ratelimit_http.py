"""Throughput of ``RateLimitMiddleware``, a floor and the PyPI peers against the bare app.

Usage::

    .venv/bin/python bench/ratelimit_http.py                  # 3 rounds x 8 s per run, ~7 min
    .venv/bin/python bench/ratelimit_http.py --quick          # 1 round x 2 s: a smoke run
    .venv/bin/python bench/ratelimit_http.py --json results.json --check
    .venv/bin/python bench/ratelimit_http.py --configs surefoot,surefoot-redis   # and bare

Theory of operation:
1. Each configuration (``CONFIGS``) is one uvicorn process (uvloop, httptools, one
   worker, no access log) serving ``bench/_ratelimit_app.py`` on 127.0.0.1 and a free
   port; the environment variable ``SUREFOOT_BENCH_RATELIMIT`` tells it which limiter to
   put in front of ``GET /hello`` (a 12-byte text answer). The limit, 1,000,000 per
   minute per client, is never reached: every request is admitted, counted and (for
   surefoot and the floor) given its ``RateLimit`` header fields.
2. Before the rounds, each limited configuration is started once with a limit of 3 per
   minute and must answer 200, 200, 200, then 429: the limiter does limit.
3. Each run starts a fresh server, waits until its port accepts connections, checks
   one GET (200, the body, and surefoot's and the floor's ``RateLimit`` field), warms
   it up, loads it with wrk for ``--duration`` seconds, reads its CPU time and RSS,
   checks one GET again, stops it.
4. Runs are interleaved: every round runs every configuration once, so the ratio of a
   configuration to ``bare`` is taken within a round, and drift of a noisy machine hits
   both sides alike. The table shows medians over rounds.
5. With two or more CPUs and ``taskset``, the server is pinned to one CPU and wrk to
   another, so they do not compete for a core.
6. The ``-redis`` configurations keep their counters on Redis: a private ``redis-server``
   that the script starts (``bench/_harness.py``'s ``RedisServer``: a free port,
   nothing saved, stopped at the end) on wrk's CPU, so that the uvicorn process keeps its
   core to itself as with an in-process store, or the server of ``--redis-url``. Each
   server start gets a new key prefix (so the 3/minute check and every run count from
   zero) and its keys are deleted after the run; the Redis server's CPU time per request
   is reported beside the uvicorn process's.
7. Beside surefoot: ``floor``, ``FloorLimiter``, the least a correct limiter can cost
   (a fixed window per client address, 429 and the ``RateLimit`` fields; on Redis one
   EVALSHA per request); the peers slowapi (Starlette middleware) and throttled-py (its
   FastAPI integration, so on a FastAPI app: the ``fastapi`` row is that app without a
   limiter, to tell FastAPI's cost from the limiter's). Each configuration's ``meaning``
   says what it does and does not do.

The targets (ratio to bare; issue 14): surefoot (its defaults) at least 0.85 with the
memory store, at least 0.7 on Redis; and ahead of every peer (its req/s over the best of
its peers' on the same kind of store in each round, above 1).
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

APP = "_ratelimit_app:app"
PATH = "/hello"
BODY = b"hello, world"
CHECK_LIMIT = "3/minute"


@dataclass(frozen=True)
class Config:
    name: str
    mode: str  # SUREFOOT_BENCH_RATELIMIT, see _ratelimit_app.py
    target: float | None  # minimum ratio to bare
    meaning: str
    rival: str | None = None  # a peer: the surefoot configuration that must be ahead of it

    @property
    def redis(self) -> bool:
        """Whether the configuration keeps its counters on Redis."""
        return self.mode.endswith("-redis")


FLOOR = (
    "FloorLimiter (_ratelimit_app.py), the least a correct limiter costs: one fixed window "
    "per client address, 429 with Retry-After, RateLimit-Policy and RateLimit on every answer"
)
THROTTLED = (
    "throttled-py's FastAPI integration: a FastAPI app, Limiter('1000000/minute', "
    "using='sliding_window', key_func=get_remote_address), @limiter.limit() on the route, "
    "its 429 handler; no RateLimit fields (its RateLimitMiddleware that adds them is a "
    "BaseHTTPMiddleware)"
)
CONFIGS = (
    Config("bare", "bare", None, "the Starlette app alone"),
    Config("floor", "floor", None, f"{FLOOR}; in memory (a dict of counts per window)"),
    Config(
        "surefoot",
        "surefoot",
        0.85,
        "RateLimitMiddleware, MemoryStore, one 1000000/minute policy (sliding_window), "
        "default headers and LoggingHook",
    ),
    Config(
        "surefoot-nohooks",
        "surefoot-nohooks",
        None,
        "the same with hooks=[]: no events built (what the default LoggingHook costs)",
    ),
    Config(
        "slowapi",
        "slowapi",
        None,
        "slowapi Limiter(default_limits=['1000000/minute']) and SlowAPIMiddleware "
        "(BaseHTTPMiddleware), limits' memory storage, fixed window, no headers",
        rival="surefoot",
    ),
    Config(
        "slowapi-asgi",
        "slowapi-asgi",
        None,
        "the same with SlowAPIASGIMiddleware, slowapi's pure ASGI middleware",
        rival="surefoot",
    ),
    Config(
        "fastapi",
        "fastapi",
        None,
        "the same endpoint in a FastAPI app, no limiter: what FastAPI costs beside Starlette, "
        "which the throttled rows include",
    ),
    Config("throttled", "throttled", None, f"{THROTTLED}; its MemoryStore", rival="surefoot"),
    Config("floor-redis", "floor-redis", None, f"{FLOOR}; on Redis, one EVALSHA per request"),
    Config(
        "surefoot-redis",
        "surefoot-redis",
        0.7,
        "the same as surefoot on Redis: store_from_url('redis://...?prefix=...'), RedisStore "
        "with its defaults (clock=server, coalescing on)",
    ),
    Config(
        "slowapi-asgi-redis",
        "slowapi-asgi-redis",
        None,
        "slowapi-asgi on Redis: storage_uri='redis://...', limits' sync Redis storage",
        rival="surefoot-redis",
    ),
    Config(
        "throttled-redis",
        "throttled-redis",
        None,
        f"{THROTTLED}; its RedisStore (redis.asyncio)",
        rival="surefoot-redis",
    ),
)


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=3, quick={"rounds": 1, "duration": 2})
    h.add_wrk_options(parser, duration=8)
    h.add_selection(parser, "--configs", CONFIGS, "bare")
    h.add_pin_options(parser, what="the server and wrk")
    parser.add_argument(
        "--no-limit-check",
        action="store_true",
        help="skip the check that each limiter rejects past a 3/minute limit",
    )
    h.add_redis_options(parser, used_by="the -redis configurations", store_options=True)
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    h.check_wrk_options(parser, args)
    return args


def check_tools(configs: list[Config]) -> None:
    h.require_executable("wrk")
    modules = ["uvicorn", "uvloop", "httptools", "starlette", "surefoot"]
    if any(c.mode.startswith("slowapi") for c in configs):
        modules.append("slowapi")
    if any(c.mode in ("fastapi", "throttled", "throttled-redis") for c in configs):
        modules.append("fastapi")
    if any(c.mode.startswith("throttled") for c in configs):
        modules.append("throttled")
    if any(c.redis for c in configs):
        modules.append("redis")
    h.require_modules(modules, "bench")


# -- one run --------------------------------------------------------------------------------


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    return h.http(url)


def start_server(
    config: Config,
    workdir: Path,
    prefix: list[str],
    redis: h.BenchRedis | None,
    redis_prefix: str,
    limit: str | None = None,
    redis_options: str = "",
) -> h.Child:
    """One uvicorn process serving the bench app with one limiter configuration."""
    env = {"SUREFOOT_BENCH_RATELIMIT": config.mode}
    if config.redis:
        if redis is None:
            raise h.BenchError(f"{config.name}: no Redis server")
        env["SUREFOOT_BENCH_REDIS_URL"] = redis.url
        env["SUREFOOT_BENCH_REDIS_PREFIX"] = redis_prefix
        env["SUREFOOT_BENCH_REDIS_OPTIONS"] = redis_options
    if limit is not None:
        env["SUREFOOT_BENCH_LIMIT"] = limit
    server = h.start_uvicorn(config.name, APP, workdir, env=env, prefix=prefix)
    # A TCP connection, not a request: a request would count against the limit.
    server.wait_listening()
    return server


def check_limiting(
    config: Config, server_prefix: list[str], redis: h.BenchRedis | None, redis_options: str
) -> None:
    """Serve with a 3/minute limit: the fourth GET must be refused with 429."""
    redis_prefix = f"sfbench-{secrets.token_hex(6)}"
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-") as tmp:
        server = start_server(
            config, Path(tmp), server_prefix, redis, redis_prefix, CHECK_LIMIT, redis_options
        )
        try:
            statuses = [get(server.base + PATH)[0] for _ in range(4)]
        finally:
            server.stop()
            delete_keys(config, redis, redis_prefix)
    if statuses != [200, 200, 200, 429]:
        raise h.BenchError(
            f"{config.name}: with a limit of {CHECK_LIMIT}, four GETs answered {statuses}, "
            "expected [200, 200, 200, 429]: the limiter is not limiting"
        )


def check_answer(config: Config, url: str) -> None:
    status, headers, body = get(url)
    if status != 200 or body != BODY:
        raise h.BenchError(f"{config.name}: GET answered {status}: {body[:200]!r}")
    if config.mode.startswith(("surefoot", "floor")) and "ratelimit" not in headers:
        raise h.BenchError(f"{config.name}: no RateLimit field in the answer: {headers}")


def delete_keys(config: Config, redis: h.BenchRedis | None, prefix: str) -> None:
    """Delete a Redis configuration's keys: under ``prefix``, but throttled-py's, whose
    FastAPI Limiter takes no prefix: theirs have it in the principal."""
    if config.redis and redis is not None:
        redis.delete(f"throttled:*{prefix}" if config.mode == "throttled-redis" else prefix)


def run_one(config: Config, at: h.ServerRound) -> h.Run:
    args, cpus, redis = at.args, at.cpus, at.redis

    def load(url: str, duration: int) -> dict[str, Any]:
        return h.wrk_load(args, cpus, h.GET_LUA, url, duration)

    redis_prefix = f"sfbench-{secrets.token_hex(6)}"  # this server's keys on Redis
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-") as tmp:
        server = start_server(
            config, Path(tmp), cpus.server, redis, redis_prefix, None, args.redis_options
        )
        try:
            url = server.base + PATH
            check_answer(config, url)
            if args.warmup > 0:
                load(url, args.warmup)
            run = h.timed_wrk(
                server,
                redis,
                lambda: load(url, args.duration),
                f"{config.name} in {args.duration} s",
            )
            check_answer(config, url)
        finally:
            server.stop()
            delete_keys(config, redis, redis_prefix)
    return {"round": at.number, "config": config.name, **run}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    check_tools(configs)

    def check_all(cpus: h.CpuPlan, redis: h.BenchRedis | None) -> str:
        if args.no_limit_check:
            return "not checked (--no-limit-check)"
        limited = [c for c in configs if c.mode not in ("bare", "fastapi")]
        for config in limited:
            check_limiting(config, cpus.server, redis, args.redis_options)
        names = ", ".join(c.name for c in limited)
        return f"checked: with {CHECK_LIMIT}, {names} answered 200, 200, 200, 429"

    packages = (
        "surefoot", "slowapi", "limits", "throttled-py", "fastapi", "uvicorn", "uvloop",
        "httptools", "starlette",
    )  # fmt: skip
    peers = {
        c.name: [p.name for p in configs if p.rival == c.name]
        for c in configs
        if c.mode.startswith("surefoot")
    }
    return h.compare_servers(
        args,
        configs,
        run_one,
        width=18,
        uses_redis=any(c.redis for c in configs),
        packages=packages,
        software="slowapi {slowapi} (limits {limits}), throttled-py {throttled-py}, "
        "fastapi {fastapi}, uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), "
        "starlette {starlette}, {wrk}",
        request=f"GET {PATH}, ",
        check=h.Check("limiting", "limit_check", check_all),
        peers=peers,
    )


if __name__ == "__main__":
    sys.exit(h.run(main))
