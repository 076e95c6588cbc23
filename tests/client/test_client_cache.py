"""StaleCache: serve the last good GET answer when the upstream fails, in both drivers."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _services import store_url_sync
from surefoot.client import (
    STALE_HEADER,
    AsyncResilientTransport,
    CircuitBreaker,
    ResilientTransport,
    RetryPolicy,
    StaleCache,
    StaleServed,
    Throttle,
)
from surefoot.errors import (
    ConfigurationError,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from surefoot.events import Event
from surefoot.storage import MemoryStore, SqliteStore, store_from_url
from surefoot.testing import ManualClock, RecordingSleep

URL = "https://partner.example/v1/prices"
MODES = ["sync", "async"]


def ok(body: bytes = b'{"price": 10}', **headers: str) -> httpx.Response:
    """A good answer that streams (as a real transport's does)."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.Response(200, headers=named, stream=httpx.ByteStream(body))


class Harness:
    def __init__(self, mode: str, cache: StaleCache | None = None, **kw: Any) -> None:
        self.mode = mode
        self.clock = ManualClock()
        self.sleep = RecordingSleep(self.clock)
        self.events: list[Event] = []
        self.cache = cache if cache is not None else StaleCache(max_staleness=60)
        self.answers: list[Any] = []
        self.seen: list[httpx.Request] = []
        mock = httpx.MockTransport(self.handle)
        kw.setdefault("retry", RetryPolicy(max_attempts=2, jitter="none"))
        common: dict[str, Any] = dict(
            cache=self.cache, clock=self.clock, hooks=[self.events.append], **kw
        )
        if mode == "sync":
            self.transport: Any = ResilientTransport(mock, sleep=self.sleep, **common)
        else:
            self.transport = AsyncResilientTransport(mock, sleep=self.sleep.asleep, **common)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        action = self.answers.pop(0) if self.answers else 503
        if isinstance(action, int):
            return httpx.Response(action, stream=httpx.ByteStream(b"down"))
        if isinstance(action, type):
            raise action("scripted", request=request)
        return action  # type: ignore[no-any-return]

    def send(self, method: str = "GET", url: str = URL, **kw: Any) -> httpx.Response:
        if self.mode == "sync":
            with httpx.Client(transport=self.transport) as client:
                return client.request(method, url, **kw)

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport) as client:
                return await client.request(method, url, **kw)

        return asyncio.run(go())

    def stale(self) -> list[StaleServed]:
        return [e for e in self.events if isinstance(e, StaleServed)]


@pytest.mark.parametrize("mode", MODES)
def test_serves_the_last_good_answer_when_the_upstream_fails(mode: str) -> None:
    h = Harness(mode)
    h.answers = [ok(content_type="application/json", etag='"v1"')]
    first = h.send()
    assert first.status_code == 200
    assert STALE_HEADER not in first.headers
    h.clock.advance(42.0)  # then 0.5 s of backoff between the two failing attempts
    h.answers = [httpx.ConnectError, httpx.ConnectError]
    stale = h.send()
    assert stale.status_code == 200
    assert stale.json() == {"price": 10}
    assert stale.headers[STALE_HEADER] == "42"
    assert stale.headers["age"] == "42"
    assert stale.headers["etag"] == '"v1"'
    assert len(h.seen) == 3  # the upstream was tried (twice) before the cache answered
    (event,) = h.stale()
    assert (event.age, event.reason, event.attempt, event.path) == (
        42.5, "upstream_unavailable", 2, "/v1/prices",
    )  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_serves_at_max_staleness_but_not_after(mode: str) -> None:
    h = Harness(mode)
    h.answers = [ok()]
    h.send()
    h.clock.advance(59.5)  # plus 0.5 s of backoff: exactly max_staleness when served
    assert h.send().headers[STALE_HEADER] == "60"
    h.clock.advance(0.001)
    last = h.send()
    assert last.status_code == 503  # retries exhausted: the upstream's own answer
    assert STALE_HEADER not in last.headers
    assert len(h.cache) == 0  # too old to ever serve: dropped


@pytest.mark.parametrize("mode", MODES)
def test_replaces_a_final_retry_status_and_closes_it(mode: str) -> None:
    h = Harness(mode)
    h.answers = [ok(), 503, 502]
    h.send()
    stale = h.send()
    assert stale.status_code == 200
    assert stale.headers[STALE_HEADER] == "0"
    assert [e.reason for e in h.stale()] == ["502"]


@pytest.mark.parametrize("mode", MODES)
def test_serves_when_raising_timeout_or_breaker_is_open(mode: str) -> None:
    breaker = CircuitBreaker(hooks=[])
    h = Harness(mode, breaker=breaker, retry=RetryPolicy(max_attempts=1))
    h.answers = [ok()]
    h.send()
    h.answers = [httpx.ReadTimeout]
    assert h.send().headers[STALE_HEADER] == "0"
    breaker.force_open()
    assert h.send().status_code == 200
    assert [e.reason for e in h.stale()] == ["upstream_timeout", "circuit_open"]
    assert len(h.seen) == 2  # the open breaker sent nothing


@pytest.mark.parametrize("mode", MODES)
def test_serves_when_the_throttle_refuses(mode: str) -> None:
    h = Harness(mode, throttle=Throttle("1/minute", max_wait=0))
    h.answers = [ok()]
    h.send()
    assert h.send().headers[STALE_HEADER] == "0"
    assert [e.reason for e in h.stale()] == ["upstream_throttled"]


@pytest.mark.parametrize("mode", MODES)
def test_errors_propagate_when_nothing_is_cached(mode: str) -> None:
    h = Harness(mode, retry=RetryPolicy(max_attempts=1))
    h.answers = [httpx.ConnectError]
    with pytest.raises(UpstreamUnavailable):
        h.send()
    h.answers = [httpx.ReadTimeout]
    with pytest.raises(UpstreamTimeout):
        h.send()
    assert h.stale() == []


@pytest.mark.parametrize("mode", MODES)
def test_never_for_post(mode: str) -> None:
    h = Harness(mode, retry=RetryPolicy(max_attempts=1))
    h.answers = [ok(), ok(b"created")]
    h.send()  # a GET answer for the URL is cached...
    assert h.send("POST", content=b"x").content == b"created"
    h.answers = [httpx.ConnectError]
    with pytest.raises(UpstreamUnavailable):
        h.send("POST", content=b"x")  # ...and never replayed for a POST
    h.answers = [503]
    assert h.send("POST", content=b"x").status_code == 503
    assert len(h.cache) == 1  # the POST's answer was not stored


@pytest.mark.parametrize("mode", MODES)
def test_an_unexpected_error_is_not_masked(mode: str) -> None:
    h = Harness(mode)
    h.answers = [ok(), httpx.UnsupportedProtocol]
    h.send()
    with pytest.raises(httpx.UnsupportedProtocol):
        h.send()


@pytest.mark.parametrize("mode", MODES)
def test_only_good_complete_answers_are_stored(mode: str) -> None:
    h = Harness(mode)
    h.answers = [
        httpx.Response(404, stream=httpx.ByteStream(b"nope")),
        ok(cache_control="no-store"),
        ok(vary="*"),
    ]
    for _ in range(3):
        h.send()
    assert len(h.cache) == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_streamed_body_is_stored_only_once_read_to_the_end(mode: str) -> None:
    h = Harness(mode)

    class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self) -> Any:
            yield b"a"
            yield b"b"

        async def __aiter__(self) -> Any:
            yield b"a"
            yield b"b"

    h.answers = [httpx.Response(200, stream=Chunks()), httpx.Response(200, stream=Chunks())]
    if mode == "sync":
        with httpx.Client(transport=h.transport) as client:
            with client.stream("GET", URL) as response:
                next(response.iter_raw())  # one chunk, then closed
            assert len(h.cache) == 0
            assert client.get(URL).content == b"ab"
    else:

        async def go() -> None:
            async with httpx.AsyncClient(transport=h.transport) as client:
                async with client.stream("GET", URL) as response:
                    async for _ in response.aiter_raw():
                        break
                assert len(h.cache) == 0
                assert (await client.get(URL)).content == b"ab"

        asyncio.run(go())
    assert len(h.cache) == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_compressed_body_is_kept_raw_and_served_decoded(mode: str) -> None:
    h = Harness(mode)
    packed = gzip.compress(b"hello " * 100)
    h.answers = [ok(packed, content_encoding="gzip", content_length=str(len(packed)))]
    assert h.send().content == b"hello " * 100
    assert h.send().content == b"hello " * 100
    assert h.cache.total_bytes == len(packed)


@pytest.mark.parametrize("mode", MODES)
def test_an_answer_read_already_is_stored_decoded(mode: str) -> None:
    h = Harness(mode)
    h.answers = [httpx.Response(200, content=b"ready", headers={"x-v": "1"})]
    h.send()
    stale = h.send()
    assert (stale.content, stale.headers["x-v"], stale.headers["content-length"]) == (
        b"ready", "1", "5",
    )  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_vary_and_credentials_are_part_of_the_key(mode: str) -> None:
    h = Harness(mode)
    h.answers = [ok(b"fr", vary="Accept-Language")]
    h.send(headers={"accept-language": "fr", "authorization": "Bearer a"})
    assert h.send(headers={"accept-language": "fr", "authorization": "Bearer a"}).content == b"fr"
    for headers in (
        {"accept-language": "de", "authorization": "Bearer a"},  # another variant
        {"accept-language": "fr", "authorization": "Bearer b"},  # another credential
        {"accept-language": "fr"},  # no credential
    ):
        response = h.send(headers=headers)
        assert response.status_code == 503
        assert STALE_HEADER not in response.headers


@pytest.mark.parametrize("mode", MODES)
def test_a_body_too_big_for_one_entry_is_not_stored(mode: str) -> None:
    class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self) -> Any:
            yield from (b"x" * 6, b"x" * 6, b"x")

        async def __aiter__(self) -> Any:
            for chunk in self:
                yield chunk

    h = Harness(mode, StaleCache(max_bytes=100, max_entry_bytes=10))
    h.answers = [ok(b"x" * 11), httpx.Response(200, content=b"y" * 11)]
    h.answers.append(httpx.Response(200, stream=Chunks()))
    for _ in range(3):
        assert h.send().status_code == 200
    assert len(h.cache) == 0


def test_the_cache_is_bounded_in_entries_and_bytes_least_recently_used_first() -> None:
    cache = StaleCache(max_entries=2, max_bytes=10, max_entry_bytes=6)
    cache.put("/a", {}, 200, {}, b"aaa", 0.0)
    cache.put("/b", {}, 200, {}, b"bbb", 0.0)
    assert cache.get("/a", {}, 1.0) is not None  # /a is now the most recently used
    cache.put("/c", {}, 200, {}, b"ccc", 0.0)  # over 2 entries: /b goes
    assert [u for u in ("/a", "/b", "/c") if cache.get(u, {}, 1.0)] == ["/a", "/c"]
    cache.put("/d", {}, 200, {}, b"dddddd", 0.0)  # over 2 entries: /a (least recent) goes
    assert (len(cache), cache.total_bytes) == (2, 9)
    cache.put("/d", {}, 200, {}, b"d", 1.0)  # replacing an answer frees its bytes
    assert (len(cache), cache.total_bytes) == (2, 4)

    by_bytes = StaleCache(max_entries=100, max_bytes=10, max_entry_bytes=6)
    for url in ("/1", "/2", "/3"):
        by_bytes.put(url, {}, 200, {}, b"xxx", 0.0)
    by_bytes.put("/4", {}, 200, {}, b"yyyyyy", 0.0)  # 15 bytes: the two oldest go
    assert [u for u in ("/1", "/2", "/3", "/4") if by_bytes.get(u, {}, 0.0)] == ["/3", "/4"]
    assert by_bytes.total_bytes == 9
    assert cache.put("/e", {}, 200, {}, b"e" * 7, 0.0) is False
    assert cache.put("/e", {}, 500, {}, b"e", 0.0) is False
    assert "entries=" in repr(cache)
    cache.clear()
    assert len(cache) == 0
    assert cache.total_bytes == 0
    assert cache.get("/d", {}, 1.0) is None


def test_variants_of_one_url_are_kept_apart() -> None:
    cache = StaleCache()
    cache.put("/p", {"accept": "a"}, 200, {"Vary": "Accept"}, b"A", 0.0)
    cache.put("/p", {"accept": "b"}, 200, {"Vary": "Accept"}, b"B", 0.0)
    assert len(cache) == 2
    found = cache.get("/p", {"accept": "a"}, 0.0)
    assert found is not None
    assert found.body == b"A"
    assert cache.get("/p", {"accept": "c"}, 0.0) is None
    assert cache.get("/p", {"accept": "a"}, 1000.0) is None  # stale beyond use: dropped
    assert len(cache) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_staleness": 0}, "max_staleness"),
        ({"max_staleness": float("inf")}, "max_staleness"),
        ({"max_entries": 0}, "max_entries"),
        ({"max_bytes": True}, "max_bytes"),
        ({"max_bytes": 10, "max_entry_bytes": 11}, "max_entry_bytes"),
        ({"max_entry_bytes": 0}, "max_entry_bytes"),
        ({"store": object()}, "store: expected a CacheStore"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        StaleCache(**kwargs)


@pytest.mark.parametrize("cls", [ResilientTransport, AsyncResilientTransport])
def test_transports_refuse_what_is_not_a_cache(cls: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"\.cache: expected a StaleCache"):
        cls(cache={})


# -- a cache in a store: shared by processes -------------------------------------------------


@contextlib.contextmanager
def two_caches(kind: str, tmp_path: Path, **kw: Any) -> Iterator[tuple[StaleCache, StaleCache]]:
    """Two caches, each with a store object of its own on one store: two processes."""
    with store_url_sync(kind, tmp_path, options="timeout=1" if kind == "redis" else "") as url:
        caches = (
            StaleCache(store=store_from_url(url), **kw),
            StaleCache(store=store_from_url(url), **kw),
        )
        try:
            yield caches
        finally:
            for cache in caches:
                cache.close(close_store=True)


def pair(mode: str, first: StaleCache, second: StaleCache) -> tuple[Harness, Harness]:
    """Two transports, one cache each, on one clock (time passes for both "processes")."""
    one, two = Harness(mode, first), Harness(mode, second)
    two.clock = two.transport.clock = two.sleep.clock = one.clock
    return one, two


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@pytest.mark.parametrize("mode", MODES)
def test_caches_on_one_store_serve_each_others_answers(
    mode: str, kind: str, tmp_path: Path
) -> None:
    with two_caches(kind, tmp_path, max_staleness=60) as (first, second):
        one, two = pair(mode, first, second)
        one.answers = [ok(content_type="application/json", etag='"v1"')]
        assert one.send().json() == {"price": 10}
        one.clock.advance(30.0)  # then 0.5 s of backoff
        two.answers = [httpx.ConnectError, httpx.ConnectError]
        stale = two.send()
        assert stale.status_code == 200
        assert stale.json() == {"price": 10}
        assert stale.headers["etag"] == '"v1"'
        assert stale.headers[STALE_HEADER] == "30"
        assert [e.reason for e in two.stale()] == ["upstream_unavailable"]
        # Another credential never gets it, from the store either.
        two.answers = [httpx.ConnectError, httpx.ConnectError]
        with pytest.raises(UpstreamUnavailable):
            two.send(headers={"Authorization": "Bearer other"})


@pytest.mark.parametrize("mode", MODES)
def test_a_stored_answer_is_served_at_max_staleness_but_not_after(
    mode: str, tmp_path: Path
) -> None:
    with two_caches("sqlite", tmp_path, max_staleness=60) as (first, second):
        one, two = pair(mode, first, second)
        one.answers = [ok()]
        one.send()
        one.clock.advance(59.5)  # plus 0.5 s of backoff: exactly max_staleness
        assert two.send().headers[STALE_HEADER] == "60"
        one.clock.advance(0.001)
        last = two.send()
        assert last.status_code == 503  # the upstream's own answer
        assert STALE_HEADER not in last.headers


@pytest.mark.parametrize("mode", MODES)
def test_a_request_whose_varied_headers_differ_finds_no_stored_copy(mode: str) -> None:
    h = Harness(mode, StaleCache(max_staleness=60, store=MemoryStore()))
    h.answers = [ok(vary="Accept-Language")]
    h.send(headers={"Accept-Language": "fr"})
    assert h.send(headers={"Accept-Language": "fr"}).headers[STALE_HEADER] == "0"
    last = h.send(headers={"Accept-Language": "en"})
    assert last.status_code == 503
    h.cache.close()


class BrokenStore(MemoryStore):
    """A store that is down: every cache call fails as a real one would."""

    def __init__(self, *, reads: bool = True, writes: bool = True) -> None:
        super().__init__()
        self.reads, self.writes = reads, writes

    async def cache_get(self, key: str, now: float) -> bytes | None:
        if self.reads:
            raise StoreUnavailable(retry_after=1)
        return await super().cache_get(key, now)

    async def cache_put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        if self.writes:
            raise StoreUnavailable(retry_after=1)
        await super().cache_put(key, value, expires_at, now)


@pytest.mark.parametrize("mode", MODES)
def test_a_store_that_fails_to_write_costs_the_caller_nothing(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(mode, StaleCache(max_staleness=60, store=BrokenStore(reads=False)))
    h.answers = [ok()]
    with caplog.at_level(logging.WARNING, logger="surefoot.client.cache"):
        assert h.send().json() == {"price": 10}  # the answer, though it was not stored
    assert "writing BrokenStore failed" in caplog.text
    h.answers = [httpx.ConnectError, httpx.ConnectError]
    with pytest.raises(UpstreamUnavailable):
        h.send()  # nothing was stored: the upstream's error, not a stale copy
    h.cache.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_store_that_fails_to_read_raises_the_upstreams_error(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenStore(writes=False)
    h = Harness(mode, StaleCache(max_staleness=60, store=store))
    h.answers = [ok()]
    h.send()
    assert len(store._cache) == 1  # stored, but unreadable now
    h.answers = [httpx.ConnectTimeout, httpx.ConnectTimeout]
    with caplog.at_level(logging.WARNING, logger="surefoot.client.cache"):
        with pytest.raises(UpstreamTimeout):
            h.send()
        h.answers = [503, 503]
        assert h.send().status_code == 503  # a retry status stays the upstream's answer
    assert "reading BrokenStore failed" in caplog.text
    assert h.stale() == []
    h.cache.close()


def test_an_unreadable_stored_value_is_no_stale_copy() -> None:
    store = MemoryStore()
    cache = StaleCache(max_staleness=60, store=store)
    assert cache.put(URL, {}, 200, {"a": "b"}, b"body", 100.0)
    for garbage in (b"not json", b'{"status": 200}\nbody', b"[1, 2]\n", b'{"x":1}'):
        for key in store._cache:
            store._cache[key] = (garbage, 1e9)
        assert cache.get(URL, {}, 101.0) is None
    cache.close()


def test_a_store_backed_cache_describes_itself() -> None:
    cache = StaleCache(max_staleness=30, store=SqliteStore(":memory:"))
    assert repr(cache) == "StaleCache(store=SqliteStore, max_staleness=30)"
    cache.close()


class GatedStore(MemoryStore):
    """A store whose reads wait (on its own loop thread) until the test opens a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.order: list[str] = []

    async def cache_get(self, key: str, now: float) -> bytes | None:
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(None, self.gate.wait, 5.0)  # a failure guard
        self.order.append("store answered" if opened else "store gave up waiting")
        return await super().cache_get(key, now)


def test_the_async_transport_never_blocks_its_event_loop_on_a_store() -> None:
    """While the store looks up a stale copy, the caller's event loop keeps running:
    here it is what opens the store's gate."""
    store = GatedStore()
    h = Harness("async", StaleCache(max_staleness=60, store=store))
    h.answers = [ok()]
    h.send()  # stored (the gate is open)

    async def go() -> httpx.Response:
        store.gate.clear()
        h.answers = [httpx.ConnectError, httpx.ConnectError]
        async with httpx.AsyncClient(transport=h.transport) as client:
            request = asyncio.ensure_future(client.get(URL))
            while not request.done() and not store.gate.is_set():
                await asyncio.sleep(0)
                if len(h.seen) == 3:  # both attempts failed: the cache is being read
                    store.order.append("caller's loop ran")
                    store.gate.set()
            return await request

    stale = asyncio.run(go())
    assert stale.headers[STALE_HEADER] == "0"
    assert store.order == ["caller's loop ran", "store answered"]
    h.cache.close()


class StuckStore(MemoryStore):
    """A store whose reads never answer (a server that accepted and went silent)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()

    async def cache_get(self, key: str, now: float) -> bytes | None:
        self.entered.set()
        await asyncio.Event().wait()
        return None


def test_closing_the_cache_ends_the_calls_still_running_instead_of_leaving_them_stuck() -> None:
    store = StuckStore()
    cache = StaleCache(max_staleness=60, store=store)
    found: list[object] = ["not yet"]
    reader = threading.Thread(target=lambda: found.__setitem__(0, cache.get(URL, {}, 0.0)))
    reader.start()
    assert store.entered.wait(10)
    cache.close()
    reader.join(10)  # a failure guard: without the fix the reader waits forever
    assert not reader.is_alive()
    assert found == [None]  # no stale copy: the caller goes on with the upstream's error
