"""Throughput of ``RateLimitMiddleware`` and slowapi against the bare app, under uvicorn and wrk.

Usage::

    .venv/bin/python bench/ratelimit_http.py                  # 3 rounds x 8 s per run, ~3 min
    .venv/bin/python bench/ratelimit_http.py --rounds 1 --duration 2 --warmup 1   # quick look
    .venv/bin/python bench/ratelimit_http.py --json results.json --check
    .venv/bin/python bench/ratelimit_http.py --configs surefoot,surefoot-redis   # and bare

Theory of operation:
1. Each configuration (``CONFIGS``) is one uvicorn process (uvloop, httptools, one
   worker, no access log) serving ``bench/_ratelimit_app.py`` on 127.0.0.1 and a free
   port; the environment variable ``SUREFOOT_BENCH_RATELIMIT`` tells it which limiter to
   put in front of ``GET /hello`` (a 12-byte text answer). The limit, 1,000,000 per
   minute per client, is never reached: every request is admitted, counted and (for
   surefoot) given its ``RateLimit`` header fields.
2. Before the rounds, each limited configuration is started once with a limit of 3 per
   minute and must answer 200, 200, 200, then 429: the limiter does limit.
3. Each run starts a fresh server, waits until its port accepts connections, checks
   one GET (200, and surefoot's ``RateLimit`` field), warms it up, loads it with wrk
   for ``--duration`` seconds, reads its CPU time and RSS, stops it.
4. Runs are interleaved: every round runs every configuration once, so the ratio of a
   configuration to ``bare`` is taken within a round, and drift of a noisy machine hits
   both sides alike. The table shows medians over rounds.
5. With two or more CPUs and ``taskset``, the server is pinned to one CPU and wrk to
   another, so they do not compete for a core.
6. The ``-redis`` configurations keep their counters on Redis: a private ``redis-server``
   that the script starts (``bench/redis_decisions.py``'s ``RedisServer``: a free port,
   nothing saved, stopped at the end) on wrk's CPU, so that the uvicorn process keeps its
   core to itself as with an in-process store, or the server of ``--redis-url``. Each
   server start gets a new key prefix (so the 3/minute check and every run count from
   zero) and its keys are deleted after the run; the Redis server's CPU time per request
   is reported beside the uvicorn process's.

The targets (ratio to bare, from the issues): surefoot (its defaults) at least 0.9 with
the memory store, at least 0.6 on Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from redis_decisions import BenchError as RedisBenchError
from redis_decisions import BenchRedis

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "ratelimit.lua"
APP = "_ratelimit_app:app"
PATH = "/hello"
BODY = b"hello, world"
CHECK_LIMIT = "3/minute"
INSTALL_WRK = (
    "wrk is not installed. On Debian/Ubuntu: sudo apt-get install wrk; "
    "on macOS: brew install wrk; or build it from https://github.com/wg/wrk"
)


@dataclass(frozen=True)
class Config:
    name: str
    mode: str  # SUREFOOT_BENCH_RATELIMIT, see _ratelimit_app.py
    target: float | None  # minimum ratio to bare
    meaning: str

    @property
    def redis(self) -> bool:
        """Whether the configuration keeps its counters on Redis."""
        return self.mode.endswith("-redis")


CONFIGS = (
    Config("bare", "bare", None, "the Starlette app alone"),
    Config(
        "surefoot",
        "surefoot",
        0.9,
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
        "surefoot-redis",
        "surefoot-redis",
        0.6,
        "the same as surefoot on Redis: store_from_url('redis://...?prefix=...'), RedisStore "
        "with its defaults (clock=server, coalescing on)",
    ),
    Config(
        "slowapi",
        "slowapi",
        None,
        "slowapi Limiter(default_limits=['1000000/minute']) and SlowAPIMiddleware "
        "(BaseHTTPMiddleware), limits' memory storage, fixed window",
    ),
    Config(
        "slowapi-asgi",
        "slowapi-asgi",
        None,
        "the same with SlowAPIASGIMiddleware, slowapi's pure ASGI middleware",
    ),
    Config(
        "slowapi-asgi-redis",
        "slowapi-asgi-redis",
        None,
        "slowapi-asgi on Redis: storage_uri='redis://...', limits' sync Redis storage",
    ),
)


class BenchError(Exception):
    """The benchmark cannot go on (a server that does not start, a wrk failure...)."""


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark RateLimitMiddleware and slowapi against the bare Starlette app "
        "under uvicorn, loaded by wrk.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    parser.add_argument(
        "--duration", type=int, default=8, help="seconds of each timed run (default: 8)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of untimed load before each timed run, 0 for none (default: 1)",
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default: 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default: 2)")
    parser.add_argument(
        "--configs",
        default=",".join(c.name for c in CONFIGS),
        help="comma-separated configurations to run; bare is always run (default: all)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and wrk to CPUs"
    )
    parser.add_argument(
        "--no-limit-check",
        action="store_true",
        help="skip the check that each limiter rejects past a 3/minute limit",
    )
    parser.add_argument(
        "--redis-url",
        help="Redis server of the -redis configurations (default: start a private "
        "redis-server; only keys under 'sfbench-*' are written, and deleted after each run)",
    )
    parser.add_argument(
        "--redis-server",
        default="redis-server",
        help="the redis-server executable to start (default: redis-server)",
    )
    parser.add_argument(
        "--redis-options",
        default="",
        help="query options added to surefoot's store URL, as in 'timeout=0.5&coalesce=false' "
        "(default: none, the store's defaults)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a target is missed"
    )
    args = parser.parse_args(argv)
    known = {c.name: c for c in CONFIGS}
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; expected names from {list(known)}")
    if min(args.rounds, args.duration, args.connections) < 1 or args.warmup < 0:
        parser.error("expected --rounds, --duration and --connections >= 1, --warmup >= 0")
    if args.threads < 1 or args.threads > args.connections:
        parser.error("expected 1 <= --threads <= --connections")
    args.configs = [c for c in CONFIGS if c.name == "bare" or c.name in names]
    return args


def check_tools(configs: list[Config]) -> None:
    if shutil.which("wrk") is None:
        raise BenchError(INSTALL_WRK)
    missing = []
    modules = ["uvicorn", "uvloop", "httptools", "starlette", "surefoot", "slowapi"]
    if any(c.redis for c in configs):
        modules.append("redis")
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BenchError(
            f"missing Python packages {missing} in {sys.executable}; "
            "install them with: pip install -e '.[bench]'"
        )


def cpu_plan(no_pin: bool) -> tuple[list[str], list[str], str]:
    """The command prefixes of the server and of wrk, and a sentence saying what they do."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return [], [], f"not pinned (--no-pin); {len(cpus)} CPUs available"
    if len(cpus) < 2:
        return [], [], "not pinned: only one CPU available; server and wrk share it"
    if shutil.which("taskset") is None:
        return [], [], "not pinned: taskset not found (Debian package util-linux)"
    server, load = cpus[0], cpus[1]
    return (
        ["taskset", "-c", str(server)],
        ["taskset", "-c", str(load)],
        f"server pinned to CPU {server}, wrk to CPU {load} (taskset), of {len(cpus)} CPUs",
    )


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    git = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    packages = ("surefoot", "slowapi", "limits", "uvicorn", "uvloop", "httptools", "starlette")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "wrk": (wrk.stdout or wrk.stderr).split("\n", 1)[0].split(" Copyright")[0].strip(),
        "git": git.stdout.strip() or "unknown",
        **{p: version(p) for p in packages},
    }


# -- one run --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


class Server:
    """One uvicorn process serving the bench app with one limiter configuration."""

    def __init__(
        self,
        config: Config,
        workdir: Path,
        prefix: list[str],
        redis: BenchRedis | None,
        limit: str | None = None,
        redis_options: str = "",
    ) -> None:
        self.config = config
        #: the keys of this server on Redis (its -redis configurations only).
        self.redis_prefix = f"sfbench-{secrets.token_hex(6)}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            *prefix,
            sys.executable,
            "-m",
            "uvicorn",
            APP,
            "--app-dir",
            str(BENCH_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        env = {**os.environ, "SUREFOOT_BENCH_RATELIMIT": config.mode}
        if config.redis:
            if redis is None:
                raise BenchError(f"{config.name}: no Redis server")
            env["SUREFOOT_BENCH_REDIS_URL"] = redis.url
            env["SUREFOOT_BENCH_REDIS_PREFIX"] = self.redis_prefix
            env["SUREFOOT_BENCH_REDIS_OPTIONS"] = redis_options
        if limit is not None:
            env["SUREFOOT_BENCH_LIMIT"] = limit
        self.log = (workdir / "server.log").open("w+b")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def wait_ready(self, timeout: float = 60.0) -> None:
        # A TCP connection, not a request: a request would count against the limit.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.config.name}: server exited:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"{self.config.name}: server did not listen in {timeout:g} s")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, float]:
        """Resident memory of the server process in MiB: now (VmRSS) and peak (VmHWM)."""
        out: dict[str, float] = {}
        status = Path(f"/proc/{self.process.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    out[name] = int(value.split()[0]) / 1024
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def check_limiting(
    config: Config, server_prefix: list[str], redis: BenchRedis | None, redis_options: str
) -> None:
    """Serve with a 3/minute limit: the fourth GET must be refused with 429."""
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-") as tmp:
        server = Server(config, Path(tmp), server_prefix, redis, CHECK_LIMIT, redis_options)
        try:
            server.wait_ready()
            statuses = [get(server.base + PATH)[0] for _ in range(4)]
        finally:
            server.stop()
            if config.redis and redis is not None:
                redis.delete(server.redis_prefix)
    if statuses != [200, 200, 200, 429]:
        raise BenchError(
            f"{config.name}: with a limit of {CHECK_LIMIT}, four GETs answered {statuses}, "
            "expected [200, 200, 200, 429]: the limiter is not limiting"
        )


def check_answer(config: Config, url: str) -> None:
    status, headers, body = get(url)
    if status != 200 or body != BODY:
        raise BenchError(f"{config.name}: GET answered {status}: {body[:200]!r}")
    if config.mode.startswith("surefoot") and "ratelimit" not in headers:
        raise BenchError(f"{config.name}: no RateLimit field in the answer: {headers}")


def wrk(args: argparse.Namespace, prefix: list[str], url: str, duration: int) -> dict[str, Any]:
    command = [
        *prefix,
        "wrk",
        "--threads",
        str(args.threads),
        "--connections",
        str(args.connections),
        "--duration",
        f"{duration}s",  # wrk takes whole seconds
        "--timeout",
        "5s",
        "--script",
        str(LUA_SCRIPT),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("SUREFOOT_BENCH "):
            result: dict[str, Any] = json.loads(line.removeprefix("SUREFOOT_BENCH "))
            return result
    raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def run_one(
    args: argparse.Namespace,
    config: Config,
    server_prefix: list[str],
    wrk_prefix: list[str],
    round_no: int,
    redis: BenchRedis | None,
) -> dict[str, Any]:
    # Redis CPU is read for every configuration: what the others cost it (nothing) shows.
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-") as tmp:
        server = Server(config, Path(tmp), server_prefix, redis, None, args.redis_options)
        try:
            server.wait_ready()
            url = server.base + PATH
            check_answer(config, url)
            if args.warmup > 0:
                wrk(args, wrk_prefix, url, args.warmup)
            cpu_before = server.cpu_seconds()
            redis_before = redis.cpu_seconds() if redis else 0.0
            result = wrk(args, wrk_prefix, url, args.duration)
            cpu = server.cpu_seconds() - cpu_before
            redis_cpu = redis.cpu_seconds() - redis_before if redis else None
            memory = server.memory()
            check_answer(config, url)
        finally:
            server.stop()
            if config.redis and redis is not None:
                redis.delete(server.redis_prefix)
    if result["requests"] == 0:
        raise BenchError(f"{config.name}: no request completed in {args.duration} s")
    seconds = result["duration_us"] / 1e6
    errors = result["errors"]
    return {
        "round": round_no,
        "config": config.name,
        "requests": result["requests"],
        "seconds": round(seconds, 3),
        "rps": result["requests"] / seconds,
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_request": cpu / result["requests"] * 1e6,
        "redis_cpu_us_per_request": (
            None if redis_cpu is None else redis_cpu / result["requests"] * 1e6
        ),
        "errors": errors,
        "error_count": sum(errors.values()),
        "latency_ms": {k: v / 1000 for k, v in result["latency_us"].items()},
        "rss_mib": memory.get("VmRSS"),
        "peak_rss_mib": memory.get("VmHWM"),
    }


# -- report ---------------------------------------------------------------------------------


def summarize(configs: list[Config], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bare = {r["round"]: r for r in runs if r["config"] == "bare"}
    rows = []
    for config in configs:
        mine = [r for r in runs if r["config"] == config.name]
        ratios = [r["rps"] / bare[r["round"]]["rps"] for r in mine]
        cpu_ratios = [
            bare[r["round"]]["cpu_us_per_request"] / r["cpu_us_per_request"] for r in mine
        ]
        ratio = statistics.median(ratios)
        rss = [r["rss_mib"] for r in mine if r["rss_mib"] is not None]
        rows.append(
            {
                "config": config.name,
                "meaning": config.meaning,
                "rps": statistics.median(r["rps"] for r in mine),
                "ratio": ratio,
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "target": config.target,
                # A failed request is cheap: a target is met only if every answer was 2xx.
                "met": None
                if config.target is None
                else ratio >= config.target and not sum(r["error_count"] for r in mine),
                "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in mine),
                "cpu_ratio": statistics.median(cpu_ratios),
                "redis_cpu_us_per_request": _median_or_none(
                    [r["redis_cpu_us_per_request"] for r in mine]
                ),
                "server_cpu_share": statistics.median(
                    r["cpu_seconds"] / r["seconds"] for r in mine
                ),
                "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in mine),
                "rss_mib": statistics.median(rss) if rss else None,
                "errors": sum(r["error_count"] for r in mine),
            }
        )
    return rows


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


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
        f"load:     wrk {args.threads} threads, {args.connections} connections, GET {PATH}, "
        f"{args.duration} s per run after {args.warmup} s warm-up, {args.rounds} round(s), "
        "configurations interleaved"
    )
    print(f"limiting: {context['limit_check']}")
    print(f"redis:    {context['redis']}")
    print(f"cpus:     {context['cpus']}")
    print(
        f"machine:  {env['cpus']} CPUs, load average {context['load_before']:.2f} before, "
        f"{context['load_after']:.2f} after (1 min)"
    )
    print(
        f"software: Python {env['python']}, surefoot {env['surefoot']} ({env['git']}), "
        f"slowapi {env['slowapi']} (limits {env['limits']}), uvicorn {env['uvicorn']} "
        f"(uvloop {env['uvloop']}, httptools {env['httptools']}), starlette {env['starlette']}, "
        f"{env['wrk']}"
    )
    print()
    header = (
        f"{'configuration':<18} {'req/s':>7} {'ratio':>5} {'(min-max)':>9} {'target':>6} "
        f"{'met':>3} {'CPU us/req':>10} {'CPU ratio':>9} {'Redis us':>8} {'p99 ms':>7} "
        f"{'RSS MiB':>7} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        target = "-" if row["target"] is None else f">={row['target']:.1f}"
        met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
        spread = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
        rss = "?" if row["rss_mib"] is None else f"{row['rss_mib']:.1f}"
        redis_cpu = row["redis_cpu_us_per_request"]
        redis_text = "-" if redis_cpu is None else f"{redis_cpu:,.1f}"
        print(
            f"{row['config']:<18} {row['rps']:>7,.0f} {row['ratio']:>5.2f} {spread:>9} "
            f"{target:>6} {met:>3} {row['cpu_us_per_request']:>10,.0f} "
            f"{row['cpu_ratio']:>9.2f} {redis_text:>8} {row['p99_ms']:>7.1f} {rss:>7} "
            f"{row['errors']:>6}"
        )
    print()
    print("req/s, CPU us/req, p99, RSS: median over rounds.")
    print("ratio: median of the per-round req/s ratios to bare (min-max: their spread);")
    print("       this is the figure the target applies to.")
    print("CPU us/req: server CPU time (user + system) per request during the timed run;")
    print("CPU ratio: bare's CPU us/req over this one's, the median per round: the req/s ratio")
    print("       to expect with a whole idle core, less sensitive to other load on the machine.")
    print("Redis us: Redis server CPU time per request during the timed run (all configurations")
    print("       run while it is up: near 0 for those that do not use it).")
    print("RSS: server resident memory after the timed run (VmRSS).")
    print("errors: wrk socket errors, timeouts (over 5 s) and non-2xx answers, all rounds;")
    print("       a configuration with errors does not meet its target.")
    print()
    print("per round, req/s (server CPU share of the wall time):")
    names = [row["config"] for row in rows]
    print("  round " + " ".join(f"{n:>18}" for n in names))
    for round_no in range(1, args.rounds + 1):
        by_name = {r["config"]: r for r in runs if r["round"] == round_no}
        cells = " ".join(
            f"{by_name[n]['rps']:>11,.0f} ({by_name[n]['cpu_seconds'] / by_name[n]['seconds']:.2f})"
            for n in names
        )
        print(f"  {round_no:>5} {cells}")
    failed = [r for r in runs if r["error_count"]]
    if failed:
        print("\nWARNING: some requests did not get a 2xx answer in time (wrk --timeout 5s):")
        for r in failed:
            kinds = ", ".join(f"{n} {k}" for k, n in r["errors"].items() if n)
            print(f"  round {r['round']} {r['config']}: {kinds}")


def redis_where(redis: BenchRedis | None, prefix: list[str]) -> str:
    if redis is None:
        return "not used"
    pinned = f", on wrk's CPU ({shlex.join(prefix)})" if redis.server and prefix else ""
    return redis.describe() + pinned


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(sys.orig_argv if argv is None else [sys.argv[0], *argv])
    configs: list[Config] = args.configs
    redis: BenchRedis | None = None
    try:
        check_tools(configs)
        server_prefix, wrk_prefix, pinning = cpu_plan(args.no_pin)
        if any(c.redis for c in configs):
            # On wrk's CPU: the uvicorn process keeps its core, as with an in-process store.
            redis = BenchRedis(args.redis_url, wrk_prefix, args.redis_server)
        context: dict[str, Any] = {
            "command": command,
            "cpus": pinning,
            "redis": redis_where(redis, wrk_prefix)
            + f"; store options: {args.redis_options or 'the defaults'}",
            "environment": environment(),
            "load_before": os.getloadavg()[0],
        }
        limited = [c for c in configs if c.mode != "bare"]
        if args.no_limit_check:
            context["limit_check"] = "not checked (--no-limit-check)"
        else:
            for config in limited:
                check_limiting(config, server_prefix, redis, args.redis_options)
            context["limit_check"] = (
                f"checked: with {CHECK_LIMIT}, {', '.join(c.name for c in limited)} "
                "answered 200, 200, 200, 429"
            )
        total = args.rounds * len(configs) * (args.duration + args.warmup)
        print(
            f"{len(configs)} configurations x {args.rounds} rounds, about {total} s of load; "
            f"{pinning}; limiting {context['limit_check']}",
            flush=True,
        )
        runs = []
        for round_no in range(1, args.rounds + 1):
            for config in configs:
                run = run_one(args, config, server_prefix, wrk_prefix, round_no, redis)
                runs.append(run)
                print(
                    f"  round {round_no} {config.name:<18} {run['rps']:>9,.0f} req/s"
                    f"  {run['cpu_us_per_request']:>6,.0f} CPU us/req"
                    f"  p99 {run['latency_ms']['p99']:.1f} ms  errors {run['error_count']}",
                    flush=True,
                )
        context["load_after"] = os.getloadavg()[0]
    except (BenchError, RedisBenchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if redis is not None:
            redis.stop()
    rows = summarize(configs, runs)
    print_report(args, context, runs, rows)
    if args.json:
        document = {
            **context,
            "settings": {
                "rounds": args.rounds,
                "duration": args.duration,
                "warmup": args.warmup,
                "connections": args.connections,
                "threads": args.threads,
            },
            "configs": [asdict(c) for c in configs],
            "summary": rows,
            "runs": runs,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    missed = [row["config"] for row in rows if row["met"] is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
