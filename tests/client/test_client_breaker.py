"""CircuitBreaker: every transition, generations, windows, operators, concurrency."""

from __future__ import annotations

import asyncio
import threading

import pytest

from surefoot.client._breaker import BreakerState, BreakerStateChanged, CircuitBreaker
from surefoot.errors import CircuitOpen, ConfigurationError
from surefoot.events import Event
from surefoot.testing import ManualClock

S = BreakerState


def make(clock: ManualClock, events: list[Event] | None = None, **kw: object) -> CircuitBreaker:
    options: dict[str, object] = {
        "name": "partner",
        "window_size": 10,
        "minimum_calls": 4,
        "failure_rate_threshold": 0.5,
        "open_wait": 30,
        "half_open_calls": 2,
        "slow_call_duration": 5,
        "slow_call_rate_threshold": 1.0,
    }
    options.update(kw)
    return CircuitBreaker(clock=clock, hooks=[] if events is None else [events.append], **options)  # type: ignore[arg-type]


def call(b: CircuitBreaker, failed: bool, duration: float = 0.1) -> None:
    b.on_result(b.acquire(), failed=failed, duration=duration)


def test_opens_on_failure_rate_after_minimum_calls() -> None:
    clock = ManualClock()
    b = make(clock)
    call(b, True)
    call(b, True)
    call(b, True)
    assert b.state is S.CLOSED  # 3 calls < minimum 4
    call(b, False)
    assert b.state is S.OPEN  # 3/4 failed >= 50%
    with pytest.raises(CircuitOpen) as info:
        b.acquire()
    assert info.value.fields == {"integration": "partner", "retry_after": 30}


def test_stays_closed_below_the_threshold() -> None:
    b = make(ManualClock())
    for failed in (True, False, False, False, True, False, False):
        call(b, failed)
    assert b.state is S.CLOSED  # 1/4, then 2/5, then 2/7


def test_slow_calls_open_it_too() -> None:
    b = make(ManualClock(), slow_call_rate_threshold=0.5)
    for _ in range(4):
        call(b, False, duration=6)
    assert b.state is S.OPEN


def test_open_waits_then_half_open_probes_close_it() -> None:
    clock = ManualClock()
    events: list[Event] = []
    b = make(clock, events)
    for _ in range(4):
        call(b, True)
    clock.advance(29)
    with pytest.raises(CircuitOpen) as info:
        b.acquire()
    assert info.value.fields["retry_after"] == 1
    clock.advance(1)
    p1 = b.acquire()
    assert b.state is S.HALF_OPEN
    p2 = b.acquire()
    with pytest.raises(CircuitOpen):
        b.acquire()  # only two probes
    b.on_result(p1, failed=False, duration=0.1)
    assert b.state is S.HALF_OPEN
    b.on_result(p2, failed=False, duration=0.1)
    assert b.state is S.CLOSED
    changes = [(e.from_state, e.to_state) for e in events if isinstance(e, BreakerStateChanged)]
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_failing_probes_reopen_it() -> None:
    clock = ManualClock()
    b = make(clock)
    for _ in range(4):
        call(b, True)
    clock.advance(30)
    call(b, True)
    call(b, False)
    assert b.state is S.OPEN  # 1/2 probes failed >= 50%
    with pytest.raises(CircuitOpen):
        b.acquire()


def test_released_probe_lets_another_through() -> None:
    clock = ManualClock()
    b = make(clock)
    for _ in range(4):
        call(b, True)
    clock.advance(30)
    p1, p2 = b.acquire(), b.acquire()
    b.release(p1)
    p3 = b.acquire()
    b.on_result(p2, failed=False, duration=0)
    b.on_result(p3, failed=False, duration=0)
    assert b.state is S.CLOSED


def test_results_from_an_older_generation_are_ignored() -> None:
    clock = ManualClock()
    b = make(clock)
    slow = b.acquire()  # started while CLOSED
    for _ in range(4):
        call(b, True)
    assert b.state is S.OPEN
    clock.advance(30)
    probe = b.acquire()
    b.on_result(slow, failed=True, duration=100)  # old news: ignored
    assert b.state is S.HALF_OPEN
    b.on_result(probe, failed=False, duration=0)
    call(b, False)
    assert b.state is S.CLOSED


def test_count_window_forgets_old_calls() -> None:
    b = make(ManualClock(), window_size=4)
    for failed in (True, True, False, False):
        call(b, failed)
    assert b.state is S.OPEN  # 2/4 = 50% opens
    b.reset()
    for failed in (True, False, False, False, False, True, False):
        call(b, failed)
    assert b.state is S.CLOSED  # the window holds the last 4: 1 failure


def test_time_window_forgets_calls_older_than_its_seconds() -> None:
    clock = ManualClock(1000.0)
    b = make(clock, window="time", window_size=10)
    for _ in range(3):
        call(b, True)
    clock.advance(11)  # those three leave the window
    for failed in (True, False, False, False):
        call(b, failed)
    assert b.state is S.CLOSED  # 1/4
    call(b, True)
    call(b, True)
    assert b.state is S.OPEN  # 3/6


def test_operators_force_open_disable_and_reset() -> None:
    clock = ManualClock()
    b = make(clock)
    b.force_open()
    clock.advance(3600)
    with pytest.raises(CircuitOpen):
        b.acquire()  # forced open does not time out
    b.disable()
    for _ in range(20):
        call(b, True)
    assert b.state is S.DISABLED
    b.reset()
    assert b.state is S.CLOSED
    call(b, False)
    assert "partner" in repr(b)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_rate_threshold", 0),
        ("slow_call_rate_threshold", 1.5),
        ("slow_call_duration", 0),
        ("window", "sliding"),
        ("window_size", 0),
        ("minimum_calls", 0),
        ("open_wait", 0),
        ("half_open_calls", 0),
    ],
)
def test_bad_configuration_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"CircuitBreaker\.{field}: expected"):
        CircuitBreaker(**{field: value})  # type: ignore[arg-type]


def test_threads_never_get_more_probes_than_allowed() -> None:
    clock = ManualClock()
    b = make(clock, half_open_calls=3)
    for _ in range(4):
        call(b, True)
    clock.advance(30)
    granted: list[object] = []
    refused = 0
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker() -> None:
        nonlocal refused
        barrier.wait()
        for _ in range(50):
            try:
                permit = b.acquire()
            except CircuitOpen:
                with lock:
                    refused += 1
            else:
                with lock:
                    granted.append(permit)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 3
    assert refused == 16 * 50 - 3


@pytest.mark.anyio
async def test_concurrent_tasks_open_it_once() -> None:
    clock = ManualClock()
    events: list[Event] = []
    b = make(clock, events, minimum_calls=10, window_size=10)

    async def failing_call() -> None:
        try:
            permit = b.acquire()
        except CircuitOpen:
            return
        await asyncio.sleep(0)
        b.on_result(permit, failed=True, duration=0.1)

    await asyncio.gather(*(failing_call() for _ in range(100)))
    opened = [e for e in events if isinstance(e, BreakerStateChanged) and e.to_state == "open"]
    assert len(opened) == 1
    assert opened[0].failure_rate == 1.0
