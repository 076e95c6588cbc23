"""``HttpProbeClient``: hosts, cap, deadline, redaction and lost answers (an app in process)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from surefoot.errors import ConfigurationError
from surefoot.probe import BudgetExhausted, HostRefused, HttpProbeClient, Plan, Target
from surefoot.probe._client import BODY_CUT, CUT_ERROR, MAX_BODY
from surefoot.probe._model import MAX_EVIDENCE
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:8000"
SECRET = "sk_test_s3cr3t"


class Partner:
    """A partner API that counts what reaches it and echoes what it got."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.app = Starlette(routes=[Route("/echo", self.echo, methods=["GET", "POST"])])

    async def echo(self, request: Request) -> Response:
        body = (await request.body()).decode()
        self.received.append(body)
        pad = int(request.query_params.get("pad", "0"))
        answer = {"headers": dict(request.headers), "body": body, "pad": "x" * pad}
        return JSONResponse(
            answer, status_code=201, headers={"Set-Cookie": f"session={SECRET}", "X-Seen": "1"}
        )


def _client(partner: Partner, clock: ManualClock, **options: Any) -> HttpProbeClient:
    settings: dict[str, Any] = {
        "hosts": ["127.0.0.1:8000"],
        "max_requests": 10,
        "max_duration": 60.0,
        "run": "r1",
        "transport": httpx.ASGITransport(app=partner.app),
        "clock": clock,
        "sleep": clock.sleep,
    } | options
    return HttpProbeClient(**settings)


async def test_a_host_not_listed_is_refused_before_anything_is_sent(clock: ManualClock) -> None:
    partner = Partner()
    async with _client(partner, clock) as client:
        for url in ("http://127.0.0.1:8001/echo", "https://127.0.0.1/echo", "/echo"):
            with pytest.raises(HostRefused, match=r"not in probe\.hosts"):
                await client.send("GET", url)
        assert client.remaining() == 10
    assert partner.received == []


async def test_the_request_cap_holds(clock: ManualClock) -> None:
    partner = Partner()
    async with _client(partner, clock, max_requests=2) as client:
        assert client.remaining() == 2
        await client.send("GET", f"{BASE}/echo")
        assert client.remaining() == 1
        await client.send("GET", f"{BASE}/echo")
        assert client.remaining() == 0
        with pytest.raises(BudgetExhausted, match="cap of 2 requests"):
            await client.send("GET", f"{BASE}/echo")
        assert client.sent == 2
    assert len(partner.received) == 2


async def test_the_deadline_holds_for_requests_and_waits(clock: ManualClock) -> None:
    partner = Partner()
    async with _client(partner, clock, max_duration=10.0) as client:
        await client.wait(4)
        assert clock.now() == client.deadline - 6
        with pytest.raises(BudgetExhausted, match="would pass the probe's deadline"):
            await client.wait(7)
        assert clock.now() == client.deadline - 6  # nothing was waited
        await client.send("GET", f"{BASE}/echo")
        clock.advance(6)
        assert client.remaining() == 0
        with pytest.raises(BudgetExhausted, match="deadline"):
            await client.send("GET", f"{BASE}/echo")
    assert len(partner.received) == 1


async def test_each_answer_is_awaited_no_longer_than_the_deadline(clock: ManualClock) -> None:
    timeouts: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(204)

    transport = httpx.MockTransport(handler)
    async with _client(Partner(), clock, transport=transport, timeout=5.0) as client:
        await client.send("GET", f"{BASE}/echo")
        await client.send("GET", f"{BASE}/echo", read_timeout=30.0)
        clock.advance(58)
        await client.send("GET", f"{BASE}/echo")
    assert [t["read"] for t in timeouts] == [5.0, 30.0, 2.0]


async def test_credentials_and_secrets_are_redacted_in_the_evidence(clock: ManualClock) -> None:
    partner = Partner()
    async with _client(
        partner, clock, credential_headers=["X-Partner-Token"], secrets=[SECRET, ""]
    ) as client:
        exchange = await client.send(
            "POST",
            f"{BASE}/echo?token={SECRET}",
            headers={
                "Authorization": f"Bearer {SECRET}",
                "x-partner-token": "tok-42",
                "X-Api-Key": "k1",
                "X-Note": f"note {SECRET}",
            },
            body=json.dumps({"card": SECRET}),
        )
    assert partner.received == [json.dumps({"card": SECRET})]  # the partner got the real one
    assert exchange.status == 201
    assert exchange.url == f"{BASE}/echo?token=***"
    sent = dict(exchange.request_headers)
    assert sent["authorization"] == "***"
    assert sent["x-partner-token"] == "***"
    assert sent["x-note"] == "note ***"
    assert exchange.request_body == '{"card": "***"}'
    assert exchange.header("set-cookie") == "***"
    assert exchange.header("X-Seen") == "1"
    assert SECRET not in exchange.response_body
    assert "tok-42" not in exchange.response_body  # a credential sent is a secret
    assert '"x-api-key":"k1"' in exchange.response_body  # too short to hide
    assert sent["x-api-key"] == "***"
    assert json.loads(exchange.response_body)["headers"]["authorization"] == "***"


async def test_a_long_body_is_cut(clock: ManualClock) -> None:
    async with _client(Partner(), clock) as client:
        exchange = await client.send("GET", f"{BASE}/echo?pad={MAX_EVIDENCE * 2}")
    assert len(exchange.response_body) == MAX_EVIDENCE


async def test_a_cut_request_reaches_the_partner_and_its_answer_is_lost(
    clock: ManualClock,
) -> None:
    partner = Partner()
    async with _client(partner, clock) as client:
        lost = await client.send("POST", f"{BASE}/echo", body="first", cut=True)
        kept = await client.send("POST", f"{BASE}/echo", body="second")
    assert partner.received == ["first", "second"]
    assert (lost.status, lost.error, lost.response_body) == (None, CUT_ERROR, "")
    assert lost.request_body == "first"
    assert (kept.status, kept.error) == (201, None)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("refused"), "ConnectError: refused"),
        (httpx.ReadError("reset by peer"), "ReadError: reset by peer"),
        (httpx.ReadTimeout("slow"), "ReadTimeout: no answer within 10 s"),
    ],
)
async def test_no_answer_is_evidence_too(
    clock: ManualClock, error: Exception, expected: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    async with _client(Partner(), clock, transport=httpx.MockTransport(handler)) as client:
        exchange = await client.send("GET", f"{BASE}/echo")
    assert (exchange.status, exchange.error) == (None, expected)


async def test_render_fills_the_templates(clock: ManualClock) -> None:
    async with _client(Partner(), clock) as client:
        text = client.render("{{run}}-{{n}} {{uuid}} {{uuid}} {{other}}", 7)
    run_n, first, second, other = text.split(" ")
    assert run_n == "r1-7"
    assert len(first) == len(second) == 36
    assert first != second
    assert other == "{{other}}"


async def test_a_client_for_a_plan_takes_its_bounds(clock: ManualClock) -> None:
    plan = Plan(
        targets=(Target(name="t", method="GET", url=f"{BASE}/echo"),),
        hosts=("127.0.0.1:8000",),
        max_requests=3,
        max_duration=5.0,
        timeout=2.0,
        secrets=(SECRET,),
    )
    transport = httpx.ASGITransport(app=Partner().app)
    async with HttpProbeClient.for_plan(plan, transport=transport, clock=clock) as client:
        assert (client.remaining(), client.timeout, client.deadline) == (3, 2.0, clock.now() + 5)
        exchange = await client.send("GET", f"{BASE}/echo?q={SECRET}")
        assert exchange.url.endswith("q=***")
        assert len(client.run) == 12


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_requests", -1), ("max_requests", True), ("max_duration", 0), ("timeout", "5")],
)
def test_bad_bounds_are_refused(option: str, value: object) -> None:
    settings: dict[str, Any] = {"hosts": [], "max_requests": 1, "max_duration": 1.0}
    with pytest.raises(ConfigurationError, match=f"HttpProbeClient.{option}: expected"):
        HttpProbeClient(**(settings | {option: value}))


# -- review fixes: the cut status, slow answers, bounded bodies, echoed tokens --------------


async def test_a_cut_answer_keeps_the_status_the_partner_gave(clock: ManualClock) -> None:
    async with _client(Partner(), clock) as client:
        lost = await client.send("POST", f"{BASE}/echo", body="first", cut=True)
        kept = await client.send("POST", f"{BASE}/echo", body="second")
    assert (lost.status, lost.cut_status, lost.error) == (None, 201, CUT_ERROR)
    assert kept.cut_status is None


async def test_a_request_that_never_reached_the_partner_is_no_cut(clock: ManualClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    transport = httpx.MockTransport(handler)
    async with _client(Partner(), clock, transport=transport) as client:
        exchange = await client.send("POST", f"{BASE}/echo", body="x", cut=True)
    assert exchange.cut_status is None
    assert exchange.error == (
        "not cut: the request never reached the partner (ConnectError: refused)"
    )


class _Trickle(httpx.AsyncByteStream):
    """A body that sends one chunk, then nothing more (until ``chunks`` run out)."""

    def __init__(self, chunk: bytes = b"x", chunks: int = 1, then_wait: bool = True) -> None:
        self.chunk, self.chunks, self.then_wait, self.sent = chunk, chunks, then_wait, 0

    async def __aiter__(self) -> Any:
        for _ in range(self.chunks):
            self.sent += 1
            yield self.chunk
        if self.then_wait:
            await asyncio.Event().wait()  # never set: only the client's bound ends it


class _Streaming(httpx.AsyncBaseTransport):
    def __init__(self, stream: _Trickle) -> None:
        self.stream = stream

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=self.stream)


@pytest.mark.parametrize("bound", [{"timeout": 0.05}, {"timeout": 10.0, "max_duration": 0.05}])
async def test_a_slowly_streamed_answer_is_bounded_in_all(
    clock: ManualClock, bound: dict[str, float]
) -> None:
    transport = _Streaming(_Trickle())
    async with _client(Partner(), clock, transport=transport, **bound) as client:
        exchange = await client.send("GET", f"{BASE}/echo")
    assert exchange.status is None
    assert exchange.error == "TimeoutError: no whole answer within 0.05 s"


async def test_at_most_max_body_bytes_are_read(clock: ManualClock) -> None:
    stream = _Trickle(b"x" * 1000, chunks=10_000, then_wait=False)
    async with _client(Partner(), clock, transport=_Streaming(stream)) as client:
        exchange = await client.send("GET", f"{BASE}/echo")
    assert stream.sent <= MAX_BODY // 1000 + 1
    assert exchange.status == 200
    assert exchange.response_body == "x" * MAX_EVIDENCE + "\n" + BODY_CUT


async def test_the_bare_token_of_a_credential_sent_is_redacted(clock: ManualClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].split()[-1]
        return httpx.Response(401, text=f"invalid api key {token}", headers={"X-Key": token})

    transport = httpx.MockTransport(handler)
    async with _client(Partner(), clock, transport=transport) as client:
        exchange = await client.send(
            "GET", f"{BASE}/echo", headers={"Authorization": "Bearer tok_bare_42"}
        )
    assert exchange.response_body == "invalid api key ***"
    assert exchange.header("X-Key") == "***"


async def test_an_escaped_secret_in_an_error_is_redacted(clock: ManualClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # as h11 refuses such a value
        raise httpx.LocalProtocolError(f"Illegal header value {request.headers.raw[-1][1]!r}")

    transport = httpx.MockTransport(handler)
    async with _client(Partner(), clock, secrets=["tok_nl\n"], transport=transport) as client:
        exchange = await client.send("GET", f"{BASE}/echo", headers={"X-Custom": "tok_nl\n"})
    assert exchange.error == "LocalProtocolError: Illegal header value b'***'"
