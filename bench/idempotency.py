"""Throughput of ``IdempotencyMiddleware``, a floor and the PyPI peers against the bare app.

Usage::

    .venv/bin/python bench/idempotency.py                   # 3 rounds x 8 s per run, ~10 min
    .venv/bin/python bench/idempotency.py --quick           # 1 round x 2 s: a smoke run
    .venv/bin/python bench/idempotency.py --json results.json --check
    .venv/bin/python bench/idempotency.py --configs redis-unique,redis-replay   # and bare

Theory of operation:
1. Each configuration (``CONFIGS``) is one uvicorn process (uvloop, httptools, one
   worker, no access log) serving ``bench/_idempotency_app.py`` on 127.0.0.1 and a free
   port; environment variables tell it which middleware and which store to use (see
   there). Each run starts a fresh server (and a fresh SQLite file in a temporary
   directory) whose store is prefilled with ``--prefill`` completed records (a
   long-running server's steady state: a full ``memory://`` store), waits until it
   answers, checks that it behaves, warms it up, loads it with wrk for ``--duration``
   seconds, reads its CPU time and RSS, stops it.
2. The checks, so that no configuration silently measures something else: a POST with a
   new key executes (201, not a replay); but for ``bare``, a second POST with that key is
   a replay (201, ``Idempotent-Replayed: true``, the same body, where a new execution
   would have a new id); in the replay mode the replayed key is checked so before and
   after the timed run. A non-2xx answer during the run is an error and misses the target.
3. Beside surefoot (``memory-``, ``sqlite-``, ``redis-``), on the memory store and Redis:
   ``floor-`` is ``FloorIdempotency``, the least a correct layer can cost (scoped keys,
   raw-body fingerprint, one atomic reserve-or-read, replays; no fencing, events or key
   validation); ``fik-`` is fastapi-idempotency-key and ``aih-`` asgi-idempotency-header,
   each with its own middleware and backend, configured as close to surefoot as they
   allow (each configuration's ``meaning`` says what it does and does not do). fik's
   replays on Redis answer 422 (its 0.1.1 RedisBackend drops the stored fingerprint): it
   has no replay row there, and its new-key row checks for that 422 instead of a replay.
4. Runs are interleaved: every round runs every configuration once, so the ratio of a
   configuration to ``bare`` is taken within a round, and drift of a noisy machine hits
   both sides alike. The table shows medians over rounds.
5. With two or more CPUs and ``taskset``, the server is pinned to one CPU and wrk to
   another, so they do not compete for a core.
6. ``bench/idempotency.lua`` builds the requests: a new key per request ("unique"), or one
   key primed before the timed run, so every timed request is a replay ("replay").
7. The ``redis-`` configurations use a private ``redis-server`` that the script starts
   (``bench/_harness.py``'s ``RedisServer``: a free port, nothing saved, stopped at the
   end) on wrk's CPU, so that the uvicorn process keeps its core as with the in-process
   stores, or the server of ``--redis-url``. Each run writes under a new key prefix (the
   prefill included) and deletes its keys afterwards; the Redis server's CPU time per
   request is reported beside the uvicorn process's.

The targets (ratio to bare; issue 14): new keys at least 0.75 with the memory store, 0.6
with SQLite and 0.5 on Redis; replays at least 1.3 with the memory store and 1.0 on Redis
(SQLite replays keep the earlier 1.0). And ahead of every peer on every row: each surefoot
configuration's req/s over the best of its peers' (same store, same mode) in each round,
above 1.
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
    impl: str  # "bare", "surefoot", "floor", "fik" or "aih" (see _idempotency_app.py)
    store: str  # "bare", "memory", "sqlite" or "redis"
    mode: str  # "unique" or "replay" (see idempotency.lua)
    target: float | None  # minimum ratio to bare
    meaning: str
    #: False: a second POST with the same key is refused as a mismatch (422), see _configs
    replays: bool = True

    @property
    def peer(self) -> bool:
        return self.impl in PEERS


#: the peers' packages, by implementation.
PEERS = {"fik": "fastapi-idempotency-key", "aih": "asgi-idempotency-header"}
#: what each implementation does, beside its configuration's store and mode.
FIK = (
    "fastapi-idempotency-key's IdempotencyMiddleware (replay header renamed "
    "Idempotent-Replayed): locks (409), fingerprints method, path, query and raw body "
    "(422), replays status, headers and body; keys not scoped by client, in-progress "
    "records held for the TTL (no lease)"
)
AIH = (
    "asgi-idempotency-header's IdempotencyHeaderMiddleware: locks (409), no fingerprint, "
    "replays the status and the JSON body re-encoded (no other header); JSON answers "
    "only, keys not scoped by client, the set of keys seen grows without bound"
)
FLOOR = (
    "FloorIdempotency (_idempotency_app.py), the least a correct layer costs: client-scoped "
    "keys, SHA-256 of method, path and raw body, one atomic reserve-or-read, 409 / 422, "
    "replays status, headers and body; no fencing, events or key validation"
)


def _configs(store: str, mode: str, target: float | None, what: str) -> list[Config]:
    """surefoot, the floor and the peers (memory and Redis: what they support) on
    ``store`` in ``mode``; ``what`` says the workload."""
    name = f"{store}-{mode}"
    surefoot = {
        "memory": "IdempotencyMiddleware, memory://?on_full=evict store",
        "sqlite": "IdempotencyMiddleware, sqlite store",
        "redis": "IdempotencyMiddleware, redis store (defaults)",
    }[store]
    configs = [Config(name, "surefoot", store, mode, target, f"{surefoot}; {what}")]
    if store == "sqlite":
        return configs
    records = {
        "memory": "in memory, at most 10,000 records",
        "redis": "on Redis, SET NX GET then SET XX",
    }[store]
    configs.append(
        Config(f"floor-{name}", "floor", store, mode, None, f"{FLOOR}; {records}; {what}")
    )
    peer = f"its {'MemoryBackend' if store == 'memory' else 'RedisBackend'}; {what}"
    configs.append(Config(f"aih-{name}", "aih", store, mode, None, f"{AIH}; {peer}"))
    # fastapi-idempotency-key 0.1.1's RedisBackend stores a completed record without its
    # fingerprint, so a replay on Redis answers 422 (a mismatch) and there is no replay to
    # measure; its new keys are measured, and checked to leave that record behind.
    if store == "memory":
        configs.append(Config(f"fik-{name}", "fik", store, mode, None, f"{FIK}; {peer}"))
    elif mode == "unique":
        broken = "; its replays answer 422 (0.1.1's RedisBackend drops the fingerprint)"
        meaning = f"{FIK}; {peer}{broken}"
        configs.append(Config(f"fik-{name}", "fik", store, mode, None, meaning, replays=False))
    return configs


NEW = "a new key per POST"
REPLAY = "every POST is a replay"
CONFIGS = (
    Config("bare", "bare", "bare", "unique", None, "the app alone; a new key per POST, unread"),
    *_configs("memory", "unique", 0.75, NEW),
    *_configs("memory", "replay", 1.3, REPLAY),
    *_configs("sqlite", "unique", 0.6, NEW),
    *_configs("sqlite", "replay", 1.0, REPLAY),
    *_configs("redis", "unique", 0.5, NEW),
    *_configs("redis", "replay", 1.0, REPLAY),
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
    impls = {c.impl for c in configs}
    peers = {"fik": ["fastapi_idempotency_key"], "aih": ["idempotency_header_middleware"]}
    if any(c.impl == "aih" and c.store == "redis" for c in configs):
        peers["aih"].append("fastapi")  # its RedisBackend answers with FastAPI's JSONResponse
    h.require_modules([m for impl in impls & peers.keys() for m in peers[impl]], "bench")


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
    """One uvicorn process serving the bench app with one implementation and store."""
    store = ""
    if config.store == "redis":
        if redis is None:
            raise h.BenchError(f"{config.name}: no Redis server")
        store = redis.url
        if config.impl == "surefoot":
            store = h.with_query(redis.url, f"prefix={redis_prefix}:", redis_options)
    elif config.impl == "surefoot":
        store = {
            # A long-running server's full store makes room by evicting its oldest completed
            # records; refusing (the default since issue 12) would answer every new key 503.
            "memory": "memory://?on_full=evict",
            "sqlite": f"sqlite:///{workdir / 'idempotency.db'}",
        }[config.store]
    elif config.impl != "bare":
        store = config.store
    env = {
        "SUREFOOT_BENCH_IMPL": config.impl,
        "SUREFOOT_BENCH_STORE": store,
        "SUREFOOT_BENCH_REDIS_PREFIX": redis_prefix,
        "SUREFOOT_BENCH_PREFILL": str(prefill),
    }
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
            # Sanity first: a new key executes (201) and, but for bare, then replays.
            sanity = execute(config, url, f"sanity-{nonce}")
            if not config.replays:
                check_refused(config, url, f"sanity-{nonce}")
            elif config.impl != "bare":
                check_replay(config, url, f"sanity-{nonce}", sanity)
            if config.mode == "replay":
                first = execute(config, url, replay_key)
                check_replay(config, url, replay_key, first)
            if args.warmup > 0:
                load(url, args.warmup, [config.mode, f"w{nonce}", replay_key])
            run = h.timed_wrk(
                server,
                redis,
                lambda: load(url, args.duration, [config.mode, nonce, replay_key]),
                f"{config.name} in {args.duration} s",
            )
            if config.mode == "replay":
                check_replay(config, url, replay_key, first)
        finally:
            server.stop()
            if config.store == "redis" and redis is not None:
                redis.delete(redis_prefix)
    return {"round": at.number, "config": config.name, **run}


def execute(config: Config, url: str, key: str) -> bytes:
    """POST with a new ``key``: it must execute (201); its body."""
    status, headers, body = post(url, key)
    if status != 201 or headers.get("idempotent-replayed"):
        raise h.BenchError(
            f"{config.name}: a new key answered {status} "
            f"(Idempotent-Replayed {headers.get('idempotent-replayed')!r}): {body[:200]!r}"
        )
    return body


def check_replay(config: Config, url: str, key: str, first: bytes) -> None:
    """A second POST with ``key`` is a replay of ``first``: 201, Idempotent-Replayed: true,
    the same body (a new charge would have a new id)."""
    status, headers, body = post(url, key)
    if status != 201 or headers.get("idempotent-replayed") != "true" or body != first:
        raise h.BenchError(
            f"{config.name}: expected a replay of {first[:200]!r} (201, Idempotent-Replayed: "
            f"true), got {status} {headers.get('idempotent-replayed')!r}: {body[:200]!r}"
        )


def check_refused(config: Config, url: str, key: str) -> None:
    """A second POST with ``key`` is refused as a mismatch (422): the key was recorded."""
    status, _, body = post(url, key)
    if status != 422:
        raise h.BenchError(f"{config.name}: expected 422 for a known key, got {status}: {body!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    check_tools(configs)
    peers = {
        c.name: [p.name for p in configs if p.peer and (p.store, p.mode) == (c.store, c.mode)]
        for c in configs
        if c.impl == "surefoot"
    }
    return h.compare_servers(
        args,
        configs,
        run_one,
        width=20,
        uses_redis=any(c.store == "redis" for c in configs),
        packages=("surefoot", *PEERS.values(), "uvicorn", "uvloop", "httptools", "starlette"),
        software="uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), "
        "starlette {starlette}, fastapi-idempotency-key {fastapi-idempotency-key}, "
        "asgi-idempotency-header {asgi-idempotency-header}, {wrk}",
        lines=[
            ("stores", f"a fresh store per run, prefilled with {args.prefill:,} completed records")
        ],
        also=["prefill"],
        peers=peers,
    )


if __name__ == "__main__":
    sys.exit(h.run(main))
