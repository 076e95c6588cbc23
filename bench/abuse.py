"""Gateway throughput with 100,000 active bans and failure counting on, beside abuse off.

Usage::

    .venv/bin/python bench/abuse.py                  # 9 rounds x 20 s per run, about 13 min
    .venv/bin/python bench/abuse.py --quick          # 1 round x 5 s: a smoke run, about 2 min
    .venv/bin/python bench/abuse.py --json results.json --check
    .venv/bin/python bench/abuse.py --configs bans --workers 2   # and none, 2 workers
    .venv/bin/python bench/abuse.py --micro-only     # BanSet.match in-process only, seconds
    .venv/bin/python bench/abuse.py --configs bans --sync-every 60   # the syncs' share

Theory of operation:
1. The entries (``make_entries``, seeded: the same every run): ``--addresses`` (100,000)
   address bans, nine in ten IPv4 and the rest IPv6, and ``--networks`` (10,000) network
   bans, four in five IPv4 of a prefix length from /16 to /30 and the rest IPv6 from
   /48 to /64; all active for 30 days. None is in 127.0.0.0/8 but two kept for the
   checks: the address ``127.0.0.2`` and the network ``127.0.1.0/24``. So wrk's address,
   127.0.0.1, is never banned, while every request still probes the address table and
   every prefix length present (15 IPv4 ones: Rule 2 of ``surefoot/abuse/_bans.py``).
2. They are written once, before any gateway starts, to a template SQLite file, where
   ``SharedBans`` looks for them: each entry put in its shard's board
   (``abuse:bans:NN``, about 1,700 slots of the 10,000 a board holds), then one stamp
   per shard (``abuse:stamps``), as ``SharedBans.put`` does but batched in the store's
   group commit. Then a ``SharedBans`` of this process syncs from the file: the time of
   that first sync (every entry decoded into a ``BanSet``) is what each gateway worker
   pays at start-up, before it answers (it syncs in its lifespan start-up), and is
   printed; so is a sync that finds nothing changed (what every worker does every
   ``[abuse] sync_every``, 1 s: a read of the stamps; now and then a purge, which
   scans every entry).
3. The micro-benchmark (``micro``, in-process, no server): ``BanSet.match`` for an address
   not banned (127.0.0.1, with one principal, as ``AbuseGuard`` calls it), timed with
   ``timeit`` (best of ``--repeat``) over an empty set, 10 entries (5 addresses, 5 IPv4
   networks), 10 addresses with one network per prefix length of the big set (as many
   probes as it, few entries), and the big set of item 1. The ratio of the big set to
   10 entries is the O(1) check; to the same prefix lengths, the cost of the entries
   alone. ``BanSet.purge`` and ``BanSet.counts`` over the big set are timed too (each
   scans every entry; the gateway runs them now and then, not per request).
4. The upstream is ``bench/gateway.py``'s ``upstream_app`` (200 and a small JSON body to
   ``GET /items``) under uvicorn (one worker, uvloop, httptools, no access log), started
   once for the whole benchmark.
5. The gateways (``CONFIGS``), ``surefoot serve --workers N`` (``--workers``, default 1),
   each started afresh for every run on a copy of the template file (every configuration
   the same file: ``none`` reads nothing of it), differ only in ``[abuse]``: ``none``
   (``enabled = false``), ``bans`` (``enabled = true``: the entries of item 1 in force,
   and one failure rule by address on ``POST /login``, a route the load never asks:
   failure counting is on, off the hot path) and ``bans+rule-path`` (the same, the rule
   naming ``GET /items`` too with ``statuses = [599]``: every request goes through the
   rule's path, its answer's status read, and no failure is ever counted);
   ``--sync-every`` sets their ``[abuse] sync_every`` (default 1, as by default). Everything
   else is ``bench/observe.py``'s file: no access log, idempotency off, no per-address
   cap, one rate-limit policy ``bench``, ``10/second`` per client (sliding window).
6. The workload is ``bench/observe.py``'s (``LUA``): ``GET /items``, each request with
   an ``X-API-Key`` drawn at random, ``--hot-share`` (25%) from ``--hot-keys`` (10) keys
   over their limit (refused with 429) and the rest from ``--cold-keys`` (10,000) keys
   far under it; so ``AbuseGuard`` also probes the principals table for each request.
7. Each run starts a fresh gateway, waits for ``/readyz`` (the time from its start is
   ``ready s``: with ``bans``, the first sync of item 2 is in it) and checks it before
   any load: a ``GET`` is answered with the upstream's body and a ``RateLimit`` field;
   15 quick ``GET`` with one key end in 429; ``/admin/bans`` lists every entry (404
   where ``[abuse]`` is off); a ``GET`` from 127.0.0.2 and one from 127.0.1.1 (source
   addresses of the loopback) are refused with 403 where bans are on, answered 200 where
   off. Then ``--warmup`` seconds of load, the timed run of ``--duration`` seconds (the
   gateway's CPU time, its memory: VmRSS and VmHWM summed over its processes).
8. Runs are interleaved: every round runs every configuration once, in an order rotated
   by one each round; ratios are taken within a round (req/s over ``none``'s) and the
   tables show medians over rounds, with the least and greatest ratio.
9. With two or more CPUs and ``taskset``, the gateway is pinned to one CPU (all of its
   workers), wrk and the upstream to another (``--no-pin``: nothing pinned). Every child
   runs in a process group of its own, stopped at the end whatever happens.

The target (issue 19): with 100,000 active bans, 10,000 networks and failure counting on
(``bans``), at least 0.95x the req/s of ``none``. ``bans+rule-path`` is shown beside it,
without a target.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import shutil
import sys
import tempfile
import time
import timeit
from dataclasses import asdict, dataclass
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import _harness as h
import observe as o

#: Banned for the checks: an address, and an address in a banned network.
BANNED_ADDRESS = "127.0.0.2"
BANNED_NETWORK = "127.0.1.0/24"
IN_BANNED_NETWORK = "127.0.1.1"
#: How long the entries are active.
BAN_SECONDS = 30 * 86400.0
SEED = 19

# -- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    enabled: bool  # [abuse] enabled
    hot_rule: bool  # the failure rule names the benchmarked route (statuses = [599])
    target: float | None  # least ratio of req/s to none's
    meaning: str

    def abuse(self, sync_every: float) -> str:
        """The [abuse] tables of the file."""
        if not self.enabled:
            return "[abuse]\nenabled = false\n"
        routes = '["POST /login", "GET /items"]' if self.hot_rule else '["POST /login"]'
        statuses = "statuses = [599]\n" if self.hot_rule else ""
        return (
            f"[abuse]\nenabled = true\nsync_every = {sync_every:g}\n\n"
            f'[[abuse.failures]]\nname = "login"\nroutes = {routes}\nby = "address"\n{statuses}'
        )


CONFIGS = (
    Config("none", False, False, None, "[abuse] enabled = false"),
    Config(
        "bans",
        True,
        False,
        o.TARGET,
        "[abuse] on: the bans in force, one failure rule by address on POST /login "
        "(not the route under load)",
    ),
    Config(
        "bans+rule-path",
        True,
        True,
        None,
        "the same, the rule naming GET /items too with statuses = [599] (every request "
        "through the rule's path, no failure counted)",
    ),
)

#: bench/observe.py's file, its [top] and [alerts] tables replaced by [abuse]'s.
GATEWAY_TOML = o.GATEWAY_TOML.replace("{observe}", "{abuse}")


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=9, quick={"rounds": 1, "duration": 5})
    h.add_wrk_options(parser, duration=20)
    h.option(parser, "--workers", 1, "gateway worker processes")
    h.option(parser, "--limit", "10/second", "the rate limit of each API key")
    h.option(parser, "--hot-keys", 10, "API keys far over their limit")
    h.option(parser, "--cold-keys", 10000, "API keys far under their limit")
    h.option(parser, "--hot-share", 0.25, "share of the requests sent with a hot key")
    h.option(parser, "--addresses", 100_000, "address bans in force")
    h.option(parser, "--networks", 10_000, "network bans in force")
    h.option(parser, "--sync-every", 1.0, "[abuse] sync_every of the configurations with bans")
    h.option(parser, "--repeat", 7, "timeit repeats of the micro-benchmark (best kept)")
    parser.add_argument(
        "--micro-only", action="store_true", help="run the in-process micro-benchmark only"
    )
    h.add_selection(parser, "--configs", CONFIGS, "none")
    h.add_pin_options(parser, what="the gateway, and wrk with the upstream,")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    h.check_wrk_options(parser, args)
    if args.workers < 1 or min(args.hot_keys, args.cold_keys, args.repeat) < 1:
        parser.error("expected --workers, --hot-keys, --cold-keys and --repeat >= 1")
    if not 0 < args.hot_share < 1:
        parser.error("expected 0 < --hot-share < 1")
    if args.addresses < 10 or args.networks < 32:
        parser.error("expected --addresses >= 10 and --networks >= 32")
    return args


# -- the entries ----------------------------------------------------------------------------


def make_entries(addresses: int, networks: int, now: float) -> list[Any]:
    """The bans of item 1: ``addresses`` address bans and ``networks`` network bans, none
    in 127.0.0.0/8 but ``BANNED_ADDRESS`` and ``BANNED_NETWORK``; seeded."""
    from surefoot.abuse import Action, Entry, Kind

    rng = random.Random(SEED)
    until = now + BAN_SECONDS

    def ipv4() -> int:
        while True:
            n = rng.randrange(1 << 24, 224 << 24)  # 1.0.0.0 up to the multicast range
            if n >> 24 != 127:
                return n

    def ipv6() -> int:
        return 0x2001 << 112 | rng.getrandbits(112)  # 2001::/16

    values: dict[str, Kind] = {BANNED_ADDRESS: Kind.ADDRESS, BANNED_NETWORK: Kind.NETWORK}
    v4_addresses = addresses * 9 // 10
    while len(values) < v4_addresses + 1:
        values.setdefault(str(IPv4Address(ipv4())), Kind.ADDRESS)
    while len(values) < addresses + 1:
        values.setdefault(str(IPv6Address(ipv6())), Kind.ADDRESS)
    v4_networks = networks * 4 // 5
    while len(values) < addresses + v4_networks + 1:
        net4 = IPv4Network((ipv4(), rng.randint(16, 30)), strict=False)
        values.setdefault(net4.with_prefixlen, Kind.NETWORK)
    while len(values) < addresses + networks:
        net6 = IPv6Network((ipv6(), rng.randint(48, 64)), strict=False)
        values.setdefault(net6.with_prefixlen, Kind.NETWORK)
    return [
        Entry(Action.BAN, kind, value, until=until, reason="bench", source="bench", at=now)
        for value, kind in values.items()
    ]


async def write_entries(path: Path, entries: list[Any], now: float) -> dict[str, Any]:
    """Write ``entries`` where ``SharedBans`` reads them (item 2), then time a first sync
    from the file and a sync that finds nothing changed."""
    from surefoot.abuse import SharedBans
    from surefoot.abuse._shared import FOREVER, SHARDS, shard_of
    from surefoot.storage import store_from_url

    store: Any = store_from_url(f"sqlite:///{path}")
    try:
        started = time.perf_counter()
        puts = [
            store.board_put(f"abuse:bans:{shard_of(e.slot):02d}", e.slot, e.encode(), e.until, now)
            for e in entries
        ]
        for first in range(0, len(puts), 2000):  # a batch per group commit
            await asyncio.gather(*puts[first : first + 2000])
        for shard in range(SHARDS):
            await store.board_put(
                "abuse:stamps", f"{shard:02d}", os.urandom(8).hex().encode(), now + FOREVER, now
            )
        written = time.perf_counter() - started
        shared = SharedBans(store)
        started = time.perf_counter()
        await shared.sync()
        first_sync = time.perf_counter() - started
        loaded = len(shared.bans)
        started = time.perf_counter()
        await shared.sync()
        unchanged_sync = time.perf_counter() - started
    finally:
        await store.aclose()
    if loaded != len(entries):
        raise h.BenchError(f"a first sync read {loaded} entries of the {len(entries)} written")
    return {
        "entries": loaded,
        "write_s": round(written, 3),
        "first_sync_s": round(first_sync, 3),
        "unchanged_sync_ms": round(unchanged_sync * 1000, 2),
    }


# -- the micro-benchmark --------------------------------------------------------------------


def micro(entries: list[Any], now: float, repeat: int) -> dict[str, Any]:
    """Item 3: ``BanSet.match`` for an address not banned, over sets of several sizes."""
    from surefoot.abuse import Action, BanSet, Entry, Kind

    until = now + BAN_SECONDS

    def ban(kind: Kind, value: str) -> Any:
        return Entry(Action.BAN, kind, value, until=until, source="bench")

    ten = [ban(Kind.ADDRESS, f"198.51.100.{i}") for i in range(1, 6)]
    nets = (IPv4Network(("203.0.113.0", p), strict=False) for p in (16, 20, 24, 28, 30))
    ten += [ban(Kind.NETWORK, net.with_prefixlen) for net in nets]
    # One network per prefix length of the big set (as many probes), and 10 addresses.
    lengths = sorted(
        {(":" in e.value, int(e.value.split("/")[1])) for e in entries if e.kind is Kind.NETWORK}
    )
    probes = [ban(Kind.ADDRESS, f"198.51.100.{i}") for i in range(1, 11)]
    for v6, p in lengths:
        value = str(IPv6Network((0x3FFE << 112, p))) if v6 else str(IPv4Network((0xCB000000, p)))
        probes.append(ban(Kind.NETWORK, value))
    sets = {
        "empty": [],
        "10 entries": ten,
        f"10 addresses + {len(lengths)} networks": probes,
        f"{len(entries):,} entries": entries,
    }
    principals = ("cred:not-banned",)
    figures: dict[str, Any] = {"rows": []}
    for name, members in sets.items():
        bans = BanSet()
        for entry in members:
            bans.put(entry)
        if bans.match(now, "127.0.0.1", principals) is not None:
            raise h.BenchError(f"micro: 127.0.0.1 is banned in the set {name!r}")
        timer = timeit.Timer(partial(bans.match, now, "127.0.0.1", principals))
        number, _ = timer.autorange()
        best = min(timer.repeat(repeat, number)) / number
        # The IPv4 network prefix lengths a match probes (beside one address lookup).
        v4_networks = (e.value for e in members if e.kind is Kind.NETWORK and ":" not in e.value)
        v4 = len({int(value.split("/")[1]) for value in v4_networks})
        figures["rows"].append(
            {"set": name, "entries": len(bans), "v4_lengths": v4, "ns_per_match": best * 1e9}
        )
        if members is entries:
            for what in ("counts", "purge"):
                scan = partial(getattr(bans, what), now)
                took = min(timeit.repeat(scan, number=1, repeat=repeat))
                figures[f"{what}_ms"] = took * 1000
    rows = figures["rows"]
    figures["big_over_10"] = rows[3]["ns_per_match"] / rows[1]["ns_per_match"]
    figures["big_over_lengths"] = rows[3]["ns_per_match"] / rows[2]["ns_per_match"]
    return figures


def print_micro(figures: dict[str, Any], repeat: int) -> None:
    columns = [
        h.Column("set", "<32"),
        h.Column("entries", ">8"),
        h.Column("IPv4 lengths", ">12"),
        h.Column("ns/match", ">9"),
    ]
    cells = [
        [r["set"], f"{r['entries']:,}", str(r["v4_lengths"]), f"{r['ns_per_match']:,.0f}"]
        for r in figures["rows"]
    ]
    print(
        f"\nBanSet.match(now, '127.0.0.1', (one principal,)), not banned; timeit, best of {repeat}:"
    )
    print("\n".join(h.text_table(columns, cells)))
    big = figures["rows"][3]["set"]
    print(f"ratio {big} / 10 entries: {figures['big_over_10']:.2f}")
    print(f"ratio {big} / {figures['rows'][2]['set']}: {figures['big_over_lengths']:.2f}")
    print(
        f"one scan of {big} (the gateway's entry count and purge, now and then): "
        f"BanSet.counts {figures['counts_ms']:.1f} ms, BanSet.purge {figures['purge_ms']:.1f} ms"
    )
    print()
    print(h.markdown_table(["set", "entries", "IPv4 lengths", "ns/match"], cells, ["set"]))


# -- one gateway ----------------------------------------------------------------------------


@dataclass
class Gateway(o.Gateway):
    ready_s: float  # from the start of the process to /readyz's 200


def start_gateway(
    config: Config,
    args: argparse.Namespace,
    workdir: Path,
    upstream: str,
    prefix: list[str],
    template: Path,
) -> Gateway:
    path = workdir / "gateway.toml"
    database = workdir / "gateway.db"
    shutil.copyfile(template, database)
    path.write_text(
        GATEWAY_TOML.format(
            workers=args.workers,
            upstream=upstream,
            database=database,
            token=o.TOKEN,
            limit=args.limit,
            abuse=config.abuse(args.sync_every),
        )
    )
    port, admin = h.free_port(), h.free_port()
    command = [
        *prefix, sys.executable, "-m", "surefoot", "serve", "--config", str(path),
        "--port", str(port), "--admin-port", str(admin), "--workers", str(args.workers),
    ]  # fmt: skip
    # TMPDIR: the metrics directory of several workers goes with the rest, deleted at the end.
    env = {"TMPDIR": str(workdir)}
    started = time.monotonic()
    child = h.Child(f"{config.name} x{args.workers}", command, workdir / "gateway.log", env, port)
    child.wait_until(
        lambda: h.http(f"http://127.0.0.1:{admin}/readyz", timeout=1)[0] == 200,
        "get ready",
        timeout=180,
    )
    child.wait_listening()
    return Gateway(child, f"http://127.0.0.1:{admin}", time.monotonic() - started)


def get_from(source: str, url: str) -> int:
    """The status of a GET of ``url`` sent from the loopback address ``source``."""
    host, _, port = url.removeprefix("http://").partition("/")[0].partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", o.PATH, headers={"X-API-Key": f"check-{source}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def check_answers(config: Config, gateway: Gateway, entries: int) -> int | None:
    """The gateway forwards, its policy limits, and its bans are those of its config; the
    entries ``/admin/bans`` lists (None where ``[abuse]`` is off)."""
    url = gateway.child.base + o.PATH
    status, headers, body = h.http(url, headers={"X-API-Key": "check-first"})
    if status != 200 or body != o.ANSWER:
        raise h.BenchError(f"{config.name}: GET answered {status} {body[:300]!r}")
    if "ratelimit" not in headers:
        raise h.BenchError(f"{config.name}: no RateLimit field in the answer to GET: {headers}")
    statuses = [h.http(url, headers={"X-API-Key": "check-hot"})[0] for _ in range(15)]
    if 429 not in statuses or set(statuses) - {200, 429}:
        raise h.BenchError(
            f"{config.name}: 15 quick GETs with one key answered {statuses}: expected 200s "
            "then 429s"
        )
    expected = 403 if config.enabled else 200
    for source in (BANNED_ADDRESS, IN_BANNED_NETWORK):
        got = get_from(source, gateway.child.base)
        if got != expected:
            raise h.BenchError(f"{config.name}: GET from {source} answered {got}, not {expected}")
    status, listing = gateway.admin_get("/admin/bans?limit=1")
    if not config.enabled:
        if status != 404:
            raise h.BenchError(f"{config.name}: /admin/bans answered {status}, expected 404")
        return None
    if status != 200 or listing["total"] != entries:
        total = listing.get("total") if isinstance(listing, dict) else listing
        raise h.BenchError(
            f"{config.name}: /admin/bans answered {status}, {total} entries, not {entries}"
        )
    return int(listing["total"])


# -- one run --------------------------------------------------------------------------------


def run_one(
    args: argparse.Namespace,
    config: Config,
    round_no: int,
    cpus: h.CpuPlan,
    upstream: str,
    lua: Path,
    template: Path,
    entries: int,
) -> h.Run:
    def load(duration: int) -> dict[str, Any]:
        seed = str(random.randrange(1 << 20))
        keys = [str(args.hot_keys), str(args.cold_keys), str(args.hot_share), seed]
        return h.wrk_load(args, cpus, lua, gateway.child.base + o.PATH, duration, keys)

    with tempfile.TemporaryDirectory(prefix="surefoot-bench-abuse-") as tmp:
        gateway = start_gateway(config, args, Path(tmp), upstream, cpus.server, template)
        try:
            listed = check_answers(config, gateway, entries)
            if args.warmup > 0:
                load(args.warmup)
            result: dict[str, Any] = {}

            def timed() -> dict[str, Any]:
                result.update(load(args.duration))
                return result

            run = h.timed_wrk(gateway.child, None, timed, f"{config.name} in {args.duration} s")
            rss, peak = o.group_memory(gateway.child.process.pid)
            if gateway.child.process.poll() is not None:
                raise h.BenchError(f"{config.name}: {gateway.child.died()}")
        except h.BenchError as exc:
            raise h.BenchError(f"round {round_no} {config.name}: {exc}") from None
        finally:
            gateway.child.stop()
    counts = o.statuses(result["output"])
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
        "ready_s": round(gateway.ready_s, 3),
        "bans_listed": listed,
    }


def say(run: h.Run, width: int) -> None:
    print(
        f"  round {run['round']} {run['config']:<{width}} {run['rps']:>8,.0f} req/s"
        f"  {run['cpu_us_per_request']:>5,.0f} CPU us/req  429 {run['refused_share']:.0%}"
        f"  p99 {run['latency_ms']['p99']:.1f} ms  RSS {run['rss_mib']:.1f} MiB"
        f"  ready {run['ready_s']:.1f} s  errors {run['error_count']}",
        flush=True,
    )


# -- report ---------------------------------------------------------------------------------


def summarize(configs: list[Config], runs: list[h.Run]) -> list[h.Run]:
    rows = h.server_rows(configs, runs, "none")
    for row in rows:
        mine = h.by_round(runs, config=row["config"]).values()
        row["refused_share"] = h.median(r["refused_share"] for r in mine)
        row["peak_rss_mib"] = h.median(r["peak_rss_mib"] for r in mine)
        row["ready_s"] = h.median(r["ready_s"] for r in mine)
        row["rss_min"] = min(r["rss_mib"] for r in mine)
        row["rss_max"] = max(r["rss_mib"] for r in mine)
    return rows


COLUMNS = (
    "configuration", "req/s", "x none", "(min-max)", "target", "met", "CPU us/req",
    "CPU x none", "CPU share", "429 share", "p99 ms", "RSS MiB", "peak RSS MiB", "ready s",
    "errors",
)  # fmt: skip


def cells(row: h.Run) -> list[str]:
    """bench/observe.py's cells, and ``ready s`` before ``errors``."""
    *figures, errors = o.cells(row)
    return [*figures, f"{row['ready_s']:.1f}", errors]


def print_report(
    args: argparse.Namespace, context: h.Run, runs: list[h.Run], rows: list[h.Run]
) -> None:
    load = (
        f"wrk {args.threads} threads, {args.connections} connections, GET {o.PATH} with an "
        f"X-API-Key each: {args.hot_share:.0%} from {args.hot_keys} hot keys, the rest from "
        f"{args.cold_keys:,} cold ones; {args.duration} s per run after {args.warmup} s "
        f"warm-up, {args.rounds} round(s), configurations interleaved"
    )
    h.print_header(
        context,
        [
            ("load", load),
            ("gateway", context["gateway"]),
            ("entries", context["entries"]),
            ("upstream", context["upstream"]),
            ("cpus", context["cpus"]),
        ],
        "uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), {wrk}",
    )
    print()
    columns = [
        h.Column("configuration", "<14"), h.Column("req/s", ">7"),
        *h.ratio_columns("x none", 6),
        h.Column("CPU us/req", ">10"), h.Column("CPU x none", ">10"), h.Column("CPU share", ">9"),
        h.Column("429 share", ">9"), h.Column("p99 ms", ">6"),
        h.Column("RSS MiB", ">7"), h.Column("peak RSS MiB", ">12"), h.Column("ready s", ">7"),
        h.Column("errors", ">6"),
    ]  # fmt: skip
    print("\n".join(h.text_table(columns, [cells(row) for row in rows])))
    print()
    print("req/s, CPU us/req, 429 share, p99, RSS, ready: medians over rounds.")
    print("x none: median of the per-round ratios of req/s to none's (min-max: their spread);")
    print("       the target applies to it.")
    print("CPU us/req: the gateway's CPU time (every process) per answered request, 429s")
    print("       included; CPU x none: none's CPU us/req over this one's, the median per")
    print("       round: the req/s ratio to expect of a whole idle core, less sensitive to")
    print("       other load; CPU share: the gateway's CPU time over the wall time.")
    print("429 share: answers refused by the rate-limit policy, of all answers.")
    print("RSS, peak RSS: the gateway's VmRSS and VmHWM after the timed run, summed over its")
    print("       processes.")
    print("ready s: from the gateway's start to /readyz's 200 (with bans: their first sync);")
    print("       never in the timed run.")
    print("errors: wrk socket errors, timeouts (5 s) and answers >= 300 other than 429, all")
    print("       rounds; a configuration with errors misses its target.")
    print()
    names = [row["config"] for row in rows]
    print("per round, req/s (x none) [the gateway's CPU share]:")
    print("  round " + " ".join(f"{n:>25}" for n in names))
    for round_no in range(1, args.rounds + 1):
        mine = {r["config"]: r for r in runs if r["round"] == round_no}
        base = mine["none"]["rps"]
        line = " ".join(
            f"{mine[n]['rps']:>10,.0f} ({mine[n]['rps'] / base:.3f}) "
            f"[{mine[n]['cpu_seconds'] / mine[n]['seconds']:.2f}]"
            for n in names
        )
        print(f"  {round_no:>5} {line}")
    listed = sorted({r["bans_listed"] for r in runs if r["bans_listed"] is not None})
    if listed:
        print(
            f"\nbans checked before every run: /admin/bans listed {listed[0]:,} entries where "
            f"[abuse] is on (404 where off); GETs from {BANNED_ADDRESS} and "
            f"{IN_BANNED_NETWORK} answered 403 (200 where off)."
        )
    print()
    print("Markdown:")
    print()
    print(h.markdown_table(COLUMNS, [cells(row) for row in rows], ["configuration", "met"]))


def describe_entries(args: argparse.Namespace, loaded: dict[str, Any]) -> str:
    return (
        f"{args.addresses:,} address bans (90% IPv4) and {args.networks:,} network bans (80% "
        f"IPv4 /16-/30, IPv6 /48-/64), none of 127.0.0.1; written to the SQLite file before "
        f"the gateways start in {loaded['write_s']:.1f} s; a first SharedBans.sync of them "
        f"took {loaded['first_sync_s']:.2f} s in this process (each worker's start-up), a sync "
        f"finding nothing changed {loaded['unchanged_sync_ms']:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    now = time.time()
    started = time.perf_counter()
    entries = make_entries(args.addresses, args.networks, now)
    made_s = time.perf_counter() - started
    print(f"{len(entries):,} entries made in {made_s:.1f} s; micro-benchmark...", flush=True)
    figures = micro(entries, now, args.repeat)
    print_micro(figures, args.repeat)
    if args.micro_only:
        if args.json:
            h.write_json(args.json, {"command": args.command, "micro": figures})
        return 0
    o.check_tools()
    cpus = h.split_cpus(args.no_pin, "wrk and the upstream")
    width = max(len(c.name) for c in configs)
    runs: list[h.Run] = []
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-abuse-") as tmp:
        workdir = Path(tmp)
        lua = o.write_lua(workdir)
        template = workdir / "template.db"
        loaded = asyncio.run(write_entries(template, entries, now))
        del entries  # the gateways read them from the file
        print(f"\n{describe_entries(args, loaded)}", flush=True)
        upstream = h.start_uvicorn(
            "upstream", "gateway:upstream_app", workdir, workers=1, lifespan=False,
            prefix=cpus.load,
        )  # fmt: skip
        context: h.Run = {
            "command": args.command,
            "gateway": f"surefoot serve, {args.workers} worker(s), SQLite, one policy of "
            f"{args.limit} per API key (sliding window), idempotency off, no access log",
            "entries": describe_entries(args, loaded),
            "upstream": "bench/gateway.py:upstream_app under uvicorn, 1 worker, uvloop, "
            "httptools, no access log, on wrk's CPU",
            "cpus": cpus.sentence,
            "environment": h.environment(
                ("surefoot", "uvicorn", "uvloop", "httptools"), {"wrk": ["wrk", "--version"]}
            ),
            "load_before": h.load_average(),
            "written": loaded,
            "micro": figures,
        }
        try:
            upstream.wait_http(upstream.base + o.PATH)
            total = args.rounds * len(configs) * (args.duration + args.warmup + 6)
            print(
                f"{len(configs)} configurations x {args.rounds} rounds, about {total / 60:.0f} "
                f"min; {cpus.sentence}",
                flush=True,
            )
            for round_no in range(1, args.rounds + 1):
                for config in h.rotated(configs, round_no):
                    run = run_one(
                        args, config, round_no, cpus, upstream.base, lua, template,
                        loaded["entries"],
                    )  # fmt: skip
                    runs.append(run)
                    say(run, width)
        finally:
            upstream.stop()
        context["load_after"] = h.load_average()
    rows = summarize(configs, runs)
    print_report(args, context, runs, rows)
    print_micro(figures, args.repeat)
    used = h.settings(
        args, "rounds", "duration", "warmup", "connections", "threads", "workers", "limit",
        "hot_keys", "cold_keys", "hot_share", "addresses", "networks", "sync_every", "repeat",
    )  # fmt: skip
    return h.finish(args, context, used, rows, runs, configs=[asdict(c) for c in configs])


if __name__ == "__main__":
    sys.exit(h.run(main))
