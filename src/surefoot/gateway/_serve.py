"""``serve``: run the gateway with uvicorn, in one process or several sharing the sockets.

Theory of operation:
1. The policy file is validated first, and the upstream app (``upstream.app``) imported;
   an invalid file or an app that cannot be imported stops ``serve`` before anything is
   bound, with every problem listed.
   With ``[webhooks.send]``, each worker creates the outbox's tables if they are missing
   and runs its delivery tasks from its start to its shutdown (``_outbox.OutboxRunner``);
   a database it cannot reach fails the worker's start (uvicorn's lifespan).
   A store that other callers or workers can be hurt through (``memory://``: see
   ``GatewayConfig.store_warnings``) is logged at WARNING once the sockets are bound.
2. The listening sockets (the proxy's and the admin API's) are bound once, by the first
   process, and inherited by every worker, so all workers accept on the same ports. Each
   worker runs one uvicorn server over both sockets; a request is sent to the admin API
   when it arrived on the admin socket's port, else to the gateway.
3. ``SIGHUP`` reloads the policy file without dropping a request (``Gateway.reload``).
   With several workers, the supervisor passes ``SIGHUP`` on to every worker, and a
   worker that reloaded through ``POST /admin/reload`` signals the supervisor, which
   does the same (a worker that already has the file skips it: the file is unchanged).
4. The supervisor restarts a worker that dies (with a growing pause if it keeps dying),
   and on ``SIGINT`` / ``SIGTERM`` stops them all, each finishing its requests first.
5. With several workers, Prometheus metrics are shared through a directory
   (``PROMETHEUS_MULTIPROC_DIR``), so ``/metrics`` on any worker shows the sum.
6. Each worker collects its cyclic garbage less often than Python does by default
   (``surefoot._heap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from typing import Any

from surefoot._asgi import Receive, Scope, Send
from surefoot._heap import collect_less_often
from surefoot.errors import ConfigurationError
from surefoot.gateway._accesslog import ACCESS_LOGGER, JsonFormatter
from surefoot.gateway._config import load_config
from surefoot.metrics import mark_worker_dead

__all__ = ["serve"]

_log = logging.getLogger("surefoot.gateway")


def serve(
    config_path: str,
    *,
    host: str | None = None,
    port: int | None = None,
    admin_port: int | None = None,
    workers: int | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the gateway described by ``config_path`` until SIGINT or SIGTERM.

    Args:
        config_path: the policy file.
        host, port, admin_port, workers: override the file's ``[server]`` and ``[admin]``.
        ready: called with a one-line summary once the sockets are bound.

    Raises:
        ConfigurationError: the file is invalid, or an address cannot be listened on
            (nothing was started).
    """
    config = load_config(config_path)
    root = config.root
    if root.upstream.app is not None:
        from surefoot.gateway._gateway import _import_app

        _import_app(root.upstream.app)  # each worker imports it again; this one says why not
    workers = workers or root.server.workers
    main = _bind(host or root.server.host, root.server.port if port is None else port)
    admin = None
    if root.admin.enabled:
        try:
            admin = _bind(root.admin.host, root.admin.port if admin_port is None else admin_port)
        except ConfigurationError:
            main.close()
            raise
    summary = f"surefoot serve: http://{_address(main)} -> {config.upstream_label}"
    if admin is not None:
        summary += f"; admin http://{_address(admin)}"
    summary += f"; {workers} worker{'s' if workers > 1 else ''}"
    if config.sender is not None:
        tasks = config.sender.workers
        summary += (
            f"; webhooks sent by {tasks} task{'s' if tasks != 1 else ''} per worker"
            if tasks
            else "; webhooks sent by `surefoot webhooks worker` (workers = 0)"
        )
    if ready is not None:
        ready(summary)
    _configure_logging(root.server.log_level)  # this process's lines too (the supervisor's)
    for warning in config.store_warnings(workers):
        _log.warning(warning)
    if workers == 1:
        _worker(config_path, main, admin, workers, None)
        return
    metrics_dir = tempfile.mkdtemp(prefix="surefoot-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    _Supervisor(config_path, main, admin, workers, metrics_dir).run()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that workers inherit.

    Raises:
        ConfigurationError: the address cannot be listened on, named in the message
            (``cannot listen on 127.0.0.1:8080: address already in use``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio: TCP_NODELAY
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = exc.strerror or str(exc)
        raise ConfigurationError(
            f"cannot listen on {address}: {reason[:1].lower()}{reason[1:]}"
        ) from exc
    sock.set_inheritable(True)
    return sock


def _listening(sock: socket.socket) -> dict[str, Any]:
    """Where ``sock`` listens, as ``[server]`` and ``[admin]`` write it."""
    host, port = sock.getsockname()[:2]
    return {"host": host, "port": port}


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Supervisor:
    """Starts ``workers`` processes, restarts those that die, forwards SIGHUP."""

    def __init__(
        self,
        config_path: str,
        main: socket.socket,
        admin: socket.socket | None,
        workers: int,
        metrics_dir: str,
    ) -> None:
        self.args = (config_path, main, admin, workers, metrics_dir)
        self.count = workers
        self.metrics_dir = metrics_dir
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[SpawnProcess] = []
        self.stopping = False
        self.failures = 0

    def start_one(self) -> SpawnProcess:
        process = self.context.Process(target=_worker, args=self.args, daemon=False)
        process.start()
        return process

    def run(self) -> None:
        signal.signal(signal.SIGHUP, self._forward)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        self.processes = [self.start_one() for _ in range(self.count)]
        while not self.stopping:
            time.sleep(0.2)
            for index, process in enumerate(self.processes):
                if process.is_alive() or self.stopping:
                    continue
                if process.pid is not None:
                    mark_worker_dead(process.pid, multiprocess_dir=self.metrics_dir)
                self.failures += 1
                _log.warning(
                    "worker %s exited (%s); starting another", process.pid, process.exitcode
                )
                time.sleep(min(5.0, 0.1 * 2 ** min(self.failures, 6)))
                self.processes[index] = self.start_one()
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.join()

    def _forward(self, signum: int, frame: Any) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True


class _Root:
    """Sends a request to the admin API or to the gateway, by the port it arrived on."""

    def __init__(self, gateway: Any, admin: Any, admin_port: int | None) -> None:
        self.gateway = gateway
        self.admin = admin
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.admin is not None:
            server = scope.get("server")
            if server is not None and server[1] == self.admin_port:
                await self.admin(scope, receive, send)
                return
        await self.gateway(scope, receive, send)


def _worker(
    config_path: str,
    main: socket.socket,
    admin: socket.socket | None,
    workers: int,
    metrics_dir: str | None,
) -> None:
    """One gateway process: uvicorn over both sockets, SIGHUP reloads."""
    import uvicorn

    from surefoot.gateway._gateway import Gateway
    from surefoot.gateway._metrics import GatewayMetrics
    from surefoot.gateway._server import bounded_protocol
    from surefoot.gateway.admin import AdminApp, signal_supervisor

    config = load_config(config_path)
    _configure_logging(config.root.server.log_level)
    metrics = GatewayMetrics(multiprocess_dir=metrics_dir)
    gateway = Gateway(config, config_path=config_path, metrics=metrics, workers=workers)
    on_reload = signal_supervisor if metrics_dir is not None else None
    admin_app = None
    if admin is not None:
        running = {"server": _listening(main) | {"workers": workers}, "admin": _listening(admin)}
        admin_app = AdminApp(gateway, on_reload=on_reload, running=running)
    admin_port = admin.getsockname()[1] if admin is not None else None
    root = _Root(gateway, admin_app, admin_port)
    uv_config = uvicorn.Config(
        root,
        http=bounded_protocol(config.root.server.limits()),
        ws="none",  # upgrades are refused by the protocol (surefoot.gateway._head, Rule 3)
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(config.root.server.shutdown_timeout) or None,
        server_header=False,
        proxy_headers=False,  # the Gateway believes X-Forwarded-For from trusted_proxies only
    )
    server = uvicorn.Server(uv_config)
    collect_less_often()

    async def main_loop() -> None:
        loop = asyncio.get_running_loop()

        def reload() -> None:
            task = loop.create_task(_reload(gateway))
            _pending.add(task)
            task.add_done_callback(_pending.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        sockets = [main] if admin is None else [main, admin]
        await server.serve(sockets=sockets)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main_loop())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (uvicorn[standard] brings it), as uvicorn does."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - part of uvicorn[standard]
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


_pending: set[asyncio.Task[None]] = set()


async def _reload(gateway: Any) -> None:
    from surefoot.errors import ConfigurationError

    with contextlib.suppress(ConfigurationError):  # ConfigRefused is logged; the old one stays
        await gateway.reload()


def _configure_logging(level: str) -> None:
    """JSON lines on stderr: surefoot's events from ``level`` up, access lines, uvicorn's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name, threshold in (
        ("surefoot", level.upper()),
        (ACCESS_LOGGER, "INFO"),  # switched off by [server] access_log, not by the level
        ("uvicorn", "INFO"),
        ("uvicorn.error", "INFO"),
    ):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(threshold)
        logger.propagate = False
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _CutResponse) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_CutResponse())


class _CutResponse(logging.Filter):
    """uvicorn's ERROR for an app that returned mid-response, lowered to INFO.

    The gateway returns mid-response on purpose (ASGI has no other way to cut a
    connection): when ``total_timeout`` runs out while a body streams, when the upstream
    breaks mid-body, or when the client stops reading. Each of those is already an event of
    the gateway's own (``UpstreamFailed``) and a line in the access log; none is a server fault.
    """

    MESSAGE = "ASGI callable returned without completing response."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage() == self.MESSAGE:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "response cut before its end (the gateway closed it)", ()
        return True
