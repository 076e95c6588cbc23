"""Shared by the edge's tests (NGINX, HAProxy): real processes on 127.0.0.1 and clients.

``RecordingUpstream`` is the API behind the edge (in this process, on a free port): it
answers every request and records what it saw, so a test can tell which requests got
through. ``surefoot_decide`` runs ``surefoot decide`` on a policy file (``decide_config``),
``nginx_edge`` runs Debian's ``nginx`` on ``examples/edge/nginx.conf.template``;
``store_url`` names a test's decision store (SQLite, or Redis under a prefix of its own).
``clients`` gives httpx clients that connect from chosen loopback addresses (127.0.0.0/8 is
all local on Linux), so one test has several client addresses without a network.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from tests.gateway._gateway_helpers import ROOT, Server, wait_until

from _services import service_url
from _support import free_port

NGINX_TEMPLATE = ROOT / "examples" / "edge" / "nginx.conf.template"
#: Where the decision service finds the edges (its [server] trusted_proxies).
EDGE_ADDRESS = "127.0.0.1"


def binary(name: str, *, package: str) -> str:
    """The path of a Debian program the test needs (``/usr/sbin`` is searched too: it is
    not on an unprivileged PATH): skipped when it is not installed, a failure instead when
    ``SUREFOOT_REQUIRE_SERVICES=1`` (as in CI, whose ``.ci/run`` installs it)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed (Debian package {package})"
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


# -- the upstream ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, list[str]]

    def header(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])


@dataclass
class RecordingUpstream:
    """An HTTP API on a free port of 127.0.0.1 that records every request.

    It answers JSON ``{"path", "n"}`` with 200 (201 for a POST); a path ending in
    ``/status/CODE`` answers CODE.
    """

    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    @contextlib.contextmanager
    def running(self) -> Iterator[RecordingUpstream]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                headers: dict[str, list[str]] = {}
                for name, value in self.headers.items():
                    headers.setdefault(name.lower(), []).append(value)
                upstream.seen.append(Seen(self.command, self.path, headers))
                status = 201 if self.command == "POST" else 200
                if "/status/" in self.path:
                    status = int(self.path.rpartition("/status/")[2])
                body = json.dumps({"path": self.path, "n": len(upstream.seen)}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


# -- the decision service ----------------------------------------------------------------


def decide_config(
    store: str,
    policies: str,
    *,
    trusted: str = EDGE_ADDRESS,
    allow_method_override: bool = False,
    forwarded_header: str = "x-forwarded-for",
) -> str:
    """A policy file for ``surefoot decide``: the edges at ``trusted`` are trusted proxies;
    no per-address ceiling, so the only limits are ``policies``'.

    Its [upstream] is required by the file's schema and never called by the service.
    """
    override = "true" if allow_method_override else "false"
    return (
        f'[server]\ntrusted_proxies = ["{trusted}"]\naccess_log = false\n'
        f'allow_method_override = {override}\nforwarded_header = "{forwarded_header}"\n\n'
        '[upstream]\nurl = "http://127.0.0.1:9"\n\n'
        f'[stores]\ndefault = "{store}"\n\n'
        "[identity]\naddress_limits = []\n\n"
        "[admin]\nenabled = false\n\n" + policies
    )


@dataclass
class DecideProcess:
    """``surefoot decide`` on a free port, or on a Unix socket (``socket``): its server and
    address as NGINX names it (``host:port``, or ``unix:PATH``)."""

    server: Server
    address: str
    socket: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def wait_ready(self) -> None:
        sock = self.socket
        if sock is None:
            self.server.wait_ready(self.url + "/readyz")
            return

        def ready() -> bool:
            if self.server.process.poll() is not None:
                raise AssertionError(f"surefoot decide exited:\n{self.server.tail()}")
            if not unix_listening(sock):
                return False
            with unix_client(sock) as http:
                return http.get("/readyz").status_code == 200

        wait_until(ready, timeout=30, what=f"{self.address}/readyz ({self.server.log})")

    def stop(self) -> None:
        self.server.stop()
        if self.socket is not None:
            shutil.rmtree(self.socket.parent, ignore_errors=True)


def unix_listening(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket ``path`` (a plain
    connection: httpx leaves a socket open when one is refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(str(path)) == 0


def unix_client(path: Path) -> httpx.Client:
    """A client of the service listening on the Unix socket ``path``."""
    transport = httpx.HTTPTransport(uds=str(path))
    return httpx.Client(transport=transport, base_url="http://decide", timeout=10)


def store_url(kind: str, tmp: Path) -> str:
    """The decision store of a test: ``"sqlite"`` (a file in ``tmp``) or ``"redis"`` (the
    real server, skipped or failed as ``service_url`` says when it is absent), under a
    key prefix of the test's own, so nothing an earlier run left is shared."""
    if kind == "sqlite":
        return f"sqlite:///{tmp}/decisions.db"
    parts = urlsplit(service_url("redis"))
    prefix = f"prefix=edge-test-{uuid.uuid4().hex}:"
    return urlunsplit(parts._replace(query=f"{parts.query}&{prefix}" if parts.query else prefix))


@contextlib.contextmanager
def decide_running(*services: DecideProcess) -> Iterator[None]:
    """Wait for every decision service (started together); stop them all on exit."""
    try:
        for service in services:
            service.wait_ready()
        yield
    finally:
        for service in services:
            service.stop()


def surefoot_decide(
    tmp: Path, config: str, *, name: str = "decide", unix: bool = False
) -> DecideProcess:
    """``surefoot decide`` on the TOML text ``config`` (written to ``tmp``), not yet ready;
    with ``unix``, on a Unix socket in a directory of its own that NGINX's workers (nobody,
    when the tests run as root) may enter, unlike ``tmp``."""
    path = tmp / f"{name}.toml"
    path.write_text(config)
    command = [str(Path(sys.executable).with_name("surefoot")), "decide", "--config", str(path)]
    if unix:
        folder = Path(tempfile.mkdtemp(prefix="surefoot-decide-"))
        folder.chmod(0o755)
        sock = folder / "decide.sock"
        command += ["--uds", str(sock)]
    else:
        port = free_port()
        command += ["--port", str(port)]
    server = Server(command, log=tmp / f"{name}.log", env={"TMPDIR": str(tmp)})
    if unix:
        return DecideProcess(server, f"unix:{sock}", sock)
    return DecideProcess(server, f"127.0.0.1:{port}")


# -- NGINX ------------------------------------------------------------------------------------


def nginx_config(*, listen: str, decide: str, upstream: str, gateway: str, decide_down: str) -> str:
    """``examples/edge/nginx.conf.template`` with its placeholders filled."""
    assert decide_down in ("fail_open", "fail_closed")
    text = NGINX_TEMPLATE.read_text()
    values = {
        "LISTEN": listen,
        "DECIDE": decide,
        "UPSTREAM": upstream,
        "GATEWAY": gateway,
        "DECIDE_DOWN": decide_down,
    }
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in text, "a placeholder of the template was left unfilled"
    return text


@dataclass
class NginxProcess:
    """One ``nginx`` (master and workers) on a free port, its files under ``prefix``."""

    server: Server
    prefix: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def nginx_command(prefix: Path) -> list[str]:
    nginx = binary("nginx", package="nginx")
    # The compiled-in error log is stderr (Debian); the config moves it under the prefix.
    return [nginx, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]


@contextlib.contextmanager
def nginx_edge(
    tmp: Path,
    *,
    decide: str,
    upstream: str,
    gateway: str | None = None,
    decide_down: str = "fail_closed",
    name: str = "nginx",
) -> Iterator[NginxProcess]:
    """A running NGINX in front of ``upstream`` asking the decision service at ``decide``
    (host:port each), stopped on exit."""
    prefix = tmp / name
    prefix.mkdir()
    port = free_port()
    config = nginx_config(
        listen=f"127.0.0.1:{port}",
        decide=decide,
        upstream=upstream,
        gateway=gateway or upstream,
        decide_down=decide_down,
    )
    (prefix / "nginx.conf").write_text(config)
    server = Server(nginx_command(prefix), log=tmp / f"{name}.log")
    edge = NginxProcess(server, prefix, port)
    try:
        wait_listening(server, port)
        yield edge
    finally:
        server.stop()


def wait_listening(server: Server, port: int) -> None:
    """Wait until ``server`` accepts connections on ``port`` (a connection, not a request:
    a request through an edge would be counted by the rate limits under test)."""

    def listening() -> bool:
        if server.process.poll() is not None:
            raise AssertionError(
                f"the server exited ({server.process.returncode}):\n{server.tail()}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(listening, timeout=30, what=f"port {port} ({server.log})")


# -- clients ------------------------------------------------------------------------------


def loopback_addresses(count: int) -> list[str]:
    """``count`` distinct random addresses of 127.0.0.0/8 other than 127.0.0.1 (the edges'),
    fresh for each test, so counters a shared store kept from an earlier run never apply."""
    chosen: set[str] = set()
    while len(chosen) < count:
        chosen.add(
            f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        )
    return sorted(chosen)


@contextlib.contextmanager
def client(
    base_url: str, *, address: str, headers: Mapping[str, str] | None = None
) -> Iterator[httpx.Client]:
    """An httpx client for ``base_url`` whose connections come from ``address``."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, base_url=base_url, headers=headers, timeout=10) as http:
        yield http
