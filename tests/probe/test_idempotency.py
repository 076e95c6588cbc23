"""The idempotency checks of ``surefoot probe``: the pure judges (tables), then each check
driven through a test double of ``ProbeClient`` against apps in process.

``FakeProbeClient`` talks to any httpx transport (an ``ASGITransport`` here; a real socket in
``test_idempotency_targets.py``); ``cut=True`` forwards the request, reads the whole answer
and then returns no status but the one it read (``cut_status``), as the probe's client does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest
from targets import aih, fik, ledger

from surefoot.idempotency import IdempotencyMiddleware, IdempotencyPolicy
from surefoot.probe import BudgetExhausted, Effect, Exchange, Target, Verdict
from surefoot.probe._client import CUT_ERROR, HttpProbeClient
from surefoot.probe._idempotency import (
    IDEMPOTENCY_CHECKS,
    KEY_REFUSALS,
    count_from,
    effect_count,
    judge_concurrent,
    judge_key_lifetime,
    judge_lost_response,
    judge_mismatch,
    judge_no_key,
    judge_replay,
    same_body,
)
from surefoot.storage import MemoryStore
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio


# -- the test double --------------------------------------------------------------------------


class FakeProbeClient:
    """A ``ProbeClient`` over any httpx transport: no allowlist, no redaction; a cap on
    requests; ``wait`` only records (and calls ``on_wait``, e.g. to move a ManualClock)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str = "http://partner.test",
        run: str = "run1",
        max_requests: int = 500,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30)
        self.run = run
        self.max_requests = max_requests
        self.sent = 0
        self.waited: list[float] = []
        self.on_wait = on_wait

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
        if self.sent >= self.max_requests:
            raise BudgetExhausted("max_requests")
        self.sent += 1
        sent_headers = tuple((headers or {}).items())
        try:
            response = await self.http.request(method, url, headers=headers, content=body)
        except httpx.HTTPError as error:
            return Exchange(method, url, sent_headers, body or "", None, (), "", 0.0, repr(error))
        if cut:
            return Exchange(
                method,
                url,
                sent_headers,
                body or "",
                None,
                (),
                "",
                0.0,
                CUT_ERROR,
                cut_status=response.status_code,
            )
        try:
            seconds = response.elapsed.total_seconds()
        except RuntimeError:  # an httpx.MockTransport answer built with its content
            seconds = 0.0
        return Exchange(
            method,
            url,
            sent_headers,
            body or "",
            response.status_code,
            tuple(response.headers.items()),
            response.text,
            seconds,
        )

    async def wait(self, seconds: float) -> None:
        self.waited.append(seconds)
        if self.on_wait is not None:
            self.on_wait(seconds)

    def render(self, template: str, n: int) -> str:
        return (
            template.replace("{{run}}", self.run)
            .replace("{{n}}", str(n))
            .replace("{{uuid}}", str(uuid.uuid4()))
        )

    def remaining(self) -> int:
        return self.max_requests - self.sent

    async def aclose(self) -> None:
        await self.http.aclose()


def asgi(app: Any, **options: Any) -> FakeProbeClient:
    return FakeProbeClient(httpx.ASGITransport(app=app), **options)


BODY = '{"amount": 1999, "customer": "{{run}}-{{n}}", "reference": "ref-{{run}}-{{n}}"}'
EFFECT = Effect(method="GET", url="/charges?customer={{run}}-{{n}}", count="json:data")


def target(**fields: Any) -> Target:
    base: dict[str, Any] = {
        "name": "charges",
        "method": "POST",
        "url": "/charges",
        "headers": {"Content-Type": "application/json"},
        "body": BODY,
        "effect": EFFECT,
        "concurrency": 5,
    }
    return Target(**{**base, **fields})


# -- exchanges for the tables -----------------------------------------------------------------


def ex(
    status: int | None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    error: str | None = None,
    cut_status: int | None = None,
) -> Exchange:
    text = body if isinstance(body, str) else json.dumps(body) if body is not None else ""
    items = tuple((headers or {}).items())
    return Exchange("POST", "/charges", (), "", status, items, text, 0.0, error, cut_status)


CH1 = {"id": "ch_1", "amount": 1999}
CH2 = {"id": "ch_2", "amount": 1999}
REPLAYED = {"Idempotent-Replayed": "true"}
CUT = ex(None, error=CUT_ERROR, cut_status=201)


def test_count_from_reads_json_paths_headers_and_statuses() -> None:
    table: list[tuple[str, Exchange, int | None]] = [
        ("json:data", ex(200, {"data": [1, 2, 3]}), 3),
        ("json:data", ex(200, {"data": []}), 0),
        ("json:meta.total", ex(200, {"meta": {"total": 7}}), 7),
        ("json:items.0.n", ex(200, {"items": [{"n": 2}]}), 2),
        ("json:count", ex(200, {"count": "4"}), 4),
        ("json:", ex(200, [1, 2]), 2),
        ("json:data", ex(200, {"other": []}), None),
        ("json:data", ex(200, {"data": True}), None),
        ("json:data", ex(200, {"data": -1}), None),
        ("json:items.5", ex(200, {"items": [1]}), None),
        ("json:data", ex(200, "not json"), None),
        ("json:data", ex(500, {"data": [1]}), None),
        ("json:data", ex(None, error="reset"), None),
        ("header:X-Total-Count", ex(200, "", {"x-total-count": " 12 "}), 12),
        ("header:X-Total-Count", ex(200, "", {"x-total-count": "many"}), None),
        ("header:X-Total-Count", ex(200, ""), None),
        ("status", ex(200), 1),
        ("status", ex(204), 1),
        ("status", ex(404), 0),
        ("status", ex(500), None),
        ("status", ex(None, error="reset"), None),
        ("xml:data", ex(200, {"data": []}), None),
    ]
    for spec, exchange, expected in table:
        assert count_from(spec, exchange) == expected, (spec, exchange.response_body)


def test_same_body_compares_json_semantically_and_text_exactly() -> None:
    assert same_body(ex(201, '{"a": 1, "b": 2}'), ex(201, '{"b":2,"a":1}'))
    assert not same_body(ex(201, CH1), ex(201, CH2))
    assert same_body(ex(201, "plain"), ex(201, "plain"))
    assert not same_body(ex(201, "plain"), ex(201, '"plain"'))


Row = tuple[Verdict, str]


def check_table(
    rows: list[tuple[Any, Row]], judge: Callable[..., tuple[Verdict, str, str]]
) -> None:
    for args, (verdict, words) in rows:
        got, summary, advice = judge(*args)
        assert (got, words in summary) == (verdict, True), (args, got, summary)
        assert advice.endswith("."), advice


def test_judge_replay() -> None:
    check_table(
        [
            ((ex(201, CH1), ex(201, CH1), 1), (Verdict.PASS, "made one effect")),
            ((ex(201, CH1), ex(201, CH2), 2), (Verdict.FAIL, "created 2 effects")),
            # the effect decides even when the answers agree
            ((ex(201, CH1), ex(201, CH1), 2), (Verdict.FAIL, "created 2 effects")),
            ((ex(201, CH1), ex(201, CH2), 1), (Verdict.FAIL, "a different body, 1 effect")),
            ((ex(201, CH1), ex(409, {"e": 1}), 1), (Verdict.FAIL, "a different status")),
            ((ex(201, CH1), ex(201, CH2), None), (Verdict.FAIL, "was not replayed")),
            ((ex(201, CH1), ex(201, CH1, REPLAYED), None), (Verdict.PASS, "answers only")),
            ((ex(201, CH1), ex(201, CH1), None), (Verdict.INCONCLUSIVE, "only the effect")),
            ((ex(201, CH1), ex(201, CH1), 0), (Verdict.INCONCLUSIVE, "no new effect")),
            ((ex(400, {"e": 1}), ex(400, {"e": 1}), 0), (Verdict.INCONCLUSIVE, "not a 2xx")),
            ((ex(None, error="reset"), ex(201, CH1), 1), (Verdict.INCONCLUSIVE, "reset")),
            ((ex(201, CH1), ex(None, error="timeout"), 1), (Verdict.INCONCLUSIVE, "timeout")),
        ],
        judge_replay,
    )


def test_judge_lost_response() -> None:
    check_table(
        [
            ((CUT, ex(201, CH1), 1), (Verdict.PASS, "there is one effect")),
            ((CUT, ex(201, CH2), 2), (Verdict.FAIL, "executed again: 2 effects")),
            ((CUT, ex(409, {"e": 1}), 1), (Verdict.FAIL, "cannot be learned")),
            ((CUT, ex(500, {"e": 1}), None), (Verdict.FAIL, "got 500")),
            ((CUT, ex(201, CH1, REPLAYED), None), (Verdict.PASS, "answer only")),
            ((CUT, ex(201, CH1), None), (Verdict.INCONCLUSIVE, "only the effect")),
            ((CUT, ex(201, CH1), 0), (Verdict.INCONCLUSIVE, "no new effect")),
            ((CUT, ex(None, error="reset"), 1), (Verdict.INCONCLUSIVE, "reset")),
            # the probe could not cut it: an answer came, a refusal or a success
            ((ex(400, {"e": 1}), ex(400, {"e": 1}), 0), (Verdict.INCONCLUSIVE, "not a 2xx")),
            ((ex(201, CH1), ex(201, CH1), 1), (Verdict.INCONCLUSIVE, "could not cut")),
            # the first request never reached the partner: no answer was lost (p4)
            (
                (ex(None, error="ConnectError: refused"), ex(201, CH1), 1),
                (Verdict.INCONCLUSIVE, "was not cut: it got no answer (ConnectError"),
            ),
            ((ex(None, error="ReadTimeout"), ex(201, CH1), 1), (Verdict.INCONCLUSIVE, "not cut")),
            # the partner answered the cut request 500 and created nothing: the retry is a
            # first execution, whatever the partner does with keys (p4)
            (
                (ex(None, error=CUT_ERROR, cut_status=500), ex(201, CH1), 1),
                (Verdict.INCONCLUSIVE, "answered the first request 500"),
            ),
            (
                (ex(None, error=CUT_ERROR, cut_status=409), ex(201, CH1), 1),
                (Verdict.INCONCLUSIVE, "answered the first request 409"),
            ),
            ((ex(None, error=CUT_ERROR), ex(201, CH1), 1), (Verdict.INCONCLUSIVE, "its status")),
            # a cut 2xx that the retry duplicates is still a failure
            (
                (ex(None, error=CUT_ERROR, cut_status=200), ex(201, CH2), 2),
                (Verdict.FAIL, "executed again"),
            ),
        ],
        judge_lost_response,
    )


TIMEOUT = ex(None, error="ReadTimeout: no answer within 1 s")


def test_judge_concurrent() -> None:
    one_and_409s = [ex(201, CH1)] + [ex(409, {"e": 1})] * 4
    one_and_timeouts = [ex(201, CH1)] + [TIMEOUT] * 4
    one_and_429s = [ex(201, CH1)] + [ex(429, {"e": 1})] * 4
    check_table(
        [
            ((one_and_409s, 1), (Verdict.PASS, "1 x 201, 4 x 409")),
            (([ex(201, CH1)] * 5, 1), (Verdict.PASS, "made one effect")),
            (([ex(201, CH1), ex(201, CH2), *[ex(409, {})] * 3], 2), (Verdict.FAIL, "2 effects")),
            ((one_and_409s, None), (Verdict.PASS, "refused or replayed")),
            (([ex(201, CH1), ex(201, CH1, REPLAYED)], None), (Verdict.PASS, "answers only")),
            (([ex(201, CH1), ex(201, CH2)], None), (Verdict.FAIL, "2 different successful")),
            (([ex(201, CH1), ex(201, CH1)], None), (Verdict.INCONCLUSIVE, "only the effect")),
            (([ex(201, CH1), ex(500, {})], None), (Verdict.INCONCLUSIVE, "only the effect")),
            (([ex(503, {})] * 3, 0), (Verdict.INCONCLUSIVE, "none succeeded")),
            ((one_and_409s, 0), (Verdict.INCONCLUSIVE, "no new effect")),
            # copies without an answer may still be running: not counted yet (p5)
            ((one_and_timeouts, 1), (Verdict.INCONCLUSIVE, "4 got no answer and may still")),
            ((one_and_timeouts, 1), (Verdict.INCONCLUSIVE, "cannot be counted yet (1 so far)")),
            ((one_and_timeouts, None), (Verdict.INCONCLUSIVE, "may still be running")),
            (([ex(201, CH1), *[ex(409, {})] * 3, TIMEOUT], 1), (Verdict.INCONCLUSIVE, "1 got no")),
            # more than one effect is a failure whatever is still running
            ((one_and_timeouts, 2), (Verdict.FAIL, "made 2 effects")),
            # copies refused for another reason never reached the key's handling (p11)
            ((one_and_429s, 1), (Verdict.INCONCLUSIVE, "another reason than the key (rate")),
            ((one_and_429s, None), (Verdict.INCONCLUSIVE, "no duplicate reached")),
            (([ex(201, CH1), ex(401, {}), ex(403, {})], 1), (Verdict.INCONCLUSIVE, "credentials")),
            # ...but those that did reach it still count
            (([ex(201, CH1), ex(409, {}), ex(429, {})], 1), (Verdict.PASS, "made one effect")),
            (([ex(201, CH1), ex(409, {}), ex(429, {})], None), (Verdict.PASS, "refused or")),
            (
                ([ex(201, CH1), ex(201, CH1, REPLAYED), ex(429, {})], None),
                (Verdict.PASS, "answers only"),
            ),
            (
                ([ex(201, CH1), ex(201, CH1), ex(429, {})], None),
                (Verdict.INCONCLUSIVE, "only the effect"),
            ),
        ],
        judge_concurrent,
    )
    _, _, advice = judge_concurrent(one_and_409s, 1)
    assert "the others got 4 x 409" in advice


def test_judge_mismatch() -> None:
    check_table(
        [
            ((ex(201, CH1), ex(422, {"e": 1}), 1, 0), (Verdict.PASS, "refused (422)")),
            ((ex(201, CH1), ex(409, {"e": 1}), 1, None), (Verdict.PASS, "refused (409)")),
            ((ex(201, CH1), ex(422, {"e": 1}), 1, 1), (Verdict.FAIL, "made 1 effect(s) anyway")),
            ((ex(201, CH1), ex(201, CH2), 1, 1), (Verdict.FAIL, "executed as a new request")),
            ((ex(201, CH1), ex(201, CH1, REPLAYED), 1, 0), (Verdict.FAIL, "replayed the first")),
            ((ex(201, CH1), ex(201, CH1), None, None), (Verdict.FAIL, "replayed the first")),
            ((ex(201, CH1), ex(201, CH2), None, None), (Verdict.FAIL, "another answer")),
            ((ex(201, CH1), ex(500, {}), 1, 0), (Verdict.INCONCLUSIVE, "got 500")),
            ((ex(201, CH1), ex(None, error="reset"), 1, 0), (Verdict.INCONCLUSIVE, "reset")),
            ((ex(400, {}), ex(400, {}), 0, 0), (Verdict.INCONCLUSIVE, "not a 2xx")),
            ((ex(201, CH1), ex(400, {"e": 1}), 1, 0), (Verdict.PASS, "refused (400)")),
            ((ex(201, CH1), ex(428, {"e": 1}), 1, 0), (Verdict.PASS, "refused (428)")),
            # a 4xx for another reason than the key says nothing about it (p11)
            ((ex(201, CH1), ex(429, {}), 1, 0), (Verdict.INCONCLUSIVE, "got 429 (rate limited)")),
            ((ex(201, CH1), ex(401, {}), 1, None), (Verdict.INCONCLUSIVE, "401 (credentials")),
            ((ex(201, CH1), ex(403, {}), 1, 0), (Verdict.INCONCLUSIVE, "403 (credentials")),
            ((ex(201, CH1), ex(404, {}), 1, 0), (Verdict.INCONCLUSIVE, "404 (refused for")),
            # ...unless the other body was executed anyway
            ((ex(201, CH1), ex(429, {}), 1, 1), (Verdict.FAIL, "made 1 effect(s) anyway")),
            ((ex(201, CH1), ex(302, {}), 1, 0), (Verdict.INCONCLUSIVE, "got 302")),
        ],
        judge_mismatch,
    )


def test_judge_no_key() -> None:
    check_table(
        [
            ((ex(400, {"e": 1}), 0), (Verdict.PASS, "refused (400)")),
            ((ex(428, {"e": 1}), None), (Verdict.PASS, "refused (428)")),
            ((ex(400, {"e": 1}), 1), (Verdict.FAIL, "yet made 1 effect(s)")),
            ((ex(201, CH1), 1), (Verdict.INCONCLUSIVE, "accepted (201, 1 effect(s))")),
            ((ex(201, CH1), None), (Verdict.INCONCLUSIVE, "accepted (201)")),
            ((ex(502, {}), None), (Verdict.INCONCLUSIVE, "got 502")),
            ((ex(409, {"e": 1}), 0), (Verdict.PASS, "refused (409)")),
            ((ex(422, {"e": 1}), 0), (Verdict.PASS, "refused (422)")),
            # a 4xx for another reason than the key says nothing about it (p11)
            ((ex(429, {}), 0), (Verdict.INCONCLUSIVE, "got 429 (rate limited)")),
            ((ex(401, {}), 0), (Verdict.INCONCLUSIVE, "got 401 (credentials refused)")),
            ((ex(403, {}), None), (Verdict.INCONCLUSIVE, "got 403 (credentials refused)")),
            ((ex(429, {}), 1), (Verdict.FAIL, "refused (429), yet made 1 effect(s)")),
        ],
        judge_no_key,
    )


def test_only_400_409_422_and_428_refuse_for_the_key() -> None:
    assert frozenset({400, 409, 422, 428}) == KEY_REFUSALS
    for status in range(400, 452):
        verdict, _, _ = judge_no_key(ex(status, {}), 0)
        expected = Verdict.PASS if status in KEY_REFUSALS else Verdict.INCONCLUSIVE
        assert verdict is expected, status
        verdict, _, _ = judge_mismatch(ex(201, CH1), ex(status, {}), 1, 0)
        assert verdict is expected, status


def test_judge_key_lifetime_rewords_the_replay() -> None:
    verdict, summary, advice = judge_key_lifetime(ex(201, CH1), ex(201, CH2), 2, seconds=90)
    assert verdict is Verdict.FAIL
    assert summary.startswith("after 90 s, the same key sent twice created 2 effects")
    assert "forgotten within 90 s" in advice
    verdict, summary, advice = judge_key_lifetime(ex(201, CH1), ex(201, CH1), 1, seconds=90)
    assert verdict is Verdict.PASS
    assert "within 90 s" in advice
    verdict, _, _ = judge_key_lifetime(ex(201, CH1), ex(201, CH1), None, seconds=90)
    assert verdict is Verdict.INCONCLUSIVE


# -- the checks, through the fake client, against apps in process -----------------------------


def surefoot_app(clock: ManualClock, **policy: Any) -> Any:
    return IdempotencyMiddleware(
        ledger(hold=0), store=MemoryStore(), policy=IdempotencyPolicy(**policy), clock=clock
    )


async def run(client: FakeProbeClient, check: str, goal: Target) -> Any:
    return await IDEMPOTENCY_CHECKS[check](client, goal, "run1")


async def verdicts(app: Any, goal: Target, checks: list[str]) -> dict[str, Any]:
    client = asgi(app)
    try:
        return {check: await run(client, check, goal) for check in checks}
    finally:
        await client.aclose()


FOUR = ["replay", "lost_response", "concurrent", "mismatch"]


async def test_a_ledger_without_idempotency_fails_the_four_checks() -> None:
    found = await verdicts(ledger(hold=0.01), target(), [*FOUR, "no_key"])
    assert {c: f.verdict for c, f in found.items()} == {
        "replay": Verdict.FAIL,
        "lost_response": Verdict.FAIL,
        "concurrent": Verdict.FAIL,
        "mismatch": Verdict.FAIL,
        "no_key": Verdict.INCONCLUSIVE,
    }
    assert found["replay"].facts["effects"] == 2
    assert found["lost_response"].facts["effects"] == 2
    assert found["concurrent"].facts["effects"] == 5
    assert found["concurrent"].summary.startswith("5 concurrent requests with one key got 5 x 201")
    assert found["mismatch"].facts["other_effects"] == 1
    assert "executed as a new request" in found["mismatch"].summary
    assert found["no_key"].facts["accepted"] is True
    # the evidence: the writes and the effect reads (before, after)
    replay = found["replay"]
    assert [e.method for e in replay.evidence] == ["GET", "POST", "POST", "GET"]
    assert replay.evidence[1].request_body == replay.evidence[2].request_body
    key = dict(replay.evidence[1].request_headers)["Idempotency-Key"]
    assert str(uuid.UUID(key)) == key
    assert dict(replay.evidence[2].request_headers)["Idempotency-Key"] == key
    assert "Idempotency-Key" not in dict(found["no_key"].evidence[1].request_headers)


async def test_surefoot_middleware_passes_and_refuses_a_keyless_write() -> None:
    found = await verdicts(surefoot_app(ManualClock(), required=True), target(), [*FOUR, "no_key"])
    assert {c: f.verdict for c, f in found.items()} == dict.fromkeys(
        [*FOUR, "no_key"], Verdict.PASS
    )
    assert found["mismatch"].facts["statuses"] == [201, 422]
    assert found["no_key"].facts["statuses"] == [400]
    assert found["concurrent"].facts["effects"] == 1
    assert found["lost_response"].facts == {
        "effects": 1,
        "statuses": [None, 201],
        "cut": True,
        "cut_status": 201,
        "replayed_header": True,
        "effect_check": "json:data",
    }


async def test_fik_passes_the_four_checks_in_process() -> None:
    found = await verdicts(fik(ledger(hold=0.01)), target(), FOUR)
    assert {c: f.verdict for c, f in found.items()} == dict.fromkeys(FOUR, Verdict.PASS)
    assert found["mismatch"].facts["statuses"] == [201, 422]


async def test_aih_replays_the_first_answer_for_another_body() -> None:
    found = await verdicts(aih(ledger(hold=0.01)), target(), ["replay", "mismatch"])
    assert found["replay"].verdict is Verdict.PASS
    mismatch = found["mismatch"]
    assert mismatch.verdict is Verdict.FAIL
    assert "replayed the first request's answer, no effect for it" in mismatch.summary
    assert (mismatch.facts["other_effects"], mismatch.facts["same_body"]) == (0, True)


async def test_without_an_effect_check_identical_answers_are_inconclusive() -> None:
    async def constant(scope: Any, receive: Any, send: Any) -> None:
        body = b'{"ok": true}'
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    found = await verdicts(constant, target(effect=None), ["replay", "lost_response"])
    for finding in found.values():
        assert finding.verdict is Verdict.INCONCLUSIVE
        assert "only the effect can tell" in finding.summary
        assert finding.facts["effect_check"] is None
        assert finding.facts["effects"] is None
    # a ledger's answers differ, so they tell without an effect: a failure
    failed = await verdicts(ledger(hold=0), target(effect=None), ["replay"])
    assert failed["replay"].verdict is Verdict.FAIL
    # a replay marked so is believed, and the summary says it was judged from the answers
    fik_found = await verdicts(fik(ledger(hold=0)), target(effect=None), ["replay"])
    assert fik_found["replay"].verdict is Verdict.PASS
    assert "answers only" in fik_found["replay"].summary


async def test_key_lifetime_resends_after_the_wait() -> None:
    clock = ManualClock()
    app = surefoot_app(clock, ttl=120, lease=10)
    client = asgi(app, on_wait=clock.advance)
    try:
        kept = await run(client, "key_lifetime", target(key_lifetime=100))
        forgotten = await run(client, "key_lifetime", target(key_lifetime=121))
        skipped = await run(client, "key_lifetime", target())
    finally:
        await client.aclose()
    assert kept.verdict is Verdict.PASS, kept.summary
    assert forgotten.verdict is Verdict.FAIL, forgotten.summary
    assert forgotten.facts["effects"] == 2
    assert forgotten.summary.startswith("after 121 s,")
    assert skipped.verdict is Verdict.SKIPPED
    assert client.waited == [100, 121]


async def test_a_key_in_flight_is_resent_a_bounded_number_of_times() -> None:
    posts: list[int] = []

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        # one charge, then "in progress" for ever
        if scope["method"] == "GET":
            status, body = 200, json.dumps({"data": posts[:1]}).encode()
        else:
            posts.append(1)
            status, body = (201 if len(posts) == 1 else 409), b'{"id": "ch_1"}'
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    client = asgi(busy)
    try:
        finding = await run(client, "replay", target())
    finally:
        await client.aclose()
    assert finding.verdict is Verdict.FAIL
    assert "answered 201 then 409, with a different status, 1 effect" in finding.summary
    assert len(posts) == 5  # the first, then 1 + 3 re-sends
    assert client.waited == [0.5, 0.5, 0.5]
    assert finding.facts["statuses"] == [201, 409]
    assert [e.status for e in finding.evidence] == [200, 201, 409, 409, 409, 409, 200]


async def test_a_check_refuses_to_start_beyond_the_budget() -> None:
    client = asgi(ledger(hold=0), max_requests=6)
    try:
        with pytest.raises(BudgetExhausted, match="replay needs up to 7 requests, 6 left"):
            await run(client, "replay", target())
        assert client.sent == 0
        assert (await run(client, "no_key", target())).verdict is Verdict.INCONCLUSIVE
    finally:
        await client.aclose()


async def test_checks_that_do_not_apply_are_skipped() -> None:
    client = asgi(ledger(hold=0))
    try:
        for check in IDEMPOTENCY_CHECKS:
            finding = await run(client, check, target(method="GET"))
            assert finding.verdict is Verdict.SKIPPED, check
        fixed = await run(client, "mismatch", target(body='{"amount": 1}'))
        assert fixed.verdict is Verdict.SKIPPED
        assert "{{n}}" in fixed.advice
        assert client.sent == 0
    finally:
        await client.aclose()


async def test_effect_count_renders_the_url_and_reads_the_count() -> None:
    client = asgi(ledger(hold=0))
    try:
        await client.send(
            "POST",
            "/charges",
            body=client.render(BODY, 3),
            headers={"Content-Type": "application/json"},
        )
        assert await effect_count(client, EFFECT, 3) == 1
        assert await effect_count(client, EFFECT, 4) == 0
        assert await effect_count(client, Effect("GET", "/nowhere", "json:data"), 3) is None
    finally:
        await client.aclose()


# -- regressions: a lost answer that was not lost, copies still running, other refusals -----


def counting_partner(first: str) -> tuple[Callable[[httpx.Request], httpx.Response], list[int]]:
    """A partner that never deduplicates: every POST it executes creates a charge, counted by
    ``GET`` (``{"n": N}``). Its first POST ``first``: ``"connect"`` never reaches it, ``"500"``
    fails and creates nothing, ``"normal"`` is executed like the others."""
    created: list[int] = []
    posts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"n": len(created)})
        posts.append(1)
        if len(posts) == 1 and first == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if len(posts) == 1 and first == "500":
            return httpx.Response(500, json={"error": "boom"})
        created.append(1)
        return httpx.Response(201, json={"id": len(created)})

    return handler, created


COUNT = Effect(method="GET", url="http://partner.test/count", count="json:n")


@pytest.mark.parametrize(
    ("first", "verdict", "words"),
    [
        ("connect", Verdict.INCONCLUSIVE, "the first request was not cut"),
        ("500", Verdict.INCONCLUSIVE, "answered the first request 500 before the probe dropped"),
        ("normal", Verdict.FAIL, "executed again: 2 effects"),
    ],
)
async def test_lost_response_passes_no_partner_whose_first_request_did_nothing(
    first: str, verdict: Verdict, words: str
) -> None:
    """p4: through the probe's own client, a partner that does not deduplicate is never
    passed because its first request never arrived or failed (one effect, from the retry)."""
    handler, created = counting_partner(first)
    client = HttpProbeClient(
        hosts=["partner.test:80"],
        max_requests=20,
        max_duration=60,
        transport=httpx.MockTransport(handler),
    )
    goal = target(url="http://partner.test/charges", effect=COUNT)
    async with client:
        finding = await IDEMPOTENCY_CHECKS["lost_response"](client, goal, "run1")
    assert (finding.verdict, words in finding.summary) == (verdict, True), finding.summary
    cut = first != "connect"
    assert (finding.facts["cut"], finding.facts["cut_status"]) == (
        cut,
        {"connect": None, "500": 500, "normal": 201}[first],
    )
    assert finding.facts["effects"] == len(created) == (2 if first == "normal" else 1)


async def test_concurrent_does_not_count_effects_while_copies_are_unanswered() -> None:
    """p5: duplicates the partner queues past the probe's read timeout run after the count;
    one effect counted so far is no pass."""
    created: list[str] = []
    queued: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"n": len(created)})
        if not created:
            created.append("first")
            return httpx.Response(201, json={"id": 1})
        queued.append("duplicate")  # executed once the first releases the key: too late
        raise httpx.ReadTimeout("timed out", request=request)

    client = FakeProbeClient(httpx.MockTransport(handler))
    try:
        goal = target(url="/charges", effect=Effect("GET", "/count", "json:n"))
        finding = await run(client, "concurrent", goal)
    finally:
        await client.aclose()
    assert finding.verdict is Verdict.INCONCLUSIVE, finding.summary
    assert "4 got no answer and may still be running" in finding.summary
    assert finding.facts["effects"] == 1
    assert finding.facts["statuses"] == [201, None, None, None, None]
    assert len(queued) == 4


@pytest.mark.parametrize("status", [401, 403, 429])
async def test_a_refusal_for_another_reason_is_no_refusal_for_the_key(status: int) -> None:
    """p11: a partner that refuses every keyless write with 429/401/403, and every copy but the
    first, is not said to require or deduplicate keys."""
    created: list[str] = []  # the customer of each charge

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            customer = request.url.params["customer"]
            return httpx.Response(200, json={"data": [c for c in created if c == customer]})
        if created or "Idempotency-Key" not in request.headers:
            return httpx.Response(status, json={"error": "no"})
        created.append(json.loads(request.content)["customer"])
        return httpx.Response(201, json={"id": 1})

    found = {}
    for check in ("no_key", "concurrent", "mismatch"):
        created.clear()
        client = FakeProbeClient(httpx.MockTransport(handler))
        try:
            found[check] = await run(client, check, target(effect=EFFECT))
        finally:
            await client.aclose()
    assert {c: f.verdict for c, f in found.items()} == dict.fromkeys(found, Verdict.INCONCLUSIVE)
    assert f"got {status} (" in found["no_key"].summary
    assert "for another reason than the key" in found["concurrent"].summary
    assert f"got {status} (" in found["mismatch"].summary
