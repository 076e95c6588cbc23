"""CapturedEvents: a hook that keeps events, to assert on attempts and their reasons."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from surefoot.client import (
    AsyncResilientTransport,
    AttemptFailed,
    BreakerStateChanged,
    CircuitBreaker,
    ClientEvent,
    ResilientTransport,
    RetriesExhausted,
    RetrySucceeded,
    Throttle,
)
from surefoot.errors import CircuitOpen, UpstreamThrottled, UpstreamUnavailable
from surefoot.events import Event
from surefoot.testing import CapturedEvents, ManualClock, RecordingSleep


def upstream(script: dict[str, list[int | type[Exception]]]) -> httpx.MockTransport:
    """Per path, the statuses (or httpx errors) the upstream answers in turn."""
    queues = {path: iter(steps) for path, steps in script.items()}

    def handler(request: httpx.Request) -> httpx.Response:
        step = next(queues[request.url.path])
        if isinstance(step, int):
            return httpx.Response(step)
        raise step("scripted", request=request)

    return httpx.MockTransport(handler)


def transport(
    events: CapturedEvents, script: dict[str, list[int | type[Exception]]]
) -> ResilientTransport:
    clock = ManualClock()
    return ResilientTransport(
        upstream(script),
        clock=clock,
        sleep=RecordingSleep(clock),
        hooks=[events],
        random=random.Random(1),
    )


def test_attempts_and_reasons_per_logical_request() -> None:
    events = CapturedEvents()
    script: dict[str, list[int | type[Exception]]] = {
        "/fine": [200],
        "/flaky": [503, httpx.ConnectError, 200],
        "/down": [502, 502, 502],
    }
    with httpx.Client(transport=transport(events, script), base_url="https://p.example") as c:
        assert c.get("/fine").status_code == 200
        assert c.get("/flaky").status_code == 200
        assert c.get("/down").status_code == 502

    # "/fine" succeeded at once: no event, so it is not listed.
    assert events.attempts == [3, 3]
    assert events.reasons == [["503", "ConnectError"], ["502", "502", "502"]]
    assert [e.path for e in events.of(ClientEvent) if e.name == "client.attempt_failed"] == [
        "/flaky",
        "/flaky",
        "/down",
        "/down",
        "/down",
    ]


def test_of_filters_by_type_and_names_keep_the_order() -> None:
    events = CapturedEvents()
    script: dict[str, list[int | type[Exception]]] = {"/x": [503, 200]}
    with httpx.Client(transport=transport(events, script)) as client:
        client.get("https://p.example/x")

    assert events.names() == [
        "client.attempt_failed",
        "client.retry_scheduled",
        "client.retry_succeeded",
    ]
    (failed,) = events.of(AttemptFailed)
    assert (failed.reason, failed.status, failed.attempt) == ("503", 503, 1)
    assert [e.status for e in events.of(RetrySucceeded)] == [200]
    assert len(events.of(ClientEvent)) == 3  # subclasses count
    assert events.of(RetriesExhausted) == []


def test_requests_are_grouped_by_request_id() -> None:
    events = CapturedEvents()
    script: dict[str, list[int | type[Exception]]] = {"/a": [503, 200], "/b": [500, 200]}
    with httpx.Client(transport=transport(events, script)) as client:
        client.get("https://p.example/a", headers={"X-Request-Id": "req-a"})
        client.get("https://p.example/b", headers={"X-Request-Id": "req-b"})

    grouped = events.requests()
    assert list(grouped) == ["req-a", "req-b"]
    assert [e.name for e in grouped["req-b"]] == [
        "client.attempt_failed",
        "client.retry_scheduled",
        "client.retry_succeeded",
    ]


def test_a_request_that_gives_up_reports_every_reason() -> None:
    events = CapturedEvents()
    script: dict[str, list[int | type[Exception]]] = {
        "/x": [httpx.ConnectError, httpx.ReadError, httpx.ConnectError]
    }
    with (
        httpx.Client(transport=transport(events, script)) as client,
        pytest.raises(UpstreamUnavailable),
    ):
        client.get("https://p.example/x")

    assert events.attempts == [3]
    assert events.reasons == [["ConnectError", "ReadError", "ConnectError"]]
    (exhausted,) = events.of(RetriesExhausted)
    assert exhausted.stopped == "max_attempts"


def test_it_records_the_async_transport_and_the_breaker_too() -> None:
    events = CapturedEvents()
    clock = ManualClock()
    sleep = RecordingSleep(clock)
    breaker = CircuitBreaker(name="p", window_size=2, minimum_calls=2, clock=clock, hooks=[events])
    inner = upstream({"/x": [503, 503]})

    async def call() -> None:
        async with httpx.AsyncClient(
            transport=AsyncResilientTransport(
                inner, breaker=breaker, clock=clock, sleep=sleep.asleep, hooks=[events]
            )
        ) as client:
            await client.get("https://p.example/x")

    with pytest.raises(CircuitOpen):
        asyncio.run(call())

    (changed,) = events.of(BreakerStateChanged)
    assert (changed.from_state, changed.to_state) == ("closed", "open")
    assert events.attempts == [2]  # the breaker refused the third: it was never sent
    assert events.reasons == [["503", "503"]]


def test_clear_len_iter_and_repr() -> None:
    events = CapturedEvents()
    assert (len(events), events.attempts, events.reasons) == (0, [], [])
    event = Event(at=1.0, request_id="r")
    events(event)
    assert len(events) == 1
    assert list(events) == [event] == events.events
    assert events.attempts == []  # not a client event
    assert repr(events) == "CapturedEvents(['event'])"
    events.events.clear()  # a copy: the recorder is unchanged
    assert len(events) == 1
    events.clear()
    assert len(events) == 0


def test_an_attempt_refused_by_the_throttle_is_not_counted() -> None:
    events = CapturedEvents()
    clock = ManualClock()
    transport = ResilientTransport(
        upstream({"/x": [503, 200]}),
        throttle=Throttle("1/minute", name="p", max_wait=0),
        clock=clock,
        sleep=RecordingSleep(clock),
        hooks=[events],
    )
    with httpx.Client(transport=transport) as client, pytest.raises(UpstreamThrottled):
        client.get("https://p.example/x")

    assert "client.throttle_refused" in events.names()
    assert events.attempts == [1]  # the retry found no token: it was never sent
    assert events.reasons == [["503"]]
