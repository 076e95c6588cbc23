"""The harness that every benchmark in ``bench/`` shares.

A benchmark script owns what it measures: its configurations, its workload, its checks
that the thing measured behaves, its figures and the columns of its report. Everything
else lives here, once:

- options: ``new_parser`` with ``--rounds`` and ``--quick`` (a smoke run; options given
  explicitly win), the wrk options (``--duration``, ``--warmup``, ``--connections``,
  ``--threads``), the Redis options (``--redis-url``, ``--redis-server``), pinning
  (``--no-pin``, ``--cpu``), ``--json`` / ``--check``; ``add_selection`` (which
  configurations run), ``option`` (one option whose help says its default); ``parse``
  applies ``--quick`` and the selection.
- the machine: ``require_modules`` and ``require_executable`` (say what to install),
  ``environment`` (Python, platform, CPUs, git, tools' and packages' versions),
  ``pin_self`` and ``split_cpus`` (which CPU each side runs on, and a sentence saying so).
- child processes: ``Child`` runs a server in a process group of its own and can read its
  log, its CPU time (every process of the group) and its memory; ``run`` stops every
  child still alive however the script ends (an error, Ctrl-C or SIGTERM);
  ``start_uvicorn`` serves an ASGI app of ``bench/`` on a ``free_port``; ``BenchRedis`` is
  the Redis server a benchmark writes to (a private ``RedisServer``, or ``--redis-url``'s).
- load: ``wrk`` runs wrk with a script of ``bench/`` and parses the one JSON line that
  ``bench/_wrk_summary.lua`` prints; ``wrk_figures`` turns it into the run's figures;
  ``timed_wrk`` adds the server's CPU time and memory (and Redis's CPU time) over one run.
- rounds: runs are interleaved (every round runs every configuration once, ``rotated``
  to vary the order), ratios are taken within a round (``by_round``, ``paired``;
  ``against_baseline`` pairs each name's runs with the baseline's, group by group) and
  summed up over rounds (``Spread``: the median and the min-max or interquartile range).
- report: ``print_header`` (the command, the machine...), ``text_table`` (fixed-width
  columns), ``markdown_table``, ``target_text`` and ``met_text``, ``print_per_round``
  (each round's figure, group by group); ``finish`` writes ``--json`` and turns
  ``--check`` into the exit status.
- servers under wrk: ``compare_servers`` is a whole benchmark but its configurations
  and its timed run: every configuration against ``bare`` in interleaved rounds, then the
  report; it gives each run a ``ServerRound`` (the options, the round, the CPUs, Redis),
  and its ``Check``, if any, runs once before the rounds and is said in the report's head;
  ``peer_rows`` (printed by ``print_peer_rows``) adds a checked target per contest: ahead
  of every peer, round by round.

Errors: ``BenchError`` is the one exception a benchmark raises when it cannot go on (a
missing tool, a server that does not start, a wrong answer); ``run`` prints it and
exits with status 2. A missed target is not an error: ``--check`` makes it status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
#: wrk's own pre-built request, and the summary line: every GET workload.
GET_LUA = BENCH_DIR / "ratelimit.lua"
#: a JSON POST with an Idempotency-Key, new per request or one replayed.
POST_LUA = BENCH_DIR / "idempotency.lua"
#: surefoot's rate-limit algorithms, and the peers' that the decision benchmarks set beside
#: them (limits: its strategy classes by the algorithm's name).
ALGORITHMS = (
    "token_bucket", "gcra", "fixed_window", "sliding_window", "leaky_bucket", "leaky_queue",
    "quota", "sliding_log", "concurrency",
)  # fmt: skip
LIMITS_STRATEGIES = {
    "fixed_window": "FixedWindowRateLimiter",
    "sliding_window": "SlidingWindowCounterRateLimiter",
    "moving_window": "MovingWindowRateLimiter",
}
THROTTLED_ALGORITHMS = ("token_bucket", "gcra", "fixed_window", "sliding_window", "leaking_bucket")
SUMMARY_PREFIX = "SUREFOOT_BENCH "
INSTALL = {
    "wrk": "wrk is not installed. On Debian/Ubuntu: sudo apt-get install wrk; "
    "on macOS: brew install wrk; or build it from https://github.com/wg/wrk",
    "nginx": "nginx is not installed (Debian/Ubuntu: apt-get install nginx-light or nginx)",
    "redis-server": "redis-server not found: install it (Debian/Ubuntu: apt-get install "
    "redis-server) or name a server with --redis-url",
}

Run = dict[str, Any]
T = TypeVar("T")


class BenchError(Exception):
    """The benchmark cannot go on (a missing tool, a server that does not start...)."""


# -- options --------------------------------------------------------------------------------


def new_parser(
    doc: str | None, *, rounds: int | None = None, quick: Mapping[str, Any] | None = None
) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc`` (the script's docstring), with
    ``--rounds`` (if ``rounds``) and ``--quick`` (if ``quick``: its settings)."""
    description = (doc or "").strip().split("\n", 1)[0].replace("``", "")
    parser = argparse.ArgumentParser(description=description)
    if rounds is not None:
        add_rounds(parser, rounds)
    if quick:
        add_quick(parser, **quick)
    return parser


def option(parser: argparse.ArgumentParser, name: str, default: float | str, help: str) -> None:
    """``name`` of the type of its ``default``, its default said in its help."""
    said = f"{default:g}" if isinstance(default, float) else default
    parser.add_argument(name, type=type(default), default=default, help=f"{help} (default: {said})")


#: The databases of the benchmarks that run workers over SQLite and PostgreSQL.
DATABASES = ("sqlite", "postgres")


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """``--stores``, ``--workers`` and ``--postgres``, for benchmarks of worker processes
    over SQLite and PostgreSQL (read back with ``databases``)."""
    option(parser, "--stores", ",".join(DATABASES), "comma-separated stores")
    option(parser, "--workers", "1,4", "comma-separated worker process counts")
    option(
        parser,
        "--postgres",
        os.environ.get("SUREFOOT_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
        "PostgreSQL DSN",
    )


def databases(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[list[str], list[int]]:
    """The stores (each one of ``DATABASES``) and worker counts ``add_database_options``
    read."""
    stores = names(parser, "--stores", args.stores, DATABASES, required=True)
    try:
        counts = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        parser.error(f"--workers: expected whole numbers such as 1,4, got {args.workers!r}")
    return stores, counts


def add_rounds(parser: argparse.ArgumentParser, default: int) -> None:
    option(parser, "--rounds", default, "rounds")


def add_quick(parser: argparse.ArgumentParser, **settings: Any) -> None:
    """``--quick``: the smallest run that still goes end to end; explicit options win."""
    said = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run: {said} unless given otherwise"
    )
    parser.set_defaults(_quick=settings)


def add_selection(
    parser: argparse.ArgumentParser, option: str, items: Iterable[Any], *always: str
) -> None:
    """``option``: a comma-separated selection of ``items`` (which have a ``name``).

    The items named ``always`` run whatever it says (the baselines).
    """
    what = option.removeprefix("--")
    baselines = f"; {' and '.join(always)} always run" if always else ""
    parser.add_argument(
        option, default="", help=f"comma-separated {what} to run{baselines} (default: all)"
    )
    parser.set_defaults(_selection=(option, tuple(items), always))


def add_wrk_options(parser: argparse.ArgumentParser, *, duration: int) -> None:
    """The options of wrk's load."""
    option(parser, "--duration", duration, "seconds of each timed run")
    option(parser, "--warmup", 1, "seconds of untimed load before each timed run, 0 for none")
    option(parser, "--connections", 64, "wrk connections")
    option(parser, "--threads", 2, "wrk threads")


def check_wrk_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.rounds, args.duration, args.connections) < 1 or args.warmup < 0:
        parser.error("expected --rounds, --duration and --connections >= 1, --warmup >= 0")
    if not 1 <= args.threads <= args.connections:
        parser.error("expected 1 <= --threads <= --connections")


def add_redis_options(
    parser: argparse.ArgumentParser, *, used_by: str, store_options: bool = False
) -> None:
    """``--redis-url``, ``--redis-server``; with ``store_options``, ``--redis-options``."""
    parser.add_argument(
        "--redis-url",
        help=f"Redis server of {used_by} (default: start a private redis-server; only keys "
        "under 'sfbench-*' are written, and deleted after each run)",
    )
    parser.add_argument(
        "--redis-server",
        default="redis-server",
        help="the redis-server executable to start (default: redis-server)",
    )
    if store_options:
        parser.add_argument(
            "--redis-options",
            default="",
            help="query options added to surefoot's store URL, as in "
            "'timeout=0.5&coalesce=false' (default: none, the store's defaults)",
        )


def add_pin_options(parser: argparse.ArgumentParser, *, what: str, cpu: str = "") -> None:
    """``--no-pin``; with ``cpu``, also ``--cpu N`` (the CPU this process is pinned to)."""
    parser.add_argument("--no-pin", action="store_true", help=f"do not pin {what} to CPUs")
    if cpu:
        parser.add_argument("--cpu", type=int, default=None, help=cpu)


def add_output_options(parser: argparse.ArgumentParser, *, check: bool = True) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    if check:
        parser.add_argument(
            "--check", action="store_true", help="exit with status 1 if a target is missed"
        )


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick``, its settings are the defaults of this parse.

    ``args.command`` is the command line, as the report shows it; the option of
    ``add_selection`` becomes the list of the items it selects.
    """
    first, _ = parser.parse_known_args(argv)
    if getattr(first, "quick", False):
        parser.set_defaults(**first._quick)
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError):
        del args._quick
    args.command = command_line(argv)
    selection = vars(args).pop("_selection", None)
    if selection is not None:
        option, items, always = selection
        attribute = option.removeprefix("--").replace("-", "_")
        chosen = names(parser, option, getattr(args, attribute), (i.name for i in items))
        setattr(
            args,
            attribute,
            [i for i in items if not chosen or i.name in chosen or i.name in always],
        )
    return args


def names(
    parser: argparse.ArgumentParser,
    option: str,
    text: str,
    known: Iterable[str],
    *,
    required: bool = False,
) -> list[str]:
    """The names of a comma-separated ``option``, each one of ``known`` (one at least if
    ``required``)."""
    known = list(known)
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or (required and not chosen):
        wrong = f"unknown {unknown}" if unknown else "no name given"
        parser.error(f"{option}: {wrong}; expected names from {known}")
    return chosen


# -- the machine ----------------------------------------------------------------------------


def require_modules(modules: Iterable[str], extra: str) -> None:
    """Every module imports, or say which do not and how to install them."""
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BenchError(
            f"missing Python packages {missing} in {sys.executable}; "
            f"install them with: pip install -e '.[{extra}]'"
        )


def require_executable(name: str, path: str | None = None) -> None:
    if shutil.which(path or name) is None:
        raise BenchError(INSTALL.get(name, f"{name} not found"))


def first_line(command: list[str]) -> str:
    """The first line a tool prints about itself (``wrk --version``...), or "unknown"."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return (done.stdout or done.stderr).strip().split("\n", 1)[0].split(" Copyright")[0]


def git_describe() -> str:
    done = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def environment(
    packages: Iterable[str],
    tools: Mapping[str, list[str]] | None = None,
    missing: str = "not installed",
) -> dict[str, Any]:
    """The machine, the code (git) and the versions of ``packages`` and ``tools``."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = missing
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "git": git_describe(),
        **{name: first_line(command) for name, command in (tools or {}).items()},
        **versions,
    }


def machine(context: Mapping[str, Any], shared: str = "") -> str:
    """The machine's CPUs, and the load average before and after the runs."""
    cpus = context["environment"]["cpus"]
    load = (
        f"load average {context['load_before']:.2f} before, "
        f"{context['load_after']:.2f} after (1 min)"
    )
    return f"{cpus} CPUs shared by {shared}; {load}" if shared else f"{cpus} CPUs, {load}"


def load_average() -> float:
    return os.getloadavg()[0]


def pin_self(requested: int | None) -> int:
    """Pin this process to ``requested`` (default: the last allowed CPU); return it."""
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1] if requested is None else requested
    if cpu not in cpus:
        raise BenchError(f"--cpu {cpu}: not one of the allowed CPUs {cpus}")
    os.sched_setaffinity(0, {cpu})
    return cpu


@dataclass(frozen=True)
class CpuPlan:
    """Where the server and the load run: command prefixes, and a sentence saying so."""

    server: list[str]
    load: list[str]
    sentence: str


def split_cpus(no_pin: bool, load: str = "wrk", *, this_process: bool = False) -> CpuPlan:
    """The server on one CPU (``taskset``), the load on another.

    The load is a child started with the ``load`` prefix (wrk), or with ``this_process``,
    this very process (pinned here; ``load`` is then empty).
    """
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return CpuPlan([], [], f"not pinned (--no-pin); {len(cpus)} CPUs available")
    if len(cpus) < 2:
        return CpuPlan([], [], f"not pinned: only one CPU available; server and {load} share it")
    if shutil.which("taskset") is None:
        return CpuPlan([], [], "not pinned: taskset not found (Debian package util-linux)")
    server, other = cpus[0], cpus[1]
    if this_process:
        os.sched_setaffinity(0, {other})
        return CpuPlan(
            ["taskset", "-c", str(server)],
            [],
            f"server pinned to CPU {server} (taskset), {load} to CPU {other} "
            f"(sched_setaffinity), of {len(cpus)} CPUs",
        )
    return CpuPlan(
        ["taskset", "-c", str(server)],
        ["taskset", "-c", str(other)],
        f"server pinned to CPU {server}, {load} to CPU {other} (taskset), of {len(cpus)} CPUs",
    )


# -- child processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request: its status, its header fields (names in lower case) and its body."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            found = {k.lower(): v for k, v in response.headers.items()}
            return response.status, found, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every live process of the process group ``pgid``."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)


class Stoppable(Protocol):
    def stop(self) -> None: ...


#: every child and private server not stopped yet: ``run`` stops them whatever happens.
LIVE: set[Stoppable] = set()


class Child:
    """A server in a process group of its own, so that stopping it stops its workers."""

    def __init__(
        self,
        name: str,
        command: list[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log
        self._log = log.open("w+b")
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        LIVE.add(self)

    def output(self, chars: int = 2000) -> str:
        self._log.flush()
        return self.log_path.read_bytes().decode(errors="replace")[-chars:]

    def log_lines(self) -> list[str]:
        return self.log_path.read_bytes().decode(errors="replace").splitlines()

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll ``ready`` (an OSError counts as not yet) until it is True."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.output()}"
                )
            with contextlib.suppress(OSError):
                if ready():
                    return
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not {what} in {timeout:g} s:\n{self.output()}")

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Until GET ``url`` answers 200."""
        self.wait_until(lambda: http(url, timeout=1)[0] == 200, f"answer GET {url}", timeout)

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the port accepts a connection (no request: it might count against a limit)."""

        def connects() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        self.wait_until(connects, f"listen on port {self.port}", timeout)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the process group so far."""
        return group_cpu_seconds(self.process.pid)

    def memory(self) -> dict[str, float]:
        """Resident memory of the process in MiB: now (VmRSS) and peak (VmHWM)."""
        out: dict[str, float] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    out[name] = int(value.split()[0]) / 1024
        return out

    def died(self) -> str:
        """What became of the child: its exit status if it exited, and its log's tail."""
        code = self.process.poll()
        state = "still running" if code is None else f"exited with status {code}"
        return f"\n{self.name} {state}; its log ends with:\n{self.output(3000)}"

    def stop(self) -> None:
        if self not in LIVE:
            return
        pgid = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        # Whatever is left of the group (a worker that did not stop, the process itself).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait()
        self._log.close()
        LIVE.discard(self)


def uvicorn_command(
    app: str, port: int, *, workers: int = 1, lifespan: bool = True, prefix: Sequence[str] = ()
) -> list[str]:
    """uvicorn serving ``app`` (``module:name`` of ``bench/``): uvloop, httptools, no log."""
    return [
        *prefix,
        sys.executable, "-m", "uvicorn", app,
        "--app-dir", str(BENCH_DIR),
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools",
        "--workers", str(workers),
        *([] if lifespan else ["--lifespan", "off"]),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def start_uvicorn(
    name: str,
    app: str,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    lifespan: bool = True,
    prefix: Sequence[str] = (),
) -> Child:
    """A uvicorn child serving ``app`` on a free port (not waited for: see ``wait_*``)."""
    port = free_port()
    command = uvicorn_command(app, port, workers=workers, lifespan=lifespan, prefix=prefix)
    return Child(name, command, workdir / f"{name.split()[0]}.log", env, port)


class RedisServer:
    """A private ``redis-server``: a child on a free port of 127.0.0.1, nothing saved."""

    def __init__(self, prefix: Sequence[str] = (), executable: str = "redis-server") -> None:
        require_executable("redis-server", executable)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="surefoot-redis-")
        command = [
            *prefix, executable,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", self._dir.name, "--logfile", "",
        ]  # fmt: skip
        self.child = Child("redis-server", command, Path(self._dir.name) / "redis.log")
        LIVE.add(self)
        try:
            self.child.wait_until(self._pong, f"answer PING on port {self.port}", 10.0)
        except BaseException:
            self.stop()
            raise

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def cpu_ns(self) -> int:
        """CPU time used so far by every thread of the server (ns, from schedstat)."""
        total = 0
        for task in Path(f"/proc/{self.child.process.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
                total += int((task / "schedstat").read_text().split()[0])
        return total

    def stop(self) -> None:
        self.child.stop()
        self._dir.cleanup()
        LIVE.discard(self)


class BenchRedis:
    """The Redis server a benchmark writes to: a private one it starts, or ``--redis-url``'s.

    Each run writes under a prefix of its own and ``delete`` removes its keys afterwards;
    nothing is ever flushed.
    """

    def __init__(
        self, url: str | None, prefix: Sequence[str] = (), executable: str = "redis-server"
    ) -> None:
        self.server: RedisServer | None = None
        if url is None:
            self.server = RedisServer(prefix, executable)
            url = self.server.url
        self.url = url

    def describe(self) -> str:
        if self.server is None:
            return f"{self.url} (--redis-url; CPU from INFO cpu, every client of it counted)"
        return (
            f"private redis-server on port {self.server.port} (--save '' --appendonly no; "
            "CPU from /proc/PID/task/*/schedstat)"
        )

    def info(self) -> dict[str, Any]:
        """``INFO server`` (the version...)."""
        import redis

        with redis.Redis.from_url(self.url) as admin:
            return dict(admin.info("server"))

    def cpu_seconds(self) -> float:
        """CPU time of the server so far: /proc for the private one, else ``INFO cpu``."""
        if self.server is not None:
            return self.server.cpu_ns() / 1e9
        import redis

        with redis.Redis.from_url(self.url) as admin:
            info = admin.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def delete(self, prefix: str) -> int:
        """Delete the keys under ``prefix`` (never a FLUSH)."""
        import redis

        deleted, batch = 0, []
        with redis.Redis.from_url(self.url) as admin:
            for key in admin.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += admin.unlink(*batch)
                    batch = []
            if batch:
                deleted += admin.unlink(*batch)
        return deleted

    def where(self, prefix: Sequence[str]) -> str:
        """``describe()``, and the CPU of a private server started with ``prefix``."""
        pinned = f", on wrk's CPU ({shlex.join(prefix)})" if self.server and prefix else ""
        return self.describe() + pinned

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def with_query(url: str, *queries: str) -> str:
    """``url`` with ``queries`` (``"a=1&b=2"``, empty ones skipped) added to its query."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(query="&".join(q for q in (parts.query, *queries) if q)).geturl()


# -- load -----------------------------------------------------------------------------------


def wrk(
    script: Path,
    url: str,
    *,
    threads: int,
    connections: int,
    duration: int,
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """One wrk run; what the script's ``done()`` printed, and wrk's whole output."""
    command = [
        *prefix, "wrk",
        "--threads", str(threads), "--connections", str(connections),
        "--duration", f"{duration}s",  # wrk takes whole seconds
        "--timeout", "5s", "--script", str(script), url,
    ]  # fmt: skip
    if args:
        command += ["--", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(SUMMARY_PREFIX):
            result: dict[str, Any] = json.loads(line.removeprefix(SUMMARY_PREFIX))
            result["output"] = done.stdout
            return result
    raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def wrk_load(
    args: argparse.Namespace,
    cpus: CpuPlan,
    script: Path,
    url: str,
    duration: int,
    lua: Sequence[str] = (),
) -> dict[str, Any]:
    """``wrk`` with the options of ``add_wrk_options``, on the load's CPU of ``cpus``."""
    return wrk(
        script,
        url,
        threads=args.threads,
        connections=args.connections,
        duration=duration,
        args=lua,
        prefix=cpus.load,
    )


def wrk_figures(result: Mapping[str, Any], what: str) -> Run:
    """A wrk run's figures: requests, seconds, req/s, latency in ms, errors by kind."""
    if result["requests"] == 0:
        raise BenchError(f"{what}: no request completed")
    seconds = result["duration_us"] / 1e6
    return {
        "requests": result["requests"],
        "seconds": round(seconds, 3),
        "rps": result["requests"] / seconds,
        "latency_ms": {k: v / 1000 for k, v in result["latency_us"].items()},
        "errors": result["errors"],
        "error_count": sum(result["errors"].values()),
    }


def timed_wrk(
    server: Child, redis: BenchRedis | None, load: Callable[[], dict[str, Any]], what: str
) -> Run:
    """One timed wrk run against one server: wrk's figures, the server's CPU and memory.

    The Redis server's CPU is read whenever there is one: what a configuration that does
    not use it costs it (nothing) shows too.
    """
    cpu_before = server.cpu_seconds()
    redis_before = redis.cpu_seconds() if redis else 0.0
    result = load()
    cpu = server.cpu_seconds() - cpu_before
    redis_cpu = redis.cpu_seconds() - redis_before if redis else None
    memory = server.memory()
    figures = wrk_figures(result, what)
    requests = figures["requests"]
    return {
        **figures,
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_request": cpu / requests * 1e6,
        "redis_cpu_us_per_request": None if redis_cpu is None else redis_cpu / requests * 1e6,
        "rss_mib": memory.get("VmRSS"),
        "peak_rss_mib": memory.get("VmHWM"),
    }


def server_rounds(
    configs: Sequence[Configuration],
    rounds: int,
    run_one: Callable[[Any, int], Run],
    width: int,
) -> list[Run]:
    """``run_one(config, round)`` for every configuration in every round, saying each run."""
    runs = []
    for round_no in range(1, rounds + 1):
        for config in configs:
            run = run_one(config, round_no)
            runs.append(run)
            print(
                f"  round {round_no} {config.name:<{width}} {run['rps']:>9,.0f} req/s"
                f"  {run['cpu_us_per_request']:>6,.0f} CPU us/req"
                f"  p99 {run['latency_ms']['p99']:.1f} ms  errors {run['error_count']}",
                flush=True,
            )
    return runs


@dataclass(frozen=True)
class ServerRound:
    """What ``compare_servers`` gives each run: the options, the round, the CPUs, Redis."""

    args: argparse.Namespace
    number: int
    cpus: CpuPlan
    redis: BenchRedis | None


@dataclass(frozen=True)
class Check:
    """What a benchmark checks once before its rounds: ``run(cpus, redis)`` says how it went.

    The sentence is shown as ``label`` in the report's head, and kept as ``key`` in the JSON.
    """

    label: str
    key: str
    run: Callable[[CpuPlan, BenchRedis | None], str]


def compare_servers(
    args: argparse.Namespace,
    configs: Sequence[Configuration],
    run_one: Callable[[Any, ServerRound], Run],
    *,
    width: int,
    uses_redis: bool,
    packages: Sequence[str],
    software: str,
    request: str = "",
    lines: Sequence[tuple[str, str]] = (),
    check: Check | None = None,
    also: Sequence[str] = (),
    peers: Mapping[str, Sequence[str]] | None = None,
) -> int:
    """Every configuration against ``bare`` under wrk, in interleaved rounds, reported.

    The server is pinned to one CPU, wrk (and a private Redis server, if ``uses_redis``)
    to another. ``run_one(config, ServerRound)`` is one timed run. The
    report's head says the load (``request``: what wrk sends, if it is one thing),
    ``lines``, the check, Redis, the CPUs, the machine, and ``software`` (a format of the
    environment: the versions of ``packages`` and ``wrk``) after Python and surefoot.
    ``peers``: each configuration's peers, which it must be ahead of (``peer_rows``).
    """
    cpus = split_cpus(args.no_pin)
    # On wrk's CPU: the server measured keeps its core, as with an in-process store.
    redis = BenchRedis(args.redis_url, cpus.load, args.redis_server) if uses_redis else None

    context: dict[str, Any] = {
        "command": args.command,
        "cpus": cpus.sentence,
        "redis": ("not used" if redis is None else redis.where(cpus.load))
        + f"; store options: {args.redis_options or 'the defaults'}",
        "environment": environment(packages, {"wrk": ["wrk", "--version"]}),
        "load_before": load_average(),
    }
    head = list(lines)
    said = ""
    if check is not None:
        context[check.key] = check.run(cpus, redis)
        head.append((check.label, context[check.key]))
        said = f"; {check.label} {context[check.key]}"
    total = args.rounds * len(configs) * (args.duration + args.warmup)
    print(
        f"{len(configs)} configurations x {args.rounds} rounds, about {total} s of load; "
        f"{cpus.sentence}{said}",
        flush=True,
    )
    runs = server_rounds(
        configs,
        args.rounds,
        lambda config, n: run_one(config, ServerRound(args, n, cpus, redis)),
        width,
    )
    context["load_after"] = load_average()
    if redis is not None:
        redis.stop()
    rows = server_rows(configs, runs, "bare")
    load = (
        f"wrk {args.threads} threads, {args.connections} connections, {request}"
        f"{args.duration} s per run after {args.warmup} s warm-up, {args.rounds} round(s), "
        "configurations interleaved"
    )
    print_header(
        context,
        [("load", load), *head, ("redis", context["redis"]), ("cpus", context["cpus"])],
        software,
    )
    print()
    print_server_rows(runs, rows, args.rounds, "bare", width)
    contests = peer_rows(runs, peers or {})
    if contests:
        print()
        print_peer_rows(contests, width)
    rows += contests
    configs_json = [dataclasses.asdict(c) for c in configs]  # type: ignore[call-overload]
    used = settings(args, "rounds", "duration", "warmup", "connections", "threads", *also)
    return finish(args, context, used, rows, runs, configs=configs_json)


# -- rounds ---------------------------------------------------------------------------------


def rotated(items: Sequence[T], round_no: int) -> list[T]:
    """``items`` rotated by one more each round (round 1: as they are)."""
    shift = (round_no - 1) % len(items)
    return [*items[shift:], *items[:shift]]


def by_round(runs: Iterable[Run], **match: Any) -> dict[int, Run]:
    """The runs whose fields equal ``match``, by round."""
    return {r["round"]: r for r in runs if all(r[k] == v for k, v in match.items())}


def paired(
    mine: Mapping[int, Run], base: Mapping[int, Run], figure: Callable[[Run, Run], float]
) -> list[float]:
    """``figure(run, baseline's run)`` for every round that both have."""
    return [figure(run, base[n]) for n, run in mine.items() if n in base]


def against_baseline(
    runs: list[Run],
    key: str,
    names: Iterable[str],
    baseline: str,
    group: str,
    groups: Iterable[str],
) -> Iterator[tuple[str, str, dict[int, Run], dict[int, Run]]]:
    """Per group (a mode...), per name that has runs in it: the group, the name, its runs
    and the ``baseline``'s in the group, by round. ``key``, ``group``: the runs' fields."""
    names = list(names)
    for where in groups:
        base = by_round(runs, **{key: baseline, group: where})
        for name in names:
            mine = by_round(runs, **{key: name, group: where})
            if mine:
                yield where, name, mine, base


@dataclass(frozen=True)
class Spread:
    """A median over rounds, with the least and greatest or the quartiles around it."""

    median: float
    low: float
    high: float

    @classmethod
    def range(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    @classmethod
    def quartiles(cls, values: Sequence[float]) -> Spread:
        middle = statistics.median(values)
        if len(values) < 2:
            return cls(middle, middle, middle)
        low, _, high = statistics.quantiles(values, n=4)
        return cls(middle, low, high)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def median_known(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None, or None if none is."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


class Configuration(Protocol):
    """What ``server_rows`` needs of a configuration."""

    @property
    def name(self) -> str: ...
    @property
    def meaning(self) -> str: ...
    @property
    def target(self) -> float | None: ...


def server_rows(configs: Iterable[Configuration], runs: list[Run], baseline: str) -> list[Run]:
    """``timed_wrk`` runs summed up: medians over rounds, ratios to ``baseline`` per round.

    A configuration meets its target (a least ratio of req/s) only if every answer was a
    2xx: a failed request is cheap.
    """
    base = by_round(runs, config=baseline)
    rows = []
    for config in configs:
        mine = by_round(runs, config=config.name)
        ratio = Spread.range(paired(mine, base, lambda r, b: r["rps"] / b["rps"]))
        cpu_ratio = median(
            paired(mine, base, lambda r, b: b["cpu_us_per_request"] / r["cpu_us_per_request"])
        )
        errors = sum(r["error_count"] for r in mine.values())
        rows.append(
            {
                "config": config.name,
                "meaning": config.meaning,
                "rps": median(r["rps"] for r in mine.values()),
                "ratio": ratio.median,
                "ratio_min": ratio.low,
                "ratio_max": ratio.high,
                "target": config.target,
                "met": None
                if config.target is None
                else ratio.median >= config.target and not errors,
                "cpu_us_per_request": median(r["cpu_us_per_request"] for r in mine.values()),
                "cpu_ratio": cpu_ratio,
                "redis_cpu_us_per_request": median_known(
                    r["redis_cpu_us_per_request"] for r in mine.values()
                ),
                "server_cpu_share": median(r["cpu_seconds"] / r["seconds"] for r in mine.values()),
                "p99_ms": median(r["latency_ms"]["p99"] for r in mine.values()),
                "rss_mib": median_known(r["rss_mib"] for r in mine.values()),
                "errors": errors,
            }
        )
    return rows


def peer_rows(runs: list[Run], peers: Mapping[str, Sequence[str]]) -> list[Run]:
    """Per configuration of ``peers`` that ran with one of its peers at least: its req/s
    over the best of its peers' in each round, and the target, above 1 (ahead of every
    peer). A configuration with errors does not meet it: a failed request is cheap."""
    rows = []
    for name, rivals in peers.items():
        mine = by_round(runs, config=name)
        theirs = {p: by_round(runs, config=p) for p in rivals}
        theirs = {p: r for p, r in theirs.items() if r}
        if not mine or not theirs:
            continue
        ratios = [
            run["rps"] / max(r[n]["rps"] for r in theirs.values())
            for n, run in mine.items()
            if all(n in r for r in theirs.values())
        ]
        ratio = Spread.range(ratios)
        best = max(theirs, key=lambda p: median(r["rps"] for r in theirs[p].values()))
        errors = sum(r["error_count"] for r in mine.values())
        rows.append(
            {
                "config": f"{name} vs peers",
                "meaning": f"{name}'s req/s over the best of {', '.join(theirs)} per round",
                "versus": list(theirs),
                "best_peer": best,
                "ratio": ratio.median,
                "ratio_min": ratio.low,
                "ratio_max": ratio.high,
                "target": 1.0,
                "met": ratio.median > 1.0 and not errors,
            }
        )
    return rows


# -- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column of a text table: a title, a format spec (``"<14"``, ``">7"``) and a gap."""

    title: str
    spec: str = ""
    gap: int = 1


def text_table(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a fixed-width table: header, rule, rows (trailing spaces dropped)."""

    def line(cells: Sequence[str]) -> str:
        return "".join(
            " " * (c.gap if i else 0) + format(cell, c.spec)
            for i, (c, cell) in enumerate(zip(columns, cells, strict=True))
        )

    header = line([c.title for c in columns])
    return [header, "-" * len(header), *(line(cells).rstrip() for cells in rows)]


def markdown_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], left: Iterable[str]
) -> str:
    """A Markdown table; the columns not in ``left`` are aligned right (numbers)."""
    left = set(left)
    lines = ["| " + " | ".join(columns) + " |"]
    lines.append("|" + "|".join("---" if c in left else "---:" for c in columns) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def num(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def ratio_columns(title: str, width: int, spread: str = "(min-max)") -> list[Column]:
    """The columns of ``ratio_cells``: the ratio, its spread, the target, whether met."""
    return [
        Column(title, f">{width}"),
        Column(spread, ">9"),
        Column("target", ">6"),
        Column("met", ">3"),
    ]


def ratio_cells(
    row: Mapping[str, Any],
    sign: str,
    spread: tuple[str, str] = ("ratio_min", "ratio_max"),
) -> list[str]:
    """A row's ratio, its spread over rounds (``spread``: the row's keys), target and met."""
    low, high = row[spread[0]], row[spread[1]]
    return [
        f"{row['ratio']:.2f}",
        f"{low:.2f}-{high:.2f}",
        target_text(row["target"], sign),
        met_text(row["met"]),
    ]


def target_text(target: float | None, sign: str) -> str:
    """``sign`` and ``target`` with one or two decimals: 0.8 as 0.8, 0.85 as 0.85."""
    if target is None:
        return "-"
    text = f"{target:.2f}"
    return sign + (text[:-1] if text.endswith("0") else text)


def met_text(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def print_server_rows(
    runs: Sequence[Run], rows: Sequence[Run], rounds: int, baseline: str, width: int
) -> None:
    """``server_rows`` as a table, what its columns mean, and the figures of every round."""
    columns = (
        Column("configuration", f"<{width}"), Column("req/s", ">7"), *ratio_columns("ratio", 5),
        Column("CPU us/req", ">10"), Column("CPU ratio", ">9"), Column("Redis us", ">8"),
        Column("p99 ms", ">7"), Column("RSS MiB", ">7"), Column("errors", ">6"),
    )  # fmt: skip
    cells = [
        [
            row["config"],
            f"{row['rps']:,.0f}",
            *ratio_cells(row, ">="),
            f"{row['cpu_us_per_request']:,.0f}",
            f"{row['cpu_ratio']:.2f}",
            num(row["redis_cpu_us_per_request"], ",.1f"),
            f"{row['p99_ms']:.1f}",
            num(row["rss_mib"], ".1f", "?"),
            str(row["errors"]),
        ]
        for row in rows
    ]
    print("\n".join(text_table(columns, cells)))
    print()
    print("req/s, CPU us/req, p99, RSS: median over rounds.")
    print(f"ratio: median of the per-round req/s ratios to {baseline} (min-max: their spread);")
    print("       this is the figure the targets apply to.")
    print("CPU us/req: server CPU time (user + system) per request during the timed run;")
    print(f"CPU ratio: {baseline}'s CPU us/req over this one's, the median per round: the req/s")
    print("       ratio to expect with a whole idle core, less sensitive to other load on the")
    print("       machine.")
    print("Redis us: Redis server CPU time per request during the timed run (all configurations")
    print("       run while it is up: near 0 for those that do not use it).")
    print("RSS: server resident memory after the timed run (VmRSS).")
    print("errors: wrk socket errors, timeouts (over 5 s) and non-2xx answers, all rounds;")
    print("       a configuration with errors does not meet its target.")
    print()
    names = [row["config"] for row in rows]
    cell = max(16, width)
    print("per round, req/s (server CPU share of the wall time):")
    print("  round " + " ".join(f"{n:>{cell}}" for n in names))
    for round_no in range(1, rounds + 1):
        by_name = {r["config"]: r for r in runs if r["round"] == round_no}
        line = " ".join(
            f"{by_name[n]['rps']:>{cell - 7},.0f} "
            f"({by_name[n]['cpu_seconds'] / by_name[n]['seconds']:.2f})"
            for n in names
        )
        print(f"  {round_no:>5} {line}")
    failed = [r for r in runs if r["error_count"]]
    if failed:
        print("\nWARNING: some requests did not get a 2xx answer in time (wrk --timeout 5s):")
        for r in failed:
            kinds = ", ".join(f"{n} {k}" for k, n in r["errors"].items() if n)
            print(f"  round {r['round']} {r['config']}: {kinds}")


def print_peer_rows(rows: Sequence[Run], width: int) -> None:
    """``peer_rows`` as a table."""
    columns = (
        Column("ahead of its peers", f"<{width + 9}"), Column("best peer", f"<{width}", 2),
        *ratio_columns("ratio", 5),
    )  # fmt: skip
    cells = [[row["config"], row["best_peer"], *ratio_cells(row, ">")] for row in rows]
    print("\n".join(text_table(columns, cells)))
    print()
    print("ratio: median of the per-round ratios of req/s to the best of its peers in that")
    print("       round (min-max: their spread); best peer: the highest median req/s.")


def print_header(
    context: Mapping[str, Any],
    lines: Iterable[tuple[str, str]],
    software: str,
    *,
    shared: str = "",
    after: Iterable[tuple[str, str]] = (),
) -> None:
    """The head of a report: the command, one ``label: text`` line each of ``lines``, the
    machine (``shared``: by whom its CPUs are), the software (Python, surefoot and the
    ``software`` format of the environment), then ``after``.

    A line with no label goes on the one before.
    """
    env = context["environment"]
    ours = f"Python {env['python']}, surefoot {env['surefoot']} ({env['git']}), "
    print()
    print(f"command:  {context['command']}")
    for label, text in [
        *lines,
        ("machine", machine(context, shared)),
        ("software", ours + software.format_map(env)),
        *after,
    ]:
        print(f"{label + ':' if label else '':<10}{text}")


def finish(
    args: argparse.Namespace,
    context: Mapping[str, Any],
    settings: Mapping[str, Any],
    rows: list[Run],
    runs: list[Run],
    **more: Any,
) -> int:
    """Write ``--json`` if asked; the exit status: 1 if ``--check`` and a target is missed."""
    if args.json:
        write_json(
            args.json, {**context, "settings": settings, **more, "summary": rows, "runs": runs}
        )
    missed = any(row.get("met") is False for row in rows)
    return 1 if getattr(args, "check", False) and missed else 0


def settings(args: argparse.Namespace, *names: str, **more: Any) -> dict[str, Any]:
    """The options ``names`` as they were for this run, and ``more``."""
    return {**{name: getattr(args, name) for name in names}, **more}


def print_per_round(
    runs: Sequence[Run],
    key: str,
    groups: Sequence[str],
    cell: Callable[[Run], str],
    width: int,
    rounds: int,
    what: str,
    group: str = "mode",
) -> None:
    """Per ``group`` (a mode, a workload), a line per ``key`` with its figure of each round.

    Over ten rounds, only a pointer to the JSON (where every run is).
    """
    if rounds > 10:
        print("per round figures: in the --json output (runs).")
        return
    print(f"per round, {what}:")
    for name in groups:
        print(f"  [{name}]")
        mine = [r for r in runs if r[group] == name]
        for item in dict.fromkeys(r[key] for r in mine):
            ordered = sorted((r for r in mine if r[key] == item), key=lambda r: r["round"])
            print(f"  {item:<{width}} " + " ".join(cell(r) for r in ordered))


def command_line(argv: list[str] | None) -> str:
    """The command as it was typed (or, called with ``argv``, as it would have been)."""
    return shlex.join(sys.orig_argv if argv is None else [sys.argv[0], *argv])


def write_json(path: str, document: Mapping[str, Any] | list[Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nJSON written to {path}")


# -- the script -----------------------------------------------------------------------------


@contextlib.contextmanager
def children_stopped() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, and every child still alive is stopped at the end."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        for child in list(LIVE):
            child.stop()


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)``'s exit status; a ``BenchError`` is printed and is status 2."""
    with children_stopped():
        try:
            return main(argv)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
