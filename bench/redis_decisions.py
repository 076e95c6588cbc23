"""Rate-limit decisions per second on Redis: surefoot's ``RedisStore`` beside its peers and a floor.

Usage::

    .venv/bin/python bench/redis_decisions.py                  # 7 rounds x 5,000 calls, ~6 min
    .venv/bin/python bench/redis_decisions.py --quick          # 1 round x 1,000 calls
    .venv/bin/python bench/redis_decisions.py --json results.json --check
    .venv/bin/python bench/redis_decisions.py --redis-url redis://10.0.0.5:6379/0  # your server
    .venv/bin/python bench/redis_decisions.py --contenders 'surefoot sliding_log' \
        --log-entries 60000 --keys 4 --calls 1000 --rounds 3   # a sliding log of 60,000

Theory of operation:
1. The server. Unless ``--redis-url`` names one, the script starts its own ``redis-server``
   (``bench/_harness.py``'s ``RedisServer``: a child process on a free port of 127.0.0.1,
   ``--save "" --appendonly no``, its files in a temporary directory, stopped at the end),
   so that nobody else's commands share it and nothing of it outlives the run. Every run writes
   under a prefix of its own and deletes its keys afterwards (``SCAN MATCH prefix*`` then
   ``UNLINK``, untimed), so a shared server keeps nothing either; nothing is ever flushed.
2. The contenders (``CONTENDERS``) answer "may this key go on?" for the same keys in the
   same order, each through its own ``redis.asyncio`` client made with the same settings
   (redis-py's ``ConnectionPool``, the hiredis parser, ``--max-connections``):
   ``floor`` is one raw ``EVALSHA`` of a two-line script (``INCR``, then ``PEXPIRE``), the
   least a counter on Redis can cost through redis-py; ``surefoot ALGORITHM`` is
   ``await store.acquire((item,), time.time())`` on ``RedisStore(client, prefix=...,
   coalesce=False)`` with its default ``clock="server"`` (one prebuilt ``Item`` per key,
   keys such as ``rl:{user-000001}:bench`` with a Redis Cluster hash tag, as the limiter
   makes them), and ``... coalesced`` the same with ``coalesce=True``; ``concurrency`` is an
   acquire and an awaited release; ``limits STRATEGY`` is ``await limiter.hit(item, key)``
   on ``limits.aio.storage.RedisStorage("async+redis://...", implementation="redispy")``;
   ``throttled ALGORITHM`` is ``await Throttled(...).limit(key)`` on throttled-py's asyncio
   ``RedisStore``.
3. The workload: a limit of 1,000,000 per minute (per day for ``quota``) that no call
   reaches, so every decision admits and writes; ``--keys`` keys cycled, ``--calls`` timed
   decisions per run. Each run makes a fresh contender (new client, new prefix: fresh
   keys), warms it with one untimed pass over the keys in the same mode (which opens its
   connections, loads its scripts and creates every key), then times its calls. Every
   call must be admitted, except those that surefoot's store fails with
   ``StoreUnavailable`` when its ``timeout`` (50 ms by default, ``--surefoot-timeout``)
   runs out: those are counted (``fail``) and void a target; anything else is an error.
   ``--log-entries N`` gives each ``surefoot sliding_log`` key a log of N live entries
   before the warm pass (untimed, through a coalescing store of its own, per hour so
   that none leaves during the run): what a decision costs as the log grows (issue 14:
   at 60,000 entries within 2x of its cost at 1,000). Use few ``--keys`` (N each).
4. Two modes: ``sequential``, one coroutine awaiting each call in turn (the latency of a
   decision), and ``concurrent``, ``--tasks`` asyncio tasks on the one client, each
   awaiting its share of the calls in turn, as the requests of one server worker do (the
   throughput of a worker). Coalescing can only pay in the second.
5. Measures per run: the wall time (decisions per second), the CPU time of this process
   (the client), and the CPU time of the Redis server: every thread of the private
   server from ``/proc/PID/task/*/schedstat`` (nanoseconds), or ``INFO cpu`` for a server
   named by ``--redis-url``, which also counts other clients' work there.
6. Runs are interleaved: every round runs every contender once per mode, in an order
   rotated by one each round; the ratio to the floor is taken within a round and the
   table shows medians over rounds with their interquartile range. ``x floor`` is a
   throughput ratio: the floor's wall time per decision over the contender's (above 1 is
   faster than the floor). The client is pinned to one CPU (``sched_setaffinity``) and the
   private server to another (``taskset``), so they do not compete for a core; on a
   machine shared with other work, the CPU times are the steadier figures.

The targets (issue 4), at ``--tasks`` 64: surefoot at least 1.0x the floor's decisions per
second with coalescing off and at least 2.0x with it, for ``token_bucket``, ``gcra``,
``fixed_window`` and ``sliding_window``. The best peer was said to reach about 0.86x.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import _harness as h

MODES = ("sequential", "concurrent")
AMOUNT, WINDOW = 1_000_000, 60.0  # per minute; quota: per day
#: at --tasks 64: minimum decisions/s as a multiple of the floor's, by coalescing.
TARGETS = {False: 1.0, True: 2.0}
TARGET_ALGORITHMS = ("token_bucket", "gcra", "fixed_window", "sliding_window")
ALGORITHMS = h.ALGORITHMS
FLOOR_SCRIPT = (
    "local n = redis.call('INCR', KEYS[1])\nredis.call('PEXPIRE', KEYS[1], ARGV[1])\nreturn n"
)
KEY_PREFIX = "sfbench"


# -- the contenders -------------------------------------------------------------------------


class Contender(Protocol):
    """One implementation with fresh keys under ``prefix``, on its own client."""

    failed: int  # calls that raised the store's "unavailable" error (surefoot: a timeout)

    async def open(self) -> None:
        """Make the client and whatever the implementation needs (untimed)."""

    def arg(self, key: str) -> Any:
        """What ``run`` gets for ``key`` (built once per key, outside the timing)."""

    async def run(self, args: Sequence[Any]) -> int:
        """Decide once per element of ``args``, in turn; return how many were admitted."""

    async def aclose(self) -> None:
        """Close the client."""


@dataclass(frozen=True)
class Setup:
    """What every contender of a run is built from."""

    url: str
    prefix: str  # unique per run, no braces, no trailing ':'
    pool: dict[str, Any]  # redis.asyncio.ConnectionPool keyword arguments
    timeout: float | None = None  # surefoot's RedisStore(timeout=...); None: its default
    log_entries: int = 0  # surefoot sliding_log: live entries per key before the run


def make_client(setup: Setup) -> Any:
    import redis.asyncio

    pool = redis.asyncio.ConnectionPool.from_url(setup.url, **setup.pool)
    return redis.asyncio.Redis(connection_pool=pool)


def tagged(key: str) -> str:
    """A key as the limiter makes it: the principal in a Redis Cluster hash tag."""
    return f"rl:{{{key}}}:bench"


class Floor:
    """One raw EVALSHA of INCR + PEXPIRE: the least a counter on Redis costs via redis-py."""

    failed = 0

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    async def open(self) -> None:
        self.client = make_client(self.setup)
        self.sha = await self.client.script_load(FLOOR_SCRIPT)
        self.ms = int(WINDOW * 1000)

    def arg(self, key: str) -> Any:
        return f"{self.setup.prefix}:{tagged(key)}"

    async def run(self, args: Sequence[Any]) -> int:
        evalsha, sha, ms, admitted = self.client.evalsha, self.sha, self.ms, 0
        for key in args:
            if await evalsha(sha, 1, key, ms) <= AMOUNT:
                admitted += 1
        return admitted

    async def aclose(self) -> None:
        await self.client.aclose()


class Surefoot:
    failed = 0

    def __init__(self, setup: Setup, algorithm: str, coalesce: bool) -> None:
        from surefoot.ratelimit import Limit

        self.setup, self.algorithm, self.coalesce = setup, algorithm, coalesce
        if algorithm == "quota":
            self.limit = Limit(AMOUNT, 86400.0, algorithm="quota", period="day")
        elif algorithm == "sliding_log" and setup.log_entries:
            self.limit = Limit(AMOUNT, 3600.0, algorithm=algorithm)  # nothing leaves the log
        else:
            self.limit = Limit(AMOUNT, WINDOW, algorithm=algorithm)

    async def open(self) -> None:
        from surefoot.storage.redis import RedisStore

        self.client = make_client(self.setup)
        timeout: dict[str, Any] = {}
        if self.setup.timeout is not None:
            timeout["timeout"] = self.setup.timeout
        self.store = RedisStore(
            self.client, prefix=f"{self.setup.prefix}:", coalesce=self.coalesce, **timeout
        )

    def arg(self, key: str) -> Any:
        from surefoot.ratelimit import Item

        token = f"token-{key}" if self.algorithm == "concurrency" else ""
        return (Item(tagged(key), self.algorithm, self.limit, 1, True, token),)

    async def fill(self, args: Sequence[Any]) -> None:
        """Log ``setup.log_entries`` admissions under each key (sliding_log; untimed), in
        batches through a coalescing store with a timeout long enough for a slow script."""
        from surefoot.storage.redis import MAX_BATCH, RedisStore

        filler = RedisStore(self.client, prefix=f"{self.setup.prefix}:", timeout=60.0)
        try:
            for items in args:
                for start in range(0, self.setup.log_entries, 10 * MAX_BATCH):
                    n = min(10 * MAX_BATCH, self.setup.log_entries - start)
                    calls = [filler.acquire(items, time.time()) for _ in range(n)]
                    if not all(ok for ok, _ in await asyncio.gather(*calls)):
                        raise h.BenchError("the sliding log's fill was not all admitted")
        finally:
            await filler.aclose()

    async def run(self, args: Sequence[Any]) -> int:
        from surefoot.errors import StoreUnavailable

        acquire, now, admitted = self.store.acquire, time.time, 0
        for items in args:
            try:  # free in Python 3.11 until something is raised
                if (await acquire(items, now()))[0]:
                    admitted += 1
            except StoreUnavailable:  # its timeout: counted and reported, not hidden
                self.failed += 1
        return admitted

    async def aclose(self) -> None:
        await self.store.aclose()
        await self.client.aclose()


class SurefootConcurrency(Surefoot):
    """``concurrency``: acquire a slot, then release it (two round trips)."""

    async def run(self, args: Sequence[Any]) -> int:
        from surefoot.errors import StoreUnavailable

        acquire, release, now, admitted = self.store.acquire, self.store.release, time.time, 0
        for items in args:
            try:
                ok = (await acquire(items, now()))[0]
                await release(items[0].key, items[0].token, now())
            except StoreUnavailable:
                self.failed += 1
                continue
            if ok:
                admitted += 1
        return admitted


class Limits:
    failed = 0

    def __init__(self, setup: Setup, strategy: str) -> None:
        self.setup, self.strategy = setup, strategy

    async def open(self) -> None:
        import redis.asyncio
        from limits import RateLimitItemPerMinute
        from limits.aio import storage, strategies

        self.pool = redis.asyncio.ConnectionPool.from_url(self.setup.url, **self.setup.pool)
        self.storage = storage.RedisStorage(
            "async+" + self.setup.url,
            implementation="redispy",
            key_prefix=self.setup.prefix,
            connection_pool=self.pool,  # passed to redis-py as is
        )
        self.limiter = getattr(strategies, self.strategy)(self.storage)
        self.item = RateLimitItemPerMinute(AMOUNT)

    def arg(self, key: str) -> Any:
        return key

    async def run(self, args: Sequence[Any]) -> int:
        hit, item, admitted = self.limiter.hit, self.item, 0
        for key in args:
            if await hit(item, key):
                admitted += 1
        return admitted

    async def aclose(self) -> None:
        await self.pool.aclose()


class Throttled:
    failed = 0

    def __init__(self, setup: Setup, algorithm: str) -> None:
        self.setup, self.algorithm = setup, algorithm

    async def open(self) -> None:
        from throttled.asyncio import RateLimiterType, RedisStore, Throttled, per_min

        self.store = RedisStore(
            server=self.setup.url, options={"CONNECTION_POOL_KWARGS": dict(self.setup.pool)}
        )
        self.throttle = Throttled(
            using=RateLimiterType(self.algorithm).value,
            quota=per_min(AMOUNT, burst=AMOUNT),
            store=self.store,
            key_prefix=self.setup.prefix,
        )

    def arg(self, key: str) -> Any:
        return key

    async def run(self, args: Sequence[Any]) -> int:
        limit, admitted = self.throttle.limit, 0
        for key in args:
            if not (await limit(key)).limited:
                admitted += 1
        return admitted

    async def aclose(self) -> None:
        await self.store._backend.get_client().aclose()


@dataclass(frozen=True)
class Spec:
    name: str
    library: str  # "floor", "surefoot", "limits" or "throttled-py"
    make: Callable[[Setup], Contender]
    algorithm: str = ""
    coalesce: bool | None = None  # surefoot only
    note: str = ""

    def target(self, mode: str) -> float | None:
        """The least ``x floor`` this contender must reach in ``mode``, if any."""
        if self.coalesce is None or mode != "concurrent":
            return None
        return TARGETS[self.coalesce] if self.algorithm in TARGET_ALGORITHMS else None


def _surefoot(algorithm: str, coalesce: bool) -> Spec:
    cls = SurefootConcurrency if algorithm == "concurrency" else Surefoot
    notes = {"sliding_log": "log grows with use", "concurrency": "acquire + awaited release"}
    return Spec(
        f"surefoot {algorithm}" + (" coalesced" if coalesce else ""),
        "surefoot",
        lambda setup: cls(setup, algorithm, coalesce),
        algorithm,
        coalesce,
        notes.get(algorithm, ""),
    )


def _limits(algorithm: str, strategy: str) -> Spec:
    note = "log grows with use" if algorithm == "moving_window" else ""
    return Spec(
        f"limits {algorithm}", "limits", lambda setup: Limits(setup, strategy), algorithm, note=note
    )


def _throttled(algorithm: str) -> Spec:
    return Spec(
        f"throttled {algorithm}",
        "throttled-py",
        lambda setup: Throttled(setup, algorithm),
        algorithm,
    )


CONTENDERS = (
    Spec("floor", "floor", Floor, note="EVALSHA of INCR + PEXPIRE"),
    *(_surefoot(a, False) for a in ALGORITHMS),
    *(_surefoot(a, True) for a in ALGORITHMS),
    *(_limits(a, strategy) for a, strategy in h.LIMITS_STRATEGIES.items()),
    *(_throttled(a) for a in h.THROTTLED_ALGORITHMS),
)


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=7, quick={"rounds": 1, "calls": 1000})
    h.option(parser, "--calls", 5_000, "timed decisions per run")
    h.option(parser, "--keys", 1_000, "keys cycled")
    h.option(parser, "--tasks", 64, "asyncio tasks in concurrent mode")
    h.option(parser, "--modes", ",".join(MODES), "comma-separated modes")
    h.option(parser, "--log-entries", 0, "live entries in each surefoot sliding_log key's log")
    h.add_selection(parser, "--contenders", CONTENDERS, "floor")
    h.add_redis_options(parser, used_by="every contender")
    parser.add_argument(
        "--max-connections",
        type=int,
        help="max_connections of every client's pool (default: redis-py's, unbounded)",
    )
    parser.add_argument(
        "--surefoot-timeout",
        type=float,
        help="RedisStore(timeout=...) in seconds (default: the store's own, 0.05); a call "
        "that times out is counted in 'fail', never retried",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop, as a server worker runs it (default: uvloop)",
    )
    h.add_pin_options(
        parser, what="client and server", cpu="CPU to pin the client to (default: the last one)"
    )
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    args.modes = h.names(parser, "--modes", args.modes, MODES, required=True)
    if min(args.rounds, args.calls, args.keys, args.tasks) < 1:
        parser.error("expected --rounds, --calls, --keys and --tasks >= 1")
    if not 0 <= args.log_entries <= AMOUNT - args.calls - 1:
        parser.error(f"expected 0 <= --log-entries <= {AMOUNT - args.calls - 1:,}")
    if args.max_connections is not None and args.max_connections < 1:
        parser.error("expected --max-connections >= 1")
    return args


def importable(module: str) -> str | None:
    """None if ``module`` imports, else why not."""
    try:
        __import__(module)
    except Exception as exc:  # an API in progress may fail with more than ImportError
        return f"{type(exc).__name__}: {exc}"
    return None


def available(specs: list[Spec]) -> tuple[list[Spec], dict[str, str]]:
    """The contenders whose library imports, and why the others were left out."""
    for module in ("redis", "hiredis"):
        if importable(module):
            raise h.BenchError(
                f"missing Python package {module!r} in {sys.executable}: "
                "pip install 'redis[hiredis]'"
            )
    modules = {
        "floor": "redis",
        "surefoot": "surefoot.storage.redis",
        "limits": "limits.aio.storage",
        "throttled-py": "throttled.asyncio",
    }
    problems = {lib: why for lib, mod in modules.items() if (why := importable(mod))}
    return [s for s in specs if s.library not in problems], problems


def pin_plan(args: argparse.Namespace) -> tuple[list[str], str]:
    """Pin this process; return the command prefix for the server and a sentence."""
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin:
        return [], f"not pinned (--no-pin); {len(cpus)} CPUs available"
    cpu = h.pin_self(args.cpu)
    client = f"client pinned to CPU {cpu} (sched_setaffinity)"
    if args.redis_url:
        return [], f"{client}; server given by --redis-url, not pinned"
    others = [c for c in cpus if c != cpu]
    if not others:
        return [], f"{client}; server shares it: only one CPU available"
    if shutil.which("taskset") is None:
        return [], f"{client}; server not pinned: taskset not found (util-linux)"
    return (
        ["taskset", "-c", str(others[0])],
        f"{client}, private server to CPU {others[0]} (taskset), of {len(cpus)} CPUs",
    )


def environment(server_info: dict[str, Any], loop: str) -> dict[str, Any]:
    packages = ("surefoot", "redis", "hiredis", "limits", "throttled-py", "uvloop")
    return {
        **h.environment(packages, missing="absent"),
        "redis_server": server_info.get("redis_version", "?"),
        "loop": loop,
    }


# -- one run --------------------------------------------------------------------------------


async def drive(contender: Contender, shares: list[list[Any]]) -> int:
    if len(shares) == 1:
        return await contender.run(shares[0])
    return sum(await asyncio.gather(*(contender.run(share) for share in shares)))


async def run_one(
    args: argparse.Namespace,
    spec: Spec,
    mode: str,
    round_no: int,
    keys: list[str],
    redis: h.BenchRedis,
) -> dict[str, Any]:
    pool = {} if args.max_connections is None else {"max_connections": args.max_connections}
    prefix = f"{KEY_PREFIX}-{args.nonce}-{round_no}-{secrets.token_hex(3)}"
    setup = Setup(args.url, prefix, pool, args.surefoot_timeout, args.log_entries)
    contender = spec.make(setup)
    tasks = 1 if mode == "sequential" else args.tasks
    try:
        await contender.open()
        per_key = [contender.arg(k) for k in keys]
        if args.log_entries and isinstance(contender, Surefoot) and spec.algorithm == "sliding_log":
            await contender.fill(per_key)
        warm = [per_key[i::tasks] for i in range(tasks)]
        sequence = [per_key[i % len(per_key)] for i in range(args.calls)]
        shares = [sequence[i::tasks] for i in range(tasks)]
        if await drive(contender, warm) != len(per_key) - contender.failed:
            raise h.BenchError(f"{spec.name} ({mode}): the warm-up pass was not all admitted")
        contender.failed = 0
        gc.collect()
        server_before = redis.cpu_seconds()
        wall, client = time.perf_counter_ns(), time.process_time_ns()
        admitted = await drive(contender, shares)
        client, wall = time.process_time_ns() - client, time.perf_counter_ns() - wall
        server = (redis.cpu_seconds() - server_before) * 1e9
    finally:
        await contender.aclose()
    redis.delete(setup.prefix)
    failed = contender.failed
    if admitted + failed != args.calls:
        raise h.BenchError(
            f"{spec.name} ({mode}): {admitted:,} of {args.calls:,} calls admitted "
            f"({failed:,} failed), expected all of them: the workload is not what it claims"
        )
    if failed:
        print(
            f"  {spec.name} ({mode}, round {round_no}): {failed:,} calls timed out "
            "(StoreUnavailable)",
            flush=True,
        )
    return {
        "round": round_no,
        "contender": spec.name,
        "mode": mode,
        "calls": args.calls,
        "wall_ns": wall / args.calls,
        "client_cpu_ns": client / args.calls,
        "server_cpu_ns": server / args.calls,
        "failed": failed,
    }


# -- report ---------------------------------------------------------------------------------


def summarize(specs: list[Spec], modes: list[str], runs: list[h.Run]) -> list[h.Run]:
    by_name = {spec.name: spec for spec in specs}
    rows = []
    for mode, name, mine, floor in h.against_baseline(
        runs, "contender", by_name, "floor", "mode", modes
    ):
        spec = by_name[name]
        ratio = h.Spread.quartiles(h.paired(mine, floor, lambda r, f: f["wall_ns"] / r["wall_ns"]))
        cpu_ratio = h.median(
            h.paired(mine, floor, lambda r, f: f["client_cpu_ns"] / r["client_cpu_ns"])
        )
        wall = h.median(r["wall_ns"] for r in mine.values())
        client = h.median(r["client_cpu_ns"] for r in mine.values())
        server = h.median(r["server_cpu_ns"] for r in mine.values())
        target = spec.target(mode)
        failed = sum(r["failed"] for r in mine.values())
        rows.append(
            {
                "contender": spec.name,
                "library": spec.library,
                "algorithm": spec.algorithm,
                "coalesce": spec.coalesce,
                "mode": mode,
                "note": spec.note,
                "per_second": 1e9 / wall,
                "wall_us": wall / 1000,
                "ratio": ratio.median,
                "ratio_p25": ratio.low,
                "ratio_p75": ratio.high,
                "client_cpu_us": client / 1000,
                "cpu_ratio": cpu_ratio,
                "server_cpu_us": server / 1000,
                "client_busy": h.median(r["client_cpu_ns"] / r["wall_ns"] for r in mine.values()),
                "server_busy": h.median(r["server_cpu_ns"] / r["wall_ns"] for r in mine.values()),
                "failed": failed,
                "target": target,
                "met": None if target is None else ratio.median >= target and not failed,
            }
        )
    return rows


COLUMNS = (
    h.Column("contender", "<33"), h.Column("dec/s", ">7"), *h.ratio_columns("x floor", 7, "(IQR)"),
    h.Column("wall us", ">7"), h.Column("cli us", ">6"), h.Column("cpu x", ">5"),
    h.Column("srv us", ">6"), h.Column("cli%", ">4"), h.Column("srv%", ">4"),
    h.Column("fail", ">4"), h.Column("note", gap=2),
)  # fmt: skip


def print_report(
    args: argparse.Namespace, context: h.Run, runs: list[h.Run], rows: list[h.Run]
) -> None:
    h.print_header(
        context,
        [
            (
                "workload",
                f"{args.keys:,} keys cycled, {args.calls:,} timed calls per run, "
                f"{args.rounds} round(s), contenders interleaved (order rotated each round);",
            ),
            (
                "",
                f"{AMOUNT:,}/minute (quota: per day), every call admitted; sequential: one "
                f"coroutine; concurrent: {args.tasks} tasks on one client",
            ),
            *(
                [("", f"surefoot sliding_log: {args.log_entries:,} entries per key, per hour")]
                if args.log_entries
                else []
            ),
            ("server", context["server"]),
            (
                "clients",
                f"redis.asyncio, hiredis parser, pool {context['pool']}; "
                f"{context['environment']['loop']} loop; "
                f"RedisStore timeout {context['surefoot_timeout']}",
            ),
            ("cpus", context["cpus"]),
        ],
        "redis-server {redis_server}, redis-py {redis}, hiredis {hiredis}, limits {limits}, "
        "throttled-py {throttled-py}, uvloop {uvloop}",
        after=[("skipped", f"{library}: {why}") for library, why in context["skipped"].items()],
    )
    for mode in args.modes:
        print()
        tasks = "one coroutine" if mode == "sequential" else f"{args.tasks} tasks"
        print(f"[{mode}: {tasks}]")
        cells = [
            [
                row["contender"],
                f"{row['per_second']:,.0f}",
                *h.ratio_cells(row, ">=", ("ratio_p25", "ratio_p75")),
                f"{row['wall_us']:.1f}",
                f"{row['client_cpu_us']:.1f}",
                f"{row['cpu_ratio']:.2f}",
                f"{row['server_cpu_us']:.1f}",
                f"{row['client_busy'] * 100:.0f}",
                f"{row['server_busy'] * 100:.0f}",
                str(row["failed"]),
                row["note"],
            ]
            for row in rows
            if row["mode"] == mode
        ]
        print("\n".join(h.text_table(COLUMNS, cells)))
    print()
    print("dec/s:   decisions per second, from the median wall time per decision over rounds;")
    print("         wall us is that time (sequential: the latency of one decision).")
    print("x floor: median of the per-round ratios of the floor's wall time per decision to")
    print("         this one's (above 1: more decisions per second than the floor); IQR: the")
    print("         interquartile range over rounds. The targets apply to this figure.")
    print("cli us, srv us: CPU time per decision of this process and of the Redis server;")
    print("cpu x:   median of the per-round ratios of the floor's cli us to this one's: the")
    print("         x floor to expect where the client alone limits (a core of its own).")
    print("cli%, srv%: their CPU time over the wall time (100: that side saturates a core).")
    print("fail:    calls that raised StoreUnavailable (surefoot's timeout), all rounds; a")
    print("         target is not met by a contender that failed calls.")
    print()
    h.print_per_round(
        runs, "contender", args.modes, lambda r: f"{1e9 / r['wall_ns']:>8,.0f}", 33,
        args.rounds, "decisions/s (wall)",
    )  # fmt: skip


async def bench(
    args: argparse.Namespace, specs: list[Spec], redis: h.BenchRedis
) -> list[dict[str, Any]]:
    keys = [f"user-{i:06d}" for i in range(args.keys)]
    runs: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for mode in args.modes:
            for spec in h.rotated(specs, round_no):
                runs.append(await run_one(args, spec, mode, round_no, keys, redis))
        floor = {r["mode"]: r for r in runs if r["round"] == round_no and r["contender"] == "floor"}
        print(
            f"  round {round_no}: floor "
            + ", ".join(f"{m} {1e9 / floor[m]['wall_ns']:,.0f}/s" for m in args.modes)
            + f"; {len([r for r in runs if r['round'] == round_no])} runs",
            flush=True,
        )
    return runs


def run_loop(args: argparse.Namespace, coroutine: Any) -> Any:
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loop == "uvloop" and importable("uvloop"):
        raise h.BenchError("uvloop is not installed: pip install uvloop, or --loop asyncio")
    specs, skipped = available(args.contenders)
    server_prefix, pinning = pin_plan(args)
    redis = h.BenchRedis(args.redis_url, server_prefix, args.redis_server)
    args.url, where, server_info = redis.url, redis.describe(), redis.info()
    args.nonce = secrets.token_hex(4)
    load_before = h.load_average()
    print(
        f"{len(specs)} contenders x {len(args.modes)} modes x {args.rounds} rounds x "
        f"{args.calls:,} calls; {where}; {pinning}",
        flush=True,
    )
    for library, why in skipped.items():
        print(f"  skipped {library}: {why}", flush=True)
    runs = run_loop(args, bench(args, specs, redis))
    redis.stop()
    context: dict[str, Any] = {
        "command": args.command,
        "server": where,
        "pool": "max_connections="
        + ("unbounded" if args.max_connections is None else str(args.max_connections)),
        "cpus": pinning,
        "surefoot_timeout": "default (0.05 s)"
        if args.surefoot_timeout is None
        else f"{args.surefoot_timeout:g} s",
        "environment": environment(server_info, args.loop),
        "load_before": load_before,
        "load_after": h.load_average(),
        "skipped": skipped,
    }
    rows = summarize(specs, args.modes, runs)
    print_report(args, context, runs, rows)
    settings = h.settings(
        args, "rounds", "calls", "keys", "tasks", "modes", "max_connections", "surefoot_timeout",
        "log_entries",
        limit=[AMOUNT, WINDOW],
    )  # fmt: skip
    status = h.finish(args, context, settings, rows, runs)
    if not args.check:
        return 0
    judged = [r for r in rows if r["met"] is not None]
    expected = len(TARGET_ALGORITHMS) * len(TARGETS) if "concurrent" in args.modes else 0
    if len(judged) < expected:
        print(f"check: {expected - len(judged)} targeted figure(s) not measured", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(h.run(main))
