"""Constants and small helpers shared by the test modules (fixtures live in conftest.py).

Imported as ``from _support import T0`` (``tests/`` is on the path, as for ``_services``),
also by the worker modules that tests start in other processes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surefoot.errors import StoreUnavailable
from surefoot.events import Event

if TYPE_CHECKING:
    import httpx

#: The tests' "now": 2023-11-14 22:13:20 UTC, 20 s into a minute, 6400 s before midnight
#: (``ManualClock``'s default start).
T0 = 1_700_000_000.0

#: A secret carried by store failures (``leaky_store_error``): no response may show it.
SECRET = "hunter2@10.0.0.7"


def leaky_store_error() -> StoreUnavailable:
    """A store failure as a careless driver reports it, with ``SECRET`` in its message, its
    fields and its cause (a ``ConnectionError``): ``FlakyStore(store, error=leaky_store_error)``."""
    error = StoreUnavailable(f"connect to {SECRET} refused", retry_after=1, host=SECRET)
    error.__cause__ = ConnectionError(f"connect to {SECRET} refused")
    return error


def store_error(cause: BaseException) -> Callable[[], StoreUnavailable]:
    """What a store raises when its driver fails with ``cause``: ``StoreUnavailable`` (retry
    in 1 s) from ``cause``, for ``FlakyStore(store, error=store_error(OSError("disk full")))``."""

    def error() -> StoreUnavailable:
        failure = StoreUnavailable(retry_after=1)
        failure.__cause__ = cause
        return failure

    return error


def of(events: list[Event], cls: type[Any]) -> list[Any]:
    """The events of class ``cls``, in order."""
    return [e for e in events if isinstance(e, cls)]


def free_port() -> int:
    """A TCP port nobody listens on right now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose listener's accept queue is full: a new connection's SYN is dropped,
    so connecting waits until the connecting side gives up (an unreachable host)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        queued: list[socket.socket] = []
        try:
            for _ in range(8):  # until the queue is full (its size varies by kernel)
                sock = socket.socket()
                queued.append(sock)
                sock.settimeout(0.3)
                try:
                    sock.connect(("127.0.0.1", port))
                except OSError:
                    break
            yield port
        finally:
            for sock in queued:
                sock.close()


def public_event_types() -> list[type[Event]]:
    """Every event class a public package exports (for a hook's ``wants``)."""
    import importlib

    found: dict[str, type[Event]] = {}
    for package in (
        "idempotency",
        "ratelimit",
        "storage",
        "client",
        "gateway",
        "chaos",
        "webhooks",
        "outbox",
        "saga",
        "abuse",
        "contracts",
    ):
        module = importlib.import_module(f"surefoot.{package}")
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, Event):
                found[value.__name__] = value
    return list(found.values())


# -- worker processes (tests/*/_*_workers.py) and their parents --------------------------

#: Seconds a wait on another process may last before the test fails instead of hanging.
GUARD = 30.0


def forked_child() -> None:
    """Call first in a process forked from pytest's: it inherits pytest's "warnings are
    errors", and a warning coverage gives as the child exits (after its work succeeded)
    would end it with exit code 1 and no traceback."""
    warnings.simplefilter("default")


#: Worker processes start with "spawn": a fresh interpreter, as a real deployment's.
SPAWN = multiprocessing.get_context("spawn")


def record_execution(ledger: Path, who: str, key: str) -> None:
    """Append one execution to ``ledger``: one short ``O_APPEND`` write, so lines from
    several processes never interleave and a line survives its writer being killed."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{who} {key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def read_ledger(ledger: Path) -> list[tuple[str, str]]:
    """The (who, key) of each execution ``record_execution`` wrote, in order."""
    if not ledger.exists():
        return []
    return [(who, key) for who, key, _ in map(str.split, ledger.read_text().splitlines())]


def problem_code(response: httpx.Response) -> str | None:
    """The catalogue code of a problem answer, else None."""
    if response.headers.get("content-type") != "application/problem+json":
        return None
    code: str = response.json()["code"]
    return code


def write_result(path: Path, result: object) -> None:
    """Write ``result`` as JSON, whole or not at all (for the parent to read)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)


def join_all(processes: list[BaseProcess]) -> None:
    """Wait for every process (at most ``GUARD`` each); each must have exited with 0."""
    for process in processes:
        process.join(GUARD)
    assert [p.exitcode for p in processes] == [0] * len(processes)


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free port of 127.0.0.1 by a thread: its URL; stopped after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def gunicorn(
    app: str, *, folder: Path, env: dict[str, str], ready: str, log: Path
) -> Iterator[str]:
    """Real gunicorn, 4 sync worker processes, serving ``app`` (``module:callable``, found
    from ``folder``) with ``env`` added to this environment, its output in ``log``; its base
    URL once ``ready`` answers with any status."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--workers", "4", "--worker-class", "sync"]
    command += ["--bind", f"127.0.0.1:{port}", "--chdir", str(folder), app]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + GUARD
        while True:  # until it answers; a failure guard, not a wait for time
            try:
                with urllib.request.urlopen(f"{base}{ready}", timeout=1):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(GUARD)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait(GUARD)


def storm(
    client: Callable[..., None],
    base: str,
    method: str,
    path: str,
    folder: Path,
    *,
    clients: int,
    each: int,
) -> list[list[Any]]:
    """``clients`` spawned processes each send ``each`` requests through ``client(base,
    method, path, each, result_file)``; every answer they wrote, in one list."""
    name = path.strip("/").replace("/", "-")
    results = [folder / f"{method}-{name}-{i}.json" for i in range(clients)]
    processes = [
        SPAWN.Process(target=client, args=(base, method, path, each, str(result)))
        for result in results
    ]
    for process in processes:
        process.start()
    join_all(processes)
    out: list[list[Any]] = []
    for result in results:
        out += json.loads(result.read_text())
    return out
