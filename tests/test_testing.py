"""surefoot.testing's assertions must fail, with a useful message, on non-idempotent endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from surefoot.testing import ManualClock, aassert_idempotent, assert_idempotent


@dataclass
class FakeResponse:
    status_code: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)


class FakeClient:
    """Answers from a script of responses and records the requests it got."""

    def __init__(self, *responses: FakeResponse) -> None:
        self.responses = list(responses)
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        self.requests.append((method, url, kwargs))
        return self.responses.pop(0)


class AsyncFakeClient(FakeClient):
    async def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:  # type: ignore[override]
        return super().request(method, url, **kwargs)


FIRST = FakeResponse(201, b'{"id":1}', {"content-type": "application/json", "date": "d1"})
REPLAY = FakeResponse(
    201,
    b'{"id":1}',
    {"content-type": "application/json", "date": "d2", "idempotent-replayed": "true"},
)


def test_passes_and_sends_one_key_on_every_request() -> None:
    client = FakeClient(FIRST, REPLAY, REPLAY)
    assert len(assert_idempotent(client, "POST", "/c", json={"a": 1})) == 3
    keys = {r[2]["headers"]["Idempotency-Key"] for r in client.requests}
    assert len(keys) == 1
    assert all(r[2]["json"] == {"a": 1} for r in client.requests)


def test_keeps_a_key_the_caller_gave() -> None:
    client = FakeClient(FIRST, REPLAY)
    assert_idempotent(client, "POST", "/c", times=2, headers={"idempotency-key": "mine"})
    assert client.requests[1][2]["headers"] == {"idempotency-key": "mine"}
    client = FakeClient(FIRST, REPLAY)
    assert_idempotent(client, "POST", "/c", times=2, key="given")
    assert client.requests[0][2]["headers"] == {"Idempotency-Key": "given"}


@pytest.mark.parametrize(
    ("responses", "message"),
    [
        ((REPLAY, REPLAY), "the first response is already a replay"),
        ((FIRST, FakeResponse(500, b'{"id":1}', REPLAY.headers)), "response 2 has status 500"),
        (
            (FIRST, FakeResponse(201, b'{"id":2}', REPLAY.headers)),
            "response 2 has a different body",
        ),
        (
            (FIRST, FakeResponse(201, b'{"id":1}', {**REPLAY.headers, "x": "1"})),
            "different headers",
        ),
        ((FIRST, FakeResponse(201, b'{"id":1}', FIRST.headers)), "it was executed again"),
    ],
)
def test_fails_with_what_differed(responses: tuple[FakeResponse, ...], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        assert_idempotent(FakeClient(*responses), "POST", "/c", times=2)


def test_needs_two_requests() -> None:
    with pytest.raises(ValueError, match="times >= 2"):
        assert_idempotent(FakeClient(FIRST), "POST", "/c", times=1)


@pytest.mark.anyio
async def test_async_variant() -> None:
    assert len(await aassert_idempotent(AsyncFakeClient(FIRST, REPLAY), "POST", "/c", times=2)) == 2
    with pytest.raises(AssertionError, match="executed again"):
        await aassert_idempotent(AsyncFakeClient(FIRST, FIRST), "POST", "/c", times=2)


@pytest.mark.anyio
async def test_manual_clock() -> None:
    clock = ManualClock(100)
    clock.advance(5)
    await clock.sleep(2.5)
    assert clock.now() == 107.5
    clock.set(200)
    assert clock.now() == 200
    assert repr(clock) == "ManualClock(200.0)"
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="forward"):
        clock.set(199)
