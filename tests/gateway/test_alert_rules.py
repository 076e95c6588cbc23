"""``surefoot alerts --prometheus``: the rules file Prometheus's own ``promtool`` checks,
each rule unit-tested with ``promtool test rules`` (firing and not firing), the runbook
anchors, and the CLI command."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from _services import promtool
from surefoot.cli import main
from surefoot.gateway import alert_rules, load_config, rules_yaml

ROOT = Path(__file__).resolve().parents[2]

UPSTREAM = '[upstream]\nurl = "http://127.0.0.1:9"\n\n[admin]\nenabled = false\n'
POLICIES = """
[[rate_limit.policies]]
name = "charges"
limits = ["5/second"]
routes = ["POST /charges"]

[[rate_limit.policies]]
name = "reads"
limits = ["50/second"]
routes = ["GET /*"]
"""
#: A client's refusals in ``surefoot_top_requests`` (the item is its principal).
_TOP = (
    'surefoot_top_requests{{list="refused",policy="charges",item="cred:{client}",'
    'client="{client}",window="{window}"}}'
)
_ACME = {"policy": "charges", "item": "cred:acme", "client": "acme"}

#: Small thresholds keep the input series short.
ALERTS = """
[alerts]
window = 60
baseline = 3600
spike_factor = 4
min_rate = 0.1
hold = 120
unknown_for = 300
breaker_open_for = 180
store_failing_for = 120
shed_ratio = 0.1
saga_attention_for = 240
webhook_backlog_age = 600
runbook_base = "https://example.test/observability"
"""
EVERYTHING_ELSE = """
[sagas]
database = "sqlite:///{folder}/sagas.db"

[webhooks.send]
database = "sqlite:///{folder}/outbox.db"
"""

ALL_RULES = {
    "SurefootRateLimitRefusalsSpike",
    "SurefootClientRefusalsSpike",
    "SurefootDuplicateKeysSpike",
    "SurefootKeysReusedSpike",
    "SurefootOutcomesUnknown",
    "SurefootBreakerOpen",
    "SurefootStoreFailing",
    "SurefootLoadShedding",
    "SurefootSagasNeedAttention",
    "SurefootWebhooksBacklog",
}


def _config_file(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.format(folder=tmp_path), encoding="utf-8")
    return path


def _rules_file(tmp_path: Path, config: Path) -> Path:
    path = tmp_path / "rules.yml"
    path.write_text(rules_yaml(load_config(str(config))), encoding="utf-8")
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def _check(path: Path) -> int:
    """``promtool check rules``: the number of rules it found."""
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found is not None, result.stdout
    return int(found.group(1))


def _names(path: Path) -> list[str]:
    return re.findall(r'^      - alert: "(\w+)"$', path.read_text(encoding="utf-8"), re.M)


# --- promtool check rules ---------------------------------------------------------------


def test_the_example_policy_file_gives_a_valid_rules_file(tmp_path: Path) -> None:
    rules = _rules_file(tmp_path, ROOT / "examples" / "gateway.toml")
    assert _check(rules) == 9
    names = _names(rules)
    assert names.count("SurefootRateLimitRefusalsSpike") == 2  # charges and reads
    assert "SurefootSagasNeedAttention" not in names
    assert "SurefootWebhooksBacklog" not in names


def test_no_rate_limit_policy_no_refusal_rule(tmp_path: Path) -> None:
    rules = _rules_file(tmp_path, _config_file(tmp_path, UPSTREAM))
    assert _check(rules) == 6
    assert set(_names(rules)) == ALL_RULES - {
        "SurefootRateLimitRefusalsSpike",
        "SurefootClientRefusalsSpike",
        "SurefootSagasNeedAttention",
        "SurefootWebhooksBacklog",
    }


def test_sagas_and_outbox_add_their_rules(tmp_path: Path) -> None:
    rules = _rules_file(tmp_path, _config_file(tmp_path, UPSTREAM + POLICIES + EVERYTHING_ELSE))
    assert _check(rules) == 11
    assert set(_names(rules)) == ALL_RULES


def test_the_alerts_table_sets_thresholds_and_holds(tmp_path: Path) -> None:
    config = _config_file(
        tmp_path,
        UPSTREAM
        + POLICIES
        + EVERYTHING_ELSE
        + "[alerts]\nwindow = 90\nbaseline = 7200\nspike_factor = 6.5\nmin_rate = 0.25\n"
        "hold = 420\nunknown_for = 1800\nbreaker_open_for = 0\nstore_failing_for = 45\n"
        "shed_ratio = 0.125\nsaga_attention_for = 3600\nwebhook_backlog_age = 999\n",
    )
    rules = _rules_file(tmp_path, config)
    assert _check(rules) == 11
    by_name = {rule.alert: rule for rule in alert_rules(load_config(str(config)))}
    spike = by_name["SurefootRateLimitRefusalsSpike"]
    assert "[90s]" in spike.expr
    assert "[2h:90s]" in spike.expr
    assert "> 6.5 *" in spike.expr
    assert "> 0.25" in spike.expr
    assert spike.duration == "7m"
    assert by_name["SurefootOutcomesUnknown"].duration == "30m"
    assert by_name["SurefootBreakerOpen"].duration == "0s"
    assert by_name["SurefootStoreFailing"].duration == "135s"  # window + store_failing_for
    assert "> 0.125" in by_name["SurefootLoadShedding"].expr
    assert by_name["SurefootLoadShedding"].duration == "7m"
    assert by_name["SurefootSagasNeedAttention"].duration == "1h"
    assert "> 999" in by_name["SurefootWebhooksBacklog"].expr
    assert by_name["SurefootWebhooksBacklog"].duration == "7m"
    text = rules.read_text(encoding="utf-8")
    assert 'for: "1h"' in text
    assert 'for: "30m"' in text


# --- promtool test rules ----------------------------------------------------------------


def _annotations(rule: dict[str, Any], labels: dict[str, str], value: str) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them for ``labels``, with every
    ``{{ $value ... }}`` written ``value``."""
    rendered = {}
    for key, template in rule["annotations"].items():
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
        rendered[key] = re.sub(r"\{\{ \$value[^}]*\}\}", value, text)
    return rendered


#: One case: input series (``'a+bxN'`` notation, one sample a minute), then
#: (eval minute, labels of the alerts expected firing, rendered $value) triples.
Case = tuple[dict[str, str], list[tuple[int, list[dict[str, str]], str]]]

RULE_CASES: dict[str, dict[str, Case]] = {
    "SurefootRateLimitRefusalsSpike": {
        # charges: 1/s for two hours, then 10/s for 15 minutes; reads: steady 1/s.
        "fires after the hold": (
            {
                'surefoot_ratelimit_decisions_total{policy="charges",outcome="rejected"}': (
                    "0+60x120 7800+600x14"
                ),
                'surefoot_ratelimit_decisions_total{policy="charges",outcome="allowed"}': (
                    "0+6000x135"
                ),
                'surefoot_ratelimit_decisions_total{policy="reads",outcome="rejected"}': (
                    "0+60x135"
                ),
            },
            [
                (120, [], ""),
                (121, [], ""),  # pending: the hold has not passed
                (122, [], ""),
                (123, [{"policy": "charges"}], "10"),
                (126, [{"policy": "charges"}], "10"),
            ],
        ),
        "steady refusals never fire": (
            {
                'surefoot_ratelimit_decisions_total{policy="charges",outcome="rejected"}': (
                    "0+60x180"
                ),
            },
            [(minute, [], "") for minute in (30, 61, 90, 120, 150, 180)],
        ),
        "under the floor never fires": (
            # Nothing for two hours, then 0.05/s (the floor is 0.1/s).
            {
                'surefoot_ratelimit_decisions_total{policy="charges",outcome="rejected"}': (
                    "0x120 3+3x30"
                ),
            },
            [(minute, [], "") for minute in (121, 123, 125, 130, 140, 150)],
        ),
    },
    "SurefootClientRefusalsSpike": {
        # acme: refused 0.2/s all day (its 5m and 24h counts agree), then 2/s; globex
        # steady at 0.2/s all along; initech new today but under the floor (0.05/s).
        "fires after the hold": (
            {
                _TOP.format(client="acme", window="5m"): "60x30 600x20",
                _TOP.format(client="acme", window="24h"): "17280x30 17820x20",
                _TOP.format(client="globex", window="5m"): "60x50",
                _TOP.format(client="globex", window="24h"): "17280x50",
                _TOP.format(client="initech", window="5m"): "15x50",
                _TOP.format(client="initech", window="24h"): "15x50",
            },
            [
                (30, [], ""),
                (31, [], ""),  # pending: the hold has not passed
                (33, [_ACME], "2"),
                (40, [_ACME], "2"),
            ],
        ),
        "steady refusals never fire": (
            {
                _TOP.format(client="acme", window="5m"): "60x60",
                _TOP.format(client="acme", window="24h"): "17280x60",
            },
            [(minute, [], "") for minute in (10, 30, 60)],
        ),
    },
    "SurefootDuplicateKeysSpike": {
        "fires after the hold": (
            {"surefoot_idempotency_replays_total": "0+60x90 6000+600x14"},
            [(91, [], ""), (92, [], ""), (93, [{}], "10"), (97, [{}], "10")],
        ),
        "steady or small never fires": (
            {"surefoot_idempotency_replays_total": "0+60x150"},
            [(minute, [], "") for minute in (60, 91, 93, 120, 150)],
        ),
    },
    "SurefootKeysReusedSpike": {
        "fires after the hold": (
            {"surefoot_idempotency_mismatches_total": "0x90 60+60x14"},
            [(91, [], ""), (92, [], ""), (93, [{}], "1"), (100, [{}], "1")],
        ),
        "under the floor never fires": (
            {"surefoot_idempotency_mismatches_total": "0x90 3+3x30"},
            [(minute, [], "") for minute in (91, 93, 95, 100, 120)],
        ),
    },
    "SurefootOutcomesUnknown": {
        "fires after unknown_for": (
            {"surefoot_idempotency_unknown_keys": "0x5 3x20"},
            [(6, [], ""), (10, [], ""), (11, [{}], "3"), (25, [{}], "3")],
        ),
        "shorter than unknown_for never fires": (
            {"surefoot_idempotency_unknown_keys": "0x5 3x3 0x10 2x3 0x10"},
            [(minute, [], "") for minute in (6, 8, 9, 10, 15, 18, 20, 25)],
        ),
    },
    "SurefootBreakerOpen": {
        "fires after breaker_open_for": (
            {
                'surefoot_breaker_state{breaker="payments",state="open"}': "0x2 1x20",
                'surefoot_breaker_state{breaker="payments",state="closed"}': "1x2 0x20",
                'surefoot_breaker_state{breaker="ledger",state="forced_open"}': "1x22",
                'surefoot_breaker_state{breaker="ledger",state="open"}': "0x22",
                'surefoot_breaker_state{breaker="search",state="half_open"}': "1x22",
                'surefoot_breaker_state{breaker="search",state="open"}': "0x22",
            },
            [
                (2, [], ""),
                (3, [{"breaker": "ledger"}], "1"),
                (4, [{"breaker": "ledger"}], "1"),
                (5, [{"breaker": "ledger"}], "1"),
                (6, [{"breaker": "ledger"}, {"breaker": "payments"}], "1"),
            ],
        ),
        "open for less never fires": (
            {
                'surefoot_breaker_state{breaker="payments",state="open"}': "0x2 1x1 0x1 1x1 0x10",
                'surefoot_breaker_state{breaker="payments",state="half_open"}': "0x3 1x1 0x12",
            },
            [(minute, [], "") for minute in (3, 4, 5, 6, 7, 10)],
        ),
    },
    "SurefootStoreFailing": {
        "fires when errors go on": (
            {'surefoot_store_errors_total{store="default",operation="get"}': "0x5 60+60x20"},
            # Held for the window (1m) plus store_failing_for (2m).
            [(5, [], ""), (6, [], ""), (8, [], ""), (9, [{"store": "default"}], "1")],
        ),
        "one error never fires": (
            {'surefoot_store_errors_total{store="default",operation="get"}': "0x5 1x20"},
            [(minute, [], "") for minute in (6, 7, 8, 9, 10, 15)],
        ),
    },
    "SurefootLoadShedding": {
        "fires above the ratio": (
            {
                'surefoot_shed_total{priority="normal"}': "0x5 12+12x20",
                'surefoot_http_requests_total{route="/charges",method="POST",status="201"}': (
                    "0+60x25"
                ),
            },
            [(6, [], ""), (7, [], ""), (8, [{}], "20%"), (20, [{}], "20%")],
        ),
        "under the ratio never fires": (
            {
                'surefoot_shed_total{priority="normal"}': "0x5 3+3x20",
                'surefoot_http_requests_total{route="/charges",method="POST",status="201"}': (
                    "0+60x25"
                ),
            },
            [(minute, [], "") for minute in (6, 8, 10, 20)],
        ),
    },
    "SurefootSagasNeedAttention": {
        "fires after saga_attention_for": (
            {
                'surefoot_sagas{saga="refund",state="needs_attention"}': "0x2 2x20",
                'surefoot_sagas{saga="refund",state="completed"}': "5x22",
                'surefoot_sagas{saga="order",state="running"}': "7x22",
            },
            [(3, [], ""), (5, [], ""), (6, [], ""), (7, [{"saga": "refund"}], "2")],
        ),
        "settled in time never fires": (
            {
                'surefoot_sagas{saga="refund",state="needs_attention"}': "0x2 2x3 0x10",
                'surefoot_sagas{saga="refund",state="completed"}': "5x15",
            },
            [(minute, [], "") for minute in (3, 5, 6, 7, 10)],
        ),
    },
    "SurefootWebhooksBacklog": {
        "fires after the age and the hold": (
            # billing's oldest message ages one minute a minute; crm's stays at 30 s.
            {
                'surefoot_webhooks_oldest_undelivered_seconds{endpoint="billing"}': "0+60x20",
                'surefoot_webhooks_oldest_undelivered_seconds{endpoint="crm"}': "30x20",
            },
            [(11, [], ""), (12, [], ""), (13, [{"endpoint": "billing"}], "13m 0s")],
        ),
        "delivered in time never fires": (
            {
                'surefoot_webhooks_oldest_undelivered_seconds{endpoint="billing"}': (
                    "0+60x11 0x10"
                ),
            },
            [(minute, [], "") for minute in (10, 11, 12, 13, 15, 20)],
        ),
    },
}


@pytest.fixture(scope="module")
def full_rules(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("rules")
    config = _config_file(folder, UPSTREAM + POLICIES + EVERYTHING_ELSE + ALERTS)
    loaded = load_config(str(config))
    base = loaded.root.alerts.runbook_base
    return _rules_file(folder, config), [r.as_dict(base) for r in alert_rules(loaded)]


def _unit_test(rules: Path, tests: list[dict[str, Any]], folder: Path) -> None:
    path = folder / "test.yml"
    document = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    result = _promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _case(rule: dict[str, Any], case: Case) -> dict[str, Any]:
    series, checks = case
    return {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "alert_rule_test": [
            {
                "eval_time": f"{minute}m",
                "alertname": rule["alert"],
                "exp_alerts": [
                    {
                        "exp_labels": {**rule["labels"], **labels},
                        "exp_annotations": _annotations(rule, labels, value),
                    }
                    for labels in expected
                ],
            }
            for minute, expected, value in checks
        ],
    }


def test_every_rule_has_cases() -> None:
    assert set(RULE_CASES) == ALL_RULES
    for cases in RULE_CASES.values():
        assert any(any(expected for _, expected, _ in checks) for _, checks in cases.values())
        assert any(all(not expected for _, expected, _ in checks) for _, checks in cases.values())


@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_rule_fires_on_a_trend_and_not_otherwise(
    name: str, full_rules: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    rules, data = full_rules
    matching = [rule for rule in data if rule["alert"] == name]
    if name == "SurefootRateLimitRefusalsSpike":
        # One rule per policy: labels and annotations differ only by the policy.
        matching = [rule for rule in matching if rule["labels"]["policy"] == "charges"]
    (rule,) = matching
    _unit_test(rules, [_case(rule, case) for case in RULE_CASES[name].values()], tmp_path)


def test_a_spike_against_a_day_with_the_default_thresholds(tmp_path: Path) -> None:
    """examples/gateway.toml's defaults (window 5m, baseline 1d, hold 10m): refusals
    steady at 1/s for a day never fire; the same at 10/s for 15 minutes fires once the
    spike has held for 10 minutes."""
    config = load_config(str(ROOT / "examples" / "gateway.toml"))
    rules = tmp_path / "rules.yml"
    rules.write_text(rules_yaml(config), encoding="utf-8")
    base = config.root.alerts.runbook_base
    (rule,) = [
        r.as_dict(base)
        for r in alert_rules(config)
        if r.alert == "SurefootRateLimitRefusalsSpike" and dict(r.labels)["policy"] == "charges"
    ]
    day = 1440
    series = {
        'surefoot_ratelimit_decisions_total{policy="charges",outcome="rejected"}': (
            f"0+60x{day} {60 * day + 600}+600x14"
        ),
    }
    charges = [{"policy": "charges"}]
    steady = [(minute, [], "") for minute in (300, 720, 1000, day)]
    # The 5m rate passes 4x the day's mean one minute into the spike (1380 refusals in
    # the last 300 s: 4.6/s); the alert fires 10 minutes later.
    spiking = [(day + 1, [], ""), (day + 11, [], ""), (day + 12, charges, "10")]
    spiking += [(day + 15, charges, "10")]
    _unit_test(rules, [_case(rule, (series, steady + spiking))], tmp_path)


# --- runbooks ---------------------------------------------------------------------------


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_rule_links_to_its_runbook_section(
    full_rules: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, data = full_rules
    for rule in data:
        url = rule["annotations"]["runbook_url"]
        assert url == f"https://example.test/observability#{rule['alert'].lower()}"
    page = ROOT / "docs" / "observability.md"
    assert page.is_file(), "docs/observability.md is missing"
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    anchors = {_github_anchor(heading) for heading in headings}
    missing = sorted(
        rule["alert"]
        for rule in data
        if rule["annotations"]["runbook_url"].split("#")[1] not in anchors
    )
    assert not missing, f"docs/observability.md has no section for {missing}"


# --- the CLI ----------------------------------------------------------------------------


def test_cli_prints_the_rules(tmp_path: Path) -> None:
    config = _config_file(tmp_path, UPSTREAM + POLICIES + ALERTS)
    result = CliRunner().invoke(main, ["alerts", "--prometheus", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout == rules_yaml(load_config(str(config)))
    printed = tmp_path / "printed.yml"
    printed.write_text(result.stdout, encoding="utf-8")
    assert _check(printed) == 9


def test_cli_writes_the_rules_to_a_file(tmp_path: Path) -> None:
    config = _config_file(tmp_path, UPSTREAM + EVERYTHING_ELSE)
    output = tmp_path / "out" / "surefoot.rules.yml"
    output.parent.mkdir()
    result = CliRunner().invoke(
        main, ["alerts", "--prometheus", "--config", str(config), "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"{output}: 8 alerting rules from {config}\n"
    assert output.read_text(encoding="utf-8") == rules_yaml(load_config(str(config)))
    assert _check(output) == 8


def test_cli_without_a_format_is_a_usage_error(tmp_path: Path) -> None:
    config = _config_file(tmp_path, UPSTREAM)
    result = CliRunner().invoke(main, ["alerts", "--config", str(config)])
    assert result.exit_code == 2
    assert "--prometheus" in result.stderr


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("window = 5", "window"),
        ("spike_factor = 1", "spike_factor"),
        ("shed_ratio = 2", "shed_ratio"),
        ('hold = "long"', "hold"),
    ],
)
def test_cli_an_invalid_threshold_names_its_line(tmp_path: Path, line: str, field: str) -> None:
    before = UPSTREAM + "\n[alerts]\nbaseline = 7200\n"
    config = _config_file(tmp_path, before + f"{line}\n")
    number = len(before.splitlines()) + 1
    result = CliRunner().invoke(main, ["alerts", "--prometheus", "--config", str(config)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: {config}:{number}: alerts.{field}: expected "), (
        result.stderr
    )


def test_one_store_error_never_fires_with_the_default_thresholds(tmp_path: Path) -> None:
    """The default window (5m) is longer than store_failing_for (2m): one failed call
    keeps the rate above 0 for the whole window, and must not page (Rule 1)."""
    config = load_config(str(ROOT / "examples" / "gateway.toml"))
    rules = tmp_path / "rules.yml"
    rules.write_text(rules_yaml(config), encoding="utf-8")
    base = config.root.alerts.runbook_base
    (rule,) = [r.as_dict(base) for r in alert_rules(config) if r.alert == "SurefootStoreFailing"]
    name = 'surefoot_store_errors_total{store="default",operation="get"}'
    once: Case = ({name: "0x5 1x30"}, [(minute, [], "") for minute in range(6, 16)])
    # Failing every minute from minute 6: the alert fires once errors have gone on for
    # store_failing_for beyond the window.
    going_on: Case = (
        {name: "0x5 60+60x30"},
        [(12, [], ""), (13, [{"store": "default"}], "1"), (20, [{"store": "default"}], "1")],
    )
    _unit_test(rules, [_case(rule, once), _case(rule, going_on)], tmp_path)
