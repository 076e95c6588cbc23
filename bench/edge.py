"""Throughput of the edge: NGINX asking ``surefoot decide`` beside plain NGINX, and the
decision service beside the gateway, under wrk.

Usage::

    .venv/bin/python bench/edge.py                  # 5 rounds x 15 s per run, about 12 min
    .venv/bin/python bench/edge.py --quick          # 1 round x 5 s: a smoke run, about 1 min
    .venv/bin/python bench/edge.py --json results.json --check
    .venv/bin/python bench/edge.py --configs nginx+decide-redis     # and its baseline, nginx
    .venv/bin/python bench/edge.py --redis-url redis://127.0.0.1:6380/0

Theory of operation:
1. The upstream is ``bench/gateway.py``'s ``upstream_app`` (200 and a small JSON body to
   ``GET /items``) under uvicorn (one worker, uvloop, httptools, no access log), started
   once for the whole benchmark.
2. The policy file (``POLICY_TOML``) is the same for ``surefoot decide`` and ``surefoot
   serve``: one rate-limit policy ``bench`` of two limits (1,000,000/second and
   1,000,000,000/hour, sliding window) that no request reaches, so every request is
   decided, counted and admitted; no per-address ceiling (``address_limits = []``); no
   access log; 127.0.0.1 (NGINX) in ``trusted_proxies``; the admin API off. Its store is
   a new SQLite file per start, or Redis (a private ``redis-server`` that the benchmark
   starts, as ``bench/redis_decisions.py`` does, or ``--redis-url``'s) under a new key
   prefix per start, whose keys are deleted after the run (never a FLUSH), with
   ``RedisStore``'s ``timeout`` at ``--redis-timeout`` (0.25 s: the measured side is a
   saturated worker on a shared machine, and at the store's default 0.05 s the runs of
   issue 22 failed open in bursts, uncounted). wrk sends no
   credential: every request is one principal (its address), one hot counter, the worst
   case for a store.
3. The configurations (``CONFIGS``), each with one worker (one NGINX worker process, one
   ``surefoot decide`` or ``surefoot serve`` process), each started afresh for every run:
   ``nginx``, NGINX proxying ``GET /items`` to the upstream, with ``auth_request off``;
   ``nginx+decide-sqlite`` and ``nginx+decide-redis``, the same NGINX asking ``surefoot
   decide`` (``auth_request``, ``?edge=nginx``, fail closed) before it proxies;
   ``nginx+floor``, the same NGINX asking the floor of a decision service instead
   (``bench/_decide_floor.py``: ``surefoot decide``'s HTTP server answering every request
   as an allowed decision, fixed, with no store and no decision), which bounds what a
   decision service on that HTTP server can reach through the edge;
   ``decide-sqlite`` and ``decide-redis``, wrk straight at ``/decide`` with
   ``X-Original-Method: GET`` and ``X-Original-URI: /items`` (``bench/decide.lua``);
   ``serve-sqlite`` and ``serve-redis``, wrk straight at ``surefoot serve`` with the same
   policy file, proxying to the same upstream.
4. NGINX's configuration is ``examples/edge/nginx.conf.template`` as the tests fill it
   (``tests/edge/_edge_helpers.py``: the same placeholders), with the benchmark's changes,
   each one checked to apply (``nginx_config``): one worker process, no access log,
   ``keepalive 64`` and ``keepalive_requests 1000000`` to its upstreams and clients (so
   neither side reconnects every 1,000 requests, as in ``bench/gateway.py``), and, for
   ``nginx``, ``auth_request off``: plain NGINX is the same file, the decision alone
   taken out.
5. Before its runs, each configuration must answer: through NGINX, ``GET /items`` with the
   upstream's body, and with a ``RateLimit`` field where the decision service is asked
   (none for plain NGINX); ``/decide`` with 200 and a ``RateLimit`` field, and 400
   without ``X-Original-Method``; ``surefoot serve`` with the upstream's body and a
   ``RateLimit`` field. Then ``--warmup`` seconds of load, then the timed run.
6. Runs are interleaved: every round runs every configuration once, in an order rotated
   by one each round; ratios are taken within a round (``nginx+decide-*`` over ``nginx``,
   ``decide-*`` over ``serve-*`` on the same store) and the table shows medians over
   rounds, with the least and greatest ratio; beside it, the CPU ratio: the baseline's
   CPU time per request (NGINX, surefoot and the upstream together) over this one's.
7. With two or more CPUs and ``taskset``, the measured side (NGINX, ``surefoot decide``,
   ``surefoot serve``) is pinned to one CPU, wrk and the upstream to another
   (``--no-pin``: nothing pinned). The private ``redis-server`` runs on wrk's CPU: the
   store that edge hosts share lives on a host of its own, never on an edge's CPU. (A
   server left to float, such as the machine's one through ``--redis-url``, is not
   pinned: the scheduler often wakes it on the measured CPU, where it takes time from
   NGINX and ``surefoot decide``.) Its CPU time is read from ``/proc``, or for
   ``--redis-url``'s from ``INFO cpu``, which counts every client of it. Every child
   runs in a process group of its own, stopped at the end whatever happens.
8. surefoot's source files are hashed at the start and at the end (``bench/gateway.py``):
   a tree edited during the run is reported.

The targets (issue 22), with one worker: NGINX through the edge on Redis
(``nginx+decide-redis``) at least 0.5x plain NGINX's req/s; the decision endpoint
(``decide-*``) at least 3x the gateway's own req/s with the same policies (``serve-*``,
on the same store). A configuration with errors (wrk's, and any answer but a 2xx), whose
baseline has some, or whose service logs a WARNING or worse under load (a store timeout:
a request admitted undecided) misses its target.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _harness as h

import gateway as g

ROOT = h.BENCH_DIR.parent
NGINX_TEMPLATE = ROOT / "examples" / "edge" / "nginx.conf.template"
DECIDE_LUA = h.BENCH_DIR / "decide.lua"
FLOOR = h.BENCH_DIR / "_decide_floor.py"
#: The target of NGINX through the edge on Redis, over plain NGINX's req/s.
EDGE_TARGET = 0.5
#: The target of the decision endpoint, over the gateway's own req/s on the same store.
DECIDE_TARGET = 3.0

# -- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    kind: str  # "nginx" (plain), "edge" (NGINX + decide), "decide" or "serve"
    store: str | None  # the decision store: "sqlite", "redis", "floor" (none); None: no policy
    baseline: str | None  # the configuration its req/s ratio is to
    target: float | None  # least ratio of req/s to the baseline's
    meaning: str


CONFIGS = (
    Config("nginx", "nginx", None, None, None, "NGINX proxying to the upstream, no decision"),
    Config(
        "nginx+decide-sqlite",
        "edge",
        "sqlite",
        "nginx",
        None,
        "NGINX, auth_request to surefoot decide (SQLite), then the upstream",
    ),
    Config(
        "nginx+decide-redis",
        "edge",
        "redis",
        "nginx",
        EDGE_TARGET,
        "NGINX, auth_request to surefoot decide (Redis), then the upstream",
    ),
    Config(
        "nginx+floor",
        "edge",
        "floor",
        "nginx",
        None,
        "NGINX, auth_request to the floor of a decision service (its HTTP server alone)",
    ),
    Config(
        "decide-sqlite",
        "decide",
        "sqlite",
        "serve-sqlite",
        DECIDE_TARGET,
        "wrk straight at surefoot decide's /decide (SQLite)",
    ),
    Config(
        "decide-redis",
        "decide",
        "redis",
        "serve-redis",
        DECIDE_TARGET,
        "wrk straight at surefoot decide's /decide (Redis)",
    ),
    Config(
        "serve-sqlite",
        "serve",
        "sqlite",
        None,
        None,
        "wrk straight at surefoot serve, the same policy (SQLite), the same upstream",
    ),
    Config(
        "serve-redis",
        "serve",
        "redis",
        None,
        None,
        "wrk straight at surefoot serve, the same policy (Redis), the same upstream",
    ),
)

POLICY_TOML = """\
[server]
# NGINX, on the loopback: its X-Forwarded-For (the client's address) is believed.
trusted_proxies = ["127.0.0.1"]
# The benchmark measures deciding and proxying, not writing one log line per request.
access_log = false

[upstream]
url = "{upstream}"

[stores]
default = "{store}"

[admin]
enabled = false

[rate_limit]
store = "default"

# No per-address ceiling: the one policy below is the only limit.
[identity]
address_limits = []

# Never reached: every request is decided, counted and admitted.
[[rate_limit.policies]]
name = "bench"
limits = ["1000000/second", "1000000000/hour"]
algorithm = "sliding_window"
"""


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=5, quick={"rounds": 1, "duration": 5})
    h.add_wrk_options(parser, duration=15)
    h.add_selection(parser, "--configs", CONFIGS)
    h.option(
        parser,
        "--redis-timeout",
        0.25,
        "RedisStore's timeout (seconds) in surefoot decide and serve (its default is 0.05: "
        "a saturated worker on a shared machine reads replies late)",
    )
    h.add_redis_options(parser, used_by="the *-redis configurations")
    parser.add_argument("--nginx", default="/usr/sbin/nginx", help="the nginx executable")
    h.add_pin_options(parser, what="the measured side, and wrk with the upstream,")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    h.check_wrk_options(parser, args)
    # A configuration's baseline runs with it: its ratio is taken within a round.
    chosen = {c.name for c in args.configs}
    chosen |= {c.baseline for c in args.configs if c.baseline is not None}
    args.configs = [c for c in CONFIGS if c.name in chosen]
    return args


def check_tools(args: argparse.Namespace) -> None:
    h.require_executable("wrk")
    if any(c.kind in ("nginx", "edge") for c in args.configs):
        h.require_executable("nginx", args.nginx)
        if not NGINX_TEMPLATE.exists():
            raise h.BenchError(f"{NGINX_TEMPLATE} not found")
    modules = ["uvicorn", "uvloop", "httptools", "surefoot", "surefoot.edge"]
    if any(c.store == "redis" for c in args.configs):
        modules.append("redis")
    h.require_modules(modules, "bench,gateway,redis")


def environment(args: argparse.Namespace) -> dict[str, Any]:
    tools = {
        "wrk": ["wrk", "--version"],
        "nginx": [args.nginx, "-v"],
        "redis_server": [args.redis_server, "--version"],
    }
    env = h.environment(("surefoot", "uvicorn", "uvloop", "httptools", "redis", "hiredis"), tools)
    env["redis_server"] = env["redis_server"].split(" sha=")[0]
    return env


# -- NGINX ------------------------------------------------------------------------------------

#: The benchmark's changes to the template: (what the template says, what it runs with).
NGINX_CHANGES = (
    ("worker_processes auto;", "worker_processes 1;"),
    ("access_log access.log;", "access_log off;"),
    ("server_tokens off;", "server_tokens off;\n    keepalive_requests 1000000;"),
    ("keepalive 32;", "keepalive 64;\n        keepalive_requests 1000000;"),
)
PLAIN_CHANGE = ("auth_request /_surefoot/decide;", "auth_request off;")


def nginx_config(*, listen: str, decide: str, upstream: str, plain: bool) -> str:
    """``examples/edge/nginx.conf.template`` filled as the tests fill it (fail closed),
    with ``NGINX_CHANGES`` (and ``PLAIN_CHANGE`` if ``plain``), each checked to apply."""
    text = NGINX_TEMPLATE.read_text()
    values = {
        "LISTEN": listen,
        "DECIDE": decide,
        "UPSTREAM": upstream,
        "GATEWAY": upstream,
        "DECIDE_DOWN": "fail_closed",
    }
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    if "{{" in text:
        raise h.BenchError(f"{NGINX_TEMPLATE}: a placeholder is left unfilled")
    for old, new in (*NGINX_CHANGES, *([PLAIN_CHANGE] if plain else [])):
        if old not in text:
            raise h.BenchError(f"{NGINX_TEMPLATE} has changed: {old!r} is not in it")
        text = text.replace(old, new)
    return text


def start_nginx(
    args: argparse.Namespace, workdir: Path, decide: str, upstream: str, plain: bool, cpu: list[str]
) -> tuple[h.Child, Path]:
    """NGINX (master and one worker) on a free port, its files under ``workdir/nginx``."""
    prefix = workdir / "nginx"
    prefix.mkdir()
    for path in (workdir, prefix):
        path.chmod(0o755)  # workers run as nobody when started by root
    port = h.free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        nginx_config(listen=f"127.0.0.1:{port}", decide=decide, upstream=upstream, plain=plain)
    )
    command = [*cpu, args.nginx, "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off;"]
    child = h.Child("nginx", command, workdir / "nginx.log", port=port)
    try:
        child.wait_listening(30)
    except h.BenchError as exc:
        raise h.BenchError(f"{exc}\nerror.log:\n{error_log(prefix)}") from None
    return child, prefix


def error_log(prefix: Path, chars: int = 2000) -> str:
    path = prefix / "error.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# -- surefoot ---------------------------------------------------------------------------------


@dataclass
class Service:
    """``surefoot decide`` or ``surefoot serve`` on a free port, and its Redis prefix."""

    child: h.Child
    redis_prefix: str | None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.child.port}"


def start_service(
    command: str,
    config: Config,
    workdir: Path,
    upstream: str,
    redis: h.BenchRedis | None,
    cpu: list[str],
    redis_timeout: float,
) -> Service:
    """``surefoot decide`` or ``surefoot serve`` (``command``) with ``POLICY_TOML`` on the
    store of ``config``, one worker, ready; for the store ``floor``, ``FLOOR`` instead of
    ``surefoot decide``."""
    redis_prefix = None
    if config.store == "redis":
        if redis is None:
            raise h.BenchError(f"{config.name}: no Redis server")
        redis_prefix = f"sfbench-edge-{secrets.token_hex(6)}:"
        store = h.with_query(redis.url, f"prefix={redis_prefix}&timeout={redis_timeout:g}")
    else:
        store = f"sqlite:///{workdir / 'decisions.db'}"
    path = workdir / "policy.toml"
    path.write_text(POLICY_TOML.format(upstream=upstream, store=store))
    port = h.free_port()
    argv = [
        *cpu, sys.executable, "-m", "surefoot", command, "--config", str(path),
        "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if config.store == "floor":  # the policy file gives its [server] limits only
        argv = [*cpu, sys.executable, str(FLOOR), str(path), str(port)]
    # TMPDIR: anything a worker writes goes with the rest, deleted at the end.
    log, env = workdir / f"{command}.log", {"TMPDIR": str(workdir)}
    child = h.Child(f"surefoot {command}", argv, log, env, port)
    service = Service(child, redis_prefix)
    if command == "decide":
        child.wait_http(child.base + "/readyz")
    else:
        child.wait_http(child.base + g.GET_PATH)
    return service


# -- the checks -------------------------------------------------------------------------------


def check_answers(config: Config, base: str) -> None:
    """The configuration answers as it should (item 5 of the theory of operation)."""
    label = config.name
    if config.kind == "decide":
        original = {"X-Original-Method": "GET", "X-Original-URI": g.GET_PATH}
        status, headers, body = h.http(base + "/decide", headers=original)
        if status != 200 or "ratelimit" not in headers:
            raise h.BenchError(
                f"{label}: /decide answered {status} {body[:300]!r}, fields {headers}: "
                "expected 200 with a RateLimit field"
            )
        status, _, body = h.http(base + "/decide", headers={"X-Original-URI": g.GET_PATH})
        if status != 400:
            raise h.BenchError(
                f"{label}: /decide without X-Original-Method answered {status} {body[:300]!r}"
            )
        return
    status, headers, body = h.http(base + g.GET_PATH)
    if status != 200 or body != g.GET_ANSWER:
        raise h.BenchError(f"{label}: GET answered {status} {body[:300]!r}")
    decided = "ratelimit" in headers
    if decided != (config.store is not None):
        raise h.BenchError(
            f"{label}: the answer to GET {'has' if decided else 'lacks'} a RateLimit field "
            f"({headers}): the decision is {'on' if decided else 'off'}"
        )


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Sides:
    """The processes of one run whose CPU time is read: NGINX, the service, the upstream."""

    nginx: h.Child | None
    service: Service | None
    upstream: h.Child
    redis: h.BenchRedis | None

    def cpu(self) -> dict[str, float | None]:
        return {
            "nginx": self.nginx.cpu_seconds() if self.nginx else None,
            "service": self.service.child.cpu_seconds() if self.service else None,
            "upstream": self.upstream.cpu_seconds(),
            "redis": self.redis.cpu_seconds() if self.redis else None,
        }


@contextlib.contextmanager
def started(
    args: argparse.Namespace,
    config: Config,
    workdir: Path,
    upstream: h.Child,
    redis: h.BenchRedis | None,
    cpus: h.CpuPlan,
) -> Iterator[tuple[Sides, str]]:
    """The processes of ``config``, ready, and the URL wrk loads; stopped on exit."""
    service: Service | None = None
    nginx: h.Child | None = None
    prefix: Path | None = None
    store_redis = redis if config.store == "redis" else None
    upstream_address = upstream.base.removeprefix("http://")
    try:
        if config.kind in ("edge", "decide"):
            service = start_service(
                "decide", config, workdir, upstream.base, redis, cpus.server, args.redis_timeout
            )
        elif config.kind == "serve":
            service = start_service(
                "serve", config, workdir, upstream.base, redis, cpus.server, args.redis_timeout
            )
        if config.kind in ("nginx", "edge"):
            # Plain NGINX never asks it: the address is only filled in.
            decide = service.address if service else "127.0.0.1:9"
            nginx, prefix = start_nginx(
                args, workdir, decide, upstream_address, config.kind == "nginx", cpus.server
            )
        front = nginx or (service.child if service else None)
        if front is None:
            raise h.BenchError(f"{config.name}: unknown kind {config.kind!r}")
        try:
            check_answers(config, front.base)
        except h.BenchError as exc:
            logs = f"\nerror.log:\n{error_log(prefix)}" if prefix else ""
            said = service.child.died() if service else ""
            raise h.BenchError(f"{exc}{logs}{said}") from None
        url = front.base + ("/decide" if config.kind == "decide" else g.GET_PATH)
        yield Sides(nginx, service, upstream, store_redis), url
    finally:
        if nginx is not None:
            nginx.stop()
        if service is not None:
            service.child.stop()
            if service.redis_prefix and redis is not None:
                redis.delete(service.redis_prefix)


def run_one(
    args: argparse.Namespace,
    config: Config,
    round_no: int,
    cpus: h.CpuPlan,
    upstream: h.Child,
    redis: h.BenchRedis | None,
) -> h.Run:
    script = DECIDE_LUA if config.kind == "decide" else h.GET_LUA
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-edge-") as tmp:
        workdir = Path(tmp)
        try:
            with started(args, config, workdir, upstream, redis, cpus) as (sides, url):
                service = sides.service
                log_before = len(service.child.log_lines()) if service else 0
                if args.warmup > 0:
                    h.wrk_load(args, cpus, script, url, args.warmup)
                before = sides.cpu()
                result = h.wrk_load(args, cpus, script, url, args.duration)
                after = sides.cpu()
                log = service.child.log_lines()[log_before:] if service else []
                problems = [line for line in log if not quiet(line)]
                if service is not None and service.child.process.poll() is not None:
                    raise h.BenchError(service.child.died())
                nginx_errors = [
                    line
                    for line in error_log(workdir / "nginx", 1 << 20).splitlines()
                    if "[error]" in line or "[crit]" in line or "[alert]" in line
                ]
        except h.BenchError as exc:
            raise h.BenchError(f"round {round_no} {config.name}: {exc}") from None
    figures = h.wrk_figures(result, f"{config.name} in {args.duration} s")
    requests = figures["requests"]
    cpu_us: dict[str, float | None] = {}
    for side, value in after.items():
        start = before[side]
        cpu_us[side] = None if value is None or start is None else (value - start) / requests * 1e6
    ours = [v for k, v in cpu_us.items() if k != "redis" and v is not None]
    return {
        "round": round_no,
        "config": config.name,
        **figures,
        "cpu_us_per_request": cpu_us,
        "our_cpu_us_per_request": sum(ours),
        "service_log_problems": g.log_summary([VOLATILE.sub("", line) for line in problems]),
        "service_log_problem_count": len(problems),
        "nginx_errors": nginx_errors[-5:],
        "nginx_error_count": len(nginx_errors),
        "wrk_output": result["output"] if figures["error_count"] else "",
    }


#: What differs between two log lines of one kind in ``surefoot decide``'s text format.
VOLATILE = re.compile(r" (?:at|request_id|duration|failed_probes)=\S+")


def quiet(line: str) -> bool:
    """Whether a line of the service's log is below WARNING (blank, uvicorn's ``INFO:``
    lines, or a JSON record of ``bench/gateway.py``'s ``quiet``)."""
    return not line.strip() or line.startswith("INFO:") or g.quiet(line)


def say(run: h.Run, width: int) -> None:
    cpu = run["cpu_us_per_request"]
    print(
        f"  round {run['round']} {run['config']:<{width}} {run['rps']:>8,.0f} req/s"
        f"  p99 {run['latency_ms']['p99']:6.2f} ms"
        f"  CPU us/req nginx {h.num(cpu['nginx'], ',.0f')} service "
        f"{h.num(cpu['service'], ',.0f')} upstream {h.num(cpu['upstream'], ',.0f')}"
        f"  errors {run['error_count']}",
        flush=True,
    )
    for kind, count in run["service_log_problems"].items():
        print(f"    service log: {count:>6} x {kind}")
    for line in run["nginx_errors"]:
        print(f"    nginx error.log: {line[:300]}")


# -- report -----------------------------------------------------------------------------------


def summarize(configs: list[Config], runs: list[h.Run]) -> list[h.Run]:
    rows = []
    for config in configs:
        mine = h.by_round(runs, config=config.name)
        if not mine:
            continue
        errors = sum(r["error_count"] for r in mine.values())
        row: h.Run = {
            "config": config.name,
            "meaning": config.meaning,
            "rps": h.median(r["rps"] for r in mine.values()),
            "p50_ms": h.median(r["latency_ms"]["p50"] for r in mine.values()),
            "p99_ms": h.median(r["latency_ms"]["p99"] for r in mine.values()),
            "baseline": config.baseline,
            "ratio": None,
            "ratio_min": None,
            "ratio_max": None,
            "cpu_ratio": None,
            "target": config.target,
            "met": None,
            "errors": errors,
            "nginx_errors": sum(r["nginx_error_count"] for r in mine.values()),
            "service_log_problems": sum(r["service_log_problem_count"] for r in mine.values()),
        }
        for side in ("nginx", "service", "upstream", "redis"):
            row[f"{side}_cpu_us"] = h.median_known(
                r["cpu_us_per_request"][side] for r in mine.values()
            )
        if config.baseline is not None:
            base = h.by_round(runs, config=config.baseline)
            ratios = h.paired(mine, base, lambda r, b: r["rps"] / b["rps"])
            if ratios:
                spread = h.Spread.range(ratios)
                row |= {"ratio": spread.median, "ratio_min": spread.low, "ratio_max": spread.high}
                row["cpu_ratio"] = h.median(
                    h.paired(
                        mine,
                        base,
                        lambda r, b: b["our_cpu_us_per_request"] / r["our_cpu_us_per_request"],
                    )
                )
                if config.target is not None:
                    base_errors = sum(r["error_count"] for r in base.values())
                    clean = not (errors or base_errors or row["service_log_problems"])
                    row["met"] = spread.median >= config.target and clean
        rows.append(row)
    return rows


COLUMNS = (
    "configuration", "req/s", "ratio", "(min-max)", "to", "target", "met", "p50 ms", "p99 ms",
    "CPU ratio", "NGINX us/req", "surefoot us/req", "upstream us/req", "Redis us/req",
    "errors",
)  # fmt: skip


def cells(row: h.Run) -> list[str]:
    ratio = row["ratio"]
    spread = "-" if ratio is None else f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
    return [
        row["config"],
        f"{row['rps']:,.0f}",
        h.num(ratio, ".2f"),
        spread,
        row["baseline"] or "-",
        h.target_text(row["target"], ">="),
        h.met_text(row["met"]),
        f"{row['p50_ms']:.2f}",
        f"{row['p99_ms']:.2f}",
        h.num(row["cpu_ratio"], ".2f"),
        h.num(row["nginx_cpu_us"], ",.0f"),
        h.num(row["service_cpu_us"], ",.0f"),
        h.num(row["upstream_cpu_us"], ",.0f"),
        h.num(row["redis_cpu_us"], ",.1f"),
        str(row["errors"]),
    ]


def print_report(
    args: argparse.Namespace, context: h.Run, runs: list[h.Run], rows: list[h.Run]
) -> None:
    load = (
        f"wrk {args.threads} threads, {args.connections} connections, GET {g.GET_PATH} (to "
        f"/decide: X-Original-Method GET, X-Original-URI {g.GET_PATH}); {args.duration} s per "
        f"run after {args.warmup} s warm-up, {args.rounds} round(s), configurations interleaved"
    )
    h.print_header(
        context,
        [
            ("load", load),
            ("policy", context["policy"]),
            ("upstream", context["upstream"]),
            ("redis", context["redis"]),
            ("cpus", context["cpus"]),
        ],
        "uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), redis-py {redis}, "
        "{nginx}, {wrk}, {redis_server}",
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
        h.Column("configuration", f"<{max(13, width)}"), h.Column("req/s", ">7"),
        h.Column("ratio", ">5"), h.Column("(min-max)", ">9"), h.Column("to", f"<{width}"),
        h.Column("target", ">6"), h.Column("met", ">3"), h.Column("p50 ms", ">6"),
        h.Column("p99 ms", ">6"), h.Column("CPU ratio", ">9"), h.Column("NGINX us/req", ">12"),
        h.Column("surefoot us/req", ">15"), h.Column("upstream us/req", ">15"),
        h.Column("Redis us/req", ">12"), h.Column("errors", ">6"),
    ]  # fmt: skip
    print("\n".join(h.text_table(columns, [cells(row) for row in rows])))
    print()
    print("req/s, p50, p99, CPU: medians over rounds (wrk's latency percentiles); one worker")
    print("       each, so a decide row's req/s is the decision service's per worker.")
    print("ratio: median of the per-round ratios of req/s to the configuration named in 'to'")
    print("       (min-max: their spread); the targets apply to it.")
    print("CPU us/req: CPU time per request of NGINX (master and worker), of surefoot decide or")
    print("       serve, of the upstream, and of Redis (INFO cpu: every client of the server),")
    print("       during the timed run.")
    print("CPU ratio: the baseline's CPU us/req (NGINX, surefoot and the upstream together) over")
    print("       this one's, the median per round: the req/s ratio to expect if CPU were the")
    print("       only limit, less sensitive to other load on the machine than req/s.")
    print("errors: wrk socket errors, timeouts (5 s) and answers >= 400, all rounds; a")
    print("       configuration with errors (or whose baseline has some), or whose service")
    print("       logged a WARNING or worse under load (a store timeout: a request not decided),")
    print("       misses its target.")
    print()
    names = [row["config"] for row in rows]
    print("per round, req/s:")
    print("  round " + " ".join(f"{n:>{max(10, len(n))}}" for n in names))
    for round_no in range(1, args.rounds + 1):
        mine = {r["config"]: r for r in runs if r["round"] == round_no}
        line = " ".join(f"{mine[n]['rps']:>{max(10, len(n))},.0f}" for n in names)
        print(f"  {round_no:>5} {line}")
    failed = [r for r in runs if r["error_count"] or r["service_log_problems"]]
    if failed:
        print("\nWARNING: errors or warnings under load:")
        for r in failed:
            kinds = ", ".join(f"{n} {k}" for k, n in r["errors"].items() if n)
            print(f"  round {r['round']} {r['config']}: {kinds or 'no wrk error'}")
            for kind, count in r["service_log_problems"].items():
                print(f"    {count:>6} x {kind}")
    print()
    print("Markdown:")
    print()
    print(h.markdown_table(COLUMNS, [cells(row) for row in rows], ["configuration", "to", "met"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    check_tools(args)
    cpus = h.split_cpus(args.no_pin, "wrk and the upstream")
    uses_redis = any(c.store == "redis" for c in configs)
    redis = h.BenchRedis(args.redis_url, cpus.load, args.redis_server) if uses_redis else None
    width = max(len(c.name) for c in configs)
    runs: list[h.Run] = []
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-edge-") as tmp:
        workdir = Path(tmp)
        upstream = h.start_uvicorn(
            "upstream", "gateway:upstream_app", workdir, workers=1, lifespan=False,
            prefix=cpus.load,
        )  # fmt: skip
        context: h.Run = {
            "command": args.command,
            "policy": "one rate-limit policy (1,000,000/second and 1,000,000,000/hour, sliding "
            "window) never reached, one principal (wrk's address), no access log; SQLite (a "
            "new file per start) or Redis (a new key prefix per start)",
            "upstream": "bench/gateway.py:upstream_app under uvicorn, 1 worker, uvloop, "
            "httptools, no access log, on wrk's CPU",
            "redis": "not used"
            if redis is None
            else f"{redis.where(cpus.load)}; RedisStore timeout {args.redis_timeout:g} s",
            "cpus": f"{cpus.sentence}; the server side is NGINX and surefoot decide or serve",
            "environment": environment(args),
            "load_before": h.load_average(),
            "source_before": g.source_files(),
        }
        try:
            upstream.wait_http(upstream.base + g.GET_PATH)
            total = args.rounds * len(configs) * (args.duration + args.warmup + 3)
            print(
                f"{len(configs)} configurations x {args.rounds} rounds, about {total / 60:.0f} "
                f"min; {cpus.sentence}",
                flush=True,
            )
            for round_no in range(1, args.rounds + 1):
                for config in h.rotated(configs, round_no):
                    run = run_one(args, config, round_no, cpus, upstream, redis)
                    runs.append(run)
                    say(run, width)
        finally:
            upstream.stop()
            if redis is not None:
                redis.stop()
        context["load_after"] = h.load_average()
        context["source_after"] = g.source_files()
    rows = summarize(configs, runs)
    print_report(args, context, runs, rows)
    used = h.settings(
        args, "rounds", "duration", "warmup", "connections", "threads", "redis_timeout"
    )
    return h.finish(
        args,
        context,
        used,
        rows,
        runs,
        configs=[asdict(c) for c in configs],
        targets={"edge_over_nginx": EDGE_TARGET, "decide_over_serve": DECIDE_TARGET},
    )


if __name__ == "__main__":
    sys.exit(h.run(main))
