"""What ``ResilientTransport`` costs per request on a healthy server, beside plain httpx and peers.

Usage::

    .venv/bin/python bench/client_overhead.py                # 5 rounds x 3,000 requests
    .venv/bin/python bench/client_overhead.py --quick        # 1 round x 500 requests
    .venv/bin/python bench/client_overhead.py --json results.json --check

Theory of operation:
1. One uvicorn process (uvloop, httptools, one worker, no access log, no lifespan) serves
   this very module's ``app``, a bare ASGI callable, on 127.0.0.1 and a free port:
   ``GET /hello`` answers 200 with 12 bytes; ``GET /flaky?id=X`` answers 503 the first
   time it sees ``X`` and 200 with the body ``2`` the second time.
2. Each library (``LIBRARIES``) is a way to make a GET with retries: plain httpx (no
   retries: the floor), surefoot's ``ResilientTransport`` / ``AsyncResilientTransport``
   with its defaults (``RetryPolicy()``, its own ``RetryBudget()``, the default
   ``LoggingHook``; logging is not configured, so nothing is written), the same with
   ``hooks=[]``, httpx-retries' ``RetryTransport`` (``Retry(total=2, backoff_factor=0.5)``:
   3 attempts, like surefoot's default), and a tenacity ``@retry`` decorator around
   ``client.get`` (3 attempts, ``wait_random_exponential(multiplier=0.5, max=10)``,
   retrying transport errors and the retry statuses).
   On a healthy server nothing fails, so no event is built.
3. Before the rounds, every retrying library must turn ``/flaky`` into a 200 whose body
   is ``2`` (it retried once), and plain httpx must see the 503: each does retry.
4. A run is one library in one mode: ``sync`` (``httpx.Client``), ``async``
   (``httpx.AsyncClient``, one task) or ``async-cN`` (one ``AsyncClient``, N tasks at
   once). It makes a new client, warms its keep-alive connection(s) with ``--warmup``
   GETs, then times ``--requests`` GETs of ``/hello`` (each read to the end, its status
   checked): wall time (``perf_counter``) and this process's CPU time
   (``process_time``), per request.
5. Runs are interleaved: every round runs every library in every mode once, the order of
   the libraries rotated each round; a library's ratio to plain httpx is taken within
   its round and mode, and the table shows medians over rounds.
6. With two or more CPUs and ``taskset``, the server is pinned to one CPU and this
   process to another, so the client's work does not compete with the server's.

The target (from the issue): surefoot with its defaults at most 1.1x plain httpx's
time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h

APP = "client_overhead:app"
PATH = "/hello"
BODY = b"hello, world"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
TARGET = 1.1

# -- the server: a bare ASGI app (imported by uvicorn from this module) ---------------------

_seen: set[str] = set()
_HELLO_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"12")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    if scope["path"] == "/flaky":
        key = scope["query_string"].decode()
        first = key not in _seen
        _seen.add(key)
        status, body = (503, b"1") if first else (200, b"2")
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"1")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
    await send({"type": "http.response.body", "body": BODY})


# -- the libraries --------------------------------------------------------------------------


@dataclass(frozen=True)
class Library:
    name: str
    retries: bool  # False: the floor, must not retry /flaky
    target: float | None  # maximum ratio to plain httpx
    meaning: str


LIBRARIES = (
    Library("httpx", False, None, "plain httpx.Client / AsyncClient, no retries"),
    Library(
        "surefoot",
        True,
        TARGET,
        "ResilientTransport(httpx.HTTPTransport()) and the async twin: RetryPolicy(), "
        "its own RetryBudget(), the default LoggingHook",
    ),
    Library("surefoot-nohooks", True, None, "the same with hooks=[] (what the hook costs)"),
    Library(
        "httpx-retries",
        True,
        None,
        "httpx_retries.RetryTransport(transport=..., retry=Retry(total=2, backoff_factor=0.5))",
    ),
    Library(
        "tenacity",
        True,
        None,
        "@tenacity.retry(stop_after_attempt(3), wait_random_exponential(0.5, max=10), "
        "retry on TransportError or a retry status) around client.get",
    ),
)

SyncGet = Callable[[str], Any]
AsyncGet = Callable[[str], Awaitable[Any]]


def _tenacity_kwargs() -> dict[str, Any]:
    import httpx
    import tenacity

    return {
        "stop": tenacity.stop_after_attempt(3),
        "wait": tenacity.wait_random_exponential(multiplier=0.5, max=10),
        "retry": tenacity.retry_if_exception_type(httpx.TransportError)
        | tenacity.retry_if_result(lambda r: r.status_code in RETRY_STATUSES),
        "reraise": True,
    }


def new_client(name: str, *, asynchronous: bool) -> Any:
    """A new ``httpx.Client`` (or ``AsyncClient``) whose transport is library ``name``'s.

    tenacity wraps the call, not the transport: its client is plain httpx's.
    """
    import httpx

    transport: Any = httpx.AsyncHTTPTransport() if asynchronous else httpx.HTTPTransport()
    if name in ("surefoot", "surefoot-nohooks"):
        from surefoot.client import AsyncResilientTransport, ResilientTransport

        hooks: list[Any] | None = None if name == "surefoot" else []
        resilient = AsyncResilientTransport if asynchronous else ResilientTransport
        transport = resilient(transport, hooks=hooks)
    elif name == "httpx-retries":
        from httpx_retries import Retry, RetryTransport

        transport = RetryTransport(transport, retry=Retry(total=2, backoff_factor=0.5))
    elif name not in ("httpx", "tenacity"):
        raise ValueError(name)
    return (httpx.AsyncClient if asynchronous else httpx.Client)(transport=transport)


def sync_client(name: str) -> tuple[Any, SyncGet]:
    """A new ``httpx.Client`` for library ``name`` and the function that GETs with it."""
    client = new_client(name, asynchronous=False)
    if name != "tenacity":
        return client, client.get
    import tenacity

    @tenacity.retry(**_tenacity_kwargs())  # type: ignore[untyped-decorator]
    def get(url: str) -> Any:
        return client.get(url)

    return client, get


def async_client(name: str) -> tuple[Any, AsyncGet]:
    """A new ``httpx.AsyncClient`` for library ``name`` and the coroutine function that GETs."""
    client = new_client(name, asynchronous=True)
    if name != "tenacity":
        return client, client.get
    import tenacity

    @tenacity.retry(**_tenacity_kwargs())  # type: ignore[untyped-decorator]
    async def get(url: str) -> Any:
        return await client.get(url)

    return client, get


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=5, quick={"rounds": 1, "requests": 500})
    h.option(parser, "--requests", 3000, "timed GETs per run")
    h.option(parser, "--warmup", 200, "untimed GETs before each run")
    h.option(parser, "--concurrency", 16, "tasks of the concurrent async mode, 0 to skip it")
    h.add_selection(parser, "--libraries", LIBRARIES, "httpx")
    h.add_pin_options(parser, what="the server and the client")
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    if min(args.rounds, args.requests) < 1 or args.warmup < 1 or args.concurrency < 0:
        parser.error("expected --rounds, --requests, --warmup >= 1 and --concurrency >= 0")
    args.modes = ["sync", "async"] + ([f"async-c{args.concurrency}"] if args.concurrency else [])
    return args


def environment() -> dict[str, Any]:
    packages = (
        "surefoot", "httpx", "httpcore", "httpx-retries", "tenacity", "uvicorn", "uvloop",
        "httptools",
    )  # fmt: skip
    return h.environment(packages)


# -- checks and runs ------------------------------------------------------------------------


def check_retries(libraries: list[Library], base: str) -> str:
    """Every retrying library turns /flaky's first 503 into a 200; plain httpx does not."""
    for lib in libraries:
        expected = (200, b"2") if lib.retries else (503, b"1")
        client, get = sync_client(lib.name)
        with client:
            response = get(f"{base}/flaky?sync-{lib.name}")
        got_sync = (response.status_code, response.content)

        async def once(lib: Library = lib) -> tuple[int, bytes]:
            client, get = async_client(lib.name)
            async with client:
                response = await get(f"{base}/flaky?async-{lib.name}")
            return response.status_code, response.content

        got_async = asyncio.run(once())
        for mode, got in (("sync", got_sync), ("async", got_async)):
            if got != expected:
                raise h.BenchError(
                    f"{lib.name} ({mode}): /flaky answered {got}, expected {expected}: "
                    + ("it did not retry" if lib.retries else "it retried")
                )
    retrying = ", ".join(lib.name for lib in libraries if lib.retries)
    return f"checked: {retrying} turned a 503 into a 200 by retrying once; httpx got the 503"


def timed_sync(name: str, url: str, requests: int, warmup: int) -> tuple[float, float, int]:
    client, get = sync_client(name)
    errors = 0
    with client:
        for _ in range(warmup):
            get(url)
        cpu = time.process_time()
        start = time.perf_counter()
        for _ in range(requests):
            if get(url).status_code != 200:
                errors += 1
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return wall, cpu, errors


async def timed_async(
    name: str, url: str, requests: int, warmup: int, tasks: int
) -> tuple[float, float, int]:
    client, get = async_client(name)
    errors = 0

    async def worker(count: int) -> None:
        nonlocal errors
        for _ in range(count):
            if (await get(url)).status_code != 200:
                errors += 1

    async with client:
        # Warm one connection per task, so the timed part reuses them all.
        await asyncio.gather(*(worker(max(1, warmup // tasks)) for _ in range(tasks)))
        errors = 0
        # The first requests % tasks tasks make one more: --requests need not be a multiple.
        shares = [requests // tasks + (i < requests % tasks) for i in range(tasks)]
        cpu = time.process_time()
        start = time.perf_counter()
        if tasks == 1:
            await worker(requests)
        else:
            await asyncio.gather(*(worker(share) for share in shares))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return wall, cpu, errors


def run_one(
    args: argparse.Namespace, lib: Library, mode: str, url: str, round_no: int
) -> dict[str, Any]:
    if mode == "sync":
        wall, cpu, errors = timed_sync(lib.name, url, args.requests, args.warmup)
    else:
        tasks = 1 if mode == "async" else args.concurrency
        wall, cpu, errors = asyncio.run(
            timed_async(lib.name, url, args.requests, args.warmup, tasks)
        )
    return {
        "round": round_no,
        "library": lib.name,
        "mode": mode,
        "requests": args.requests,
        "seconds": wall,
        "us_per_request": wall / args.requests * 1e6,
        "cpu_us_per_request": cpu / args.requests * 1e6,
        "errors": errors,
    }


def in_process(calls: int, repeats: int) -> dict[str, float]:
    """The transports' own cost: ``handle_request`` over an inner transport that does no I/O.

    The inner transport returns a prebuilt 200 (its stream already read), so what is left
    is the wrapper's work per request. Best of ``repeats`` runs of ``calls`` calls, in us.
    """
    import httpx
    from httpx_retries import Retry, RetryTransport

    from surefoot.client import ResilientTransport

    response = httpx.Response(200, content=BODY)

    class Instant(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return response

    request = httpx.Request("GET", "http://127.0.0.1:8000" + PATH)
    transports: dict[str, httpx.BaseTransport] = {
        "httpx": Instant(),
        "surefoot": ResilientTransport(Instant()),
        "surefoot-nohooks": ResilientTransport(Instant(), hooks=[]),
        "httpx-retries": RetryTransport(Instant(), retry=Retry(total=2, backoff_factor=0.5)),
    }
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, transport in transports.items():
            handle = transport.handle_request
            start = time.perf_counter()
            for _ in range(calls):
                handle(request)
            us = (time.perf_counter() - start) / calls * 1e6
            best[name] = min(best.get(name, us), us)
    return best


# -- report ---------------------------------------------------------------------------------


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for mode in args.modes:
        floor = h.by_round(runs, mode=mode, library="httpx")
        for lib in args.libraries:
            mine = h.by_round(runs, mode=mode, library=lib.name)
            ratio = h.Spread.range(
                h.paired(mine, floor, lambda r, f: r["us_per_request"] / f["us_per_request"])
            )
            cpu_ratio = h.median(
                h.paired(
                    mine, floor, lambda r, f: r["cpu_us_per_request"] / f["cpu_us_per_request"]
                )
            )
            rows.append(
                {
                    "mode": mode,
                    "library": lib.name,
                    "meaning": lib.meaning,
                    "us_per_request": h.median(r["us_per_request"] for r in mine.values()),
                    "ratio": ratio.median,
                    "ratio_min": ratio.low,
                    "ratio_max": ratio.high,
                    "target": lib.target,
                    "met": None if lib.target is None else ratio.median <= lib.target,
                    "cpu_us_per_request": h.median(r["cpu_us_per_request"] for r in mine.values()),
                    "cpu_ratio": cpu_ratio,
                    "errors": sum(r["errors"] for r in mine.values()),
                }
            )
    return rows


COLUMNS = (
    h.Column("mode", "<9"), h.Column("library", "<16"), h.Column("us/req", ">7"),
    *h.ratio_columns("ratio", 5), h.Column("CPU us/req", ">10"), h.Column("CPU ratio", ">9"),
    h.Column("errors", ">6"),
)  # fmt: skip


def print_report(
    args: argparse.Namespace, context: h.Run, runs: list[h.Run], rows: list[h.Run]
) -> None:
    h.print_header(
        context,
        [
            (
                "load",
                f"{args.requests} sequential GET {PATH} per run (async-cN: split over N "
                f"tasks) after {args.warmup} warm-up GETs, {args.rounds} round(s), "
                "libraries interleaved",
            ),
            ("retrying", context["retry_check"]),
            ("cpus", context["cpus"]),
        ],
        "httpx {httpx} (httpcore {httpcore}), httpx-retries {httpx-retries}, tenacity "
        "{tenacity}, uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools})",
    )
    cells = [
        [
            row["mode"],
            row["library"],
            f"{row['us_per_request']:.1f}",
            *h.ratio_cells(row, "<="),
            f"{row['cpu_us_per_request']:.1f}",
            f"{row['cpu_ratio']:.2f}",
            str(row["errors"]),
        ]
        for row in rows
    ]
    print()
    print("\n".join(h.text_table(COLUMNS, cells)))
    print()
    print("us/req, CPU us/req: medians over rounds. us/req: wall time per request as the")
    print("       caller sees it (async-cN: wall time of the batch over its requests);")
    print("ratio: median of the per-round ratios to plain httpx in the same mode (min-max:")
    print("       their spread); the target applies to it.")
    print("CPU us/req: this (client) process's CPU time per request; CPU ratio: the same")
    print("       per-round ratio on CPU time, which excludes the server's share.")
    print("errors: answers other than 200 in the timed runs, all rounds.")
    print()
    print("per round, us/req:")
    names = [lib.name for lib in args.libraries]
    print("  mode      round " + " ".join(f"{n:>16}" for n in names))
    for mode in args.modes:
        for round_no in range(1, args.rounds + 1):
            by_name = {
                r["library"]: r for r in runs if r["round"] == round_no and r["mode"] == mode
            }
            cells_text = " ".join(f"{by_name[n]['us_per_request']:>16.1f}" for n in names)
            print(f"  {mode:<9} {round_no:>5} {cells_text}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h.require_modules(
        ("uvicorn", "uvloop", "httptools", "httpx", "surefoot", "httpx_retries", "tenacity"),
        "bench",
    )
    cpus = h.split_cpus(args.no_pin, "client", this_process=True)
    context: dict[str, Any] = {
        "command": args.command,
        "cpus": cpus.sentence,
        "environment": environment(),
        "load_before": h.load_average(),
    }
    libraries: list[Library] = args.libraries
    runs = []
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-") as tmp:
        server = h.start_uvicorn("server", APP, Path(tmp), lifespan=False, prefix=cpus.server)
        try:
            server.wait_listening()
            url = server.base + PATH
            context["retry_check"] = check_retries(libraries, server.base)
            print(
                f"{len(libraries)} libraries x {len(args.modes)} modes x {args.rounds} "
                f"rounds x {args.requests} requests; {cpus.sentence}",
                flush=True,
            )
            for round_no in range(1, args.rounds + 1):
                order = h.rotated(libraries, round_no)
                for mode in args.modes:
                    for lib in order:
                        run = run_one(args, lib, mode, url, round_no)
                        runs.append(run)
                        print(
                            f"  round {round_no} {mode:<9} {lib.name:<16} "
                            f"{run['us_per_request']:>7.1f} us/req "
                            f"{run['cpu_us_per_request']:>7.1f} CPU us/req "
                            f"errors {run['errors']}",
                            flush=True,
                        )
        finally:
            server.stop()
    context["load_after"] = h.load_average()
    rows = summarize(args, runs)
    print_report(args, context, runs, rows)
    inner = in_process(20_000, 7)
    context["in_process_us"] = inner
    print("\nin process, handle_request() over an inner transport that does no I/O")
    print("(20,000 calls, best of 7), us per request:")
    for name, us in inner.items():
        print(f"  {name:<16} {us:>6.1f}   (+{us - inner['httpx']:.1f} over the inner transport)")
    settings = h.settings(
        args, "rounds", "requests", "warmup", "concurrency", "modes", target=TARGET
    )
    return h.finish(args, context, settings, rows, runs)


if __name__ == "__main__":
    sys.exit(h.run(main))
