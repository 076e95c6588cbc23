"""``idempotency_scope``: keys derived from a prefix, through both transports over MockTransport."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from surefoot.client import (
    AsyncResilientTransport,
    ResilientTransport,
    RetryPolicy,
    idempotency_scope,
)
from surefoot.errors import ConfigurationError
from surefoot.testing import ManualClock, RecordingSleep

URL = "https://api.example/v1/things"
MODES = ["sync", "async"]


class Upstream:
    """A MockTransport handler: answers with the scripted statuses, then ``then``."""

    def __init__(self, *statuses: int, then: int = 201, header: str = "idempotency-key") -> None:
        self.statuses = list(statuses)
        self.then = then
        self.header = header
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.statuses.pop(0) if self.statuses else self.then)

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get(self.header) for r in self.requests]


Call = tuple[str, dict[str, Any]]  # (method, keyword arguments of client.request)


class Sender:
    """Sends requests through one sync or async resilient transport, in the caller's context."""

    def __init__(self, mode: str, upstream: Upstream, **kwargs: Any) -> None:
        self.mode = mode
        clock = ManualClock()
        mock = httpx.MockTransport(upstream)
        kwargs.setdefault("hooks", [])
        kwargs.setdefault("random", random.Random(7))
        self.transport: Any
        if mode == "sync":
            self.transport = ResilientTransport(
                mock, clock=clock, sleep=RecordingSleep(clock), **kwargs
            )
        else:
            self.transport = AsyncResilientTransport(
                mock, clock=clock, sleep=RecordingSleep(clock).asleep, **kwargs
            )

    def sync(self, *calls: Call) -> list[int]:
        with httpx.Client(transport=self.transport) as client:
            return [client.request(method, URL, **kw).status_code for method, kw in calls]

    async def asend(self, *calls: Call) -> list[int]:
        async with httpx.AsyncClient(transport=self.transport) as client:
            return [(await client.request(method, URL, **kw)).status_code for method, kw in calls]

    def run(self, body: Callable[[Sender], Any]) -> Any:
        """Runs ``body`` as the user's code: directly (sync) or inside one event loop (async)."""
        if self.mode == "sync":
            return body(self)

        async def main() -> Any:
            result = body(self)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run(main())


POST: Call = ("POST", {"json": {"n": 1}})


@pytest.mark.parametrize("mode", MODES)
def test_keys_count_from_one_in_order(mode: str) -> None:
    upstream = Upstream()
    sender = Sender(mode, upstream)

    async def body_async(s: Sender) -> None:
        with idempotency_scope("order-42"):
            await s.asend(POST, ("PATCH", {}), POST)

    def body_sync(s: Sender) -> None:
        with idempotency_scope("order-42"):
            s.sync(POST, ("PATCH", {}), POST)

    sender.run(body_sync if mode == "sync" else body_async)
    assert upstream.keys == ["order-42:1", "order-42:2", "order-42:3"]


@pytest.mark.parametrize("mode", MODES)
def test_a_rerun_sends_the_same_keys(mode: str) -> None:
    upstream = Upstream()
    sender = Sender(mode, upstream)

    async def body_async(s: Sender) -> None:
        for _ in range(2):
            with idempotency_scope("job-7"):
                await s.asend(POST, POST)

    def body_sync(s: Sender) -> None:
        for _ in range(2):
            with idempotency_scope("job-7"):
                s.sync(POST, POST)

    sender.run(body_sync if mode == "sync" else body_async)
    assert upstream.keys == ["job-7:1", "job-7:2", "job-7:1", "job-7:2"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("auto", [False, True])
def test_scope_wins_over_auto_and_needs_no_auto(mode: str, auto: bool) -> None:
    upstream = Upstream()
    sender = Sender(mode, upstream, auto_idempotency_key=auto)

    async def body_async(s: Sender) -> None:
        with idempotency_scope("s"):
            await s.asend(POST)
        await s.asend(POST)  # outside: auto's UUID4, or no key

    def body_sync(s: Sender) -> None:
        with idempotency_scope("s"):
            s.sync(POST)
        s.sync(POST)

    sender.run(body_sync if mode == "sync" else body_async)
    scoped, after = upstream.keys
    assert scoped == "s:1"
    if auto:
        assert after is not None
        assert len(after) == 36  # a UUID4
    else:
        assert after is None


@pytest.mark.parametrize("mode", MODES)
def test_explicit_key_is_kept_and_takes_no_number(mode: str) -> None:
    upstream = Upstream()
    sender = Sender(mode, upstream, auto_idempotency_key=True)
    keyed: Call = ("POST", {"headers": {"Idempotency-Key": "mine"}})

    async def body_async(s: Sender) -> None:
        with idempotency_scope("p"):
            await s.asend(POST, keyed, POST)

    def body_sync(s: Sender) -> None:
        with idempotency_scope("p"):
            s.sync(POST, keyed, POST)

    sender.run(body_sync if mode == "sync" else body_async)
    assert upstream.keys == ["p:1", "mine", "p:2"]


@pytest.mark.parametrize("mode", MODES)
def test_idempotent_methods_get_no_key_and_take_no_number(mode: str) -> None:
    upstream = Upstream(then=200)
    sender = Sender(mode, upstream)
    calls: tuple[Call, ...] = (("GET", {}), ("PUT", {}), ("DELETE", {}), POST)

    async def body_async(s: Sender) -> None:
        with idempotency_scope("p"):
            await s.asend(*calls)

    def body_sync(s: Sender) -> None:
        with idempotency_scope("p"):
            s.sync(*calls)

    sender.run(body_sync if mode == "sync" else body_async)
    assert upstream.keys == [None, None, None, "p:1"]


@pytest.mark.parametrize("mode", MODES)
def test_idempotent_methods_follow_the_policy(mode: str) -> None:
    upstream = Upstream()
    policy = RetryPolicy(idempotent_methods=frozenset({"GET"}))
    sender = Sender(mode, upstream, retry=policy)

    async def body_async(s: Sender) -> None:
        with idempotency_scope("p"):
            await s.asend(("GET", {}), ("PUT", {}))

    def body_sync(s: Sender) -> None:
        with idempotency_scope("p"):
            s.sync(("GET", {}), ("PUT", {}))

    sender.run(body_sync if mode == "sync" else body_async)
    assert upstream.keys == [None, "p:1"]


@pytest.mark.parametrize("mode", MODES)
def test_custom_header(mode: str) -> None:
    upstream = Upstream(header="x-request-key")
    sender = Sender(mode, upstream, idempotency_header="X-Request-Key")

    async def body_async(s: Sender) -> None:
        with idempotency_scope("p"):
            await s.asend(POST)

    def body_sync(s: Sender) -> None:
        with idempotency_scope("p"):
            s.sync(POST)

    sender.run(body_sync if mode == "sync" else body_async)
    assert upstream.keys == ["p:1"]
    assert upstream.requests[0].headers.get("idempotency-key") is None


@pytest.mark.parametrize("mode", MODES)
def test_nested_scope_wins_and_the_outer_one_resumes(mode: str) -> None:
    upstream = Upstream()
    sender = Sender(mode, upstream)

    async def body_async(s: Sender) -> None:
        with idempotency_scope("outer"):
            await s.asend(POST)
            with idempotency_scope("inner"):
                await s.asend(POST, POST)
            await s.asend(POST)
        await s.asend(POST)

    def body_sync(s: Sender) -> None:
        with idempotency_scope("outer"):
            s.sync(POST)
            with idempotency_scope("inner"):
                s.sync(POST, POST)
            s.sync(POST)
        s.sync(POST)

    sender.run(body_sync if mode == "sync" else body_async)
    assert upstream.keys == ["outer:1", "inner:1", "inner:2", "outer:2", None]


@pytest.mark.parametrize("mode", MODES)
def test_scope_is_left_when_the_block_raises(mode: str) -> None:
    upstream = Upstream()
    sender = Sender(mode, upstream)

    async def crash_async(s: Sender) -> None:
        with idempotency_scope("p"):
            await s.asend(POST)
            raise RuntimeError("crash")

    def crash_sync(s: Sender) -> None:
        with idempotency_scope("p"):
            s.sync(POST)
            raise RuntimeError("crash")

    async def body_async(s: Sender) -> None:
        with pytest.raises(RuntimeError, match="crash"):
            await crash_async(s)
        await s.asend(POST)

    def body_sync(s: Sender) -> None:
        with pytest.raises(RuntimeError, match="crash"):
            crash_sync(s)
        s.sync(POST)

    sender.run(body_sync if mode == "sync" else body_async)
    assert upstream.keys == ["p:1", None]


@pytest.mark.parametrize("mode", MODES)
def test_retries_of_one_request_reuse_its_key(mode: str) -> None:
    upstream = Upstream(503, 503)
    sender = Sender(mode, upstream)

    async def body_async(s: Sender) -> list[int]:
        with idempotency_scope("pay"):
            return await s.asend(POST, POST)

    def body_sync(s: Sender) -> list[int]:
        with idempotency_scope("pay"):
            return s.sync(POST, POST)

    statuses = sender.run(body_sync if mode == "sync" else body_async)
    assert statuses == [201, 201]
    # The keyed POST is safe to retry: three attempts, one key; the next request takes 2.
    assert upstream.keys == ["pay:1", "pay:1", "pay:1", "pay:2"]


def test_without_a_scope_a_503_on_a_post_is_not_retried() -> None:
    """The counterpart of the test above: the scope's key is what made the POST retryable."""
    upstream = Upstream(503)
    assert Sender("sync", upstream).sync(POST) == [503]
    assert upstream.keys == [None]


def test_the_scope_follows_asyncio_to_thread_and_shares_its_counter() -> None:
    upstream = Upstream()
    sync_sender = Sender("sync", upstream)
    async_sender = Sender("async", upstream)

    async def main() -> None:
        with idempotency_scope("t"):
            await async_sender.asend(POST)
            await asyncio.to_thread(sync_sender.sync, POST, POST)
            await async_sender.asend(POST)

    asyncio.run(main())
    assert upstream.keys == ["t:1", "t:2", "t:3", "t:4"]


def test_the_scope_follows_await_into_tasks() -> None:
    upstream = Upstream()
    sender = Sender("async", upstream)

    async def main() -> None:
        with idempotency_scope("task"):
            await asyncio.create_task(sender.asend(POST))
            await sender.asend(POST)

    asyncio.run(main())
    assert upstream.keys == ["task:1", "task:2"]


@pytest.mark.parametrize(
    ("prefix", "got"),
    [
        ("", "got ''"),
        ("a b", "contains ' '"),
        ("tab\there", "contains '\\t'"),
        ("clé", "contains 'é'"),
        ("x" * 201, "got 201 characters"),
        (None, "got NoneType"),
        (42, "got int"),
        (b"bytes", "got bytes"),
    ],
)
def test_invalid_prefix_is_refused_at_once(prefix: Any, got: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        idempotency_scope(prefix)
    message = str(caught.value)
    assert message.startswith("idempotency_scope.prefix: expected a non-empty str")
    assert "printable ASCII (0x21-0x7e)" in message
    assert "at most 200 characters" in message
    assert got in message


def test_prefix_bounds_are_accepted() -> None:
    upstream = Upstream()
    sender = Sender("sync", upstream)
    longest = "y" * 200
    with idempotency_scope(longest):
        sender.sync(POST)
    with idempotency_scope("!~"):  # 0x21 and 0x7e
        sender.sync(POST)
    assert upstream.keys == [f"{longest}:1", "!~:1"]
