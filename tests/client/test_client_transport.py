"""ResilientTransport and AsyncResilientTransport over httpx.MockTransport.

Every scenario runs through both drivers (``mode``), and ``test_drivers_agree`` checks
that they do exactly the same thing: same attempts, waits, keys, events and outcome.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from surefoot.client import (
    AsyncResilientTransport,
    Breaker,
    ResilientTransport,
    RetryBudget,
    RetryPolicy,
)
from surefoot.errors import (
    CircuitOpen,
    ConfigurationError,
    SurefootError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from surefoot.events import Event, LoggingHook
from surefoot.testing import ManualClock, RecordingSleep

URL = "https://api.example/v1/things"
MODES = ["sync", "async"]


class Tracked(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that remembers whether it was read and closed."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body
        self.read = False
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        self.read = True
        yield self.body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        yield self.body

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def problem(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/problem+json"}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return httpx.Response(status, headers=headers, json={"status": status, "code": code})


Action = int | httpx.Response | type[Exception]


class Upstream:
    """A MockTransport handler answering each request with the next scripted action."""

    def __init__(self, *actions: Action, then: Action = 200) -> None:
        self.actions = list(actions)
        self.then = then
        self.requests: list[httpx.Request] = []
        self.timeouts: list[Any] = []
        self.streams: list[Tracked] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.timeouts.append(request.extensions.get("timeout"))
        action = self.actions.pop(0) if self.actions else self.then
        if isinstance(action, type) and issubclass(action, httpx.RequestError):
            raise action("scripted failure", request=request)
        if isinstance(action, type):
            raise action("scripted failure")
        if isinstance(action, int):
            stream = Tracked(b"{}")
            self.streams.append(stream)
            return httpx.Response(action, stream=stream)
        return action

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


@dataclass
class Result:
    response: httpx.Response | None = None
    error: BaseException | None = None
    sleeps: list[float] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    attempts: int = 0
    keys: list[str | None] = field(default_factory=list)

    def summary(self) -> tuple[Any, ...]:
        outcome = (
            self.response.status_code if self.response is not None else type(self.error).__name__
        )
        reason = self.error.fields.get("reason") if isinstance(self.error, SurefootError) else None
        events = [(e.name, e.attempt) for e in self.events]  # type: ignore[attr-defined]
        same_key = len(set(self.keys)) <= 1
        return outcome, reason, self.attempts, self.sleeps, events, same_key, self.keys[0] is None


def transport(mode: str, upstream: Upstream, **kwargs: Any) -> Any:
    clock = kwargs.pop("clock", None) or ManualClock()
    sleep = RecordingSleep(clock)
    kwargs.setdefault("random", random.Random(42))
    kwargs.setdefault("hooks", [])
    mock = httpx.MockTransport(upstream)
    if mode == "sync":
        made: Any = ResilientTransport(mock, clock=clock, sleep=sleep, **kwargs)
    else:
        made = AsyncResilientTransport(mock, clock=clock, sleep=sleep.asleep, **kwargs)
    made.recorder = sleep
    return made


def send(
    mode: str,
    upstream: Upstream,
    method: str = "GET",
    url: str = URL,
    *,
    request: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Result:
    events: list[Event] = []
    kwargs.setdefault("hooks", [events.append])
    made = transport(mode, upstream, **kwargs)
    result = Result(events=events)
    request = request or {}
    try:
        if mode == "sync":
            with httpx.Client(transport=made) as client:
                result.response = client.request(method, url, **request)
        else:

            async def go() -> httpx.Response:
                async with httpx.AsyncClient(transport=made) as client:
                    return await client.request(method, url, **request)

            result.response = asyncio.run(go())
    except Exception as exc:
        result.error = exc
    result.sleeps = made.recorder.calls
    result.attempts = len(upstream.requests)
    result.keys = upstream.keys
    return result


# Responses are made per run (a response can be sent once), hence the lambdas.
SCENARIOS: dict[str, tuple[Callable[[], tuple[Action, ...]], str, dict[str, Any]]] = {
    "ok": (lambda: (200,), "GET", {}),
    "503 503 200": (lambda: (503, 503), "GET", {}),
    "503 x3": (lambda: (503, 503, 503), "GET", {}),
    "503 x3 raise": (
        lambda: (503, 503, 503),
        "GET",
        {"retry": RetryPolicy(raise_on_exhausted=True)},
    ),
    "connect error then ok": (lambda: (httpx.ConnectError,), "GET", {}),
    "connect errors": (lambda: (httpx.ConnectError,) * 3, "GET", {}),
    "read timeouts": (lambda: (httpx.ReadTimeout,) * 3, "GET", {}),
    "reset then ok": (lambda: (httpx.RemoteProtocolError,), "GET", {}),
    "read error then ok": (lambda: (httpx.ReadError,), "PUT", {}),
    "pool timeout POST": (lambda: (httpx.PoolTimeout,), "POST", {}),
    "POST 503": (lambda: (503,), "POST", {}),
    "POST read timeout": (lambda: (httpx.ReadTimeout,), "POST", {}),
    "POST auto key": (lambda: (503, 502), "POST", {"auto_idempotency_key": True}),
    "PATCH auto key timeout": (
        lambda: (httpx.ReadTimeout,),
        "PATCH",
        {"auto_idempotency_key": True},
    ),
    "409 in progress": (
        lambda: (problem(409, "idempotency_request_in_progress", "1"),),
        "POST",
        {"auto_idempotency_key": True},
    ),
    "422": (
        lambda: (problem(422, "idempotency_key_reused"),),
        "POST",
        {"auto_idempotency_key": True},
    ),
    "retry-after 3600": (
        lambda: (httpx.Response(503, headers={"retry-after": "3600"}),),
        "GET",
        {},
    ),
    "429 retry-after 2": (lambda: (httpx.Response(429, headers={"retry-after": "2"}),), "GET", {}),
    "final problem": (lambda: (problem(503, "configuration_error"),), "GET", {}),
    "budget": (
        lambda: (503, 503),
        "GET",
        {"budget": RetryBudget(ratio=0, min_retries_per_second=0)},
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_drivers_agree(name: str) -> None:
    actions, method, kwargs = SCENARIOS[name]
    sync = send("sync", Upstream(*actions()), method, **kwargs)
    async_ = send("async", Upstream(*actions()), method, **kwargs)
    assert sync.summary() == async_.summary()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "failure",
    [503, 500, 429, 502, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.WriteError],
)
def test_post_without_key_is_never_retried(mode: str, failure: Action) -> None:
    upstream = Upstream(failure, failure, failure)
    result = send(mode, upstream, "POST", request={"json": {"amount": 500}})
    assert result.attempts == 1
    assert result.sleeps == []
    if isinstance(failure, int):
        assert result.response is not None
        assert result.response.status_code == failure
    else:
        assert isinstance(result.error, UpstreamTimeout | UpstreamUnavailable)
        assert "POST without an idempotency key is not safe to retry" in str(result.error)
        assert isinstance(result.error.__cause__, failure)


@pytest.mark.parametrize("mode", MODES)
def test_post_that_never_left_is_retried(mode: str) -> None:
    upstream = Upstream(httpx.ConnectError, httpx.ConnectTimeout)
    result = send(mode, upstream, "POST", request={"json": {"amount": 500}})
    assert result.attempts == 3
    assert result.response is not None
    assert result.response.status_code == 200


@pytest.mark.parametrize("mode", MODES)
def test_auto_idempotency_key_is_one_key_per_logical_request(mode: str) -> None:
    upstream = Upstream(503, httpx.ReadTimeout, then=201)
    made = transport(mode, upstream, auto_idempotency_key=True)

    async def two_async() -> list[int]:
        async with httpx.AsyncClient(transport=made) as client:
            return [(await client.post(URL, json={"n": n})).status_code for n in (1, 2)]

    if mode == "sync":
        with httpx.Client(transport=made) as client:
            statuses = [client.post(URL, json={"n": n}).status_code for n in (1, 2)]
    else:
        statuses = asyncio.run(two_async())
    assert statuses == [201, 201]
    keys = upstream.keys
    assert len(keys) == 4
    first, second = keys[:3], keys[3]
    assert len(set(first)) == 1  # every attempt of request 1 carries its key
    assert first[0] is not None
    assert len(first[0]) == 36  # a UUID4
    assert second not in first  # request 2 is another logical operation


@pytest.mark.parametrize("mode", MODES)
def test_callers_key_is_kept_and_get_gets_none(mode: str) -> None:
    upstream = Upstream(503)
    send(mode, upstream, "POST", request={"headers": {"Idempotency-Key": "k-1"}})
    assert upstream.keys == ["k-1", "k-1"]
    upstream = Upstream(503)
    send(mode, upstream, "GET", auto_idempotency_key=True)
    assert upstream.keys == [None, None]


@pytest.mark.parametrize("mode", MODES)
def test_custom_idempotency_header(mode: str) -> None:
    upstream = Upstream(503)
    send(mode, upstream, "POST", auto_idempotency_key=True, idempotency_header="X-Request-Key")
    keys = [r.headers.get("x-request-key") for r in upstream.requests]
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]


@pytest.mark.parametrize("mode", MODES)
def test_retry_after_beyond_deadline_fails_at_once(mode: str) -> None:
    upstream = Upstream(httpx.Response(503, headers={"retry-after": "3600"}, text="later"))
    result = send(mode, upstream, retry=RetryPolicy(deadline=30.0))
    assert result.attempts == 1
    assert result.sleeps == []
    error = result.error
    assert isinstance(error, UpstreamTimeout)
    assert "asked to wait 3600 s, past the 30 s deadline" in str(error)
    assert error.response.status_code == 503  # type: ignore[attr-defined]
    assert error.response.text == "later"  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", MODES)
def test_retry_on_409_in_progress_waits_retry_after(mode: str) -> None:
    upstream = Upstream(problem(409, "idempotency_request_in_progress", "1"), then=201)
    result = send(mode, upstream, "POST", auto_idempotency_key=True)
    assert result.response is not None
    assert result.response.status_code == 201
    assert result.attempts == 2
    assert result.sleeps[0] >= 1.0


@pytest.mark.parametrize("mode", MODES)
def test_never_retried_on_422(mode: str) -> None:
    upstream = Upstream(problem(422, "idempotency_key_reused"))
    result = send(mode, upstream, "POST", auto_idempotency_key=True)
    assert result.attempts == 1
    assert result.response is not None
    assert result.response.status_code == 422
    assert result.events == []


@pytest.mark.parametrize("mode", MODES)
def test_retried_responses_are_read_and_closed_the_answer_is_not(mode: str) -> None:
    answer = Tracked(b"payload")
    upstream = Upstream(503, 502, httpx.Response(200, stream=answer))
    made = transport(mode, upstream)

    async def stream_async() -> tuple[bool, bool, bytes]:
        async with httpx.AsyncClient(transport=made) as client:
            async with client.stream("GET", URL) as response:
                state = (answer.read, answer.closed)
                body = await response.aread()
            return (*state, body)

    if mode == "sync":
        with httpx.Client(transport=made) as client, client.stream("GET", URL) as response:
            state = (answer.read, answer.closed)
            body = response.read()
    else:
        *state, body = asyncio.run(stream_async())  # type: ignore[assignment]
    assert [(s.read, s.closed) for s in upstream.streams] == [(True, True), (True, True)]
    assert tuple(state) == (False, False)  # the answer still streams to the caller
    assert body == b"payload"
    assert answer.closed


@pytest.mark.parametrize("mode", MODES)
def test_exhausted_response_is_returned_readable(mode: str) -> None:
    result = send(mode, Upstream(503, 503, httpx.Response(503, text="still down")))
    assert result.response is not None
    assert result.response.status_code == 503
    assert result.response.text == "still down"
    assert result.attempts == 3
    assert [e.name for e in result.events][-1] == "client.retries_exhausted"


@pytest.mark.parametrize("mode", MODES)
def test_attempt_timeout_goes_into_the_timeout_extension(mode: str) -> None:
    clock = ManualClock()
    upstream = Upstream(503, 503)
    policy = RetryPolicy(deadline=10.0, attempt_timeout=3.0, backoff_base=2, jitter="none")
    send(mode, upstream, retry=policy, clock=clock)
    default = 5.0  # httpx's default client timeout
    assert upstream.timeouts[0] == dict.fromkeys(("connect", "read", "write", "pool"), 3.0)
    assert upstream.timeouts[1] == dict.fromkeys(("connect", "read", "write", "pool"), 3.0)
    # After waits of 2 and 4 s only 4 s of the deadline are left: still 3.
    assert upstream.timeouts[2]["read"] == 3.0
    # A caller's tighter timeout wins, and no timeout (None) gets the cap.
    upstream = Upstream()
    send(
        mode,
        upstream,
        retry=RetryPolicy(attempt_timeout=3.0),
        request={"timeout": httpx.Timeout(1.0, pool=None)},
    )
    assert upstream.timeouts[0] == {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 3.0}
    upstream = Upstream()
    send(mode, upstream, retry=RetryPolicy(deadline=None))
    assert upstream.timeouts[0]["read"] == default  # untouched


def test_request_extensions_are_restored() -> None:
    upstream = Upstream(503)
    made = transport("sync", upstream, retry=RetryPolicy(attempt_timeout=1.0))
    request = httpx.Request("GET", URL, extensions={"timeout": {"read": 9.0}})
    made.handle_request(request)
    assert request.extensions == {"timeout": {"read": 9.0}}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("error", [httpx.UnsupportedProtocol, httpx.LocalProtocolError, ValueError])
def test_errors_that_are_not_the_upstreams_propagate_unchanged(
    mode: str, error: type[Exception]
) -> None:
    breaker = FakeBreaker()
    upstream = Upstream(error)
    result = send(mode, upstream, breaker=breaker)
    assert type(result.error) is error
    assert result.attempts == 1
    assert breaker.calls == ["acquire", "release"]


@pytest.mark.parametrize("mode", MODES)
def test_streaming_request_body_is_not_sent_twice(mode: str) -> None:
    upstream = Upstream(503)

    def chunks() -> Iterator[bytes]:
        yield b"part"

    async def achunks() -> AsyncIterator[bytes]:
        yield b"part"

    body = chunks() if mode == "sync" else achunks()
    result = send(mode, upstream, "PUT", request={"content": body})
    assert result.attempts == 1
    assert result.events[-1].stopped == "body_not_replayable"  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", MODES)
def test_error_while_reading_a_retry_candidate_body_is_a_lost_connection(mode: str) -> None:
    class Broken(Tracked):
        def __iter__(self) -> Iterator[bytes]:
            raise httpx.ReadError("reset mid-body")

        async def __aiter__(self) -> AsyncIterator[bytes]:
            raise httpx.ReadError("reset mid-body")
            yield b""  # pragma: no cover

    broken = Broken()
    upstream = Upstream(httpx.Response(503, stream=broken))
    result = send(mode, upstream)
    assert result.response is not None
    assert result.response.status_code == 200
    assert broken.closed
    assert result.events[0].reason == "ReadError"  # type: ignore[attr-defined]


class FakeBreaker:
    def __init__(self, *, is_open: bool = False) -> None:
        self.is_open = is_open
        self.calls: list[str] = []
        self.results: list[dict[str, Any]] = []

    def acquire(self) -> object:
        if self.is_open:
            raise CircuitOpen(integration="api.example", retry_after=30)
        self.calls.append("acquire")
        return len(self.calls)

    def on_result(self, permit: object, **outcome: Any) -> None:
        self.calls.append("result")
        self.results.append(outcome)

    def release(self, permit: object) -> None:
        self.calls.append("release")


def test_fake_breaker_satisfies_the_protocol() -> None:
    assert isinstance(FakeBreaker(), Breaker)


@pytest.mark.parametrize("mode", MODES)
def test_open_breaker_means_no_network_call(mode: str) -> None:
    upstream = Upstream()
    result = send(mode, upstream, breaker=FakeBreaker(is_open=True))
    assert isinstance(result.error, CircuitOpen)
    assert result.attempts == 0


@pytest.mark.parametrize("mode", MODES)
def test_breaker_sees_each_attempt(mode: str) -> None:
    breaker = FakeBreaker()
    upstream = Upstream(503, httpx.ConnectError, then=404)
    result = send(mode, upstream, breaker=breaker)
    assert result.response is not None
    assert result.response.status_code == 404
    assert breaker.calls == ["acquire", "result"] * 3
    assert [(r["failed"], r["status"]) for r in breaker.results] == [
        (True, 503),
        (True, None),
        (False, 404),
    ]
    assert isinstance(breaker.results[1]["error"], httpx.ConnectError)


@pytest.mark.parametrize("mode", MODES)
def test_budget_stops_a_retry_storm(mode: str) -> None:
    """1000 requests against an upstream that always fails: attempts per request."""

    def storm(budget: RetryBudget) -> float:
        upstream = Upstream(then=503)
        made = transport(mode, upstream, budget=budget, retry=RetryPolicy(max_attempts=3))

        async def many_async() -> None:
            async with httpx.AsyncClient(transport=made) as client:
                for _ in range(1000):
                    await client.get(URL)

        if mode == "sync":
            with httpx.Client(transport=made) as client:
                for _ in range(1000):
                    client.get(URL)
        else:
            asyncio.run(many_async())
        return len(upstream.requests) / 1000

    assert storm(RetryBudget.unlimited()) == 3.0  # max_attempts alone triples the load
    budgeted = storm(RetryBudget(ratio=0.2, min_retries_per_second=0, window=10))
    assert 1.1 <= budgeted <= 1.2
    with_reserve = storm(RetryBudget(ratio=0.2, min_retries_per_second=1, window=10))
    assert budgeted < with_reserve <= 1.35


@pytest.mark.parametrize("mode", MODES)
def test_jitter_spreads_retries(mode: str) -> None:
    """200 clients fail once at the same instant: where do their retries land?"""

    def retry_times(jitter: Any) -> list[float]:
        upstream = Upstream(*([503, 200] * 200))
        made = transport(mode, upstream, retry=RetryPolicy(jitter=jitter, backoff_base=1.0))
        for _ in range(200):
            request = httpx.Request("GET", URL)
            if mode == "sync":
                made.handle_request(request)
            else:
                asyncio.run(made.handle_async_request(request))
        calls: list[float] = made.recorder.calls
        return calls

    def busiest_slot(delays: list[float]) -> int:
        slots: dict[int, int] = {}
        for delay in delays:
            slot = int(delay * 20)  # 50 ms slots
            slots[slot] = slots.get(slot, 0) + 1
        return max(slots.values())

    herd = retry_times("none")
    assert herd == [1.0] * 200  # every client retries in the same instant
    for jitter in ("full", "equal", "decorrelated"):
        spread = retry_times(jitter)
        assert len(set(spread)) == 200
        assert busiest_slot(spread) <= 40, jitter  # uniform over >= 10 slots: about 20 each
    full = retry_times("full")
    assert busiest_slot(full) <= 25
    assert min(full) < 0.1
    assert max(full) > 0.9


@pytest.mark.parametrize("mode", MODES)
def test_event_identity_fields(mode: str) -> None:
    result = send(
        mode,
        Upstream(503),
        url=URL + "?api_key=secret",
        request={"headers": {"X-Request-Id": "rid-1"}},
    )
    first = result.events[0]
    assert (first.request_id, first.host, first.path) == ("rid-1", "api.example", "/v1/things")  # type: ignore[attr-defined]
    assert "secret" not in repr(result.events)
    keyed = send(mode, Upstream(503), "POST", auto_idempotency_key=True)
    assert keyed.events[0].request_id == keyed.keys[0]
    anonymous = send(mode, Upstream(503))
    assert anonymous.events[0].request_id  # a per-process counter


def test_defaults() -> None:
    made = ResilientTransport()
    assert isinstance(made.transport, httpx.HTTPTransport)
    assert made.retry == RetryPolicy()
    assert isinstance(made.budget, RetryBudget)
    assert made.budget is not ResilientTransport().budget  # never shared by accident
    assert isinstance(made.hooks[0], LoggingHook)
    made.close()
    amade = AsyncResilientTransport()
    assert isinstance(amade.transport, httpx.AsyncHTTPTransport)
    asyncio.run(amade.aclose())


def test_close_reaches_the_inner_transport() -> None:
    closed: list[str] = []

    class Inner(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)  # pragma: no cover

        def close(self) -> None:
            closed.append("sync")

    class AsyncInner(httpx.AsyncBaseTransport):
        async def aclose(self) -> None:
            closed.append("async")

    with ResilientTransport(Inner()):
        pass

    async def go() -> None:
        async with AsyncResilientTransport(AsyncInner()):
            pass

    asyncio.run(go())
    assert closed == ["sync", "async"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry": {"max_attempts": 3}}, "ResilientTransport.retry: expected a RetryPolicy"),
        ({"budget": 0.2}, "ResilientTransport.budget: expected a RetryBudget"),
        ({"breaker": object()}, "ResilientTransport.breaker: expected a circuit breaker"),
        ({"clock": 1.0}, "ResilientTransport.clock: expected a Clock"),
        ({"idempotency_header": ""}, "ResilientTransport.idempotency_header"),
    ],
)
def test_invalid_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ResilientTransport(**kwargs)
    with pytest.raises(ConfigurationError, match=message.replace("Resilient", "AsyncResilient")):
        AsyncResilientTransport(**kwargs)


def test_wrong_kind_of_inner_transport() -> None:
    with pytest.raises(ConfigurationError, match=r"expected an httpx\.BaseTransport"):
        ResilientTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"expected an httpx\.AsyncBaseTransport"):
        AsyncResilientTransport(httpx.HTTPTransport())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_usage_from_the_issue_works_as_written() -> None:
    seen: list[str | None] = []

    def partner(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("idempotency-key"))
        return httpx.Response(503 if len(seen) < 3 else 201, json={"id": "shp_1"})

    clock = ManualClock()
    transport = AsyncResilientTransport(
        httpx.MockTransport(partner),
        retry=RetryPolicy(max_attempts=4, deadline=30.0),
        auto_idempotency_key=True,
        clock=clock,
        sleep=clock.sleep,
    )
    async with httpx.AsyncClient(transport=transport, base_url="https://partner.example") as client:
        response = await client.post("/v1/shipments", json={"parcel": "P-1"})
    assert response.status_code == 201
    assert len(seen) == 3
    assert len(set(seen)) == 1
