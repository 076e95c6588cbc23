"""``reorder``: held requests reach the server in the plan's shuffled order.

Through ``AsyncChaosTransport`` over an ASGI app (``httpx.ASGITransport``) and through
``ChaosProxy`` in front of a uvicorn server. The arrival order at the chaos tool is read
from the ``FaultInjected`` events (one per held request, in the order decided); the order
at the server must be that order permuted by a twin plan's ``release_order``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn

from surefoot.chaos import (
    AsyncChaosTransport,
    ChaosProxy,
    ChaosTransport,
    FaultInjected,
    FaultPlan,
    Reorder,
    Rule,
)
from surefoot.errors import ConfigurationError
from surefoot.testing import CapturedEvents, RecordingSleep

pytestmark = pytest.mark.anyio

SEED = 15


def reorder(window: int, hold: float = 60.0) -> list[Rule]:
    return [Rule(name="shuffle", fault=Reorder(window=window, hold=hold), methods=("POST",))]


def expected(arrived: list[str], window: int, hold: float = 60.0, seed: int = SEED) -> list[str]:
    """``arrived`` (one batch) in the order a twin plan releases it: one draw per decision,
    then the shuffle."""
    twin = FaultPlan(reorder(window, hold), seed=seed)
    for _ in arrived:
        twin.decide("POST", "/objects/1", {})
    return [arrived[i] for i in twin.release_order(len(arrived))]


def arrivals(events: CapturedEvents) -> list[str]:
    return [e.request_id for e in events.of(FaultInjected)]


class Recorder:
    """An ASGI app that records each request's ``X-Request-Id`` as it arrives, and can be
    told to never answer the first one."""

    def __init__(self, stall_first: bool = False) -> None:
        self.seen: list[str] = []
        self.stall_first = stall_first

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            return
        while (await receive()).get("more_body"):
            pass
        self.seen.append(dict(scope["headers"]).get(b"x-request-id", b"-").decode())
        if self.stall_first and len(self.seen) == 1:
            await asyncio.Event().wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds (a bound, not a timing)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def client_for(
    app: Recorder, plan: FaultPlan, events: CapturedEvents, **options: Any
) -> httpx.AsyncClient:
    transport = AsyncChaosTransport(httpx.ASGITransport(app), plan, hooks=[events], **options)
    return httpx.AsyncClient(transport=transport, base_url="http://app.test")


def post(client: httpx.AsyncClient, name: str) -> Awaitable[httpx.Response]:
    return client.post("/objects/1", json={"version": name}, headers={"X-Request-Id": name})


# -- the async transport ------------------------------------------------------------------------


async def test_concurrent_requests_reach_the_app_in_the_plans_order() -> None:
    app, events = Recorder(), CapturedEvents()
    names = [f"u{n:02}" for n in range(20)]
    async with client_for(app, FaultPlan(reorder(20), seed=SEED), events) as client:
        responses = await asyncio.gather(*(post(client, name) for name in names))
    assert [r.status_code for r in responses] == [200] * 20
    assert sorted(arrivals(events)) == names
    assert app.seen == expected(arrivals(events), 20)
    assert app.seen != arrivals(events)  # really shuffled (for this seed)
    [detail] = {e.detail for e in events.of(FaultInjected)}
    assert detail == "window 20, hold 60s"


async def test_the_same_seed_gives_the_same_order_for_the_same_arrivals() -> None:
    names = [f"u{n}" for n in range(10)]

    async def one_run() -> list[str]:
        # One after the other without waiting for answers: each is held before the next.
        app, events = Recorder(), CapturedEvents()
        async with client_for(app, FaultPlan(reorder(10), seed=SEED), events) as client:
            tasks = []
            for name in names:
                tasks.append(asyncio.ensure_future(post(client, name)))
                await until(lambda: arrivals(events)[-1:] == [name])  # noqa: B023
            await asyncio.gather(*tasks)
        assert arrivals(events) == names
        return app.seen

    first = await one_run()
    assert first == await one_run() == expected(names, 10)


async def test_a_window_that_never_fills_goes_after_its_hold() -> None:
    app, events = Recorder(), CapturedEvents()
    holds: list[float] = []
    hold_over = asyncio.Event()

    async def sleep(seconds: float) -> None:  # injected time: the hold ends when told
        holds.append(seconds)
        await hold_over.wait()

    plan = FaultPlan(reorder(5, hold=2.5), seed=SEED)
    async with client_for(app, plan, events, sleep=sleep) as client:
        tasks = [asyncio.ensure_future(post(client, f"u{n}")) for n in range(3)]
        await until(lambda: len(events.events) == 3)
        assert app.seen == []  # held
        hold_over.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 3
    assert holds == [2.5]
    assert app.seen == expected(arrivals(events), 5, hold=2.5)


async def test_recording_sleep_ends_a_hold_at_once() -> None:
    app, events, sleep = Recorder(), CapturedEvents(), RecordingSleep()
    async with client_for(app, FaultPlan(reorder(5), seed=SEED), events, sleep=sleep.asleep) as c:
        response = await post(c, "alone")
    assert (response.status_code, app.seen, sleep.calls) == (200, ["alone"], [60.0])


async def test_a_caller_that_gives_up_while_held_keeps_its_place_and_is_skipped() -> None:
    app, events = Recorder(), CapturedEvents()
    async with client_for(app, FaultPlan(reorder(3), seed=SEED), events) as client:
        gone = asyncio.ensure_future(post(client, "gone"))
        await until(lambda: len(events.events) == 1)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        rest = [asyncio.ensure_future(post(client, name)) for name in ("a", "b")]
        responses = await asyncio.gather(*rest)  # the window filled with the gone one
    assert [r.status_code for r in responses] == [200, 200]
    assert app.seen == [name for name in expected(arrivals(events), 3) if name != "gone"]


async def test_a_caller_that_gives_up_during_its_turn_passes_the_turn_on() -> None:
    app, events = Recorder(stall_first=True), CapturedEvents()
    async with client_for(app, FaultPlan(reorder(3), seed=SEED), events) as client:
        tasks = {name: asyncio.ensure_future(post(client, name)) for name in ("a", "b", "c")}
        await until(lambda: len(app.seen) == 1)  # the first released never gets an answer
        stuck = app.seen[0]
        tasks.pop(stuck).cancel()
        responses = await asyncio.gather(*tasks.values())
    assert [r.status_code for r in responses] == [200, 200]
    assert app.seen == expected(arrivals(events), 3)


async def test_closing_the_transport_releases_an_open_batch() -> None:
    app, events = Recorder(), CapturedEvents()
    client = client_for(app, FaultPlan(reorder(5), seed=SEED), events)
    task = asyncio.ensure_future(post(client, "alone"))
    await until(lambda: len(events.events) == 1)
    await client.aclose()
    assert (await task).status_code == 200


def test_the_sync_transport_refuses_reorder() -> None:
    upstream = httpx.MockTransport(lambda request: httpx.Response(200))
    message = r"ChaosTransport\.plan: expected no reorder rule .*got rule 'shuffle'"
    with pytest.raises(ConfigurationError, match=message):
        ChaosTransport(upstream, FaultPlan(reorder(2)))
    plan = FaultPlan(seed=SEED)
    transport = ChaosTransport(upstream, plan, hooks=[])
    plan.replace(reorder(2))
    with (
        httpx.Client(transport=transport) as client,
        pytest.raises(ConfigurationError, match=message),
    ):
        client.post("http://app.test/objects/1")


# -- the proxy, in front of a real server --------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    app = Recorder()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait here until uvicorn accepts: no start-up race
    config = uvicorn.Config(
        app, lifespan="off", http="h11", ws="none", log_level="critical", access_log=False
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    instance.should_exit = True
    thread.join(10)
    sock.close()


def send_concurrently(url: str, names: list[str], timeout: float = 30.0) -> list[int]:
    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=len(names))
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            responses = await asyncio.gather(*(post(client, name) for name in names))
        return [r.status_code for r in responses]

    return asyncio.run(run())


@pytest.mark.slow
def test_the_proxy_delivers_held_requests_in_the_plans_order(
    server: tuple[str, Recorder],
) -> None:
    base_url, app = server
    events = CapturedEvents()
    names = [f"u{n:02}" for n in range(20)]
    plan = FaultPlan(reorder(20), seed=SEED)
    with ChaosProxy(upstream=base_url, plan=plan, hooks=[events]).running() as proxy:
        assert send_concurrently(proxy.url, names) == [200] * 20
    assert sorted(arrivals(events)) == names
    assert app.seen == expected(arrivals(events), 20)
    assert app.seen != arrivals(events)
    assert plan.counts(by="kind") == {"reorder": 20}


@pytest.mark.slow
def test_the_proxy_releases_a_window_that_never_fills(server: tuple[str, Recorder]) -> None:
    base_url, app = server
    plan = FaultPlan(reorder(5, hold=0.05), seed=SEED)
    with ChaosProxy(upstream=base_url, plan=plan, hooks=[]).running() as proxy:
        assert send_concurrently(proxy.url, ["a", "b", "c"]) == [200] * 3
    assert sorted(app.seen) == ["a", "b", "c"]


@pytest.mark.slow
def test_a_client_that_gives_up_on_the_proxy_does_not_block_the_others(
    server: tuple[str, Recorder],
) -> None:
    base_url, app = server
    # Seed 16 lets the last arrival go first, then the first ("gone"), then the second.
    assert expected(["gone", "a", "b"], 3, seed=16) == ["b", "gone", "a"]
    plan = FaultPlan(reorder(3), seed=16)
    with ChaosProxy(upstream=base_url, plan=plan, hooks=[]).running() as proxy:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(proxy.url + "/objects/1", headers={"X-Request-Id": "gone"}, timeout=0.2)
        assert send_concurrently(proxy.url, ["a", "b"]) == [200, 200]
    # The proxy cannot tell that its client left: the request still went, in its turn.
    assert app.seen[1] == "gone"
    assert sorted(app.seen) == ["a", "b", "gone"]
