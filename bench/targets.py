"""Issue 14's targets in one command: every benchmark that has one, and one table of them.

Usage::

    .venv/bin/python bench/targets.py                  # every benchmark, about 25 min (estimated)
    .venv/bin/python bench/targets.py --quick          # each benchmark's --quick: a smoke run
    .venv/bin/python bench/targets.py --only sliding_log,ratelimit_decisions --check
    .venv/bin/python bench/targets.py --skip gateway --json targets.json

Theory of operation:
1. Each benchmark of ``BENCHES`` runs in turn as a child process, ``--json`` to a
   temporary file, with ``--quick`` when given here, and otherwise with settings that
   keep the whole under about half an hour (``Bench.full``: fewer rounds or shorter wrk
   runs than the benchmark's own defaults; run a benchmark alone for its full figures).
   Its output goes to ``--logs`` (default: a temporary directory, kept), one file each.
2. What a benchmark needs and this machine lacks (wrk, nginx, redis-server without
   ``--redis-url``, a PostgreSQL that answers ``--dsn``) is said, not a crash: the
   benchmark is reported as skipped with the reason, or, for ``sliding_log``, run
   without the stores it cannot reach. A benchmark that fails (a non-zero status, or no
   JSON) is reported with the last line of its output.
3. The table: every summary row that carries a target (``"target"`` not null), as the
   benchmark judged it (``"met"``): the benchmark, the row (its configuration, workload,
   store...), the figure, the target and whether it was met. ``--check`` exits 1 if a
   target was missed or a benchmark failed (a skipped one does not count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h

DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: the fields that name a summary row, in this order, where a benchmark has them.
ROW_FIELDS = ("store", "config", "impl", "variant", "workers", "workload", "mode", "entries")
#: the wrk benchmarks' settings when not --quick: 3 rounds of 5 s runs (their default: 8 s).
WRK = ("--rounds", "3", "--duration", "5")


@dataclass(frozen=True)
class Bench:
    name: str  # the script is bench/NAME.py
    full: tuple[str, ...]  # its options when not --quick
    always: tuple[str, ...]  # its options, --quick or not
    sign: str  # how a numeric target reads: "<=" at most, ">=" at least
    tools: tuple[str, ...] = ()  # executables it cannot run without
    redis: bool = False  # it starts a redis-server unless given --redis-url


BENCHES = (
    Bench("sliding_log", (), (), "<="),
    Bench("ratelimit_decisions", ("--rounds", "15"), (), "<="),
    Bench("ratelimit_http", WRK, (), ">=", ("wrk",), redis=True),
    Bench("idempotency", WRK, (), ">=", ("wrk",), redis=True),
    Bench(
        "gateway",
        ("--rounds", "2", "--duration", "5"),
        ("--workers", "1"),
        ">=",
        ("wrk", "nginx"),
        redis=True,
    ),  # issue 14's targets are for 1 worker
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = h.new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="run each benchmark's --quick")
    names = ",".join(b.name for b in BENCHES)
    parser.add_argument("--only", default="", help=f"comma-separated benchmarks of {names}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks not to run")
    h.option(parser, "--dsn", os.environ.get("SUREFOOT_POSTGRES_DSN", DSN), "PostgreSQL")
    parser.add_argument("--redis-url", help="Redis server (default: each starts its own)")
    parser.add_argument("--nginx", default="/usr/sbin/nginx", help="the nginx executable")
    parser.add_argument("--logs", help="directory of the benchmarks' output (default: a new one)")
    h.add_output_options(parser)
    args = parser.parse_args(argv)
    args.command = h.command_line(argv)
    known = [b.name for b in BENCHES]
    only = h.names(parser, "--only", args.only, known)
    skip = h.names(parser, "--skip", args.skip, known)
    args.benches = [b for b in BENCHES if (not only or b.name in only) and b.name not in skip]
    return args


def postgres_answers(dsn: str) -> str:
    """Empty if PostgreSQL at ``dsn`` answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any reason not to reach it is a reason to skip it
        said = " ".join(str(exc).split())  # one line
        return f"PostgreSQL at --dsn does not answer ({type(exc).__name__}: {said})"
    return ""


def plan(bench: Bench, args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """The benchmark's options, the reasons it cannot run, and what it runs without."""
    missing: list[str] = []
    notes: list[str] = []
    for tool in bench.tools:
        path = args.nginx if tool == "nginx" else tool
        if shutil.which(path) is None:
            missing.append(h.INSTALL.get(tool, f"{tool} not found"))
    options = [*(["--quick"] if args.quick else bench.full), *bench.always]
    if bench.name == "gateway":
        options += ["--nginx", args.nginx]
    no_redis = args.redis_url is None and shutil.which("redis-server") is None
    if args.redis_url is not None and (bench.redis or bench.name == "sliding_log"):
        options += ["--redis-url", args.redis_url]
    if bench.redis and no_redis:
        missing.append(h.INSTALL["redis-server"])
    if bench.name == "sliding_log":
        stores = ["memory", "sqlite", "redis", "postgres"]
        if no_redis:
            stores.remove("redis")
            notes.append(f"redis store left out: {h.INSTALL['redis-server']}")
        why = postgres_answers(args.dsn)
        if why:
            stores.remove("postgres")
            notes.append(f"postgres store left out: {why}")
        options += ["--stores", ",".join(stores), "--dsn", args.dsn]
    return options, missing, notes


def run_bench(bench: Bench, options: list[str], logs: Path) -> dict[str, Any]:
    """Run one benchmark; its JSON document, or {"failed": why}."""
    out, log = logs / f"{bench.name}.json", logs / f"{bench.name}.log"
    command = [sys.executable, str(h.BENCH_DIR / f"{bench.name}.py"), *options, "--json", str(out)]
    print(f"{bench.name}: {' '.join(command[1:])} (output: {log})", flush=True)
    started = time.monotonic()
    with log.open("w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    print(f"{bench.name}: status {done.returncode} in {seconds:.0f} s", flush=True)
    if done.returncode != 0 or not out.exists():  # no --check here: 1 is an error too
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return {"failed": f"status {done.returncode}: {lines[-1] if lines else 'no output'}"}
    document: dict[str, Any] = json.loads(out.read_text())
    document["seconds"] = round(seconds, 1)
    return document


def row_name(row: dict[str, Any]) -> str:
    parts = []
    for field in ROW_FIELDS:
        value = row.get(field)
        if value is None or value == "":
            continue
        if field == "workers":
            parts.append(f"{value} worker{'s' if value != 1 else ''}")
        elif field == "entries":
            parts.append(f"{value:,} entries")
        else:
            parts.append(str(value))
    return " ".join(parts)


def figure(row: dict[str, Any]) -> str:
    """The figure the row's target judges."""
    target = row["target"]
    if isinstance(target, str) and "p99" in target:
        return h.num(row.get("added_p99_ms"), ".2f") + " ms"
    for field in ("ratio", "x_nginx"):
        if row.get(field) is not None:
            return f"{row[field]:.2f}x"
    return "-"


def target_text(bench: Bench, row: dict[str, Any]) -> str:
    target = row["target"]
    if isinstance(target, str):
        return target
    sign = ">" if "versus" in row else bench.sign  # peer rows: ahead of every peer
    return f"{sign} {target:g}x"


def table_rows(bench: Bench, document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "bench": bench.name,
            "row": row_name(row),
            "figure": figure(row),
            "target": target_text(bench, row),
            "met": row["met"],
        }
        for row in document["summary"]
        if row.get("target") is not None
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs = Path(args.logs or tempfile.mkdtemp(prefix="surefoot-targets-"))
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    outcomes: dict[str, dict[str, Any]] = {}
    for bench in args.benches:
        options, missing, notes = plan(bench, args)
        for note in notes:
            print(f"{bench.name}: {note}", flush=True)
        if missing:
            outcomes[bench.name] = {"skipped": "; ".join(missing)}
            print(f"{bench.name}: skipped: {outcomes[bench.name]['skipped']}", flush=True)
            continue
        document = run_bench(bench, options, logs)
        if "failed" in document:
            outcomes[bench.name] = {"failed": document["failed"]}
            continue
        found = table_rows(bench, document)
        if not found:
            notes.append("its summary carries no target")
        outcomes[bench.name] = {
            "seconds": document["seconds"],
            "targets": len(found),
            "notes": notes,
        }
        rows += found
    columns = [
        h.Column("benchmark", "<19"),
        h.Column("row", "<44"),
        h.Column("figure", ">9"),
        h.Column("target", "<22", gap=2),
        h.Column("met", "<3"),
    ]
    cells = [[r["bench"], r["row"], r["figure"], r["target"], h.met_text(r["met"])] for r in rows]
    for name, outcome in outcomes.items():
        if "skipped" in outcome or "failed" in outcome:
            what = "skipped" if "skipped" in outcome else "failed"
            cells.append([name, f"{what}: {outcome[what]}", "", "", ""])
        else:
            cells += [[name, note, "", "", ""] for note in outcome["notes"]]
    print()
    print(f"command:  {args.command}")
    print(f"logs:     {logs}")
    print()
    print("\n".join(h.text_table(columns, cells)))
    missed = [r for r in rows if r["met"] is False]
    failed = [n for n, o in outcomes.items() if "failed" in o]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} targets met", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    if args.json:
        h.write_json(args.json, {"command": args.command, "benches": outcomes, "targets": rows})
    return 1 if args.check and (missed or failed) else 0


if __name__ == "__main__":
    raise SystemExit(h.run(main))
