"""Gateway throughput with the top offenders and the built-in alert rules on, beside off.

Usage::

    .venv/bin/python bench/observe.py                  # 9 rounds x 20 s per run, about 12 min
    .venv/bin/python bench/observe.py --quick          # 1 round x 5 s: a smoke run, about 30 s
    .venv/bin/python bench/observe.py --json results.json --check
    .venv/bin/python bench/observe.py --configs on --workers 2   # and off, 2 workers

Theory of operation:
1. The upstream is ``bench/gateway.py``'s ``upstream_app`` (200 and a small JSON body to
   ``GET /items``) under uvicorn (one worker, uvloop, httptools, no access log), started
   once for the whole benchmark.
2. The gateways (``CONFIGS``), ``surefoot serve --workers N`` (``--workers``, default 1:
   the count issue 14's gateway targets are for, and what ``bench/targets.py`` runs
   ``bench/gateway.py`` with on these 2-CPU machines), each started afresh for every run
   on a new SQLite file (the embedded default store), differ only in ``[top]`` and
   ``[alerts]``: ``off`` (``[top] enabled = false``, ``[alerts] evaluate = false``),
   ``on`` (``enabled = true``, ``evaluate = true``: the defaults, a flush every 5 s and
   an evaluation every 15 s) and ``on-busy`` (the same with ``[top] flush_every = 1`` and
   ``[alerts] evaluate_every = 1``, the shortest periods allowed). Everything else is
   one file: ``[server] access_log = false`` (the benchmark measures the gateway, not an
   access log; each 429 is still logged at WARNING, as by default), idempotency off, no
   per-address cap (``[identity] address_limits = []``: wrk is one address), and one
   rate-limit policy ``bench``, ``10/second`` per client (sliding window).
3. The workload (``LUA``, written to a temporary file): ``GET /items``, each request with
   an ``X-API-Key`` drawn at random, ``--hot-share`` (25%) of them from ``--hot-keys``
   (10) keys over their limit (tens of requests per second each or more: most are
   refused with 429) and the rest from ``--cold-keys`` (10,000) keys far under it. The
   file lists no API key, so each key is a principal with its own counters: the refused
   list sees the hot keys and the admitted list more principals than ``[top] k`` (100)
   holds, so its summaries evict at every new one (their costliest path). The script
   counts the answers by status: a 429 is the policy at work, anything else not 2xx is
   an error (a configuration with errors misses its target).
4. Each run starts a fresh gateway and checks it first: a ``GET`` is answered with the
   upstream's body and a ``RateLimit`` field, and 15 quick ``GET`` with one key end in
   429. Then ``--warmup`` seconds of load, the timed run of ``--duration`` seconds (the
   gateway's CPU time, its memory: VmRSS and VmHWM summed over its processes), and a
   check of the tracking: where ``[top]`` is on, ``/admin/top`` lists refused clients
   (within ``flush_every`` and a few seconds), and ``/admin/alerts`` says whether the
   rules were evaluated; where it is off, ``/admin/top`` answers 404 and the rules were
   not evaluated.
5. Runs are interleaved: every round runs every configuration once, in an order rotated
   by one each round; ratios are taken within a round (req/s over ``off``'s) and the
   tables show medians over rounds, with the least and greatest ratio. A run of 20 s
   (``--duration``) holds one evaluation of ``on`` (every 15 s from the start) and three
   or four of its flushes; many short rounds follow the load of a shared machine better
   than a few long ones.
6. With two or more CPUs and ``taskset``, the gateway is pinned to one CPU (all of its
   workers), wrk and the upstream to another (``--no-pin``: nothing pinned). Every child
   runs in a process group of its own, stopped at the end whatever happens.

The target (issue 18): with the top offenders and the built-in rules on, at their
defaults (``on``), at least 0.95x the req/s of ``off``. ``on-busy`` is shown beside it,
without a target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _harness as h

PATH = "/items"
ANSWER = b'{"id":"item_1","name":"bench","price":1000}'
TOKEN = "bench"
TARGET = 0.95
STATUS_PREFIX = "SUREFOOT_STATUSES "

# -- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    tracked: bool  # [top] enabled and [alerts] evaluate
    every: float | None  # [top] flush_every and [alerts] evaluate_every; None: the defaults
    target: float | None  # least ratio of req/s to off's
    meaning: str

    @property
    def observe(self) -> str:
        """The [top] and [alerts] tables of the file."""
        flag = "true" if self.tracked else "false"
        top, alerts = f"[top]\nenabled = {flag}\n", f"[alerts]\nevaluate = {flag}\n"
        if self.every is not None:
            top += f"flush_every = {self.every:g}\n"
            alerts += f"evaluate_every = {self.every:g}\n"
        return f"{top}\n{alerts}"

    @property
    def flush_every(self) -> float:
        return DEFAULT_FLUSH_EVERY if self.every is None else self.every


DEFAULT_FLUSH_EVERY = 5.0
CONFIGS = (
    Config("off", False, None, None, "[top] enabled = false, [alerts] evaluate = false"),
    Config(
        "on",
        True,
        None,
        TARGET,
        "[top] enabled = true, [alerts] evaluate = true: the defaults (a flush every 5 s, "
        "an evaluation every 15 s)",
    ),
    Config(
        "on-busy",
        True,
        1.0,
        None,
        "the same with [top] flush_every = 1 and [alerts] evaluate_every = 1",
    ),
)

GATEWAY_TOML = """\
[server]
# The benchmark measures the gateway, not writing one access-log line per request.
access_log = false
workers = {workers}

[upstream]
url = "{upstream}"

[stores]
default = "sqlite:///{database}"

[admin]
token = "{token}"

# wrk is one address: no cap over all of its credentials.
[identity]
address_limits = []

[[rate_limit.policies]]
name = "bench"
limits = ["{limit}"]
algorithm = "sliding_window"

[[routes]]
match = "/*"
idempotency = false

{observe}"""

#: The wrk script: a random API key per request (hot or cold), answers counted by status.
LUA = """\
-- written by bench/observe.py: GET with an X-API-Key drawn at random per request.
-- Arguments: HOT_KEYS COLD_KEYS HOT_SHARE SEED.
dofile("{summary}")
local summary_done = done
local threads = {{}}
local headers = {{}}
local hot_keys, cold_keys, hot_share

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

function init(args)
   hot_keys = tonumber(args[1])
   cold_keys = tonumber(args[2])
   hot_share = tonumber(args[3])
   math.randomseed(tonumber(args[4]) * 64 + id)
   ok, refused, other = 0, 0, 0
end

function request()
   if math.random() < hot_share then
      headers["X-API-Key"] = "hot-" .. math.random(hot_keys)
   else
      headers["X-API-Key"] = "cold-" .. math.random(cold_keys)
   end
   return wrk.format("GET", nil, headers)
end

function response(status, response_headers, body)
   if status == 429 then
      refused = refused + 1
   elseif status < 300 then
      ok = ok + 1
   else
      other = other + 1
   end
end

function done(summary, latency, requests)
   summary_done(summary, latency, requests)
   local counts = {{ok = 0, refused = 0, other = 0}}
   for _, thread in ipairs(threads) do
      for name, _ in pairs(counts) do
         counts[name] = counts[name] + thread:get(name)
      end
   end
   io.write(string.format('{prefix}{{"ok":%d,"refused":%d,"other":%d}}\\n',
      counts.ok, counts.refused, counts.other))
end
"""


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=9, quick={"rounds": 1, "duration": 5})
    h.add_wrk_options(parser, duration=20)
    h.option(parser, "--workers", 1, "gateway worker processes")
    h.option(parser, "--limit", "10/second", "the rate limit of each API key")
    h.option(parser, "--hot-keys", 10, "API keys far over their limit")
    h.option(parser, "--cold-keys", 10000, "API keys far under their limit")
    h.option(parser, "--hot-share", 0.25, "share of the requests sent with a hot key")
    h.add_selection(parser, "--configs", CONFIGS, "off")
    h.add_pin_options(parser, what="the gateway, and wrk with the upstream,")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    h.check_wrk_options(parser, args)
    if args.workers < 1 or min(args.hot_keys, args.cold_keys) < 1:
        parser.error("expected --workers, --hot-keys and --cold-keys >= 1")
    if not 0 < args.hot_share < 1:
        parser.error("expected 0 < --hot-share < 1")
    return args


def check_tools() -> None:
    h.require_executable("wrk")
    h.require_modules(["uvicorn", "uvloop", "httptools", "surefoot"], "bench")


def write_lua(workdir: Path) -> Path:
    path = workdir / "observe.lua"
    summary = h.BENCH_DIR / "_wrk_summary.lua"
    path.write_text(LUA.format(summary=summary, prefix=STATUS_PREFIX))
    return path


# -- one gateway ----------------------------------------------------------------------------


@dataclass
class Gateway:
    child: h.Child
    admin: str  # the admin API's base URL

    def admin_get(self, path: str) -> tuple[int, Any]:
        status, _, body = h.http(
            self.admin + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        return status, json.loads(body) if body else None


def start_gateway(
    config: Config, args: argparse.Namespace, workdir: Path, upstream: str, prefix: list[str]
) -> Gateway:
    path = workdir / "gateway.toml"
    path.write_text(
        GATEWAY_TOML.format(
            workers=args.workers,
            upstream=upstream,
            database=workdir / "gateway.db",
            token=TOKEN,
            limit=args.limit,
            observe=config.observe,
        )
    )
    port, admin = h.free_port(), h.free_port()
    command = [
        *prefix, sys.executable, "-m", "surefoot", "serve", "--config", str(path),
        "--port", str(port), "--admin-port", str(admin), "--workers", str(args.workers),
    ]  # fmt: skip
    # TMPDIR: the metrics directory of several workers goes with the rest, deleted at the end.
    env = {"TMPDIR": str(workdir)}
    child = h.Child(f"{config.name} x{args.workers}", command, workdir / "gateway.log", env, port)
    child.wait_until(
        lambda: h.http(f"http://127.0.0.1:{admin}/readyz", timeout=1)[0] == 200, "get ready"
    )
    child.wait_listening()
    return Gateway(child, f"http://127.0.0.1:{admin}")


def check_answers(config: Config, gateway: Gateway) -> None:
    """The gateway forwards, its policy limits, and it tracks what its config says."""
    url = gateway.child.base + PATH
    status, headers, body = h.http(url, headers={"X-API-Key": "check-first"})
    if status != 200 or body != ANSWER:
        raise h.BenchError(f"{config.name}: GET answered {status} {body[:300]!r}")
    if "ratelimit" not in headers:
        raise h.BenchError(f"{config.name}: no RateLimit field in the answer to GET: {headers}")
    statuses = [h.http(url, headers={"X-API-Key": "check-hot"})[0] for _ in range(15)]
    if 429 not in statuses or set(statuses) - {200, 429}:
        raise h.BenchError(
            f"{config.name}: 15 quick GETs with one key answered {statuses}: expected 200s "
            "then 429s"
        )


def check_tracking(config: Config, gateway: Gateway) -> dict[str, Any]:
    """What ``/admin/top`` and ``/admin/alerts`` say after a run; an error if it is not
    what the configuration asks for."""
    status, alerts = gateway.admin_get("/admin/alerts")
    if status != 200 or alerts["evaluated"] != config.tracked:
        raise h.BenchError(f"{config.name}: /admin/alerts answered {status} {alerts}")
    query = "/admin/top?list=refused&policy=bench&window=5m&limit=100"
    if not config.tracked:
        status, _ = gateway.admin_get(query)
        if status != 404:
            raise h.BenchError(f"{config.name}: /admin/top answered {status}, expected 404")
        return {"evaluated": False, "refused_listed": None, "top_count": None}
    deadline = time.monotonic() + config.flush_every + 5
    while True:
        status, top = gateway.admin_get(query)
        if status != 200:
            raise h.BenchError(f"{config.name}: /admin/top answered {status} {top}")
        if top["items"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not top["items"]:
        raise h.BenchError(f"{config.name}: /admin/top lists no refused client after the run")
    return {
        "evaluated": True,
        "refused_listed": len(top["items"]),
        "top_count": top["items"][0]["count"],
    }


def group_memory(pgid: int) -> tuple[float, float]:
    """VmRSS and VmHWM in MiB, each summed over the live processes of the group ``pgid``."""
    rss = peak = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for line in Path(entry.path, "status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name == "VmRSS":
                    rss += int(value.split()[0])
                elif name == "VmHWM":
                    peak += int(value.split()[0])
    return rss / 1024, peak / 1024


# -- one run --------------------------------------------------------------------------------


def statuses(output: str) -> dict[str, int]:
    for line in output.splitlines():
        if line.startswith(STATUS_PREFIX):
            counts: dict[str, int] = json.loads(line.removeprefix(STATUS_PREFIX))
            return counts
    raise h.BenchError(f"wrk printed no status counts:\n{output}")


def run_one(
    args: argparse.Namespace,
    config: Config,
    round_no: int,
    cpus: h.CpuPlan,
    upstream: str,
    lua: Path,
) -> h.Run:
    def load(duration: int) -> dict[str, Any]:
        seed = str(random.randrange(1 << 20))
        keys = [str(args.hot_keys), str(args.cold_keys), str(args.hot_share), seed]
        return h.wrk_load(args, cpus, lua, gateway.child.base + PATH, duration, keys)

    with tempfile.TemporaryDirectory(prefix="surefoot-bench-observe-") as tmp:
        gateway = start_gateway(config, args, Path(tmp), upstream, cpus.server)
        try:
            check_answers(config, gateway)
            if args.warmup > 0:
                load(args.warmup)
            result: dict[str, Any] = {}

            def timed() -> dict[str, Any]:
                result.update(load(args.duration))
                return result

            run = h.timed_wrk(gateway.child, None, timed, f"{config.name} in {args.duration} s")
            rss, peak = group_memory(gateway.child.process.pid)
            tracking = check_tracking(config, gateway)
            if gateway.child.process.poll() is not None:
                raise h.BenchError(f"{config.name}: {gateway.child.died()}")
        except h.BenchError as exc:
            raise h.BenchError(f"round {round_no} {config.name}: {exc}") from None
        finally:
            gateway.child.stop()
    counts = statuses(result["output"])
    # wrk counts every answer >= 400 as an error: a 429 is the policy at work.
    errors = {**run["errors"], "status": counts["other"]}
    return {
        "round": round_no,
        "config": config.name,
        **run,
        "errors": errors,
        "error_count": sum(errors.values()),
        "answers": counts,
        "refused_share": counts["refused"] / max(1, sum(counts.values())),
        "rss_mib": rss,
        "peak_rss_mib": peak,
        **tracking,
    }


def say(run: h.Run, width: int) -> None:
    print(
        f"  round {run['round']} {run['config']:<{width}} {run['rps']:>8,.0f} req/s"
        f"  {run['cpu_us_per_request']:>5,.0f} CPU us/req  429 {run['refused_share']:.0%}"
        f"  p99 {run['latency_ms']['p99']:.1f} ms  RSS {run['rss_mib']:.1f} MiB"
        f"  errors {run['error_count']}",
        flush=True,
    )


# -- report ---------------------------------------------------------------------------------


def summarize(configs: list[Config], runs: list[h.Run]) -> list[h.Run]:
    rows = h.server_rows(configs, runs, "off")
    for row in rows:
        mine = h.by_round(runs, config=row["config"]).values()
        row["refused_share"] = h.median(r["refused_share"] for r in mine)
        row["peak_rss_mib"] = h.median(r["peak_rss_mib"] for r in mine)
        row["rss_min"] = min(r["rss_mib"] for r in mine)
        row["rss_max"] = max(r["rss_mib"] for r in mine)
    return rows


COLUMNS = (
    "configuration", "req/s", "x off", "(min-max)", "target", "met", "CPU us/req",
    "CPU x off", "CPU share", "429 share", "p99 ms", "RSS MiB", "peak RSS MiB", "errors",
)  # fmt: skip


def cells(row: h.Run) -> list[str]:
    return [
        row["config"],
        f"{row['rps']:,.0f}",
        *h.ratio_cells(row, ">="),
        f"{row['cpu_us_per_request']:,.0f}",
        f"{row['cpu_ratio']:.2f}",
        f"{row['server_cpu_share']:.2f}",
        f"{row['refused_share']:.0%}",
        f"{row['p99_ms']:.1f}",
        f"{row['rss_mib']:.1f}",
        f"{row['peak_rss_mib']:.1f}",
        str(row["errors"]),
    ]


def print_report(
    args: argparse.Namespace, context: h.Run, runs: list[h.Run], rows: list[h.Run]
) -> None:
    load = (
        f"wrk {args.threads} threads, {args.connections} connections, GET {PATH} with an "
        f"X-API-Key each: {args.hot_share:.0%} from {args.hot_keys} hot keys, the rest from "
        f"{args.cold_keys:,} cold ones; {args.duration} s per run after {args.warmup} s "
        f"warm-up, {args.rounds} round(s), configurations interleaved"
    )
    h.print_header(
        context,
        [
            ("load", load),
            ("gateway", context["gateway"]),
            ("upstream", context["upstream"]),
            ("cpus", context["cpus"]),
        ],
        "uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), {wrk}",
    )
    print()
    columns = [
        h.Column("configuration", "<13"), h.Column("req/s", ">7"), *h.ratio_columns("x off", 5),
        h.Column("CPU us/req", ">10"), h.Column("CPU x off", ">9"), h.Column("CPU share", ">9"),
        h.Column("429 share", ">9"), h.Column("p99 ms", ">6"),
        h.Column("RSS MiB", ">7"), h.Column("peak RSS MiB", ">12"), h.Column("errors", ">6"),
    ]  # fmt: skip
    print("\n".join(h.text_table(columns, [cells(row) for row in rows])))
    print()
    print("req/s, CPU us/req, 429 share, p99, RSS: medians over rounds.")
    print("x off: median of the per-round ratios of req/s to off's (min-max: their spread);")
    print("       the target applies to it.")
    print("CPU us/req: the gateway's CPU time (every process) per answered request, 429s")
    print("       included; CPU x off: off's CPU us/req over this one's, the median per round:")
    print("       the req/s ratio to expect of a whole idle core, less sensitive to other load;")
    print("       CPU share: the gateway's CPU time over the wall time (1.00: a whole CPU).")
    print("429 share: answers refused by the policy, of all answers.")
    print("RSS, peak RSS: the gateway's VmRSS and VmHWM after the timed run, summed over its")
    print("       processes.")
    print("errors: wrk socket errors, timeouts (5 s) and answers >= 300 other than 429, all")
    print("       rounds; a configuration with errors misses its target.")
    print()
    names = [row["config"] for row in rows]
    print("per round, req/s (x off) [the gateway's CPU share]:")
    print("  round " + " ".join(f"{n:>25}" for n in names))
    for round_no in range(1, args.rounds + 1):
        mine = {r["config"]: r for r in runs if r["round"] == round_no}
        base = mine["off"]["rps"]
        line = " ".join(
            f"{mine[n]['rps']:>10,.0f} ({mine[n]['rps'] / base:.3f}) "
            f"[{mine[n]['cpu_seconds'] / mine[n]['seconds']:.2f}]"
            for n in names
        )
        print(f"  {round_no:>5} {line}")
    tracked = [r for r in runs if r["evaluated"]]
    if tracked:
        listed = sorted({r["refused_listed"] for r in tracked})
        print(
            f"\ntracking checked after every run: /admin/top listed {listed[0]} to "
            f"{listed[-1]} refused clients where [top] is on (404 where off); the rules were "
            "evaluated where [alerts] evaluate = true only."
        )
    print()
    print("Markdown:")
    print()
    print(h.markdown_table(COLUMNS, [cells(row) for row in rows], ["configuration", "met"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    check_tools()
    cpus = h.split_cpus(args.no_pin, "wrk and the upstream")
    width = max(len(c.name) for c in configs)
    runs: list[h.Run] = []
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-observe-") as tmp:
        workdir = Path(tmp)
        lua = write_lua(workdir)
        upstream = h.start_uvicorn(
            "upstream", "gateway:upstream_app", workdir, workers=1, lifespan=False,
            prefix=cpus.load,
        )  # fmt: skip
        context: h.Run = {
            "command": args.command,
            "gateway": f"surefoot serve, {args.workers} worker(s), SQLite, one policy of "
            f"{args.limit} per API key (sliding window), idempotency off, no access log",
            "upstream": "bench/gateway.py:upstream_app under uvicorn, 1 worker, uvloop, "
            "httptools, no access log, on wrk's CPU",
            "cpus": cpus.sentence,
            "environment": h.environment(
                ("surefoot", "uvicorn", "uvloop", "httptools"), {"wrk": ["wrk", "--version"]}
            ),
            "load_before": h.load_average(),
        }
        try:
            upstream.wait_http(upstream.base + PATH)
            total = args.rounds * len(configs) * (args.duration + args.warmup + 4)
            print(
                f"{len(configs)} configurations x {args.rounds} rounds, about {total / 60:.0f} "
                f"min; {cpus.sentence}",
                flush=True,
            )
            for round_no in range(1, args.rounds + 1):
                for config in h.rotated(configs, round_no):
                    run = run_one(args, config, round_no, cpus, upstream.base, lua)
                    runs.append(run)
                    say(run, width)
        finally:
            upstream.stop()
        context["load_after"] = h.load_average()
    rows = summarize(configs, runs)
    print_report(args, context, runs, rows)
    used = h.settings(
        args, "rounds", "duration", "warmup", "connections", "threads", "workers", "limit",
        "hot_keys", "cold_keys", "hot_share",
    )  # fmt: skip
    return h.finish(args, context, used, rows, runs, configs=[asdict(c) for c in configs])


if __name__ == "__main__":
    sys.exit(h.run(main))
