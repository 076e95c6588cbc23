"""Throughput and latency of ``surefoot serve`` beside NGINX and the upstream alone, under wrk.

Usage::

    .venv/bin/python bench/gateway.py                     # 3 rounds x 10 s per run, ~20 min
    .venv/bin/python bench/gateway.py --quick             # 1 round x 3 s: a smoke run
    .venv/bin/python bench/gateway.py --json results.json --check
    .venv/bin/python bench/gateway.py --configs nginx,surefoot-sqlite --workers 1  # + upstream
    .venv/bin/python bench/gateway.py --servers uvicorn,granian --configs nginx,bare,surefoot

Theory of operation:
1. The upstream is ``upstream_app`` below, a raw ASGI app (no framework) answering
   ``GET /items`` with 200 and ``POST /charges`` with 201, each with a small JSON body
   (the POST body is read first). uvicorn serves it (``--upstream-workers`` processes,
   uvloop, httptools, no access log) for the whole benchmark, on 127.0.0.1 and a free port.
2. The proxies (``CONFIGS``), each started afresh in every round, with 1 and 2 workers
   (``--workers``), in front of that upstream:
   ``nginx``, NGINX as a plain reverse proxy (``worker_processes`` N, ``keepalive 64`` to
   the upstream over HTTP/1.1, no access log, ``keepalive_requests`` raised on both sides
   so that neither side reconnects every 1,000 requests), from a configuration file
   written to a temporary directory and run as a child (``daemon off``);
   ``surefoot``, ``surefoot serve --workers N`` with no policy (idempotency switched off
   on every route, no rate limit): the gateway's own proxying; ``surefoot-sqlite`` and
   ``surefoot-redis``, the same with every policy on: a rate-limit policy of two limits
   (1,000,000/second and 1,000,000,000/hour, sliding window) that no request reaches, so
   every request is checked and counted and none is refused, and idempotency on
   ``POST /charges``; both on one SQLite file (a new one per start) or on Redis (a
   private ``redis-server`` started by the script, see ``bench/_harness.py``, or
   ``--redis-url``; a new key prefix per start, its keys deleted afterwards). Every
   gateway runs with ``[server] access_log = false``: the benchmark measures proxying,
   not writing one log line per request (the events that stay on at INFO, such as
   idempotency's, are still logged: the report counts the proxy's log lines per
   request). wrk sends no API key, so all requests come from one principal (its
   address): one hot rate-limit counter, the worst case for a store. ``bare`` is no
   proxy: the upstream's app served as the proxies are (N workers), to compare servers.
   ``--servers`` (``SERVERS``): ``uvicorn`` runs the gateways as ``surefoot serve`` does
   (uvicorn with the gateway's bounded httptools protocol) and ``bare`` under plain
   uvicorn; ``granian`` runs both under granian instead (ASGI, HTTP/1.1, uvloop; the
   gateway built by ``bench/_granian_gateway.py``, without the admin API, and without the
   bounds of ``surefoot.gateway._server``, which granian cannot take). Their rows are
   named ``config@granian``. granian is in no extra: ``pip install granian``.
3. The workloads, loaded by ``wrk --threads 2`` (the Lua scripts of ``bench/``:
   ``ratelimit.lua`` for GET, ``idempotency.lua`` for POST; ``done()`` prints requests,
   errors and wrk's latency percentiles as one JSON line): ``get``, ``GET /items`` at
   ``--connections`` (64); ``post``, ``POST /charges`` with a JSON body and a new
   ``Idempotency-Key`` per request (``<nonce>-<thread>-<counter>``: every request
   reserves, proxies and stores a record);
   ``replay`` (the policy configurations only), the same POST with one key, stored once
   before the run, so every request is answered from the store; ``post-moderate``, the
   ``post`` workload at ``--moderate-connections`` (4), where latency is not queueing.
   On the policy configurations ``get`` pays the rate limit only, ``post`` both policies.
4. Before its runs, each proxy must answer: ``GET`` with the upstream's body (and a
   ``RateLimit`` field where a policy is on), ``POST`` with 201, and the same ``POST``
   again with ``Idempotent-Replayed: true`` where idempotency is on (and without it
   where it is off). Each run is a warm-up of ``--warmup`` seconds, then the timed run.
5. Runs are interleaved: every round starts every proxy once, in an order rotated by one
   each round, and runs its workloads; the upstream alone is loaded in every round too.
   Ratios are taken within a round (a proxy to NGINX with the same workers and workload;
   latency added: a proxy's percentile minus the upstream's at moderate load) and the
   tables show medians over rounds.
6. Nothing is pinned to a CPU: wrk, the upstream, the proxy and Redis share the
   machine's CPUs (the runs report the machine's idle share: near 0 means the figures
   are CPU-bound, and each side's CPU time per request says where the time went).
   Every child runs in a process group of its own, killed at the end whatever happens.
7. surefoot's source files are hashed at the start and at the end: a tree edited while
   the benchmark runs (each server start imports the code of the moment) is reported,
   with the files that changed.

The targets (issue 14), with one worker: without a policy (``surefoot``, ``get``) at least
0.5x NGINX's req/s; with every policy on SQLite (``surefoot-sqlite``) at least 0.3x for
``get`` and 0.25x for ``post`` (new keys); with policies, under 2 ms of p99 added to the
upstream's at moderate load.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import _harness as h

GET_PATH, POST_PATH = "/items", "/charges"
GET_ANSWER = b'{"id":"item_1","name":"bench","price":1000}'
POST_ANSWER = b'{"id":"ch_1","status":"succeeded","amount":1000}'
POST_BODY = '{"amount":1000,"currency":"eur","customer":"cus_4QFJOjw2pOmAGJ"}'
# req/s over NGINX's with one worker, per (config, workload)
TARGET_RATIOS = {
    ("surefoot", "get"): 0.5,
    ("surefoot-sqlite", "get"): 0.3,
    ("surefoot-sqlite", "post"): 0.25,
}
TARGET_ADDED_P99_MS = 2.0  # at moderate load, over the upstream alone


# -- the upstream (imported by uvicorn in its own processes) --------------------------------


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The upstream: 200 and a small JSON body to GET, 201 and another to POST."""
    if scope["type"] != "http":
        return
    if scope["method"] in ("GET", "HEAD"):
        status, body = 200, GET_ANSWER
    else:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        status, body = 201, POST_ANSWER
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    kind: str  # "upstream", "nginx", "gateway" or "bare"
    store: str | None  # the gateway's store with every policy on; None: no policy
    meaning: str
    server: str = "uvicorn"  # what serves a gateway or bare config: one of SERVERS

    @property
    def policies(self) -> bool:
        return self.store is not None


CONFIGS = (
    Config("upstream", "upstream", None, "the upstream alone (uvicorn), no proxy"),
    Config("nginx", "nginx", None, "NGINX, plain reverse proxy, keepalive to the upstream"),
    Config("bare", "bare", None, "the upstream's app alone, served as the proxies are (no proxy)"),
    Config("surefoot", "gateway", None, "surefoot serve, no policy: its proxying alone"),
    Config(
        "surefoot-sqlite",
        "gateway",
        "sqlite",
        "surefoot serve, rate limit on every request and idempotency on POST, one SQLite file",
    ),
    Config(
        "surefoot-redis",
        "gateway",
        "redis",
        "surefoot serve, rate limit on every request and idempotency on POST, Redis",
    ),
)


@dataclass(frozen=True)
class Workload:
    name: str
    method: str
    mode: str  # "get", "unique" (a new key per request) or "replay" (one stored key)
    moderate: bool  # --moderate-connections instead of --connections
    policies_only: bool
    meaning: str


WORKLOADS = (
    Workload("get", "GET", "get", False, False, f"GET {GET_PATH}"),
    Workload("post", "POST", "unique", False, False, f"POST {POST_PATH}, a new key each"),
    Workload("replay", "POST", "replay", False, True, f"POST {POST_PATH}, one stored key"),
    Workload("post-moderate", "POST", "unique", True, False, f"POST {POST_PATH}, a new key each"),
)

#: The servers of ``--servers``: "uvicorn" runs ``surefoot serve`` (uvicorn with the
#: gateway's bounded httptools protocol) and serves ``bare`` with plain uvicorn; "granian"
#: serves both with granian (``bench/_granian_gateway.py`` builds the gateway, no admin API).
SERVERS = ("uvicorn", "granian")


def with_servers(configs: list[Config], servers: list[str]) -> list[Config]:
    """Each gateway and bare config once per server; those not on uvicorn named ``name@server``."""
    out = []
    for config in configs:
        if config.kind not in ("gateway", "bare"):
            out.append(config)
            continue
        for server in servers:
            name = config.name if server == "uvicorn" else f"{config.name}@{server}"
            out.append(replace(config, name=name, server=server))
    return out


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=3, quick={"rounds": 1, "duration": 3})
    h.add_wrk_options(parser, duration=10)
    h.option(parser, "--moderate-connections", 4, "wrk connections of the post-moderate workload")
    h.option(parser, "--workers", "1,2", "comma-separated proxy worker counts")
    h.option(parser, "--upstream-workers", 2, "uvicorn workers of the upstream")
    h.option(parser, "--servers", "uvicorn", f"comma-separated servers of the gateway: {SERVERS}")
    h.add_selection(parser, "--configs", CONFIGS, "upstream")
    h.add_redis_options(parser, used_by="surefoot-redis")
    parser.add_argument("--nginx", default="/usr/sbin/nginx", help="the nginx executable")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    try:
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        parser.error(f"--workers: expected numbers such as 1,2, got {args.workers!r}")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers: expected numbers >= 1")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not servers or not set(servers) <= set(SERVERS):
        parser.error(f"--servers: expected some of {','.join(SERVERS)}, got {args.servers!r}")
    args.configs = with_servers(args.configs, servers)
    h.check_wrk_options(parser, args)
    if args.upstream_workers < 1:
        parser.error("expected --upstream-workers >= 1")
    if args.threads > args.moderate_connections:
        parser.error("expected 1 <= --threads <= --connections and --moderate-connections")
    return args


def check_tools(args: argparse.Namespace) -> None:
    h.require_executable("wrk")
    if any(c.kind == "nginx" for c in args.configs):
        h.require_executable("nginx", args.nginx)
    modules = ["uvicorn", "uvloop", "httptools", "surefoot", "rich"]
    if any(c.store == "redis" for c in args.configs):
        modules.append("redis")
    h.require_modules(modules, "bench,redis")
    if any(c.server == "granian" for c in args.configs):
        require_granian()


def require_granian() -> None:
    """granian imports (it is in no extra of surefoot's), or say how to install it."""
    if importlib.util.find_spec("granian") is None:
        raise h.BenchError(f"granian is not installed in {sys.executable}: pip install granian")


def source_files() -> dict[str, str]:
    """surefoot's .py files as imported now (the working tree, edits included): path -> sha256."""
    spec = importlib.util.find_spec("surefoot")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = Path(next(iter(spec.submodule_search_locations)))
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.py"))
    }


def digest(files: dict[str, str]) -> str:
    """One short digest of ``source_files()``."""
    text = "\n".join(f"{path} {sha}" for path, sha in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def environment(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "surefoot", "uvicorn", "uvloop", "httptools", "granian", "httpx", "httpcore", "anyio",
        "sniffio",
    )  # fmt: skip
    tools = {
        "wrk": ["wrk", "--version"],
        "nginx": [args.nginx, "-v"],
        "redis_server": [args.redis_server, "--version"],
    }
    env = h.environment((*names, "redis", "hiredis"), tools)
    env["redis_server"] = env["redis_server"].split(" sha=")[0]
    return env


# -- child processes ------------------------------------------------------------------------


def granian_command(app: str, port: int, workers: int, *, factory: bool = False) -> list[str]:
    """granian serving ``app`` (``module:name`` of ``bench/``) as uvicorn serves the others:
    ASGI over HTTP/1.1, uvloop, no access log, the backlog of ``surefoot serve``."""
    return [
        sys.executable, "-m", "granian", app,
        "--working-dir", str(h.BENCH_DIR),
        "--interface", "asgi", *(["--factory"] if factory else []),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "1", "--no-ws", "--backlog", "2048",
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


def bare_server(config: Config, workdir: Path, workers: int) -> tuple[h.Child, str]:
    """The upstream's app alone, served by ``config.server`` with ``workers`` processes."""
    if config.server == "granian":
        port = h.free_port()
        command = granian_command("gateway:upstream_app", port, workers)
        child = h.Child(f"{config.name} x{workers}", command, workdir / "bare.log", None, port)
    else:
        child = h.start_uvicorn(
            f"{config.name} x{workers}", "gateway:upstream_app", workdir, workers=workers,
            lifespan=False,
        )  # fmt: skip
    child.wait_http(child.base + GET_PATH)
    return child, child.base


def upstream_server(workdir: Path, workers: int) -> tuple[h.Child, str]:
    child = h.start_uvicorn(
        "upstream",
        "gateway:upstream_app",
        workdir,
        env={"TMPDIR": str(workdir)},
        workers=workers,
        lifespan=False,
    )
    child.wait_http(child.base + GET_PATH)
    return child, child.base


NGINX_CONF = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream app {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def nginx_server(
    args: argparse.Namespace, workdir: Path, upstream: str, workers: int
) -> tuple[h.Child, str]:
    prefix = workdir / "nginx"
    prefix.mkdir()
    prefix.chmod(0o755)  # workers run as nobody when started by root
    port = h.free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=workers, prefix=prefix, port=port, upstream=upstream.split("//", 1)[1]
        )
    )
    command = [
        args.nginx, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log"),
        "-g", "daemon off;",
    ]  # fmt: skip
    child = h.Child(f"nginx x{workers}", command, workdir / "nginx.log", port=port)
    base = child.base
    try:
        child.wait_http(base + GET_PATH)
    except h.BenchError as exc:
        error_log = prefix / "error.log"
        tail = error_log.read_text()[-2000:] if error_log.exists() else ""
        raise h.BenchError(f"{exc}\nerror.log:\n{tail}") from None
    return child, base


GATEWAY_TOML = """\
[server]
# The benchmark measures proxying, not writing one access-log line per request.
access_log = false

[upstream]
url = "{upstream}"

[stores]
default = "{store}"

[admin]
token = "bench"
"""
NO_POLICY_TOML = """
# No policy: idempotency off on every route, no rate limit.
[[routes]]
match = "/*"
idempotency = false
"""
POLICIES_TOML = """
[idempotency]
store = "default"
methods = ["POST"]
# wrk is one client sending every key: without this, its keys past the 10,000th would be
# refused (429 idempotency_records_exceeded) until the first ones expire.
max_records_per_principal = false

[rate_limit]
store = "default"

# Never reached: every request is checked and counted, none refused (wrk's one address
# under the per-address ceiling too, which is on by default).
[identity]
address_limits = ["1000000/second"]

[[rate_limit.policies]]
name = "bench"
limits = ["1000000/second", "1000000000/hour"]
algorithm = "sliding_window"

[[routes]]
match = "POST /charges"
[routes.idempotency]
ttl = 3600
"""


@dataclass
class Gateway:
    child: h.Child
    base: str
    redis_prefix: str | None


def gateway_server(
    config: Config, workdir: Path, upstream: str, workers: int, redis: h.BenchRedis | None
) -> Gateway:
    redis_prefix = None
    if config.store == "sqlite":
        store = f"sqlite:///{workdir / 'gateway.db'}"
    elif config.store == "redis":
        if redis is None:
            raise h.BenchError(f"{config.name}: no Redis server")
        redis_prefix = f"sfbench-{secrets.token_hex(6)}:"
        store = f"{redis.url}?prefix={redis_prefix}"
    else:
        store = "memory://"  # never used: no policy
    text = GATEWAY_TOML.format(upstream=upstream, store=store)
    text += POLICIES_TOML if config.policies else NO_POLICY_TOML
    path = workdir / "gateway.toml"
    path.write_text(text)
    port = h.free_port()
    # TMPDIR: the metrics directory of several workers goes with the rest, deleted at the end.
    env = {"TMPDIR": str(workdir)}
    if config.server == "granian":
        command = granian_command("_granian_gateway:app", port, workers, factory=True)
        env |= {"SUREFOOT_BENCH_CONFIG": str(path), "SUREFOOT_BENCH_WORKERS": str(workers)}
        if workers > 1:
            (workdir / "metrics").mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "metrics")
    else:
        command = [
            sys.executable, "-m", "surefoot", "serve", "--config", str(path),
            "--port", str(port), "--admin-port", str(h.free_port()), "--workers", str(workers),
        ]  # fmt: skip
    child = h.Child(f"{config.name} x{workers}", command, workdir / "gateway.log", env, port)
    child.wait_http(child.base + GET_PATH)
    return Gateway(child, child.base, redis_prefix)


def post(url: str, key: str) -> tuple[int, dict[str, str], bytes]:
    """POST with ``key``, asked again for up to 5 s while the answer says to retry.

    409: the key is still in flight (an earlier request with it may not be settled yet);
    503: the store was marked down by a failure under the previous load and no probe has
    succeeded yet.
    """
    deadline = time.monotonic() + 5.0
    while True:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        status, headers, body = h.http(url, "POST", POST_BODY.encode(), headers)
        if status not in (409, 503) or time.monotonic() > deadline:
            return status, headers, body
        time.sleep(0.1)


def check_answers(config: Config, base: str, nonce: str) -> None:
    """The proxy forwards, and its policies are on (or off) as configured."""
    label = config.name
    status, headers, body = h.http(base + GET_PATH)
    if status != 200 or body != GET_ANSWER:
        raise h.BenchError(f"{label}: GET answered {status} {body[:300]!r}")
    if config.policies and "ratelimit" not in headers:
        raise h.BenchError(f"{label}: no RateLimit field in the answer to GET: {headers}")
    key = f"check-{nonce}"
    replays = []
    for _ in range(2):
        status, headers, body = post(base + POST_PATH, key)
        if status != 201 or body != POST_ANSWER:
            raise h.BenchError(f"{label}: POST answered {status} {body[:300]!r}")
        replays.append(headers.get("idempotent-replayed") == "true")
    if replays != [False, config.policies]:
        raise h.BenchError(
            f"{label}: two POSTs with one key were replays {replays}, expected "
            f"{[False, config.policies]}: idempotency is {'off' if config.policies else 'on'}"
        )


# -- one run --------------------------------------------------------------------------------


def wrk(
    args: argparse.Namespace, url: str, workload: Workload, duration: int, nonce: str
) -> dict[str, Any]:
    connections = args.moderate_connections if workload.moderate else args.connections
    if workload.mode == "get":
        script, lua = h.GET_LUA, []
    else:  # "unique": keys "<nonce>-<thread>-<counter>"; "replay": the key nonce
        script, lua = h.POST_LUA, [workload.mode, nonce, nonce, POST_BODY]
    return h.wrk(
        script, url, threads=args.threads, connections=connections, duration=duration, args=lua
    )


@dataclass
class Target:
    """What a run loads, and the processes whose CPU time it reads."""

    config: Config
    workers: int | None  # None: the upstream alone
    base: str
    proxy: h.Child | None
    upstream: h.Child
    redis: h.BenchRedis | None

    @property
    def label(self) -> str:
        return self.config.name if self.workers is None else f"{self.config.name} x{self.workers}"


def run_one(
    args: argparse.Namespace,
    target: Target,
    workload: Workload,
    round_no: int,
) -> dict[str, Any]:
    url = target.base + (GET_PATH if workload.method == "GET" else POST_PATH)
    nonce = secrets.token_hex(4)
    if workload.mode == "replay":
        post(url, f"replay-{nonce}")
        status, headers, _ = post(url, f"replay-{nonce}")
        if status != 201 or headers.get("idempotent-replayed") != "true":
            raise h.BenchError(f"{target.label}: the replay key is not replayed ({status})")
        nonce = f"replay-{nonce}"
    if args.warmup > 0:
        wrk(args, url, workload, args.warmup, f"warm-{nonce}")
    log_before = len(target.proxy.log_lines()) if target.proxy else 0
    proxy_before = target.proxy.cpu_seconds() if target.proxy else 0.0
    upstream_before = target.upstream.cpu_seconds()
    redis_before = target.redis.cpu_seconds() if target.redis else 0.0
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    idle_before, total_before = h.machine_ticks()
    result = wrk(args, url, workload, args.duration, nonce)
    idle_after, total_after = h.machine_ticks()
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    redis_cpu = target.redis.cpu_seconds() - redis_before if target.redis else None
    upstream_cpu = target.upstream.cpu_seconds() - upstream_before
    proxy_cpu = target.proxy.cpu_seconds() - proxy_before if target.proxy else None
    figures = h.wrk_figures(result, f"{target.label} {workload.name}")
    requests = figures["requests"]
    new_log = target.proxy.log_lines()[log_before:] if target.proxy else []
    problems = [line for line in new_log if not quiet(line)]

    def per_request(cpu: float | None) -> float | None:
        return None if cpu is None else cpu / requests * 1e6

    wrk_cpu = (wrk_after.ru_utime - wrk_before.ru_utime) + (
        wrk_after.ru_stime - wrk_before.ru_stime
    )
    return {
        "round": round_no,
        "config": target.config.name,
        "workers": target.workers,
        "workload": workload.name,
        "connections": args.moderate_connections if workload.moderate else args.connections,
        **figures,
        "cpu_us_per_request": {
            "proxy": per_request(proxy_cpu),
            "upstream": per_request(upstream_cpu),
            "redis": per_request(redis_cpu if target.config.store == "redis" else None),
            "wrk": per_request(wrk_cpu),
        },
        "machine_idle": (idle_after - idle_before) / max(1, total_after - total_before),
        "proxy_log_lines": len(new_log),
        "proxy_log_problems": log_summary(problems),
        "proxy_log_tail": [line[:500] for line in problems[-5:]],
        "wrk_output": result["output"] if figures["error_count"] else "",
    }


def quiet(line: str) -> bool:
    """Whether a line of the gateway's log is a JSON record below WARNING."""
    try:
        record = json.loads(line)
    except ValueError:
        return False  # a traceback, or anything else not from the JSON formatter
    return isinstance(record, dict) and record.get("level") in ("DEBUG", "INFO")


def log_summary(lines: list[str]) -> dict[str, int]:
    """Log lines counted by kind: level, event name and the fields that say what happened."""
    kinds: collections.Counter[str] = collections.Counter()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            kinds[f"(not JSON) {line[:200]}"] += 1
            continue
        fields = record.get("surefoot") or {}
        said = " ".join(
            f"{name}={fields[name]}"
            for name in ("layer", "phase", "action", "error")
            if fields.get(name) is not None
        )
        event = str(record.get("message", "")).split(" ", 1)[0]
        kinds[f"{record.get('level')} {record.get('logger')} {event} {said}".rstrip()] += 1
    return dict(kinds.most_common())


def round_plan(args: argparse.Namespace, round_no: int) -> list[tuple[Config, int | None]]:
    """The upstream alone, then every proxy with every worker count, rotated by round."""
    plan: list[tuple[Config, int | None]] = [(args.configs[0], None)]
    plan += [(c, w) for c in args.configs[1:] for w in args.workers]
    return h.rotated(plan, round_no)


def workloads_of(config: Config) -> list[Workload]:
    return [w for w in WORKLOADS if config.policies or not w.policies_only]


def died(proxy: h.Child | None) -> str:
    """What became of the proxy: its exit status if it exited, and its log's tail."""
    return "" if proxy is None else proxy.died()


def run_server(
    args: argparse.Namespace,
    config: Config,
    workers: int | None,
    upstream: tuple[h.Child, str],
    redis: h.BenchRedis | None,
    round_no: int,
) -> list[dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-gw-") as tmp:
        workdir = Path(tmp)
        gateway: Gateway | None = None
        proxy: h.Child | None = None
        try:
            if config.kind == "upstream":
                base = upstream[1]
            elif config.kind == "nginx":
                proxy, base = nginx_server(args, workdir, upstream[1], workers or 1)
            elif config.kind == "bare":
                proxy, base = bare_server(config, workdir, workers or 1)
            else:
                gateway = gateway_server(config, workdir, upstream[1], workers or 1, redis)
                proxy, base = gateway.child, gateway.base
            check_answers(config, base, secrets.token_hex(4))
            target = Target(config, workers, base, proxy, upstream[0], redis)
            for workload in workloads_of(config):
                try:
                    run = run_one(args, target, workload, round_no)
                except h.BenchError as exc:
                    raise h.BenchError(
                        f"{target.label} {workload.name}: {exc}{died(proxy)}"
                    ) from None
                runs.append(run)
                latency = run["latency_ms"]
                cpu = run["cpu_us_per_request"]["proxy"]
                print(
                    f"  round {round_no} {target.label:<18} {workload.name:<13} "
                    f"{run['rps']:>8,.0f} req/s  p50 {latency['p50']:6.2f}  "
                    f"p99 {latency['p99']:6.2f} ms  proxy CPU "
                    f"{'-' if cpu is None else f'{cpu:,.0f}'} us/req  "
                    f"idle {run['machine_idle']:.0%}  errors {run['error_count']}",
                    flush=True,
                )
                if run["error_count"] or run["proxy_log_problems"]:
                    kinds = ", ".join(f"{n} {k}" for k, n in run["errors"].items() if n)
                    print(f"    errors: {kinds or 'none'}; proxy log, WARNING and above:")
                    for kind, count in run["proxy_log_problems"].items():
                        print(f"      {count:>6} x {kind}")
                if proxy is not None and proxy.process.poll() is not None:
                    raise h.BenchError(f"{target.label} {workload.name}: {died(proxy)}")
        finally:
            if proxy is not None:
                proxy.stop()
            if gateway is not None and gateway.redis_prefix and redis is not None:
                redis.delete(gateway.redis_prefix)
    return runs


# -- report ---------------------------------------------------------------------------------


def added_latency(percentile: str) -> Callable[[h.Run, h.Run], float]:
    """A run's latency ``percentile`` less the upstream's alone in the same round."""
    return lambda run, upstream: run["latency_ms"][percentile] - upstream["latency_ms"][percentile]


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def find(config: str, workers: int | None, workload: str) -> dict[int, dict[str, Any]]:
        return h.by_round(runs, config=config, workers=workers, workload=workload)

    rows = []
    for config, workers in round_plan(args, 1):
        for workload in workloads_of(config):
            mine = find(config.name, workers, workload.name)
            if not mine:
                continue
            nginx = find("nginx", workers, workload.name) if workers is not None else {}
            upstream = find("upstream", None, workload.name)
            ratios = h.paired(mine, nginx, lambda r, b: r["rps"] / b["rps"])
            added = {
                p: h.median(h.paired(mine, upstream, added_latency(p)))
                if config.kind != "upstream" and any(n in upstream for n in mine)
                else None
                for p in ("p50", "p99")
            }
            ratio = h.median(ratios) if ratios else None
            errors = sum(r["error_count"] for r in mine.values())
            row: dict[str, Any] = {
                "config": config.name,
                "workers": workers,
                "workload": workload.name,
                "connections": next(iter(mine.values()))["connections"],
                "rps": h.median(r["rps"] for r in mine.values()),
                "p50_ms": h.median(r["latency_ms"]["p50"] for r in mine.values()),
                "p99_ms": h.median(r["latency_ms"]["p99"] for r in mine.values()),
                "x_nginx": ratio,
                "x_nginx_min": min(ratios) if ratios else None,
                "x_nginx_max": max(ratios) if ratios else None,
                "added_p50_ms": added["p50"],
                "added_p99_ms": added["p99"],
                "errors": errors,
            }
            for side in ("proxy", "upstream", "redis", "wrk"):
                values = [r["cpu_us_per_request"][side] for r in mine.values()]
                known = [v for v in values if v is not None]
                row[f"{side}_cpu_us"] = h.median(known) if known else None
            row["machine_idle"] = h.median(r["machine_idle"] for r in mine.values())
            row["log_lines_per_request"] = h.median(
                r["proxy_log_lines"] / r["requests"] for r in mine.values()
            )
            row["target"], row["met"] = None, None
            least = TARGET_RATIOS.get((config.name, workload.name))
            if least is not None and workers == 1 and ratio is not None:
                row["target"] = f">= {least}x NGINX"
                row["met"] = ratio >= least and not errors
            if config.policies and workload.moderate and added["p99"] is not None:
                row["target"] = f"p99 added < {TARGET_ADDED_P99_MS:g} ms"
                row["met"] = added["p99"] < TARGET_ADDED_P99_MS and not errors
            rows.append(row)
    return rows


TEXT_COLUMNS = ("proxy", "workload", "target met")
LOAD_COLUMNS = (
    "proxy", "workers", "workload", "req/s", "p50 ms", "p99 ms", "x NGINX",
    "proxy CPU us/req", "upstream CPU us/req", "errors", "target met",
)  # fmt: skip
MODERATE_COLUMNS = (
    "proxy", "workers", "req/s", "p50 ms", "p99 ms", "p50 added ms", "p99 added ms",
    "proxy CPU us/req", "errors", "target met",
)  # fmt: skip


def table_cells(rows: list[dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    load, moderate = [], []
    for row in rows:
        workers = "-" if row["workers"] is None else str(row["workers"])
        common = [row["config"], workers]
        proxy_cpu = h.num(row["proxy_cpu_us"], ",.0f")
        if row["workload"] == "post-moderate":
            moderate.append(
                [
                    *common,
                    f"{row['rps']:,.0f}",
                    f"{row['p50_ms']:.2f}",
                    f"{row['p99_ms']:.2f}",
                    h.num(row["added_p50_ms"], "+.2f"),
                    h.num(row["added_p99_ms"], "+.2f"),
                    proxy_cpu,
                    str(row["errors"]),
                    h.met_text(row["met"]),
                ]
            )
        else:
            load.append(
                [
                    *common,
                    row["workload"],
                    f"{row['rps']:,.0f}",
                    f"{row['p50_ms']:.2f}",
                    f"{row['p99_ms']:.2f}",
                    h.num(row["x_nginx"], ".2f"),
                    proxy_cpu,
                    h.num(row["upstream_cpu_us"], ",.0f"),
                    str(row["errors"]),
                    h.met_text(row["met"]),
                ]
            )
    return load, moderate


def print_report(
    args: argparse.Namespace, context: h.Run, runs: list[h.Run], rows: list[h.Run]
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, shutil.get_terminal_size().columns))
    h.print_header(
        context,
        [
            (
                "load",
                f"wrk --threads {args.threads}, {args.connections} connections "
                f"({args.moderate_connections} at moderate load), {args.duration} s per run "
                f"after {args.warmup} s warm-up, {args.rounds} round(s), proxies interleaved",
            ),
            ("upstream", context["upstream"]),
            ("redis", context["redis"]),
        ],
        "uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), granian {granian}, "
        "httpx {httpx} (httpcore {httpcore}, anyio {anyio}, sniffio {sniffio}), redis-py "
        "{redis}, {nginx}, {wrk}, {redis_server}",
        shared="wrk, the upstream, the proxy and Redis (nothing pinned)",
    )
    before, after = context["source_before"], context["source_after"]
    print(f"source:   digest {digest(before)} of surefoot's {len(before)} .py files at the start")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print(
            f"WARNING:  surefoot's source changed during the run (digest {digest(after)} at "
            "the end): servers started at different times ran different code; changed: "
            + ", ".join(changed)
        )
    load, moderate = table_cells(rows)
    for title, columns, cells in (
        (f"{args.connections} connections", LOAD_COLUMNS, load),
        (
            f"moderate load: {args.moderate_connections} connections, POST with a new key each",
            MODERATE_COLUMNS,
            moderate,
        ),
    ):
        table = Table(title=title)
        for column in columns:
            text = column in ("proxy", "workload", "target met")
            table.add_column(column, justify="left" if text else "right")
        for cell in cells:
            table.add_row(*cell)
        console.print(table)
    print()
    print("req/s, p50, p99, CPU: medians over rounds (wrk's latency percentiles).")
    print("x NGINX: median of the per-round ratios of req/s to NGINX's with the same workers")
    print("         and workload (NGINX x2 is the baseline of the 2-worker rows).")
    print("added:   median of the per-round differences to the upstream alone at that load.")
    print("CPU us/req: CPU time per request of the proxy's process group (every worker) and of")
    print("         the upstream's, during the timed run.")
    print("errors:  wrk socket errors, timeouts (5 s) and answers >= 400, all rounds.")
    print("workloads: get = GET (rate limit only where policies are on); post = POST with a")
    print("         new Idempotency-Key each (rate limit and idempotency); replay = POST with")
    print("         one stored key (every answer from the store).")
    print()
    print("Markdown:")
    print()
    print(f"{args.connections} connections:")
    print()
    print(h.markdown_table(LOAD_COLUMNS, load, TEXT_COLUMNS))
    print()
    print(f"Moderate load ({args.moderate_connections} connections, POST with a new key each):")
    print()
    print(h.markdown_table(MODERATE_COLUMNS, moderate, TEXT_COLUMNS))
    print()
    extra = [row for row in rows if row["redis_cpu_us"] is not None or row["workload"] == "post"]
    print(
        "CPU per request, us (proxy / upstream / Redis / wrk), machine idle share, proxy log "
        "lines per request:"
    )
    for row in extra:
        workers = "" if row["workers"] is None else f" x{row['workers']}"
        print(
            f"  {row['config'] + workers:<20} {row['workload']:<13} "
            f"{h.num(row['proxy_cpu_us'], ',.0f'):>6} / {h.num(row['upstream_cpu_us'], ',.0f'):>4} "
            f"/ {h.num(row['redis_cpu_us'], ',.0f'):>4} / {h.num(row['wrk_cpu_us'], ',.0f'):>4}  "
            f"idle {row['machine_idle']:>4.0%}  log {row['log_lines_per_request']:.2f}"
        )
    failed = [r for r in runs if r["error_count"] or r["proxy_log_problems"]]
    if failed:
        print("\nWARNING: errors or warnings under load:")
        for r in failed:
            kinds = ", ".join(f"{n} {k}" for k, n in r["errors"].items() if n)
            print(f"  round {r['round']} {r['config']} x{r['workers']} {r['workload']}: {kinds}")
            for kind, count in r["proxy_log_problems"].items():
                print(f"    {count:>6} x {kind}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args)
    redis: h.BenchRedis | None = None
    if any(c.store == "redis" for c in args.configs):
        redis = h.BenchRedis(args.redis_url, (), args.redis_server)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-") as tmp:
        workdir = Path(tmp)
        upstream, upstream_base = upstream_server(workdir, args.upstream_workers)
        try:
            context: dict[str, Any] = {
                "command": args.command,
                "upstream": f"bench/gateway.py:upstream_app under uvicorn, "
                f"{args.upstream_workers} workers, uvloop, httptools, no access log",
                "redis": "not used" if redis is None else redis.describe(),
                "environment": environment(args),
                "load_before": h.load_average(),
                "source_before": source_files(),
            }
            plan = round_plan(args, 1)
            count = sum(len(workloads_of(c)) for c, _ in plan)
            print(
                f"{len(plan)} servers, {count} runs per round x {args.rounds} rounds: about "
                f"{count * args.rounds * (args.duration + args.warmup + 0.5) / 60:.0f} min of "
                f"load; {os.cpu_count()} CPUs shared by everything",
                flush=True,
            )
            for round_no in range(1, args.rounds + 1):
                for config, workers in round_plan(args, round_no):
                    runs += run_server(
                        args, config, workers, (upstream, upstream_base), redis, round_no
                    )
            context["load_after"] = h.load_average()
            context["source_after"] = source_files()
        finally:
            upstream.stop()
            if redis is not None:
                redis.stop()
    rows = summarize(args, runs)
    print_report(args, context, runs, rows)
    settings = h.settings(
        args, "rounds", "duration", "warmup", "connections", "moderate_connections", "threads",
        "workers", "upstream_workers",
    )  # fmt: skip
    return h.finish(
        args,
        context,
        settings,
        rows,
        runs,
        configs=[asdict(c) for c in args.configs],
        workloads=[asdict(w) for w in WORKLOADS],
        targets={
            "x_nginx": {f"{c} {w}": r for (c, w), r in TARGET_RATIOS.items()},
            "added_p99_ms": TARGET_ADDED_P99_MS,
        },
    )


if __name__ == "__main__":
    sys.exit(h.run(main))
