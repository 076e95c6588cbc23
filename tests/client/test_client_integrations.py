"""Integrations from configuration: a TOML file in, working and shared clients out."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from surefoot.client import (
    CircuitBreaker,
    Integration,
    RetryPolicy,
    integrations_from_dict,
    load_integrations,
)
from surefoot.errors import CircuitOpen, ConfigurationError, UpstreamThrottled
from surefoot.storage import MemoryStore, SqliteStore
from surefoot.testing import CapturedEvents, ManualClock, RecordingSleep

SHIPPING = """\
# A gateway policy may share the file: only [integrations] is read.
[ratelimit]
default = "100/minute"

[integrations.shipping]
base_url = "https://api.shipping.example"
timeout = 10.0
auto_idempotency_key = true
headers = { User-Agent = "shop/1.0" }
[integrations.shipping.retry]
max_attempts = 4
deadline = 30.0
[integrations.shipping.breaker]
failure_rate_threshold = 0.5
minimum_calls = 2
window_size = 2
open_wait = 30.0
[integrations.shipping.throttle]
limit = "100/minute"
max_wait = 5.0
[integrations.shipping.bulkhead]
max_concurrent = 10
[integrations.shipping.cache]
max_staleness = 300.0

[integrations.billing]
base_url = "https://billing.example/api/"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "integrations.toml"
    path.write_text(textwrap.dedent(text))
    return path


def scripted(*statuses: int, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    answers = iter(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(next(answers), json={"ok": True})

    return httpx.MockTransport(handler)


# -- a valid file ------------------------------------------------------------------------------


def test_a_valid_file_builds_each_integration_with_its_settings(tmp_path: Path) -> None:
    integrations = load_integrations(write(tmp_path, SHIPPING))

    assert sorted(integrations) == ["billing", "shipping"]
    shipping = integrations["shipping"]
    assert shipping.name == "shipping"
    assert shipping.base_url == "https://api.shipping.example"
    assert shipping.timeout == httpx.Timeout(10.0)
    assert shipping.auto_idempotency_key is True
    assert shipping.retry == RetryPolicy(max_attempts=4, deadline=30.0)
    assert isinstance(shipping.breaker, CircuitBreaker)
    assert (shipping.breaker.name, shipping.breaker.open_wait) == ("shipping", 30.0)
    assert shipping.throttle is not None
    assert (shipping.throttle.described, shipping.throttle.max_wait) == (
        "100 requests per minute",
        5.0,
    )
    assert shipping.bulkhead is not None
    assert shipping.bulkhead.max_concurrent == 10
    assert shipping.cache is not None
    assert shipping.cache.max_staleness == 300.0
    assert shipping.source == str(tmp_path / "integrations.toml")

    billing = integrations["billing"]
    assert billing.retry == RetryPolicy()  # defaults where the file says nothing
    assert billing.timeout == httpx.Timeout(5.0)
    assert (billing.breaker, billing.throttle, billing.bulkhead, billing.cache) == (None,) * 4


def test_timeouts_can_be_set_one_by_one() -> None:
    data = {
        "integrations": {
            "a": {"base_url": "https://a.example", "timeout": 10, "connect_timeout": 2.0}
        }
    }
    assert integrations_from_dict(data)["a"].timeout == httpx.Timeout(10.0, connect=2.0)


def test_sync_client_retries_with_one_key_against_the_base_url(tmp_path: Path) -> None:
    shipping = load_integrations(write(tmp_path, SHIPPING), clock=ManualClock())["shipping"]
    seen: list[httpx.Request] = []
    sleep = RecordingSleep()
    with shipping.client(inner=scripted(503, 201, seen=seen), sleep=sleep) as client:
        response = client.post("/v1/shipments", json={"parcel": "P-1"})

    assert response.status_code == 201
    assert [str(r.url) for r in seen] == ["https://api.shipping.example/v1/shipments"] * 2
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(keys) == 1  # one logical request, one key on every attempt
    assert all(r.headers["User-Agent"] == "shop/1.0" for r in seen)
    assert len(sleep.calls) == 1


async def _async_post(integration: Integration, inner: httpx.AsyncBaseTransport) -> int:
    sleep = RecordingSleep()
    async with integration.async_client(inner=inner, sleep=sleep.asleep) as client:
        response = await client.post("/v1/shipments", json={"parcel": "P-1"})
    return response.status_code


@pytest.mark.anyio
async def test_async_client_retries_against_the_base_url(tmp_path: Path) -> None:
    shipping = load_integrations(write(tmp_path, SHIPPING), clock=ManualClock())["shipping"]
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) == 1 else 201)

    assert await _async_post(shipping, httpx.MockTransport(handler)) == 201
    assert [r.url.host for r in seen] == ["api.shipping.example"] * 2
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]


def test_client_kwargs_go_to_httpx_and_headers_are_merged() -> None:
    data = {"integrations": {"a": {"base_url": "https://a.example", "headers": {"A": "1"}}}}
    a = integrations_from_dict(data)["a"]
    seen: list[httpx.Request] = []
    with a.client(inner=scripted(200, seen=seen), headers={"B": "2"}, params={"q": "x"}) as c:
        c.get("/items")
    assert (seen[0].headers["A"], seen[0].headers["B"]) == ("1", "2")
    assert str(seen[0].url) == "https://a.example/items?q=x"


def test_client_refuses_a_transport_argument() -> None:
    a = integrations_from_dict({"integrations": {"a": {"base_url": "https://a.example"}}})["a"]
    with pytest.raises(TypeError, match="inner="):
        a.client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))


# -- shared state per integration -------------------------------------------------------------


@pytest.mark.anyio
async def test_sync_and_async_clients_of_one_integration_share_one_breaker(
    tmp_path: Path,
) -> None:
    shipping = load_integrations(write(tmp_path, SHIPPING), clock=ManualClock())["shipping"]
    sleep = RecordingSleep()
    # Two failed attempts (of one GET) fill the window of 2 and open the breaker.
    with (
        shipping.client(inner=scripted(503, 503), sleep=sleep) as client,
        pytest.raises(CircuitOpen),
    ):
        client.get("/v1/rates")

    calls: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    with pytest.raises(CircuitOpen):
        await _async_post(shipping, httpx.MockTransport(handler))
    assert calls == []  # refused by the shared breaker: nothing was sent

    sync, other = shipping.transport(), shipping.async_transport()
    for shared in ("breaker", "throttle", "bulkhead", "cache", "budget"):
        assert getattr(sync, shared) is getattr(other, shared) is getattr(shipping, shared)


def test_integrations_do_not_share_state(tmp_path: Path) -> None:
    text = """\
    [integrations.a]
    base_url = "https://a.example"
    [integrations.a.throttle]
    limit = "1/minute"
    max_wait = 0
    [integrations.b]
    base_url = "https://b.example"
    [integrations.b.throttle]
    limit = "1/minute"
    max_wait = 0
    """
    integrations = load_integrations(write(tmp_path, text), clock=ManualClock())
    a, b = integrations["a"], integrations["b"]
    assert a.throttle is not b.throttle
    assert a.budget is not b.budget
    with a.client(inner=scripted(200, 200)) as client:
        client.get("/x")
        with pytest.raises(UpstreamThrottled):  # a's one token per minute is spent
            client.get("/x")
    with b.client(inner=scripted(200)) as client:
        assert client.get("/x").status_code == 200  # b has its own bucket


def test_each_integration_logs_on_its_own_loggers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = """\
    [integrations.shipping]
    base_url = "https://s.example"
    [integrations.billing]
    base_url = "https://b.example"
    """
    integrations = load_integrations(write(tmp_path, text), clock=ManualClock())
    caplog.set_level(logging.INFO, logger="surefoot.integration")
    for name in ("shipping", "billing"):
        with integrations[name].client(inner=scripted(503, 200), sleep=RecordingSleep()) as c:
            c.get("/ping")

    by_logger = {(r.name, r.getMessage().split()[0]) for r in caplog.records}
    assert ("surefoot.integration.shipping.client", "client.attempt_failed") in by_logger
    assert ("surefoot.integration.billing.client", "client.attempt_failed") in by_logger
    hosts = {r.name: r.surefoot["host"] for r in caplog.records}  # type: ignore[attr-defined]
    assert hosts["surefoot.integration.shipping.client"] == "s.example"
    assert hosts["surefoot.integration.billing.client"] == "b.example"


def test_extra_hooks_see_each_integrations_events() -> None:
    events = CapturedEvents()
    data = {
        "integrations": {
            "a": {"base_url": "https://a.example", "retry": {"max_attempts": 3}},
        }
    }
    a = integrations_from_dict(data, extra_hooks=[events], clock=ManualClock())["a"]
    with a.client(inner=scripted(503, 502, 200), sleep=RecordingSleep()) as client:
        client.get("/x")
    assert events.attempts == [3]
    assert events.reasons == [["503", "502"]]
    assert len(a.hooks) == 2  # the integration's LoggingHook, then the extra hook


def test_jitter_is_reproducible_with_a_seeded_random() -> None:
    a = integrations_from_dict({"integrations": {"a": {"base_url": "https://a.example"}}})["a"]
    waits = []
    for _ in range(2):
        sleep = RecordingSleep()
        with a.client(inner=scripted(503, 200), sleep=sleep, random=random.Random(7)) as c:
            c.get("/x")
        waits.append(sleep.calls)
    assert waits[0] == waits[1]


# -- invalid configuration ---------------------------------------------------------------------

BASE = '[integrations.shipping]\nbase_url = "https://s.example"\n'

S = "integrations.shipping."
R = "[integrations.shipping.retry]\n"

# (lines after BASE, field path after S, what the message says is expected, line)
INVALID = [
    ("timeout = 0", "timeout", "expected a finite number of seconds > 0, got 0", 3),
    ('timeout = "10"', "timeout", "expected a finite number of seconds > 0, got '10'", 3),
    ("auto_idempotency_key = 1", "auto_idempotency_key", "expected true or false, got 1", 3),
    (
        "headers = { A = 1 }",
        "headers.A",
        "expected a table of header names to text values, got 1",
        3,
    ),
    ("tiemout = 3", "tiemout", "unknown field (did you mean 'timeout'?)", 3),
    ("zzz = 3", "zzz", "unknown field; expected one of auto_idempotency_key", 3),
    ("retry = 5", "retry", "expected a table, got 5", 3),
    (R + "max_attempts = 0", "retry.max_attempts", "expected a whole number >= 1, got 0", 4),
    (R + "max_attempts = 2.5", "retry.max_attempts", "expected a whole number >= 1, got 2.5", 4),
    (R + "max_attempts = true", "retry.max_attempts", "expected a whole number >= 1, got True", 4),
    (R + "deadline = inf", "retry.deadline", "expected a finite number of seconds > 0, got inf", 4),
    (
        R + "jitter = 'fulll'",
        "retry.jitter",
        "expected one of 'full', 'equal', 'decorrelated', 'none', got 'fulll'",
        4,
    ),
    (
        R + "retry_statuses = [503, 42]",
        "retry.retry_statuses[1]",
        "expected a list of HTTP statuses (whole numbers 100-599), got 42",
        4,
    ),
    (R + "max_atempts = 3", "retry.max_atempts", "unknown field (did you mean 'max_attempts'?)", 4),
    (
        R + "backoff_base = 5.0\nbackoff_max = 1.0",
        "retry.backoff_max",
        "expected a finite number of seconds >= backoff_base, got 1.0",
        5,
    ),
    (
        "[integrations.shipping.budget]\nratio = -1",
        "budget.ratio",
        "expected a finite number >= 0, got -1",
        4,
    ),
    (
        "[integrations.shipping.breaker]\nfailure_rate_threshold = 1.5",
        "breaker.failure_rate_threshold",
        "expected a share in (0, 1], such as 0.5, got 1.5",
        4,
    ),
    (
        "[integrations.shipping.breaker]\nwindow = 'sliding'",
        "breaker.window",
        "expected 'count' or 'time', got 'sliding'",
        4,
    ),
    (
        "[integrations.shipping.breaker]\nopen_wait = -3",
        "breaker.open_wait",
        "expected a finite number of seconds > 0, got -3",
        4,
    ),
    (
        "[integrations.shipping.throttle]\nlimit = '100/minuet'",
        "throttle.limit",
        "expected 'AMOUNT/UNIT'",
        4,
    ),
    (
        "[integrations.shipping.throttle]\nlimit = '0/minute'",
        "throttle.limit",
        "expected a positive whole number, got 0 (in '0/minute')",
        4,
    ),
    (
        "[integrations.shipping.throttle]\nmax_wait = 1",
        "throttle.limit",
        "required, missing (expected a rate such as '100/minute'",
        3,
    ),
    (
        "[integrations.shipping.bulkhead]\nmax_concurrent = 0",
        "bulkhead.max_concurrent",
        "expected a whole number >= 1, got 0",
        4,
    ),
    (
        "[integrations.shipping.cache]\nmax_bytes = 10\nmax_entry_bytes = 20",
        "cache.max_entry_bytes",
        "expected a whole number from 1 to max_bytes, got 20",
        5,
    ),
    (
        "[integrations.shipping.throttle]\nlimit = '1/second'\nstore = 'ftp://s'",
        "throttle.store",
        "expected a store URL (memory://, postgres://, postgresql://, redis://, "
        "redis+cluster://, rediss://, sqlite://), such as 'redis://127.0.0.1:6379/0' "
        "or 'sqlite:///cache.db', got 'ftp://s'",
        5,
    ),
    (
        "[integrations.shipping.throttle]\nlimit = '1/second'\nstore = 6379",
        "throttle.store",
        "expected a store URL, such as 'redis://127.0.0.1:6379/0' or 'sqlite:///cache.db', "
        "got 6379",
        5,
    ),
    (
        "[integrations.shipping.cache]\nstore = 'postgresql://app:secret@db/app'",
        "cache.store",
        "expected a store URL (memory://, redis://, redis+cluster://, rediss://, sqlite://)"
        ", such as 'redis://127.0.0.1:6379/0' or 'sqlite:///cache.db', "
        "got 'postgresql://app:***@db/app'",
        4,
    ),
    (
        "[integrations.shipping.cache]\nstore = 'postgresql://db/app?password=hunter2'",
        "cache.store",
        "expected a store URL (memory://, redis://, redis+cluster://, rediss://, sqlite://)"
        ", such as 'redis://127.0.0.1:6379/0' or 'sqlite:///cache.db', "
        "got 'postgresql://db/app?password=***'",
        4,
    ),
    (
        "[integrations.shipping.cache]\nstore = 'postgresql://app:se?cret@db/app'",
        "cache.store",
        "expected a store URL (memory://, redis://, redis+cluster://, rediss://, sqlite://)"
        ", such as 'redis://127.0.0.1:6379/0' or 'sqlite:///cache.db', "
        "got 'postgresql://***@db/app'",
        4,
    ),
    (
        "[integrations.shipping.cache]\nstore = 'sqlite:///'",
        "cache.store",
        "cannot make the store: store URL: expected a database file",
        4,
    ),
    (
        "[integrations.shipping.throttle]\nlimit = '1/second'\nstore = 'redis://h?colour=red'",
        "throttle.store",
        "cannot make the store: RedisStore URL: unknown options ['colour']",
        5,
    ),
]


@pytest.mark.parametrize(("extra", "path", "expected", "line"), INVALID)
def test_every_invalid_field_names_file_line_path_and_expectation(
    tmp_path: Path, extra: str, path: str, expected: str, line: int
) -> None:
    file = write(tmp_path, BASE + extra + "\n")
    with pytest.raises(ConfigurationError) as caught:
        load_integrations(file)
    message = str(caught.value)
    assert message.startswith(f"{file}:{line}: {S}{path}: "), message
    assert expected in message, message


def test_a_file_with_several_problems_lists_them_all(tmp_path: Path) -> None:
    text = """\
    [integrations.shipping]
    base_url = "ftp://s.example"
    [integrations.shipping.retry]
    max_attempts = 0
    [integrations."bad name"]
    base_url = "https://b.example"
    """
    file = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_integrations(file)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{file}: 3 problems in integrations:"
    assert sorted(line.strip() for line in lines[1:]) == sorted(
        [
            f"{file}:2: integrations.shipping.base_url: "
            "expected an absolute http:// or https:// URL, got 'ftp://s.example'",
            f"{file}:4: integrations.shipping.retry.max_attempts: "
            "expected a whole number >= 1, got 0",
            f'{file}:5: integrations."bad name": '
            "expected a name of letters, digits, '_' and '-' (it names loggers)",
        ]
    )


def test_a_missing_base_url_points_at_the_table(tmp_path: Path) -> None:
    file = write(tmp_path, "[other]\nx = 1\n\n[integrations.shipping]\ntimeout = 3\n")
    with pytest.raises(ConfigurationError, match=r":4: integrations\.shipping\.base_url: required"):
        load_integrations(file)


def test_a_toml_syntax_error_reports_its_line_and_column(tmp_path: Path) -> None:
    file = write(tmp_path, '[integrations.shipping]\nbase_url = "https://s.example"\ntimeout =\n')
    with pytest.raises(ConfigurationError) as caught:
        load_integrations(file)
    assert str(caught.value).startswith(f"{file}:3:10: invalid TOML: ")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[ratelimit]\n", "integrations: expected an [integrations] table"),
        (b"integrations = 3\n", "integrations: expected an [integrations] table"),
        (b"[integrations]\nx = \xff\n", "expected UTF-8 text (TOML), got byte 0xff"),
    ],
)
def test_a_file_without_integrations_is_refused(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    file = tmp_path / "x.toml"
    file.write_bytes(content)
    with pytest.raises(ConfigurationError, match=r"x\.toml"):
        load_integrations(file)
    with pytest.raises(ConfigurationError) as caught:
        load_integrations(file)
    assert expected in str(caught.value)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nope\.toml: cannot read the file"):
        load_integrations(tmp_path / "nope.toml")


def test_dict_errors_name_the_source() -> None:
    data = {"integrations": {"a": {"base_url": "https://a.example", "retry": {"max_attempts": 0}}}}
    with pytest.raises(ConfigurationError) as caught:
        integrations_from_dict(data, source="settings.INTEGRATIONS")
    assert str(caught.value) == (
        "settings.INTEGRATIONS: integrations.a.retry.max_attempts: "
        "expected a whole number >= 1, got 0"
    )


def test_an_integration_made_in_code_is_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"Integration\.name"):
        Integration("a.b", base_url="https://a.example")
    with pytest.raises(ConfigurationError, match=r"Integration\.base_url"):
        Integration("a", base_url="/relative")
    a = Integration("a", base_url="https://a.example", retry=RetryPolicy(max_attempts=1))
    assert repr(a) == "Integration('a', base_url='https://a.example')"


def test_surefoot_client_imports_without_pydantic() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pydantic"] = None  # as if it were not installed
        import surefoot.client
        from surefoot.errors import ConfigurationError
        assert "pydantic" not in [m for m in sys.modules if sys.modules[m] is not None]
        try:
            surefoot.client.integrations_from_dict({"integrations": {}})
        except ConfigurationError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "pip install 'surefoot[client]'" in done.stdout


# -- stores named by URL ---------------------------------------------------------------------


def test_throttle_and_cache_stores_are_named_by_url(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    text = f"""\
[integrations.shipping]
base_url = "https://api.shipping.example"
[integrations.shipping.throttle]
limit = "1/minute"
max_wait = 0
store = "sqlite:///{db}"
[integrations.shipping.cache]
max_staleness = 60.0
store = "sqlite:///{db}"
[integrations.billing]
base_url = "https://billing.example"
[integrations.billing.cache]
store = "memory://"
"""
    integrations = load_integrations(write(tmp_path, text), clock=ManualClock())
    shipping, billing = integrations["shipping"], integrations["billing"]
    assert shipping.throttle is not None
    assert shipping.cache is not None
    assert isinstance(shipping.throttle.store, SqliteStore)
    assert isinstance(shipping.cache.store, SqliteStore)
    assert shipping.cache.store.path == shipping.throttle.store.path == str(db)
    # One store object per table: a cache and a throttle run their stores on different
    # event loops, and a store object serves one loop.
    assert shipping.cache.store is not shipping.throttle.store
    assert billing.cache is not None
    assert isinstance(billing.cache.store, MemoryStore)
    assert "store=SqliteStore" in repr(shipping.cache)


def test_two_loads_share_a_cached_answer_through_the_store(tmp_path: Path) -> None:
    text = f"""\
[integrations.prices]
base_url = "https://prices.example"
[integrations.prices.retry]
max_attempts = 1
[integrations.prices.cache]
max_staleness = 60.0
store = "sqlite:///{tmp_path / "cache.db"}"
"""
    file = write(tmp_path, text)
    clock = ManualClock()
    worker_1 = load_integrations(file, clock=clock)["prices"]
    worker_2 = load_integrations(file, clock=clock)["prices"]  # another process
    with worker_1.client(inner=scripted(200), sleep=RecordingSleep(clock)) as client:
        assert client.get("/list").status_code == 200
    clock.advance(10.0)
    with worker_2.client(inner=scripted(503), sleep=RecordingSleep(clock)) as client:
        stale = client.get("/list")
    assert stale.status_code == 200
    assert stale.headers["X-Surefoot-Stale"] == "10"
    for worker in (worker_1, worker_2):
        assert worker.cache is not None
        worker.cache.close(close_store=True)
