"""Throughput of ``IdempotencyMiddleware`` against the bare app, under uvicorn and wrk.

Usage::

    .venv/bin/python bench/idempotency.py                   # 3 rounds x 8 s per run
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
   private ``redis-server`` that the script starts (``bench/redis_decisions.py``'s
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
from redis_decisions import BenchRedis, with_query

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "idempotency.lua"
APP = "_idempotency_app:app"
BODY = b'{"amount":1000,"currency":"eur","customer":"cus_4QFJOjw2pOmAGJ","description":"bench"}'
INSTALL_WRK = (
    "wrk is not installed. On Debian/Ubuntu: sudo apt-get install wrk; "
    "on macOS: brew install wrk; or build it from https://github.com/wg/wrk"
)


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


class BenchError(Exception):
    """The benchmark cannot go on (a server that does not start, a wrk failure...)."""


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark IdempotencyMiddleware (memory and SQLite stores) against the "
        "bare Starlette app under uvicorn, loaded by wrk.",
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
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and wrk to CPUs"
    )
    parser.add_argument(
        "--redis-url",
        help="Redis server of the redis- configurations (default: start a private "
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
    if min(args.rounds, args.duration, args.connections) < 1 or min(args.warmup, args.prefill) < 0:
        parser.error(
            "expected --rounds, --duration and --connections >= 1, --warmup and --prefill >= 0"
        )
    if args.threads < 1 or args.threads > args.connections:
        parser.error("expected 1 <= --threads <= --connections")
    args.configs = [c for c in CONFIGS if c.name == "bare" or c.name in names]
    return args


def check_tools(configs: list[Config]) -> None:
    if shutil.which("wrk") is None:
        raise BenchError(INSTALL_WRK)
    missing = []
    modules = ["uvicorn", "uvloop", "httptools", "starlette", "surefoot"]
    if any(c.store == "redis" for c in configs):
        modules.append("redis")
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BenchError(
            f"missing Python packages {missing} in {sys.executable}; "
            "install them with: pip install -e '.[test]'"
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
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "wrk": (wrk.stdout or wrk.stderr).split("\n", 1)[0].split(" Copyright")[0].strip(),
        "git": git.stdout.strip() or "unknown",
        **{p: version(p) for p in ("surefoot", "uvicorn", "uvloop", "httptools", "starlette")},
    }


# -- one run --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, key: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url,
        data=BODY,
        method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


class Server:
    """One uvicorn process serving the bench app with one store configuration."""

    def __init__(
        self,
        config: Config,
        workdir: Path,
        prefix: list[str],
        prefill: int,
        redis: BenchRedis | None,
        redis_options: str = "",
    ) -> None:
        self.config = config
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        #: the keys of this server on Redis (its redis- configurations only).
        self.redis_prefix = f"sfbench-{secrets.token_hex(6)}"
        if config.store == "redis" and redis is None:
            raise BenchError(f"{config.name}: no Redis server")
        store = {
            "bare": "",
            "memory": "memory://",
            "sqlite": f"sqlite:///{workdir / 'idempotency.db'}",
            "redis": ""
            if redis is None
            else with_query(redis.url, f"prefix={self.redis_prefix}:", redis_options),
        }[config.store]
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
        self.log = (workdir / "server.log").open("w+b")
        self.process = subprocess.Popen(
            command,
            env={
                **os.environ,
                "SUREFOOT_BENCH_STORE": store,
                "SUREFOOT_BENCH_PREFILL": str(prefill),
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.config.name}: server exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"{self.config.name}: server did not answer in {timeout:g} s")

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


def wrk(
    args: argparse.Namespace, prefix: list[str], url: str, duration: int, lua_args: list[str]
) -> dict[str, Any]:
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
        "--",
        *lua_args,
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
        server = Server(config, Path(tmp), server_prefix, args.prefill, redis, args.redis_options)
        try:
            server.wait_ready()
            url = server.base + "/charges"
            nonce = secrets.token_hex(4)
            replay_key = f"replay-{nonce}"
            # Sanity first: a protected POST answers 201; the replay key then replays.
            status, _, body = post(url, f"sanity-{nonce}")
            if status != 201:
                raise BenchError(f"{config.name}: POST answered {status}: {body[:200]!r}")
            if config.mode == "replay":
                check_replay(config, url, replay_key, prime=True)
            lua = [config.mode, nonce, replay_key]
            if args.warmup > 0:
                wrk(args, wrk_prefix, url, args.warmup, [config.mode, f"w{nonce}", replay_key])
            cpu_before = server.cpu_seconds()
            redis_before = redis.cpu_seconds() if redis else 0.0
            result = wrk(args, wrk_prefix, url, args.duration, lua)
            cpu = server.cpu_seconds() - cpu_before
            redis_cpu = redis.cpu_seconds() - redis_before if redis else None
            memory = server.memory()
            if config.mode == "replay":
                check_replay(config, url, replay_key, prime=False)
        finally:
            server.stop()
            if config.store == "redis" and redis is not None:
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


def check_replay(config: Config, url: str, key: str, *, prime: bool) -> None:
    """Prime ``key`` (first POST executes) and check that a second POST is a replay."""
    if prime:
        status, _, body = post(url, key)
        if status != 201:
            raise BenchError(f"{config.name}: priming POST answered {status}: {body[:200]!r}")
    status, headers, body = post(url, key)
    if status != 201 or headers.get("idempotent-replayed") != "true":
        raise BenchError(
            f"{config.name}: expected a replay (201, Idempotent-Replayed: true), got {status} "
            f"{headers.get('idempotent-replayed')!r}: {body[:200]!r}"
        )


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
        f"load:     wrk {args.threads} threads, {args.connections} connections, "
        f"{args.duration} s per run after {args.warmup} s warm-up, {args.rounds} round(s), "
        "configurations interleaved"
    )
    print(f"stores:   a fresh store per run, prefilled with {args.prefill:,} completed records")
    print(f"redis:    {context['redis']}")
    print(f"cpus:     {context['cpus']}")
    print(
        f"machine:  {env['cpus']} CPUs, load average {context['load_before']:.2f} before, "
        f"{context['load_after']:.2f} after (1 min)"
    )
    print(
        f"software: Python {env['python']}, surefoot {env['surefoot']} ({env['git']}), "
        f"uvicorn {env['uvicorn']} (uvloop {env['uvloop']}, httptools {env['httptools']}), "
        f"starlette {env['starlette']}, {env['wrk']}"
    )
    print()
    header = (
        f"{'configuration':<14} {'req/s':>7} {'ratio':>5} {'(min-max)':>9} {'target':>6} "
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
            f"{row['config']:<14} {row['rps']:>7,.0f} {row['ratio']:>5.2f} {spread:>9} "
            f"{target:>6} {met:>3} {row['cpu_us_per_request']:>10,.0f} "
            f"{row['cpu_ratio']:>9.2f} {redis_text:>8} {row['p99_ms']:>7.1f} {rss:>7} "
            f"{row['errors']:>6}"
        )
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
    print("per round, req/s (server CPU share of the wall time):")
    names = [row["config"] for row in rows]
    print("  round " + " ".join(f"{n:>16}" for n in names))
    for round_no in range(1, args.rounds + 1):
        by_name = {r["config"]: r for r in runs if r["round"] == round_no}
        cells = " ".join(
            f"{by_name[n]['rps']:>9,.0f} ({by_name[n]['cpu_seconds'] / by_name[n]['seconds']:.2f})"
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
        if any(c.store == "redis" for c in configs):
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
        total = args.rounds * len(configs) * (args.duration + args.warmup)
        print(
            f"{len(configs)} configurations x {args.rounds} rounds, about {total} s of load; "
            f"{pinning}",
            flush=True,
        )
        runs = []
        for round_no in range(1, args.rounds + 1):
            for config in configs:
                run = run_one(args, config, server_prefix, wrk_prefix, round_no, redis)
                runs.append(run)
                print(
                    f"  round {round_no} {config.name:<14} {run['rps']:>9,.0f} req/s"
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
                "prefill": args.prefill,
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
