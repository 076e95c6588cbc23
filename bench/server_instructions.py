"""Instructions per request of a whole HTTP server process (callgrind): uvicorn beside granian.

Usage::

    .venv/bin/python bench/server_instructions.py            # every configuration, ~30 min
    .venv/bin/python bench/server_instructions.py --quick    # fewer requests: a smoke run
    .venv/bin/python bench/server_instructions.py --configs bare-uvicorn,bare-granian

Theory of operation:
1. ``bench/instructions.py`` counts what the ASGI stack executes in process, without a
   server; this counts the server too: its parser, its event loop, its sockets. It is the
   stable figure for choosing a server (``bench/gateway.py --servers`` gives the wrk
   figures, which drift by 10% or more on a shared machine).
2. Each configuration is one server process on 127.0.0.1 (one worker) started under
   ``valgrind --tool=callgrind --trace-children=yes`` (granian runs its worker as a child
   process; the counts of every traced process are added up). The app is
   ``bench/gateway.py``'s upstream app (``bare-*``: plain uvicorn, uvicorn with the
   gateway's bounded protocol ``surefoot.gateway._server``, granian), or the gateway in
   front of that app served natively by uvicorn (``gateway-*``: as ``surefoot serve`` runs
   it, or under granian as ``bench/gateway.py --servers granian`` does), with no policy
   (GET) or every policy on SQLite (POST with a new ``Idempotency-Key`` each); or the
   decision service, asked ``GET /decide?edge=nginx`` with the fields NGINX's
   ``auth_request`` sends (``bench/edge.py``'s policy, one principal): ``decide-floor``,
   its HTTP server alone (``bench/_decide_floor.py``), and ``decide-memory``, ``surefoot
   decide`` on ``memory://``.
3. This process sends ``--warmup`` requests, then N, one after the other on one
   kept-alive connection, checks every status, and stops the server with SIGTERM (a
   graceful stop: callgrind writes its counts at exit). Each configuration runs with
   ``--small`` and ``--large`` requests; the figure is (Ir(large) - Ir(small)) /
   (large - small): start, imports, warm-up and stop cancel out.
4. What does not cancel: work done per second rather than per request (uvicorn's tick,
   timers, idle wake-ups) is counted in proportion to a run's length, a small share; runs
   of the same configuration have differed by about 1%. Valgrind slows the servers about
   50 times; ``--jobs`` runs that many at once (the counts do not depend on it).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _harness as h

import edge
import gateway as g

VALGRIND = "valgrind"
TOTAL = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Config:
    name: str
    server: str  # "uvicorn", "uvicorn-bounded", "granian" or "head-only" (surefoot decide's)
    app: str  # "bare", "gateway" (no policy), "gateway-sqlite" (every policy), "decide-floor"
    # or "decide"
    meaning: str

    @property
    def method(self) -> str:
        return "POST" if self.app == "gateway-sqlite" else "GET"


CONFIGS = (
    Config("bare-uvicorn", "uvicorn", "bare", "the app under uvicorn (httptools, uvloop), GET"),
    Config(
        "bare-uvicorn-bounded", "uvicorn-bounded", "bare",
        "the app under uvicorn with the gateway's bounded protocol, GET",
    ),
    Config("bare-granian", "granian", "bare", "the app under granian (ASGI, uvloop), GET"),
    Config("gateway-uvicorn", "uvicorn-bounded", "gateway", "surefoot serve, no policy, GET"),
    Config("gateway-granian", "granian", "gateway", "the gateway under granian, no policy, GET"),
    Config(
        "gateway-sqlite-uvicorn", "uvicorn-bounded", "gateway-sqlite",
        "surefoot serve, every policy on SQLite, POST with a new key",
    ),
    Config(
        "gateway-sqlite-granian", "granian", "gateway-sqlite",
        "the gateway under granian, every policy on SQLite, POST with a new key",
    ),
    Config(
        "decide-floor", "head-only", "decide-floor",
        "surefoot decide's HTTP server answering a fixed allowed decision, GET /decide",
    ),
    Config(
        "decide-memory", "head-only", "decide",
        "surefoot decide on memory://, GET /decide as NGINX asks",
    ),
)  # fmt: skip

#: The fields of NGINX's ``auth_request`` subrequest (examples/edge/nginx.conf.template).
DECIDE_HEADERS = {
    "X-Original-Method": "GET",
    "X-Original-URI": g.GET_PATH,
    "X-Forwarded-For": "198.51.100.4",
    "X-Request-Id": "3f2a9c1e5b7d4a6f8e0c2b4d6f8a0c2e",
}


# -- the servers ----------------------------------------------------------------------------


def serve_bounded(port: int) -> None:
    """The upstream app under uvicorn with the gateway's bounded protocol (default limits)."""
    import uvicorn

    from surefoot.gateway._head import ServerLimits
    from surefoot.gateway._server import bounded_protocol

    config = uvicorn.Config(
        g.upstream_app, host="127.0.0.1", port=port, loop="uvloop", lifespan="off",
        http=bounded_protocol(ServerLimits()), access_log=False, log_level="warning",
        server_header=False,
    )  # fmt: skip
    uvicorn.Server(config).run()


def server_command(
    config: Config, port: int, workdir: Path, upstream: str
) -> tuple[list[str], dict[str, str]]:
    """The command that serves ``config`` on ``port``, and what it adds to the environment."""
    env = {"PYTHONHASHSEED": "0"}
    if config.app == "bare":
        if config.server == "granian":
            return g.granian_command("gateway:upstream_app", port, 1), env
        if config.server == "uvicorn":
            return h.uvicorn_command("gateway:upstream_app", port, lifespan=False), env
        return [sys.executable, __file__, "--serve-bounded", str(port)], env
    if config.app in ("decide", "decide-floor"):
        path = workdir / "policy.toml"
        path.write_text(edge.POLICY_TOML.format(upstream=upstream, store="memory://"))
        if config.app == "decide-floor":
            return [sys.executable, str(edge.FLOOR), str(path), str(port)], env
        command = [
            sys.executable, "-m", "surefoot", "decide", "--config", str(path),
            "--port", str(port), "--workers", "1",
        ]  # fmt: skip
        return command, env
    policies = config.app == "gateway-sqlite"
    store = f"sqlite:///{workdir / 'gateway.db'}" if policies else "memory://"
    path = workdir / "gateway.toml"
    path.write_text(
        g.GATEWAY_TOML.format(upstream=upstream, store=store)
        + (g.POLICIES_TOML if policies else g.NO_POLICY_TOML)
    )
    if config.server == "granian":
        env |= {"SUREFOOT_BENCH_CONFIG": str(path), "SUREFOOT_BENCH_WORKERS": "1"}
        return g.granian_command("_granian_gateway:app", port, 1, factory=True), env
    command = [
        sys.executable, "-m", "surefoot", "serve", "--config", str(path), "--port", str(port),
        "--admin-port", str(h.free_port()), "--workers", "1",
    ]  # fmt: skip
    return command, env


@contextmanager
def upstream_server() -> Iterator[str]:
    """The gateways' upstream: the app under plain uvicorn, outside valgrind."""
    with tempfile.TemporaryDirectory(prefix="sfbench-server-ir-up-") as tmp:
        child = h.start_uvicorn(
            "upstream", "gateway:upstream_app", Path(tmp), workers=1, lifespan=False
        )
        try:
            child.wait_http(child.base + g.GET_PATH)
            yield child.base
        finally:
            child.stop()


# -- one run ----------------------------------------------------------------------------------


def send(conn: http.client.HTTPConnection, config: Config, count: int, tag: str) -> None:
    """``count`` requests, one after the other; each answer must be a success."""
    for number in range(count):
        if config.server == "head-only":
            conn.request("GET", "/decide?edge=nginx", headers=DECIDE_HEADERS)
        elif config.method == "GET":
            conn.request("GET", g.GET_PATH)
        else:
            headers = {"Content-Type": "application/json", "Idempotency-Key": f"{tag}-{number}"}
            conn.request("POST", g.POST_PATH, body=g.POST_BODY.encode(), headers=headers)
        response = conn.getresponse()
        body = response.read()
        decided = config.app != "decide" or "ratelimit" in response.headers
        if response.status not in (200, 201) or not decided:
            raise h.BenchError(f"{config.name}: answered {response.status} {body[:300]!r}")


def connect(config: Config, port: int, process: subprocess.Popen[bytes], log: Path) -> Any:
    """A connection to the server once it answers (valgrind starts it slowly)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise h.BenchError(f"{config.name} exited: {log.read_text()[-3000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            send(conn, config, 1, "probe")
            return conn
        except (OSError, http.client.HTTPException):
            conn.close()
            time.sleep(0.5)
    raise h.BenchError(f"{config.name} did not answer in 600 s: {log.read_text()[-3000:]}")


def instructions(config: Config, requests: int, warmup: int, upstream: str) -> int:
    """The instructions (Ir) of every process of one server run, as callgrind counts them."""
    with tempfile.TemporaryDirectory(prefix=f"sfbench-server-ir-{config.name}-") as tmp:
        workdir = Path(tmp)
        port = h.free_port()
        command, env = server_command(config, port, workdir, upstream)
        valgrind = [
            VALGRIND, "--tool=callgrind", "--trace-children=yes",
            f"--callgrind-out-file={workdir / 'callgrind.%p'}",
        ]  # fmt: skip
        log = workdir / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*valgrind, *command], stdout=out, stderr=subprocess.STDOUT, cwd=h.BENCH_DIR,
                env={**os.environ, **env}, start_new_session=True,
            )  # fmt: skip
            try:
                conn = connect(config, port, process, log)
                send(conn, config, warmup, f"warm-{requests}")
                send(conn, config, requests, f"run-{requests}")
                conn.close()
                os.kill(process.pid, signal.SIGTERM)
                process.wait(timeout=600)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        counts = [TOTAL.search(f.read_bytes()) for f in workdir.glob("callgrind.*")]
        total = sum(int(found.group(1)) for found in counts if found)
        if not total:
            raise h.BenchError(
                f"{config.name}: no counts from callgrind: {log.read_text()[-3000:]}"
            )
        return total


def measure(config: Config, args: argparse.Namespace, upstream: str) -> dict[str, Any]:
    """One configuration's figure: the difference of two server runs, per request."""
    small = instructions(config, args.small, args.warmup, upstream)
    large = instructions(config, args.large, args.warmup, upstream)
    per_request = (large - small) / (args.large - args.small)
    print(f"  {config.name}: {per_request:,.0f} instructions per request", flush=True)
    return {"config": config.name, "ir_small": small, "ir_large": large, "per_request": per_request}


# -- the report ------------------------------------------------------------------------------


COLUMNS = (
    h.Column("configuration", "<23"), h.Column("instr/req", ">10"), h.Column("what it runs", gap=2),
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, quick={"small": 20, "large": 120, "warmup": 20})
    h.option(parser, "--small", 200, "requests counted in the smaller run")
    h.option(parser, "--large", 1000, "requests counted in the larger run")
    h.option(parser, "--warmup", 100, "requests sent before the counted ones, in every run")
    h.option(parser, "--jobs", 2, "servers run under valgrind at once")
    h.add_selection(parser, "--configs", CONFIGS)
    h.add_output_options(parser, check=False)
    parser.add_argument("--serve-bounded", type=int, default=0, help=argparse.SUPPRESS)
    args = h.parse(parser, argv)
    if not 0 < args.small < args.large:
        parser.error("expected 0 < --small < --large")
    if args.jobs < 1 or args.warmup < 0:
        parser.error("expected --jobs >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bounded:
        serve_bounded(args.serve_bounded)
        return 0
    h.require_executable(VALGRIND)
    configs: list[Config] = args.configs
    h.require_modules(["uvicorn", "uvloop", "httptools", "surefoot"], "bench,gateway")
    if any(c.server == "granian" for c in configs):
        g.require_granian()
    context: dict[str, Any] = {
        "command": args.command,
        "environment": h.environment(
            ("surefoot", "uvicorn", "uvloop", "httptools", "granian", "httpx"),
            {"valgrind": [VALGRIND, "--version"]},
        ),
        "load_before": h.load_average(),
    }
    print(
        f"{len(configs)} configurations x 2 runs under callgrind ({args.small:,} and "
        f"{args.large:,} requests), {args.jobs} at once",
        flush=True,
    )
    with upstream_server() as upstream, ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda c: measure(c, args, upstream), configs))
    context["load_after"] = h.load_average()
    rows = [
        {"config": c.name, "meaning": c.meaning, "instructions": r["per_request"]}
        for c, r in zip(configs, runs, strict=True)
    ]
    h.print_header(
        context,
        [("method", f"callgrind Ir of a server run with {args.large:,} requests minus one with "
                    f"{args.small:,}, over {args.large - args.small:,}")],
        "uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), granian {granian}, "
        "{valgrind}",
    )  # fmt: skip
    print()
    cells = [[r["config"], f"{r['instructions']:,.0f}", r["meaning"]] for r in rows]
    print("\n".join(h.text_table(COLUMNS, cells)))
    print()
    print("instr/req: instructions the server's processes executed per request (user space:")
    print("           system calls not counted), from the difference of two runs.")
    settings = h.settings(args, "small", "large", "warmup")
    return h.finish(args, context, settings, rows, runs, configs=[asdict(c) for c in configs])


if __name__ == "__main__":
    sys.exit(h.run(main))
