"""Bulkhead: a concurrency cap per integration, under real threads and real tasks.

Concurrency is driven by events and gates, never by timing: handlers block until the
test opens a gate, and the test waits for a state (so many in flight, so many queued).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from surefoot.client import (
    AsyncResilientTransport,
    Bulkhead,
    BulkheadFull,
    ResilientTransport,
    RetryPolicy,
    Throttle,
)
from surefoot.client._bulkhead import _Slots
from surefoot.errors import ConfigurationError, UpstreamThrottled, UpstreamUnavailable
from surefoot.events import Event
from surefoot.testing import ManualClock, RecordingSleep

URL = "https://partner.example/v1/parcels"
# Generous bounds for waits on conditions; they only matter when a test is broken.
PATIENCE = 10.0


def wait_until(predicate: Callable[[], bool]) -> None:
    """Block until ``predicate()`` holds (polling a state, not waiting for time to pass)."""
    done = threading.Event()
    for _ in range(int(PATIENCE / 0.001)):
        if predicate():
            return
        done.wait(0.001)
    raise AssertionError("condition never held")


async def await_until(predicate: Callable[[], bool]) -> None:
    for _ in range(100_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class Meter:
    """Counts requests in flight: from the handler's start until the response is closed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.total = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.total += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"ok"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.meter.leave()

    async def aclose(self) -> None:
        self.close()


class GatedSync(httpx.BaseTransport):
    def __init__(self, meter: Meter, gate: threading.Event, status: int = 200) -> None:
        self.meter, self.gate, self.status = meter, gate, status

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.meter.enter()
        assert self.gate.wait(PATIENCE)
        return httpx.Response(self.status, stream=Body(self.meter))


class GatedAsync(httpx.AsyncBaseTransport):
    def __init__(self, meter: Meter, gate: asyncio.Event, status: int = 200) -> None:
        self.meter, self.gate, self.status = meter, gate, status

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.meter.enter()
        try:
            await self.gate.wait()
        except BaseException:
            self.meter.leave()
            raise
        return httpx.Response(self.status, stream=Body(self.meter))


def sync_transport(inner: httpx.BaseTransport, bulkhead: Bulkhead, **kw: Any) -> Any:
    clock = ManualClock()
    kw.setdefault("hooks", [])
    return ResilientTransport(
        inner, bulkhead=bulkhead, clock=clock, sleep=RecordingSleep(clock), **kw
    )


def async_transport(inner: httpx.AsyncBaseTransport, bulkhead: Bulkhead, **kw: Any) -> Any:
    clock = ManualClock()
    kw.setdefault("hooks", [])
    sleep = RecordingSleep(clock).asleep
    return AsyncResilientTransport(inner, bulkhead=bulkhead, clock=clock, sleep=sleep, **kw)


def test_twenty_threads_never_exceed_the_cap() -> None:
    meter, gate = Meter(), threading.Event()
    bulkhead = Bulkhead(5, max_wait=PATIENCE)
    transport = sync_transport(GatedSync(meter, gate), bulkhead)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(transport=transport) as client:
                statuses.append(client.get(URL).status_code)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    wait_until(lambda: meter.now == 5 and len(bulkhead._slots.waiters) == 15)
    gate.set()
    for t in threads:
        t.join(PATIENCE)
    assert errors == []
    assert statuses == [200] * 20
    assert meter.peak == 5
    assert bulkhead.in_use == 0


def test_fifty_tasks_never_exceed_the_cap() -> None:
    async def go() -> None:
        meter, gate = Meter(), asyncio.Event()
        bulkhead = Bulkhead(7, max_wait=PATIENCE)
        transport = async_transport(GatedAsync(meter, gate), bulkhead)
        async with httpx.AsyncClient(transport=transport) as client:
            tasks = [asyncio.create_task(client.get(URL)) for _ in range(50)]
            await await_until(lambda: meter.now == 7 and len(bulkhead._slots.waiters) == 43)
            gate.set()
            responses = await asyncio.gather(*tasks)
        assert [r.status_code for r in responses] == [200] * 50
        assert meter.peak == 7
        assert meter.total == 50
        assert bulkhead.in_use == 0

    asyncio.run(go())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_full_bulkhead_refuses_at_once_and_sends_nothing(mode: str) -> None:
    events: list[Event] = []
    bulkhead = Bulkhead(1, name="parcels")
    held = bulkhead.try_acquire()
    assert held is not None
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - never sent
        sent.append(request)
        return httpx.Response(200)

    mock = httpx.MockTransport(handler)
    if mode == "sync":
        transport = sync_transport(mock, bulkhead, hooks=[events.append])
        with httpx.Client(transport=transport) as client, pytest.raises(UpstreamThrottled) as info:
            client.get(URL)
    else:
        transport = async_transport(mock, bulkhead, hooks=[events.append])

        async def go() -> None:
            async with httpx.AsyncClient(transport=transport) as client:
                await client.get(URL)

        with pytest.raises(UpstreamThrottled) as info:
            asyncio.run(go())
    assert info.value.fields == {"integration": "parcels", "limit": "1 requests in flight",
                                 "retry_after": 1}  # fmt: skip
    assert sent == []
    (full,) = [e for e in events if isinstance(e, BulkheadFull)]
    assert (full.refused, full.max_concurrent, full.integration, full.attempt) == (
        True, 1, "parcels", 1,
    )  # fmt: skip
    held.release()
    assert bulkhead.in_use == 0


def test_a_waiting_thread_gets_the_slot_when_it_frees() -> None:
    events: list[Event] = []
    bulkhead = Bulkhead(1, max_wait=PATIENCE)
    held = bulkhead.try_acquire()
    assert held is not None
    transport = sync_transport(
        httpx.MockTransport(lambda r: httpx.Response(200)), bulkhead, hooks=[events.append]
    )
    result: list[int] = []

    def worker() -> None:
        with httpx.Client(transport=transport) as client:
            result.append(client.get(URL).status_code)

    thread = threading.Thread(target=worker)
    thread.start()
    wait_until(lambda: len(bulkhead._slots.waiters) == 1)
    assert bulkhead.try_acquire() is None  # a newcomer cannot barge past the queue
    held.release()
    held.release()  # releasing twice frees one slot
    thread.join(PATIENCE)
    assert result == [200]
    assert [(type(e).__name__, e.refused) for e in events if isinstance(e, BulkheadFull)] == [
        ("BulkheadFull", False)
    ]
    assert bulkhead.in_use == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_slots_are_freed_after_errors_and_retries(mode: str) -> None:
    bulkhead = Bulkhead(2)
    answers: list[Any] = [503, httpx.ConnectError, 503, RuntimeError]

    def handler(request: httpx.Request) -> httpx.Response:
        action = answers.pop(0)
        if isinstance(action, int):
            return httpx.Response(action, stream=httpx.ByteStream(b"busy"))
        raise action("scripted")

    mock = httpx.MockTransport(handler)
    retry = RetryPolicy(max_attempts=2)
    outcomes: list[Any] = []
    if mode == "sync":
        transport = sync_transport(mock, bulkhead, retry=retry)
        with httpx.Client(transport=transport) as client:
            for _ in range(2):
                try:
                    client.get(URL)
                except Exception as exc:
                    outcomes.append(type(exc))
    else:
        transport = async_transport(mock, bulkhead, retry=retry)

        async def go() -> None:
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(2):
                    try:
                        await client.get(URL)
                    except Exception as exc:
                        outcomes.append(type(exc))

        asyncio.run(go())
    assert outcomes == [UpstreamUnavailable, RuntimeError]
    assert bulkhead.in_use == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_streamed_response_holds_its_slot_until_closed(mode: str) -> None:
    meter = Meter()
    bulkhead = Bulkhead(1)
    if mode == "sync":
        gate = threading.Event()
        gate.set()
        transport = sync_transport(GatedSync(meter, gate), bulkhead)
        with httpx.Client(transport=transport) as client:
            with client.stream("GET", URL) as response:
                assert bulkhead.in_use == 1
                assert response.read() == b"ok"
            assert bulkhead.in_use == 0
            assert client.get(URL).status_code == 200
    else:

        async def go() -> None:
            agate = asyncio.Event()
            agate.set()
            transport = async_transport(GatedAsync(meter, agate), bulkhead)
            async with httpx.AsyncClient(transport=transport) as client:
                async with client.stream("GET", URL) as response:
                    assert bulkhead.in_use == 1
                    assert await response.aread() == b"ok"
                assert bulkhead.in_use == 0
                assert (await client.get(URL)).status_code == 200

        asyncio.run(go())
    assert bulkhead.in_use == 0
    assert meter.now == 0


def test_cancelled_tasks_free_their_slots_and_their_places_in_the_queue() -> None:
    async def go() -> None:
        meter, gate = Meter(), asyncio.Event()
        bulkhead = Bulkhead(2, max_wait=PATIENCE)
        transport = async_transport(GatedAsync(meter, gate), bulkhead)
        async with httpx.AsyncClient(transport=transport) as client:
            tasks = [asyncio.create_task(client.get(URL)) for _ in range(5)]
            await await_until(lambda: meter.now == 2 and len(bulkhead._slots.waiters) == 3)
            cancelled = [tasks[0], tasks[3], tasks[4]]  # one in flight, two queued
            for task in cancelled:
                task.cancel()
            outcomes = await asyncio.gather(*cancelled, return_exceptions=True)
            assert [type(o).__name__ for o in outcomes] == ["CancelledError"] * 3
            # The cancelled one in flight handed its slot to the first in the queue; the
            # two cancelled in the queue left it.
            await await_until(lambda: meter.now == 2)
            assert bulkhead.in_use == 2
            assert list(bulkhead._slots.waiters) == []
            gate.set()
            results = await asyncio.gather(*tasks[1:3])
        assert [r.status_code for r in results] == [200, 200]
        assert bulkhead.in_use == 0

    asyncio.run(go())


def test_a_task_cancelled_while_its_slot_is_on_the_way_passes_it_on() -> None:
    async def go() -> None:
        bulkhead = Bulkhead(1, max_wait=PATIENCE)
        held = bulkhead.try_acquire()
        assert held is not None
        first = asyncio.create_task(bulkhead.aacquire(PATIENCE))
        second = asyncio.create_task(bulkhead.aacquire(PATIENCE))
        await await_until(lambda: len(bulkhead._slots.waiters) == 2)
        held.release()  # hands the slot to ``first``; its wake-up is scheduled...
        first.cancel()  # ...but it is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        slot = await second
        assert bulkhead.in_use == 1
        slot.release()
        assert bulkhead.in_use == 0

    asyncio.run(go())


def test_async_wait_times_out_into_a_refusal() -> None:
    async def go() -> None:
        bulkhead = Bulkhead(1)
        held = bulkhead.try_acquire()
        assert held is not None
        with pytest.raises(UpstreamThrottled):
            await bulkhead.aacquire(0.0)
        assert list(bulkhead._slots.waiters) == []
        held.release()
        assert bulkhead.in_use == 0

    asyncio.run(go())


def test_slots_core_hands_a_freed_slot_to_the_first_waiter() -> None:
    slots = _Slots(1)
    assert slots.try_acquire()
    assert not slots.try_acquire()
    woken: list[str] = []
    a, b = (lambda: woken.append("a")), (lambda: woken.append("b"))
    slots.waiters.extend([a, b])
    waiter = slots.release()
    assert waiter is a
    assert slots.in_use == 1
    assert slots.abandon(a) is True  # ``a`` gave up too late: it owns the slot
    assert slots.abandon(b) is False  # ``b`` was still queued: it leaves with nothing
    assert slots.release() is None
    assert slots.in_use == 0


def test_a_thread_interrupted_while_waiting_passes_a_granted_slot_on() -> None:
    bulkhead = Bulkhead(1)
    held = bulkhead.try_acquire()
    assert held is not None

    class Interrupt(BaseException):
        pass

    original = threading.Event.wait

    def interrupted(self: threading.Event, timeout: float | None = None) -> bool:
        held.release()  # the slot is handed to us just as we are interrupted
        raise Interrupt

    threading.Event.wait = interrupted  # type: ignore[method-assign]
    try:
        with pytest.raises(Interrupt):
            bulkhead.acquire(PATIENCE)
    finally:
        threading.Event.wait = original  # type: ignore[method-assign]
    assert bulkhead.in_use == 0


def test_a_sync_wait_that_times_out_as_the_slot_arrives_keeps_it() -> None:
    bulkhead = Bulkhead(1)
    held = bulkhead.try_acquire()
    assert held is not None
    original = threading.Event.wait

    def late(self: threading.Event, timeout: float | None = None) -> bool:
        held.release()  # handed over, but the wait reports a timeout
        return False

    threading.Event.wait = late  # type: ignore[method-assign]
    try:
        slot = bulkhead.acquire(0.5)
    finally:
        threading.Event.wait = original  # type: ignore[method-assign]
    assert bulkhead.in_use == 1
    slot.release()
    assert bulkhead.in_use == 0
    assert repr(bulkhead) == "Bulkhead(name='default', in_use=0/1)"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0,), {}, "max_concurrent"),
        ((True,), {}, "max_concurrent"),
        (("10",), {}, "max_concurrent"),
        ((1,), {"max_wait": -1}, "max_wait"),
        ((1,), {"max_wait": float("nan")}, "max_wait"),
    ],
)
def test_bad_configuration_is_refused(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Bulkhead(*args, **kwargs)


@pytest.mark.parametrize("cls", [ResilientTransport, AsyncResilientTransport])
def test_transports_refuse_what_is_not_a_bulkhead(cls: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"\.bulkhead: expected a Bulkhead"):
        cls(bulkhead=10)


def test_acquire_takes_a_free_slot_at_once() -> None:
    bulkhead = Bulkhead(2)

    async def go() -> None:
        slot = await bulkhead.aacquire(0.0)
        assert bulkhead.in_use == 2
        slot.release()

    first = bulkhead.acquire(0.0)
    asyncio.run(go())
    first.release()
    assert bulkhead.in_use == 0


def test_a_thread_interrupted_while_queued_leaves_the_queue() -> None:
    bulkhead = Bulkhead(1)
    held = bulkhead.try_acquire()
    assert held is not None

    class Interrupt(BaseException):
        pass

    original = threading.Event.wait

    def interrupted(self: threading.Event, timeout: float | None = None) -> bool:
        raise Interrupt

    threading.Event.wait = interrupted  # type: ignore[method-assign]
    try:
        with pytest.raises(Interrupt):
            bulkhead.acquire(PATIENCE)
    finally:
        threading.Event.wait = original  # type: ignore[method-assign]
    assert list(bulkhead._slots.waiters) == []
    assert bulkhead.in_use == 1
    held.release()
    assert bulkhead.in_use == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_throttle_refusal_frees_the_slot_taken_before_it(mode: str) -> None:
    bulkhead = Bulkhead(1)
    throttle = Throttle("1/minute", max_wait=0)
    mock = httpx.MockTransport(lambda r: httpx.Response(200, content=b"already read"))
    outcomes: list[Any] = []
    if mode == "sync":
        transport = sync_transport(mock, bulkhead, throttle=throttle)
        with httpx.Client(transport=transport) as client:
            for _ in range(2):
                try:
                    outcomes.append(client.get(URL).status_code)
                except UpstreamThrottled as exc:
                    outcomes.append(exc.code)
    else:
        transport = async_transport(mock, bulkhead, throttle=throttle)

        async def go() -> None:
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(2):
                    try:
                        outcomes.append((await client.get(URL)).status_code)
                    except UpstreamThrottled as exc:
                        outcomes.append(exc.code)

        asyncio.run(go())
    assert outcomes == [200, "upstream_throttled"]
    assert bulkhead.in_use == 0


def test_an_async_wait_that_times_out_as_the_slot_arrives_keeps_it() -> None:
    async def go() -> None:
        bulkhead = Bulkhead(1)
        held = bulkhead.try_acquire()
        assert held is not None
        waiter = asyncio.create_task(bulkhead.aacquire(0.0))
        await asyncio.sleep(0)  # queued; its 0 s timeout fires on the next loop turn...
        assert len(bulkhead._slots.waiters) == 1
        held.release()  # ...with the slot handed over on this one
        slot = await waiter
        assert bulkhead.in_use == 1
        slot.release()
        assert bulkhead.in_use == 0

    asyncio.run(go())
