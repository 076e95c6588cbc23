"""Regressions of the review of ``surefoot.django``: who the principal is, what is protected,
what is stored against a key, and what the settings refuse or warn about."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _django_review_urls as views
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections, transaction
from django.test import Client, override_settings

from surefoot.django import surefoot_settings
from surefoot.errors import ConfigurationError
from surefoot.gateway import app_settings

JSON = "application/json"
AUTH = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
SUREFOOT_MW = [
    "surefoot.django.ProblemMiddleware",
    "surefoot.django.RateLimitHeadersMiddleware",
    "surefoot.django.RateLimitMiddleware",
    "surefoot.django.IdempotencyMiddleware",
]
CSRF = "django.middleware.csrf.CsrfViewMiddleware"


def _store() -> str:
    return str(settings.SUREFOOT["stores"]["default"])


def _surefoot(**tables: Any) -> dict[str, Any]:
    return {"stores": {"default": _store()}, "identity": {"address_limits": []}, **tables}


def _charges(path: str = "/open") -> dict[str, Any]:
    return _surefoot(routes=[{"match": f"POST {path}", "idempotency": {"required": True}}])


@pytest.fixture(autouse=True)
def review_urls() -> Iterator[list[str]]:
    views.EXECUTED.clear()
    with override_settings(ROOT_URLCONF="_django_review_urls"):
        yield views.EXECUTED


def _user(name: str) -> Client:
    user = User.objects.create_user(f"{name}-{uuid.uuid4().hex[:8]}")
    client = Client()
    client.force_login(user)
    return client


def _key() -> str:
    return uuid.uuid4().hex


# 1. the order of the middlewares


def test_surefoot_before_authentication_fails_the_check_and_the_request() -> None:
    from surefoot.django.apps import check_middleware_order

    with override_settings(MIDDLEWARE=SUREFOOT_MW + AUTH, SUREFOOT=_charges()):
        found = check_middleware_order()
        assert {e.id for e in found} == {"surefoot.E002"}
        assert len(found) == 2  # RateLimitMiddleware and IdempotencyMiddleware
        with pytest.raises(ConfigurationError, match=r"after django\.contrib\.auth"):
            _user("alice").post("/open", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=_key())
    with override_settings(MIDDLEWARE=AUTH + SUREFOOT_MW):
        assert check_middleware_order() == []


# 2 and 3. the logged-in user before a shared credential


def test_a_shared_credential_never_makes_two_users_one_principal(review_urls: list) -> None:
    basic = "Basic c3RhZ2luZzpzdGFnaW5n"  # the staging site's password, sent by everyone
    key = _key()
    with override_settings(SUREFOOT=_charges()):
        first = _user("alice").post(
            "/open", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key, HTTP_AUTHORIZATION=basic
        )
        second = _user("bob").post(
            "/open", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key, HTTP_AUTHORIZATION=basic
        )
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert json.loads(first.content)["user"] != json.loads(second.content)["user"]
    assert review_urls == ["open", "open"]


def test_a_refreshed_token_keeps_the_user_one_principal(review_urls: list) -> None:
    client, key = _user("carol"), _key()
    with override_settings(SUREFOOT=_charges()):
        for token in ("eyJ.access-1", "eyJ.access-2-after-refresh"):
            response = client.post(
                "/open", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key, HTTP_AUTHORIZATION=f"Bearer {token}"
            )
            assert response.status_code == 201
    assert response["Idempotent-Replayed"] == "true"
    assert review_urls == ["open"]


def test_a_clients_api_key_wins_over_the_user(review_urls: list) -> None:
    data = {**_charges(), "clients": [{"name": "acme", "api_key": "acme-key-1"}]}
    key = _key()
    with override_settings(SUREFOOT=data):
        for name in ("dave", "erin"):  # two users, one client key: the client is the principal
            _user(name).post(
                "/open", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key, HTTP_X_API_KEY="acme-key-1"
            )
    assert review_urls == ["open"]


# 4. an app protects only the routes its settings list


def test_an_app_protects_only_the_routes_it_lists(review_urls: list) -> None:
    with override_settings(SUREFOOT=_charges()):
        assert Client().post("/accounts/login/", {"username": "a"}).status_code == 200
        assert Client().post("/open", b"{}", JSON).status_code == 400
    assert app_settings({"stores": {"default": "memory://"}}).idempotency_guard() is None
    assert not app_settings(
        {"stores": {"default": "memory://"}, "idempotency": {"store": "default"}}
    ).protects
    assert app_settings(
        {"stores": {"default": "memory://"}, "idempotency": {"required": False}}
    ).protects


# 5. @idempotent under a laxer middleware policy


def test_idempotent_keeps_its_policy_when_the_middleware_reserved_nothing(
    review_urls: list,
) -> None:
    with override_settings(SUREFOOT=_surefoot(idempotency={"required": False})):
        for _ in range(2):
            response = Client().post("/refund", b'{"amount": 5}', JSON)
            assert response.status_code == 400
            assert json.loads(response.content)["code"] == "idempotency_key_missing"
    assert review_urls == []


# 6. answers made before the view are not stored


def test_a_csrf_refusal_is_not_stored_against_the_key(review_urls: list) -> None:
    client, key = Client(enforce_csrf_checks=True), _key()
    with override_settings(MIDDLEWARE=[CSRF, *AUTH, *SUREFOOT_MW], SUREFOOT=_charges("/charge")):
        assert client.post("/charge", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key).status_code == 403
        client.cookies["csrftoken"] = "a" * 32
        retry = client.post(
            "/charge", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key, HTTP_X_CSRFTOKEN="a" * 32
        )
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert review_urls == ["charge"]


def test_an_append_slash_redirect_is_not_stored_against_the_key(review_urls: list) -> None:
    client, key = Client(), _key()
    common = "django.middleware.common.CommonMiddleware"
    with override_settings(
        MIDDLEWARE=[common, *AUTH, *SUREFOOT_MW], APPEND_SLASH=True, SUREFOOT=_charges("/*")
    ):
        for _ in range(2):
            moved = client.post("/slashed", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
            assert moved.status_code == 301
            assert "Idempotent-Replayed" not in moved
        followed = client.post("/slashed/", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert followed.status_code == 201
    assert review_urls == ["open"]


# 7. @idempotent behind a middleware that read the form


def test_idempotent_on_a_multipart_csrf_view_says_to_use_the_middleware(review_urls: list) -> None:
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.cookies["csrftoken"] = "b" * 32
    form = {"a": "1", "csrfmiddlewaretoken": "b" * 32}
    with override_settings(MIDDLEWARE=[*AUTH, CSRF, SUREFOOT_MW[0]], SUREFOOT=_surefoot()):
        response = client.post("/upload", form, HTTP_IDEMPOTENCY_KEY=_key())
    assert response.status_code == 500
    assert json.loads(response.content)["code"] == "configuration_error"
    assert review_urls == []


# 8. several DRF throttles


def test_the_refusing_throttle_s_fields_agree_with_retry_after() -> None:
    client = Client(HTTP_X_API_KEY=_key())
    with override_settings(SUREFOOT=_surefoot()):
        responses = [client.get("/twice") for _ in range(3)]
    refused = responses[-1]
    assert refused.status_code == 429
    assert refused["RateLimit"].startswith('"drf.Strict"')
    assert refused["RateLimit"].endswith(f";t={refused['Retry-After']}")


# 9. @rate_limit(policy=...) under RateLimitMiddleware


def test_a_decorated_settings_policy_counts_under_the_view_s_name() -> None:
    data = _surefoot(rate_limit={"policies": [{"name": "api", "limits": ["4/minute"]}]})
    client = Client(HTTP_X_API_KEY=_key())
    with override_settings(SUREFOOT=data):
        statuses = [client.get("/export").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


# 10. a throttle's refusal that is not a 429, without ProblemMiddleware


def test_a_throttle_s_ambiguous_credentials_are_a_400_without_problem_middleware() -> None:
    client = Client(raise_request_exception=False)
    with override_settings(MIDDLEWARE=AUTH, SUREFOOT=_surefoot()):
        response = client.get("/twice", HTTP_AUTHORIZATION="Bearer a, Bearer b")
    assert response.status_code == 400
    assert json.loads(response.content)["code"] == "credentials_ambiguous"


# 13 and 14. transactional claims


def test_a_transactional_file_response_is_stored_and_replayed_with_its_cookie(
    review_urls: list,
) -> None:
    client, key = Client(), _key()
    first = client.post("/receipt", HTTP_IDEMPOTENCY_KEY=key)
    again = client.post("/receipt", HTTP_IDEMPOTENCY_KEY=key)
    for response in (first, again):
        assert response.status_code == 200
        assert response.content == b"receipt-pdf-bytes"
        assert response["Content-Length"] == str(len(b"receipt-pdf-bytes"))
        assert response.cookies["cart"].value == "abc"
    assert again["Idempotent-Replayed"] == "true"
    assert review_urls == ["receipt"]


def test_a_transactional_stream_too_large_is_a_type_error() -> None:
    from django.http import StreamingHttpResponse
    from django.test import RequestFactory

    from surefoot.django import transactional_claim
    from surefoot.django.transactional import MAX_JOINED

    request = RequestFactory().post("/big", HTTP_IDEMPOTENCY_KEY=_key())
    big = StreamingHttpResponse(b"x" * 65536 for _ in range(MAX_JOINED // 65536 + 1))
    with pytest.raises(TypeError, match="larger than"), transaction.atomic():
        transactional_claim(request).complete(big)


def test_a_claim_error_caught_in_the_view_leaves_the_transaction_usable(pg: str) -> None:
    from django.test import RequestFactory

    from surefoot.django import transactional_claim
    from surefoot.idempotency import TransactionalKeys

    request = RequestFactory().post("/pg/orders", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=_key())
    missing = TransactionalKeys(table=f"sf_missing_{uuid.uuid4().hex[:8]}")
    with transaction.atomic(using="pg"):
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the table's absence raises
            transactional_claim(request, keys=missing, using="pg")
        with connections["pg"].cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)


# 15, 16 and 17. settings


def test_a_bad_store_option_is_refused_while_validating() -> None:
    with pytest.raises(ConfigurationError) as info:
        app_settings({"stores": {"default": "sqlite:///x.db?bogus=1"}})
    assert str(info.value).startswith("settings.SUREFOOT: stores.default: ")
    assert "bogus" in str(info.value)


def test_a_relative_sqlite_store_is_read_from_base_dir(tmp_path: Path) -> None:
    with override_settings(BASE_DIR=tmp_path, SUREFOOT={"stores": {"default": "sqlite:///rel.db"}}):
        assert surefoot_settings().stores["default"] == f"sqlite:///{tmp_path}/rel.db"


def test_risky_settings_are_warned_about_and_shared_keys_refused() -> None:
    from surefoot.django.apps import check_settings

    data = {"stores": {"default": "memory://"}, "server": {"trusted_proxies": ["0.0.0.0/0"]}}
    with override_settings(SUREFOOT=data):
        assert sorted(w.id for w in check_settings()) == ["surefoot.W001", "surefoot.W002"]
    with override_settings(SUREFOOT=_surefoot()):
        assert check_settings() == []
    clients = [{"name": "a", "api_key": "k-1"}, {"name": "b", "api_key": "k-1"}]
    with pytest.raises(ConfigurationError, match="clients: expected a different api_key") as info:
        app_settings({"stores": {"default": "memory://"}, "clients": clients})
    assert "k-1" not in str(info.value)
