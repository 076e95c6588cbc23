"""The probe file made into a plan: its safety rules, its errors, and the dry-run text."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from surefoot.errors import ConfigurationError
from surefoot.probe import Plan, Target, describe, load_plan, plan_from_dict
from surefoot.probe._plan import host_port, redacted

SECRET = "sk_test_0123456789abcdef"

WRITE = """\
[probe]
hosts = ["127.0.0.1:8000"]

[[targets]]
name = "charge"
method = "POST"
url = "http://127.0.0.1:8000/charges"
headers = { Authorization = "Bearer ${PARTNER_KEY}", Content-Type = "application/json" }
body = '{"customer": "c-{{run}}-{{n}}"}'
checks = ["replay", "lost_response"]

[targets.effect]
url = "http://127.0.0.1:8000/charges?customer=c-{{run}}-{{n}}"
count = "json:data"
headers = { Authorization = "Bearer ${PARTNER_KEY}" }
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "probe.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _refused(path: Path, env: dict[str, str] | None = None, **options: Any) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_plan(path, env={} if env is None else env, **options)
    return str(caught.value)


def _data(**target: Any) -> dict[str, Any]:
    base = {"name": "t", "method": "GET", "url": "http://127.0.0.1:8000/x", "checks": ["timeouts"]}
    return {"probe": {"hosts": ["127.0.0.1:8000"]}, "targets": [{**base, **target}]}


def test_a_file_becomes_targets_with_secrets_resolved(tmp_path: Path) -> None:
    plan = load_plan(_file(tmp_path, WRITE), env={"PARTNER_KEY": SECRET})
    (target,) = plan.targets
    assert target.headers["Authorization"] == f"Bearer {SECRET}"
    assert target.effect is not None
    assert target.effect.method == "GET"
    assert target.effect.headers == {"Authorization": f"Bearer {SECRET}"}
    assert target.checks == ("replay", "lost_response")
    assert (plan.max_requests, plan.max_duration, plan.timeout) == (200, 120.0, 10.0)
    assert plan.secrets == (f"Bearer {SECRET}", SECRET)
    assert "authorization" in plan.credential_headers
    assert plan.checks == 2
    assert plan.base_url == "http://127.0.0.1:8000"
    assert plan.required is None
    assert repr(plan) == (
        f"Plan(source={str(tmp_path / 'probe.toml')!r}, targets=[charge], "
        "hosts=['127.0.0.1:8000'], max_requests=200, max_duration=120)"
    )


def test_load_plan_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTNER_KEY", SECRET)
    plan = load_plan(_file(tmp_path, WRITE))
    assert plan.targets[0].headers["Authorization"] == f"Bearer {SECRET}"


def test_a_host_not_listed_is_refused_with_its_line(tmp_path: Path) -> None:
    path = _file(tmp_path, WRITE.replace('8000/charges"\nheaders', '9999/charges"\nheaders'))
    message = _refused(path, {"PARTNER_KEY": SECRET})
    assert message == (
        f"{path}:7: targets[0].url: expected a host listed in probe.hosts (127.0.0.1:8000), "
        "got '127.0.0.1:9999'"
    )


def test_a_host_from_the_environment_is_checked_after_expansion() -> None:
    with pytest.raises(ConfigurationError, match=r"targets\[0\].url: expected a host listed"):
        plan_from_dict(_data(url="http://${HOST}/x"), env={"HOST": "10.0.0.1:80"})
    with pytest.raises(ConfigurationError, match=r"targets\[0\].url: expected an absolute"):
        plan_from_dict(_data(url="http://${HOST}/x"), env={"HOST": ""})
    plan = plan_from_dict(_data(url="http://${HOST}/x"), env={"HOST": "127.0.0.1:8000"})
    assert plan.targets[0].url == "http://127.0.0.1:8000/x"


def test_a_write_without_an_effect_check_is_refused_unless_accepted(tmp_path: Path) -> None:
    text = WRITE.split("[targets.effect]")[0]
    path = _file(tmp_path, text)
    message = _refused(path, {"PARTNER_KEY": SECRET})
    assert message.startswith(f"{path}:4: targets[0].effect: required for a POST target")
    assert "--accept-side-effects" in message
    plan = load_plan(path, env={"PARTNER_KEY": SECRET}, accept_side_effects=True)
    assert plan.accept_side_effects is True
    accepted = _file(tmp_path, text.replace("[probe]\n", "[probe]\naccept_side_effects = true\n"))
    assert load_plan(accepted, env={"PARTNER_KEY": SECRET}).accept_side_effects is True


def test_a_live_looking_key_is_refused_without_its_value(tmp_path: Path) -> None:
    live = "sk_live_51Habcdefghijklmnop"
    path = _file(tmp_path, WRITE)
    message = _refused(path, {"PARTNER_KEY": live})
    assert live not in message
    assert "abcdefghijklmnop" not in message
    assert f"{path}:8: targets[0].headers.Authorization: expected a test-mode credential" in message
    assert f"{path}:15: targets[0].effect.headers.Authorization" in message
    assert "'sk_live_'" in message
    allowed = _file(tmp_path, WRITE.replace("[probe]\n", "[probe]\nallow_live_keys = true\n"))
    assert load_plan(allowed, env={"PARTNER_KEY": live}).targets[0].headers


def test_live_key_patterns_of_the_file_are_added(tmp_path: Path) -> None:
    text = WRITE.replace("[probe]\n", "[probe]\nlive_key_patterns = ['^Bearer prod-']\n")
    message = _refused(_file(tmp_path, text), {"PARTNER_KEY": "prod-42"})
    assert "matches '^Bearer prod-'" in message
    assert "prod-42" not in message


def test_a_missing_variable_names_the_field_and_the_variable(tmp_path: Path) -> None:
    path = _file(tmp_path, WRITE)
    message = _refused(path, {})
    assert message.splitlines() == [
        f"{path}: 2 problems in the probe file:",
        f"  {path}:8: targets[0].headers.Authorization: the environment variable "
        "'PARTNER_KEY' is not set",
        f"  {path}:15: targets[0].effect.headers.Authorization: the environment variable "
        "'PARTNER_KEY' is not set",
    ]


def test_a_missing_variable_in_a_url_is_one_problem() -> None:
    with pytest.raises(ConfigurationError) as caught:
        plan_from_dict(_data(url="http://${HOST}/x"), env={})
    assert str(caught.value) == (
        "<dict>: targets[0].url: the environment variable 'HOST' is not set"
    )


@pytest.mark.parametrize(
    ("change", "where", "expected"),
    [
        ({"checks": ["replay", "refund"]}, "targets[0].checks", "expected checks from replay"),
        ({"checks": ["replay", "replay"]}, "targets[0].checks", "expected each check once"),
        ({"method": "post"}, "targets[0].method", "expected an upper-case method"),
        ({"url": "/charges"}, "targets[0].url", "expected an absolute http:// or https:// URL"),
        ({"slow_url": "ftp://x"}, "targets[0].slow_url", "expected an absolute http://"),
        ({"name": "a b"}, "targets[0].name", "expected a name of letters"),
        ({"headers": {"a b": "x"}}, "targets[0].headers", "expected header names"),
        ({"key_header": "a b"}, "targets[0].key_header", "expected header names"),
        ({"concurrency": 1}, "targets[0].concurrency", "expected a whole number 2-50, got 1"),
        ({"effect": {"url": "http://127.0.0.1:8000/c", "count": "rows"}}, "targets[0].effect.count",
         "expected 'json:PATH'"),
        ({"effect": {"method": "get", "url": "http://127.0.0.1:8000/c", "count": "status"}},
         "targets[0].effect.method", "expected an upper-case method"),
        ({"chekcs": []}, "targets[0].chekcs", "unknown field (did you mean 'checks'?)"),
    ],
)  # fmt: skip
def test_a_target_field_is_refused_by_name(
    change: dict[str, Any], where: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        plan_from_dict(_data(**change), env={})
    assert f"<dict>: {where}: {expected}" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "where", "expected"),
    [
        ({"hosts": ["localhost"]}, "probe.hosts", "expected 'host:port'"),
        ({"hosts": ["h:70000"]}, "probe.hosts", "expected 'host:port'"),
        ({"hosts": []}, "probe.hosts", "expected a list of 'host:port'"),
        ({"live_key_patterns": ["("]}, "probe.live_key_patterns", "expected regular expressions"),
        ({"credential_headers": ["a b"]}, "probe.credential_headers", "expected header names"),
        ({"required": ["refund"]}, "probe.required", "expected checks from replay"),
        ({"max_requests": 0}, "probe.max_requests", "expected a whole number of requests"),
    ],
)
def test_a_probe_field_is_refused_by_name(
    change: dict[str, Any], where: str, expected: str
) -> None:
    data = _data()
    data["probe"] = {**data["probe"], **change}
    with pytest.raises(ConfigurationError) as caught:
        plan_from_dict(data, env={})
    assert f"<dict>: {where}: {expected}" in str(caught.value)


def test_target_names_are_unique() -> None:
    data = _data()
    data["targets"] = [data["targets"][0], data["targets"][0]]
    with pytest.raises(ConfigurationError, match=r"targets\[1\].name: expected a unique name"):
        plan_from_dict(data, env={})


def test_the_optional_fields_reach_the_target() -> None:
    data = _data(
        key_lifetime=30,
        limit_requests=7,
        alt_headers={"X-Partner-Token": "${TOKEN_2}"},
        slow_url="http://127.0.0.1:8000/slow",
        slow_timeout=3.0,
        concurrency=3,
        key_header="X-Request-Key",
    )
    data["probe"] |= {"required": ["timeouts"], "credential_headers": ["X-Partner-Token"]}
    plan = plan_from_dict(data, env={"TOKEN_2": "t2"})
    (target,) = plan.targets
    assert target == Target(
        name="t",
        method="GET",
        url="http://127.0.0.1:8000/x",
        checks=("timeouts",),
        concurrency=3,
        key_header="X-Request-Key",
        key_lifetime=30,
        limit_requests=7,
        alt_headers={"X-Partner-Token": "t2"},
        slow_url="http://127.0.0.1:8000/slow",
        slow_timeout=3.0,
    )
    assert plan.required == ("timeouts",)
    assert "x-partner-token" in plan.credential_headers


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000/x", "127.0.0.1:8000"),
        ("http://Example.com/x", "example.com:80"),
        ("https://example.com", "example.com:443"),
        ("http://[::1]:9000/", "[::1]:9000"),
        ("http://h:99999/", None),
        ("ftp://h:21/", None),
        ("http:///x", None),
    ],
)
def test_host_port(url: str, expected: str | None) -> None:
    assert host_port(url) == expected


def test_redacted_hides_every_secret() -> None:
    assert redacted("a Bearer s3 b s3", ["Bearer s3", "s3", ""]) == "a *** b ***"


def test_the_dry_run_shows_what_is_sent_without_secrets(tmp_path: Path) -> None:
    plan = load_plan(_file(tmp_path, WRITE), env={"PARTNER_KEY": SECRET})
    text = describe(plan)
    assert SECRET not in text
    assert text.splitlines() == [
        f"probe plan from {tmp_path / 'probe.toml'}: 1 target, 2 checks",
        "at most 200 requests (effect checks included), within 120 s; each answer awaited "
        "10 s at most",
        "hosts allowed: 127.0.0.1:8000",
        "side effects: only where an effect check counts them",
        "required to pass: every check run",
        "",
        "target charge: POST http://127.0.0.1:8000/charges",
        "  Authorization: ***",
        "  Content-Type: application/json",
        '  body: {"customer": "c-{{run}}-{{n}}"}',
        "  key header: Idempotency-Key",
        "  effect check: GET http://127.0.0.1:8000/charges?customer=c-{{run}}-{{n}} "
        "(counts json:data)",
        "    Authorization: ***",
        "  checks: replay, lost_response (rate-limit checks: at most 50 requests each; "
        "concurrent: 5 at once)",
    ]


def test_the_dry_run_hides_a_secret_wherever_it_was_put() -> None:
    data = _data(
        url="http://127.0.0.1:8000/x?token=${TOKEN}",
        headers={"X-Custom": "${TOKEN}"},
        alt_headers={"X-Custom": "${TOKEN_2}"},
        slow_url="http://127.0.0.1:8000/slow",
        key_lifetime=60,
        checks=["timeouts", "key_lifetime"],
    )
    plan = plan_from_dict(data, env={"TOKEN": "hunter2", "TOKEN_2": "hunter3"})
    text = describe(plan)
    assert "hunter" not in text
    assert "GET http://127.0.0.1:8000/x?token=***" in text
    assert "  X-Custom: ***" in text
    assert "  second credential: X-Custom: ***" in text
    assert "  slow URL: GET http://127.0.0.1:8000/slow" in text
    assert "  key lifetime: re-sent after 60 s" in text
    assert "key header" not in text  # a GET sends no key
    assert "  effect check" not in text


def test_the_dry_run_of_accepted_side_effects_and_required_checks() -> None:
    data = _data(method="POST", checks=["replay"])
    data["targets"].append({**data["targets"][0], "name": "u"})
    data["probe"] |= {"accept_side_effects": True, "required": ["replay"]}
    plan = plan_from_dict(data, env={})
    text = describe(plan)
    assert text.splitlines()[0] == "probe plan from <dict>: 2 targets, 2 checks"
    assert "side effects: accepted" in text
    assert "required to pass: replay" in text
    assert "  effect check: none (side effects accepted, not counted)" in text


def test_a_plan_made_in_code() -> None:
    plan = Plan(targets=(), hosts=("127.0.0.1:1",))
    assert (plan.checks, plan.base_url) == (0, "")
    assert describe(plan).startswith("probe plan from <dict>: 0 targets, 0 checks")


# -- review fixes: secrets wherever they are, header values, bounds, required ----------------


def test_every_environment_value_is_a_secret_wherever_it_was_put() -> None:
    data = _data(
        method="POST",
        url="http://127.0.0.1:8000/x?token=${TOKEN}",
        headers={"Authorization": "Bearer ${API}", "X-Trace": "t-${TRACE}"},
        body='{"secret": "${BODY}"}',
        checks=["no_key"],
    )
    data["probe"]["accept_side_effects"] = True
    env = {"TOKEN": "tok_url_1", "API": "sk_test_api_2", "TRACE": "trace_3", "BODY": "body_4"}
    plan = plan_from_dict(data, env=env)
    for value in env.values():
        assert value in plan.secrets
    assert "Bearer sk_test_api_2" in plan.secrets
    text = describe(plan)
    for value in env.values():
        assert value not in text
    assert '  body: {"secret": "***"}' in text


def test_the_bare_token_of_a_credential_header_is_a_secret() -> None:
    plan = plan_from_dict(_data(headers={"Authorization": "Bearer written-in-file"}), env={})
    assert "written-in-file" in plan.secrets
    assert redacted("invalid key written-in-file", plan.secrets) == "invalid key ***"


def test_a_url_with_a_user_and_password_is_refused_without_them() -> None:
    with pytest.raises(ConfigurationError) as caught:
        plan_from_dict(_data(url="http://user:pa55word@127.0.0.1:8000/x"), env={})
    message = str(caught.value)
    assert message.startswith("<dict>: targets[0].url: expected a URL without a user or password")
    assert "pa55word" not in message


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"url": "http://127.0.0.1:8000/x?k=sk_live_abc123"}, "targets[0].url"),
        ({"method": "POST", "body": '{"k": "${K}"}', "checks": ["no_key"]}, "targets[0].body"),
    ],
)
def test_live_key_patterns_apply_to_urls_and_bodies(change: dict[str, Any], where: str) -> None:
    data = _data(**change)
    data["probe"]["accept_side_effects"] = True
    with pytest.raises(ConfigurationError) as caught:
        plan_from_dict(data, env={"K": "rk_live_xyz789"})
    message = str(caught.value)
    assert message.startswith(f"<dict>: {where}: expected a test-mode credential")
    assert "abc123" not in message
    assert "xyz789" not in message


@pytest.mark.parametrize("value", ["sk_test_secret\n", "Bearer sk_test_se\rcret", "tök_é"])
def test_a_header_value_with_a_control_or_non_ascii_character_is_refused(value: str) -> None:
    data = _data(headers={"Authorization": "Bearer ${KEY}"})
    with pytest.raises(ConfigurationError) as caught:
        plan_from_dict(data, env={"KEY": value})
    message = str(caught.value)
    assert message.startswith(
        "<dict>: targets[0].headers.Authorization: expected a header value of printable ASCII"
    )
    assert "secret" not in message.replace("secret file", "")
    assert "tök" not in message


def test_redacted_hides_the_escaped_and_stripped_forms_of_a_secret() -> None:
    secrets = ["tok_abc\n"]
    assert redacted("Illegal header value b'tok_abc\\n'", secrets) == "Illegal header value b'***'"
    assert redacted('{"k": "tok_abc\\n"}', secrets) == '{"k": "***"}'
    assert redacted("echo tok_abc.", secrets) == "echo ***."


def test_a_key_lifetime_not_below_max_duration_is_refused() -> None:
    data = _data(key_lifetime=120, checks=["key_lifetime"])
    with pytest.raises(ConfigurationError) as caught:
        plan_from_dict(data, env={})
    assert str(caught.value) == (
        "<dict>: targets[0].key_lifetime: expected seconds below probe.max_duration (120): the "
        "re-send must fit in the run, got 120"
    )
    data["probe"]["max_duration"] = 121
    assert plan_from_dict(data, env={}).targets[0].key_lifetime == 120


def test_a_required_check_no_target_runs_is_refused() -> None:
    data = _data(checks=["timeouts"])
    data["probe"]["required"] = ["timeouts", "retry_after"]
    with pytest.raises(ConfigurationError) as caught:
        plan_from_dict(data, env={})
    assert str(caught.value) == (
        "<dict>: probe.required: expected checks some target runs, got retry_after (no "
        "target's checks list them)"
    )


def test_a_url_urlsplit_cannot_read_has_no_userinfo_to_refuse() -> None:
    # The host check refuses such a URL, naming it; the userinfo check must not crash first.
    from surefoot.probe._plan import _userinfo

    assert _userinfo("http://[::1/charges") is False
    assert _userinfo("http://user:pw@127.0.0.1/charges") is True
