"""Raw HTTP/1.1 over sockets, for the tests of the gateway's HTTP servers: exact bytes out,
answers parsed by hand, and uvicorn serving an app with either of the gateway's protocols."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import uvicorn
from _gateway_helpers import wait_until

from surefoot.gateway import bounded_protocol
from surefoot.gateway._head import ServerLimits
from surefoot.gateway._serve import _loop_factory


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)  # a guard against a server that holds the connection, not a wait
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (or resets it after answering)."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            out += chunk
    return out


def read_response(reader: BinaryIO) -> bytes:
    """One response framed by Content-Length from ``sock.makefile("rb")``, nothing more."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        assert line, head
        head += line
    length = re.search(rb"(?im)^content-length: (\d+)\r$", head)
    assert length is not None, head
    return head + reader.read(int(length.group(1)))


def exchange(port: int, data: bytes) -> bytes:
    with connect(port) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_all(sock)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self, status: int, code: str) -> dict[str, Any]:
        assert self.status == status, self
        assert self.headers["content-type"] == "application/problem+json"
        assert self.headers["connection"] == "close"
        document: dict[str, Any] = json.loads(self.body)
        assert (document["status"], document["code"]) == (status, code), document
        assert document["request_id"] == self.headers["x-request-id"]
        return document


def parsed(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return Answer(int(lines[0].split()[1]), headers, body[: int(headers["content-length"])])


def request(head: str, *fields: bytes, body: bytes = b"") -> bytes:
    return head.encode() + b"\r\n" + b"".join(fields) + b"Connection: close\r\n\r\n" + body


HOST = b"Host: gateway.test\r\n"


def field(name: str, size: int) -> bytes:
    return name.encode() + b": " + b"a" * (size - len(name)) + b"\r\n"


@contextlib.contextmanager
def serving(app: Any, protocol: Any) -> Iterator[tuple[int, uvicorn.Server]]:
    """uvicorn serving ``app`` with ``protocol`` (on uvloop, in a thread, as ``surefoot
    serve`` and ``surefoot decide`` run it): the port it listens on, and the server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = uvicorn.Config(
        app,
        http=protocol,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)

    def run() -> None:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10, what="the server to start")
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def protocol_server(app: Any, limits: ServerLimits) -> Iterator[int]:
    """uvicorn with the gateway's bounded protocol over ``app``: the port it listens on."""
    with serving(app, bounded_protocol(limits)) as (port, _):
        yield port
