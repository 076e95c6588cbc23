"""Both transports against real servers on 127.0.0.1 that fail on cue.

A uvicorn server (in a thread) runs a tiny ASGI app that answers 503, drops the
connection mid-response, or says "in progress" for the next N requests, then succeeds;
a raw socket server resets connections (RST) before answering. Waits between attempts
go through ``RecordingSleep``: the network is real, the clock is not.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from surefoot.client import AsyncResilientTransport, ResilientTransport, RetryPolicy
from surefoot.errors import UpstreamUnavailable
from surefoot.testing import ManualClock, RecordingSleep

pytestmark = pytest.mark.slow


@dataclass
class Cue:
    """What the server does next; the tests set it, the app reads it."""

    fail: int = 0
    how: str = "503"  # "503", "drop" or "in_progress"
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    executed: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, fail: int = 0, how: str = "503") -> None:
        with self.lock:
            self.fail, self.how = fail, how
            self.seen.clear()
            self.executed.clear()


async def _send_json(send: Any, status: int, document: Any, **headers: str) -> None:
    body = json.dumps(document).encode()
    raw = [(b"content-length", str(len(body)).encode())]
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def make_app(cue: Cue) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        key = headers.get(b"idempotency-key")
        key_text = key.decode() if key is not None else None
        with cue.lock:
            cue.seen.append((scope["method"], key_text))
            failing = cue.fail > 0
            cue.fail -= failing
            how = cue.how
            if not failing and key_text is not None:
                cue.executed[key_text] = cue.executed.get(key_text, 0) + 1
        if not failing:
            await _send_json(send, 201 if scope["method"] == "POST" else 200, {"ok": True})
        elif how == "503":
            await _send_json(send, 503, {"error": "down"}, retry_after="1")
        elif how == "in_progress":
            problem = {"status": 409, "code": "idempotency_request_in_progress"}
            await send(
                {
                    "type": "http.response.start",
                    "status": 409,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(problem).encode()})
        else:  # "drop": promise 1000 bytes, send 7, then let the server close the connection
            start = {"type": "http.response.start", "status": 503}
            start["headers"] = [(b"content-length", b"1000")]
            await send(start)
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise ConnectionAbortedError("dropped on cue")

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Cue]]:
    cue = Cue()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue here until uvicorn accepts: no start-up race
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(cue),
        lifespan="off",
        http="h11",
        ws="none",
        log_level="critical",  # the "drop" cue makes uvicorn log an error on purpose
        access_log=False,
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", cue
    instance.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def resetting_server() -> Iterator[tuple[str, list[int]]]:
    """Resets (RST) the first ``resets[0]`` connections after reading the request."""
    resets = [2]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if resets[0] > 0:
                    resets[0] -= 1
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", resets
    stop.set()
    thread.join(5)
    listener.close()


def sync_client(base: str, **kwargs: Any) -> tuple[httpx.Client, RecordingSleep]:
    sleep = RecordingSleep(ManualClock())
    transport = ResilientTransport(
        httpx.HTTPTransport(),
        clock=sleep.clock,
        sleep=sleep,
        random=random.Random(1),
        hooks=[],
        **kwargs,
    )
    return httpx.Client(transport=transport, base_url=base, timeout=5.0), sleep


def async_client(base: str, **kwargs: Any) -> tuple[httpx.AsyncClient, RecordingSleep]:
    sleep = RecordingSleep(ManualClock())
    transport = AsyncResilientTransport(
        httpx.AsyncHTTPTransport(),
        clock=sleep.clock,
        sleep=sleep.asleep,
        random=random.Random(1),
        hooks=[],
        **kwargs,
    )
    return httpx.AsyncClient(transport=transport, base_url=base, timeout=5.0), sleep


POLICY = RetryPolicy(max_attempts=4, deadline=30.0)


def test_sync_503s_then_ok(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=2)
    client, sleep = sync_client(base, retry=POLICY)
    with client:
        response = client.get("/things")
    assert response.status_code == 200
    assert len(cue.seen) == 3
    assert len(sleep.calls) == 2
    assert all(wait >= 1.0 for wait in sleep.calls)  # Retry-After: 1 honoured


@pytest.mark.anyio
async def test_async_503s_then_ok(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=2)
    client, sleep = async_client(base, retry=POLICY)
    async with client:
        response = await client.get("/things")
    assert response.status_code == 200
    assert len(cue.seen) == 3
    assert len(sleep.calls) == 2


def test_sync_post_with_auto_key_is_one_logical_operation(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=3)
    client, _ = sync_client(base, retry=POLICY, auto_idempotency_key=True)
    with client:
        response = client.post("/v1/shipments", json={"parcel": "P-1"})
    assert response.status_code == 201
    keys = {key for _, key in cue.seen}
    assert len(cue.seen) == 4
    assert len(keys) == 1
    assert None not in keys
    assert list(cue.executed.values()) == [1]


@pytest.mark.anyio
async def test_async_post_with_auto_key_is_one_logical_operation(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=3)
    client, _ = async_client(base, retry=POLICY, auto_idempotency_key=True)
    async with client:
        response = await client.post("/v1/shipments", json={"parcel": "P-1"})
    assert response.status_code == 201
    assert len(cue.seen) == 4
    assert len({key for _, key in cue.seen}) == 1
    assert list(cue.executed.values()) == [1]


def test_sync_post_without_key_is_not_retried(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=1)
    client, sleep = sync_client(base, retry=POLICY)
    with client:
        response = client.post("/v1/shipments", json={"parcel": "P-1"})
    assert response.status_code == 503
    assert cue.seen == [("POST", None)]
    assert sleep.calls == []


@pytest.mark.anyio
async def test_async_post_without_key_is_not_retried(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=1)
    client, _ = async_client(base, retry=POLICY)
    async with client:
        response = await client.post("/v1/shipments", json={"parcel": "P-1"})
    assert response.status_code == 503
    assert cue.seen == [("POST", None)]


def test_sync_connection_dropped_mid_response(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=2, how="drop")
    client, _ = sync_client(base, retry=POLICY)
    with client:
        assert client.get("/things").status_code == 200
        assert len(cue.seen) == 3
        # The same failure after a POST without a key: it may have been processed.
        cue.reset(fail=1, how="drop")
        with pytest.raises(UpstreamUnavailable) as info:
            client.post("/v1/shipments", json={"parcel": "P-1"})
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    assert "not safe to retry" in str(info.value)
    assert len(cue.seen) == 1


@pytest.mark.anyio
async def test_async_connection_dropped_mid_response(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=2, how="drop")
    client, _ = async_client(base, retry=POLICY)
    async with client:
        assert (await client.get("/things")).status_code == 200
        assert len(cue.seen) == 3
        cue.reset(fail=1, how="drop")
        with pytest.raises(UpstreamUnavailable):
            await client.post("/v1/shipments", json={"parcel": "P-1"})
    assert len(cue.seen) == 1


def test_sync_in_progress_then_result(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=2, how="in_progress")
    client, sleep = sync_client(base, retry=POLICY)
    with client:
        response = client.post("/v1/charges", json={"amount": 1}, headers={"Idempotency-Key": "k"})
    assert response.status_code == 201
    assert cue.seen == [("POST", "k")] * 3
    assert all(wait >= 1.0 for wait in sleep.calls)


@pytest.mark.anyio
async def test_async_in_progress_then_result(server: tuple[str, Cue]) -> None:
    base, cue = server
    cue.reset(fail=2, how="in_progress")
    client, _ = async_client(base, retry=POLICY)
    async with client:
        response = await client.post(
            "/v1/charges", json={"amount": 1}, headers={"Idempotency-Key": "k"}
        )
    assert response.status_code == 201
    assert cue.seen == [("POST", "k")] * 3


def test_sync_connection_reset(resetting_server: tuple[str, list[int]]) -> None:
    base, resets = resetting_server
    client, sleep = sync_client(base, retry=POLICY)
    with client:
        response = client.get("/things")
    assert response.text == "ok"
    assert resets == [0]
    assert len(sleep.calls) == 2


@pytest.mark.anyio
async def test_async_connection_reset(resetting_server: tuple[str, list[int]]) -> None:
    base, resets = resetting_server
    client, sleep = async_client(base, retry=POLICY)
    async with client:
        response = await client.get("/things")
    assert response.text == "ok"
    assert resets == [0]
    assert len(sleep.calls) == 2


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_sync_connection_refused_retries_even_post() -> None:
    client, sleep = sync_client(_closed_port(), retry=RetryPolicy(max_attempts=3))
    with client, pytest.raises(UpstreamUnavailable) as info:
        client.post("/v1/shipments", json={})
    assert info.value.fields["reason"].startswith(
        "3 attempts failed (ConnectError, ConnectError, ConnectError)"
    )
    assert len(sleep.calls) == 2


@pytest.mark.anyio
async def test_async_connection_refused_retries_even_post() -> None:
    client, sleep = async_client(_closed_port(), retry=RetryPolicy(max_attempts=3))
    async with client:
        with pytest.raises(UpstreamUnavailable) as info:
            await client.post("/v1/shipments", json={})
    assert info.value.attempts == 3  # type: ignore[attr-defined]
    assert len(sleep.calls) == 2
