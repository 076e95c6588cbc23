"""Both chaos transports, fault by fault, against an upstream that records what it received.

The upstream is ``httpx.MockTransport`` (and, in the last tests, a uvicorn server on
127.0.0.1); waits go through ``RecordingSleep``, so no test waits for time to pass.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from surefoot.chaos import (
    CHAOS_HEADER,
    COPY_EXTENSION,
    Abort,
    AsyncChaosTransport,
    ChaosTransport,
    Delay,
    Duplicate,
    FailAfter,
    FaultInjected,
    FaultPlan,
    Hang,
    Reset,
    Rule,
    SlowBody,
)
from surefoot.client import AttemptFailed, ResilientTransport
from surefoot.errors import ConfigurationError
from surefoot.events import Event
from surefoot.testing import CapturedEvents, RecordingSleep

pytestmark = pytest.mark.anyio

MODES = ["sync", "async"]
URL = "http://upstream.test/v1/charges"


@dataclass
class Upstream:
    """Answers ``body`` (numbered by arrival if ``numbered``) and records every request."""

    body: bytes = b"0123456789"
    numbered: bool = False
    seen: list[tuple[str, str, bytes, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.seen.append(
                (request.method, request.url.path, request.read(), request.headers.get("x-k"))
            )
            n = len(self.seen)
        return httpx.Response(201, content=str(n).encode() if self.numbered else self.body)


def one(fault: Any, **rule: Any) -> FaultPlan:
    return FaultPlan([Rule(name="r", fault=fault, **rule)], seed=1)


@dataclass
class Caller:
    mode: str
    plan: FaultPlan
    handler: Callable[[httpx.Request], Any]
    sleep: RecordingSleep = field(default_factory=RecordingSleep)
    events: CapturedEvents = field(default_factory=CapturedEvents)

    async def send(
        self, timeouts: httpx.Timeout | None = None, method: str = "POST"
    ) -> tuple[httpx.Response, bytes]:
        """One request through the transport of ``mode``: the response and its body."""
        upstream = httpx.MockTransport(self.handler)
        timeouts = timeouts or httpx.Timeout(5.0)
        if self.mode == "sync":
            transport = ChaosTransport(upstream, self.plan, sleep=self.sleep, hooks=[self.events])
            return send_sync(transport, timeouts, method)
        atransport = AsyncChaosTransport(
            upstream, self.plan, sleep=self.sleep.asleep, hooks=[self.events]
        )
        async with (
            httpx.AsyncClient(transport=atransport, timeout=timeouts) as aclient,
            aclient.stream(method, URL, **REQUEST) as response,
        ):
            return response, b"".join([chunk async for chunk in response.aiter_bytes()])


REQUEST: dict[str, Any] = {"content": b'{"amount": 5}', "headers": {"X-K": "k1"}}


def send_sync(
    transport: httpx.BaseTransport, timeouts: httpx.Timeout, method: str
) -> tuple[httpx.Response, bytes]:
    with (
        httpx.Client(transport=transport, timeout=timeouts) as client,
        client.stream(method, URL, **REQUEST) as response,
    ):
        return response, b"".join(response.iter_bytes())


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_no_fault_passes_through(mode: str) -> None:
    upstream = Upstream()
    caller = Caller(mode, one(Reset(), methods=("DELETE",)), upstream)
    response, body = await caller.send()
    assert (response.status_code, body) == (201, b"0123456789")
    assert upstream.seen == [("POST", "/v1/charges", b'{"amount": 5}', "k1")]
    assert caller.events.events == []
    assert caller.sleep.calls == []


async def test_delay_sleeps_the_drawn_time_then_forwards(mode: str) -> None:
    upstream = Upstream()
    caller = Caller(mode, one(Delay(seconds=0.25, jitter=0.5)), upstream)
    twin = one(Delay(seconds=0.25, jitter=0.5)).decide("POST", "/v1/charges", {})
    assert twin is not None
    response, body = await caller.send()
    assert (response.status_code, body) == (201, b"0123456789")
    assert caller.sleep.calls == [twin.delay]
    assert 0.25 <= twin.delay <= 0.75
    assert len(upstream.seen) == 1
    [event] = caller.events.of(FaultInjected)
    assert (event.rule, event.kind, event.detail) == ("r", "delay", f"{twin.delay:.3f}s")
    assert (event.method, event.host, event.path, event.request_id) == (
        "POST",
        "upstream.test",
        "/v1/charges",
        "-",
    )


async def test_abort_answers_without_calling_the_upstream(mode: str) -> None:
    upstream = Upstream()
    caller = Caller(mode, one(Abort(status=503, retry_after=1.5)), upstream)
    response, body = await caller.send()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.headers[CHAOS_HEADER] == "r"
    assert b"'r'" in body
    assert upstream.seen == []
    assert caller.plan.counts(by="kind") == {"abort": 1}


async def test_reset_raises_connect_error_without_calling_the_upstream(mode: str) -> None:
    upstream = Upstream()
    caller = Caller(mode, one(Reset()), upstream)
    with pytest.raises(httpx.ConnectError, match="chaos rule 'r'"):
        await caller.send()
    assert upstream.seen == []
    assert [e.kind for e in caller.events.of(FaultInjected)] == ["reset"]


@pytest.mark.parametrize(
    ("phase", "error"), [("read", httpx.ReadTimeout), ("pool", httpx.PoolTimeout)]
)
async def test_hang_waits_the_timeout_then_raises(
    mode: str, phase: Any, error: type[Exception]
) -> None:
    upstream = Upstream()
    caller = Caller(mode, one(Hang(phase=phase)), upstream)
    with pytest.raises(error):
        await caller.send(timeouts=httpx.Timeout(5.0, read=7.5, pool=2.0))
    assert caller.sleep.calls == [7.5 if phase == "read" else 2.0]
    assert upstream.seen == []


async def test_hang_without_timeout_never_ends(mode: str) -> None:
    class Stop(Exception):
        pass

    caller = Caller(mode, one(Hang()), Upstream())
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 3:
            raise Stop

    async def asleep(seconds: float) -> None:
        sleep(seconds)

    upstream = httpx.MockTransport(Upstream())
    request = httpx.Request("GET", URL, extensions={"timeout": {"read": None}})
    if mode == "sync":
        transport = ChaosTransport(upstream, caller.plan, sleep=sleep, hooks=[])
        with pytest.raises(Stop):
            transport.handle_request(request)
    else:
        atransport = AsyncChaosTransport(upstream, caller.plan, sleep=asleep, hooks=[])
        with pytest.raises(Stop):
            await atransport.handle_async_request(request)
    assert calls == [3600.0] * 3


async def test_fail_after_reset_reaches_the_upstream_then_loses_the_answer(mode: str) -> None:
    upstream = Upstream()
    caller = Caller(mode, one(FailAfter(lose="reset")), upstream)
    with pytest.raises(httpx.ReadError, match="after the upstream answered"):
        await caller.send()
    assert upstream.seen == [("POST", "/v1/charges", b'{"amount": 5}', "k1")]


async def test_fail_after_502_reaches_the_upstream_then_answers_502(mode: str) -> None:
    upstream = Upstream()
    caller = Caller(mode, one(FailAfter(lose="502")), upstream)
    response, body = await caller.send()
    assert response.status_code == 502
    assert response.headers[CHAOS_HEADER] == "r"
    assert b"0123456789" not in body
    assert len(upstream.seen) == 1


async def test_fail_after_truncate_gives_half_the_body_then_an_error(mode: str) -> None:
    upstream = Upstream()
    caller = Caller(mode, one(FailAfter(lose="truncate")), upstream)
    parts: list[bytes] = []
    transport_upstream = httpx.MockTransport(upstream)
    if mode == "sync":
        transport = ChaosTransport(transport_upstream, caller.plan, hooks=[])
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            read_raw_sync(transport, parts)
    else:
        atransport = AsyncChaosTransport(transport_upstream, caller.plan, hooks=[])
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await read_raw_async(atransport, parts)
    assert parts == [b"01234"]
    assert len(upstream.seen) == 1


def read_raw_sync(transport: httpx.BaseTransport, parts: list[bytes]) -> None:
    with httpx.Client(transport=transport) as client, client.stream("POST", URL) as response:
        assert response.status_code == 201
        assert response.headers["content-length"] == "10"  # the promise that is broken
        parts.extend(response.iter_raw())


async def read_raw_async(transport: httpx.AsyncBaseTransport, parts: list[bytes]) -> None:
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("POST", URL) as response,
    ):
        assert response.status_code == 201
        assert response.headers["content-length"] == "10"
        async for chunk in response.aiter_raw():
            parts.append(chunk)


async def test_truncating_an_empty_body_raises_at_once(mode: str) -> None:
    caller = Caller(mode, one(FailAfter(lose="truncate")), Upstream(body=b""))
    with pytest.raises(httpx.RemoteProtocolError):
        await caller.send()


async def test_duplicate_in_sequence_delivers_twice_and_answers_the_second(mode: str) -> None:
    upstream = Upstream(numbered=True)
    caller = Caller(mode, one(Duplicate()), upstream)
    response, body = await caller.send()
    assert (response.status_code, body) == (201, b"2")
    assert upstream.seen == [("POST", "/v1/charges", b'{"amount": 5}', "k1")] * 2


async def test_duplicate_concurrently_delivers_both_at_once(mode: str) -> None:
    # Each delivery waits until the other has arrived: only a concurrent send gets through.
    upstream = Upstream(numbered=True)
    if mode == "sync":
        barrier = threading.Barrier(2, timeout=10)

        def handler(request: httpx.Request) -> httpx.Response:
            barrier.wait()
            return upstream(request)

        caller = Caller(mode, one(Duplicate(concurrent=True)), handler)
    else:
        arrived: list[None] = []
        both = asyncio.Event()

        async def ahandler(request: httpx.Request) -> httpx.Response:
            arrived.append(None)
            if len(arrived) == 2:
                both.set()
            await both.wait()
            return upstream(request)

        caller = Caller(mode, one(Duplicate(concurrent=True)), ahandler)
    response, body = await caller.send()
    assert response.status_code == 201
    assert body in (b"1", b"2")
    assert upstream.seen == [("POST", "/v1/charges", b'{"amount": 5}', "k1")] * 2
    assert caller.events.of(FaultInjected)[0].detail == "concurrent"


@pytest.mark.parametrize("concurrent", [False, True])
async def test_duplicate_copy_failure_is_not_the_callers(mode: str, concurrent: bool) -> None:
    seen: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        copy = request.extensions.get(COPY_EXTENSION, False)
        seen.append(copy)
        if copy:
            raise httpx.ConnectError("copy lost")
        return httpx.Response(200, content=b"ok")

    caller = Caller(mode, one(Duplicate(concurrent=concurrent)), handler)
    # In sequence too (the copy goes first), the copy's failure is dropped and the
    # original is still delivered: the caller gets the original's answer.
    response, body = await caller.send()
    assert (response.status_code, body) == (200, b"ok")
    assert sorted(seen) == [False, True]


async def test_duplicate_original_failure_is_raised(mode: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if not request.extensions.get(COPY_EXTENSION):
            raise httpx.ReadError("original lost")
        return httpx.Response(200)

    caller = Caller(mode, one(Duplicate(concurrent=True)), handler)
    with pytest.raises(httpx.ReadError, match="original lost"):
        await caller.send()


async def test_slow_body_paces_the_body_with_the_injected_sleep(mode: str) -> None:
    upstream = Upstream(body=b"x" * 1000)
    caller = Caller(mode, one(SlowBody(bytes_per_second=400)), upstream)
    response, body = await caller.send()
    assert (response.status_code, body) == (201, b"x" * 1000)
    assert caller.sleep.calls == [1.0, 1.0, 0.5]
    assert len(upstream.seen) == 1
    assert caller.events.of(FaultInjected)[0].detail == "400 B/s"


async def test_only_matching_requests_are_faulted_and_counted(mode: str) -> None:
    upstream = Upstream()
    plan = FaultPlan(
        [
            Rule(name="get-down", fault=Abort(status=500), methods=("GET",)),
            Rule(name="tenant", fault=Reset(), headers={"X-K": "k1"}, path="/v1/*"),
        ],
        seed=9,
    )
    caller = Caller(mode, plan, upstream)
    response, _ = await caller.send(method="GET")
    assert response.status_code == 500
    with pytest.raises(httpx.ConnectError):
        await caller.send(method="POST")
    plan.pause()
    response, _ = await caller.send(method="POST")
    assert response.status_code == 201
    assert plan.counts() == {"get-down": 1, "tenant": 1}
    assert [e.rule for e in caller.events.of(FaultInjected)] == ["get-down", "tenant"]


def test_constructors_check_their_arguments() -> None:
    plan = one(Reset())
    with pytest.raises(ConfigurationError, match=r"ChaosTransport\.transport"):
        ChaosTransport(object(), plan)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"AsyncChaosTransport\.transport"):
        AsyncChaosTransport(object(), plan)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"ChaosTransport\.plan"):
        ChaosTransport(httpx.MockTransport(Upstream()), object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"ChaosTransport\.clock"):
        ChaosTransport(httpx.MockTransport(Upstream()), plan, clock=object())  # type: ignore[arg-type]


def test_default_hook_logs_the_fault(caplog: pytest.LogCaptureFixture) -> None:
    transport = ChaosTransport(httpx.MockTransport(Upstream()), one(Abort(status=429)))
    with httpx.Client(transport=transport) as client:
        client.get(URL, headers={"X-Request-Id": "req-1"})
    [record] = [r for r in caplog.records if r.name == "surefoot.chaos"]
    assert record.getMessage().startswith("chaos.fault_injected ")
    assert "request_id=req-1" in record.getMessage()
    assert "detail=429" in record.getMessage()


# -- a real server on 127.0.0.1 ---------------------------------------------------------------


@dataclass
class Ledger:
    """What the plain POST handler executed: one entry per charge it made."""

    charges: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def charges_app(ledger: Ledger) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        key = dict(scope["headers"]).get(b"idempotency-key")
        with ledger.lock:
            ledger.charges.append(key.decode() if key is not None else None)
            number = len(ledger.charges)
        body = json.dumps({"charge": number}).encode()
        headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.fixture
def server() -> Iterator[tuple[str, Ledger]]:
    ledger = Ledger()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue here until uvicorn accepts: no start-up race
    config = uvicorn.Config(
        charges_app(ledger),
        lifespan="off",
        http="h11",
        ws="none",
        log_level="critical",
        access_log=False,
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", ledger
    instance.should_exit = True
    thread.join(10)
    sock.close()


@pytest.mark.slow
def test_real_server_duplicate_and_resilient_retries(server: tuple[str, Ledger]) -> None:
    base_url, ledger = server

    # 1. duplicate: a plain POST handler really executes the charge twice.
    plan = FaultPlan([Rule(name="dup", fault=Duplicate(), methods=("POST",))], seed=1)
    chaos = ChaosTransport(httpx.HTTPTransport(), plan, hooks=[])
    with httpx.Client(transport=chaos, base_url=base_url) as client:
        response = client.post("/v1/charges", json={"amount": 5})
    assert response.status_code == 201
    assert response.json() == {"charge": 2}
    assert ledger.charges == [None, None]

    # 2. ResilientTransport over ChaosTransport: a lost answer (the upstream executed),
    # then a reset (it did not), then success; the same key on every attempt.
    ledger.charges.clear()
    plan.replace([Rule(name="lost", fault=FailAfter(lose="reset"), methods=("POST",))])
    next_rules = [[Rule(name="reset", fault=Reset(), methods=("POST",))], []]

    def change_plan(event: Event) -> None:
        if isinstance(event, AttemptFailed):
            plan.replace(next_rules.pop(0))

    sleep = RecordingSleep()
    transport = ResilientTransport(
        ChaosTransport(httpx.HTTPTransport(), plan, sleep=sleep, hooks=[]),
        auto_idempotency_key=True,
        sleep=sleep,
        hooks=[change_plan],
    )
    with httpx.Client(transport=transport, base_url=base_url) as client:
        response = client.post("/v1/charges", json={"amount": 5})
    assert response.status_code == 201
    assert plan.counts() == {"dup": 1, "lost": 1, "reset": 1}
    assert len(sleep.calls) == 2  # two backoffs: both injected failures were retried
    # The lost answer's attempt and the last one reached the server, with one key.
    assert len(ledger.charges) == 2
    assert ledger.charges[0] is not None
    assert ledger.charges[0] == ledger.charges[1]
