"""Throughput of the WSGI middlewares under gunicorn's sync workers, beside the bare apps and
Flask-Limiter, django-ratelimit and DRF's throttles, under wrk.

Usage::

    .venv/bin/python bench/wsgi.py                  # 4 rounds x 5 s per run, about 11 min
    .venv/bin/python bench/wsgi.py --quick          # 1 round x 2 s: a smoke run, a few min
    .venv/bin/python bench/wsgi.py --json results.json --check
    .venv/bin/python bench/wsgi.py --configs flask+surefoot-redis,flask-limiter-redis
    .venv/bin/python bench/wsgi.py --profile flask+surefoot-redis   # cProfile, in process

Theory of operation:
1. Each configuration (``CONFIGS``) is one gunicorn (``--worker-class sync --workers 2``,
   no access log) serving ``bench/_wsgi_app.py`` on 127.0.0.1 and a free port; the
   environment variable ``SUREFOOT_BENCH_WSGI`` names the configuration, which that module
   builds: a Flask app (``GET /hello``, a small JSON document; ``POST /charges``, a small
   JSON body in, 201 and a new charge out), a Django app (the same ``GET /hello`` from a
   plain view, no middleware) or a Django REST framework ``APIView``, bare or behind a
   limiter or ``IdempotencyMiddleware``. gunicorn imports the app in each worker after the
   fork, so every worker has its own store client; ``memory`` stores (surefoot's
   ``memory://``, Flask-Limiter's ``memory://``, Django's ``LocMemCache``) count per worker.
2. The rate limit is one policy of one limit, 1,000,000 per minute per client address,
   never reached: every request is checked, counted and admitted. surefoot's
   ``RateLimitMiddleware`` runs with its defaults (sliding window, RateLimit header
   fields, LoggingHook); each peer with its own defaults (Flask-Limiter: fixed window, no
   header fields; django-ratelimit: ``key="ip"``, ``block=True``; DRF:
   ``AnonRateThrottle``, a list of timestamps per client in the cache).
3. Before the rounds, each limited configuration is started once with one worker and a
   limit of 3 per minute, and must answer 200, 200, 200, then refuse (429; django-ratelimit
   403, its default): the limiter does limit (``--no-limit-check`` skips it).
4. Each run starts a fresh gunicorn (a new SQLite file, a new Redis key prefix), checks its
   answer (GET: 200, the document, a RateLimit field where surefoot limits; POST: a new
   key executes, 201, and the same key again is a replay, ``Idempotent-Replayed: true``
   and the same body, where an idempotency middleware runs), warms it up for
   ``--warmup`` seconds, loads it with wrk for ``--duration`` seconds (GET: wrk's one
   pre-built request; POST: ``bench/idempotency.lua``, a new ``Idempotency-Key`` per
   request), reads gunicorn's CPU time (master and workers), checks the answer again,
   stops it and deletes its Redis keys. gunicorn's sync workers close the connection after
   every answer, so wrk connects for every request, as a client of a sync worker does.
5. Runs are interleaved: every round runs every configuration once, group by group (a bare
   app and the configurations measured against it: ``flask`` for Flask GETs, ``flask-post``
   for POSTs, ``django`` for django-ratelimit and surefoot around Django, ``drf`` for the
   DRF throttles), the bare app first and last of its group, the groups and their members
   in an order rotated by one each round. Each configuration's ratio is taken within a
   round to the mean of its bare app's two runs around it (so to runs a minute or two
   apart on a shared machine whose load moves), and the table shows medians over rounds,
   with the least and greatest ratio.
6. Ahead of every peer: each surefoot rate-limit row's ratio to its bare app over the best
   of its peers' ratios to theirs (same kind of store: memory beside Flask-Limiter's memory
   and Django's locmem, Redis beside Redis), round by round, above 1. Comparing ratios
   compares what each layer costs its own framework, so a Flask row can be set beside a
   Django one.
7. With two or more CPUs and ``taskset``, gunicorn (all its processes) is pinned to one
   CPU, wrk and a private ``redis-server`` (or the server of ``--redis-url``, not pinned)
   to another.
8. surefoot's source files are hashed at the start and at the end (``bench/gateway.py``):
   a tree edited during the run is reported.
9. After the rounds (``--in-process-rounds``, 0 for none), each app is called
   ``--in-process-requests`` times in a process of its own on gunicorn's CPU, without
   gunicorn (``--profile CONFIG --timing-only``): its CPU time per request, and what it adds
   to its bare app's in the same round, a figure the machine's load moves much less than
   req/s.

The targets (issue 23): surefoot's WSGI rate limiting on Redis at least 0.8x its bare app's
req/s, and every surefoot rate-limit row ahead of every peer on the same kind of store. A
configuration with errors (wrk's, or any answer but a 2xx) misses its target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _harness as h

import gateway as g

APP = "_wsgi_app:app"
GET_PATH = "/hello"
POST_PATH = "/charges"
ANSWER = {"id": "item_1", "name": "bench", "price": 1000}
CHECK_LIMIT = "3/minute"
LIMIT = "1000000/minute"
#: The target of surefoot's rate limiting on Redis, over its bare app's req/s.
REDIS_TARGET = 0.8

# -- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str  # also SUREFOOT_BENCH_WSGI, but for flask-post (the flask app, POSTed)
    kind: str  # "bare", "surefoot" (rate limit), "peer" (rate limit), "idempotency", "floor"
    store: str | None  # "memory", "sqlite", "redis"; None: no store
    baseline: str | None  # the bare app its ratio is to
    target: float | None  # least ratio of req/s to the baseline's
    meaning: str

    @property
    def mode(self) -> str:
        return "flask" if self.name == "flask-post" else self.name

    @property
    def post(self) -> bool:
        return self.baseline == "flask-post" or self.name == "flask-post"

    @property
    def refuses_with(self) -> int:
        return 403 if self.name.startswith("django-ratelimit") else 429


SUREFOOT_RL = (
    "surefoot.wsgi.RateLimitMiddleware around {app}, one policy (1000000/minute, its default "
    "sliding window), default principal (the client address), headers and LoggingHook"
)
DJANGO_CACHE = {
    "memory": "Django's LocMemCache (per worker)",
    "redis": "Django's RedisCache (django.core.cache.backends.redis)",
}
CONFIGS = (
    Config("flask", "bare", None, None, None, "Flask 'GET /hello', a small JSON document"),
    Config(
        "flask+surefoot-memory",
        "surefoot",
        "memory",
        "flask",
        None,
        SUREFOOT_RL.format(app="app.wsgi_app") + "; sync_store_from_url('memory://') (per worker)",
    ),
    Config(
        "flask+surefoot-sqlite",
        "surefoot",
        "sqlite",
        "flask",
        None,
        SUREFOOT_RL.format(app="app.wsgi_app") + "; sync_store_from_url('sqlite:///FILE'), "
        "one file shared by the workers",
    ),
    Config(
        "flask+surefoot-redis",
        "surefoot",
        "redis",
        "flask",
        REDIS_TARGET,
        SUREFOOT_RL.format(app="app.wsgi_app") + "; sync_store_from_url('redis://...?prefix=...'), "
        "SyncRedisStore with its defaults",
    ),
    Config(
        "flask+redis-ping",
        "floor",
        "redis",
        "flask",
        None,
        "the Flask app behind one PING to Redis per request on a raw socket of the worker's, "
        "nothing else: the floor of any layer that asks Redis once per request",
    ),
    Config(
        "flask-limiter-memory",
        "peer",
        "memory",
        "flask",
        None,
        "Flask-Limiter: Limiter(get_remote_address, app=app, default_limits=['1000000/minute'], "
        "storage_uri='memory://'), its defaults otherwise (fixed window, no header fields)",
    ),
    Config(
        "flask-limiter-redis",
        "peer",
        "redis",
        "flask",
        None,
        "the same with storage_uri='redis://...' (limits' Redis storage, redis-py)",
    ),
    Config(
        "django",
        "bare",
        None,
        None,
        None,
        "Django 'GET /hello' from a plain view (JsonResponse), MIDDLEWARE = [], no database",
    ),
    Config(
        "django+surefoot-memory",
        "surefoot",
        "memory",
        "django",
        None,
        SUREFOOT_RL.format(app="Django's WSGI handler") + "; memory:// (per worker)",
    ),
    Config(
        "django+surefoot-redis",
        "surefoot",
        "redis",
        "django",
        REDIS_TARGET,
        SUREFOOT_RL.format(app="Django's WSGI handler") + "; SyncRedisStore",
    ),
    Config(
        "django-ratelimit-locmem",
        "peer",
        "memory",
        "django",
        None,
        "django-ratelimit: the view decorated with @ratelimit(key='ip', rate='1000000/m', "
        f"block=True); {DJANGO_CACHE['memory']}",
    ),
    Config(
        "django-ratelimit-redis",
        "peer",
        "redis",
        "django",
        None,
        f"the same on {DJANGO_CACHE['redis']}",
    ),
    Config(
        "drf",
        "bare",
        None,
        None,
        None,
        "a DRF APIView answering the same document (JSONRenderer), no authentication, "
        "permission or throttle classes",
    ),
    Config(
        "drf-throttle-locmem",
        "peer",
        "memory",
        "drf",
        None,
        "that view with throttle_classes = [AnonRateThrottle] (rate = '1000000/minute'); "
        f"{DJANGO_CACHE['memory']}",
    ),
    Config(
        "drf-throttle-redis",
        "peer",
        "redis",
        "drf",
        None,
        f"the same on {DJANGO_CACHE['redis']}",
    ),
    Config(
        "flask-post",
        "bare",
        None,
        None,
        None,
        "the Flask app's 'POST /charges', each POST with a new Idempotency-Key nothing reads",
    ),
    Config(
        "flask+idempotency-sqlite",
        "idempotency",
        "sqlite",
        "flask-post",
        None,
        "surefoot.wsgi.IdempotencyMiddleware around app.wsgi_app, its default policy without "
        "a quota per principal (max_records_per_principal=None: wrk is one client); "
        "sync_store_from_url('sqlite:///FILE'); every POST a new key: reserve, execute, store",
    ),
    Config(
        "flask+idempotency-redis",
        "idempotency",
        "redis",
        "flask-post",
        None,
        "the same on sync_store_from_url('redis://...?prefix=...')",
    ),
)


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(
        __doc__,
        rounds=4,
        quick={"rounds": 1, "duration": 2, "in_process_rounds": 1},
    )
    h.option(parser, "--duration", 5, "seconds of each timed run")
    h.option(parser, "--warmup", 1, "seconds of untimed load before each timed run, 0 for none")
    h.option(parser, "--connections", 4, "wrk connections")
    h.option(parser, "--threads", 1, "wrk threads")
    h.option(parser, "--workers", 2, "gunicorn sync workers")
    h.add_selection(parser, "--configs", CONFIGS)
    h.add_pin_options(parser, what="gunicorn, and wrk with Redis,")
    parser.add_argument(
        "--no-limit-check",
        action="store_true",
        help="skip the check that each limiter refuses past a 3/minute limit",
    )
    h.add_redis_options(parser, used_by="the -redis configurations")
    parser.add_argument(
        "--profile",
        metavar="CONFIG",
        help="instead of the benchmark: call CONFIG's app in this process under cProfile "
        "(--requests times, after 200 untimed) and print the top costs",
    )
    h.option(parser, "--requests", 5000, "requests of --profile")
    parser.add_argument(
        "--profile-clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="what --profile attributes: CPU time (the default), or wall time, which "
        "includes waiting for the store",
    )
    parser.add_argument("--timing-only", action="store_true", help=argparse.SUPPRESS)
    h.option(
        parser,
        "--in-process-rounds",
        3,
        "rounds of the in-process table (each app called without gunicorn), 0 for none",
    )
    h.option(parser, "--in-process-requests", 2000, "requests per in-process run")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    h.check_wrk_options(parser, args)
    if args.workers < 1:
        parser.error("expected --workers >= 1")
    # A configuration's bare app runs with it: its ratio is taken within a round.
    chosen = {c.name for c in args.configs}
    chosen |= {c.baseline for c in args.configs if c.baseline is not None}
    args.configs = [c for c in CONFIGS if c.name in chosen]
    return args


def check_tools(configs: list[Config]) -> None:
    h.require_executable("wrk")
    modules = ["gunicorn"]
    names = {c.name for c in configs}
    if any(n.startswith("flask") for n in names):
        modules.append("flask")
    if any(n.startswith("flask-limiter") for n in names):
        modules.append("flask_limiter")
    if any(n.startswith(("django", "drf")) for n in names):
        modules.append("django")
    if any(n.startswith("django-ratelimit") for n in names):
        modules.append("django_ratelimit")
    if any(n.startswith("drf") for n in names):
        modules.append("rest_framework")
    if any(c.kind in ("surefoot", "idempotency") for c in configs):
        modules += ["surefoot.wsgi"]
    if any(c.store == "redis" for c in configs):
        modules.append("redis")
    h.require_modules(modules, "bench,django,flask,redis")


PACKAGES = (
    "surefoot", "gunicorn", "flask", "werkzeug", "flask-limiter", "limits", "django",
    "django-ratelimit", "djangorestframework", "redis", "hiredis",
)  # fmt: skip


# -- one server -------------------------------------------------------------------------------


@dataclass
class Server:
    child: h.Child
    redis_prefix: str | None

    @property
    def url(self) -> str:
        return self.child.base


def gunicorn_command(port: int, workers: int, prefix: list[str]) -> list[str]:
    return [
        *prefix, sys.executable, "-m", "gunicorn", APP,
        "--pythonpath", str(h.BENCH_DIR),
        "--bind", f"127.0.0.1:{port}",
        "--worker-class", "sync", "--workers", str(workers),
        "--log-level", "warning",
    ]  # fmt: skip


@contextlib.contextmanager
def started(
    config: Config,
    workers: int,
    prefix: list[str],
    redis: h.BenchRedis | None,
    limit: str = LIMIT,
) -> Iterator[Server]:
    """gunicorn serving ``config`` on a free port, listening; stopped (and its Redis keys
    deleted) on exit."""
    redis_prefix = f"sfbench-wsgi-{secrets.token_hex(6)}"
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-wsgi-") as tmp:
        workdir = Path(tmp)
        env = {
            "SUREFOOT_BENCH_WSGI": config.mode,
            "SUREFOOT_BENCH_LIMIT": limit,
            "SUREFOOT_BENCH_PREFIX": redis_prefix,
            "SUREFOOT_BENCH_SQLITE": str(workdir / "surefoot.db"),
            "TMPDIR": str(workdir),
        }
        if config.store == "redis":
            if redis is None:
                raise h.BenchError(f"{config.name}: no Redis server")
            env["SUREFOOT_BENCH_REDIS_URL"] = redis.url
        port = h.free_port()
        command = gunicorn_command(port, workers, prefix)
        child = h.Child(f"gunicorn {config.name}", command, workdir / "gunicorn.log", env, port)
        try:
            # A TCP connection, not a request: a request would count against the limit.
            child.wait_listening()
            yield Server(child, redis_prefix if config.store == "redis" else None)
        finally:
            child.stop()
            if config.store == "redis" and redis is not None:
                # Flask-Limiter's keys begin with its own prefix: match anywhere.
                redis.delete(f"*{redis_prefix}")


# -- the checks -------------------------------------------------------------------------------


def check_get(config: Config, base: str) -> None:
    status, headers, body = h.http(base + GET_PATH)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if status != 200 or document != ANSWER:
        raise h.BenchError(f"{config.name}: GET {GET_PATH} answered {status} {body[:300]!r}")
    if config.kind == "surefoot" and "ratelimit" not in headers:
        raise h.BenchError(f"{config.name}: no RateLimit field in the answer: {headers}")


def post(base: str, key: str) -> tuple[int, dict[str, str], bytes]:
    body = b'{"amount":1000,"currency":"eur","customer":"cus_4QFJOjw2pOmAGJ","description":"check"}'
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    return h.http(base + POST_PATH, "POST", body, headers)


def check_post(config: Config, base: str) -> None:
    """A new key executes (201, not a replay); where idempotency runs, the same key again
    is a replay of the same body."""
    key = f"check-{secrets.token_hex(8)}"
    status, headers, first = post(base, key)
    if status != 201 or headers.get("idempotent-replayed"):
        raise h.BenchError(
            f"{config.name}: a POST with a new key answered {status} "
            f"(Idempotent-Replayed {headers.get('idempotent-replayed')!r}): {first[:300]!r}"
        )
    status, headers, again = post(base, key)
    if config.kind == "idempotency":
        if status != 201 or headers.get("idempotent-replayed") != "true" or again != first:
            raise h.BenchError(
                f"{config.name}: expected a replay of {first[:200]!r}, got {status} "
                f"{headers.get('idempotent-replayed')!r}: {again[:200]!r}"
            )
    elif status != 201 or again == first:
        raise h.BenchError(f"{config.name}: a second POST answered {status} {again[:200]!r}")


def check_answer(config: Config, base: str) -> None:
    if config.post:
        check_post(config, base)
    else:
        check_get(config, base)


def check_limiting(config: Config, prefix: list[str], redis: h.BenchRedis | None) -> None:
    """One worker, a limit of 3/minute: four GETs are 200, 200, 200 and a refusal."""
    with started(config, 1, prefix, redis, CHECK_LIMIT) as server:
        statuses = [h.http(server.url + GET_PATH)[0] for _ in range(4)]
    expected = [200, 200, 200, config.refuses_with]
    if statuses != expected:
        raise h.BenchError(
            f"{config.name}: with a limit of {CHECK_LIMIT}, four GETs answered {statuses}, "
            f"expected {expected}: the limiter is not limiting"
        )


def check_all(
    args: argparse.Namespace, configs: list[Config], cpus: h.CpuPlan, redis: h.BenchRedis | None
) -> str:
    if args.no_limit_check:
        return "not checked (--no-limit-check)"
    limited = [c for c in configs if c.kind in ("surefoot", "peer")]
    for config in limited:
        check_limiting(config, cpus.server, redis)
    if not limited:
        return "no limiter selected"
    return (
        f"checked, one worker, a limit of {CHECK_LIMIT}: four GETs answered 200, 200, 200 "
        "and 429 (django-ratelimit: 403) for " + ", ".join(c.name for c in limited)
    )


# -- one run ----------------------------------------------------------------------------------


def log_problems(child: h.Child, skip: int) -> list[str]:
    """The log lines after the first ``skip`` that are not gunicorn's own start and stop."""
    quiet = ("Starting gunicorn", "Listening at", "Using worker", "Booting worker",
             "Handling signal", "Worker exiting", "Shutting down")  # fmt: skip
    return [
        line
        for line in child.log_lines()[skip:]
        if line.strip() and not any(q in line for q in quiet)
    ]


def run_one(
    args: argparse.Namespace,
    config: Config,
    round_no: int,
    cpus: h.CpuPlan,
    redis: h.BenchRedis | None,
) -> h.Run:
    script = h.POST_LUA if config.post else h.GET_LUA
    nonce = secrets.token_hex(4)
    lua = ["unique", nonce] if config.post else []
    warm = ["unique", nonce + "w"] if config.post else []
    try:
        with started(config, args.workers, cpus.server, redis) as server:
            url = server.url + (POST_PATH if config.post else GET_PATH)
            check_answer(config, server.url)
            skip = len(server.child.log_lines())
            if args.warmup > 0:
                h.wrk_load(args, cpus, script, url, args.warmup, warm)
            run = h.timed_wrk(
                server.child,
                redis,
                lambda: h.wrk_load(args, cpus, script, url, args.duration, lua),
                f"{config.name} in {args.duration} s",
            )
            check_answer(config, server.url)
            problems = log_problems(server.child, skip)
            if server.child.process.poll() is not None:
                raise h.BenchError(server.child.died())
    except h.BenchError as exc:
        raise h.BenchError(f"round {round_no} {config.name}: {exc}") from None
    return {
        "round": round_no,
        "config": config.name,
        **run,
        "log_problems": len(problems),
        "log_sample": problems[:5],
    }


def say(run: h.Run, width: int) -> None:
    print(
        f"  round {run['round']} {run['config']:<{width}} {run['rps']:>8,.0f} req/s"
        f"  {run['cpu_us_per_request']:>6,.0f} CPU us/req"
        f"  p99 {run['latency_ms']['p99']:.1f} ms  errors {run['error_count']}"
        + (f"  log lines {run['log_problems']}" if run["log_problems"] else ""),
        flush=True,
    )


# -- the summary ------------------------------------------------------------------------------


def order(configs: list[Config], round_no: int) -> list[Config]:
    """One round: group by group (a bare app and the configurations measured against it),
    the groups and each group's members rotated by one more each round, the bare app run
    first and last of its group, so that each ratio is to runs minutes apart at most."""
    groups = [
        (bare, [c for c in configs if c.baseline == bare.name])
        for bare in configs
        if bare.baseline is None
    ]
    out: list[Config] = []
    for bare, members in h.rotated(groups, round_no):
        out += [bare, *(h.rotated(members, round_no) if members else []), bare]
    return out


def per_round(runs: list[h.Run], name: str, figure: str) -> dict[int, float]:
    """Per round, the mean of ``name``'s ``figure`` (a bare app runs twice a round)."""
    values: dict[int, list[float]] = {}
    for run in runs:
        if run["config"] == name:
            values.setdefault(run["round"], []).append(run[figure])
    return {n: sum(v) / len(v) for n, v in values.items()}


def ratios(runs: list[h.Run], name: str, baseline: str) -> dict[int, float]:
    """Per round, ``name``'s req/s over its bare app's (the mean of its two runs)."""
    mine, base = per_round(runs, name, "rps"), per_round(runs, baseline, "rps")
    return {n: rps / base[n] for n, rps in mine.items() if n in base}


def summarize(configs: list[Config], runs: list[h.Run]) -> list[h.Run]:
    rows = []
    for config in configs:
        mine = [r for r in runs if r["config"] == config.name]
        errors = sum(r["error_count"] for r in mine)
        row: h.Run = {
            "config": config.name,
            "meaning": config.meaning,
            "baseline": config.baseline,
            "rps": h.median(r["rps"] for r in mine),
            "ratio": None,
            "ratio_min": None,
            "ratio_max": None,
            "cpu_ratio": None,
            "target": config.target,
            "met": None,
            "cpu_us_per_request": h.median(r["cpu_us_per_request"] for r in mine),
            "redis_cpu_us_per_request": h.median_known(r["redis_cpu_us_per_request"] for r in mine)
            if config.store == "redis"
            else None,
            "p99_ms": h.median(r["latency_ms"]["p99"] for r in mine),
            "errors": errors,
            "log_problems": sum(r["log_problems"] for r in mine),
        }
        if config.baseline is not None:
            spread = h.Spread.range(list(ratios(runs, config.name, config.baseline).values()))
            row |= {"ratio": spread.median, "ratio_min": spread.low, "ratio_max": spread.high}
            cpu = per_round(runs, config.name, "cpu_us_per_request")
            base_cpu = per_round(runs, config.baseline, "cpu_us_per_request")
            row["cpu_ratio"] = h.median(base_cpu[n] / c for n, c in cpu.items() if n in base_cpu)
            if config.target is not None:
                base_errors = sum(r["error_count"] for r in runs if r["config"] == config.baseline)
                clean = not (errors or base_errors or row["log_problems"])
                row["met"] = spread.median >= config.target and clean
        rows.append(row)
    return rows


def contests(configs: list[Config], runs: list[h.Run]) -> list[h.Run]:
    """Each surefoot rate-limit row against the peers on the same kind of store: its ratio to
    its bare app over the best of theirs, round by round; target: above 1."""
    rows = []
    for config in configs:
        if config.kind != "surefoot" or config.baseline is None:
            continue
        rivals = [p for p in configs if p.kind == "peer" and p.store == config.store and p.baseline]
        if not rivals:
            continue
        mine = ratios(runs, config.name, config.baseline)
        theirs = {p.name: ratios(runs, p.name, p.baseline or "") for p in rivals}
        per_round = [
            ratio / max(t[n] for t in theirs.values())
            for n, ratio in mine.items()
            if all(n in t for t in theirs.values())
        ]
        if not per_round:
            continue
        spread = h.Spread.range(per_round)
        best = max(theirs, key=lambda p: h.median(theirs[p].values()))
        errors = sum(r["error_count"] for r in runs if r["config"] == config.name)
        rows.append(
            {
                "config": f"{config.name} vs peers",
                "meaning": f"{config.name}'s ratio to {config.baseline} over the best of "
                f"{', '.join(theirs)}'s ratios to theirs, per round",
                "versus": list(theirs),
                "best_peer": best,
                "ratio": spread.median,
                "ratio_min": spread.low,
                "ratio_max": spread.high,
                "target": 1.0,
                "met": spread.median > 1.0 and not errors,
            }
        )
    return rows


COLUMNS = (
    "configuration", "req/s", "ratio", "(min-max)", "to", "target", "met", "CPU us/req",
    "CPU ratio", "Redis us/req", "p99 ms", "errors",
)  # fmt: skip


def cells(row: h.Run) -> list[str]:
    ratio = row["ratio"]
    return [
        row["config"],
        f"{row['rps']:,.0f}",
        h.num(ratio, ".2f"),
        "-" if ratio is None else f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}",
        row["baseline"] or "-",
        h.target_text(row["target"], ">="),
        h.met_text(row["met"]),
        f"{row['cpu_us_per_request']:,.0f}",
        h.num(row["cpu_ratio"], ".2f"),
        h.num(row["redis_cpu_us_per_request"], ",.1f"),
        f"{row['p99_ms']:.1f}",
        str(row["errors"]) + (f" (+{row['log_problems']} log)" if row["log_problems"] else ""),
    ]


PEER_COLUMNS = ("ahead of its peers", "best peer", "ratio", "(min-max)", "target", "met")


def peer_cells(row: h.Run) -> list[str]:
    return [
        row["config"].removesuffix(" vs peers"),
        row["best_peer"],
        *h.ratio_cells(row, ">"),
    ]


def print_report(
    args: argparse.Namespace,
    context: h.Run,
    runs: list[h.Run],
    rows: list[h.Run],
    versus: list[h.Run],
    inside: list[h.Run],
) -> None:
    load = (
        f"wrk {args.threads} thread(s), {args.connections} connections (a new connection per "
        f"request: sync workers close it), GET {GET_PATH} or POST {POST_PATH} with a new "
        f"Idempotency-Key each; {args.duration} s per run after {args.warmup} s warm-up, "
        f"{args.rounds} round(s), configurations interleaved"
    )
    h.print_header(
        context,
        [
            ("load", load),
            ("server", context["server"]),
            ("limiting", context["limit_check"]),
            ("redis", context["redis"]),
            ("cpus", context["cpus"]),
        ],
        "gunicorn {gunicorn}, Flask {flask} (Werkzeug {werkzeug}), Flask-Limiter "
        "{flask-limiter} (limits {limits}), Django {django}, django-ratelimit "
        "{django-ratelimit}, DRF {djangorestframework}, redis-py {redis} (hiredis {hiredis}), "
        "{wrk}",
    )
    before, after = context["source_before"], context["source_after"]
    print(f"source:   digest {g.digest(before)} of surefoot's {len(before)} .py files at the start")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print(
            f"WARNING:  surefoot's source changed during the run (digest {g.digest(after)} at "
            "the end): servers started at different times ran different code; changed: "
            + ", ".join(changed)
        )
    print()
    width = max(len(r["config"]) for r in rows)
    columns = [
        h.Column("configuration", f"<{width}"), h.Column("req/s", ">7"),
        h.Column("ratio", ">5"), h.Column("(min-max)", ">9"), h.Column("to", "<10"),
        h.Column("target", ">6"), h.Column("met", ">3"), h.Column("CPU us/req", ">10"),
        h.Column("CPU ratio", ">9"), h.Column("Redis us/req", ">12"), h.Column("p99 ms", ">6"),
        h.Column("errors", ">6"),
    ]  # fmt: skip
    print("\n".join(h.text_table(columns, [cells(row) for row in rows])))
    print()
    print("req/s, CPU, p99: medians over rounds; CPU us/req: gunicorn's (master and workers)")
    print("       CPU time per request; Redis us/req: the Redis server's.")
    print("ratio: median of the per-round req/s ratios to the bare app named in 'to' (min-max:")
    print("       their spread); CPU ratio: the bare app's CPU us/req over this one's.")
    print("errors: wrk socket errors, timeouts (5 s) and non-2xx answers, all rounds; 'log':")
    print("       lines gunicorn's workers logged under load (store failures...). A row with")
    print("       either misses its target.")
    if versus:
        print()
        peer_columns = [
            h.Column("ahead of its peers", f"<{width}"), h.Column("best peer", f"<{width}", 2),
            *h.ratio_columns("ratio", 5),
        ]  # fmt: skip
        print("\n".join(h.text_table(peer_columns, [peer_cells(r) for r in versus])))
        print()
        print("ratio: median over rounds of (this row's ratio to its bare app) over (the best")
        print("       peer's ratio to its own bare app) in that round, peers on the same kind of")
        print("       store; best peer: the highest median ratio.")
    by_name = {c.name: c for c in CONFIGS}
    if inside:
        print()
        in_columns = [
            h.Column("in process", f"<{width}"), h.Column("CPU us/req", ">10"),
            h.Column("added us/req", ">12"), h.Column("to", "<10"), h.Column("CPU ratio", ">9"),
            h.Column("errors", ">6"),
        ]  # fmt: skip
        print("\n".join(h.text_table(in_columns, [in_process_cells(r, by_name) for r in inside])))
        print()
        print(f"in process: each app called {args.in_process_requests} times in a process of its")
        print("       own on the server's CPU (no gunicorn, no socket but the store's), medians of")
        print(f"       {args.in_process_rounds} interleaved rounds; added: over its bare app's CPU")
        print("       us/req in the same round; CPU ratio: the bare app's over this one's;")
        print("       errors: answers not 2xx (a 503: the store timed out, and was then taken")
        print("       for down a while), which skip the app and flatter the CPU figure.")
    print()
    names = [row["config"] for row in rows]
    print("per round, req/s:")
    for name in names:
        mine = sorted((r for r in runs if r["config"] == name), key=lambda r: r["round"])
        print(f"  {name:<{width}} " + " ".join(f"{r['rps']:>8,.0f}" for r in mine))
    noisy = [r for r in runs if r["error_count"] or r["log_problems"]]
    if noisy:
        print("\nWARNING: errors or log lines under load:")
        for r in noisy:
            kinds = ", ".join(f"{n} {k}" for k, n in r["errors"].items() if n)
            print(f"  round {r['round']} {r['config']}: {kinds or 'no wrk error'}")
            for line in r["log_sample"]:
                print(f"    {line[:200]}")
    print()
    print("Markdown:")
    print()
    print(h.markdown_table(COLUMNS, [cells(row) for row in rows], ["configuration", "to", "met"]))
    if inside:
        print()
        print(
            h.markdown_table(
                IN_PROCESS_COLUMNS,
                [in_process_cells(r, by_name) for r in inside],
                ["configuration", "to"],
            )
        )
    if versus:
        print()
        print(
            h.markdown_table(
                PEER_COLUMNS,
                [peer_cells(r) for r in versus],
                ["ahead of its peers", "best peer", "met"],
            )
        )


# -- profiling --------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> int:
    """Call one configuration's app in this process under cProfile and print the top costs.

    The app is built as gunicorn's worker builds it (``bench/_wsgi_app.py``), on the
    machine's Redis (``--redis-url``, default 127.0.0.1:6379) under a new prefix.
    """
    import cProfile
    import io
    import pstats

    config = next((c for c in CONFIGS if c.name == args.profile), None)
    if config is None:
        raise h.BenchError(f"--profile: unknown configuration {args.profile!r}")
    redis_prefix = f"sfbench-wsgi-{secrets.token_hex(6)}"
    redis_url = args.redis_url or "redis://127.0.0.1:6379/0"
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-wsgi-") as tmp:
        os.environ.update(
            SUREFOOT_BENCH_WSGI=config.mode,
            SUREFOOT_BENCH_LIMIT=LIMIT,
            SUREFOOT_BENCH_PREFIX=redis_prefix,
            SUREFOOT_BENCH_SQLITE=str(Path(tmp) / "surefoot.db"),
            SUREFOOT_BENCH_REDIS_URL=redis_url,
        )
        sys.path.insert(0, str(h.BENCH_DIR))
        import _wsgi_app

        app = _wsgi_app.app
        counter = iter(range(1 << 62))

        def environ() -> dict[str, Any]:
            body = b'{"amount":1000,"currency":"eur"}' if config.post else b""
            return {
                "REQUEST_METHOD": "POST" if config.post else "GET",
                "SCRIPT_NAME": "",
                "PATH_INFO": POST_PATH if config.post else GET_PATH,
                "QUERY_STRING": "",
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": "8000",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "REMOTE_ADDR": "127.0.0.1",
                "REMOTE_PORT": "40000",
                "RAW_URI": POST_PATH if config.post else GET_PATH,
                "HTTP_HOST": "127.0.0.1:8000",
                "HTTP_IDEMPOTENCY_KEY": f"profile-{next(counter)}",
                "CONTENT_TYPE": "application/json" if config.post else "",
                "CONTENT_LENGTH": str(len(body)) if body else "",
                "wsgi.input": io.BytesIO(body),
                "wsgi.errors": sys.stderr,
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http",
                "wsgi.multithread": False,
                "wsgi.multiprocess": True,
                "wsgi.run_once": False,
            }

        statuses: dict[str, int] = {}

        def one() -> None:
            def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
                statuses[status] = statuses.get(status, 0) + 1
                return lambda data: None

            body = app(environ(), start_response)
            try:
                for _ in body:
                    pass
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()

        for _ in range(200):
            one()
        started_at, cpu_at = time.perf_counter(), time.process_time()
        for _ in range(args.requests):
            one()
        plain = (time.perf_counter() - started_at) / args.requests * 1e6
        cpu = (time.process_time() - cpu_at) / args.requests * 1e6
        timer = time.process_time if args.profile_clock == "cpu" else time.perf_counter
        profiler = cProfile.Profile(timer)
        if not args.timing_only:
            profiler.enable()
            for _ in range(args.requests):
                one()
            profiler.disable()
        if config.store == "redis":
            h.BenchRedis(redis_url).delete(f"*{redis_prefix}")
    if args.timing_only:
        ok = all(status.startswith("2") for status in statuses)
        figures = {"wall_us": plain, "cpu_us": cpu, "statuses": statuses, "ok": ok}
        print(TIMING_PREFIX + json.dumps(figures))
        return 0
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    print("surefoot's own functions, by internal time:", file=out)
    stats.sort_stats("tottime").print_stats(r"surefoot/", 25)
    print(
        f"{config.name}: {plain:.1f} us per request in process ({cpu:.1f} us of CPU), "
        "without the profiler"
    )
    print(f"answers: {statuses}")
    print(out.getvalue())
    return 0


TIMING_PREFIX = "SUREFOOT_WSGI_TIMING "


def in_process_one(
    args: argparse.Namespace, config: Config, prefix: list[str], redis: h.BenchRedis | None
) -> dict[str, Any]:
    """``--profile CONFIG --timing-only`` in a child process: the app's CPU per request."""
    command = [
        *prefix, sys.executable, str(Path(__file__).resolve()), "--profile", config.name,
        "--timing-only", "--requests", str(args.in_process_requests),
        *(["--redis-url", redis.url] if redis is not None else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(TIMING_PREFIX):
            figures: dict[str, Any] = json.loads(line.removeprefix(TIMING_PREFIX))
            statuses = figures["statuses"].items()
            figures["errors"] = sum(n for status, n in statuses if not status.startswith("2"))
            return figures
    raise h.BenchError(f"{config.name} in process failed:\n{done.stdout}\n{done.stderr}")


def in_process(
    args: argparse.Namespace, configs: list[Config], cpus: h.CpuPlan, redis: h.BenchRedis | None
) -> list[h.Run]:
    """Each configuration's app called in a process of its own on the server's CPU, without
    gunicorn or sockets but the store's: its CPU time per request, rounds interleaved."""
    runs: list[h.Run] = []
    width = max(len(c.name) for c in configs)
    for round_no in range(1, args.in_process_rounds + 1):
        for config in order(configs, round_no):
            figures = in_process_one(args, config, cpus.server, redis)
            runs.append({"round": round_no, "config": config.name, **figures})
            print(
                f"  in process, round {round_no} {config.name:<{width}} "
                f"{figures['cpu_us']:>7,.1f} CPU us/req"
                + (f"  answers {figures['statuses']}" if figures["errors"] else ""),
                flush=True,
            )
    return runs


def in_process_rows(configs: list[Config], runs: list[h.Run]) -> list[h.Run]:
    """Per configuration: median CPU us per request, and what it adds to its bare app's
    (per round, over the mean of the bare app's two runs)."""
    rows = []
    for config in configs:
        cpu = per_round(runs, config.name, "cpu_us")
        errors = sum(r["errors"] for r in runs if r["config"] == config.name)
        row: h.Run = {
            "config": config.name,
            "cpu_us": h.median(cpu.values()),
            "added_us": None,
            "errors": errors,
        }
        if config.baseline is not None:
            base = per_round(runs, config.baseline, "cpu_us")
            added = [c - base[n] for n, c in cpu.items() if n in base]
            row["added_us"] = h.median(added) if added else None
            row["cpu_ratio"] = h.median(base[n] / c for n, c in cpu.items() if n in base)
        rows.append(row)
    return rows


IN_PROCESS_COLUMNS = ("configuration", "CPU us/req", "added us/req", "to", "CPU ratio", "errors")


def in_process_cells(row: h.Run, configs: dict[str, Config]) -> list[str]:
    return [
        row["config"],
        f"{row['cpu_us']:,.1f}",
        h.num(row["added_us"], "+,.1f"),
        configs[row["config"]].baseline or "-",
        h.num(row.get("cpu_ratio"), ".2f"),
        str(row["errors"]),
    ]


# -- the script -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        return profile(args)
    configs: list[Config] = args.configs
    check_tools(configs)
    cpus = h.split_cpus(args.no_pin, "wrk and Redis")
    uses_redis = any(c.store == "redis" for c in configs)
    # On wrk's CPU: gunicorn keeps its core, as with an in-process store.
    redis = h.BenchRedis(args.redis_url, cpus.load, args.redis_server) if uses_redis else None
    width = max(len(c.name) for c in configs)
    context: h.Run = {
        "command": args.command,
        "server": f"gunicorn --worker-class sync --workers {args.workers} (no access log, "
        "--log-level warning), bench/_wsgi_app.py, one Python process per worker",
        "redis": "not used" if redis is None else redis.where(cpus.load),
        "cpus": cpus.sentence,
        "environment": h.environment(PACKAGES, {"wrk": ["wrk", "--version"]}),
        "load_before": h.load_average(),
        "source_before": g.source_files(),
    }
    runs: list[h.Run] = []
    inside: list[h.Run] = []
    try:
        context["limit_check"] = check_all(args, configs, cpus, redis)
        print(f"limiting: {context['limit_check']}", flush=True)
        runs_per_round = len(configs) + sum(c.baseline is None for c in configs)
        total = args.rounds * runs_per_round * (args.duration + args.warmup + 2)
        print(
            f"{len(configs)} configurations x {args.rounds} rounds, about {total / 60:.0f} min; "
            f"{cpus.sentence}",
            flush=True,
        )
        for round_no in range(1, args.rounds + 1):
            for config in order(configs, round_no):
                run = run_one(args, config, round_no, cpus, redis)
                runs.append(run)
                say(run, width)
        if args.in_process_rounds > 0:
            inside = in_process(args, configs, cpus, redis)
    finally:
        if redis is not None:
            redis.stop()
    context["load_after"] = h.load_average()
    context["source_after"] = g.source_files()
    rows = summarize(configs, runs)
    versus = contests(configs, runs)
    inside_rows = in_process_rows(configs, inside) if inside else []
    print_report(args, context, runs, rows, versus, inside_rows)
    used = h.settings(args, "rounds", "duration", "warmup", "connections", "threads", "workers")
    return h.finish(
        args,
        context,
        used,
        rows + versus,
        runs,
        in_process={"rows": inside_rows, "runs": inside},
        configs=[asdict(c) for c in configs],
        targets={"surefoot_redis_over_bare": REDIS_TARGET, "over_best_peer": 1.0},
    )


if __name__ == "__main__":
    sys.exit(h.run(main))
