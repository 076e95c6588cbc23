"""Shared by the gateway's tests: in-process upstreams and gateways, and real processes.

In process: ``EchoUpstream`` answers what it was sent (and can hold requests until told),
``running`` builds a ``Gateway`` (and its ``AdminApp``) over an httpx ``ASGITransport``.
Real sockets: ``Server`` runs one process (the legacy upstream or ``surefoot serve``) on
a free port and stops it; ``wait_until`` polls with a deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from _support import free_port
from surefoot._asgi import Receive, Scope, Send
from surefoot.gateway import AdminApp, Gateway, GatewayConfig, config_from_dict

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "admin-token-for-tests"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: The address in-process clients call from (not a trusted proxy unless a test says so).
CLIENT = "203.0.113.7"
#: What an upstream's 5xx says about itself; it must never reach a client.
INTERNAL_DETAIL = "Traceback: secret-internal-detail"


def charge(reference: str, amount: int = 1999) -> dict[str, Any]:
    """A valid body for the legacy upstream's ``POST /charges``."""
    return {"amount": amount, "currency": "eur", "customer": "cus_1", "reference": reference}


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, tables recursively (lists are replaced)."""
    out = copy.deepcopy(dict(base))
    for name, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(name), Mapping):
            out[name] = merged(out[name], value)
        else:
            out[name] = copy.deepcopy(value)
    return out


def gateway_config(extra: Mapping[str, Any] | None = None, **tables: Any) -> GatewayConfig:
    """A config over an in-process upstream and a memory store, with ``tables`` merged in."""
    base = {
        "upstream": {"url": "http://upstream.test"},
        "stores": {"default": "memory://"},
        "admin": {"token": ADMIN_TOKEN},
    }
    return config_from_dict(merged(merged(base, extra or {}), tables))


# -- in process ---------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class EchoUpstream:
    """An ASGI upstream that records every request and answers it as JSON.

    A path ending in ``/status/CODE`` answers CODE (a 5xx with ``INTERNAL_DETAIL`` in its
    body); a path under ``/hold`` waits until ``release`` is set; anything else answers 200.
    """

    seen: list[Seen] = field(default_factory=list)
    holding: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        seen = Seen(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode(),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body=body,
        )
        self.seen.append(seen)
        status = 200
        payload: dict[str, Any] = {"path": seen.path, "n": len(self.seen)}
        if scope["path"].startswith("/hold"):
            self.holding += 1
            self.entered.set()
            try:
                await self.release.wait()
            finally:
                self.holding -= 1
        elif "/status/" in scope["path"]:
            status = int(scope["path"].rpartition("/status/")[2])
            if status >= 500:
                payload = {"error": INTERNAL_DETAIL}
        content = json.dumps(payload).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"connection", b"keep-alive, x-upstream-hop"),
            (b"keep-alive", b"timeout=5"),
            (b"x-upstream-hop", b"1"),
            (b"x-request-id", b"the-upstream-s-own-id"),
            (b"x-upstream", b"yes"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def connect(app: Any, *, client: str = CLIENT) -> httpx.AsyncClient:
    """An httpx client calling ``app`` in process, from the address ``client``."""
    transport = httpx.ASGITransport(app=app, client=(client, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


@dataclass
class Running:
    """A gateway under test: the app, a client for it, and one for its admin API."""

    gateway: Gateway
    client: httpx.AsyncClient
    admin: httpx.AsyncClient

    def connect(self, *, client: str) -> httpx.AsyncClient:
        return connect(self.gateway, client=client)


@contextlib.asynccontextmanager
async def running(
    config: GatewayConfig, *, upstream: Any = None, **options: Any
) -> AsyncIterator[Running]:
    """A ``Gateway`` over ``upstream`` (an ASGI app; None: the config's URL), closed after."""
    if upstream is not None:
        options["transport"] = httpx.ASGITransport(app=upstream, raise_app_exceptions=False)
    gateway = Gateway(config, **options)
    try:
        async with connect(gateway) as client, connect(AdminApp(gateway)) as admin:
            yield Running(gateway, client, admin)
    finally:
        await asyncio.sleep(0)  # let a reload's retiring task finish its (empty) work
        await gateway.aclose()


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The problem document of ``response``, checked to be ``status`` and ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def rate(response: httpx.Response, header: str = "ratelimit") -> dict[str, dict[str, int]]:
    """``RateLimit`` (or ``RateLimit-Policy``) as {policy: {parameter: value}}."""
    out: dict[str, dict[str, int]] = {}
    for item in response.headers.get(header, "").split(","):
        if item.strip():
            name, *params = item.strip().split(";")
            out[name.strip('"')] = {k: int(v) for k, v in (p.split("=") for p in params)}
    return out


# -- real processes -------------------------------------------------------------------------


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something other than None or False; a deadline
    guards against a server that never comes up, it is not a wait for time to pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def settled(send: Callable[[], httpx.Response], *, timeout: float = 10) -> httpx.Response:
    """``send()`` again while its key is still in flight elsewhere (409
    ``idempotency_request_in_progress``): the record of a request is stored just after its
    response went out, so a client that retries at once can come too early."""

    def attempt() -> httpx.Response | None:
        response = send()
        if response.status_code == 409 and b"idempotency_request_in_progress" in response.content:
            return None
        return response

    return wait_until(attempt, timeout=timeout, what="the key to be settled")


def answers(url: str, headers: Mapping[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class Server:
    """One server process on 127.0.0.1, its output kept in a log file."""

    def __init__(self, command: list[str], *, log: Path, env: Mapping[str, str] | None = None):
        self.log = log
        self.output = log.open("wb")
        environ = {**os.environ, **(env or {})}
        environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self.output, stderr=subprocess.STDOUT, env=environ
        )

    def wait_ready(self, url: str, *, headers: Mapping[str, str] | None = None) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the server exited ({self.process.returncode}):\n{self.tail()}"
                )
            return answers(url, headers)

        wait_until(ready, timeout=30, what=f"{url} ({self.log})")

    def tail(self, lines: int = 40) -> str:
        self.output.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.output.close()


def legacy_upstream(tmp: Path, *options: str) -> tuple[Server, str]:
    """The legacy payments API on a free port (not yet ready): the server and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "examples.legacy_payments", "--port", str(port)]
    command += ["--ledger", str(tmp / "ledger.db"), *options]
    return Server(command, log=tmp / "upstream.log"), f"http://127.0.0.1:{port}"


@dataclass
class GatewayProcess:
    """``surefoot serve`` on free ports: its server, config file, and URLs."""

    server: Server
    config: Path
    url: str
    admin: str

    def wait_ready(self) -> None:
        self.server.wait_ready(self.admin + "/healthz")

    def admin_get(self, path: str) -> Any:
        response = httpx.get(self.admin + path, headers=ADMIN_HEADERS, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()


def surefoot_serve(tmp: Path, config: str, *options: str) -> GatewayProcess:
    """``surefoot serve --config`` the TOML text ``config`` (written to ``tmp``), not yet
    ready; its temporary files (Prometheus' multiprocess folder) go to ``tmp`` too."""
    path = tmp / "gateway.toml"
    path.write_text(config)
    port, admin_port = free_port(), free_port()
    command = [str(Path(sys.executable).with_name("surefoot")), "serve", "--config", str(path)]
    command += ["--port", str(port), "--admin-port", str(admin_port), *options]
    server = Server(command, log=tmp / "gateway.log", env={"TMPDIR": str(tmp)})
    return GatewayProcess(
        server, path, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    )


def toml_config(upstream: str, store: str, body: str = "") -> str:
    """A policy file for ``surefoot serve``: ``body`` adds policies and routes."""
    return (
        f'[upstream]\nurl = "{upstream}"\nconnect_timeout = 2\nread_timeout = 10\n\n'
        f'[stores]\ndefault = "{store}"\n\n'
        f'[admin]\ntoken = "{ADMIN_TOKEN}"\n\n' + body
    )
