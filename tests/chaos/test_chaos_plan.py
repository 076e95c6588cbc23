"""The fault plan: determinism, matching, probabilities, TOML validation, runtime changes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from surefoot.chaos import (
    FAULT_KINDS,
    Abort,
    Delay,
    Duplicate,
    FailAfter,
    Fault,
    FaultPlan,
    Hang,
    Reorder,
    Reset,
    Rule,
    SlowBody,
)
from surefoot.errors import ConfigurationError

REQUESTS = [("POST", "/v1/charges"), ("GET", "/v1/charges/1"), ("POST", "/v1/refunds")] * 200


def mixed_rules() -> list[Rule]:
    return [
        Rule(name="slow", fault=Delay(seconds=0.1, jitter=0.5), probability=0.3),
        Rule(name="lost", fault=FailAfter(lose="truncate"), methods=("POST",), probability=0.2),
        Rule(
            name="down",
            fault=Abort(status=503, retry_after=2),
            path="/v1/charges*",
            probability=0.25,
        ),
    ]


def run(plan: FaultPlan) -> list[Fault | None]:
    return [plan.decide(method, path, {}) for method, path in REQUESTS]


def test_same_seed_same_faults() -> None:
    first = run(FaultPlan(mixed_rules(), seed=7))
    assert first == run(FaultPlan(mixed_rules(), seed=7))
    assert {f.rule for f in first if f is not None} == {"slow", "lost", "down"}


def test_different_seeds_differ() -> None:
    assert run(FaultPlan(mixed_rules(), seed=7)) != run(FaultPlan(mixed_rules(), seed=8))


def test_random_seed_is_reported_and_replays() -> None:
    plan = FaultPlan(mixed_rules())
    assert run(plan) == run(FaultPlan(mixed_rules(), seed=plan.seed))


def test_probabilities_are_roughly_honoured() -> None:
    # First matching rule whose draw hits wins: b is reached only when a missed.
    plan = FaultPlan(
        [
            Rule(name="a", fault=Reset(), probability=0.1),
            Rule(name="b", fault=Abort(), probability=0.5),
            Rule(name="never", fault=Hang(), probability=0.0),
        ],
        seed=2024,
    )
    for _ in range(10_000):
        plan.decide("GET", "/", {})
    counts = plan.counts()
    assert 900 <= counts["a"] <= 1100
    assert 4300 <= counts["b"] <= 4700  # 0.9 * 0.5 = 0.45
    assert "never" not in counts


def test_delay_jitter_is_drawn_within_bounds() -> None:
    plan = FaultPlan([Rule(name="d", fault=Delay(seconds=1.0, jitter=0.5))], seed=1)
    delays = [plan.decide("GET", "/", {}).delay for _ in range(200)]  # type: ignore[union-attr]
    assert all(1.0 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 100
    fixed = FaultPlan([Rule(name="d", fault=Delay(seconds=0.25))], seed=1)
    assert fixed.decide("GET", "/", {}) == Fault(rule="d", spec=Delay(seconds=0.25), delay=0.25)


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("POST", "/v1/charges", {"X-Tenant": "acme"}, "r"),
        ("post", "/v1/charges/ch_1/capture", {"x-tenant": "acme"}, "r"),
        ("GET", "/v1/charges", {"X-Tenant": "acme"}, None),
        ("POST", "/v2/charges", {"X-Tenant": "acme"}, None),
        ("POST", "/v1/charges", {"X-Tenant": "other"}, None),
        ("POST", "/v1/charges", {}, None),
    ],
)
def test_matching(method: str, path: str, headers: dict[str, str], expected: str | None) -> None:
    rule = Rule(
        name="r",
        fault=Reset(),
        methods=("POST", "PUT"),
        path="/v1/charges*",
        headers={"X-Tenant": "acme"},
    )
    fault = FaultPlan([rule], seed=0).decide(method, path, headers)
    assert (fault.rule if fault else None) == expected


def test_first_matching_rule_wins() -> None:
    plan = FaultPlan(
        [
            Rule(name="only-get", fault=Abort(status=500), methods=("GET",)),
            Rule(name="all", fault=Reset()),
            Rule(name="shadowed", fault=Hang()),
        ],
        seed=0,
    )
    assert plan.decide("GET", "/", {}).rule == "only-get"  # type: ignore[union-attr]
    assert plan.decide("POST", "/", {}).rule == "all"  # type: ignore[union-attr]


def test_counts_by_rule_and_kind() -> None:
    plan = FaultPlan(
        [
            Rule(name="r1", fault=Reset(), path="/a"),
            Rule(name="r2", fault=Reset(), path="/b"),
            Rule(name="s", fault=SlowBody(bytes_per_second=10), path="/c"),
        ],
        seed=0,
    )
    for path in ["/a", "/a", "/b", "/c", "/nothing"]:
        plan.decide("GET", path, {})
    assert plan.counts() == {"r1": 2, "r2": 1, "s": 1}
    assert plan.counts(by="kind") == {"reset": 3, "slow_body": 1}


def test_pause_resume_and_replace() -> None:
    plan = FaultPlan([Rule(name="r", fault=Reset())], seed=3)
    plan.pause()
    assert plan.paused
    assert plan.decide("GET", "/", {}) is None
    plan.resume()
    assert plan.decide("GET", "/", {}).rule == "r"  # type: ignore[union-attr]
    plan.replace([Rule(name="d", fault=Duplicate(concurrent=True))])
    assert plan.decide("GET", "/", {}).kind == "duplicate"  # type: ignore[union-attr]
    assert [r.name for r in plan.rules] == ["d"]
    assert plan.counts() == {"r": 1, "d": 1}
    plan.replace([])
    assert plan.decide("GET", "/", {}) is None
    with pytest.raises(ConfigurationError, match="used twice"):
        plan.replace([Rule(name="x", fault=Reset()), Rule(name="x", fault=Hang())])
    assert "paused" in repr(FaultPlan([], seed=1, paused=True))


def test_paused_plan_draws_nothing() -> None:
    rules = [Rule(name="r", fault=Reset(), probability=0.5)]
    paused = FaultPlan(rules, seed=11)
    paused.pause()
    paused.decide("GET", "/", {})
    paused.resume()
    assert run(paused) == run(FaultPlan(rules, seed=11))


def test_thread_safe_counts() -> None:
    plan = FaultPlan([Rule(name="r", fault=Reset(), probability=0.5)], seed=5)

    def work() -> None:
        for _ in range(2000):
            plan.decide("GET", "/", {})

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sequential = FaultPlan([Rule(name="r", fault=Reset(), probability=0.5)], seed=5)
    for _ in range(8000):
        sequential.decide("GET", "/", {})
    # The same 8000 draws happened, whatever the interleaving.
    assert plan.counts() == sequential.counts()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Delay(seconds=-1), "Delay.seconds: expected a finite number >= 0"),
        (lambda: Delay(seconds=1, jitter=float("nan")), "Delay.jitter"),
        (lambda: Abort(status=99), "Abort.status: expected an HTTP status"),
        (lambda: Abort(retry_after=-2), "Abort.retry_after"),
        (lambda: Hang(phase="write"), "Hang.phase"),  # type: ignore[arg-type]
        (lambda: FailAfter(lose="maybe"), "FailAfter.lose"),  # type: ignore[arg-type]
        (
            lambda: SlowBody(bytes_per_second=0),
            "SlowBody.bytes_per_second: expected a finite number > 0",
        ),
        (lambda: Reorder(window=1), "Reorder.window: expected a whole number of requests 2-1000"),
        (lambda: Reorder(window=1001), "Reorder.window"),
        (lambda: Reorder(window=True), "Reorder.window"),
        (lambda: Reorder(window=2.0), "Reorder.window"),  # type: ignore[arg-type]
        (lambda: Reorder(window=2, hold=0), "Reorder.hold: expected a finite number > 0"),
        (lambda: Reorder(window=2, hold=float("inf")), "Reorder.hold"),
        (lambda: Reorder(window=2, hold=3601), "Reorder.hold: expected at most 3600 seconds"),
        (lambda: FaultPlan().release_order(-1), "FaultPlan.release_order.n"),
        (lambda: FaultPlan().release_order(1001), "FaultPlan.release_order.n"),
        (lambda: FaultPlan().release_order(True), "FaultPlan.release_order.n"),
        (lambda: Rule(name="a b", fault=Reset()), "Rule.name"),
        (lambda: Rule(name="r", fault="reset"), "Rule.fault"),  # type: ignore[arg-type]
        (lambda: Rule(name="r", fault=Reset(), methods=("post",)), "Rule.methods"),
        (lambda: Rule(name="r", fault=Reset(), path=""), "Rule.path"),
        (lambda: Rule(name="r", fault=Reset(), headers={"X": 1}), "Rule.headers"),  # type: ignore[dict-item]
        (lambda: Rule(name="r", fault=Reset(), probability=1.5), "Rule.probability"),
        (lambda: FaultPlan([Reset()]), "FaultPlan.rules"),  # type: ignore[list-item]
        (lambda: FaultPlan([], seed="x"), "FaultPlan.seed"),  # type: ignore[arg-type]
    ],
)
def test_constructors_refuse_bad_values(make: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
        make()  # type: ignore[operator]


GOOD = """\
[chaos]
seed = 42

[[chaos.rules]]
name = "charges-lost"
methods = ["POST"]
path = "/v1/charges*"
headers = { "X-Tenant" = "acme" }
probability = 0.2
fault = "fail_after"
lose = "truncate"

[[chaos.rules]]
name = "slow"
fault = "delay"
seconds = 0.5
jitter = 0.25

[[chaos.rules]]
name = "down"
fault = "abort"
status = 429
retry_after = 3

[[chaos.rules]]
name = "everything-else"
fault = "slow_body"
bytes_per_second = 1000
"""


def test_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "chaos.toml"
    path.write_text(GOOD + "\n[other]\nignored = true\n")
    plan = FaultPlan.from_toml(path)
    assert plan.seed == 42
    assert plan.rules == (
        Rule(
            name="charges-lost",
            fault=FailAfter(lose="truncate"),
            methods=("POST",),
            path="/v1/charges*",
            headers={"x-tenant": "acme"},
            probability=0.2,
        ),
        Rule(name="slow", fault=Delay(seconds=0.5, jitter=0.25)),
        Rule(name="down", fault=Abort(status=429, retry_after=3)),
        Rule(name="everything-else", fault=SlowBody(bytes_per_second=1000)),
    )
    same = FaultPlan.from_dict({"chaos": {"seed": 42, "rules": []}})
    same.replace(plan.rules)
    assert run(plan) == run(same)


def test_every_kind_loads() -> None:
    extra = {
        "delay": {"seconds": 1},
        "slow_body": {"bytes_per_second": 5},
        "reorder": {"window": 2},
    }
    rules = [{"name": kind, "fault": kind, **extra.get(kind, {})} for kind in FAULT_KINDS]
    plan = FaultPlan.from_dict({"chaos": {"rules": rules, "paused": True}})
    assert [r.fault.kind for r in plan.rules] == list(FAULT_KINDS)
    assert plan.paused


def problems(tmp_path: Path, text: str) -> str:
    path = tmp_path / "chaos.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        FaultPlan.from_toml(path)
    return str(info.value).replace(str(path), "F")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace('lose = "truncate"', 'lose = "later"'),
            "F:11: chaos.rules[0].lose: expected 'reset', '502' or 'truncate', got 'later'",
        ),
        (
            GOOD.replace("seconds = 0.5", 'seconds = "0.5"'),
            "F:16: chaos.rules[1].seconds: expected a finite number of seconds >= 0, got '0.5'",
        ),
        (
            GOOD.replace("status = 429", "status = 700"),
            "F:22: chaos.rules[2].status: expected an HTTP status 100-599, got 700",
        ),
        (
            GOOD.replace("bytes_per_second = 1000", "byte_per_second = 1000"),
            "F:28: chaos.rules[3].byte_per_second: "
            "unknown field (did you mean 'bytes_per_second'?)",
        ),
        (
            GOOD.replace('fault = "delay"', 'fault = "explode"'),
            "F:15: chaos.rules[1].fault: expected one of "
            "delay, abort, reset, hang, fail_after, duplicate, slow_body, reorder, got 'explode'",
        ),
        (
            GOOD.replace('fault = "abort"\n', ""),
            "F:19: chaos.rules[2].fault: required, missing (expected one of delay",
        ),
        (
            GOOD.replace("probability = 0.2", "probability = 2"),
            "F:9: chaos.rules[0].probability: expected a number in [0, 1], got 2",
        ),
        (
            GOOD.replace('methods = ["POST"]', 'methods = ["post"]'),
            "F:6: chaos.rules[0].methods: "
            "expected upper-case method names such as 'POST', got 'post'",
        ),
        (
            GOOD.replace('name = "slow"', 'name = "down"'),
            "F:20: chaos.rules[2].name: expected a unique name, got 'down' (also chaos.rules[1])",
        ),
        (GOOD.replace("seed = 42", "seed = 4.2"), "F:2: chaos.seed: "),
        (
            GOOD.replace('"X-Tenant" = "acme"', '"X-Tenant" = 1'),
            "F:8: chaos.rules[0].headers.X-Tenant: ",
        ),
        (
            "[chaos]\nrules = 3\n",
            "F:2: chaos.rules: expected a list of [[chaos.rules]] tables, got 3",
        ),
        ("[chaos]\nrules = [3]\n", "F:2: chaos.rules[0]: expected a table, got 3"),
        (
            '[chaos]\n[[chaos.rules]]\nfault = "reset"\n',
            "F:2: chaos.rules[0].name: required, missing",
        ),
        (
            "[chaos]\nextra = 1\n",
            "F:2: chaos.extra: unknown field; expected one of paused, rules, seed",
        ),
        ("[chaos]\npause = true\n", "F:2: chaos.pause: unknown field (did you mean 'paused'?)"),
        ("[other]\n", "F: chaos: expected a [chaos] table"),
        ("chaos = 3\n", "F:1: chaos: expected a [chaos] table with [[chaos.rules]] tables, got 3"),
        ("[chaos\n", "F:1:7: invalid TOML: "),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, expected: str) -> None:
    message = problems(tmp_path, text)
    assert expected in message, message


def test_all_problems_listed_together(tmp_path: Path) -> None:
    text = GOOD.replace("status = 429", "status = 700").replace("seconds = 0.5", "seconds = -1")
    message = problems(tmp_path, text)
    assert message.startswith("F: 2 problems in chaos:\n")
    assert "F:16: chaos.rules[1].seconds: " in message
    assert "F:22: chaos.rules[2].status: " in message


def test_unreadable_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the file"):
        FaultPlan.from_toml(tmp_path / "missing.toml")
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigurationError, match="expected UTF-8 text"):
        FaultPlan.from_toml(path)


def test_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigurationError, match=r"^policy: chaos\.rules\[0\]\.seconds: required"):
        FaultPlan.from_dict({"chaos": {"rules": [{"name": "d", "fault": "delay"}]}}, "policy")


ROUND_TRIP = [
    Rule(name="slow", fault=Delay(seconds=0.5, jitter=0.25), probability=0.5),
    Rule(name="down", fault=Abort(status=429, retry_after=3), methods=("POST", "PUT")),
    Rule(name="reset", fault=Reset(), path="/v1/charges*"),
    Rule(name="hang", fault=Hang(phase="pool"), headers={"X-Tenant": "acme"}),
    Rule(name="lost", fault=FailAfter(lose="502"), probability=0.0),
    Rule(name="twice", fault=Duplicate(concurrent=True), methods=("POST",)),
    Rule(name="drip", fault=SlowBody(bytes_per_second=1000)),
    Rule(name="shuffle", fault=Reorder(window=20, hold=0.5), methods=("POST",)),
]


@pytest.mark.parametrize("rule", ROUND_TRIP, ids=[r.fault.kind for r in ROUND_TRIP])
def test_to_dict_is_a_table_that_reads_back_as_the_same_rule(rule: Rule) -> None:
    plan = FaultPlan.from_dict({"chaos": {"rules": [rule.to_dict()]}})
    assert plan.rules == (rule,)


def test_to_dict_spells_every_field() -> None:
    rule = Rule(name="down", fault=Abort(status=429, retry_after=3), headers={"X-Tenant": "a"})
    assert rule.to_dict() == {
        "name": "down",
        "fault": "abort",
        "status": 429,
        "retry_after": 3,
        "methods": [],
        "path": "*",
        "headers": {"x-tenant": "a"},
        "probability": 1.0,
    }


# -- reorder: the release order ---------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 100, 1000])
def test_release_order_is_a_permutation_of_the_arrivals(n: int) -> None:
    order = FaultPlan(seed=5).release_order(n)
    assert sorted(order) == list(range(n))


def test_release_order_is_seeded_and_reproducible() -> None:
    def batches(seed: int) -> list[tuple[int, ...]]:
        plan = FaultPlan(mixed_rules(), seed=seed)
        found = []
        for n in (20, 7, 100):
            run(plan)  # decisions between batches draw from the same generator
            found.append(plan.release_order(n))
        return found

    first = batches(7)
    assert first == batches(7)
    assert first != batches(8)
    assert first[0] != tuple(range(20))
    # Python's own shuffle is not promised to stay the same across versions: this is.
    assert FaultPlan(seed=1).release_order(4) == (3, 1, 2, 0)


def test_release_order_draws_n_minus_one_and_is_fair() -> None:
    # A batch of 1 (or 0) draws nothing: the generator goes on as if it never came.
    plan, twin = FaultPlan(mixed_rules(), seed=3), FaultPlan(mixed_rules(), seed=3)
    assert plan.release_order(1) == (0,)
    assert plan.release_order(0) == ()
    assert run(plan) == run(twin)
    # Every position of 3 is first about a third of the time.
    plan = FaultPlan(seed=11)
    firsts = [plan.release_order(3)[0] for _ in range(3000)]
    assert all(900 <= firsts.count(p) <= 1100 for p in range(3))


def test_a_paused_plan_keeps_the_arrival_order_and_draws_nothing() -> None:
    plan = FaultPlan(mixed_rules(), seed=4, paused=True)
    assert plan.release_order(5) == (0, 1, 2, 3, 4)
    plan.resume()
    assert run(plan) == run(FaultPlan(mixed_rules(), seed=4))


def test_reorder_is_decided_and_counted_like_any_fault() -> None:
    rule = Rule(name="shuffle", fault=Reorder(window=3), path="/v1/objects/*")
    plan = FaultPlan([rule], seed=2)
    assert plan.decide("POST", "/v1/other", {}) is None
    fault = plan.decide("POST", "/v1/objects/1", {})
    assert fault == Fault(rule="shuffle", spec=Reorder(window=3, hold=5.0))
    assert fault.kind == "reorder"
    assert plan.counts(by="kind") == {"reorder": 1}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "chaos.rules[0].window: required, missing"),
        ({"window": 1}, "chaos.rules[0].window: expected a whole number of requests 2-1000, got 1"),
        ({"window": 1001}, "chaos.rules[0].window: expected a whole number of requests 2-1000"),
        ({"window": 2.5}, "chaos.rules[0].window: expected a whole number of requests 2-1000"),
        ({"window": 2, "hold": 0}, "chaos.rules[0].hold: expected a finite number of seconds > 0"),
        ({"window": 2, "hold": 3601}, "chaos.rules[0].hold: expected a finite number of seconds"),
        ({"window": 2, "hold": "1s"}, "chaos.rules[0].hold: expected a finite number of seconds"),
        ({"window": 2, "size": 3}, "chaos.rules[0].size: unknown field"),
    ],
)
def test_reorder_table_is_validated(fields: dict[str, object], expected: str) -> None:
    data = {"chaos": {"rules": [{"name": "shuffle", "fault": "reorder", **fields}]}}
    with pytest.raises(ConfigurationError) as info:
        FaultPlan.from_dict(data)
    assert expected in str(info.value), str(info.value)


def test_reorder_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "chaos.toml"
    path.write_text(
        '[chaos]\nseed = 9\n[[chaos.rules]]\nname = "out-of-order"\nmethods = ["POST"]\n'
        'path = "/webhooks/*"\nfault = "reorder"\nwindow = 100\nhold = 2.5\n'
    )
    [rule] = FaultPlan.from_toml(path).rules
    assert rule == Rule(
        name="out-of-order",
        fault=Reorder(window=100, hold=2.5),
        methods=("POST",),
        path="/webhooks/*",
    )
