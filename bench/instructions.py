"""Instructions per request through each middleware and the gateway, counted by callgrind.

Usage::

    .venv/bin/python bench/instructions.py             # every configuration, about 4 minutes
    .venv/bin/python bench/instructions.py --quick     # fewer requests: a smoke run
    .venv/bin/python bench/instructions.py --configs floor,idempotency-memory-new --json out.json

Theory of operation:
1. Wall-clock figures on a shared machine drift by 10% or more; the number of instructions
   a request executes does not. This benchmark counts them, so that one optimisation step
   can be judged against the last; the wrk benchmarks' req/s ratios stay the headline.
2. A child process (``bench/instructions.py --child CONFIG --requests N``) builds one ASGI
   stack in process and sends requests straight to it: a synthetic ASGI scope, receive
   and send on one asyncio loop, no sockets and no server. It sends ``--warmup`` requests,
   then N, and checks every answer (status, and the header that shows the middleware did
   its work), so a configuration cannot silently measure something else.
3. The parent runs the child under ``valgrind --tool=callgrind`` twice, with ``--small``
   and ``--large`` requests, and reads the instructions executed by each (Ir, the total
   that callgrind prints as ``Collected``). The figure per request is
   (Ir(large) - Ir(small)) / (large - small): interpreter start, imports, building the
   stack and the warm-up are the same in both runs and cancel out.
4. As repeatable as the method allows: ``PYTHONHASHSEED=0``; every clock is a
   ``surefoot.testing.ManualClock`` advanced by a fixed step per request; keys and bodies
   are built from the request's number; the child's environment is fixed. One
   configuration (``--stability``) is measured a second time and the report says by how
   much the two figures differ (nothing, so far); separate runs of the script have
   differed by up to about 1%.
5. The rows: ``bare``, a minimal ASGI app answering 200 with a small JSON body at once;
   ``floor``, a minimal pure-ASGI pass-through middleware around it (the least a layer
   can cost); ``RateLimitMiddleware`` (one policy whose limit no request reaches, GET)
   and ``IdempotencyMiddleware`` (JSON POST, a new ``Idempotency-Key`` per request, or
   the same key and body every time so that every counted request is a replay) on
   ``MemoryStore`` and ``SqliteStore`` (a file in a temporary directory); the gateway
   (``surefoot.gateway.Gateway`` built from a config dict whose ``[upstream] app`` is
   ``bare``, called directly as the gateway does for an in-process app, not through its
   HTTP/1.1 pool to a URL upstream) without policies (GET) and with every policy on
   SQLite (POST, new key); a named client's GET with its API key, without and with a
   deprecated route and ``[versions]`` (issue 20); and ``surefoot decide``'s app on
   memory, SQLite and the Redis server of ``REDIS_URL`` (under a key prefix of the run's
   own, whose keys are deleted when it ends; each request waits for its reply, so each
   is a script call of its own).
   Each row gives its instructions per request, its ratio to ``bare`` and the
   instructions it adds to ``bare``'s.
6. Callgrind counts user-space instructions only: system calls (SQLite's writes, fsync)
   cost time that this benchmark does not see. Valgrind runs the children about 50 times
   slower than natively; ``--jobs`` runs that many at once (the counts do not depend on it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h

VALGRIND = "valgrind"
#: The clock's step per request: far below every window and lease used here.
CLOCK_STEP = 0.001
#: Never reached by any request of a run.
LIMITS = ["1000000/second", "1000000000/hour"]
PAYLOAD = b'{"ok":true}'
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
#: The Redis server of ``decide-redis`` (the child's environment is fixed: not an option).
REDIS_URL = "redis://127.0.0.1:6379/0"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- the apps ---------------------------------------------------------------------------------


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    """200 with a small JSON body at once (the body of a POST is read first)."""
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(PAYLOAD)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": PAYLOAD})


class Floor:
    """A pure-ASGI pass-through middleware: the least a layer can cost."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


# -- the configurations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class Stack:
    """An app, the request number ``i`` to send it, and what its answers must show."""

    app: App
    request: Callable[[int], Request]
    status: int = 200
    header: bytes | None = None  # a response header every answer carries
    replayed: bool | None = None  # None: not checked; else every counted answer is (not) one
    close: Callable[[], Awaitable[None]] | None = None


def get(i: int) -> Request:
    return Request("GET", "/hello", [(b"host", b"bench.test")], b"")


def post(key: str, body: bytes) -> Request:
    headers = [
        (b"host", b"bench.test"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"idempotency-key", key.encode()),
    ]
    return Request("POST", "/charges", headers, body)


def post_new(i: int) -> Request:
    return post(f"key-{i:09d}", b'{"amount":%09d,"currency":"eur"}' % i)


def post_same(i: int) -> Request:
    return post("key-replayed", b'{"amount":1999,"currency":"eur"}')


def store(kind: str, workdir: Path) -> Any:
    from surefoot.storage import MemoryStore, SqliteStore

    return MemoryStore() if kind == "memory" else SqliteStore(workdir / f"{kind}.db")


def ratelimit(kind: str) -> Callable[[Path, Any], Stack]:
    def build(workdir: Path, clock: Any) -> Stack:
        from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy

        chosen = store(kind, workdir)
        app = RateLimitMiddleware(
            bare,
            store=chosen,
            policies=[RateLimitPolicy("bench", limits=LIMITS)],
            clock=clock,
            sleep=clock.sleep,
        )
        return Stack(app, get, header=b"ratelimit", close=chosen.aclose)

    return build


def idempotency(kind: str, replay: bool) -> Callable[[Path, Any], Stack]:
    def build(workdir: Path, clock: Any) -> Stack:
        from surefoot.idempotency import IdempotencyMiddleware

        chosen = store(kind, workdir)
        app = IdempotencyMiddleware(bare, store=chosen, clock=clock, sleep=clock.sleep)
        request = post_same if replay else post_new
        return Stack(app, request, replayed=replay, close=chosen.aclose)

    return build


GATEWAY_POLICIES: dict[str, Any] = {
    "idempotency": {"store": "default", "methods": ["POST"], "max_records_per_principal": False},
    "rate_limit": {
        "store": "default",
        "policies": [{"name": "bench", "limits": LIMITS, "algorithm": "sliding_window"}],
    },
    "identity": {"address_limits": ["1000000/second"]},
    "routes": [{"match": "POST /charges", "idempotency": {"ttl": 3600}}],
}


def gateway(policies: bool, tracked: bool = True) -> Callable[[Path, Any], Stack]:
    def build(workdir: Path, clock: Any) -> Stack:
        from surefoot.gateway import Gateway, config_from_dict

        config: dict[str, Any] = {
            "server": {"access_log": False},
            "upstream": {"app": "__main__:bare"},
            "stores": {"default": f"sqlite:///{workdir / 'gateway.db'}"},
            "admin": {"token": "bench"},
        }
        if not tracked:  # issue 18's top offenders and alert evaluation off
            config |= {"top": {"enabled": False}, "alerts": {"evaluate": False}}
        if policies:
            config |= GATEWAY_POLICIES
        else:
            config["routes"] = [{"match": "/*", "idempotency": False}]
        app = Gateway(config_from_dict(config), clock=clock)
        if policies:
            return Stack(app, post_new, header=b"ratelimit", replayed=False, close=app.aclose)
        return Stack(app, get, close=app.aclose)

    return build


def decide(kind: str) -> Callable[[Path, Any], Stack]:
    """``surefoot decide``'s ``DecisionApp`` (issue 22) with the gateway's policy, asked as
    NGINX asks it: ``/decide?edge=nginx`` describing ``GET /hello`` from a trusted peer."""

    def build(workdir: Path, clock: Any) -> Stack:
        from surefoot.edge import DecisionApp
        from surefoot.gateway import config_from_dict

        prefix = f"bench:instructions:{workdir.name}:"
        url = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{workdir / 'decide.db'}",
            "redis": f"{REDIS_URL}?prefix={prefix}",
        }[kind]
        config: dict[str, Any] = {
            "server": {"access_log": False, "trusted_proxies": ["192.0.2.7"]},
            "upstream": {"url": "http://127.0.0.1:9"},
            "stores": {"default": url},
            "admin": {"enabled": False},
            "identity": {"address_limits": []},
            "rate_limit": GATEWAY_POLICIES["rate_limit"],
        }
        app = DecisionApp(config_from_dict(config), clock=clock, workers=1)
        headers = [
            (b"host", b"127.0.0.1:8090"),
            (b"x-original-method", b"GET"),
            (b"x-original-uri", b"/hello"),
            (b"x-forwarded-for", b"198.51.100.4"),
            (b"x-request-id", b"3f2a9c1e5b7d4a6f8e0c2b4d6f8a0c2e"),
            (b"user-agent", b"bench"),
        ]

        def asked(i: int) -> Request:
            return Request("GET", "/decide?edge=nginx", headers, b"")

        async def close() -> None:
            await app.aclose()
            if kind == "redis":
                from redis.asyncio import Redis

                client = Redis.from_url(REDIS_URL)
                keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
                if keys:
                    await client.delete(*keys)
                await client.aclose()

        return Stack(app, asked, header=b"ratelimit", close=close)

    return build


def gateway_keyed(contracts: bool) -> Callable[[Path, Any], Stack]:
    """The gateway without policies, a named client's GET with its API key; with
    ``contracts``, on a deprecated route and with ``[versions]`` (issue 20): announced,
    pinned, and its version forwarded."""

    def build(workdir: Path, clock: Any) -> Stack:
        from datetime import UTC, datetime

        from surefoot.gateway import Gateway, config_from_dict

        route: dict[str, Any] = {"match": "GET /hello", "idempotency": False}
        config: dict[str, Any] = {
            "server": {"access_log": False},
            "upstream": {"app": "__main__:bare"},
            "stores": {"default": f"sqlite:///{workdir / 'gateway.db'}"},
            "admin": {"token": "bench"},
            "clients": [{"name": "acme", "api_key": "k-bench-acme"}],
            # As gateway-no-policy: no idempotency layer.
            "routes": [route, {"match": "/*", "idempotency": False}],
        }
        if contracts:
            route["deprecation"] = {
                "deprecated": datetime(2020, 1, 1, tzinfo=UTC),
                "sunset": datetime(2100, 1, 1, tzinfo=UTC),
                "link": "https://example.com/migrate",
            }
            config["versions"] = {"dates": ["2024-01-15", "2025-03-10"]}
        app = Gateway(config_from_dict(config), clock=clock)
        headers = [(b"host", b"bench.test"), (b"x-api-key", b"k-bench-acme")]

        def keyed(i: int) -> Request:
            return Request("GET", "/hello", headers, b"")

        shows = b"deprecation" if contracts else None
        return Stack(app, keyed, header=shows, close=app.aclose)

    return build


@dataclass(frozen=True)
class Config:
    name: str
    meaning: str
    build: Callable[[Path, Any], Stack]


CONFIGS = (
    Config("bare", "a minimal ASGI app: 200 and a small JSON body at once",
           lambda workdir, clock: Stack(bare, get)),
    Config("floor", "bare behind a pure-ASGI pass-through middleware",
           lambda workdir, clock: Stack(Floor(bare), get)),
    Config("ratelimit-memory", "RateLimitMiddleware, MemoryStore, one policy, GET",
           ratelimit("memory")),
    Config("ratelimit-sqlite", "RateLimitMiddleware, SqliteStore, one policy, GET",
           ratelimit("sqlite")),
    Config("idempotency-memory-new", "IdempotencyMiddleware, MemoryStore, POST, new key",
           idempotency("memory", replay=False)),
    Config("idempotency-memory-replay", "IdempotencyMiddleware, MemoryStore, POST, replay",
           idempotency("memory", replay=True)),
    Config("idempotency-sqlite-new", "IdempotencyMiddleware, SqliteStore, POST, new key",
           idempotency("sqlite", replay=False)),
    Config("idempotency-sqlite-replay", "IdempotencyMiddleware, SqliteStore, POST, replay",
           idempotency("sqlite", replay=True)),
    Config("gateway-no-policy", "Gateway over bare (app upstream), no policy, GET",
           gateway(policies=False)),
    Config("gateway-keyed", "gateway-no-policy, a [[clients]] client's GET with its API key",
           gateway_keyed(contracts=False)),
    Config("gateway-contracts", "gateway-keyed on a deprecated route, with [versions]",
           gateway_keyed(contracts=True)),
    Config("gateway-sqlite-post-new", "Gateway, every policy on SQLite, POST, new key",
           gateway(policies=True)),
    Config("gateway-sqlite-post-untracked",
           "the same, [top] and [alerts] evaluate off (issue 18's tracking)",
           gateway(policies=True, tracked=False)),
    Config("decide-memory", "surefoot decide's DecisionApp, /decide as NGINX asks, MemoryStore",
           decide("memory")),
    Config("decide-sqlite", "the same on SqliteStore", decide("sqlite")),
    Config("decide-redis", "the same on RedisStore (one script call per request)",
           decide("redis")),
)  # fmt: skip
BY_NAME = {c.name: c for c in CONFIGS}


# -- the child: requests straight to the app --------------------------------------------------


async def send_one(app: App, request: Request) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through ``app``: its status, its header fields and its body."""
    path, _, query = request.path.partition("?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": request.headers,
        "client": ("192.0.2.7", 40000),
        "server": ("bench.test", 80),
    }
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": request.body, "more_body": False}

    status = 0
    headers: dict[bytes, bytes] = {}
    body = bytearray()

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update((k.lower(), v) for k, v in message.get("headers", ()))
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, headers, bytes(body)


async def drive(config: Config, workdir: Path, warmup: int, requests: int) -> None:
    from surefoot.testing import ManualClock

    clock = ManualClock()
    stack = config.build(workdir, clock)
    try:
        for i in range(warmup + requests):
            clock.advance(CLOCK_STEP)
            status, headers, body = await send_one(stack.app, stack.request(i))
            counted = i >= warmup
            check(config, stack, status, headers, body, counted)
    finally:
        if stack.close is not None:
            await stack.close()


def check(
    config: Config,
    stack: Stack,
    status: int,
    headers: dict[bytes, bytes],
    body: bytes,
    counted: bool,
) -> None:
    wrong = ""
    if status != stack.status:
        wrong = f"status {status}, expected {stack.status}"
    elif stack.header is not None and stack.header not in headers:
        wrong = f"no {stack.header.decode()} header"
    elif stack.replayed is not None and counted:
        replayed = headers.get(b"idempotent-replayed") == b"true"
        if replayed != stack.replayed:
            wrong = "a replay" if replayed else "not a replay"
    if wrong:
        raise h.BenchError(f"{config.name}: {wrong}: {headers!r} {body[:300]!r}")


def child(args: argparse.Namespace) -> int:
    config = BY_NAME[args.child]
    asyncio.run(drive(config, Path(args.workdir), args.warmup, args.requests))
    return 0


# -- the parent: callgrind -------------------------------------------------------------------


def instructions(config: Config, requests: int, warmup: int, workdir: Path) -> int:
    """The instructions (Ir) of one child run, as callgrind counts them."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{config.name}-{requests}-", dir=workdir))
    out = run_dir / "callgrind.out"
    command = [
        shutil.which(VALGRIND) or VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--child", config.name, "--requests", str(requests),
        "--warmup", str(warmup), "--workdir", str(run_dir),
    ]  # fmt: skip
    # A fixed environment, not the caller's, so that what the child allocates at start
    # (os.environ...) does not depend on who runs it.
    env = {
        "PATH": os.defpath,
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise h.BenchError(
            f"{config.name} ({requests} requests): the child failed "
            f"(status {done.returncode}):\n{done.stderr[-3000:]}"
        )
    found = COLLECTED.search(done.stderr)
    if found is None:
        found = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise h.BenchError(f"{config.name}: no instruction count from callgrind")
    return int(found.group(1))


def measure(config: Config, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One configuration's figure: the difference of two child runs, per request."""
    started = time.monotonic()
    small = instructions(config, args.small, args.warmup, workdir)
    large = instructions(config, args.large, args.warmup, workdir)
    per_request = (large - small) / (args.large - args.small)
    print(f"  {config.name}: {per_request:,.0f} instructions per request", flush=True)
    return {
        "config": config.name,
        "ir_small": small,
        "ir_large": large,
        "per_request": per_request,
        "seconds": time.monotonic() - started,
    }


def measure_all(
    jobs: list[Config], args: argparse.Namespace, workdir: Path
) -> Iterator[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        yield from pool.map(lambda c: measure(c, args, workdir), jobs)


# -- the report ------------------------------------------------------------------------------


def summarize(configs: list[Config], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first = {r["config"]: r for r in reversed(runs)}  # the first run of each configuration
    base = first["bare"]["per_request"]
    return [
        {
            "config": c.name,
            "meaning": c.meaning,
            "instructions": first[c.name]["per_request"],
            "ratio": first[c.name]["per_request"] / base,
            "overhead": first[c.name]["per_request"] - base,
        }
        for c in configs
    ]


COLUMNS = (
    h.Column("configuration", "<25"), h.Column("instr/req", ">9"), h.Column("x bare", ">6"),
    h.Column("+ over bare", ">11"), h.Column("what it runs", gap=2),
)  # fmt: skip


def print_report(
    args: argparse.Namespace,
    context: dict[str, Any],
    rows: list[dict[str, Any]],
    stability: dict[str, Any] | None,
) -> None:
    h.print_header(
        context,
        [
            (
                "method",
                f"callgrind Ir of a child run with {args.large:,} requests minus one with "
                f"{args.small:,},",
            ),
            ("", f"over {args.large - args.small:,}; {args.warmup} warm-up requests in each run"),
        ],
        "{valgrind}",
    )
    print()
    cells = [
        [
            row["config"],
            f"{row['instructions']:,.0f}",
            f"{row['ratio']:.2f}",
            f"{row['overhead']:+,.0f}",
            row["meaning"],
        ]
        for row in rows
    ]
    print("\n".join(h.text_table(COLUMNS, cells)))
    print()
    print("instr/req: instructions executed per request (user space: system calls not")
    print("           counted), from the difference of two runs.")
    print("x bare: instr/req over bare's; + over bare: instructions added to bare's per request.")
    if stability is not None:
        print(
            f"stability: {stability['config']} measured twice, {stability['first']:,.0f} and "
            f"{stability['second']:,.0f} instructions per request "
            f"({stability['difference_percent']:.3f}% apart)."
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = h.new_parser(
        __doc__, quick={"small": 20, "large": 120, "warmup": 20, "stability": "none"}
    )
    h.option(parser, "--small", 100, "requests counted in the smaller run")
    h.option(parser, "--large", 600, "requests counted in the larger run")
    h.option(parser, "--warmup", 50, "requests sent before the counted ones, in every run")
    h.option(parser, "--jobs", 2, "children run under valgrind at once")
    h.option(
        parser, "--stability", "idempotency-sqlite-new",
        "the configuration measured twice to show how stable the figure is ('none': skip; "
        "one not selected: the last selected)",
    )  # fmt: skip
    h.add_selection(parser, "--configs", CONFIGS, "bare")
    h.add_output_options(parser, check=False)
    parser.add_argument("--child", choices=list(BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = h.parse(parser, argv)
    if args.child is None and not 0 < args.small < args.large:
        parser.error("expected 0 < --small < --large")
    if args.jobs < 1 or args.warmup < 0:
        parser.error("expected --jobs >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child(args)
    h.require_executable(VALGRIND)
    configs: list[Config] = args.configs
    stable = None
    if args.stability != "none":
        chosen = [c for c in configs if c.name == args.stability]
        stable = chosen[0] if chosen else configs[-1]
    context: dict[str, Any] = {
        "command": args.command,
        "environment": h.environment(("surefoot", "httpx"), {"valgrind": [VALGRIND, "--version"]}),
        "load_before": h.load_average(),
    }
    jobs = [*configs, *([stable] if stable is not None else [])]
    print(
        f"{len(jobs)} configurations x 2 runs under callgrind ({args.small:,} and "
        f"{args.large:,} requests), {args.jobs} at once",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sfbench-instructions-") as tmp:
        runs = list(measure_all(jobs, args, Path(tmp)))
    context["load_after"] = h.load_average()
    context["seconds"] = round(time.monotonic() - started, 1)
    rows = summarize(configs, runs)
    stability = None
    if stable is not None:
        first, second = (r["per_request"] for r in runs if r["config"] == stable.name)
        stability = {
            "config": stable.name,
            "first": first,
            "second": second,
            "difference_percent": abs(second - first) / first * 100,
        }
    print_report(args, context, rows, stability)
    print(f"run time: {context['seconds']:.0f} s")
    settings = h.settings(args, "small", "large", "warmup", clock_step=CLOCK_STEP)
    return h.finish(args, context, settings, rows, runs, stability=stability)


if __name__ == "__main__":
    sys.exit(h.run(main))
