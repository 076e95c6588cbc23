"""The exactly-once drill at scale, with the gateway's idempotency on and off.

Usage::

    .venv/bin/python bench/drill.py                           # 32 x 300, SQLite, Redis, on, off
    .venv/bin/python bench/drill.py --quick                   # 8 x 50: a smoke run
    .venv/bin/python bench/drill.py --stores sqlite --modes on --json drill.json

Theory of operation:
1. The scenario is ``examples/drills/large.toml`` (``--scenario`` for another): 32 clients
   make 300 payments each (``--clients``, ``--payments``) through ``surefoot serve`` with 2
   workers (``--workers``), about 30% of the requests faulted at each of the two chaos
   proxies with a mix of every kind of fault, and the upstream booking then failing 5% of
   its charges (``tools.drill.run_drill``; ``docs/reliability.md`` explains it all).
2. It runs once per store (``--stores``: ``sqlite``, ``redis``; the drill starts a private
   ``redis-server`` with an append-only file) and per mode (``--modes``: ``on``, the
   gateway protects ``POST /charges``; ``off``, it passes it through unprotected), one after
   another, each on fresh processes, a fresh ledger and a fresh store, with the same seed.
3. Measured per run: payments per second over the payment phase (first payment started to
   last one answered), requests sent per payment beyond the first (retries), the audit
   (duplicated references and the extra charges they hold, missing payments: lost or
   unfinished, charges told to the wrong client, outcome-unknown keys left), payment time
   percentiles, and the wall time including start-up and audit.
4. Printed: the command, the machine, a Markdown table (``drill_markdown``) and a table of
   details. The exit status is 1 if a run with idempotency on duplicated, lost or
   mismatched anything; runs with idempotency off are reported, never failed: their
   duplicates are what the gateway prevents.

Everything runs on this machine: the clients and both proxies share one event loop in this
process, beside the gateway's workers, the upstream and Redis. Throughput is therefore
bounded by the machine, not by any one component, and it includes the time faults cost
(stalled attempts wait out their timeout; unknown outcomes wait ``not_found_after``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _harness as h

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the drill is a tool of the checkout, not of the package
    sys.path.insert(0, str(ROOT))

from tools.drill import DrillReport, Scenario, drill_markdown, run_drill  # noqa: E402

SIDES = ("client", "upstream")
STORES = ("sqlite", "redis")
MODES = ("on", "off")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, quick={"clients": 8, "payments": 50})
    parser.add_argument(
        "--scenario", default=str(ROOT / "examples" / "drills" / "large.toml"), metavar="TOML"
    )
    parser.add_argument("--clients", type=int, help="override the scenario's clients")
    parser.add_argument("--payments", type=int, help="override the payments per client")
    parser.add_argument("--workers", type=int, help="override the gateway's workers")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    h.option(parser, "--stores", ",".join(STORES), "comma-separated stores")
    h.option(parser, "--modes", ",".join(MODES), "idempotency: comma-separated, on and/or off")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    h.add_output_options(parser, check=False)
    args = h.parse(parser, argv)
    args.stores = h.names(parser, "--stores", args.stores, STORES, required=True)
    args.modes = h.names(parser, "--modes", args.modes, MODES, required=True)
    return args


def progress_printer(label: str, quiet: bool) -> Any:
    started = time.monotonic()
    shown = [-1]

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // max(1, total)
        if quiet or tenth == shown[0]:
            return
        shown[0] = tenth
        elapsed = time.monotonic() - started
        print(f"  {label}: {done}/{total} payments, {elapsed:.0f} s", file=sys.stderr, flush=True)

    return progress


DETAILS = (
    "store", "idempotency", "extra charges", "lost", "unfinished", "unknown keys left",
    "replayed answers", "payment time p50 / p99 / max", "faults (client / upstream)",
)  # fmt: skip


def details(reports: list[DrillReport]) -> str:
    rows = []
    for r in reports:
        a = r.audit
        lat = " / ".join(f"{r.latency.get(q, 0.0):.2f}" for q in ("p50", "p99", "max"))
        faults = " / ".join(str(sum(r.faults.get(side, {}).values())) for side in SIDES)
        rows.append(
            [
                r.store, "on" if r.idempotency else "off", str(a.extra_charges), str(a.lost),
                str(a.unfinished), str(a.unknown_keys), str(a.replayed), f"{lat} s", faults,
            ]
        )  # fmt: skip
    left = ("store", "idempotency", "payment time p50 / p99 / max", "faults (client / upstream)")
    return h.markdown_table(DETAILS, rows, left) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Scenario.from_toml(args.scenario).overridden(
        clients=args.clients, payments=args.payments, workers=args.workers, seed=args.seed
    )
    context: dict[str, Any] = {
        "command": args.command,
        "environment": h.environment(("surefoot", "uvicorn", "httpx")),
        "load_before": h.load_average(),
    }
    reports: list[DrillReport] = []
    for store in args.stores:
        for mode in args.modes:
            scenario = base.overridden(store=store, idempotency=mode == "on")
            label = f"{store}, idempotency {mode}"
            print(f"{label}: {scenario.clients} x {scenario.payments}", file=sys.stderr)
            report = run_drill(scenario, progress=progress_printer(label, args.quiet))
            reports.append(report)
            a = report.audit
            print(
                f"  {label}: {report.throughput:.1f} payments/s, duplicated {a.duplicated}, "
                f"missing {a.missing}, mismatched {a.mismatched}, wall {report.wall:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    context["load_after"] = h.load_average()
    h.print_header(
        context,
        [],
        "uvicorn {uvicorn}, httpx {httpx}",
        shared="every process of the drill",
        after=[("platform", context["environment"]["platform"])],
    )
    print()
    print(drill_markdown(reports))
    print(details(reports))
    if args.json:
        h.write_json(args.json, [r.to_dict() for r in reports])
    failed = [r for r in reports if r.idempotency and not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(h.run(main))
