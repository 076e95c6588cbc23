"""``ContractGuard`` in front of a tiny ASGI app, as clients and the upstream see it.

The announcing headers on every response (the upstream's errors included), the 410 of a
retired or browned-out route (never forwarded), the effective version forwarded and sent
back, the 400 of an unknown version, pins (file, recorded, first use) and the events.
Time is a ``ManualClock``; the request's client, principal and criticality come from
test-only headers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from _support import of
from surefoot.contracts import (
    ContractGuard,
    DeprecatedCalled,
    Lifecycle,
    Versioning,
    VersionPinned,
    VersionPins,
    VersionSet,
    Window,
)
from surefoot.events import Event
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

HOUR, DAY = 3600.0, 86400.0
D = 1_798_761_600.0  # 2027-01-01T00:00:00Z, deprecated
S = 1_806_537_600.0  # 2027-04-01T00:00:00Z, the sunset
EXT = 1_811_808_000.0  # 2027-06-01T00:00:00Z, beta's extension
W0 = D + 40 * DAY + 14 * HOUR  # an hour of brownout
LINK = "https://example.com/migrate"
UP_LINK = '<https://up.example/orders?page=2>; rel="next"'
V1, V2, V3 = "2024-01-15", "2024-06-01", "2024-09-01"
PROBLEM = "application/problem+json"

ORDERS = Lifecycle(
    deprecated=D,
    sunset=S,
    link=LINK,
    replacement="GET /v2/orders",
    extensions={"beta": EXT},
    windows=(Window(W0, W0 + HOUR),),
)
LEGACY = Lifecycle(deprecated=D, sunset=S, clients=frozenset({"acme"}))
BARE = Lifecycle(deprecated=D, windows=(Window(W0, W0 + HOUR),))  # no sunset, links, words


class Upstream:
    """The app behind the guard: records what it was sent; ``/fail`` answers 503, and every
    response carries a ``Link`` of its own."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[bytes, bytes]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.seen.append(list(scope["headers"]))
        status = 503 if scope["path"].endswith("/fail") else 200
        headers = [(b"content-type", b"text/plain"), (b"link", UP_LINK.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"upstream"})


def route_of(scope: Any) -> str:
    return f"{scope['method']} {scope['path'].removesuffix('/fail')}"


def header(scope: Any, name: bytes) -> str | None:
    return next((v.decode() for k, v in scope["headers"] if k == name), None)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(D - DAY)


@pytest.fixture
def make(
    upstream: Upstream, clock: ManualClock, events: list[Event]
) -> Callable[..., httpx.AsyncClient]:
    def make(versioning: Versioning | None = None, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault(
            "lifecycles", {"GET /v1/orders": ORDERS, "GET /v1/legacy": LEGACY, "GET /v1/bare": BARE}
        )
        kwargs.setdefault("hooks", [events.append])
        guard = ContractGuard(
            upstream,
            route_of=route_of,
            client_of=lambda scope: header(scope, b"x-client"),
            principal_of=lambda scope: header(scope, b"x-principal") or "addr:203.0.113.9",
            critical_of=lambda scope: header(scope, b"x-critical") == "1",
            versioning=versioning,
            clock=clock,
            **kwargs,
        )
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api")

    return make


def our_link() -> str:
    return (
        f'<{LINK}>; rel="deprecation"; type="text/html", <{LINK}>; rel="sunset"; type="text/html"'
    )


def assert_announced(response: httpx.Response, sunset: float = S) -> None:
    assert response.headers.get_list("deprecation") == [f"@{int(D)}"]
    assert response.headers.get_list("sunset") == [formatdate(sunset, usegmt=True)]


# --- announcing ---------------------------------------------------------------------------


async def test_responses_announce_the_deprecation(
    make: Callable[..., httpx.AsyncClient], clock: ManualClock, upstream: Upstream
) -> None:
    async with make() as client:
        before = await client.get("/v1/orders")
        clock.set(D + DAY)
        after = await client.get("/v1/orders", headers={"x-client": "beta"})
    for response in (before, after):
        assert response.status_code == 200
        assert response.text == "upstream"
        # The upstream's Link is kept, ours is beside it.
        assert response.headers.get_list("link") == [UP_LINK, our_link()]
    assert_announced(before)
    assert_announced(after, sunset=EXT)
    assert len(upstream.seen) == 2


async def test_an_upstream_error_is_announced_too(make: Callable[..., httpx.AsyncClient]) -> None:
    async with make() as client:
        response = await client.get("/v1/orders/fail")
    assert response.status_code == 503
    assert response.text == "upstream"
    assert_announced(response)
    assert response.headers.get_list("link") == [UP_LINK, our_link()]


async def test_a_client_it_does_not_apply_to_gets_nothing(
    make: Callable[..., httpx.AsyncClient],
    clock: ManualClock,
    upstream: Upstream,
    events: list[Event],
) -> None:
    async with make() as client:
        clock.set(S + DAY)
        others = [
            await client.get("/v1/legacy", headers={"x-client": "other"}),
            await client.get("/v1/legacy"),
            await client.get("/v1/current"),  # a route without a lifecycle
        ]
        acme = await client.get("/v1/legacy", headers={"x-client": "acme"})
    for response in others:
        assert response.status_code == 200
        assert "deprecation" not in response.headers
        assert "sunset" not in response.headers
        assert response.headers.get_list("link") == [UP_LINK]
    assert acme.status_code == 410
    assert len(upstream.seen) == 3
    assert [e.client for e in of(events, DeprecatedCalled)] == ["acme"]


async def test_without_lifecycles_the_response_is_untouched(
    make: Callable[..., httpx.AsyncClient], upstream: Upstream
) -> None:
    async with make(lifecycles={}) as client:
        response = await client.get("/v1/orders", headers={"surefoot-version": "nonsense"})
    assert response.status_code == 200
    assert list(response.headers.items()) == [
        ("content-type", "text/plain"),
        ("link", UP_LINK),
    ]
    assert upstream.seen[0][-1] == (b"surefoot-version", b"nonsense")


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    guard = ContractGuard(
        app,
        lifecycles={"GET /v1/orders": ORDERS},
        route_of=route_of,
        client_of=lambda scope: None,
        principal_of=lambda scope: "p",
    )

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    async def send(message: Any) -> None:
        raise AssertionError("not called")

    await guard({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]


# --- refusals -----------------------------------------------------------------------------


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = json.loads(response.content)
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_after_the_sunset_the_route_is_retired(
    make: Callable[..., httpx.AsyncClient], clock: ManualClock, upstream: Upstream
) -> None:
    async with make() as client:
        clock.set(S - 0.001)
        assert (await client.get("/v1/orders")).status_code == 200
        clock.set(S)
        retired = await client.get("/v1/orders", headers={"surefoot-version": "whatever"})
        beta = await client.get("/v1/orders", headers={"x-client": "beta"})
        clock.set(EXT)
        beta_later = await client.get("/v1/orders", headers={"x-client": "beta"})
    assert retired.status_code == 410
    body = problem(retired)
    assert body["code"] == "route_retired"
    assert body["brownout"] is False
    assert body["sunset"] == "2027-04-01T00:00:00Z"
    assert body["replacement"] == "GET /v2/orders"
    assert body["link"] == LINK
    assert body["detail"] == (
        "GET /v1/orders was retired on 2027-04-01T00:00:00Z. Nothing was executed; "
        f"use GET /v2/orders instead. The migration notes: {LINK}"
    )
    assert_announced(retired)
    assert retired.headers.get_list("link") == [our_link()]
    assert beta.status_code == 200
    assert beta_later.status_code == 410
    assert problem(beta_later)["sunset"] == "2027-06-01T00:00:00Z"
    assert_announced(beta_later, sunset=EXT)
    assert len(upstream.seen) == 2  # never the refused ones


async def test_a_brownout_answers_as_the_sunset_will(
    make: Callable[..., httpx.AsyncClient], clock: ManualClock, upstream: Upstream
) -> None:
    async with make() as client:
        clock.set(W0)
        browned = await client.get("/v1/orders")
        critical = await client.get("/v1/orders", headers={"x-critical": "1"})
        clock.set(W0 + HOUR - 0.001)
        assert (await client.get("/v1/orders")).status_code == 410
        clock.set(W0 + HOUR)
        assert (await client.get("/v1/orders")).status_code == 200
        clock.set(S)
        assert (await client.get("/v1/orders", headers={"x-critical": "1"})).status_code == 410
    assert browned.status_code == 410
    body = problem(browned)
    assert body["code"] == "route_retired"
    assert body["brownout"] is True
    assert body["sunset"] == "2027-04-01T00:00:00Z"
    assert body["replacement"] == "GET /v2/orders"
    assert body["link"] == LINK
    assert (
        "is in a brownout, a rehearsal of its retirement on 2027-04-01T00:00:00Z"
        in (body["detail"])
    )
    assert_announced(browned)
    # A critical client is never browned out: forwarded, announced.
    assert critical.status_code == 200
    assert_announced(critical)
    assert len(upstream.seen) == 2


async def test_a_brownout_without_a_sunset_or_words(
    make: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    async with make() as client:
        clock.set(W0)
        response = await client.get("/v1/bare")
    assert response.status_code == 410
    body = problem(response)
    assert body["brownout"] is True
    assert "sunset" not in body
    assert "replacement" not in body
    assert "link" not in body
    assert body["detail"] == (
        "GET /v1/bare is in a brownout, a rehearsal of its retirement. "
        "Nothing was executed; stop calling it."
    )
    assert "sunset" not in response.headers
    assert "link" not in response.headers


async def test_every_request_on_a_deprecated_route_is_reported(
    make: Callable[..., httpx.AsyncClient], clock: ManualClock, events: list[Event]
) -> None:
    moments = [D - 1, D, W0, W0 + HOUR, S, S + DAY]
    responses = []
    async with make() as client:
        for moment in moments:
            clock.set(moment)
            responses.append(
                await client.get(
                    "/v1/orders", headers={"x-principal": "cred:abc", "x-request-id": "req-1"}
                )
            )
        await client.get("/v1/orders", headers={"x-client": "beta"})
        await client.get("/v1/current")
    called = of(events, DeprecatedCalled)
    assert [(e.phase, e.at) for e in called] == [
        ("announced", D - 1),
        ("deprecated", D),
        ("brownout", W0),
        ("deprecated", W0 + HOUR),
        ("retired", S),
        ("retired", S + DAY),
        ("deprecated", S + DAY),
    ]
    assert [r.status_code for r in responses] == [200, 200, 410, 200, 410, 410]
    assert {(e.route, e.principal, e.client, e.request_id) for e in called[:-1]} == {
        ("GET /v1/orders", "cred:abc", "", "req-1")
    }
    assert (called[-1].client, called[-1].principal) == ("beta", "addr:203.0.113.9")


async def test_hooks_that_do_not_want_the_event_do_not_get_it(
    make: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    got: list[Event] = []

    class Hook:
        def __call__(self, event: Event) -> None:
            got.append(event)

        def wants(self, event_type: type[Event]) -> bool:
            return event_type is not DeprecatedCalled

    async with make(hooks=[Hook()]) as client:
        clock.set(S)
        response = await client.get("/v1/orders")
    assert response.status_code == 410
    assert got == []


# --- versions -----------------------------------------------------------------------------


def versioning(
    *, pin: Any = "first_used", pins: VersionPins | None = None, **kwargs: Any
) -> Versioning:
    return Versioning(
        VersionSet((V1, V2, V3), pin=pin),
        header="Surefoot-Version",
        forward_header="X-Api-Version",
        pins=pins,
        **kwargs,
    )


def forwarded(upstream: Upstream) -> list[list[str]]:
    return [[v.decode() for k, v in seen if k == b"x-api-version"] for seen in upstream.seen]


async def test_the_effective_version_replaces_what_the_client_forwards(
    make: Callable[..., httpx.AsyncClient], upstream: Upstream
) -> None:
    async with make(versioning(pin="latest")) as client:
        named = await client.get(
            "/v2/orders",
            headers=[("X-Api-Version", "2099-01-01"), ("surefoot-version", V2)],
        )
        smuggled = await client.get(
            "/v2/orders", headers=[("x-api-version", V1), ("x-api-version", V2)]
        )
    assert named.headers.get_list("surefoot-version") == [V2]
    assert smuggled.headers.get_list("surefoot-version") == [V3]
    assert forwarded(upstream) == [[V2], [V3]]


async def test_an_unknown_version_is_refused(
    make: Callable[..., httpx.AsyncClient], clock: ManualClock, upstream: Upstream
) -> None:
    async with make(versioning(pins=VersionPins(MemoryStore()))) as client:
        response = await client.get("/v2/orders", headers={"surefoot-version": "2024-02-30"})
        twice = await client.get(
            "/v2/orders", headers=[("surefoot-version", V1), ("surefoot-version", V1)]
        )
        clock.set(D)
        announced = await client.get("/v1/orders", headers={"surefoot-version": "x" * 100})
    assert response.status_code == 400
    body = problem(response)
    assert body["code"] == "version_unknown"
    assert body["valid"] == [V1, V2, V3]
    assert body["version"] == "2024-02-30"
    assert "surefoot-version" not in response.headers
    assert problem(twice)["version"] == f"{V1},{V1}"
    # On a deprecated route, the refusal is announced too; the version is quoted cut short.
    assert announced.status_code == 400
    assert problem(announced)["version"] == "x" * 40
    assert_announced(announced)
    assert upstream.seen == []


async def test_file_pins_win_over_recorded_ones(
    make: Callable[..., httpx.AsyncClient], upstream: Upstream, events: list[Event]
) -> None:
    pins = VersionPins(MemoryStore())
    assert await pins.pin("client:acme", V2, 0.0) == (V2, True)
    async with make(versioning(pins=pins, file_pins={"acme": V1})) as client:
        acme = await client.get("/v2/orders", headers={"x-client": "acme"})
        named = await client.get("/v2/orders", headers={"x-client": "acme", "surefoot-version": V3})
    assert acme.headers["surefoot-version"] == V1
    assert named.headers["surefoot-version"] == V3
    assert forwarded(upstream) == [[V1], [V3]]
    assert of(events, VersionPinned) == []
    assert await pins.read(0.0) == {"client:acme": V2}  # unchanged


async def test_a_new_client_is_pinned_to_its_first_version_once(
    make: Callable[..., httpx.AsyncClient],
    upstream: Upstream,
    events: list[Event],
    clock: ManualClock,
) -> None:
    store = MemoryStore()
    pins = VersionPins(store)
    async with make(versioning(pins=pins)) as client:
        alpha = {"x-client": "alpha", "x-request-id": "first"}
        first = await client.get("/v2/orders", headers={**alpha, "surefoot-version": V1})
        clock.advance(60)
        again = await client.get("/v2/orders", headers={"x-client": "alpha"})
        other = await client.get(
            "/v2/orders", headers={"x-client": "alpha", "surefoot-version": V2}
        )
        still = await client.get("/v2/orders", headers={"x-client": "alpha"})
        beta = await client.get("/v2/orders", headers={"x-client": "beta"})
        beta_again = await client.get("/v2/orders", headers={"x-client": "beta"})
        # A caller the file does not name is never recorded (Rule 5): each of its requests
        # gets the initial version, whatever its first one named.
        stranger = {"x-principal": "cred:p1"}
        named = await client.get("/v2/orders", headers={**stranger, "surefoot-version": V1})
        unnamed = await client.get("/v2/orders", headers=stranger)
    assert [r.headers["surefoot-version"] for r in (first, again, other, still)] == [
        V1,
        V1,
        V2,
        V1,
    ]
    assert beta.headers["surefoot-version"] == beta_again.headers["surefoot-version"] == V3
    assert (named.headers["surefoot-version"], unnamed.headers["surefoot-version"]) == (V1, V3)
    assert forwarded(upstream) == [[V1], [V1], [V2], [V1], [V3], [V3], [V1], [V3]]
    assert of(events, VersionPinned) == [
        VersionPinned(at=clock.now() - 60, request_id="first", client="alpha", version=V1),
        VersionPinned(
            at=clock.now(),
            request_id=of(events, VersionPinned)[1].request_id,
            client="beta",
            version=V3,
        ),
    ]
    # Another worker sharing the store serves the recorded pins.
    assert await VersionPins(store).read(clock.now()) == {"client:alpha": V1, "client:beta": V3}


async def test_a_failing_pin_store_serves_the_version_and_pins_later(
    make: Callable[..., httpx.AsyncClient], events: list[Event]
) -> None:
    store = MemoryStore()
    pins = VersionPins(store)
    real_claim = store.board_claim

    async def broken(*args: Any) -> bool:
        raise ConnectionError("store down")

    store.board_claim = broken  # type: ignore[method-assign]
    async with make(versioning(pins=pins)) as client:
        alpha = {"x-client": "alpha"}
        down = await client.get("/v2/orders", headers={**alpha, "surefoot-version": V1})
        store.board_claim = real_claim  # type: ignore[method-assign]
        up = await client.get("/v2/orders", headers=alpha)
    assert down.headers["surefoot-version"] == V1
    assert up.headers["surefoot-version"] == V3  # not pinned while the store was down
    assert [e.version for e in of(events, VersionPinned)] == [V3]


async def test_latest_records_nothing(
    make: Callable[..., httpx.AsyncClient], upstream: Upstream, events: list[Event]
) -> None:
    store = MemoryStore()
    async with make(versioning(pin="latest", pins=VersionPins(store))) as client:
        plain = await client.get("/v2/orders", headers={"x-principal": "cred:p1"})
        named = await client.get(
            "/v2/orders", headers={"x-principal": "cred:p1", "surefoot-version": V1}
        )
        after = await client.get("/v2/orders", headers={"x-principal": "cred:p1"})
    assert [r.headers["surefoot-version"] for r in (plain, named, after)] == [V3, V1, V3]
    assert of(events, VersionPinned) == []
    assert await VersionPins(store).read(0.0) == {}
    async with make(versioning(pin="latest")) as client:
        assert (await client.get("/v2/orders")).headers["surefoot-version"] == V3


async def test_a_retired_route_is_refused_before_versions_are_looked_at(
    make: Callable[..., httpx.AsyncClient], clock: ManualClock, events: list[Event]
) -> None:
    store = MemoryStore()
    async with make(versioning(pins=VersionPins(store))) as client:
        clock.set(S)
        response = await client.get("/v1/orders", headers={"surefoot-version": "bogus"})
    assert problem(response)["code"] == "route_retired"
    assert "surefoot-version" not in response.headers
    assert of(events, VersionPinned) == []
    assert await VersionPins(store).read(S) == {}
