"""``decide``: run the decision service with uvicorn (``surefoot decide``), in one process
or several sharing one socket.

Theory of operation:
1. The policy file is validated first; an invalid file stops ``decide`` before anything is
   bound, with every problem listed. A rate-limit store that workers cannot share
   (``memory://``) is logged at WARNING. surefoot's events are logged on stderr from
   ``[server] log_level`` up, beside uvicorn's lines.
2. The HTTP server is the gateway's head-only one (``surefoot.gateway.head_only_protocol``):
   the head limits and deadlines of ``[server]`` (``max_header_size``, ``max_headers_size``,
   ``max_header_count``, ``header_timeout``, ``body_timeout``, ``keepalive_timeout``) hold
   for the decision service as for ``surefoot serve``, a refusal is a problem document, and
   ``DecisionApp`` is called without uvicorn's request cycle (a decision reads no body).
3. One process: a uvicorn server, and ``SIGHUP`` reloads the policy file in place
   (``DecisionApp.reload``; an invalid file is logged and the one in force stays).
4. Several: uvicorn's supervisor binds the socket once and starts the workers, each
   building its ``DecisionApp`` from the file (``_app``, told the file by
   ``SUREFOOT_DECIDE_CONFIG``); it restarts a worker that dies, and on ``SIGHUP`` replaces
   the workers one by one, each new one reading the file again, so counters (in the
   shared store) carry on. ``SIGINT`` / ``SIGTERM`` stop every process.
5. Each process collects its cyclic garbage less often than Python does by default
   (``surefoot._heap``).
6. On a Unix socket (``uds``), a socket file that no process listens on (a service gone
   without its cleanup) is removed before binding; one that a process listens on, or a
   file of another kind, stays and binding fails. The file is removed when ``decide``
   returns (``SIGINT``; after ``SIGTERM`` uvicorn ends the process first).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from typing import Any

from surefoot._heap import collect_less_often
from surefoot.errors import ConfigurationError
from surefoot.gateway import head_only_protocol, load_config

__all__ = ["decide"]

_log = logging.getLogger("surefoot.edge")
#: The port ``surefoot decide`` listens on by default.
DEFAULT_PORT = 8090
#: How a worker process learns the policy file (set by ``decide`` before it starts them).
CONFIG_VARIABLE = "SUREFOOT_DECIDE_CONFIG"
#: How a worker process learns how many processes share the store.
WORKERS_VARIABLE = "SUREFOOT_DECIDE_WORKERS"


def decide(
    config_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    uds: str | None = None,
    workers: int | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the decision service for the policy file ``config_path`` until SIGINT or SIGTERM.

    Args:
        config_path: the gateway's policy file.
        host, port: where to listen (port 0: any free port).
        uds: a Unix socket's path to listen on instead (``host`` and ``port`` unused).
        workers: worker processes (default: ``[server] workers``).
        ready: called with a one-line summary once the file is valid and the socket bound.

    Raises:
        ConfigurationError: the file is invalid, or the address cannot be listened on
            (nothing was started).
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = load_config(config_path)
    root = config.root
    workers = workers or root.server.workers
    os.environ[CONFIG_VARIABLE] = os.path.abspath(config_path)
    os.environ[WORKERS_VARIABLE] = str(workers)
    uv_config = uvicorn.Config(
        "surefoot.edge._serve:_app",
        factory=True,
        host=host,
        port=port,
        uds=uds,
        workers=workers,
        # The gateway's head-only HTTP server: [server]'s head limits and deadlines, as for
        # serve (by name: a worker process imports it).
        http="surefoot.edge._serve:_protocol",
        ws="none",  # upgrades are refused by the protocol
        lifespan="on",
        access_log=False,
        log_config=_log_config(root.server.log_level),
        timeout_graceful_shutdown=int(root.server.shutdown_timeout) or None,
        server_header=False,
        proxy_headers=False,  # forwarding headers are believed from trusted_proxies only
    )
    if uds is not None:
        _clear_stale(uds)
    try:
        sock = uv_config.bind_socket()
    except SystemExit:  # uvicorn's way to say it cannot bind; it logged why
        where = f"unix:{uds}" if uds is not None else f"{host}:{port}"
        raise ConfigurationError(f"cannot listen on {where}") from None
    if uds is None:
        host, port = sock.getsockname()[:2]
        endpoint = f"http://{host}:{port}/decide"
    else:
        endpoint = f"/decide on unix:{uds}"
    policies = len(config.rate_limit_policies)
    if ready is not None:
        ready(
            f"surefoot decide: {endpoint}; {policies} rate-limit "
            f"polic{'ies' if policies != 1 else 'y'}; {workers} worker{'s' if workers > 1 else ''}"
        )
    url = config.store_url(root.rate_limit.store)
    if workers > 1 and url.partition(":")[0] == "memory":
        _log.warning(
            "rate_limit.store is memory://: each of the %d workers counts alone, so together "
            "they admit up to %d times each limit; use sqlite:/// or redis://",
            workers,
            workers,
        )
    try:
        if workers > 1:
            Multiprocess(uv_config, sockets=[sock]).run()
        else:
            uvicorn.Server(uv_config).run(sockets=[sock])
    finally:
        if uds is not None:
            with contextlib.suppress(OSError):
                os.unlink(uds)


def _clear_stale(path: str) -> None:
    """Remove the socket file a service that is gone left at ``path``; a socket some
    process listens on, or a file of another kind, stays (binding then fails)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except OSError:  # nothing there, or not ours to look at: binding says why
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


#: This process's HTTP protocol: the gateway's head-only one, serving the app ``_app`` built
#: with the ``[server]`` limits of its file (uvicorn loads the app before it accepts a
#: connection).
_protocols: list[Callable[..., asyncio.Protocol]] = []


def _protocol(*args: Any, **kwargs: Any) -> asyncio.Protocol:
    """The HTTP protocol of a connection (uvicorn's ``http``, imported by name in each
    process, whose configuration is pickled for the workers)."""
    return _protocols[-1](*args, **kwargs)


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, and surefoot's events from ``level`` up on stderr (each worker
    applies it as it starts)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["surefoot"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
    }
    config["handlers"]["surefoot"] = {
        "formatter": "surefoot",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["surefoot"] = {
        "handlers": ["surefoot"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def _app() -> object:
    """A worker's app (uvicorn's factory): the ``DecisionApp`` of the file ``decide`` named;
    in a single process, ``SIGHUP`` reloads it."""
    from surefoot.edge._decide import DecisionApp

    path = os.environ[CONFIG_VARIABLE]
    workers = int(os.environ.get(WORKERS_VARIABLE, "1"))
    config = load_config(path)
    app = DecisionApp(config, config_path=path, workers=workers)
    _protocols[:] = [head_only_protocol(config.root.server.limits(), app)]
    collect_less_often()
    if workers == 1:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            try:
                await app.reload()
            except ConfigurationError as exc:
                _log.error("reload refused, the configuration in force stays: %s", exc)

        def on_hangup() -> None:
            task = loop.create_task(reload())
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    return app
