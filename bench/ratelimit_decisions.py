"""Rate-limit decisions per second in one process: surefoot's ``MemoryStore`` beside its peers.

Usage::

    .venv/bin/python bench/ratelimit_decisions.py              # 25 rounds x 10,000 calls, ~4 min
    .venv/bin/python bench/ratelimit_decisions.py --quick      # 3 rounds x 2,000 calls, no memory
    .venv/bin/python bench/ratelimit_decisions.py --json results.json --check
    .venv/bin/python bench/ratelimit_decisions.py --log-entries 60000 --keys 10 \
        --impls 'surefoot sliding_log,limits moving_window' --memory-keys 0   # long logs

Theory of operation:
1. Every implementation (``IMPLS``) answers the same question, "may this key go on?", for
   the same keys in the same order: ``--keys`` keys (``user-000000``...) cycled, ``--calls``
   decisions per run. The contenders: surefoot ``MemoryStore.acquire_now`` for every
   algorithm (one prebuilt ``(Item,)`` per key), ``limits`` (``MemoryStorage`` with its
   three strategies, ``hit(item, key)``), ``throttled-py`` (``Throttled(...).limit(key)``
   on its ``MemoryStore``, five algorithms), ``floor`` (the 15-line token bucket below:
   a dict of key -> (tokens, last), no lock, no expiry, no eviction) and ``loop`` (the
   timed loop calling a function that returns True: what the loop itself costs).
2. Time: surefoot and the floor take ``now`` as an argument, and the loop passes
   ``time.time()`` read for each call; ``limits`` and ``throttled-py`` read
   ``time.time()`` themselves (they take no clock), at least once per call.
3. Two workloads (``--variants``): "allowed", a limit of 1,000,000 per minute (per day
   for ``quota``) that no call reaches, so every decision admits and writes; "over", a
   limit of 5 per hour (per day for ``quota``) that a warm-up pass exhausts, so every
   timed decision refuses. Before each timed run the implementation gets fresh state
   and one untimed pass over the keys (six in "over"), so each key exists.
4. Runs are interleaved: every round runs every implementation once per workload, in an
   order rotated by one each round; ratios to ``floor`` are taken within a round and the
   table shows medians over rounds, with their interquartile range. Many short rounds
   rather than a few long ones: on a shared virtual machine the speed of a CPU drifts
   within seconds, and a short round keeps the floor and the others close in time.
   A run is timed by the process's CPU time (all its threads), so that other work on
   a shared machine weighs less than on the wall clock, which is reported beside it.
   The process is pinned to one CPU (the syscall behind ``taskset``); the garbage
   collector stays on, as in a server, after a ``gc.collect()`` before each run.
5. Logs grow with use: surefoot ``sliding_log`` and ``limits`` moving window keep one
   entry per admitted call, so in "allowed" a key's log holds 2 to ``calls / keys + 1``
   entries during a run (2 to 11 by default), and their cost per call depends on
   ``--calls`` and ``--keys``.
   ``--log-entries N`` measures long logs instead: per hour, every key is given N
   admissions before timing (untimed), so that each holds N live entries; "allowed" has
   room for the timed calls on top, "over" has none (amount N). Use few ``--keys``.
   Issue 14's target: at 60,000 entries, within 2x of the cost at 1,000.
6. Memory per key (``--memory-keys``, 0 to skip): with ``tracemalloc``, a fresh instance
   decides once for each of N new keys (the key string built per call, as a server
   does); the figure is the traced memory still held afterwards, over N. It counts what
   the store keeps (key strings included), not transient objects. Not for
   ``concurrency``, whose slots are released at once.

The target (issue 14): surefoot at most 3x the floor's ns per decision, for every
algorithm (``concurrency`` measured as an acquire plus a release; the goal after that is
1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import _harness as h

TARGET = 3.0  # at most this multiple of the floor's ns per decision (issue 14)
VARIANTS = ("allowed", "over")
# (amount, window seconds) per workload; quota counts per calendar day instead.
LIMITS = {"allowed": (1_000_000, 60.0), "over": (5, 3600.0)}
WARM_PASSES = {"allowed": 1, "over": 6}


# -- the contenders -------------------------------------------------------------------------


class Decider(Protocol):
    """One implementation with fresh state, for one limit."""

    def arg(self, key: str) -> Any:
        """What the timed loop passes for ``key`` (built once per key, outside the timing)."""

    def loop(self, args: Sequence[Any]) -> int:
        """Decide once per element of ``args``; return how many were allowed."""


class FloorTokenBucket:
    """The floor: the least a token bucket can do in Python (no lock, expiry or eviction)."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.buckets: dict[str, tuple[float, float]] = {}

    def hit(self, key: str, now: float) -> bool:
        tokens, last = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1.0, now)
        return True


class Floor:
    def __init__(self, amount: int, window: float) -> None:
        self.bucket = FloorTokenBucket(amount / window, float(amount))

    def arg(self, key: str) -> Any:
        return key

    def loop(self, args: Sequence[Any]) -> int:
        hit, now, allowed = self.bucket.hit, time.time, 0
        for key in args:
            if hit(key, now()):
                allowed += 1
        return allowed


def _true(key: str, now: float) -> bool:
    return True


class LoopOnly:
    """The timed loop around a function that returns True: the cost of the harness."""

    def __init__(self, amount: int, window: float) -> None:
        pass

    def arg(self, key: str) -> Any:
        return key

    def loop(self, args: Sequence[Any]) -> int:
        hit, now, allowed = _true, time.time, 0
        for key in args:
            if hit(key, now()):
                allowed += 1
        return allowed


class Surefoot:
    def __init__(self, algorithm: str, amount: int, window: float) -> None:
        from surefoot.ratelimit import Limit
        from surefoot.storage import MemoryStore

        # Room for every key of --memory-keys (the default bound is 100,000), as the peers get.
        self.store = MemoryStore(max_counters=1_000_000)
        self.algorithm = algorithm
        if algorithm == "quota":
            self.limit = Limit(amount, 86400.0, algorithm="quota", period="day")
        else:
            self.limit = Limit(amount, window, algorithm=algorithm)

    def arg(self, key: str) -> Any:
        from surefoot.ratelimit import Item

        return (Item(key, self.algorithm, self.limit, 1, True, ""),)

    def loop(self, args: Sequence[Any]) -> int:
        acquire, now, allowed = self.store.acquire_now, time.time, 0
        for items in args:
            if acquire(items, now())[0]:
                allowed += 1
        return allowed


class SurefootConcurrency(Surefoot):
    """``concurrency``: acquire a slot, then release it (``release`` is a coroutine)."""

    def arg(self, key: str) -> Any:
        from surefoot.ratelimit import Item

        return (Item(key, "concurrency", self.limit, 1, True, f"token-{key}"),)

    def loop(self, args: Sequence[Any]) -> int:
        acquire, release, now = self.store.acquire_now, self.store.release, time.time

        async def run() -> int:
            allowed = 0
            for items in args:
                if acquire(items, now())[0]:
                    allowed += 1
                await release(items[0].key, items[0].token, now())
            return allowed

        return asyncio.run(run())


class Limits:
    def __init__(self, strategy: str, amount: int, window: float) -> None:
        from limits import RateLimitItemPerHour, RateLimitItemPerMinute, storage, strategies

        self.limiter = getattr(strategies, strategy)(storage.MemoryStorage())
        self.item = (
            RateLimitItemPerMinute(amount) if window == 60.0 else RateLimitItemPerHour(amount)
        )
        assert self.item.get_expiry() == window

    def arg(self, key: str) -> Any:
        return key

    def loop(self, args: Sequence[Any]) -> int:
        hit, item, allowed = self.limiter.hit, self.item, 0
        for key in args:
            if hit(item, key):
                allowed += 1
        return allowed


class Throttled:
    def __init__(self, algorithm: str, amount: int, window: float) -> None:
        from throttled import RateLimiterType, rate_limiter, store
        from throttled import Throttled as ThrottledClass

        per = rate_limiter.per_min if window == 60.0 else rate_limiter.per_hour
        self.throttle = ThrottledClass(
            using=RateLimiterType(algorithm).value,
            quota=per(amount, burst=amount),
            store=store.MemoryStore(options={"MAX_SIZE": 1_000_000}),
        )

    def arg(self, key: str) -> Any:
        return key

    def loop(self, args: Sequence[Any]) -> int:
        limit, allowed = self.throttle.limit, 0
        for key in args:
            if not limit(key).limited:
                allowed += 1
        return allowed


@dataclass(frozen=True)
class Impl:
    name: str
    library: str
    make: Callable[[int, float], Decider]
    #: whether the target applies (surefoot).
    target: bool = False
    variants: tuple[str, ...] = VARIANTS
    note: str = ""
    #: whether memory per key is measured (a released concurrency slot holds nothing).
    memory: bool = True


def _surefoot(algorithm: str) -> Impl:
    if algorithm == "concurrency":
        return Impl(
            "surefoot concurrency",
            "surefoot",
            lambda a, w: SurefootConcurrency("concurrency", a, w),
            target=True,
            variants=("allowed",),
            note="acquire + awaited release",
            memory=False,
        )
    note = "log grows with use" if algorithm == "sliding_log" else ""
    return Impl(
        f"surefoot {algorithm}",
        "surefoot",
        lambda a, w: Surefoot(algorithm, a, w),
        target=True,
        note=note,
    )


def _limits(algorithm: str, strategy: str) -> Impl:
    note = "log grows with use" if algorithm == "moving_window" else ""
    return Impl(f"limits {algorithm}", "limits", lambda a, w: Limits(strategy, a, w), note=note)


def _throttled(algorithm: str) -> Impl:
    return Impl(f"throttled {algorithm}", "throttled-py", lambda a, w: Throttled(algorithm, a, w))


IMPLS = (
    Impl("floor", "floor", Floor, note="15-line token bucket"),
    Impl("loop", "harness", LoopOnly, note="the timed loop alone"),
    *(_surefoot(a) for a in h.ALGORITHMS),
    *(_limits(a, strategy) for a, strategy in h.LIMITS_STRATEGIES.items()),
    *(_throttled(a) for a in h.THROTTLED_ALGORITHMS),
)


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=25, quick={"rounds": 3, "calls": 2000, "memory_keys": 0})
    h.option(parser, "--calls", 10_000, "timed decisions per run")
    h.option(parser, "--keys", 1_000, "keys cycled")
    h.option(parser, "--variants", ",".join(VARIANTS), "comma-separated workloads")
    h.add_selection(parser, "--impls", IMPLS, "floor", "loop")
    h.option(parser, "--log-entries", 0, "admissions logged per key before timing, per hour")
    h.option(parser, "--memory-keys", 100_000, "keys for the memory-per-key measurement, 0 to skip")
    h.add_pin_options(
        parser, what="this process", cpu="CPU to pin to (default: the last allowed one)"
    )
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    args.variants = h.names(parser, "--variants", args.variants, VARIANTS, required=True)
    if min(args.rounds, args.calls, args.keys) < 1 or min(args.memory_keys, args.log_entries) < 0:
        parser.error(
            "expected --rounds, --calls and --keys >= 1, --memory-keys and --log-entries >= 0"
        )
    return args


def pin(args: argparse.Namespace) -> str:
    count = len(os.sched_getaffinity(0))
    if args.no_pin:
        return f"not pinned (--no-pin); {count} CPUs available"
    cpu = h.pin_self(args.cpu)
    return f"pinned to CPU {cpu} of {count} (sched_setaffinity, as taskset -c {cpu})"


# -- one run --------------------------------------------------------------------------------


def key_names(count: int) -> list[str]:
    return [f"user-{i:06d}" for i in range(count)]


def workload(args: argparse.Namespace, variant: str) -> tuple[int, float, int]:
    """(amount, window, warm-up passes over the keys) of ``variant``."""
    entries = args.log_entries
    if not entries:
        return (*LIMITS[variant], WARM_PASSES[variant])
    room = args.calls // args.keys + 1 if variant == "allowed" else 0
    return entries + room, 3600.0, entries


def run_one(
    args: argparse.Namespace, impl: Impl, variant: str, round_no: int, keys: list[str]
) -> dict[str, Any]:
    amount, window, warm = workload(args, variant)
    decider = impl.make(amount, window)
    per_key = [decider.arg(k) for k in keys]
    for _ in range(warm):
        decider.loop(per_key)
    sequence = [per_key[i % len(per_key)] for i in range(args.calls)]
    gc.collect()
    wall, cpu = time.perf_counter_ns(), time.process_time_ns()
    allowed = decider.loop(sequence)
    cpu, wall = time.process_time_ns() - cpu, time.perf_counter_ns() - wall
    expected = args.calls if variant == "allowed" or impl.library == "harness" else 0
    # With long logs the floor's bucket refills while it is timed: it stays a cost baseline.
    if allowed != expected and not (args.log_entries and impl.library == "floor"):
        raise h.BenchError(
            f"{impl.name} ({variant}): {allowed:,} of {args.calls:,} calls allowed, "
            f"expected {expected:,}: the workload is not what it claims to be"
        )
    return {
        "round": round_no,
        "impl": impl.name,
        "variant": variant,
        "calls": args.calls,
        "allowed": allowed,
        "ns": cpu / args.calls,
        "wall_ns": wall / args.calls,
    }


def memory_per_key(impl: Impl, count: int) -> float:
    """Bytes still held per key after one decision for each of ``count`` new keys."""
    amount, window = LIMITS["allowed"]
    decider = impl.make(amount, window)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    arg, loop = decider.arg, decider.loop
    for i in range(count):
        loop((arg(f"user-{i:06d}"),))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


# -- report ---------------------------------------------------------------------------------


def summarize(impls: list[Impl], variants: list[str], runs: list[h.Run]) -> list[h.Run]:
    by_name = {impl.name: impl for impl in impls}
    rows = []
    for variant, name, mine, floor in h.against_baseline(
        runs, "impl", by_name, "floor", "variant", variants
    ):
        impl = by_name[name]
        loop = h.by_round(runs, impl="loop", variant=variant)
        ratio = h.Spread.quartiles(h.paired(mine, floor, lambda r, f: r["ns"] / f["ns"]))
        net = [
            (r["ns"] - loop[n]["ns"]) / (floor[n]["ns"] - loop[n]["ns"]) for n, r in mine.items()
        ]
        ns = h.median(r["ns"] for r in mine.values())
        rows.append(
            {
                "impl": impl.name,
                "library": impl.library,
                "variant": variant,
                "note": impl.note,
                "ns": ns,
                "per_second": 1e9 / ns,
                "wall_ns": h.median(r["wall_ns"] for r in mine.values()),
                "ratio": ratio.median,
                "ratio_p25": ratio.low,
                "ratio_p75": ratio.high,
                "net_ratio": h.median(net),
                "target": TARGET if impl.target else None,
                "met": ratio.median <= TARGET if impl.target else None,
            }
        )
    return rows


COLUMNS = (
    h.Column("implementation", "<24"), h.Column("ns/call", ">7"), h.Column("calls/s", ">9"),
    h.Column("x floor", ">7"), h.Column("(IQR)", ">9"), h.Column("net x", ">5"),
    h.Column("target", ">6"), h.Column("met", ">3"), h.Column("wall ns", ">7"),
    h.Column("B/key", ">5"), h.Column("note", gap=2),
)  # fmt: skip


def print_report(
    args: argparse.Namespace,
    context: dict[str, Any],
    runs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    memory: dict[str, float],
) -> None:
    h.print_header(
        context,
        [
            (
                "workload",
                f"{args.keys:,} keys cycled, {args.calls:,} timed calls per run, "
                f"{args.rounds} round(s), implementations interleaved (order rotated each round)",
            ),
            *(
                [
                    ("", f"every key first logs {args.log_entries:,} admissions, per hour;"),
                    ("", "allowed: room for the timed calls on top; over: none, all refused"),
                ]
                if args.log_entries
                else [
                    ("", "allowed: 1,000,000/minute (quota: per day), every call admitted;"),
                    ("", "over: 5/hour (quota: per day), exhausted before timing, all refused"),
                ]
            ),
            ("cpus", context["cpus"]),
        ],
        "limits {limits}, throttled-py {throttled-py}",
    )
    for variant in args.variants:
        print()
        print(f"[{variant}]")
        cells = []
        for row in (r for r in rows if r["variant"] == variant):
            mem = memory.get(row["impl"])
            cells.append(
                [
                    row["impl"],
                    f"{row['ns']:,.0f}",
                    f"{row['per_second']:,.0f}",
                    f"{row['ratio']:.2f}",
                    f"{row['ratio_p25']:.1f}-{row['ratio_p75']:.1f}",
                    "-" if row["impl"] == "loop" else f"{row['net_ratio']:.1f}",
                    h.target_text(row["target"], "<="),
                    h.met_text(row["met"]),
                    f"{row['wall_ns']:,.0f}",
                    "-" if mem is None or variant != "allowed" else f"{mem:.0f}",
                    row["note"],
                ]
            )
        print("\n".join(h.text_table(COLUMNS, cells)))
    print()
    print("ns/call: median over rounds of the process CPU time of a run (all threads: limits")
    print("         expires keys in timer threads) over its calls, loop included; CPU time")
    print("         rather than wall time, so other work on the machine weighs less; calls/s")
    print("         is its inverse; wall ns: the same from the wall clock.")
    print("x floor: median of the per-round ratios of ns/call to the floor's (IQR: their")
    print("         interquartile range, the middle half of the rounds);")
    print("         this is the figure the target applies to.")
    print("net x:   the same with the loop row's ns/call subtracted from both sides: the ratio")
    print("         of the implementations' own costs, harness excluded.")
    if memory:
        print(
            f"B/key:   bytes held per key after one decision for each of {args.memory_keys:,} "
            "new keys (tracemalloc; key strings included)."
        )
    print()
    h.print_per_round(
        runs, "impl", args.variants, lambda r: f"{r['ns']:>8,.0f}", 24, args.rounds,
        "ns/call (CPU)", group="variant",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h.require_modules(("surefoot", "limits", "throttled"), "bench")
    pinning = pin(args)
    context: dict[str, Any] = {
        "command": args.command,
        "cpus": pinning,
        "environment": h.environment(("surefoot", "limits", "throttled-py")),
        "load_before": h.load_average(),
    }
    impls: list[Impl] = args.impls
    keys = key_names(args.keys)
    print(
        f"{len(impls)} implementations x {len(args.variants)} workloads x {args.rounds} "
        f"rounds x {args.calls:,} calls; {pinning}",
        flush=True,
    )
    runs = []
    for round_no in range(1, args.rounds + 1):
        for variant in args.variants:
            for impl in h.rotated(impls, round_no):
                if variant in impl.variants:
                    runs.append(run_one(args, impl, variant, round_no, keys))
        done = [r for r in runs if r["round"] == round_no]
        print(
            f"  round {round_no}: "
            + ", ".join(f"{r['impl']} ({r['variant']}) {r['ns']:,.0f} ns" for r in done[:3])
            + ", ...",
            flush=True,
        )
    memory: dict[str, float] = {}
    if args.memory_keys:
        print(f"  memory: {args.memory_keys:,} keys per implementation", flush=True)
        for impl in impls:
            if impl.memory and impl.library != "harness":
                memory[impl.name] = memory_per_key(impl, args.memory_keys)
    context["load_after"] = h.load_average()
    rows = summarize(impls, args.variants, runs)
    print_report(args, context, runs, rows, memory)
    settings = h.settings(
        args, "rounds", "calls", "keys", "variants", "memory_keys", "log_entries", limits=LIMITS
    )
    return h.finish(args, context, settings, rows, runs, memory_bytes_per_key=memory)


if __name__ == "__main__":
    sys.exit(h.run(main))
