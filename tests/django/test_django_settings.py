"""``settings.SUREFOOT`` validated by the gateway's own code: ``app_settings`` and
``surefoot_settings``; every message names ``settings.SUREFOOT``, the field, what is
expected, and never a secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from surefoot.django import surefoot_settings
from surefoot.errors import ConfigurationError
from surefoot.gateway import app_settings

BASE = {"stores": {"default": "memory://"}}


def _refused(data: object) -> str:
    with pytest.raises(ConfigurationError) as info:
        app_settings(data)
    return str(info.value)


def test_the_tables_of_a_policy_file_without_upstream_are_accepted() -> None:
    found = app_settings(
        {
            **BASE,
            "clients": [{"name": "acme", "api_key": "k-acme", "tier": "pro"}],
            "routes": [{"match": "POST /charges", "idempotency": {"required": True}}],
            "rate_limit": {
                "policies": [
                    {"name": "api", "limits": ("10/minute",), "tiers": {"pro": ["100/minute"]}}
                ]
            },
            "server": {"trusted_proxies": ["10.0.0.0/8"]},
        }
    )
    assert found.idempotency_store == found.rate_limit_store == "memory://"
    charges = found.idempotency_routes["POST /charges"]
    assert charges is not None
    assert charges.required
    assert charges.on_server_error == "release"  # the in-process default, not "unknown"
    assert [p.name for p in found.rate_limit_policies] == ["api"]
    assert found.tiers == {next(iter(found.tiers)): "pro"}
    assert found.identity.trusted
    assert found.idempotency_guard() is not None
    assert found.rate_limit_guard() is not None


def test_stores_need_not_be_called_default() -> None:
    found = app_settings(
        {
            "stores": {"main": "memory://", "counters": "sqlite:///c.db"},
            "idempotency": {"store": "main"},
            "rate_limit": {"store": "counters"},
        }
    )
    assert (found.idempotency_store, found.rate_limit_store) == ("memory://", "sqlite:///c.db")


def test_an_explicit_on_server_error_is_kept() -> None:
    found = app_settings(
        {
            **BASE,
            "idempotency": {"on_server_error": "store"},
            "routes": [
                {"match": "POST /a", "idempotency": {}},
                {"match": "POST /b", "idempotency": {"on_server_error": "unknown"}},
            ],
        }
    )
    assert found.idempotency_policy.on_server_error == "store"
    routes = found.idempotency_routes
    assert routes["POST /a"] is not None
    assert routes["POST /a"].on_server_error == "store"
    assert routes["POST /b"] is not None
    assert routes["POST /b"].on_server_error == "unknown"


def test_nothing_to_protect_builds_no_guard() -> None:
    found = app_settings({**BASE, "idempotency": {"methods": []}})
    assert found.idempotency_guard() is None
    assert found.rate_limit_guard() is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {**BASE, "rate_limit": {"policies": [{"name": "api", "limits": ["9/fortnight"]}]}},
            "settings.SUREFOOT: rate_limit.policies[0].limits: expected limit '9/fortnight'",
        ),
        (
            {**BASE, "idempotency": {"store": "cache"}},
            "settings.SUREFOOT: idempotency.store: expected a name from [stores] (default), "
            "got 'cache'",
        ),
        (
            {"stores": {"default": "ftp://x"}},
            "settings.SUREFOOT: stores.default: expected a store URL with a scheme in",
        ),
        ({**BASE, "rate_limits": {}}, "settings.SUREFOOT: rate_limits: unknown field"),
        (
            {**BASE, "upstream": {"url": "http://api"}},
            "settings.SUREFOOT: upstream: a table of the gateway (surefoot serve), not read "
            "inside an app",
        ),
        (
            {**BASE, "server": {"port": 8000}},
            "settings.SUREFOOT: server.port: not read inside an app",
        ),
        ([], "settings.SUREFOOT: expected a dict of the policy file's tables"),
        (
            {"config": "a.toml", "stores": {}},
            "settings.SUREFOOT: expected 'config' alone",
        ),
        ({"config": 3}, "settings.SUREFOOT: config: expected the path of a TOML policy file"),
    ],
)
def test_invalid_settings_name_the_field_and_what_is_expected(data: object, message: str) -> None:
    assert message in _refused(data)


def test_secrets_never_appear_in_messages() -> None:
    message = _refused(
        {
            "stores": {"default": "redis://:hunter2@127.0.0.1/0?prefix=1", "x": "ftp://a"},
            "clients": [{"name": "acme", "api_key": 12345}],
        }
    )
    assert "hunter2" not in message
    assert "12345" not in message
    assert "settings.SUREFOOT: clients[0].api_key" in message


def test_a_policy_file_is_read_with_its_lines(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[stores]\ndefault = "memory://"\n\n[[rate_limit.policies]]\nname = "api"\n'
        'limits = ["100/minute"]\n'
    )
    found = app_settings({"config": str(policy)})
    # "address": the gateway's [identity] address_limits ceiling, as in serve.
    assert [p.name for p in found.rate_limit_policies] == ["api", "address"]
    policy.write_text('[stores]\ndefault = "memory://"\n\n[idempotency]\nttl = "long"\n')
    message = _refused({"config": str(policy)})
    assert message.startswith(f"settings.SUREFOOT['config']: {policy}:5: idempotency.ttl:")


def test_a_gateway_policy_file_is_accepted_whole(tmp_path: Path) -> None:
    policy = tmp_path / "gateway.toml"
    policy.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9000"\n[admin]\nenabled = false\n'
        '[server]\nport = 9999\n[stores]\ndefault = "memory://"\n'
    )
    assert app_settings({"config": str(policy)}).stores == {"default": "memory://"}


def test_surefoot_settings_reads_the_django_setting_and_follows_changes() -> None:
    assert surefoot_settings() is surefoot_settings()
    with override_settings(SUREFOOT={**BASE, "idempotency": {"ttl": 120}}):
        assert surefoot_settings().idempotency_policy.ttl == 120
    assert surefoot_settings().idempotency_store == settings.SUREFOOT["stores"]["default"]


def test_a_missing_setting_names_it() -> None:
    with override_settings(SUREFOOT=None), pytest.raises(ConfigurationError) as info:
        surefoot_settings()
    assert str(info.value).startswith("settings.SUREFOOT: required: a dict")


def test_invalid_settings_fail_at_startup_with_the_setting_named() -> None:
    from surefoot.django import RateLimitMiddleware

    data = {**BASE, "rate_limit": {"policies": [{"name": "api", "limits": []}]}}
    with override_settings(SUREFOOT=data), pytest.raises(ConfigurationError) as info:
        RateLimitMiddleware(lambda request: None)
    assert "settings.SUREFOOT: rate_limit.policies[0].limits" in str(info.value)


def test_a_relative_policy_file_is_read_from_base_dir(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text('[stores]\ndefault = "memory://"\n')
    with override_settings(BASE_DIR=tmp_path, SUREFOOT={"config": "policy.toml"}):
        assert surefoot_settings().stores == {"default": "memory://"}


def test_manage_py_check_reports_invalid_settings() -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    call_command("check", verbosity=0)
    data = {**BASE, "idempotency": {"ttl": 5}}
    with override_settings(SUREFOOT=data), pytest.raises(SystemCheckError) as info:
        call_command("check", verbosity=0)
    assert "(surefoot.E001) settings.SUREFOOT: idempotency.ttl: expected" in str(info.value)
