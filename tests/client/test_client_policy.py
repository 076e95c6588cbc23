"""RetryPolicy values and backoff, Retry-After parsing, and the RetryBudget."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import threading
from typing import Any

import pytest

from surefoot.client import DEFAULT_RETRY_STATUSES, IDEMPOTENT_METHODS, RetryBudget, RetryPolicy
from surefoot.client._retry_after import parse_retry_after
from surefoot.errors import ConfigurationError
from surefoot.testing import ManualClock


def test_defaults_are_safe() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.deadline == 30.0
    assert policy.attempt_timeout is None
    assert policy.jitter == "full"
    assert policy.retry_statuses == DEFAULT_RETRY_STATUSES == {408, 425, 429, 500, 502, 503, 504}
    assert policy.idempotent_methods == IDEMPOTENT_METHODS
    assert "POST" not in policy.idempotent_methods
    assert "PATCH" not in policy.idempotent_methods
    assert policy.raise_on_exhausted is False


def test_policy_is_immutable_and_keyword_only() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(5)  # type: ignore[misc]
    changed = dataclasses.replace(policy, max_attempts=5)
    assert (policy.max_attempts, changed.max_attempts) == (3, 5)
    with pytest.raises(ConfigurationError):
        dataclasses.replace(policy, max_attempts=0)


def test_collections_are_normalised() -> None:
    policy = RetryPolicy(retry_statuses=[503, 503], idempotent_methods=("get", "Put"))
    assert policy.retry_statuses == frozenset({503})
    assert policy.idempotent_methods == frozenset({"GET", "PUT"})
    assert hash(policy) == hash(
        RetryPolicy(retry_statuses={503}, idempotent_methods={"GET", "PUT"})
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_attempts", 0, "an integer >= 1"),
        ("max_attempts", 2.5, "an integer >= 1"),
        ("max_attempts", True, "an integer >= 1"),
        ("deadline", 0, "> 0, or None"),
        ("deadline", math.inf, "> 0, or None"),
        ("deadline", "30", "> 0, or None"),
        ("attempt_timeout", -1, "> 0, or None"),
        ("attempt_timeout", math.nan, "> 0, or None"),
        ("backoff_base", -0.1, ">= 0"),
        ("backoff_max", 0.1, ">= backoff_base"),
        ("jitter", "random", "one of 'full', 'equal', 'decorrelated', 'none'"),
        ("max_retry_after", -1, ">= 0"),
        ("raise_on_exhausted", "yes", "True or False"),
        ("retry_statuses", 503, "a collection of HTTP statuses"),
        ("retry_statuses", {99}, "integers 100-599"),
        ("retry_statuses", {"503"}, "integers 100-599"),
        ("idempotent_methods", "GET", "a collection of method names"),
        ("idempotent_methods", {""}, "method names"),
        ("retry_problem_codes", {1}, "problem codes"),
    ],
)
def test_invalid_policy_names_field_and_expectation(field: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**{field: value})
    message = str(info.value)
    assert message.startswith(f"RetryPolicy.{field}: expected ")
    assert expected in message
    assert repr(value) in message


@pytest.mark.parametrize("jitter", ["full", "equal", "none"])
def test_backoff_bounds(jitter: Any) -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=8.0, jitter=jitter)
    rng = random.Random(3)
    for retry in range(1, 12):
        cap = min(8.0, 0.5 * 2 ** (retry - 1))
        for _ in range(200):
            delay = policy.backoff(retry, previous=0.5, rng=rng)
            low = {"full": 0.0, "equal": cap / 2, "none": cap}[jitter]
            assert low <= delay <= cap


def test_backoff_survives_huge_retry_numbers() -> None:
    policy = RetryPolicy(jitter="none", backoff_max=10)
    assert policy.backoff(5000, previous=1, rng=random.Random()) == 10


def test_decorrelated_bounds() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=20.0, jitter="decorrelated")
    rng = random.Random(5)
    previous = 0.5
    for retry in range(1, 50):
        delay = policy.backoff(retry, previous=previous, rng=rng)
        assert 0.5 <= delay <= min(20.0, 3 * previous)
        previous = delay
    # A previous delay below the base never inverts the range.
    assert policy.backoff(1, previous=0.0, rng=rng) == 0.5


def test_full_jitter_spreads_delays_uniformly() -> None:
    """Statistics with a fixed seed, not timing: deciles of 10_000 delays are balanced."""
    policy = RetryPolicy(backoff_base=1.0, backoff_max=1.0)
    rng = random.Random(20240601)
    delays = [policy.backoff(1, previous=1.0, rng=rng) for _ in range(10_000)]
    assert abs(statistics.mean(delays) - 0.5) < 0.01
    deciles = [0] * 10
    for delay in delays:
        deciles[min(9, int(delay * 10))] += 1
    assert all(900 <= count <= 1100 for count in deciles), deciles
    # Without jitter every client waits exactly the same: a synchronised herd.
    flat = RetryPolicy(backoff_base=1.0, backoff_max=1.0, jitter="none")
    assert {flat.backoff(1, previous=1.0, rng=rng) for _ in range(100)} == {1.0}


NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("9" * 400, math.inf),
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),
        ("Tue, 14 Nov 2023 22:13:50 -0000", 30.0),
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),  # in the past: now
        ("-5", None),
        ("1.5", None),
        ("²", None),
        ("soon", None),
        ("", None),
    ],
)
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


# -- RetryBudget ---------------------------------------------------------------------------


def test_budget_allows_ratio_of_requests_plus_reserve() -> None:
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0.5, window=10)  # reserve: 5
    now = 1000.0
    for _ in range(100):
        budget.record_request(now)
    assert budget.available(now) == pytest.approx(15)
    allowed = sum(budget.try_retry(now) for _ in range(50))
    assert allowed == 15
    assert budget.available(now) == 0


def test_budget_window_slides() -> None:
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0, window=10)
    for _ in range(10):
        budget.record_request(100.0)
    assert sum(budget.try_retry(100.0) for _ in range(10)) == 5
    # Still inside the window: nothing new.
    assert not budget.try_retry(105.0)
    # Past the window, old requests and retries are forgotten alike.
    assert not budget.try_retry(111.0)
    budget.record_request(111.0)
    budget.record_request(111.0)
    assert budget.try_retry(111.0)
    assert not budget.try_retry(111.0)


def test_budget_clock_stepping_back_counts_in_newest_bucket() -> None:
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0, window=10)
    budget.record_request(200.0)
    budget.record_request(150.0)  # a clock stepped back
    assert budget.available(200.0) == 2


def test_unlimited_budget() -> None:
    budget = RetryBudget.unlimited()
    assert all(budget.try_retry(0.0) for _ in range(10_000))
    assert budget.available(0.0) == math.inf
    assert "inf" in repr(budget)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, "RetryBudget.ratio: expected a finite number >= 0"),
        ({"ratio": math.inf}, "RetryBudget.ratio"),
        ({"ratio": True}, "RetryBudget.ratio"),
        ({"min_retries_per_second": -1}, "RetryBudget.min_retries_per_second"),
        ({"min_retries_per_second": math.nan}, "RetryBudget.min_retries_per_second"),
        ({"window": 0}, "RetryBudget.window: expected a finite number of seconds > 0"),
        ({"window": "10"}, "RetryBudget.window"),
    ],
)
def test_invalid_budget(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
        RetryBudget(**kwargs)


def test_budget_is_thread_safe() -> None:
    budget = RetryBudget(ratio=0.25, min_retries_per_second=0, window=60)
    clock = ManualClock()
    granted: list[int] = []

    def worker() -> None:
        mine = 0
        for _ in range(2000):
            budget.record_request(clock.now())
            mine += budget.try_retry(clock.now())
        granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 16_000 requests earn 4_000 retries; a race would grant more. The last few may go
    # unclaimed when a thread's final request lands after another's final try.
    assert 3990 <= sum(granted) <= 4000
