"""surefoot.outbox._core: the delivery state machine's pure decisions.

Table-driven over the module docstring's Rules (``judge``: Rules 3 and 4; ``RetrySchedule``:
Rule 6; the name, event type, pattern and URL checks), then Hypothesis against a small
reference model of the schedule and of ``judge``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _support import T0
from surefoot.errors import ConfigurationError
from surefoot.outbox._core import (
    DEFAULT_SCHEDULE,
    MAX_RETRY_AFTER,
    DeliveryState,
    Judgement,
    Result,
    RetrySchedule,
    check_url,
    is_event_type,
    is_name,
    judge,
    matches,
    parse_since,
)

PENDING, FAILED, DELIVERED = DeliveryState.PENDING, DeliveryState.FAILED, DeliveryState.DELIVERED
#: Four attempts: at once, then 10 s, 60 s and 300 s after each failure; no jitter, so
#: every due time in the tables is exact.
SCHEDULE = RetrySchedule((0, 10, 60, 300), jitter=0.0)
HOUR = 3600.0


# --- judge: Rules 3 and 4 ------------------------------------------------------------------


def _judge(
    result: Result,
    *,
    attempts: int = 1,
    failing_since: float | None = None,
    disable_after: float = HOUR,
) -> Judgement:
    return judge(
        result,
        attempts=attempts,
        now=T0,
        schedule=SCHEDULE,
        rnd=0.5,
        failing_since=failing_since,
        disable_after=disable_after,
    )


JUDGE_CASES = [
    # Rule 3: only 2xx delivers; a success clears failing_since (Rule 4).
    pytest.param(Result(200), {}, Judgement(DELIVERED, None, None), id="200"),
    pytest.param(Result(204), {}, Judgement(DELIVERED, None, None), id="204"),
    pytest.param(Result(299), {}, Judgement(DELIVERED, None, None), id="299"),
    pytest.param(
        Result(200),
        {"failing_since": T0 - 2 * HOUR},
        Judgement(DELIVERED, None, None),
        id="2xx-clears-failing-since",
    ),
    # Rule 3: 410 fails the delivery at once and disables the endpoint as gone.
    pytest.param(Result(410), {}, Judgement(FAILED, None, T0, disable="gone"), id="410"),
    pytest.param(
        Result(410),
        {"failing_since": T0 - 60},
        Judgement(FAILED, None, T0 - 60, disable="gone"),
        id="410-keeps-failing-since",
    ),
    pytest.param(
        Result(410),
        {"attempts": 1, "failing_since": T0 - 2 * HOUR},
        Judgement(FAILED, None, T0 - 2 * HOUR, disable="gone"),
        id="410-gone-wins-over-failing",
    ),
    # Rule 3: 3xx, other 4xx, 5xx, timeouts and connection errors follow the schedule.
    pytest.param(Result(199), {}, Judgement(PENDING, T0 + 10, T0), id="1xx"),
    pytest.param(Result(300), {}, Judgement(PENDING, T0 + 10, T0), id="300"),
    pytest.param(Result(301), {}, Judgement(PENDING, T0 + 10, T0), id="301"),
    pytest.param(Result(400), {}, Judgement(PENDING, T0 + 10, T0), id="400"),
    pytest.param(Result(404), {}, Judgement(PENDING, T0 + 10, T0), id="404"),
    pytest.param(Result(500), {}, Judgement(PENDING, T0 + 10, T0), id="500"),
    pytest.param(Result(502), {"attempts": 2}, Judgement(PENDING, T0 + 60, T0), id="502-2nd"),
    pytest.param(
        Result(None, "timed out after 15 s"), {}, Judgement(PENDING, T0 + 10, T0), id="timeout"
    ),
    pytest.param(
        Result(None, "connection refused"),
        {"attempts": 3},
        Judgement(PENDING, T0 + 300, T0),
        id="connection-error-last-delay",
    ),
    # Rule 3: 429 and 503 with Retry-After pause the endpoint; the retry is no sooner.
    pytest.param(
        Result(429, retry_after=30),
        {},
        Judgement(PENDING, T0 + 30, T0, T0 + 30),
        id="429-retry-after-longer-than-delay",
    ),
    pytest.param(
        Result(429, retry_after=4),
        {},
        Judgement(PENDING, T0 + 10, T0, T0 + 4),
        id="429-retry-after-shorter-than-delay",
    ),
    pytest.param(
        Result(503, retry_after=120),
        {},
        Judgement(PENDING, T0 + 120, T0, T0 + 120),
        id="503-retry-after",
    ),
    pytest.param(
        Result(503, retry_after=0),
        {},
        Judgement(PENDING, T0 + 10, T0, T0),
        id="503-retry-after-zero",
    ),
    pytest.param(
        Result(429, retry_after=-5),
        {},
        Judgement(PENDING, T0 + 10, T0, T0),
        id="429-negative-retry-after-is-zero",
    ),
    pytest.param(Result(429), {}, Judgement(PENDING, T0 + 10, T0), id="429-no-retry-after"),
    pytest.param(Result(503), {}, Judgement(PENDING, T0 + 10, T0), id="503-no-retry-after"),
    pytest.param(
        Result(500, retry_after=600),
        {},
        Judgement(PENDING, T0 + 10, T0),
        id="500-retry-after-ignored",
    ),
    pytest.param(
        Result(301, retry_after=600),
        {},
        Judgement(PENDING, T0 + 10, T0),
        id="3xx-retry-after-ignored",
    ),
    pytest.param(
        Result(429, retry_after=30 * 86400),
        {},
        Judgement(PENDING, T0 + MAX_RETRY_AFTER, T0, T0 + MAX_RETRY_AFTER),
        id="429-retry-after-capped",
    ),
    pytest.param(
        Result(503, retry_after=math.inf),
        {},
        Judgement(PENDING, T0 + MAX_RETRY_AFTER, T0, T0 + MAX_RETRY_AFTER),
        id="503-infinite-retry-after-capped",
    ),
    # The schedule's last attempt failed: the delivery fails.
    pytest.param(Result(500), {"attempts": 4}, Judgement(FAILED, None, T0), id="exhausted"),
    pytest.param(
        Result(None, "timed out after 15 s"),
        {"attempts": 5},
        Judgement(FAILED, None, T0),
        id="exhausted-timeout",
    ),
    pytest.param(
        Result(429, retry_after=30),
        {"attempts": 4},
        Judgement(FAILED, None, T0, T0 + 30),
        id="exhausted-still-pauses",
    ),
    pytest.param(
        Result(503, retry_after=30 * 86400),
        {"attempts": 4},
        Judgement(FAILED, None, T0, T0 + MAX_RETRY_AFTER),
        id="exhausted-pause-capped",
    ),
    # Rule 4: failing_since is set by the first failure and kept by the next ones.
    pytest.param(
        Result(500),
        {"failing_since": T0 - 60},
        Judgement(PENDING, T0 + 10, T0 - 60),
        id="failing-since-kept",
    ),
    pytest.param(
        Result(500),
        {"failing_since": T0 - HOUR + 1},
        Judgement(PENDING, T0 + 10, T0 - HOUR + 1),
        id="failing-just-under-disable-after",
    ),
    pytest.param(
        Result(500),
        {"failing_since": T0 - HOUR},
        Judgement(PENDING, T0 + 10, T0 - HOUR, disable="failing"),
        id="failing-reaches-disable-after",
    ),
    pytest.param(
        Result(None, "connection refused"),
        {"failing_since": T0 - 5 * HOUR},
        Judgement(PENDING, T0 + 10, T0 - 5 * HOUR, disable="failing"),
        id="failing-past-disable-after",
    ),
    pytest.param(
        Result(500),
        {"disable_after": 0.0},
        Judgement(PENDING, T0 + 10, T0, disable="failing"),
        id="disable-after-zero-disables-on-first-failure",
    ),
    pytest.param(
        Result(500),
        {"attempts": 4, "failing_since": T0 - HOUR},
        Judgement(FAILED, None, T0 - HOUR, disable="failing"),
        id="exhausted-and-failing",
    ),
    pytest.param(
        Result(429, retry_after=30),
        {"failing_since": T0 - HOUR},
        Judgement(PENDING, T0 + 30, T0 - HOUR, T0 + 30, "failing"),
        id="paused-and-failing",
    ),
]


@pytest.mark.parametrize(("result", "given_", "expected"), JUDGE_CASES)
def test_judge(result: Result, given_: dict[str, float], expected: Judgement) -> None:
    assert _judge(result, **given_) == expected  # type: ignore[arg-type]


def test_judge_applies_the_jitter_draw() -> None:
    schedule = RetrySchedule((0, 100), jitter=0.5)

    def next_at(rnd: float) -> float | None:
        return judge(
            Result(500),
            attempts=1,
            now=T0,
            schedule=schedule,
            rnd=rnd,
            failing_since=None,
            disable_after=HOUR,
        ).next_at

    assert (next_at(0.0), next_at(0.5), next_at(0.75)) == (T0 + 50, T0 + 100, T0 + 125)


@pytest.mark.parametrize(
    ("status", "delivered"),
    [
        *[(None, False), (100, False), (199, False), (200, True), (250, True), (299, True)],
        *[(300, False), (410, False), (429, False), (500, False), (599, False)],
    ],
)
def test_result_delivered_is_2xx_only(status: int | None, delivered: bool) -> None:
    assert Result(status).delivered is delivered


# --- RetrySchedule: Rule 6 -----------------------------------------------------------------


def test_default_schedule_is_the_standard_webhooks_example() -> None:
    schedule = RetrySchedule()

    assert schedule.delays == DEFAULT_SCHEDULE
    assert schedule.jitter == 0.1
    assert schedule.span == 75 * HOUR + 35 * 60 + 5  # the spec's 75 h 35 min 5 s
    assert schedule.delay(0, 0.5) == 0.0
    assert schedule.delay(len(DEFAULT_SCHEDULE), 0.5) is None


def test_docstring_example() -> None:
    assert RetrySchedule((0, 10, 60), jitter=0.0).delay(1, rnd=0.5) == 10.0


@pytest.mark.parametrize(
    ("delays", "jitter", "stored"),
    [
        pytest.param([0, 10, 60], 0, (0.0, 10.0, 60.0), id="list-of-ints"),
        pytest.param((5, 5, 5), 0.1, (5.0, 5.0, 5.0), id="equal-delays"),
        pytest.param((0.0, 0.5, 0.5, 1.5), 0.5, (0.0, 0.5, 0.5, 1.5), id="floats-max-jitter"),
        pytest.param((604800,), 0.0, (604800.0,), id="one-delay-of-7-days"),
        pytest.param((0,) * 100, 0.25, (0.0,) * 100, id="100-delays"),
    ],
)
def test_schedule_accepts(delays: object, jitter: float, stored: tuple[float, ...]) -> None:
    schedule = RetrySchedule(delays, jitter)  # type: ignore[arg-type]

    assert schedule.delays == stored
    assert all(type(d) is float for d in schedule.delays)
    assert type(schedule.jitter) is float
    assert schedule.jitter == jitter
    assert schedule.span == sum(stored[1:])


EXPECTS_LIST = "schedule: expected a list of delays in seconds"
EXPECTS_COUNT = "schedule: expected between 1 and 100 delays"
EXPECTS_JITTER = "jitter: expected a fraction between 0 and 0.5"


def _expects_delay(index: int) -> str:
    return f"schedule[{index}]: expected seconds between 0 and 604800 (7 days)"


@pytest.mark.parametrize(
    ("delays", "jitter", "message"),
    [
        pytest.param("0,5,300", 0.1, EXPECTS_LIST + ", got '0,5,300'", id="str"),
        pytest.param(b"\x00\x05", 0.1, EXPECTS_LIST, id="bytes"),
        pytest.param(5, 0.1, EXPECTS_LIST + ", got 5", id="int"),
        pytest.param(None, 0.1, EXPECTS_LIST + ", got None", id="none"),
        pytest.param({0: 0}, 0.1, EXPECTS_LIST, id="dict"),
        pytest.param((x for x in (0, 5)), 0.1, EXPECTS_LIST, id="generator"),
        pytest.param((), 0.1, EXPECTS_COUNT + ", got []", id="empty"),
        pytest.param([], 0.1, EXPECTS_COUNT + ", got []", id="empty-list"),
        pytest.param((1,) * 101, 0.1, EXPECTS_COUNT, id="101-delays"),
        pytest.param((0, "5"), 0.1, _expects_delay(1) + ", got '5'", id="str-delay"),
        pytest.param((0, None), 0.1, _expects_delay(1) + ", got None", id="none-delay"),
        pytest.param((True, 5), 0.1, _expects_delay(0) + ", got True", id="bool-delay"),
        pytest.param((0, 5, -1), 0.1, _expects_delay(2) + ", got -1", id="negative"),
        pytest.param((0, math.nan), 0.1, _expects_delay(1) + ", got nan", id="nan"),
        pytest.param((0, math.inf), 0.1, _expects_delay(1) + ", got inf", id="inf"),
        pytest.param((0, 604800.5), 0.1, _expects_delay(1) + ", got 604800.5", id="over-7-days"),
        pytest.param(
            (0, 5, 300, 5),
            0.1,
            "schedule[3]: expected a delay no shorter than the one before (300 s): "
            "a schedule never decreases, got 5",
            id="decreasing",
        ),
        pytest.param(
            (10, 0),
            0.1,
            "schedule[1]: expected a delay no shorter than the one before (10 s): "
            "a schedule never decreases, got 0",
            id="decreasing-at-start",
        ),
        pytest.param((0, 5), -0.1, EXPECTS_JITTER + ", got -0.1", id="negative-jitter"),
        pytest.param((0, 5), 0.6, EXPECTS_JITTER + ", got 0.6", id="jitter-over-half"),
        pytest.param((0, 5), 1, EXPECTS_JITTER + ", got 1", id="jitter-int-1"),
        pytest.param((0, 5), math.nan, EXPECTS_JITTER + ", got nan", id="nan-jitter"),
        pytest.param((0, 5), True, EXPECTS_JITTER + ", got True", id="bool-jitter"),
        pytest.param((0, 5), "0.1", EXPECTS_JITTER + ", got '0.1'", id="str-jitter"),
        pytest.param((0, 5), None, EXPECTS_JITTER + ", got None", id="none-jitter"),
    ],
)
def test_schedule_refuses(delays: object, jitter: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetrySchedule(delays, jitter)  # type: ignore[arg-type]

    assert str(caught.value).startswith(message)


def test_schedule_is_immutable() -> None:
    with pytest.raises(AttributeError):
        SCHEDULE.jitter = 0.2  # type: ignore[misc]


# --- names, event types and patterns -------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "acme", "Acme-EU_1.prod:blue", "0", "a" * 64, "x-" + "9" * 62],
)
def test_is_name_accepts(value: str) -> None:
    assert is_name(value) is True


@pytest.mark.parametrize(
    "value",
    [
        *["", "a" * 65, "-acme", "_acme", ".acme", ":acme", "ac me", "acme/eu", "acmé"],
        *["acme\n", "acme*", None, 42, b"acme", ["acme"]],
    ],
)
def test_is_name_refuses(value: object) -> None:
    assert is_name(value) is False


@pytest.mark.parametrize(
    "value", ["invoice.paid", "a", "customer.subscription:updated", "v2_" + "x" * 125]
)
def test_is_event_type_accepts(value: str) -> None:
    assert is_event_type(value) is True


@pytest.mark.parametrize(
    "value",
    [
        *["", "x" * 129, ".invoice", "invoice paid", "invoice.*", "invoice.paid\n", "fäktura"],
        *[None, 7, b"invoice.paid"],
    ],
)
def test_is_event_type_refuses(value: object) -> None:
    assert is_event_type(value) is False


@pytest.mark.parametrize(
    ("event_type", "accepted", "expected"),
    [
        ("invoice.paid", None, True),
        ("anything:at_all", None, True),
        ("invoice.paid", (), False),
        ("invoice.paid", ("invoice.paid",), True),
        ("invoice.paid", ("invoice.failed",), False),
        ("invoice.paid", ("customer.created", "invoice.paid"), True),
        ("invoice.paid", ("invoice",), False),
        ("invoice.paid", ("invoice.*",), True),
        ("invoice.payment.failed", ("invoice.*",), True),
        ("invoice", ("invoice.*",), False),
        ("invoices.paid", ("invoice.*",), False),
        ("customer.invoice.paid", ("invoice.*",), False),
        ("customer.created", ("invoice.*",), False),
        ("customer.created", ("invoice.*", "customer.*"), True),
        ("invoice.paid", ("INVOICE.*",), False),
    ],
)
def test_matches(event_type: str, accepted: tuple[str, ...] | None, expected: bool) -> None:
    assert matches(event_type, accepted) is expected


# --- check_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://acme.example/hooks",
        "http://localhost:8080/webhooks/surefoot?tenant=eu",
        "https://[2001:db8::1]:8443/x",
        "HTTPS://ACME.EXAMPLE",
        "https://acme.example/" + "a" * (2048 - len("https://acme.example/")),
    ],
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "url: expected an http:// or https:// URL of at most 2048 ASCII characters"),
        (42, "url: expected an http:// or https:// URL of at most 2048 ASCII characters"),
        ("", "url: expected an http:// or https:// URL of at most 2048 ASCII characters"),
        (
            "https://a.example/" + "a" * 2031,
            "url: expected an http:// or https:// URL of at most 2048 ASCII characters",
        ),
        (
            "https://bücher.example/",
            "url: expected an http:// or https:// URL of at most 2048 ASCII characters",
        ),
        ("https://acme.example:http/", "url: expected an http:// or https:// URL, got"),
        ("https://acme.example:70000/", "url: expected an http:// or https:// URL, got"),
        ("https://[::1/hooks", "url: expected an http:// or https:// URL, got"),
        ("ftp://acme.example/hooks", "url: expected an http:// or https:// URL with a host"),
        ("acme.example/hooks", "url: expected an http:// or https:// URL with a host"),
        ("https:///hooks", "url: expected an http:// or https:// URL with a host"),
        ("mailto:ops@acme.example", "url: expected an http:// or https:// URL with a host"),
        ("https://acme.example/a b", "url: expected a URL without spaces or a #fragment"),
        ("https://acme.example/a\tb", "url: expected a URL without spaces or a #fragment"),
        ("https://acme.example/a\nb", "url: expected a URL without spaces or a #fragment"),
        ("https://acme.example/hooks#x", "url: expected a URL without spaces or a #fragment"),
        (" https://acme.example/", "url: expected a URL without spaces or a #fragment"),
    ],
)
def test_check_url_refuses(url: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_url(url)

    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "url",
    [
        "https://ops:hunter2@acme.example/hooks",
        "https://ops@acme.example/hooks",
        "https://:hunter2@acme.example/hooks",
        "https://@acme.example/hooks",
    ],
)
def test_check_url_refuses_credentials_without_showing_them(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_url(url, "endpoints[2].url")

    message = str(caught.value)
    assert message == (
        "endpoints[2].url: expected a URL without user:password@ "
        "(deliveries are signed instead), got '<hidden>'"
    )
    assert "hunter2" not in message
    assert "ops" not in message


def test_check_url_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"^endpoints\[0\]\.url: expected"):
        check_url("ftp://acme.example/", field="endpoints[0].url")


# --- Hypothesis: the schedule against a reference model ------------------------------------

delays_st = st.lists(
    st.floats(min_value=0, max_value=604800, allow_nan=False), min_size=1, max_size=20
).map(sorted)
jitters = st.floats(min_value=0, max_value=0.5)
draws = st.floats(min_value=0, max_value=1, exclude_max=True)


@st.composite
def schedules(draw: st.DrawFn) -> RetrySchedule:
    return RetrySchedule(tuple(draw(delays_st)), draw(jitters))


@given(delays_st, jitters, st.integers(min_value=0, max_value=30), draws)
def test_delay_stays_within_jitter_of_the_base(
    delays: list[float], jitter: float, attempts: int, rnd: float
) -> None:
    got = RetrySchedule(tuple(delays), jitter).delay(attempts, rnd)

    if attempts >= len(delays):
        assert got is None
    else:
        base = delays[attempts]  # the model: the n-th delay, moved by at most jitter of itself
        assert got is not None
        slack = 1e-9 * base
        assert base * (1 - jitter) - slack <= got <= base * (1 + jitter) + slack
        assert got >= 0


@given(st.lists(st.floats(min_value=0, max_value=604800), min_size=2, max_size=20))
def test_schedule_accepts_exactly_the_non_decreasing_lists(delays: list[float]) -> None:
    drops = [i for i in range(1, len(delays)) if delays[i] < delays[i - 1]]
    if not drops:
        assert RetrySchedule(tuple(delays)).delays == tuple(delays)
        return
    with pytest.raises(ConfigurationError) as caught:
        RetrySchedule(tuple(delays))
    assert str(caught.value).startswith(f"schedule[{drops[0]}]: ")  # the first drop is named
    assert "never decreases" in str(caught.value)


# --- Hypothesis: judge against a reference model -------------------------------------------

statuses = st.one_of(
    st.none(),
    st.sampled_from([200, 204, 301, 400, 404, 410, 429, 500, 503]),
    st.integers(min_value=100, max_value=599),
)
retry_afters = st.one_of(st.none(), st.floats(min_value=-1e3, max_value=1e8), st.just(math.inf))


@st.composite
def results(draw: st.DrawFn) -> Result:
    status = draw(statuses)
    error = "connection refused" if status is None else None
    return Result(status, error, draw(retry_afters))


def model(
    result: Result,
    attempts: int,
    now: float,
    schedule: RetrySchedule,
    rnd: float,
    failing_since: float | None,
    disable_after: float,
) -> Judgement:
    """Rules 3 and 4, written as a decision list."""
    if result.status is not None and 200 <= result.status <= 299:
        return Judgement(DELIVERED, None, None)
    since = failing_since if failing_since is not None else now
    if result.status == 410:
        return Judgement(FAILED, None, since, None, "gone")
    disable = "failing" if now - since >= disable_after else None
    retry_after = result.retry_after if result.status in (429, 503) else None
    wait = None if retry_after is None else min(MAX_RETRY_AFTER, max(0.0, retry_after))
    paused_until = None if wait is None else now + wait
    if attempts >= len(schedule.delays):
        return Judgement(FAILED, None, since, paused_until, disable)
    base = schedule.delays[attempts] * (1 + schedule.jitter * (2 * rnd - 1))
    delay = base if wait is None else max(base, wait)
    return Judgement(PENDING, now + delay, since, paused_until, disable)


@given(
    result=results(),
    attempts=st.integers(min_value=1, max_value=25),
    now=st.floats(min_value=0, max_value=4e9),
    schedule=schedules(),
    rnd=draws,
    failing_for=st.one_of(st.none(), st.floats(min_value=-60, max_value=1e6)),
    disable_after=st.floats(min_value=0, max_value=1e6),
)
def test_judge_follows_the_model(
    result: Result,
    attempts: int,
    now: float,
    schedule: RetrySchedule,
    rnd: float,
    failing_for: float | None,
    disable_after: float,
) -> None:
    failing_since = None if failing_for is None else now - failing_for
    got = judge(
        result,
        attempts=attempts,
        now=now,
        schedule=schedule,
        rnd=rnd,
        failing_since=failing_since,
        disable_after=disable_after,
    )

    assert got == model(result, attempts, now, schedule, rnd, failing_since, disable_after)
    # The invariants, stated on their own:
    assert (got.state is DELIVERED) == result.delivered  # Rule 3: only 2xx delivers
    assert (got.state is PENDING) == (got.next_at is not None)
    assert got.state is not DeliveryState.SENDING
    if got.next_at is not None:
        assert got.next_at >= now
    if result.delivered:
        assert got.failing_since is None  # Rule 4: cleared by any success
        assert got.disable is None
    else:
        assert got.failing_since is not None
    if result.status in (429, 503) and result.retry_after is not None:
        wait = min(max(result.retry_after, 0.0), MAX_RETRY_AFTER)
        assert got.paused_until == now + wait
        assert got.next_at is None or got.next_at >= now + wait
    else:
        assert got.paused_until is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000", 1_700_000_000.0),
        (" 1700000000.5 ", 1_700_000_000.5),
        ("0", 0.0),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # no offset: UTC
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("30m", 1_700_000_000.0 - 1800),
        ("2h", 1_700_000_000.0 - 7200),
        ("1.5d", 1_700_000_000.0 - 1.5 * 86400),
        ("1w", 1_700_000_000.0 - 7 * 86400),
        ("10s", 1_700_000_000.0 - 10),
    ],
)
def test_since_is_unix_seconds_an_iso_time_or_a_duration_back(text: str, expected: float) -> None:
    assert parse_since(text, now=1_700_000_000.0) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "-5", "nan", "inf", "2h30m", "3 days"])
def test_since_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="unix seconds, an ISO-8601 time"):
        parse_since(text, now=1_700_000_000.0)
