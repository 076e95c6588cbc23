"""``SurefootThrottle`` keeps DRF's throttle contract: ``allow_request`` is False past the
limit, ``wait()`` is the ``Retry-After`` DRF sends, and the ``RateLimit`` fields reach
DRF's responses (``RateLimitHeadersMiddleware``)."""

from __future__ import annotations

import uuid

import pytest
from _django_views import Items, ItemsThrottle
from django.test import Client, override_settings
from rest_framework.request import Request as DRFRequest
from rest_framework.test import APIRequestFactory

from surefoot.django import SurefootThrottle
from surefoot.errors import ConfigurationError


def _drf_request(api_key: str) -> DRFRequest:
    return DRFRequest(APIRequestFactory().get("/drf/items", HTTP_X_API_KEY=api_key))


def test_allow_request_and_wait_follow_the_limit() -> None:
    key = uuid.uuid4().hex
    throttles = [ItemsThrottle() for _ in range(4)]
    allowed = [t.allow_request(_drf_request(key), Items()) for t in throttles]
    assert allowed == [True, True, True, False]
    assert [t.wait() for t in throttles[:3]] == [None, None, None]
    wait = throttles[3].wait()
    assert wait is not None
    assert 0 < wait <= 60
    assert wait == int(wait)  # whole seconds, as Retry-After


def test_drf_answers_429_with_retry_after_equal_to_wait_and_the_headers() -> None:
    client = Client(HTTP_X_API_KEY=uuid.uuid4().hex)
    answers = [client.get("/drf/items") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0]["RateLimit-Policy"] == '"drf.ItemsThrottle";q=3;w=60'
    assert answers[0]["RateLimit"].startswith('"drf.ItemsThrottle";r=2;')
    refused = answers[3]
    assert refused.json()["detail"].startswith("Request was throttled.")
    retry_after = refused["Retry-After"]
    assert int(retry_after) > 0
    assert refused["RateLimit"] == f'"drf.ItemsThrottle";r=0;t={retry_after}'
    assert refused["RateLimit-Policy"] == '"drf.ItemsThrottle";q=3;w=60'


def test_a_throttle_counts_under_a_settings_policy_by_name() -> None:
    class Shared(SurefootThrottle):
        policy = "shared"

    key = uuid.uuid4().hex
    request = DRFRequest(APIRequestFactory().get("/limited", HTTP_X_API_KEY=key))
    assert all(Shared().allow_request(request, None) for _ in range(30))
    last = Shared()
    assert last.allow_request(request, None) is False
    assert last.wait() is not None
    # The same counters as RateLimitMiddleware's policy of that name.
    assert Client(HTTP_X_API_KEY=key).get("/limited").status_code == 429


def test_an_unknown_policy_is_a_configuration_error() -> None:
    class Missing(SurefootThrottle):
        policy = "nope"

    with pytest.raises(ConfigurationError, match=r"policy 'nope' is not in settings\.SUREFOOT"):
        Missing().allow_request(_drf_request("k"), None)


def test_a_throttle_without_policies_allows_everything() -> None:
    from django.conf import settings

    data = {**settings.SUREFOOT, "rate_limit": {"policies": []}}
    with override_settings(SUREFOOT=data):
        assert SurefootThrottle().allow_request(_drf_request("k"), None) is True
