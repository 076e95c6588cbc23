"""The retry flow, driven by hand: every decision as a table row, plus properties."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.client import (
    AttemptFailed,
    RetriesExhausted,
    RetryBudget,
    RetryPolicy,
    RetryScheduled,
    RetrySucceeded,
)
from surefoot.client._flow import (
    FINAL_PROBLEM_CODES,
    Attempt,
    ErrorKind,
    Raised,
    Reply,
    Sleep,
    Target,
    Woke,
    problem_code,
    retry_flow,
    wants_body,
)
from surefoot.errors import CircuitOpen, SurefootError, UpstreamTimeout, UpstreamUnavailable
from surefoot.events import Event

START = 1_700_000_000.0
GET = Target("GET", "api.example", "/v1/things", "req-1")
POST = Target("POST", "api.example", "/v1/charges", "req-2")
POST_KEYED = Target("POST", "api.example", "/v1/charges", "req-3", keyed=True)
GET_STREAM = Target("GET", "api.example", "/v1/things", "req-4", replayable=False)


@dataclass
class Run:
    """What one flow did: its steps, its result or error, and its events."""

    steps: list[Attempt | Sleep] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return sum(isinstance(s, Attempt) for s in self.steps)

    @property
    def sleeps(self) -> list[float]:
        return [s.seconds for s in self.steps if isinstance(s, Sleep)]

    @property
    def event_names(self) -> list[str]:
        return [e.name for e in self.events]


# An outcome script entry: a status, (status, retry_after, code), or an ErrorKind.
Script = Sequence[int | tuple[int, str | None, str | None] | ErrorKind]


def drive(
    policy: RetryPolicy,
    target: Target,
    script: Script,
    *,
    took: float = 0.0,
    overslept: float = 0.0,
    seed: int = 7,
    **kwargs: Any,
) -> Run:
    """Answer each Attempt from ``script`` (each taking ``took`` s) and each Sleep at once."""
    run = Run()
    now = START
    outcomes = list(script)
    flow = retry_flow(
        policy,
        target,
        now=now,
        rng=random.Random(seed),
        hooks=[run.events.append],
        **kwargs,
    )
    try:
        step = next(flow)
        while True:
            run.steps.append(step)
            if isinstance(step, Sleep):
                now += step.seconds + overslept
                step = flow.send(Woke(now))
                continue
            now += took
            item = outcomes.pop(0)
            if isinstance(item, ErrorKind):
                step = flow.send(Raised(OSError(item.value), item, now))
            elif isinstance(item, int):
                step = flow.send(Reply(f"response {len(run.steps)}", item, now))
            else:
                status, retry_after, code = item
                step = flow.send(
                    Reply(f"response {len(run.steps)}", status, now, retry_after, code)
                )
    except StopIteration as done:
        run.result = done.value
    except SurefootError as exc:
        run.error = exc
    return run


P = RetryPolicy()
IN_PROGRESS = (409, "1", "idempotency_request_in_progress")
UNKNOWN = (409, None, "idempotency_outcome_unknown")

# (id, policy, target, script, attempts, result status or error type, last event)
TABLE: list[tuple[str, RetryPolicy, Target, Script, int, str | type[Exception], str]] = [
    ("ok at once", P, GET, [200], 1, "response 1", ""),
    ("503 then ok", P, GET, [503, 200], 2, "response 3", "client.retry_succeeded"),
    ("503 x3 returns the last", P, GET, [503, 503, 503], 3, "response 5", "retries_exhausted"),
    (
        "503 x3 raises when asked",
        RetryPolicy(raise_on_exhausted=True),
        GET,
        [503, 503, 503],
        3,
        UpstreamUnavailable,
        "retries_exhausted",
    ),
    ("404 is an answer", P, GET, [404], 1, "response 1", ""),
    ("422 is an answer", P, POST_KEYED, [422], 1, "response 1", ""),
    ("POST 503 no key: once", P, POST, [503, 200], 1, "response 1", "retries_exhausted"),
    ("POST 503 keyed: retried", P, POST_KEYED, [503, 201], 2, "response 3", "retry_succeeded"),
    ("POST connect failed: retried", P, POST, [ErrorKind.CONNECT_FAILED, 201], 2, "response 3", ""),
    (
        "POST connect timeout: retried",
        P,
        POST,
        [ErrorKind.CONNECT_TIMEOUT, 201],
        2,
        "response 3",
        "",
    ),
    ("POST read timeout no key", P, POST, [ErrorKind.RESPONSE_TIMEOUT], 1, UpstreamTimeout, ""),
    ("POST lost no key", P, POST, [ErrorKind.CONNECTION_LOST], 1, UpstreamUnavailable, ""),
    (
        "POST read timeout keyed: retried",
        P,
        POST_KEYED,
        [ErrorKind.RESPONSE_TIMEOUT, 201],
        2,
        "response 3",
        "",
    ),
    ("GET lost: retried", P, GET, [ErrorKind.CONNECTION_LOST, 200], 2, "response 3", ""),
    (
        "GET connect failed x3",
        P,
        GET,
        [ErrorKind.CONNECT_FAILED] * 3,
        3,
        UpstreamUnavailable,
        "",
    ),
    ("GET timeouts x3", P, GET, [ErrorKind.RESPONSE_TIMEOUT] * 3, 3, UpstreamTimeout, ""),
    ("409 in progress: retried", P, POST_KEYED, [IN_PROGRESS, 201], 2, "response 3", ""),
    ("409 unknown: retried", P, POST_KEYED, [UNKNOWN, 201], 2, "response 3", ""),
    ("409 in progress, no key", P, POST, [IN_PROGRESS], 1, "response 1", ""),
    ("409 other: answer", P, POST_KEYED, [(409, None, "conflict")], 1, "response 1", ""),
    (
        "409 not stored: answer",
        P,
        POST_KEYED,
        [(409, None, "idempotency_response_not_stored")],
        1,
        "response 1",
        "",
    ),
    ("500 final problem", P, GET, [(500, None, "configuration_error")], 1, "response 1", ""),
    (
        "503 other problem: retried",
        P,
        GET,
        [(503, None, "store_unavailable"), 200],
        2,
        "response 3",
        "",
    ),
    ("stream body: not resent", P, GET_STREAM, [503], 1, "response 1", ""),
    (
        "stream body, lost",
        P,
        GET_STREAM,
        [ErrorKind.CONNECTION_LOST],
        1,
        UpstreamUnavailable,
        "",
    ),
    ("max_attempts=1", RetryPolicy(max_attempts=1), GET, [503], 1, "response 1", ""),
    (
        "custom statuses",
        RetryPolicy(retry_statuses={418}),
        GET,
        [418, 503],
        2,
        "response 3",
        "",
    ),
    (
        "custom idempotent methods",
        RetryPolicy(idempotent_methods={"post"}),
        POST,
        [503, 200],
        2,
        "response 3",
        "",
    ),
]


@pytest.mark.parametrize(
    ("policy", "target", "script", "attempts", "expected", "last_event"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_flow_table(
    policy: RetryPolicy,
    target: Target,
    script: Script,
    attempts: int,
    expected: str | type[Exception],
    last_event: str,
) -> None:
    run = drive(policy, target, script)
    assert run.attempts == attempts
    if isinstance(expected, str):
        assert run.error is None
        assert run.result == expected
    else:
        assert type(run.error) is expected
        assert run.error.attempts == attempts  # type: ignore[union-attr]
    if last_event:
        assert run.event_names[-1].endswith(last_event)
    failed = [e for e in run.events if isinstance(e, AttemptFailed)]
    scheduled = [e for e in run.events if isinstance(e, RetryScheduled)]
    assert len(scheduled) == attempts - 1
    assert [e.attempt for e in failed] == list(range(1, len(failed) + 1))


def test_final_error_lists_every_attempt_and_why_it_stopped() -> None:
    run = drive(P, GET, [503, ErrorKind.CONNECT_FAILED, ErrorKind.CONNECTION_LOST])
    error = run.error
    assert isinstance(error, UpstreamUnavailable)
    assert error.fields["reason"] == (
        "3 attempts failed (503, OSError, OSError); max_attempts=3 reached"
    )
    assert error.detail.endswith("Retrying later may help.")
    assert error.attempts == 3  # type: ignore[attr-defined]
    assert error.failures == ("503", "OSError", "OSError")  # type: ignore[attr-defined]
    assert error.stopped == "max_attempts"  # type: ignore[attr-defined]
    assert error.response is None  # type: ignore[attr-defined]
    assert isinstance(error.__cause__, OSError)
    assert "advice" not in error.extensions  # advice is text only, never a problem member
    exhausted = run.events[-1]
    assert isinstance(exhausted, RetriesExhausted)
    assert exhausted.stopped == "max_attempts"
    assert exhausted.raised == "upstream_unavailable"
    assert exhausted.reason == error.fields["reason"]


def test_exhausted_on_status_keeps_the_last_response_on_the_error() -> None:
    run = drive(RetryPolicy(max_attempts=2, raise_on_exhausted=True), GET, [502, 503])
    assert isinstance(run.error, UpstreamUnavailable)
    assert run.error.response == "response 3"  # type: ignore[attr-defined]
    assert run.error.__cause__ is None
    assert "2 attempts failed (502, 503)" in run.error.detail


def test_unsafe_post_says_why_it_was_not_retried() -> None:
    run = drive(P, POST, [ErrorKind.RESPONSE_TIMEOUT])
    assert isinstance(run.error, UpstreamTimeout)
    assert run.error.fields["reason"] == (
        "1 attempt failed (OSError); POST without an idempotency key is not safe to retry once sent"
    )
    assert "Idempotency-Key" in run.error.detail
    assert run.events[-1].stopped == "not_safe"  # type: ignore[attr-defined]


def test_final_problem_names_its_code() -> None:
    run = drive(RetryPolicy(raise_on_exhausted=True), GET, [(500, None, "configuration_error")])
    assert isinstance(run.error, UpstreamUnavailable)
    assert "(configuration_error)" in run.error.fields["reason"]
    assert run.error.detail.endswith("Retrying the same request will not help.")


def test_stream_body_says_why() -> None:
    run = drive(P, GET_STREAM, [ErrorKind.CONNECT_FAILED])
    assert run.error is not None
    assert "cannot be sent again" in str(run.error)


def test_retry_after_longer_than_the_deadline_fails_at_once() -> None:
    run = drive(RetryPolicy(deadline=30.0), GET, [(503, "3600", None)])
    assert run.attempts == 1
    assert run.sleeps == []
    assert isinstance(run.error, UpstreamTimeout)
    assert run.error.fields["reason"] == (
        "1 attempt failed (503); the upstream asked to wait 3600 s, past the 30 s deadline "
        "(30 s left); failed now instead of waiting"
    )
    assert run.error.response == "response 1"  # type: ignore[attr-defined]
    assert run.error.stopped == "deadline"  # type: ignore[attr-defined]


def test_backoff_past_the_deadline_fails_at_once() -> None:
    policy = RetryPolicy(deadline=1.0, backoff_base=5.0, jitter="none")
    run = drive(policy, GET, [503])
    assert isinstance(run.error, UpstreamTimeout)
    assert "backoff is 5 s, past the 1 s deadline" in run.error.fields["reason"]


def test_retry_after_is_honoured_when_longer_than_backoff() -> None:
    run = drive(RetryPolicy(jitter="none"), GET, [(429, "2", None), 200])
    assert run.sleeps == [2.0]
    scheduled = [e for e in run.events if isinstance(e, RetryScheduled)]
    assert scheduled[0].retry_after == 2.0
    assert run.result == "response 3"


def test_retry_after_as_http_date() -> None:
    # START is 2023-11-14T22:13:20Z; the server asks for ten seconds later.
    run = drive(
        RetryPolicy(jitter="none"), GET, [(503, "Tue, 14 Nov 2023 22:13:30 GMT", None), 200]
    )
    assert run.sleeps == [10.0]


def test_malformed_retry_after_falls_back_to_backoff() -> None:
    run = drive(RetryPolicy(jitter="none"), GET, [(503, "soon", None), 200])
    assert run.sleeps == [0.5]


def test_backoff_shorter_than_retry_after_is_not_used() -> None:
    run = drive(RetryPolicy(jitter="none", backoff_base=4), GET, [(503, "1", None), 200])
    assert run.sleeps == [4.0]


def test_retry_after_above_max_retry_after_is_not_waited_for() -> None:
    policy = RetryPolicy(deadline=None, max_retry_after=10)
    run = drive(policy, GET, [(503, "20", None)])
    assert run.attempts == 1
    assert run.result == "response 1"
    assert run.events[-1].stopped == "retry_after_too_long"  # type: ignore[attr-defined]
    assert "max_retry_after=10 s" in run.events[-1].reason  # type: ignore[attr-defined]


def test_deadline_passed_during_an_attempt() -> None:
    run = drive(RetryPolicy(deadline=10.0), GET, [503], took=11.0)
    assert isinstance(run.error, UpstreamTimeout)
    assert run.error.fields["reason"].endswith("the 10 s deadline passed")


def test_deadline_passed_while_sleeping() -> None:
    policy = RetryPolicy(deadline=10.0, backoff_base=1, jitter="none")
    run = drive(policy, GET, [503, 200], overslept=20.0)
    assert run.attempts == 1
    assert isinstance(run.error, UpstreamTimeout)
    assert "passed while waiting" in str(run.error)


def test_attempt_timeout_is_capped_by_what_is_left_of_the_deadline() -> None:
    policy = RetryPolicy(deadline=10.0, attempt_timeout=4.0, backoff_base=0, backoff_max=0)
    run = drive(policy, GET, [503, 503, 200], took=3.0)
    assert [s.timeout for s in run.steps if isinstance(s, Attempt)] == [4.0, 4.0, 4.0]
    run = drive(policy, GET, [503, 503, 200], took=4.0)
    assert [s.timeout for s in run.steps if isinstance(s, Attempt)] == [4.0, 4.0, 2.0]
    run = drive(RetryPolicy(deadline=None), GET, [200])
    assert run.steps == [Attempt(1, None)]
    run = drive(RetryPolicy(deadline=5.0), GET, [200])
    assert run.steps == [Attempt(1, 5.0)]


def test_zero_backoff_retries_without_a_sleep_step() -> None:
    run = drive(RetryPolicy(backoff_base=0, backoff_max=0), GET, [503, 503, 200])
    assert run.sleeps == []
    assert run.attempts == 3


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    policy = RetryPolicy(max_attempts=6, deadline=None, jitter="decorrelated", backoff_max=100)
    run = drive(policy, GET, [503] * 6)
    previous = policy.backoff_base
    for delay in run.sleeps:
        assert policy.backoff_base <= delay <= 3 * previous
        previous = delay


def test_budget_is_counted_and_can_refuse() -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=10)  # 1 retry
    first = drive(P, GET, [503, 503, 503], budget=budget)
    assert first.attempts == 2
    assert first.events[-1].stopped == "budget"  # type: ignore[attr-defined]
    assert first.result == "response 3"
    second = drive(P, GET, [503, 200], budget=budget)
    assert second.attempts == 1


class FakeBreaker:
    """Records the calls of the flow; opens on demand."""

    def __init__(self, open_after: int | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.open_after = open_after
        self.acquired = 0

    def acquire(self) -> object:
        if self.open_after is not None and self.acquired >= self.open_after:
            raise CircuitOpen(integration="api.example", retry_after=30)
        self.acquired += 1
        self.calls.append(("acquire", self.acquired))
        return self.acquired

    def on_result(
        self,
        permit: object,
        *,
        failed: bool,
        duration: float,
        status: int | None,
        error: BaseException | None,
    ) -> None:
        self.calls.append(("result", permit, failed, duration, status, type(error).__name__))

    def release(self, permit: object) -> None:
        self.calls.append(("release", permit))


def test_breaker_sees_every_attempt_with_its_verdict() -> None:
    breaker = FakeBreaker()
    script: Script = [503, ErrorKind.CONNECT_FAILED, IN_PROGRESS, 404]
    run = drive(RetryPolicy(max_attempts=4), POST_KEYED, script, breaker=breaker, took=0.25)
    assert run.result == "response 7"
    assert breaker.calls == [
        ("acquire", 1),
        ("result", 1, True, 0.25, 503, "NoneType"),
        ("acquire", 2),
        ("result", 2, True, 0.25, None, "OSError"),
        ("acquire", 3),
        ("result", 3, False, 0.25, 409, "NoneType"),
        ("acquire", 4),
        ("result", 4, False, 0.25, 404, "NoneType"),
    ]


def test_open_breaker_stops_before_any_attempt() -> None:
    run = drive(P, GET, [], breaker=FakeBreaker(open_after=0))
    assert run.attempts == 0
    assert isinstance(run.error, CircuitOpen)
    assert run.events == []


def test_breaker_opening_between_attempts_ends_the_flow() -> None:
    run = drive(P, GET, [503], breaker=FakeBreaker(open_after=1))
    assert run.attempts == 1
    assert isinstance(run.error, CircuitOpen)
    exhausted = run.events[-1]
    assert isinstance(exhausted, RetriesExhausted)
    assert (exhausted.stopped, exhausted.raised) == ("circuit_open", "circuit_open")


@pytest.mark.parametrize("how", ["throw", "close"])
def test_abandoned_attempt_releases_the_permit(how: str) -> None:
    breaker = FakeBreaker()
    flow = retry_flow(P, GET, now=START, rng=random.Random(1), breaker=breaker)
    assert next(flow) == Attempt(1, 30.0)
    if how == "throw":
        with pytest.raises(KeyboardInterrupt):
            flow.throw(KeyboardInterrupt())
    else:
        flow.close()
    assert breaker.calls == [("acquire", 1), ("release", 1)]


def test_abandoned_attempt_without_breaker_propagates() -> None:
    flow = retry_flow(P, GET, now=START, rng=random.Random(1))
    next(flow)
    with pytest.raises(ValueError, match="bug"):
        flow.throw(ValueError("bug"))


def test_events_are_not_built_when_no_hook_wants_them() -> None:
    class Picky:
        def __init__(self) -> None:
            self.seen: list[Event] = []

        def wants(self, event_type: type[Event]) -> bool:
            return event_type is RetrySucceeded

        def __call__(self, event: Event) -> None:
            self.seen.append(event)

    picky = Picky()
    flow = retry_flow(P, GET, now=START, rng=random.Random(1), hooks=[picky])
    next(flow)
    step = flow.send(Reply("r1", 503, START))
    assert isinstance(step, Sleep)
    flow.send(Woke(START + step.seconds))
    with pytest.raises(StopIteration):
        flow.send(Reply("r2", 200, START + 1))
    assert [e.name for e in picky.seen] == ["client.retry_succeeded"]
    # And no hooks at all: nothing to build, nothing fails.
    assert drive(P, GET, [503, 200]).result == "response 3"


def test_event_fields() -> None:
    run = drive(RetryPolicy(jitter="none"), POST_KEYED, [(503, None, None), 201], took=0.5)
    failed, scheduled, succeeded = run.events
    assert failed == AttemptFailed(
        at=START + 0.5,
        request_id="req-3",
        method="POST",
        host="api.example",
        path="/v1/charges",
        attempt=1,
        reason="503",
        status=503,
        error=None,
        duration=0.5,
    )
    assert isinstance(scheduled, RetryScheduled)
    assert (scheduled.attempt, scheduled.delay, scheduled.retry_after) == (1, 0.5, None)
    assert isinstance(succeeded, RetrySucceeded)
    assert (succeeded.attempt, succeeded.status) == (2, 201)


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("application/problem+json", b'{"code": "x"}', "x"),
        ("Application/Problem+JSON; charset=utf-8", b'{"code": "x"}', "x"),
        ("application/json", b'{"code": "x"}', None),
        (None, b'{"code": "x"}', None),
        ("application/problem+json", b"not json", None),
        ("application/problem+json", b"\xff\xfe\x00", None),
        ("application/problem+json", b'["code"]', None),
        ("application/problem+json", b'{"code": 7}', None),
        ("application/problem+json", b'{"code": "x", "pad": "' + b"a" * 70_000 + b'"}', None),
    ],
)
def test_problem_code(content_type: str | None, body: bytes, code: str | None) -> None:
    assert problem_code(content_type, body) == code


def test_wants_body_only_for_what_may_be_retried() -> None:
    assert [s for s in (200, 201, 404, 409, 422, 429, 500, 503) if wants_body(P, s)] == [
        409,
        429,
        500,
        503,
    ]


def test_final_codes_come_from_the_catalogue() -> None:
    assert "configuration_error" in FINAL_PROBLEM_CODES
    assert "idempotency_key_reused" in FINAL_PROBLEM_CODES
    assert "idempotency_request_in_progress" not in FINAL_PROBLEM_CODES
    assert "store_unavailable" not in FINAL_PROBLEM_CODES


# -- properties against a reference model --------------------------------------------------

outcome_st = st.one_of(
    st.sampled_from([200, 201, 404, 409, 422, 429, 500, 502, 503, 504]),
    st.tuples(
        st.sampled_from([409, 429, 503]),
        st.one_of(st.none(), st.integers(0, 120).map(str)),
        st.sampled_from([None, "idempotency_request_in_progress", "configuration_error"]),
    ),
    st.sampled_from(list(ErrorKind)),
)


def _is_failure(policy: RetryPolicy, item: Any) -> bool:
    if isinstance(item, ErrorKind):
        return True
    status, _, code = item if isinstance(item, tuple) else (item, None, None)
    return code in policy.retry_problem_codes or status in policy.retry_statuses


def _may_resend(policy: RetryPolicy, target: Target, item: Any) -> bool:
    safe = target.keyed or target.method in policy.idempotent_methods
    if isinstance(item, ErrorKind):
        return safe or not item.may_have_reached
    code = item[2] if isinstance(item, tuple) else None
    return safe and code not in FINAL_PROBLEM_CODES


@settings(max_examples=300, deadline=None)
@given(
    script=st.lists(outcome_st, min_size=8, max_size=8),
    target=st.sampled_from([GET, POST, POST_KEYED]),
    max_attempts=st.integers(1, 6),
    deadline=st.one_of(st.none(), st.floats(1, 100)),
    jitter=st.sampled_from(["full", "equal", "decorrelated", "none"]),
    took=st.floats(0, 5),
    seed=st.integers(0, 2**32),
)
def test_flow_properties(
    script: list[Any],
    target: Target,
    max_attempts: int,
    deadline: float | None,
    jitter: Any,
    took: float,
    seed: int,
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, deadline=deadline, jitter=jitter)
    run = drive(policy, target, script, took=took, seed=seed)
    n = run.attempts
    # Never more than max_attempts; never a step after the answer.
    assert 1 <= n <= max_attempts
    # Every attempt but the last was a failure that was safe to send again.
    for item in script[: n - 1]:
        assert _is_failure(policy, item)
        assert _may_resend(policy, target, item)
    last = script[n - 1]
    if not _is_failure(policy, last):
        assert run.error is None
        assert run.result == f"response {len(run.steps)}"
    # Waits stay within the policy, and never start one that ends past the deadline.
    for wait in run.sleeps:
        assert 0 < wait <= max(policy.backoff_max, policy.max_retry_after)
    if deadline is not None:
        assert sum(run.sleeps) + took * (n - 1) < deadline
    # Transport errors never end in a returned response.
    if isinstance(last, ErrorKind):
        assert isinstance(run.error, UpstreamTimeout | UpstreamUnavailable)
    # Events: one AttemptFailed per failure, one RetryScheduled per retry.
    assert run.event_names.count("client.retry_scheduled") == n - 1
