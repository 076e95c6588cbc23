"""Throttle: a client-side token bucket, local or shared through a store, in both drivers."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from surefoot.client import (
    AsyncResilientTransport,
    ResilientTransport,
    RetryPolicy,
    Throttle,
    ThrottleRefused,
    ThrottleWaited,
)
from surefoot.errors import ConfigurationError, UpstreamThrottled
from surefoot.events import Event
from surefoot.ratelimit import Limit
from surefoot.storage import MemoryStore, SqliteStore
from surefoot.testing import ManualClock, RecordingSleep

URL = "https://partner.example/v1/parcels"
MODES = ["sync", "async"]


class Upstream:
    """Answers each request with the next status (then 200) and counts what it saw."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.seen = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        return httpx.Response(self.statuses.pop(0) if self.statuses else 200)


class Harness:
    def __init__(self, mode: str, throttle: Throttle, clock: ManualClock | None = None, **kw: Any):
        self.mode = mode
        self.clock = clock or ManualClock()
        self.sleep = RecordingSleep(self.clock)
        self.events: list[Event] = []
        self.upstream = Upstream(*kw.pop("statuses", ()))
        mock = httpx.MockTransport(self.upstream)
        kw.setdefault("retry", RetryPolicy(jitter="none", backoff_base=0.5))
        common: dict[str, Any] = dict(
            throttle=throttle, clock=self.clock, hooks=[self.events.append], **kw
        )
        common["random"] = random.Random(1)
        if mode == "sync":
            self.transport: Any = ResilientTransport(mock, sleep=self.sleep, **common)
        else:
            self.transport = AsyncResilientTransport(mock, sleep=self.sleep.asleep, **common)

    def get(self, n: int = 1) -> list[httpx.Response | BaseException]:
        """Send ``n`` GETs one after the other; each outcome, response or error."""
        if self.mode == "sync":
            out: list[httpx.Response | BaseException] = []
            with httpx.Client(transport=self.transport) as client:
                for _ in range(n):
                    try:
                        out.append(client.get(URL))
                    except Exception as exc:
                        out.append(exc)
            return out

        async def go() -> list[httpx.Response | BaseException]:
            out: list[httpx.Response | BaseException] = []
            async with httpx.AsyncClient(transport=self.transport) as client:
                for _ in range(n):
                    try:
                        out.append(await client.get(URL))
                    except Exception as exc:
                        out.append(exc)
            return out

        return asyncio.run(go())

    def of(self, cls: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


@pytest.mark.parametrize("mode", MODES)
def test_requests_wait_exactly_until_the_next_token(mode: str) -> None:
    h = Harness(mode, Throttle("1/second", name="parcels"))
    outcomes = h.get(3)
    assert [getattr(o, "status_code", o) for o in outcomes] == [200, 200, 200]
    assert h.sleep.calls == [1.0, 1.0]
    waited = h.of(ThrottleWaited)
    assert [(e.delay, e.integration, e.limit, e.attempt) for e in waited] == [
        (1.0, "parcels", "1 requests per second", 1),
    ] * 2


@pytest.mark.parametrize("mode", MODES)
def test_a_fractional_rate_waits_its_fraction(mode: str) -> None:
    h = Harness(mode, Throttle("100/minute", burst=1))
    h.get(2)
    assert h.sleep.calls == [pytest.approx(0.6)]
    assert h.upstream.seen == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_burst_goes_at_once_then_the_rate_applies(mode: str) -> None:
    h = Harness(mode, Throttle("10/minute", burst=3))
    h.get(4)
    assert h.sleep.calls == [6.0]


@pytest.mark.parametrize("mode", MODES)
def test_refuses_when_the_token_is_further_than_max_wait(mode: str) -> None:
    h = Harness(mode, Throttle("1/minute", name="parcels", max_wait=10.0))
    first, second = h.get(2)
    assert isinstance(first, httpx.Response)
    assert isinstance(second, UpstreamThrottled)
    assert second.fields == {"integration": "parcels", "limit": "1 requests per minute",
                             "retry_after": 60}  # fmt: skip
    assert "nothing was sent" in second.detail
    assert h.upstream.seen == 1  # the refused request never left
    assert h.sleep.calls == []  # refused at once, not after waiting in vain
    (refused,) = h.of(ThrottleRefused)
    assert refused.retry_after == pytest.approx(60.0)


@pytest.mark.parametrize("mode", MODES)
def test_max_wait_zero_never_waits(mode: str) -> None:
    h = Harness(mode, Throttle("1/second", max_wait=0))
    _, second = h.get(2)
    assert isinstance(second, UpstreamThrottled)
    assert second.fields["retry_after"] == 1
    assert h.sleep.calls == []


@pytest.mark.parametrize("mode", MODES)
def test_the_wait_counts_against_max_wait_across_rounds(mode: str) -> None:
    class Stingy(Throttle):
        """Always one more second away, however long one waits (a contended bucket)."""

        def take(self, now: float) -> float:
            return 1.0

        async def atake(self, now: float) -> float:
            return 1.0

    h = Harness(mode, Stingy("1/second", max_wait=3.5))
    (outcome,) = h.get(1)
    assert isinstance(outcome, UpstreamThrottled)
    assert h.sleep.calls == [1.0, 1.0, 1.0]  # a fourth second would end past 3.5 s
    assert h.upstream.seen == 0


@pytest.mark.parametrize("mode", MODES)
def test_every_retry_takes_a_token(mode: str) -> None:
    h = Harness(mode, Throttle("1/second"), statuses=(503, 503))
    (outcome,) = h.get(1)
    assert isinstance(outcome, httpx.Response)
    assert outcome.status_code == 200
    # backoff 0.5 (no jitter), then the rest of the second for the token; then 1.0 and 0.
    assert h.sleep.calls == [0.5, 0.5, 1.0]
    assert [e.attempt for e in h.of(ThrottleWaited)] == [2]
    assert h.upstream.seen == 3


@pytest.mark.parametrize("mode", MODES)
def test_the_deadline_caps_the_wait(mode: str) -> None:
    h = Harness(mode, Throttle("1/minute", max_wait=120), retry=RetryPolicy(deadline=5.0))
    _, second = h.get(2)
    assert isinstance(second, UpstreamThrottled)
    assert h.sleep.calls == []


@pytest.mark.parametrize("mode", MODES)
def test_the_attempt_timeout_is_what_is_left_after_waiting(mode: str) -> None:
    h = Harness(mode, Throttle("1/second"), retry=RetryPolicy(deadline=4.0))
    seen: list[Any] = []
    inner = h.upstream

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return inner(request)

    mock = httpx.MockTransport(handler)
    h.transport.transport = mock
    h.get(2)
    assert seen == [pytest.approx(4.0), pytest.approx(3.0)]  # each request has 4 s


@pytest.mark.parametrize("mode", MODES)
def test_a_refusal_settles_the_breaker_permit(mode: str) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def acquire(self) -> object:
            self.calls.append("acquire")
            return object()

        def on_result(self, permit: object, **kw: Any) -> None:
            self.calls.append("on_result")

        def release(self, permit: object) -> None:
            self.calls.append("release")

    breaker = Recorder()
    h = Harness(mode, Throttle("1/minute", max_wait=0), breaker=breaker)
    h.get(2)
    assert breaker.calls == ["acquire", "on_result", "acquire", "release"]


@pytest.mark.parametrize("mode", MODES)
def test_a_throttle_is_shared_between_transports_of_one_process(mode: str) -> None:
    throttle = Throttle("4/minute", max_wait=20)
    clock = ManualClock()
    a, b = Harness(mode, throttle, clock), Harness(mode, throttle, clock)
    a.get(4)
    b.get(1)
    assert a.sleep.calls == []
    assert b.sleep.calls == [15.0]


def test_a_throttle_shared_through_sqlite_across_two_async_transports(tmp_path: Path) -> None:
    db = tmp_path / "limits.db"
    clock = ManualClock()
    # Two store objects on one file: what two worker processes would have.
    stores = [SqliteStore(db), SqliteStore(db)]
    throttles = [Throttle("4/minute", name="partner", store=s, max_wait=20) for s in stores]
    a, b = (Harness("async", t, clock) for t in throttles)
    a.get(4)
    b.get(1)
    assert a.sleep.calls == []
    assert b.sleep.calls == [pytest.approx(15.0)]  # a's four tokens were spent for both
    assert a.upstream.seen == 4
    assert b.upstream.seen == 1
    for store in stores:
        asyncio.run(store.aclose())


def test_a_throttle_shared_through_sqlite_across_two_sync_transports(tmp_path: Path) -> None:
    db = tmp_path / "limits.db"
    clock = ManualClock()
    stores = [SqliteStore(db), SqliteStore(db)]
    throttles = [Throttle("2/minute", name="partner", store=s, max_wait=5) for s in stores]
    a, b = (Harness("sync", t, clock) for t in throttles)
    a.get(2)
    (refused,) = b.get(1)
    assert isinstance(refused, UpstreamThrottled)
    assert refused.fields["retry_after"] == 30
    assert b.upstream.seen == 0
    clock.advance(30)
    (ok,) = b.get(1)
    assert isinstance(ok, httpx.Response)
    for throttle in throttles:
        throttle.close()
        throttle.close()  # closing twice is harmless
    for store in stores:
        asyncio.run(store.aclose())


def test_a_custom_key_names_the_bucket_in_the_store() -> None:
    store = MemoryStore()
    first = Throttle("1/minute", store=store, key="k", max_wait=0)
    second = Throttle("1/minute", store=store, key="k", max_wait=0, name="other")
    third = Throttle("1/minute", store=store, max_wait=0)

    async def go() -> list[float]:
        return [await t.atake(0.0) for t in (first, second, third)]

    assert asyncio.run(go()) == [0.0, 60.0, 0.0]
    assert first.key == "k"
    assert third.key == "surefoot:client:throttle:default"


def test_repr_and_limit() -> None:
    assert repr(Throttle("5/second", name="x")) == (
        "Throttle(name='x', limit='5 requests per second', local)"
    )
    shared = Throttle(Limit(5, 1, algorithm="token_bucket", burst=2), store=MemoryStore())
    assert "MemoryStore" in repr(shared)
    assert shared.limit.capacity == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": Limit(5, 1, algorithm="gcra")}, "token_bucket limit"),
        ({"limit": "5 per fortnight"}, "expected 'AMOUNT/UNIT'"),
        ({"limit": "5/second", "burst": 0}, "Limit.burst"),
        ({"limit": "5/second", "burst": True}, "Throttle.burst"),
        ({"limit": "5/second", "max_wait": -1}, "Throttle.max_wait"),
        ({"limit": "5/second", "max_wait": float("inf")}, "Throttle.max_wait"),
        ({"limit": "5/second", "store": object()}, "Throttle.store"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    limit = kwargs.pop("limit")
    with pytest.raises(ConfigurationError, match=message):
        Throttle(limit, **kwargs)


@pytest.mark.parametrize("cls", [ResilientTransport, AsyncResilientTransport])
def test_transports_refuse_what_is_not_a_throttle(cls: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"\.throttle: expected a Throttle"):
        cls(throttle="100/minute")


@pytest.mark.parametrize("mode", MODES)
def test_without_a_deadline_max_wait_alone_bounds_the_wait(mode: str) -> None:
    h = Harness(mode, Throttle("1/minute", max_wait=60), retry=RetryPolicy(deadline=None))
    h.get(2)
    assert h.sleep.calls == [60.0]
