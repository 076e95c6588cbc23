"""The exactly-once drill: scenario files, the audit's arithmetic, and real drills.

The slow tests run ``examples/drills/ci-small.toml`` (4 clients x 50 payments, about 20% of
the requests faulted with every kind of fault on both sides of the gateway) through real
processes, on the SQLite store and on a private Redis, and require that nothing was
duplicated, missing or mismatched, and that every kind of fault was really injected.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from surefoot.errors import ConfigurationError
from surefoot.gateway import config_from_dict
from tools.drill import (
    DrillAudit,
    DrillEvent,
    DrillReport,
    Scenario,
    drill_markdown,
    drill_table,
    run_drill,
)
from tools.drill.__main__ import main
from tools.drill.scenario import Payment, audit, gateway_policy, latency

ROOT = Path(__file__).resolve().parents[2]
DRILLS = ROOT / "examples" / "drills"

GOOD = """\
[drill]
clients = 2
payments = 3
store = "sqlite"

[chaos.client]
[[chaos.client.rules]]
name = "lost"
fault = "fail_after"
lose = "reset"
probability = 0.2

[chaos.upstream]
[[chaos.upstream.rules]]
name = "slow"
fault = "delay"
seconds = 0.5

[[events]]
after = 0.5
action = "flap"
proxy = "upstream"
"""


def problems(tmp_path: Path, text: str) -> str:
    path = tmp_path / "drill.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        Scenario.from_toml(path)
    return str(info.value).replace(str(path), "F")


# -- scenario files ------------------------------------------------------------------------------


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "my-drill.toml"
    path.write_text(GOOD)
    scenario = Scenario.from_toml(path)
    assert (scenario.name, scenario.total, scenario.store) == ("my-drill", 6, "sqlite")
    assert [r.name for r in scenario.client_rules] == ["lost"]
    assert scenario.upstream_rules[0].fault.kind == "delay"
    assert scenario.events == (
        DrillEvent(action="flap", after=0.5, proxies=("upstream",), down=1.0, up=1.0, times=3),
    )
    assert scenario.longest_delay() == 0.5
    seeds = scenario.seeds()
    assert len(set(seeds.values())) == 4  # each generator its own sequence


@pytest.mark.parametrize("path", sorted(DRILLS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_scenario_loads_and_its_policy_validates(path: Path) -> None:
    scenario = Scenario.from_toml(path)
    assert scenario.description
    if scenario.target == "webhooks":  # no gateway: tests/tools/test_drill_webhooks.py
        assert scenario.upstream_rules == ()
        return
    policy = gateway_policy(
        scenario,
        upstream_url="http://127.0.0.1:9",
        store_url="sqlite:///drill.db",
        port=1,
        admin_port=2,
        admin_token="t",
    )
    config = config_from_dict(tomllib.loads(policy), "policy")
    lookup = config.lookups["POST /charges"]
    assert lookup.path == "/charges/by-reference/{body.reference}"
    assert lookup.status == 201
    assert lookup.not_found_after == scenario.gateway.not_found_after
    assert config.idempotency_routes["POST /charges"] is not None
    assert config.root.server.workers == scenario.workers


def test_the_scenarios_the_issue_asks_for_are_shipped() -> None:
    shipped = {path.stem for path in DRILLS.glob("*.toml")}
    assert {
        "lossy-network",
        "fail-after-storm",
        "duplicates",
        "flapping-upstream",
        "gateway-restart",
        "redis-restart",
        "ci-small",
    } <= shipped
    actions = {
        name: {e.action for e in Scenario.from_toml(DRILLS / f"{name}.toml").events}
        for name in shipped
    }
    assert "restart_gateway" in actions["gateway-restart"]
    assert "restart_redis" in actions["redis-restart"]
    assert "flap" in actions["flapping-upstream"]
    assert Scenario.from_toml(DRILLS / "gateway-restart.toml").store == "sqlite"


def test_without_idempotency_the_route_is_unprotected() -> None:
    scenario = Scenario.from_toml(DRILLS / "ci-small.toml").overridden(idempotency=False)
    text = gateway_policy(
        scenario,
        upstream_url="http://127.0.0.1:9",
        store_url="sqlite:///drill.db",
        port=1,
        admin_port=2,
        admin_token="t",
    )
    config = config_from_dict(tomllib.loads(text))
    assert config.idempotency_routes["POST /charges"] is None
    assert config.lookups == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("clients = 2", "clients = 0"), "F:2: drill.clients: expected a whole number"),
        (
            GOOD.replace("payments = 3", "payment = 3"),
            "F:3: drill.payment: unknown field (did you mean 'payments'?)",
        ),
        (
            GOOD.replace('store = "sqlite"', 'store = "postgres"'),
            "F:4: drill.store: expected 'sqlite' or 'redis', got 'postgres'",
        ),
        (
            GOOD.replace("seconds = 0.5", "seconds = -1"),
            "F:17: chaos.upstream.rules[0].seconds: expected a finite number of seconds >= 0",
        ),
        (
            GOOD.replace('lose = "reset"', 'lose = "later"'),
            "F:10: chaos.client.rules[0].lose: expected 'reset', '502' or 'truncate'",
        ),
        (
            GOOD.replace('action = "flap"', 'action = "explode"'),
            "F:21: events[0].action: expected one of pause_chaos, resume_chaos, flap, "
            "restart_gateway, restart_redis, got 'explode'",
        ),
        (
            GOOD.replace('action = "flap"\n', ""),
            "F:19: events[0].action: required, missing (expected one of pause_chaos",
        ),
        (
            GOOD.replace('proxy = "upstream"', 'proxy = "gateway"'),
            "F:22: events[0].proxy: expected 'client', 'upstream' or 'both', got 'gateway'",
        ),
        (
            GOOD.replace('proxy = "upstream"', "down = 2\ndowns = 3"),
            "F:23: events[0].downs: unknown field (did you mean 'down'?)",
        ),
        (
            GOOD.replace("after = 0.5", "after = 0.5\nat = 3"),
            "F:19: events[0]: expected exactly one of at (seconds) and after",
        ),
        (
            GOOD.replace('action = "flap"\nproxy = "upstream"', 'action = "restart_redis"'),
            "F:21: events[0].action: restart_redis needs store = 'redis', got store = 'sqlite'",
        ),
        (
            GOOD.replace('proxy = "upstream"', 'proxy = "both"').replace(
                "[chaos.client]\n[[chaos.client.rules]]\n", "[chaos.client]\n[[chaos.client.x]]\n"
            ),
            "F:6: chaos.client.x: unknown field; expected one of paused, rules, seed",
        ),
        (
            GOOD.replace('proxy = "upstream"', 'proxy = "both"').replace(
                "[[chaos.client.rules]]\nname", "paused = true\n[[chaos.client.nope]]\nname"
            ),
            "chaos.client.nope: unknown field",
        ),
        (
            GOOD.replace("[chaos.upstream]", "[chaos.upstream]\n[chaos.upstream.x]").replace(
                "[[chaos.upstream.rules]]\n", ""
            ),
            "F:14: chaos.upstream.x: unknown field",
        ),
        (
            GOOD.replace('name = "slow"', 'name = "lost"')
            + '\n[[chaos.upstream.rules]]\nname = "lost"\nfault = "reset"\n',
            "F:25: chaos.upstream.rules[1].name: expected a unique name, got 'lost' "
            "(also chaos.upstream.rules[0])",
        ),
        (
            GOOD.replace("[drill]\n", "[drill]\nattempt_timeout = 90\n"),
            "F:2: drill.attempt_timeout: expected seconds > 0 and <= deadline (60), got 90",
        ),
        (
            GOOD.replace("[chaos.upstream]\n[[chaos.upstream.rules]]\n", "[x]\n").replace(
                'name = "slow"\nfault = "delay"\nseconds = 0.5\n', ""
            ),
            "F:13: x: unknown field; expected one of chaos, drill, events, gateway",
        ),
        ("[gateway]\nlease = 1\n", "F: drill: required, missing (expected a [drill] table"),
        (GOOD.replace("[chaos.client]\n", "[gateway]\nlease = -1\n\n[chaos.client]\n"),
         "F:7: gateway.lease: expected a finite number of seconds > 0, got -1"),
        ('[drill]\nclients = 1\npayments = 1\n[chaos]\nclient = 3\n',
         "F:5: chaos.client: expected a table, got 3"),
        ('events = 3\n[drill]\nclients = 1\npayments = 1\n',
         "F:1: events: expected a list of [[events]] tables, got 3"),
        ("drill = 3\n", "F:1: drill: expected a table, got 3"),
        ('[drill]\nclients = 1\npayments = 1\n[[events]]\nat = "soon"\naction = "flap"\n',
         "F:5: events[0].at: expected seconds >= 0 after the first payment, got 'soon'"),
        ("[drill\n", "F:1:7: invalid TOML: "),
    ],
)  # fmt: skip
def test_scenario_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    message = problems(tmp_path, text)
    assert expected in message, message


def test_every_problem_is_listed_together(tmp_path: Path) -> None:
    text = GOOD.replace("clients = 2", "clients = -1").replace("seconds = 0.5", "seconds = -1")
    message = problems(tmp_path, text)
    assert message.startswith("F: 2 problems in the drill scenario:\n"), message
    assert "F:2: drill.clients: " in message
    assert "F:17: chaos.upstream.rules[0].seconds: " in message


def test_a_chaos_event_needs_rules_to_steer(tmp_path: Path) -> None:
    text = GOOD.replace('proxy = "upstream"', 'proxy = "both"').replace(
        '[[chaos.client.rules]]\nname = "lost"\nfault = "fail_after"\nlose = "reset"\n'
        "probability = 0.2\n",
        "",
    )
    message = problems(tmp_path, text)
    expected = "F:17: events[0].proxy: flap steers the client proxy, whose plan has no rules"
    assert expected in message, message


def test_overrides_are_checked_again() -> None:
    scenario = Scenario.from_toml(DRILLS / "redis-restart.toml")
    with pytest.raises(ConfigurationError, match=r"restart_redis needs store = 'redis'"):
        scenario.overridden(store="sqlite")
    changed = scenario.overridden(clients=2, payments=3, idempotency=False, store=None)
    assert (changed.total, changed.idempotency, changed.store) == (6, False, "redis")
    with pytest.raises(ConfigurationError, match=r"drill\.clients: expected a whole number"):
        scenario.overridden(clients=0)


def test_a_scenario_built_in_code_is_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"^<scenario>: drill\.store: expected 'sqlite'"):
        Scenario(name="x", store="postgres")  # type: ignore[arg-type]
    assert Scenario(name="x").total == 200


def test_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigurationError, match=r"^mine: drill: required, missing"):
        Scenario.from_dict({}, "mine")
    assert Scenario.from_dict({"drill": {"clients": 1, "payments": 2}}).name == "drill"


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (DrillEvent(action="restart_gateway", after=0.25, down=1), "restart_gateway (down 1 s) "
                                                                   "after 25%"),
        (DrillEvent(action="flap", at=0.5, proxies=("upstream",), down=1.5, up=2, times=6),
         "flap upstream (6 x 1.5 s down, 2 s up) at 0.5 s"),
        (DrillEvent(action="pause_chaos", at=3), "pause_chaos client+upstream at 3 s"),
    ],
)  # fmt: skip
def test_events_describe_themselves(event: DrillEvent, text: str) -> None:
    assert event.describe() == text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"action": "explode", "at": 1}, "DrillEvent.action: expected one of"),
        ({"action": "flap"}, "exactly one of at"),
        ({"action": "flap", "at": 1, "after": 0.5}, "exactly one of at"),
        ({"action": "flap", "at": -1}, "DrillEvent.at: expected seconds >= 0"),
        ({"action": "flap", "after": 2}, "DrillEvent.after: expected 0 to 1"),
        ({"action": "flap", "at": 1, "proxies": ()}, "DrillEvent.proxies"),
        ({"action": "flap", "at": 1, "times": 0}, "times >= 1"),
    ],
)
def test_events_in_code_are_checked(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DrillEvent(**options)  # type: ignore[arg-type]


# -- the audit ------------------------------------------------------------------------------------


def paid(reference: str, charge_id: str | None = None, *, status: int | None = 201,
         attempts: int = 1, replayed: bool = False) -> Payment:  # fmt: skip
    return Payment(
        reference=reference,
        client=0,
        status=status,
        charge_id=charge_id,
        attempts=attempts,
        replayed=replayed,
    )


def test_a_clean_run_passes() -> None:
    result = audit(
        [paid("a", "ch_a"), paid("b", "ch_b", replayed=True)],
        {"a": ["ch_a"], "b": ["ch_b"]},
    )
    assert result == DrillAudit(
        expected=2,
        succeeded=2,
        recorded=2,
        duplicated=0,
        extra_charges=0,
        lost=0,
        unfinished=0,
        unfinished_booked=0,
        mismatched=0,
        stray=0,
        unknown_keys=0,
        replayed=1,
        examples={},
    )
    assert result.ok
    assert result.missing == 0


@pytest.mark.parametrize(
    ("payments", "ledger", "expected"),
    [
        # Booked three times: one duplicated reference, two extra charges; the client's id is
        # one of them, so it is not also a mismatch.
        ([paid("a", "ch_2")], {"a": ["ch_1", "ch_2", "ch_3"]},
         {"duplicated": 1, "extra_charges": 2, "recorded": 3, "mismatched": 0}),
        # Told 201, nothing booked: lost (missing).
        ([paid("a", "ch_1")], {}, {"lost": 1, "missing": 1, "recorded": 0}),
        # Never told 201: unfinished (missing); booked anyway: the client does not know.
        ([paid("a", status=409), paid("b", status=None)], {"b": ["ch_b"]},
         {"unfinished": 2, "unfinished_booked": 1, "missing": 2, "succeeded": 0}),
        # Told another charge than the one booked.
        ([paid("a", "ch_1")], {"a": ["ch_2"]}, {"mismatched": 1}),
        # A 201 without a charge id is no success.
        ([paid("a", None)], {"a": ["ch_1"]}, {"unfinished": 1, "unfinished_booked": 1}),
        # Booked for a reference no client sent.
        ([paid("a", "ch_a")], {"a": ["ch_a"], "z": ["ch_z"]}, {"stray": 1, "recorded": 2}),
    ],
)  # fmt: skip
def test_audit_arithmetic(
    payments: list[Payment], ledger: dict[str, list[str]], expected: dict[str, int]
) -> None:
    result = audit(payments, ledger, unknown_keys=3)
    for name, value in expected.items():
        assert getattr(result, name) == value, name
    assert not result.ok
    assert result.unknown_keys == 3


def test_the_audit_names_examples_of_each_problem() -> None:
    payments = [paid(f"r{i}", f"ch_{i}") for i in range(8)]
    result = audit(payments, {f"r{i}": [f"ch_{i}", "again"] for i in range(8)})
    assert result.duplicated == 8
    assert result.examples == {"duplicated": ("r0", "r1", "r2", "r3", "r4")}


def report(**changes: object) -> DrillReport:
    fields: dict[str, object] = {
        "scenario": "s",
        "store": "sqlite",
        "idempotency": True,
        "clients": 2,
        "payments": 2,
        "workers": 1,
        "seed": 1,
        "audit": audit([paid(f"r{i}", f"c{i}", attempts=2) for i in range(4)],
                       {f"r{i}": [f"c{i}"] for i in range(4)}),
        "attempts": 8,
        "seconds": 2.0,
        "wall": 5.0,
        "faults": {"client": {"reset": 3}, "upstream": {"delay": 1, "hang": 1}},
        "events": ("   1.0 s  restart_gateway (down 1 s) after 25%",),
    }  # fmt: skip
    fields.update(changes)
    return DrillReport(**fields)  # type: ignore[arg-type]


def test_a_report_computes_rates_and_serialises() -> None:
    r = report()
    assert r.ok
    assert r.throughput == 2.0  # 4 payments in 2 s
    assert r.retries_per_payment == 1.0  # 8 requests for 4 payments
    data = json.loads(json.dumps(r.to_dict()))
    assert data["audit"]["missing"] == 0
    assert data["ok"] is True
    assert data["faults"]["upstream"] == {"delay": 1, "hang": 1}
    assert report(seconds=0.0, attempts=0).throughput == 0.0


def test_the_markdown_table_has_one_row_per_report() -> None:
    failing = report(
        idempotency=False,
        audit=audit([paid("a", "c"), paid("b", status=502)], {"a": ["c", "d"]}),
    )
    table = drill_markdown([report(), failing])
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2] == ("| s | sqlite | on | 2 x 2 | 5 | 2.0 | 1.00 | 0 | 0 | 0 | 5 s |")
    assert "| off |" in lines[3]
    assert "| 1 | 1 (0 lost, 1 unfinished) | 0 |" in lines[3]


# -- real drills --------------------------------------------------------------------------------


def ci_small(**changes: object) -> Scenario:
    return Scenario.from_toml(DRILLS / "ci-small.toml").overridden(**changes)


def assert_exactly_once(report: DrillReport, scenario: Scenario) -> None:
    a = report.audit
    assert (a.duplicated, a.missing, a.mismatched, a.stray) == (0, 0, 0, 0), report.to_dict()
    assert a.expected == a.succeeded == a.recorded == scenario.total
    assert report.ok
    # The faults really happened: every kind each plan names was injected at least once.
    for side, rules in (("client", scenario.client_rules), ("upstream", scenario.upstream_rules)):
        kinds = {rule.fault.kind for rule in rules}
        assert len(kinds) >= 6, side
        injected = report.faults[side]
        assert {kind for kind in kinds if injected.get(kind, 0) > 0} == kinds, (side, injected)
    assert report.retries_per_payment > 0


@pytest.mark.slow
def test_the_small_drill_on_sqlite_duplicates_and_loses_nothing() -> None:
    scenario = ci_small()
    report = run_drill(scenario)
    assert (report.store, report.idempotency) == ("sqlite", True)
    assert_exactly_once(report, scenario)


@pytest.mark.slow
def test_the_small_drill_on_redis_duplicates_and_loses_nothing() -> None:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (the drill starts a private one)"
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    scenario = ci_small(store="redis")
    report = run_drill(scenario)
    assert report.store == "redis"
    assert_exactly_once(report, scenario)


@pytest.mark.slow
def test_events_run_while_clients_pay(tmp_path: Path) -> None:
    """A tiny drill that flaps the client side and pauses the upstream side: the events
    happen, in order, and the ledger is still exact."""
    scenario = Scenario.from_dict(
        {
            "drill": {"clients": 2, "payments": 15, "attempt_timeout": 2, "deadline": 20},
            "gateway": {"not_found_after": 1, "read_timeout": 1, "total_timeout": 1},
            "chaos": {
                "client": {
                    "paused": True,
                    "rules": [{"name": "down", "fault": "abort", "status": 503}],
                },
                "upstream": {"rules": [{"name": "lost", "fault": "fail_after", "probability": 0.3,
                                        "methods": ["POST"]}]},
            },
            "events": [
                {"at": 0, "action": "flap", "proxy": "client", "down": 0.2, "up": 0.2,
                 "times": 2},
                {"after": 0.5, "action": "pause_chaos", "proxy": "upstream"},
                {"after": 0.8, "action": "resume_chaos", "proxy": "upstream"},
            ],
        },
        "events-drill",
    )  # fmt: skip
    lines: list[str] = []
    progress: list[tuple[int, int]] = []
    report = run_drill(
        scenario,
        log=lines.append,
        progress=lambda done, total: progress.append((done, total)),
        workdir=tmp_path,
        keep=True,
    )
    assert report.ok, report.to_dict()
    events = [line.split(" s  ", 1)[1] for line in report.events]
    assert [e for e in events if not e.startswith("  down")] == [
        "flap client (2 x 0.2 s down, 0.2 s up) at 0 s",
        "pause_chaos upstream after 50%",
        "resume_chaos upstream after 80%",
    ]
    assert [e for e in events if e.startswith("  down")] == ["  down (1 of 2)", "  down (2 of 2)"]
    assert report.faults["client"]["abort"] > 0
    assert progress[0] == (0, 30)
    assert progress[-1] == (30, 30)
    kept = next(line for line in lines if line.startswith("kept "))
    assert sorted(p.name for p in Path(kept[5:]).iterdir() if p.suffix in (".toml", ".log")) == [
        "gateway.log",
        "gateway.toml",
        "upstream.log",
    ]


def test_payment_times_are_summarised_by_rank() -> None:
    payments = [
        Payment(reference=f"r{i}", client=0, status=201, charge_id="c", attempts=1, seconds=i)
        for i in range(1, 101)
    ]
    assert latency(payments) == {"p50": 50, "p99": 99, "max": 100}
    assert latency([]) == {}


def test_the_rich_table_says_pass_or_fail() -> None:
    console = Console(record=True, width=200)
    failing = report(audit=audit([paid("a", "c")], {"a": ["c", "d"]}), idempotency=False)
    console.print(drill_table([report(), failing]))
    text = console.export_text()
    assert "PASS" in text
    assert "FAIL" in text
    assert "restart_gateway (down 1 s) after 25%" in text
    assert "3: reset 3" in text  # faults, client side


# -- the command --------------------------------------------------------------------------------


def test_the_command_reports_an_invalid_scenario_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "drill.toml"
    path.write_text(GOOD.replace("clients = 2", "clients = 0"))
    result = CliRunner().invoke(main, [str(path)])
    assert result.exit_code == 1
    assert f"{path}:2: drill.clients: expected a whole number" in result.output


def test_the_command_refuses_an_inconsistent_override() -> None:
    result = CliRunner().invoke(main, [str(DRILLS / "redis-restart.toml"), "--store", "sqlite"])
    assert result.exit_code == 1
    assert "restart_redis needs store = 'redis'" in result.output


@pytest.mark.slow
def test_the_command_runs_a_drill_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    args = [str(DRILLS / "duplicates.toml"), "--clients", "2"]
    args += ["--payments", "5", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    data = json.loads(out.read_text())
    assert (data["clients"], data["payments"], data["ok"]) == (2, 5, True)
    assert data["audit"]["recorded"] == 10


@pytest.mark.parametrize(
    ("missing", "named"), [("httpx", "httpx"), ("fastapi,uvicorn", "uvicorn, fastapi")]
)
def test_without_its_extras_the_drill_says_which_in_one_line(missing: str, named: str) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"for name in {missing!r}.split(','): sys.modules[name] = None\n"
        "import tools.drill\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "ImportError: tools.drill needs the 'gateway' and 'examples' extras: "
        f"pip install -e '.[gateway,examples]' (missing: {named})"
    )
