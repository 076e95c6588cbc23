"""Redis stopped in the middle of a load test, and started again.

A private ``redis-server`` (its own port, so the shared one is never touched) backs both
middlewares of one app: three rate-limit policies, one per route, each with its own
``on_store_error``, and idempotent charges that fail closed (the default). The test
loads the app, kills Redis, loads it again, starts Redis on the same port, and loads it
a third time. The middlewares' clock is a ``ManualClock`` (it times the probes' backoff)
while the store decides on Redis's own clock, as in production.

What must hold: no 500 ever; during the outage each policy does what it says within the
store's timeout (only the requests that found the outage or probed paid it); nothing is
charged while idempotency cannot be recorded; service resumes by itself once a probe
finds Redis back; each layer reports one outage and one recovery.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from _services import RedisServer
from _support import T0
from surefoot.idempotency import IdempotencyMiddleware
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
from surefoot.storage import StoreDown, StoreRecovered, store_from_url
from surefoot.testing import CapturedEvents, ManualClock

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKERS = 4  # the fallback share of "8/hour" is 2 per process
LOAD = 40  # concurrent requests per route and phase


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class App:
    def __init__(self, url: str) -> None:
        self.charges: list[str] = []
        self.clock = ManualClock(T0)
        self.events = CapturedEvents()
        self.store: Any = store_from_url(url)

        async def ok(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        async def charge(request: Request) -> JSONResponse:
            self.charges.append(request.headers["idempotency-key"])
            return JSONResponse({"charged": len(self.charges)}, status_code=201)

        app = Starlette(
            routes=[
                Route("/open", ok),
                Route("/closed", ok),
                Route("/local", ok),
                Route("/charges", charge, methods=["POST"]),
            ]
        )
        idempotent = IdempotencyMiddleware(
            app, store=self.store, clock=self.clock, hooks=[self.events]
        )
        self.asgi = RateLimitMiddleware(
            idempotent,
            store=self.store,
            policies=[
                RateLimitPolicy("open", limits=["1000/minute"], routes=["GET /open"]),
                RateLimitPolicy(
                    "closed",
                    limits=["1000/minute"],
                    routes=["GET /closed"],
                    on_store_error="fail_closed",
                ),
                RateLimitPolicy(
                    "local",
                    limits=["8/hour"],
                    algorithm="fixed_window",
                    routes=["GET /local"],
                    on_store_error="local_fallback",
                ),
            ],
            fallback_workers=WORKERS,
            clock=self.clock,
            hooks=[self.events],
        )

    async def load(self, client: httpx.AsyncClient, phase: str) -> dict[str, list[httpx.Response]]:
        """LOAD concurrent requests on each route; charges use one key per request."""

        async def charge(n: int) -> httpx.Response:
            key = f"{phase}-{n}"
            return await client.post("/charges", json={"n": n}, headers={"Idempotency-Key": key})

        routes = {
            path: [client.get(path) for _ in range(LOAD)] for path in ("/open", "/closed", "/local")
        }
        routes["/charges"] = [charge(n) for n in range(LOAD)]
        out = {path: list(await asyncio.gather(*calls)) for path, calls in routes.items()}
        for responses in out.values():
            assert all(r.status_code < 500 or r.status_code == 503 for r in responses)
            for r in responses:
                if r.status_code == 503:
                    assert r.headers["content-type"] == "application/problem+json"
                    assert r.json()["code"] == "store_unavailable"
                    assert int(r.headers["retry-after"]) >= 1
        return out


@pytest.fixture
async def app(redis_server: RedisServer) -> AsyncIterator[App]:
    # A refused connection fails at once, whatever the store's timeout. The default 50 ms
    # is too short for a machine busy with the whole suite: the first calls after Redis
    # came back (scripts sent whole again) overran it, and the store was taken for down.
    app = App(f"redis://127.0.0.1:{redis_server.port}/0?prefix=outage:&timeout=1")
    yield app
    await app.store.aclose()


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


async def test_each_policy_holds_while_redis_is_down_and_service_resumes_by_itself(
    redis_server: RedisServer, app: App
) -> None:
    transport = httpx.ASGITransport(app=app.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        before = await app.load(client, "before")
        assert statuses(before["/open"]) == [200] * LOAD
        assert statuses(before["/closed"]) == [200] * LOAD
        assert statuses(before["/local"]) == [200] * 8 + [429] * (LOAD - 8)
        assert statuses(before["/charges"]) == [201] * LOAD
        assert len(app.charges) == LOAD

        redis_server.kill()
        app.clock.advance(0.1)
        during = await app.load(client, "during")
        assert statuses(during["/open"]) == [200] * LOAD  # fail_open
        assert statuses(during["/closed"]) == [503] * LOAD  # fail_closed
        # local_fallback: this process's share of 8/hour over 4 workers.
        assert statuses(during["/local"]) == [200] * 2 + [429] * (LOAD - 2)
        # Idempotency cannot be recorded: nothing is charged.
        assert statuses(during["/charges"]) == [503] * LOAD
        assert len(app.charges) == LOAD
        # Only the requests that found the outage paid the store's timeout; the rest
        # skipped the store: one outage per layer, reported once.
        downs = app.events.of(StoreDown)
        assert sorted(e.layer for e in downs) == ["idempotency", "ratelimit"]

        redis_server.start()
        # Nothing probes before its backoff: still down until the clock moves on.
        still = await client.get("/closed")
        assert still.status_code == 503
        app.clock.advance(60)
        # One request per layer probes and finds Redis back (empty: it kept nothing);
        # requests arriving while a probe is out still get their outage behaviour.
        assert (await client.get("/open")).status_code == 200
        probe = await client.post("/charges", json={}, headers={"Idempotency-Key": "probe"})
        assert probe.status_code == 201
        # From then on every request is decided by Redis again.
        after = await app.load(client, "after")
        assert statuses(after["/open"]) == [200] * LOAD
        assert statuses(after["/closed"]) == [200] * LOAD
        assert statuses(after["/local"]) == [200] * 8 + [429] * (LOAD - 8)
        assert statuses(after["/charges"]) == [201] * LOAD
        assert len(app.charges) == 2 * LOAD + 1
        replay = await client.post(
            "/charges", json={"n": 0}, headers={"Idempotency-Key": "after-0"}
        )
        assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")

    recovered = app.events.of(StoreRecovered)
    assert sorted(e.layer for e in recovered) == ["idempotency", "ratelimit"]
    assert len(app.events.of(StoreDown)) == 2
