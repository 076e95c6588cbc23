"""The exactly-once drill: many clients pay through faults, then the ledger is audited.

``run_drill(scenario)`` (``python -m tools.drill SCENARIO.toml``) builds this, in a temporary
directory of its own, and tears it down afterwards whatever happens (Ctrl-C included)::

    clients ──► ChaosProxy ──► surefoot serve ──► ChaosProxy ──► legacy payments API
    (tasks)     (client side)  (subprocess)       (upstream side)  (subprocess, SQLite ledger)
                                    │
                        SQLite file, or a private redis-server (append-only file)

Theory of operation:
1. Start: the store (a private ``redis-server --appendonly yes --appendfsync always`` for
   ``store = "redis"``: a Redis that forgets keys on restart forgets which payments ran),
   the upstream (``python -m examples.legacy_payments``, its own ledger), the upstream-side
   proxy, the gateway (``python -m surefoot serve`` on a policy written by
   ``gateway_policy``) and the client-side proxy, each on a free port, each awaited by
   polling until it answers. Every subprocess runs in a process group of its own.
2. Pay: ``clients`` tasks, each with its own ``httpx.AsyncClient`` over an
   ``AsyncResilientTransport`` (retries with full jitter, no retry budget, every attempt
   capped by ``attempt_timeout``) and its own API key, make ``payments`` payments one after
   another. A payment is one reference and one ``Idempotency-Key`` (the same string), kept
   across every attempt; what the transport does not retry (a body cut short, a final
   status after its attempts) is tried again by the client until the payment's deadline.
   Attempts are counted on the wire, below the transport.
3. Meanwhile ``[[events]]`` happen at their time (or share of payments done): chaos plans
   paused, resumed or flapping; the gateway's process group or redis-server SIGKILLed and
   started again on the same port after ``down`` seconds.
4. Settle: the chaos plans are paused, anything an event left down is started again (a
   gateway or Redis that exited by itself is too, and listed among the events: a finding),
   and the drill waits for deliveries still in flight (the longest delay rule, at least one
   second) and then, up to ``settle`` seconds, for the gateway's outcome-unknown keys to be
   settled by its reconciler.
5. Audit (``scenario.audit``): the ledger (read from the upstream's SQLite file, checked
   against its ``GET /audit``) against every client's final answer, plus the keys the
   gateway still holds as outcome unknown (``GET /admin/unknown``). Every payment, with
   what the client was told and what the ledger booked, goes to ``payments.jsonl``; every
   injected fault to ``faults.jsonl``.

Rule 1: every process the drill starts is killed (its whole process group) and every
        temporary file removed on every path out of ``arun_drill``; ``keep=True`` keeps
        the directory (policy, logs, ledger, store) for investigation.
Rule 2: a drill that cannot run (a process that does not start, or dies) raises
        ``DrillError`` with the tail of that process's log; a drill that runs returns its
        ``DrillReport`` whatever it found (``report.ok`` says whether it passed).

With ``target = "webhooks"`` the gateway, the upstream and the upstream-side proxy give way
to one process, the webhook receiver (``python -m tools.drill.receiver``: the same payments
app behind a ``WebhookReceiver``, on the same store)::

    senders ──► ChaosProxy ──► WebhookReceiver ──► legacy payments app
    (tasks)     (client side)  └──────── one process (receiver.py) ────┘

Each payment is then one Standard Webhooks event (its ``webhook-id`` the reference), signed
with a secret of the run's own, delivered and retried like a payment (the resilient
transport keys its retries on ``webhook-id``); ``restart_gateway`` kills and restarts the
receiver, and no key is ever outcome unknown.

With ``target = "outbox"`` the senders are the sending side of ``surefoot.outbox``
(``tools.drill.outbox``), each in a process of its own::

    applications ──► app.db ◄── outbox workers ──► ChaosProxy ──► WebhookReceiver ──► ledger
    (one process     (charges,  (``[outbox] workers``             └─ receiver.py --outbox ─┘
     per client)      outbox)    processes)

The applications share one SQLite file, the application's database (its charges, the
outbox's tables and the receiver's endpoint behind the proxy), each committing charges of
its own. While they run, a worker chosen at random is SIGKILLed every ``kill_every``
seconds or so (``worker_kills`` times) and started again ``down`` seconds later, and the
first application is SIGKILLed once right after a COMMIT (``kill_app``) and started
again. Then the drill waits, up to ``settle`` seconds and with the chaos still on, until
no delivery is pending or in flight, and audits (``scenario.outbox_audit``) the database,
the applications' journals, the ledger and the receiver's wire log (``wire.jsonl``).

With ``target = "saga"`` none of the above runs: ``tools.drill.saga`` starts the checkout
example's partners and ``SagaWorker`` processes, starts the orders, kills workers, and
audits the partners' ledger and the saga log (``scenario.saga_audit``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from surefoot.chaos import ChaosProxy, FaultInjected, FaultPlan
from surefoot.client import AsyncResilientTransport, RetryBudget, RetryPolicy
from surefoot.errors import ConfigurationError, UpstreamError
from surefoot.events import Event
from surefoot.webhooks import StandardWebhooks
from tools.drill.scenario import (
    DrillAudit,
    DrillEvent,
    DrillReport,
    OutboxAudit,
    Payment,
    SagaAudit,
    Scenario,
    Wire,
    audit,
    gateway_policy,
    latency,
    outbox_audit,
    ranks,
)

__all__ = ["DrillError", "arun_drill", "drill_table", "run_drill"]

Progress = Callable[[int, int], None]
Log = Callable[[str], None]

#: The checkout the drill runs from: it holds ``examples/legacy_payments``, the upstream.
ROOT = Path(__file__).resolve().parents[2]
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_READY_TIMEOUT = 60.0


class DrillError(Exception):
    """The drill could not run: a process did not start or died (its log's tail is here)."""


def run_drill(
    scenario: Scenario,
    *,
    progress: Progress | None = None,
    log: Log | None = None,
    workdir: str | os.PathLike[str] | None = None,
    keep: bool = False,
) -> DrillReport:
    """Run ``scenario`` and audit the ledger (see the module's docstring).

    Example:
        >>> report = run_drill(Scenario.from_toml("examples/drills/ci-small.toml"))
        >>> report.ok, report.audit.duplicated, report.audit.missing
        (True, 0, 0)

    Args:
        scenario: the drill.
        progress: called with (payments done, payments in all) as payments finish.
        log: called with one line per step (started, killed, restarted...).
        workdir: where to make the drill's temporary directory (default: the system's).
        keep: keep that directory afterwards (its path is logged).

    Raises:
        DrillError: a process did not start or died; ConfigurationError: the drill needs
            what is not here (``redis-server``).

    Warning:
        SIGTERM stops it like Ctrl-C, cleaning up first.
    """
    work = arun_drill(scenario, progress=progress, log=log, workdir=workdir, keep=keep)
    return asyncio.run(_with_sigterm(work))


async def _with_sigterm(work: Coroutine[Any, Any, DrillReport]) -> DrillReport:
    """``work``, stopped by SIGTERM as by Ctrl-C: cancelled (so that every ``finally`` cleans
    up), then ``KeyboardInterrupt``."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    installed = False
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, terminate)  # the main thread only
        installed = True
    try:
        return await work
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, previous)


async def arun_drill(
    scenario: Scenario,
    *,
    progress: Progress | None = None,
    log: Log | None = None,
    workdir: str | os.PathLike[str] | None = None,
    keep: bool = False,
) -> DrillReport:
    """``run_drill`` in the running event loop (the proxies and clients run in it)."""
    if scenario.target == "saga":
        return await _saga_drill(scenario, progress=progress, log=log, workdir=workdir, keep=keep)
    drill = _Drill(scenario, progress=progress, log=log or (lambda line: None))
    directory = Path(tempfile.mkdtemp(prefix="surefoot-drill-", dir=workdir))
    started = time.monotonic()
    try:
        await drill.start(directory)
        await drill.pay()
        await drill.settle()
        return await drill.report(wall=time.monotonic() - started)
    finally:
        await drill.aclose()
        if keep:
            drill.log(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


async def _saga_drill(
    scenario: Scenario,
    *,
    progress: Progress | None,
    log: Log | None,
    workdir: str | os.PathLike[str] | None,
    keep: bool,
) -> DrillReport:
    """The saga drill (``target = "saga"``): its own processes, in ``tools.drill.saga``."""
    from tools.drill.saga import arun_saga_drill

    say = log or (lambda line: None)
    directory = Path(tempfile.mkdtemp(prefix="surefoot-drill-", dir=workdir))
    started = time.monotonic()
    try:
        report: DrillReport = await arun_saga_drill(
            scenario, directory=directory, progress=progress, log=say, started=started
        )
        return report
    finally:
        if keep:
            say(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


# -- processes ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _Process:
    """One subprocess in a process group of its own, its output in a log file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as a whole
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        self._signal(signal.SIGKILL)
        self._reap(5.0)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it is still there after a few seconds."""
        if self.process is None:
            return
        self._signal(signal.SIGTERM)
        if not self._reap(5.0):
            self.kill()
        self.process = None

    def _signal(self, signum: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def _reap(self, timeout: float) -> bool:
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        # The group may outlive its leader (a worker): make sure nothing is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return True

    def exit_status(self) -> str:
        code = self.process.poll() if self.process is not None else None
        if code is None:
            return "running"
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failed(self, what: str) -> DrillError:
        return DrillError(f"{self.name} {what} (log {self.log_path}):\n{self.tail()}")


async def _until_ready(process: _Process, ready: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``ready`` until it is true; the deadline guards a process that never comes up."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        if not process.alive:
            raise process.failed("exited while starting")
        if await ready():
            return
        if time.monotonic() > deadline:
            raise process.failed(f"did not answer within {_READY_TIMEOUT:g} s")
        await asyncio.sleep(0.05)


async def _answers(url: str, headers: Mapping[str, str] | None = None) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            return (await client.get(url, headers=headers)).status_code == 200
    except httpx.HTTPError:
        return False


async def _redis_pong(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        # +PONG once ready; -LOADING while it reads its append-only file back.
        return (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _environment(directory: Path, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(directory)  # the gateway's metrics folder goes there
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


# -- the drill ------------------------------------------------------------------------------------


class _Counting(httpx.AsyncBaseTransport):
    """Counts the requests sent per idempotency key, under the resilient transport."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.sent: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = request.headers
        self.sent[headers.get("idempotency-key") or headers.get("webhook-id", "")] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _FaultLog:
    """Writes each injected fault as a JSON line (``faults.jsonl``), for investigation: the
    client side's request id is the idempotency key, the upstream side's the gateway's
    request id (as in the gateway's log)."""

    def __init__(self, output: IO[str], side: str) -> None:
        self.output = output
        self.side = side

    def __call__(self, event: Event) -> None:
        if isinstance(event, FaultInjected):
            record = {"side": self.side, **event.fields()}
            self.output.write(json.dumps(record) + "\n")


class _Drill:
    """One run: its processes, proxies, clients and what they saw."""

    def __init__(self, scenario: Scenario, *, progress: Progress | None, log: Log) -> None:
        self.scenario = scenario
        self.on_progress = progress
        self.log_line = log
        self.run_id = secrets.token_hex(3)
        self.token = secrets.token_urlsafe(16)
        seeds = scenario.seeds()
        self.seeds = seeds
        self.client_plan = FaultPlan(
            scenario.client_rules, seed=seeds["client"], paused=scenario.client_paused
        )
        self.upstream_plan = FaultPlan(
            scenario.upstream_rules, seed=seeds["upstream"], paused=scenario.upstream_paused
        )
        self.redis: _Process | None = None
        self.upstream: _Process | None = None
        self.gateway: _Process | None = None
        self.proxies: list[ChaosProxy] = []
        self.payments: list[Payment] = []
        self.done = 0
        self.t0 = 0.0
        self.seconds = 0.0
        self.fired: list[str] = []
        self.stopped: set[str] = set()  # what an event has taken down and not yet restarted
        self.ledger_path: Path | None = None
        self.fault_log: IO[str] | None = None
        # The outbox drill delivers to the webhook drill's receiver.
        self.webhooks = scenario.target in ("webhooks", "outbox")
        self.outbox = scenario.target == "outbox"
        self.senders: list[_Process] = []  # the outbox workers
        self.applications: list[_Process] = []
        self.killer: asyncio.Future[None] | None = None
        self.worker_kills = self.app_kills = 0
        self.down: set[int] = set()  # the workers kill_workers has killed and not restarted
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.webhook_secret = secret
        self.scheme = StandardWebhooks(secrets=(secret,))
        # Every client retries the same way: with the same key, until the payment's deadline.
        self.retry = RetryPolicy(
            max_attempts=1_000_000,
            deadline=None,  # each payment has its own deadline (``payment``)
            attempt_timeout=scenario.attempt_timeout,
            backoff_base=0.05,
            backoff_max=1.0,
            retry_statuses=_RETRY_STATUSES,
            max_retry_after=scenario.deadline,
        )

    def log(self, line: str) -> None:
        self.log_line(line)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- starting ----------------------------------------------------------------------------

    async def start(self, directory: Path) -> None:
        """Start, in order: the store, the upstream, its proxy, the gateway, the clients' proxy."""
        s = self.scenario
        self.directory = directory
        root = ROOT
        env = _environment(directory, root)
        self.log(
            f"drill {s.name}: {s.clients} clients x {s.payments} payments, store {s.store}, "
            f"idempotency {'on' if s.idempotency else 'off'}, {s.workers} "
            f"{'receiver' if self.webhooks else 'gateway'} worker{'s' * (s.workers > 1)}, "
            f"seed {s.seed}"
        )
        if s.store == "redis":
            store_url = await self.start_redis(directory)
        else:
            store_url = f"sqlite:///{directory / 'gateway.db'}"
        self.ledger_path = directory / "ledger.db"
        if self.webhooks:
            await self.start_receiver(directory, env, store_url)
            if self.outbox:
                await self.start_workers(directory, env)
            return
        port = _free_port()
        command = [sys.executable, "-m", "examples.legacy_payments", "--port", str(port)]
        command += ["--ledger", str(self.ledger_path), "--workers", str(s.upstream_workers)]
        command += ["--fail-after-commit", repr(s.fail_after_commit)]
        command += ["--seed", str(self.seeds["legacy"])]
        upstream = self.upstream = _Process(
            "the upstream (examples.legacy_payments)",
            command,
            log=directory / "upstream.log",
            cwd=root,
            env=env,
        )
        upstream.start()
        self.upstream_url = self.ledger_url = f"http://127.0.0.1:{port}"
        await _until_ready(upstream, lambda: _answers(self.upstream_url + "/health"))
        self.fault_log = (directory / "faults.jsonl").open("w")
        upstream_proxy = await self.proxy(self.upstream_url, self.upstream_plan, "upstream")
        port, admin_port = _free_port(), _free_port()
        policy = directory / "gateway.toml"
        policy.write_text(
            gateway_policy(
                s,
                upstream_url=upstream_proxy.url,
                store_url=store_url,
                port=port,
                admin_port=admin_port,
                admin_token=self.token,
            )
        )
        self.gateway_url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.ready_url = self.admin_url + "/healthz"
        self.gateway = _Process(
            "the gateway (surefoot serve)",
            [sys.executable, "-m", "surefoot", "serve", "--config", str(policy)],
            log=directory / "gateway.log",
            cwd=directory,
            env=env,
        )
        await self.start_gateway()
        client_proxy = await self.proxy(self.gateway_url, self.client_plan, "client")
        self.client_url = client_proxy.url
        self.log(
            f"clients -> {client_proxy.url} (chaos) -> gateway {self.gateway_url} -> "
            f"{upstream_proxy.url} (chaos) -> upstream {self.upstream_url}"
        )

    async def start_receiver(self, directory: Path, env: dict[str, str], store_url: str) -> None:
        """The webhook receiver (the ledger app behind a ``WebhookReceiver``), then the
        clients' proxy in front of it (``target = "webhooks"``)."""
        # Imported here: ``python -m tools.drill.receiver`` imports this package first.
        from tools.drill.receiver import SECRET_VARIABLE

        s = self.scenario
        assert self.ledger_path is not None
        port = _free_port()
        command = [sys.executable, "-m", "tools.drill.receiver", "--port", str(port)]
        command += ["--ledger", str(self.ledger_path), "--store", store_url]
        command += ["--lease", repr(s.gateway.lease), "--workers", str(s.workers)]
        command += ["--seed", str(self.seeds["legacy"])]
        if not s.idempotency:
            command.append("--bare")
        if self.outbox:
            command += ["--outbox", str(directory / "wire.jsonl")]
        self.fault_log = (directory / "faults.jsonl").open("w")
        # The gateway's slot: restart_gateway and the settling restart the receiver.
        self.gateway = _Process(
            "the webhook receiver (tools.drill.receiver)",
            command,
            log=directory / "receiver.log",
            cwd=ROOT,
            env={**env, SECRET_VARIABLE: self.webhook_secret},
        )
        self.gateway_url = self.ledger_url = f"http://127.0.0.1:{port}"
        self.ready_url = self.ledger_url + "/health"
        await self.start_gateway()
        client_proxy = await self.proxy(self.gateway_url, self.client_plan, "client")
        self.client_url = client_proxy.url
        self.log(f"senders -> {client_proxy.url} (chaos) -> receiver {self.gateway_url}")

    async def start_workers(self, directory: Path, env: dict[str, str]) -> None:
        """The application's database (its charges, the outbox and the receiver's endpoint
        behind the proxy), then the outbox workers (``target = "outbox"``)."""
        from tools.drill.outbox import setup

        o = self.scenario.outbox
        self.env = env
        self.app_db = directory / "app.db"
        await asyncio.to_thread(
            setup,
            str(self.app_db),
            url=self.client_url + "/charges",
            secret=self.webhook_secret,
            rate_limit=o.rate_limit,
            concurrency=o.concurrency,
        )
        for index in range(o.workers):
            command = [sys.executable, "-m", "tools.drill.outbox", "worker"]
            command += ["--database", str(self.app_db), "--ready", str(self.ready_file(index))]
            command += ["--lease", repr(o.lease), "--timeout", repr(o.timeout)]
            command += ["--schedule", json.dumps(list(o.schedule)), "--jitter", repr(o.jitter)]
            command += ["--seed", str(self.seeds["jitter"] * 100 + index)]
            if not o.breaker:
                command.append("--no-breaker")
            self.senders.append(
                _Process(
                    f"outbox worker {index} (tools.drill.outbox worker)",
                    command,
                    log=directory / f"worker-{index}.log",
                    cwd=ROOT,
                    env=env,
                )
            )
            await self.start_worker(index)
        self.log(
            f"{o.workers} outbox workers -> {self.client_url} (chaos) -> receiver "
            f"{self.gateway_url}; applications on {self.app_db}"
        )

    def ready_file(self, index: int) -> Path:
        return self.directory / f"worker-{index}.ready"

    async def start_worker(self, index: int) -> None:
        ready = self.ready_file(index)
        ready.unlink(missing_ok=True)
        worker = self.senders[index]
        worker.start()

        async def running() -> bool:
            return ready.exists()

        await _until_ready(worker, running)

    async def proxy(self, upstream: str, plan: FaultPlan, side: str) -> ChaosProxy:
        """A chaos proxy in this event loop, its faults logged to ``faults.jsonl``."""
        assert self.fault_log is not None
        # Its patience with what it forwards to is far above the gateway's and the clients'
        # timeouts: a request it holds is only ever given up by the side that sent it.
        proxy = ChaosProxy(
            upstream=upstream,
            plan=plan,
            hooks=[_FaultLog(self.fault_log, side)],
            timeout=60.0,
            hang_max=120.0,
        )
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    async def start_redis(self, directory: Path) -> str:
        """A private redis-server; the store URL (a key prefix of this run's own)."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise ConfigurationError("store = 'redis' needs redis-server on the PATH")
        port = _free_port()
        folder = directory / "redis"
        folder.mkdir()
        command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        # Every write fsynced to the append-only file: a restart keeps every record.
        command += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.redis = _Process("redis-server", command, log=directory / "redis.log")
        self.redis_port = port
        await self.start_redis_process()
        timeout = self.scenario.gateway.store_timeout
        return f"redis://127.0.0.1:{port}/0?prefix=drill:{self.run_id}:&timeout={timeout}"

    async def start_redis_process(self) -> None:
        assert self.redis is not None
        self.redis.start()
        await _until_ready(self.redis, lambda: _redis_pong(self.redis_port))

    async def start_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.start()
        await _until_ready(self.gateway, lambda: _answers(self.ready_url))

    # -- paying --------------------------------------------------------------------------------

    async def pay(self) -> None:
        s = self.scenario
        self.t0 = time.monotonic()
        self.progressed = asyncio.Event()
        self.report_progress()
        if self.outbox:
            self.killer = asyncio.ensure_future(self.kill_workers())
        clients = asyncio.ensure_future(self.run_applications() if self.outbox else self.clients())
        pending: set[asyncio.Future[None]] = {clients}
        pending.update(asyncio.ensure_future(self.event(event)) for event in s.events)
        try:
            while not clients.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not clients:
                        task.result()  # an event that failed (a gateway that did not restart)
            clients.result()
        finally:
            self.seconds = self.elapsed()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def clients(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(self.scenario.clients):
                group.create_task(self.client(index))

    # -- the outbox drill's applications and workers ---------------------------------------------

    async def run_applications(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(self.scenario.clients):
                group.create_task(self.application(index))
        self.done = self.scenario.total  # a killed application's last line is not written
        self.report_progress()

    async def application(self, index: int) -> None:
        """One application, to its last transaction; the first is SIGKILLed once right
        after a COMMIT (``kill_app``) and started again."""
        s, o = self.scenario, self.scenario.outbox
        journal = self.directory / f"app-{index}.journal"
        paused = self.directory / f"app-{index}.paused"
        command = [sys.executable, "-m", "tools.drill.outbox", "app"]
        command += ["--database", str(self.app_db), "--client", str(index)]
        command += ["--transactions", str(s.payments), "--journal", str(journal)]
        command += ["--rollback", repr(o.rollback), "--seed", str(self.seeds["jitter"])]
        command += ["--pace", repr(o.pace)]
        pause = index == 0 and o.kill_app
        if pause:
            after = min(s.payments - 1, int(o.kill_app_after * s.payments))
            command += ["--pause-after", str(after), "--paused", str(paused)]
        process = _Process(
            f"application {index} (tools.drill.outbox app)",
            command,
            log=self.directory / f"app-{index}.log",
            cwd=ROOT,
            env=self.env,
        )
        self.applications.append(process)
        process.start()
        counted = 0
        while True:
            assert process.process is not None
            code = process.process.poll()
            lines = _lines(journal)
            if lines != counted:
                self.done += lines - counted
                counted = lines
                self.report_progress()
            if code is not None:
                if code != 0:
                    raise process.failed(f"exited with {process.exit_status()}")
                return
            if pause and paused.exists():
                process.kill()
                self.app_kills += 1
                line = f"SIGKILL application {index} right after a COMMIT"
                self.fired.append(f"{self.elapsed():6.1f} s  {line}")
                self.log(f"{self.elapsed():.1f} s: {line}; started again")
                process.command = command[: command.index("--pause-after")]
                process.start()
                pause = False
            await asyncio.sleep(0.05)

    async def kill_workers(self) -> None:
        """SIGKILL a worker chosen at random at random moments, and start it again."""
        o = self.scenario.outbox
        rng = random.Random(f"kills:{self.seeds['jitter']}")
        for _ in range(o.worker_kills):
            await asyncio.sleep(o.kill_every * rng.uniform(0.5, 1.5))
            index = rng.randrange(len(self.senders))
            self.down.add(index)
            self.senders[index].kill()
            self.worker_kills += 1
            line = f"SIGKILL outbox worker {index} (down {o.down:g} s)"
            self.fired.append(f"{self.elapsed():6.1f} s  {line}")
            self.log(f"{self.elapsed():.1f} s: {line}")
            await asyncio.sleep(o.down)
            await self.start_worker(index)
            self.down.discard(index)

    async def drain(self) -> None:
        """Wait, up to ``settle`` seconds, until every worker kill is done and no delivery
        is pending or in flight (the chaos still on: what is left goes through it too)."""
        assert self.killer is not None
        deadline = time.monotonic() + self.scenario.settle
        while time.monotonic() < deadline:
            if self.killer.done():
                self.killer.result()  # a worker that did not start again
            for index, worker in enumerate(self.senders):
                if not worker.alive and index not in self.down:
                    raise worker.failed("exited during the run")
            if self.killer.done() and not await asyncio.to_thread(_waiting, self.app_db):
                break
            await asyncio.sleep(0.1)
        self.killer.cancel()
        await asyncio.gather(self.killer, return_exceptions=True)

    def report_progress(self) -> None:
        # Wake whoever waits for a share of payments done, with a fresh event for the next.
        self.progressed.set()
        self.progressed = asyncio.Event()
        if self.on_progress is not None:
            self.on_progress(self.done, self.scenario.total)

    async def client(self, index: int) -> None:
        s = self.scenario
        rng = random.Random(self.seeds["jitter"] * 1000 + index)
        counting = _Counting(httpx.AsyncHTTPTransport(retries=0))
        transport = AsyncResilientTransport(
            counting,
            retry=self.retry,
            budget=RetryBudget.unlimited(),
            hooks=[],
            random=rng,
            # A sender's retries of one event carry its webhook-id: safe to send again.
            idempotency_header="webhook-id" if self.webhooks else "Idempotency-Key",
        )
        async with httpx.AsyncClient(
            transport=transport,
            base_url=self.client_url,
            timeout=s.attempt_timeout,
            headers={"X-API-Key": f"drill-client-{index}"},
            trust_env=False,
        ) as http:
            for n in range(s.payments):
                payment = await self.payment(http, counting, rng, index, n)
                self.payments.append(payment)
                self.done += 1
                self.report_progress()

    async def payment(
        self, http: httpx.AsyncClient, counting: _Counting, rng: random.Random, index: int, n: int
    ) -> Payment:
        """One payment, tried with the same key until a 201, a final answer or the deadline."""
        s = self.scenario
        reference = f"drill-{self.run_id}-{index}-{n}"
        body = {
            "amount": 100 + n % 900,
            "currency": "eur",
            "customer": f"cus_{index}",
            "reference": reference,
        }
        headers = {"Idempotency-Key": reference}
        raw = json.dumps(body).encode()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + s.deadline
        status: int | None = None
        error: str | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    if self.webhooks:
                        response = await http.post(
                            "/charges", content=raw, headers=self.signed(raw, reference)
                        )
                    else:
                        response = await http.post("/charges", json=body, headers=headers)
            except TimeoutError:
                error = "deadline"
                break
            except (httpx.HTTPError, UpstreamError) as exc:
                # A body cut short after the transport handed the response over, or a flow
                # that gave up: the same key is safe to send again.
                error = getattr(exc, "code", None) or type(exc).__name__
                await asyncio.sleep(rng.uniform(0.0, 0.1))
                continue
            status = response.status_code
            charge_id = _charge_id(response) if status == 201 else None
            if charge_id is not None:
                return Payment(
                    reference=reference,
                    client=index,
                    status=status,
                    charge_id=charge_id,
                    attempts=counting.sent[reference],
                    seconds=loop.time() - started,
                    replayed=response.headers.get("idempotent-replayed") == "true",
                )
            code = _code(response)
            error = f"{status} {code}".strip()
            if status not in _RETRY_STATUSES and code not in self.retry.retry_problem_codes:
                break  # a final answer that is not a success (a 422...): the client stops
        return Payment(
            reference=reference,
            client=index,
            status=status,
            charge_id=None,
            attempts=counting.sent[reference],
            seconds=loop.time() - started,
            error=error,
        )

    def signed(self, raw: bytes, reference: str) -> dict[str, str]:
        """The headers of one delivery of the event ``reference``: a webhook sender signs
        each delivery when it sends it (``target = "webhooks"``)."""
        headers = self.scheme.sign(raw, event_id=reference, timestamp=int(time.time()))
        headers["Content-Type"] = "application/json"
        return headers

    # -- events --------------------------------------------------------------------------------

    async def event(self, event: DrillEvent) -> None:
        if event.at is not None:
            await asyncio.sleep(max(0.0, self.t0 + event.at - time.monotonic()))
        else:
            assert event.after is not None
            while self.done < event.after * self.scenario.total:
                await self.progressed.wait()
        self.fired.append(f"{self.elapsed():6.1f} s  {event.describe()}")
        self.log(f"{self.elapsed():.1f} s: {event.describe()}")
        plans = [
            self.client_plan if side == "client" else self.upstream_plan for side in event.proxies
        ]
        if event.action == "pause_chaos":
            for plan in plans:
                plan.pause()
        elif event.action == "resume_chaos":
            for plan in plans:
                plan.resume()
        elif event.action == "flap":
            for cycle in range(1, event.times + 1):
                for plan in plans:
                    plan.resume()
                self.fired.append(f"{self.elapsed():6.1f} s    down ({cycle} of {event.times})")
                await asyncio.sleep(event.down)
                for plan in plans:
                    plan.pause()
                await asyncio.sleep(event.up)
        elif event.action == "restart_gateway":
            assert self.gateway is not None
            self.stopped.add("gateway")
            self.gateway.kill()
            await asyncio.sleep(event.down)
            await self.start_gateway()
            self.stopped.discard("gateway")
            self.log(f"{self.elapsed():.1f} s: gateway back")
        else:
            assert self.redis is not None
            self.stopped.add("redis")
            self.redis.kill()
            await asyncio.sleep(event.down)
            await self.start_redis_process()
            self.stopped.discard("redis")
            self.log(f"{self.elapsed():.1f} s: redis-server back")

    # -- settling and auditing ---------------------------------------------------------------

    async def settle(self) -> None:
        """Stop the faults, bring back what an event left down, let the gateway settle."""
        if self.outbox:
            await self.revive()
            await self.drain()
            for worker in self.senders:
                worker.stop()  # what is delivered is recorded; nothing is left to send
        self.client_plan.pause()
        self.upstream_plan.pause()
        await self.revive()
        # Requests a delay rule still holds may yet reach the upstream.
        await asyncio.sleep(max(1.0, self.scenario.longest_delay() + 0.5))
        deadline = time.monotonic() + self.scenario.settle
        while (await self.unknown_keys()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)

    async def revive(self) -> None:
        """Start again what an event left down (or what died by itself: a finding)."""
        if self.upstream is not None and not self.upstream.alive:
            raise self.upstream.failed("exited during the run")
        for name, process, start in (
            ("redis", self.redis, self.start_redis_process),
            ("gateway", self.gateway, self.start_gateway),
        ):
            if process is None or process.alive:
                continue
            if name not in self.stopped:  # not an event's doing: a crash, and a finding
                line = f"{process.name} exited by itself ({process.exit_status()})"
                self.fired.append(f"{self.elapsed():6.1f} s  {line}")
                self.log(f"{line}; started again for the audit")
            await start()

    async def unknown_keys(self) -> int:
        if self.webhooks:
            return 0  # a receiver releases or reruns an event: never outcome unknown
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
            response = await client.get(
                self.admin_url + "/admin/unknown", params={"limit": "10000"}, headers=headers
            )
        if response.status_code != 200:
            assert self.gateway is not None
            raise self.gateway.failed(f"answered GET /admin/unknown with {response.status_code}")
        return len(response.json()["unknown"])

    async def report(self, *, wall: float) -> DrillReport:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
            upstream_audit = (await client.get(self.ledger_url + "/audit")).json()
        ledger = await asyncio.to_thread(_read_ledger, self.ledger_path)
        booked = sum(len(ids) for ids in ledger.values())
        twice = sorted(ref for ref, ids in ledger.items() if len(ids) > 1)
        if booked != upstream_audit["charges"] or twice != upstream_audit["duplicated_references"]:
            raise DrillError(
                f"the ledger file ({booked} charges, {len(twice)} references booked twice) and "
                f"the upstream's GET /audit ({upstream_audit}) disagree"
            )
        if self.outbox:
            return await self.outbox_report(ledger, wall=wall)
        result = audit(self.payments, ledger, unknown_keys=await self.unknown_keys())
        with (self.directory / "payments.jsonl").open("w") as out:
            for payment in self.payments:
                row = dataclasses.asdict(payment)
                row["booked"] = ledger.get(payment.reference, [])
                out.write(json.dumps(row) + "\n")
        return self._report(
            result,
            attempts=sum(p.attempts for p in self.payments),
            latency=latency(self.payments),
            wall=wall,
            examples=result.examples,
        )

    async def outbox_report(
        self, ledger: Mapping[str, Sequence[str]], *, wall: float
    ) -> DrillReport:
        s = self.scenario
        committed, deliveries, seconds = await asyncio.to_thread(_read_outbox, self.app_db)
        rolled_back = [
            line["id"]
            for index in range(s.clients)
            for line in _journal(self.directory / f"app-{index}.journal")
            if line["outcome"] == "rollback"
        ]
        wire = [
            Wire(
                webhook_id=line.get("webhook_id"),
                event=line.get("event"),
                status=line.get("status"),
                absorbed=bool(line.get("absorbed")),
            )
            for line in _journal(self.directory / "wire.jsonl")
        ]
        result = outbox_audit(
            transactions=s.total,
            committed=committed,
            rolled_back=rolled_back,
            ledger=ledger,
            deliveries=deliveries,
            wire=wire,
            worker_kills=self.worker_kills,
            app_kills=self.app_kills,
        )
        done = set(committed)
        with (self.directory / "charges.jsonl").open("w") as out:
            for charge in sorted({*committed, *rolled_back}):
                state, attempts = deliveries.get(charge, (None, 0))
                row = {
                    "id": charge,
                    "committed": charge in done,
                    "delivery": state,
                    "attempts": attempts,
                    "booked": ledger.get(charge, []),
                }
                out.write(json.dumps(row) + "\n")
        return self._report(
            result.drill_audit(),
            attempts=result.attempts,
            latency=ranks(seconds),
            wall=wall,
            examples=result.examples,
            outbox=result,
        )

    def _report(
        self,
        audit: DrillAudit,
        *,
        attempts: int,
        latency: Mapping[str, float],
        wall: float,
        examples: Mapping[str, Sequence[str]],
        outbox: OutboxAudit | None = None,
    ) -> DrillReport:
        """The report of this run (either target's), its problems' examples logged."""
        s = self.scenario
        report = DrillReport(
            scenario=s.name,
            store=s.store,
            idempotency=s.idempotency,
            clients=s.clients,
            payments=s.payments,
            workers=s.workers,
            seed=s.seed,
            audit=audit,
            attempts=attempts,
            seconds=self.seconds,
            wall=wall,
            faults={
                "client": self.client_plan.counts("kind"),
                "upstream": self.upstream_plan.counts("kind"),
            },
            latency=latency,
            events=tuple(self.fired),
            target=s.target,
            outbox=outbox,
        )
        for problem, references in examples.items():
            self.log(f"{problem}: e.g. {', '.join(references)}")
        return report

    async def aclose(self) -> None:
        for proxy in reversed(self.proxies):
            with contextlib.suppress(Exception):
                await proxy.aclose()
        if self.fault_log is not None:
            self.fault_log.close()
        if self.killer is not None:
            self.killer.cancel()
            await asyncio.gather(self.killer, return_exceptions=True)
        for process in (*self.applications, *self.senders, self.gateway, self.upstream, self.redis):
            if process is not None:
                process.stop()


def _charge_id(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    charge_id = data.get("id") if isinstance(data, dict) else None
    return charge_id if isinstance(charge_id, str) else None


def _code(response: httpx.Response) -> str:
    if "json" not in response.headers.get("content-type", ""):
        return ""
    try:
        data = response.json()
    except ValueError:
        return ""
    return str(data.get("code", "")) if isinstance(data, dict) else ""


def _read_ledger(path: Path | None) -> dict[str, list[str]]:
    """reference -> the ids of the charges booked for it, in booking order."""
    assert path is not None
    ledger: dict[str, list[str]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        for reference, charge_id in db.execute("SELECT reference, id FROM charges ORDER BY rowid"):
            ledger.setdefault(reference, []).append(charge_id)
    return ledger


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as lines:
            return sum(1 for _ in lines)
    except FileNotFoundError:
        return 0


def _journal(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (a line a kill cut short is skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def _waiting(path: Path) -> int:
    """Deliveries pending or in flight in the outbox drill's database."""
    from tools.drill.outbox import TABLE_PREFIX

    with contextlib.closing(sqlite3.connect(path, timeout=30.0)) as db:
        (count,) = db.execute(
            f"SELECT count(*) FROM {TABLE_PREFIX}_deliveries "  # noqa: S608 (our own prefix)
            "WHERE state IN ('pending', 'sending')"
        ).fetchone()
    return int(count)


def _read_outbox(path: Path) -> tuple[list[str], dict[str, tuple[str, int]], list[float]]:
    """The committed charges, each message's delivery (state, attempts), and how long each
    delivered one took from its COMMIT to the record of its delivery."""
    from tools.drill.outbox import ENDPOINT, TABLE_PREFIX

    with contextlib.closing(sqlite3.connect(path, timeout=30.0)) as db:
        committed = [row[0] for row in db.execute("SELECT id FROM charges ORDER BY id")]
        rows = db.execute(
            "SELECT m.id, d.state, d.attempts, d.created_at, d.updated_at "  # noqa: S608
            f"FROM {TABLE_PREFIX}_deliveries d JOIN {TABLE_PREFIX}_messages m ON m.seq = d.seq "
            "WHERE d.endpoint = ?",
            (ENDPOINT,),
        ).fetchall()
    deliveries = {m: (state, attempts) for m, state, attempts, _, _ in rows}
    seconds = [done - made for _, state, _, made, done in rows if state == "delivered"]
    return committed, deliveries, seconds


# -- presenting --------------------------------------------------------------------------------


def drill_table(reports: Sequence[DrillReport]) -> Any:
    """The reports as a ``rich.table.Table``: one column per drill."""
    from rich.table import Table

    table = Table(title="exactly-once drill", show_lines=False)
    table.add_column("", style="bold")
    for r in reports:
        table.add_column(
            f"{r.scenario}\n{r.target + ', ' if r.target != 'gateway' else ''}{r.store}, "
            f"idempotency {'on' if r.idempotency else 'off'}",
            justify="right",
        )

    def bad(value: int) -> str:
        return f"[bold red]{value}[/]" if value else "[green]0[/]"

    def row(name: str, values: Sequence[str]) -> None:
        table.add_row(name, *values)

    row("payments expected", [f"{r.audit.expected} ({r.clients} x {r.payments})" for r in reports])
    row("told 201", [str(r.audit.succeeded) for r in reports])
    row("  of which replays", [str(r.audit.replayed) for r in reports])
    row("charges recorded", [str(r.audit.recorded) for r in reports])
    row("duplicated", [bad(r.audit.duplicated) for r in reports])
    row("  extra charges", [str(r.audit.extra_charges) for r in reports])
    row("missing", [bad(r.audit.missing) for r in reports])
    row("  lost (201, not booked)", [str(r.audit.lost) for r in reports])
    row("  unfinished (no 201)", [str(r.audit.unfinished) for r in reports])
    row("  unfinished but booked", [str(r.audit.unfinished_booked) for r in reports])
    row("mismatched charge id", [bad(r.audit.mismatched) for r in reports])
    row("stray charges", [bad(r.audit.stray) for r in reports])
    row("unknown keys left", [str(r.audit.unknown_keys) for r in reports])
    row("requests sent", [str(r.attempts) for r in reports])
    row("retries per payment", [f"{r.retries_per_payment:.2f}" for r in reports])
    for side in ("client", "upstream"):
        row(f"faults, {side} side", [_faults(r.faults.get(side, {})) for r in reports])
    if any(r.outbox is not None for r in reports):
        _outbox_rows(row, bad, reports)
    if any(r.saga is not None for r in reports):
        _saga_rows(row, bad, reports)
    row("events", ["\n".join(r.events) or "-" for r in reports])
    row("payments/s", [f"{r.throughput:.1f}" for r in reports])
    row(
        "payment time p50 / p99 / max",
        [
            " / ".join(f"{r.latency.get(q, 0):.2f}" for q in ("p50", "p99", "max")) + " s"
            for r in reports
        ],
    )
    row("payment phase", [f"{r.seconds:.1f} s" for r in reports])
    row("wall time", [f"{r.wall:.1f} s" for r in reports])
    row("verdict", ["[bold green]PASS[/]" if r.ok else "[bold red]FAIL[/]" for r in reports])
    return table


def _outbox_rows(
    row: Callable[[str, Sequence[str]], None],
    bad: Callable[[int], str],
    reports: Sequence[DrillReport],
) -> None:
    """The outbox drill's own rows (a dash in the other targets' columns)."""

    def each(show: Callable[[OutboxAudit], str]) -> list[str]:
        return [show(r.outbox) if r.outbox is not None else "-" for r in reports]

    row("outbox: transactions", each(lambda o: str(o.transactions)))
    row("  committed", each(lambda o: str(o.committed)))
    row("  rolled back", each(lambda o: str(o.rolled_back)))
    row("  worker kills / app kills", each(lambda o: f"{o.worker_kills} / {o.app_kills}"))
    row("  deliveries attempted", each(lambda o: str(o.attempts)))
    row("  requests at the receiver", each(lambda o: str(o.requests)))
    row("  duplicates absorbed", each(lambda o: str(o.absorbed)))
    for name in OutboxAudit.PROBLEMS:
        row(f"  {name.replace('_', ' ')}", each(_problem(name, bad)))


def _saga_rows(
    row: Callable[[str, Sequence[str]], None],
    bad: Callable[[int], str],
    reports: Sequence[DrillReport],
) -> None:
    """The saga drill's own rows (a dash in the other targets' columns)."""

    def each(show: Callable[[SagaAudit], str]) -> list[str]:
        return [show(r.saga) if r.saga is not None else "-" for r in reports]

    row("sagas: orders", each(lambda g: str(g.orders)))
    row("  completed / compensated", each(lambda g: f"{g.completed} / {g.compensated}"))
    row(
        "  charges / refunds / shipments",
        each(lambda g: f"{g.charges} / {g.refunds} / {g.shipments}"),
    )
    row("  worker kills", each(lambda g: str(g.worker_kills)))
    row("  payments faults", [_faults(r.faults.get("payments", {})) for r in reports])
    row("  needs attention", each(lambda g: str(g.needs_attention)))
    for name in SagaAudit.PROBLEMS:
        row(f"  {name.replace('_', ' ')}", each(_saga_problem(name, bad)))


def _saga_problem(name: str, bad: Callable[[int], str]) -> Callable[[SagaAudit], str]:
    return lambda g: bad(getattr(g, name))


def _problem(name: str, bad: Callable[[int], str]) -> Callable[[OutboxAudit], str]:
    return lambda o: bad(getattr(o, name))


def _faults(kinds: Mapping[str, int]) -> str:
    if not kinds:
        return "0"
    return f"{sum(kinds.values())}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
