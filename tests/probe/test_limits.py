"""The rate-limit, error-format and timeout checks (``surefoot.probe._limits``).

The judges and parsers are table-tested; the checks run against in-process apps through
``AsgiProbeClient``, a ``ProbeClient`` over ``httpx.ASGITransport`` whose ``wait`` moves
the ``ManualClock`` the apps' limiters read: no test waits for time to pass.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from surefoot._asgi import Receive, Scope, Send
from surefoot.probe import (
    BudgetExhausted,
    Exchange,
    Finding,
    Report,
    Target,
    Verdict,
    integration_policy,
)
from surefoot.probe._limits import (
    LIMIT_CHECKS,
    MALFORMED_BODY,
    find_leaks,
    judge_errors,
    judge_headers,
    judge_retry_after,
    judge_scope,
    judge_timeout,
    machine_code,
    read_fields,
    retry_after_seconds,
)
from surefoot.ratelimit import RateLimitMiddleware, RateLimitPolicy
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

BASE = "http://partner.test"
KEY_A = {"X-API-Key": "key-a"}
KEY_B = {"X-API-Key": "key-b"}


# -- a ProbeClient over ASGI, on a manual clock ----------------------------------------------


class AsgiProbeClient:
    """A ``ProbeClient`` for in-process apps: ``wait`` advances ``clock``; a request whose
    app moved the clock past ``read_timeout`` is reported unanswered, as a timeout."""

    def __init__(
        self, app: Any, clock: ManualClock, *, cap: int = 200, timeout: float = 10.0
    ) -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self.http = httpx.AsyncClient(transport=transport)
        self.clock, self.cap, self.timeout = clock, cap, timeout
        self.sent: list[Exchange] = []
        self.waited: list[float] = []

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        cut: bool = False,
        read_timeout: float | None = None,
    ) -> Exchange:
        if len(self.sent) >= self.cap:
            raise BudgetExhausted("request cap")
        start = self.clock.now()
        response = await self.http.request(method, url, headers=headers, content=body)
        seconds = self.clock.now() - start
        limit = self.timeout if read_timeout is None else read_timeout
        late = seconds > limit
        exchange = Exchange(
            method=method,
            url=url,
            request_headers=tuple((headers or {}).items()),
            request_body=body or "",
            status=None if late else response.status_code,
            response_headers=() if late else tuple(response.headers.multi_items()),
            response_body="" if late else response.text,
            seconds=limit if late else seconds,
            error="read timeout" if late else None,
        )
        self.sent.append(exchange)
        return exchange

    async def wait(self, seconds: float) -> None:
        self.waited.append(seconds)
        await self.clock.sleep(seconds)

    def render(self, template: str, n: int) -> str:
        return (
            template.replace("{{run}}", "run1")
            .replace("{{n}}", str(n))
            .replace("{{uuid}}", str(uuid.uuid4()))
        )

    def remaining(self) -> int:
        return self.cap - len(self.sent)


# -- the apps --------------------------------------------------------------------------------


def starlette(clock: ManualClock) -> Starlette:
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    async def slow(request: Request) -> Response:
        await clock.sleep(float(request.query_params["seconds"]))
        if "gives-up" in request.query_params:
            return PlainTextResponse("gateway timeout", status_code=504)
        return PlainTextResponse("slept")

    return Starlette(routes=[Route("/hello", hello), Route("/slow", slow)])


def limited(clock: ManualClock, *, scope: str = "per_key", legacy: bool = False) -> Any:
    """surefoot's own limiter: 3 per 10 s, per API key or for everyone at once."""
    options: dict[str, Any] = {} if scope == "per_key" else {"principal": lambda s: "everyone"}
    return RateLimitMiddleware(
        starlette(clock),
        store=MemoryStore(),
        policies=[RateLimitPolicy("default", limits=["3/10 seconds"])],
        clock=clock,
        legacy_headers=legacy,
        **options,
    )


class CrudeLimiter:
    """A fixed window of 3 requests per 10 s (for everyone) that answers a bare 429:
    ``retry_after`` says what ``Retry-After`` it sends (None: none), whatever the window."""

    def __init__(self, app: Any, clock: ManualClock, *, retry_after: str | None) -> None:
        self.app, self.clock, self.retry_after = app, clock, retry_after
        self.window, self.count = -1, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        window = int(self.clock.now() // 10)
        if window != self.window:
            self.window, self.count = window, 0
        self.count += 1
        if self.count <= 3:
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", b"text/plain")]
        if self.retry_after is not None:
            headers.append((b"retry-after", self.retry_after.encode()))
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b"Too Many Requests"})


class XRateLimiter:
    """slowapi's way: a fixed window of 3 requests per 10 s opened by its first request,
    only ``X-RateLimit-*`` fields, the reset a Unix time (a second late, as slowapi's), and
    a ``Date`` from the clock."""

    def __init__(self, app: Any, clock: ManualClock) -> None:
        self.app, self.clock = app, clock
        self.ends, self.count = -1.0, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = self.clock.now()
        if now >= self.ends:
            self.ends, self.count = now + 10, 0
        self.count += 1
        fields = [
            (b"x-ratelimit-limit", b"3"),
            (b"x-ratelimit-remaining", str(max(0, 3 - self.count)).encode()),
            (b"x-ratelimit-reset", str(1 + self.ends).encode()),
            (b"date", email.utils.formatdate(now, usegmt=True).encode()),
        ]
        if self.count > 3:
            await send({"type": "http.response.start", "status": 429, "headers": fields})
            await send({"type": "http.response.body", "body": b"Too Many Requests"})
            return

        async def with_fields(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *fields]}
            await send(message)

        await self.app(scope, receive, with_fields)


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/handlers.py", line 42, in create\n'
    "    cursor.execute(\"INSERT INTO charges VALUES ('x')\")\n"
    "sqlite3.IntegrityError: UNIQUE constraint failed: charges.reference\n"
)


def leaky(clock: ManualClock) -> Starlette:
    """Debug-mode errors: a traceback in a 500 for a body it cannot read."""

    async def charges(request: Request) -> Response:
        try:
            json.loads(await request.body())
        except ValueError:
            return PlainTextResponse(TRACEBACK, status_code=500)
        return JSONResponse({"id": "ch_1"}, status_code=201)

    async def missing(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    return Starlette(
        routes=[Route("/charges", charges, methods=["POST"])],
        exception_handlers={404: missing},
    )


def problems(clock: ManualClock) -> Starlette:
    """Every error as problem+json with a code."""

    def problem(status: int, code: str) -> Response:
        body = {"type": f"https://partner.test/problems/{code}", "status": status, "code": code}
        return JSONResponse(body, status_code=status, media_type="application/problem+json")

    async def charges(request: Request) -> Response:
        try:
            json.loads(await request.body())
        except ValueError:
            return problem(400, "malformed_body")
        return JSONResponse({"id": "ch_1"}, status_code=201)

    async def missing(request: Request, exc: Exception) -> Response:
        return problem(404, "not_found")

    return Starlette(
        routes=[Route("/charges", charges, methods=["POST"])],
        exception_handlers={404: missing},
    )


def target(**fields: Any) -> Target:
    return Target(**{"name": "t", "method": "GET", "url": BASE + "/hello", **fields})


async def run(check: str, app: Any, clock: ManualClock, **fields: Any) -> Finding:
    client = AsgiProbeClient(app, clock)
    finding = await LIMIT_CHECKS[check](client, target(**fields), "run1")
    assert finding.check == check
    assert finding.target == "t"
    assert finding.summary
    assert finding.advice
    return finding


# -- parsers ---------------------------------------------------------------------------------


def test_read_fields_parses_draft_10_lists_and_the_legacy_fields() -> None:
    fields = read_fields(
        [
            ("RateLimit-Policy", '"default";q=100;w=60, "burst";q=10;w=1'),
            ("RateLimit", '"default";r=40;t=30'),
            ("RateLimit", '"burst";r=2;t=1'),  # a repeated line joins the list
            ("X-RateLimit-Limit", "100"),
            ("X-RateLimit-Remaining", "40"),
            ("Retry-After", "1"),
        ]
    )
    assert fields.policy == (("default", {"q": 100, "w": 60}), ("burst", {"q": 10, "w": 1}))
    assert fields.limit == (("default", {"r": 40, "t": 30}), ("burst", {"r": 2, "t": 1}))
    assert fields.remaining == 2
    assert fields.reset == 1
    assert fields.kinds == ("draft-10", "x-ratelimit")
    assert fields.retry_after == "1"
    assert fields.malformed == ()


@pytest.mark.parametrize(
    ("headers", "malformed", "remaining"),
    [
        ([("RateLimit", '"default";r=;t=1')], ("ratelimit",), None),
        ([("RateLimit-Policy", "(a b);q=1")], ("ratelimit-policy",), None),
        ([("RateLimit", "default;r=0;t=5")], (), 0),  # a token names a limit too
        ([("RateLimit", "1;r=0")], ("ratelimit",), None),  # an Integer names nothing
        ([("X-RateLimit-Remaining", "lots")], ("x-ratelimit-remaining",), None),
        ([("X-RateLimit-Remaining", "7")], (), 7),
        ([], (), None),
    ],
)
def test_read_fields_reports_what_does_not_parse(
    headers: list[tuple[str, str]], malformed: tuple[str, ...], remaining: int | None
) -> None:
    fields = read_fields(headers)
    assert fields.malformed == malformed
    assert fields.remaining == remaining


@pytest.mark.parametrize(
    ("value", "date", "seconds"),
    [
        ("5", None, 5.0),
        (" 120 ", None, 120.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", "Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # past: now
        ("Wed, 21 Oct 2015 07:28:30 GMT", None, None),  # no Date: no clock to count from
        ("soon", "Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("-1", None, None),
        ("1.5", None, None),
    ],
)
def test_retry_after_seconds(value: str, date: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, date=date) == seconds


@pytest.mark.parametrize(
    ("body", "leaks"),
    [
        (TRACEBACK, ("stack trace", "source line", "exception", "SQL", "file path")),
        ('{"detail": "ValueError: invalid literal for int()"}', ("exception",)),
        (
            "java.lang.NullPointerException: null\n\tat com.acme.Pay(Pay.java:12)",
            ("stack trace", "exception", "file path"),
        ),
        ('{"error": "ERROR: syntax error at or near \\"FORM\\""}', ("SQL",)),
        ("SELECT id FROM users WHERE email = 'a'", ("SQL",)),
        ("failed in /usr/lib/python3.11/json/decoder.py", ("file path",)),
        ("psycopg.errors.UniqueViolation: duplicate key", ("SQL",)),
        # what a careful API says
        ('{"code": "not_found", "detail": "No charge ch_1."}', ()),
        ("Error: select a plan from the list, then update your settings", ()),
        ('{"detail": [{"type": "json_invalid", "msg": "JSON decode error"}]}', ()),
        ('{"type": "https://surefoot.dev/problems/rate-limit-exceeded"}', ()),
    ],
)
def test_find_leaks(body: str, leaks: tuple[str, ...]) -> None:
    assert find_leaks(body) == leaks


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"type": "https://x.test/p/over", "code": "rate_limit_exceeded"}', "rate_limit_exceeded"),
        ('{"type": "https://x.test/p/over", "title": "Over"}', "https://x.test/p/over"),
        ('{"type": "about:blank", "title": "Not Found"}', None),
        ('{"error": {"type": "card_error", "code": "card_declined"}}', "card_declined"),
        ('{"error": "not_found"}', "not_found"),
        ('{"error": "Rate limit exceeded: 5 per 1 second"}', None),
        ('{"errors": [{"code": 34, "message": "no such page"}]}', "34"),
        ('{"detail": [{"type": "json_invalid", "loc": ["body", 1]}]}', "json_invalid"),
        ('{"detail": "Not Found"}', None),
        ('{"code": true}', None),
        ("[1, 2]", None),
        ("Internal Server Error", None),
    ],
)
def test_machine_code(body: str, code: str | None) -> None:
    assert machine_code(body) == code


# -- judges ----------------------------------------------------------------------------------


def ex(
    status: int | None,
    headers: Mapping[str, str] | None = None,
    body: str = "",
    *,
    seconds: float = 0.01,
    error: str | None = None,
) -> Exchange:
    return Exchange(
        "GET", BASE + "/hello", (), "", status, tuple((headers or {}).items()), body, seconds, error
    )


def draft(r: int, t: int = 10) -> dict[str, str]:
    return {"RateLimit-Policy": '"default";q=3;w=10', "RateLimit": f'"default";r={r};t={t}'}


@pytest.mark.parametrize(
    ("exchanges", "verdict", "in_summary"),
    [
        (
            [ex(200, draft(2)), ex(200, draft(1)), ex(200, draft(0)), ex(429, draft(0))],
            Verdict.PASS,
            "draft-10",
        ),
        (
            [
                ex(200, {"X-RateLimit-Remaining": "1"}),
                ex(200, {"X-RateLimit-Remaining": "0"}),
                ex(429),
            ],
            Verdict.PASS,
            "x-ratelimit",
        ),
        ([ex(200), ex(200), ex(429)], Verdict.FAIL, "no rate-limit fields"),
        ([ex(200, draft(2)), ex(429, draft(0))], Verdict.FAIL, "said 2 requests remained"),
        ([ex(200, draft(0)), ex(429, draft(1))], Verdict.FAIL, "the 429 itself says 1"),
        ([ex(200, {"RateLimit": "r=1;;"}), ex(429)], Verdict.FAIL, "malformed"),
        ([ex(200, {"X-RateLimit-Reset": "soon"}), ex(429)], Verdict.FAIL, "x-ratelimit-reset"),
        ([ex(200, draft(2)), ex(200, draft(1))], Verdict.INCONCLUSIVE, "no 429 within 2"),
        ([ex(200), ex(200)], Verdict.INCONCLUSIVE, "no rate-limit fields"),
        ([ex(200), ex(None, error="connection reset")], Verdict.INCONCLUSIVE, "connection reset"),
        ([], Verdict.INCONCLUSIVE, "nothing sent"),
    ],
)
def test_judge_headers(exchanges: list[Exchange], verdict: Verdict, in_summary: str) -> None:
    judgement = judge_headers(exchanges, bound=50)
    assert judgement.verdict is verdict
    assert in_summary in judgement.summary


def test_judge_headers_facts_say_the_limit_and_the_reset_kind() -> None:
    epoch = {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1796613101.3",
    }
    facts = judge_headers([ex(200, draft(1)), ex(200, draft(0)), ex(429, epoch)], bound=5).facts
    assert facts["admitted_before_429"] == 2
    assert facts["x_ratelimit_reset"] == "epoch"
    assert facts["fields"] == ["draft-10", "x-ratelimit"]
    assert facts["ratelimit"] is None  # the 429's own fields
    seconds = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "7"}
    facts = judge_headers([ex(429, seconds)], bound=5).facts
    assert facts["x_ratelimit_reset"] == "seconds"
    assert facts["admitted_before_429"] == 0


T = 1_796_613_100  # a Unix time
DATE = {"Date": email.utils.formatdate(T, usegmt=True)}


def legacy(limit: int, remaining: int, reset: float | str, **more: str) -> dict[str, str]:
    fields = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining)}
    return {**fields, "X-RateLimit-Reset": str(reset), **more}


def slowapi_like(reset: float | str, *, date: bool = True) -> list[Exchange]:
    """5 per window, the reset a Unix time, as slowapi sends (without draft-10 fields)."""
    more = DATE if date else {}
    return [
        *[ex(200, legacy(5, 4 - i, reset, **more)) for i in range(5)],
        ex(429, legacy(5, 0, reset, **more)),
    ]


@pytest.mark.parametrize(
    ("exchanges", "expected"),
    [
        # RateLimit-Policy's first member with q and w
        (
            [ex(200, draft(2)), ex(200, draft(1)), ex(200, draft(0)), ex(429, draft(0))],
            (3, 10.0, "ratelimit-policy"),
        ),
        (
            [ex(200, {**draft(0), **legacy(9, 0, 1)}), ex(429, {**draft(0), **legacy(9, 0, 1)})],
            (3, 10.0, "ratelimit-policy"),
        ),
        # X-RateLimit-*: the reset of the answer that opened the window, in seconds...
        (
            [
                ex(200, legacy(3, 2, 10)),
                ex(200, legacy(3, 1, 9)),
                ex(200, legacy(3, 0, 9)),
                ex(429, legacy(3, 0, 8)),
            ],
            (3, 10.0, "x-ratelimit"),
        ),
        # ...or as a Unix time, less the answer's Date, rounded up (slowapi)
        (slowapi_like(T + 3), (5, 3.0, "x-ratelimit")),
        (slowapi_like(T + 2.4), (5, 3.0, "x-ratelimit")),
        # no throttle when the window cannot be known: an epoch without Date...
        (slowapi_like(T + 3, date=False), (5, None, "x-ratelimit")),
        # ...no answer that opened a window (the run began within one)...
        (
            [ex(200, legacy(3, 1, 9)), ex(200, legacy(3, 0, 8)), ex(429, legacy(3, 0, 8))],
            (3, None, "x-ratelimit"),
        ),
        # ...a reset that moves later (a bucket refilling, not a fixed window)
        (
            [
                ex(200, legacy(3, 2, T + 1, **DATE)),
                ex(200, legacy(3, 1, T + 5, **DATE)),
                ex(429, legacy(3, 0, T + 9, **DATE)),
            ],
            (3, None, "x-ratelimit"),
        ),
        (
            [ex(200, legacy(3, 2, 1)), ex(200, legacy(3, 1, 3)), ex(429, legacy(3, 0, 5))],
            (3, None, "x-ratelimit"),
        ),
        # a limit seen without a 429 is still the advertised limit
        ([ex(200, legacy(3, 2, 10)), ex(200, legacy(3, 1, 9))], (3, 10.0, "x-ratelimit")),
        # nothing to throttle at
        ([ex(200, {"RateLimit-Policy": '"p";q=3'}), ex(429)], None),
        ([ex(200, {"X-RateLimit-Remaining": "1"}), ex(429)], None),
        ([ex(200), ex(429)], None),
        ([ex(200, legacy(3, 2, "soon")), ex(429)], None),  # malformed: do not pace from it
        ([ex(200, legacy(3, 2, "inf")), ex(429, legacy(3, 0, "inf"))], (3, None, "x-ratelimit")),
    ],
)
def test_judge_headers_states_the_limit_a_client_may_throttle_at(
    exchanges: list[Exchange], expected: tuple[int, float | None, str] | None
) -> None:
    facts = judge_headers(exchanges, bound=50).facts
    if expected is None:
        assert not {"limit", "window"} & set(facts), facts
    else:
        assert (facts["limit"], facts["window"], facts["limit_from"]) == expected


def test_a_partner_with_only_x_ratelimit_fields_gets_a_throttle_in_the_policy() -> None:
    """The facts are those the report's policy reads: slowapi's fields give a throttle."""
    judgement = judge_headers(slowapi_like(T + 3), bound=50)
    finding = Finding(
        "rate_limit_headers",
        "t",
        judgement.verdict,
        judgement.summary,
        judgement.advice,
        facts=judgement.facts,
    )
    table = integration_policy(Report(findings=(finding,)), "partner", base_url=BASE)
    assert table["throttle"] == {"limit": "5/3 seconds"}
    # without a window, no throttle
    judgement = judge_headers(slowapi_like(T + 3, date=False), bound=50)
    finding = dataclasses.replace(finding, facts=judgement.facts)
    assert "throttle" not in integration_policy(Report(findings=(finding,)), "p", base_url=BASE)


@pytest.mark.parametrize(
    ("limited", "after", "verdict", "in_summary"),
    [
        (ex(429, {"Retry-After": "10", **draft(0)}), ex(200), Verdict.PASS, "honest"),
        (ex(429, {"Retry-After": "1"}), ex(429, {"Retry-After": "9"}), Verdict.FAIL, "dishonest"),
        (ex(429), None, Verdict.FAIL, "no Retry-After"),
        (ex(429, {"Retry-After": "later"}), None, Verdict.FAIL, "malformed"),
        (None, None, Verdict.INCONCLUSIVE, "no 429"),
        (ex(429, {"Retry-After": "3600"}), None, Verdict.INCONCLUSIVE, "deadline"),
        (
            ex(429, {"Retry-After": "5"}),
            ex(None, error="read timeout"),
            Verdict.INCONCLUSIVE,
            "read timeout",
        ),
    ],
)
def test_judge_retry_after(
    limited: Exchange | None, after: Exchange | None, verdict: Verdict, in_summary: str
) -> None:
    judgement = judge_retry_after(limited, after)
    assert judgement.verdict is verdict
    assert in_summary in judgement.summary


def test_judge_retry_after_compares_ratelimit_t() -> None:
    facts = judge_retry_after(ex(429, {"Retry-After": "10", **draft(0, 10)}), ex(200)).facts
    assert facts["t_equals_retry_after"] is True
    assert facts["retry_after_seconds"] == 10.0
    facts = judge_retry_after(ex(429, {"Retry-After": "10", **draft(0, 60)}), ex(200)).facts
    assert facts["t_equals_retry_after"] is False


@pytest.mark.parametrize(
    ("first", "alt", "again", "verdict", "scope"),
    [
        ([ex(200), ex(429)], ex(200), ex(429), Verdict.PASS, "per_key"),
        ([ex(200), ex(429)], ex(429), None, Verdict.PASS, "global"),
        ([ex(200), ex(429)], ex(200), ex(200), Verdict.INCONCLUSIVE, None),  # window reset
        ([ex(200), ex(429)], ex(401), None, Verdict.INCONCLUSIVE, None),
        ([ex(200), ex(429)], ex(None, error="reset"), None, Verdict.INCONCLUSIVE, None),
        ([ex(200), ex(429)], None, None, Verdict.INCONCLUSIVE, None),
        ([ex(200), ex(429)], ex(200), None, Verdict.INCONCLUSIVE, None),
        ([ex(200), ex(200)], None, None, Verdict.INCONCLUSIVE, None),
    ],
)
def test_judge_scope(
    first: list[Exchange],
    alt: Exchange | None,
    again: Exchange | None,
    verdict: Verdict,
    scope: str | None,
) -> None:
    judgement = judge_scope(first, alt, again)
    assert judgement.verdict is verdict
    assert judgement.facts.get("scope") == scope


PROBLEM = {"content-type": "application/problem+json"}


@pytest.mark.parametrize(
    ("exchanges", "verdict", "in_summary"),
    [
        (
            [ex(404, PROBLEM, '{"type": "about:blank", "code": "not_found"}')],
            Verdict.PASS,
            "problem+json",
        ),
        (
            [ex(400, {"content-type": "application/json"}, '{"error": {"code": "bad"}}')],
            Verdict.PASS,
            "not problem+json",
        ),
        ([ex(404, PROBLEM, '{"code": "not_found"}'), ex(500, {}, TRACEBACK)], Verdict.FAIL, "leak"),
        ([ex(404, {}, '{"detail": "Not Found"}')], Verdict.FAIL, "without a machine-readable code"),
        ([ex(200), ex(201)], Verdict.INCONCLUSIVE, "no error"),
        ([ex(None, error="reset")], Verdict.INCONCLUSIVE, "no error"),
    ],
)
def test_judge_errors(exchanges: list[Exchange], verdict: Verdict, in_summary: str) -> None:
    judgement = judge_errors(exchanges)
    assert judgement.verdict is verdict
    assert in_summary in judgement.summary


@pytest.mark.parametrize(
    ("exchange", "verdict", "timed_out", "in_summary"),
    [
        (ex(200, seconds=2.5), Verdict.PASS, False, "answered the slow request after 2.5 s"),
        (ex(504, seconds=30), Verdict.PASS, False, "gave up on the slow request itself after 30 s"),
        (
            ex(None, seconds=10, error="read timeout"),
            Verdict.FAIL,
            True,
            "past the probe's read timeout",
        ),
        (ex(None, seconds=3, error="connection reset"), Verdict.FAIL, False, "dropped"),
        (ex(429, seconds=0.001), Verdict.INCONCLUSIVE, False, "rate limited, not timed"),
    ],
)
def test_judge_timeout(
    exchange: Exchange, verdict: Verdict, timed_out: bool, in_summary: str
) -> None:
    judgement = judge_timeout(exchange, read_timeout=10)
    assert judgement.verdict is verdict
    assert judgement.facts["timed_out"] is timed_out
    assert in_summary in judgement.summary


# -- the checks against in-process apps --------------------------------------------------------


async def test_surefoot_s_limiter_sends_draft_10_fields_and_reaches_a_429(
    clock: ManualClock,
) -> None:
    finding = await run("rate_limit_headers", limited(clock, legacy=True), clock, headers=KEY_A)
    assert finding.verdict is Verdict.PASS, finding.summary
    assert finding.facts["admitted_before_429"] == 3
    assert finding.facts["fields"] == ["draft-10", "x-ratelimit"]
    assert finding.facts["policy"] == {"default": {"q": 3, "w": 10}}
    assert [e.status for e in finding.evidence] == [200, 200, 429]


async def test_a_limiter_without_fields_fails_rate_limit_headers(clock: ManualClock) -> None:
    app = CrudeLimiter(starlette(clock), clock, retry_after=None)
    finding = await run("rate_limit_headers", app, clock)
    assert finding.verdict is Verdict.FAIL
    assert finding.facts["admitted_before_429"] == 3
    assert "at 3 requests per window" in finding.advice


async def test_x_ratelimit_fields_alone_give_the_policy_a_throttle(clock: ManualClock) -> None:
    clock.advance(0.5)  # within a second, as a real clock is
    finding = await run("rate_limit_headers", XRateLimiter(starlette(clock), clock), clock)
    assert finding.verdict is Verdict.PASS, finding.summary
    assert finding.facts["fields"] == ["x-ratelimit"]
    # 1 + 10 s from the first answer, whose Date says half a second earlier: 12 s at most
    assert (finding.facts["limit"], finding.facts["window"]) == (3, 12.0)
    table = integration_policy(Report(findings=(finding,)), "p", base_url=BASE)
    assert table["throttle"] == {"limit": "3/12 seconds"}


async def test_no_429_within_the_bound_is_inconclusive(clock: ManualClock) -> None:
    finding = await run("rate_limit_headers", starlette(clock), clock, limit_requests=4)
    assert finding.verdict is Verdict.INCONCLUSIVE
    assert finding.facts["requests"] == 4


async def test_surefoot_s_retry_after_is_honest(clock: ManualClock) -> None:
    client = AsgiProbeClient(limited(clock), clock)
    finding = await LIMIT_CHECKS["retry_after"](client, target(headers=KEY_A), "run1")
    assert finding.verdict is Verdict.PASS, finding.summary
    assert client.waited == [10.0]
    assert finding.facts["t_equals_retry_after"] is True
    assert [e.status for e in finding.evidence][-2:] == [429, 200]


async def test_a_retry_after_shorter_than_the_window_is_dishonest(clock: ManualClock) -> None:
    client = AsgiProbeClient(CrudeLimiter(starlette(clock), clock, retry_after="1"), clock)
    finding = await LIMIT_CHECKS["retry_after"](client, target(), "run1")
    assert finding.verdict is Verdict.FAIL
    assert "dishonest" in finding.summary
    assert client.waited == [1.0]
    assert finding.facts["after_status"] == 429


async def test_a_429_without_retry_after_fails_and_waits_for_nothing(clock: ManualClock) -> None:
    client = AsgiProbeClient(CrudeLimiter(starlette(clock), clock, retry_after=None), clock)
    finding = await LIMIT_CHECKS["retry_after"](client, target(), "run1")
    assert finding.verdict is Verdict.FAIL
    assert "no Retry-After" in finding.summary
    assert client.waited == []


async def test_a_wait_beyond_the_deadline_is_inconclusive(clock: ManualClock) -> None:
    class Deadline(AsgiProbeClient):
        async def wait(self, seconds: float) -> None:
            raise BudgetExhausted("deadline")

    client = Deadline(CrudeLimiter(starlette(clock), clock, retry_after="3600"), clock)
    finding = await LIMIT_CHECKS["retry_after"](client, target(), "run1")
    assert finding.verdict is Verdict.INCONCLUSIVE
    assert len(client.sent) == 4  # no request after the refused wait


async def test_limit_scope_tells_per_key_from_global(clock: ManualClock) -> None:
    per_key = await run("limit_scope", limited(clock), clock, headers=KEY_A, alt_headers=KEY_B)
    assert per_key.verdict is Verdict.PASS
    assert per_key.facts["scope"] == "per_key"
    assert [e.status for e in per_key.evidence][-3:] == [429, 200, 429]
    assert per_key.evidence[-2].request_headers == (("X-API-Key", "key-b"),)
    app = limited(clock, scope="global")
    shared = await run("limit_scope", app, clock, headers=KEY_A, alt_headers=KEY_B)
    assert shared.verdict is Verdict.PASS
    assert shared.facts["scope"] == "global"
    assert "Share one throttle" in shared.advice


async def test_limit_scope_without_a_second_credential_is_skipped(clock: ManualClock) -> None:
    client = AsgiProbeClient(limited(clock), clock)
    finding = await LIMIT_CHECKS["limit_scope"](client, target(), "run1")
    assert finding.verdict is Verdict.SKIPPED
    assert client.sent == []


async def test_a_leaking_app_fails_error_format(clock: ManualClock) -> None:
    finding = await run("error_format", leaky(clock), clock, method="POST", url=BASE + "/charges")
    assert finding.verdict is Verdict.FAIL
    assert finding.facts["leaks"] == ["SQL", "exception", "file path", "source line", "stack trace"]
    unknown, malformed = finding.evidence
    assert unknown.status == 404
    assert unknown.url == BASE + "/surefoot-probe-no-such-path-run1"
    assert (malformed.method, malformed.status, malformed.request_body) == (
        "POST",
        500,
        MALFORMED_BODY,
    )


async def test_problem_json_errors_pass_error_format(clock: ManualClock) -> None:
    finding = await run(
        "error_format", problems(clock), clock, method="POST", url=BASE + "/charges"
    )
    assert finding.verdict is Verdict.PASS, finding.summary
    assert [row["code"] for row in finding.facts["errors"]] == ["not_found", "malformed_body"]
    assert finding.facts["problem_json"] is True


async def test_plain_errors_fail_error_format_without_a_leak(clock: ManualClock) -> None:
    finding = await run("error_format", starlette(clock), clock)  # a GET: the unknown path only
    assert finding.verdict is Verdict.FAIL
    assert finding.facts["leaks"] == []
    assert len(finding.evidence) == 1


async def test_timeouts_measure_how_long_a_slow_request_is_held(clock: ManualClock) -> None:
    answered = await run("timeouts", starlette(clock), clock, slow_url=BASE + "/slow?seconds=3")
    assert answered.verdict is Verdict.PASS
    assert answered.facts["held_seconds"] == 3.0
    gave_up = await run(
        "timeouts",
        starlette(clock),
        clock,
        slow_url=BASE + "/slow?seconds=30&gives-up=1",
        slow_timeout=60,
    )
    assert gave_up.verdict is Verdict.PASS
    assert gave_up.facts["status"] == 504
    held = await run(
        "timeouts", starlette(clock), clock, slow_url=BASE + "/slow?seconds=30", slow_timeout=5
    )
    assert held.verdict is Verdict.FAIL
    assert held.facts["timed_out"] is True


async def test_timeouts_wait_once_for_a_limit_the_other_checks_used_up(
    clock: ManualClock,
) -> None:
    client = AsgiProbeClient(limited(clock), clock)
    slow = target(headers=KEY_A, slow_url=BASE + "/slow?seconds=2")
    await LIMIT_CHECKS["rate_limit_headers"](client, slow, "run1")  # the limit is used up
    finding = await LIMIT_CHECKS["timeouts"](client, slow, "run1")
    assert [e.status for e in finding.evidence] == [429, 200]
    assert finding.verdict is Verdict.PASS
    assert finding.facts["held_seconds"] == 2.0


async def test_timeouts_without_a_slow_url_is_skipped(clock: ManualClock) -> None:
    finding = await run("timeouts", starlette(clock), clock)
    assert finding.verdict is Verdict.SKIPPED


async def test_writes_get_a_fresh_key_and_a_rendered_body(clock: ManualClock) -> None:
    client = AsgiProbeClient(limited(clock), clock)
    write = target(method="POST", body='{"n": {{n}}}', headers=KEY_A, limit_requests=2)
    await LIMIT_CHECKS["rate_limit_headers"](client, write, "run1")
    keys = [dict(e.request_headers)["Idempotency-Key"] for e in client.sent]
    assert len(set(keys)) == 2
    assert [e.request_body for e in client.sent] == ['{"n": 10000}', '{"n": 10001}']


def test_every_check_is_registered() -> None:
    assert set(LIMIT_CHECKS) == {
        "rate_limit_headers",
        "retry_after",
        "limit_scope",
        "error_format",
        "timeouts",
    }


async def test_the_checks_run_through_the_probe_s_own_client(clock: ManualClock) -> None:
    """``HttpProbeClient`` over ASGI on the same clock: its ``wait`` moves the limiter's time."""
    from surefoot.probe._client import HttpProbeClient

    client = HttpProbeClient(
        hosts=["partner.test:80"],
        max_requests=50,
        max_duration=60,
        credential_headers=["X-API-Key"],
        transport=httpx.ASGITransport(app=limited(clock)),
        clock=clock,
        sleep=clock.sleep,
    )
    async with client:
        honest = await LIMIT_CHECKS["retry_after"](client, target(headers=KEY_A), client.run)
        scope = await LIMIT_CHECKS["limit_scope"](
            client, target(headers=KEY_A, alt_headers=KEY_B), client.run
        )
    assert honest.verdict is Verdict.PASS, honest.summary
    assert clock.now() == 1_700_000_010.0  # the one wait: Retry-After's 10 s
    assert scope.facts["scope"] == "per_key"
    assert "key-b" not in repr(scope)  # redacted by the client


def test_without_http_sf_draft_10_fields_are_seen_but_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_http_sf(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "http_sf":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_http_sf)
    fields = read_fields([("RateLimit", '"default";r=0;t=5')])
    assert (fields.limit, fields.unparsed, fields.kinds) == (None, ("ratelimit",), ("draft-10",))
    judgement = judge_headers([ex(200, draft(0)), ex(429, draft(0))], bound=5)
    assert judgement.verdict is Verdict.PASS  # seen, so not "no rate-limit fields"


async def test_a_malformed_retry_after_fails_and_waits_for_nothing(clock: ManualClock) -> None:
    client = AsgiProbeClient(CrudeLimiter(starlette(clock), clock, retry_after="later"), clock)
    finding = await LIMIT_CHECKS["retry_after"](client, target(), "run1")
    assert finding.verdict is Verdict.FAIL
    assert "malformed" in finding.summary
    assert client.waited == []


async def test_limit_scope_without_a_429_sends_no_second_credential(clock: ManualClock) -> None:
    client = AsgiProbeClient(starlette(clock), clock)
    goal = target(headers=KEY_A, alt_headers=KEY_B, limit_requests=3)
    finding = await LIMIT_CHECKS["limit_scope"](client, goal, "run1")
    assert finding.verdict is Verdict.INCONCLUSIVE
    assert [dict(e.request_headers) for e in client.sent] == [KEY_A] * 3


async def test_retry_after_without_a_429_is_inconclusive(clock: ManualClock) -> None:
    client = AsgiProbeClient(starlette(clock), clock)
    finding = await LIMIT_CHECKS["retry_after"](client, target(limit_requests=3), "run1")
    assert finding.verdict is Verdict.INCONCLUSIVE
    assert (len(client.sent), client.waited) == (3, [])
