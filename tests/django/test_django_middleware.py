"""``IdempotencyMiddleware``, ``RateLimitMiddleware``, the decorators and
``ProblemMiddleware`` through Django's own test client."""

from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.test import Client, override_settings

JSON = "application/json"


def _key() -> str:
    return uuid.uuid4().hex


def _client() -> Client:
    """A client of its own principal (its own API key): its own buckets and keys."""
    return Client(HTTP_X_API_KEY=f"key-{uuid.uuid4().hex}")


def test_a_keyed_post_executes_once_and_replays_byte_for_byte(executions: list) -> None:
    client, key = _client(), _key()
    first = client.post("/charges", b'{"amount": 5}', JSON, HTTP_IDEMPOTENCY_KEY=key)
    again = client.post("/charges", b'{"amount":5}', JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again["Content-Type"] == first["Content-Type"] == JSON
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert executions == [("charge", b'{"amount": 5}')]


def test_keys_are_scoped_by_principal(executions: list) -> None:
    key = _key()
    for client in (_client(), _client()):
        response = client.post("/charges", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response
    assert len(executions) == 2


def test_refusals_are_problems_from_the_catalogue(executions: list) -> None:
    client, key = _client(), _key()
    missing = client.post("/charges", b"{}", JSON)
    assert missing.status_code == 400
    assert missing["Content-Type"] == "application/problem+json"
    assert json.loads(missing.content)["code"] == "idempotency_key_missing"
    assert client.post("/charges", b'{"a": 1}', JSON, HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    reused = client.post("/charges", b'{"a": 2}', JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert reused.status_code == 422
    assert json.loads(reused.content)["code"] == "idempotency_key_reused"
    assert "X-Request-Id" in reused
    assert executions == [("charge", b'{"a": 1}')]


def test_a_streamed_response_is_recorded_and_replayed(executions: list) -> None:
    client, key = _client(), _key()
    first = client.post("/stream", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == 201
    assert b"".join(first.streaming_content) == b'{"streamed":true}'
    first.close()  # what the WSGI server does: the record is settled by then
    again = client.post("/stream", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert again.status_code == 201
    assert again.content == b'{"streamed":true}'
    assert again["Idempotent-Replayed"] == "true"
    assert [name for name, _ in executions] == ["stream"]


def test_an_unknown_outcome_is_never_executed_again(executions: list) -> None:
    client, key = _client(), _key()
    assert client.post("/unknown", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key).status_code == 500
    again = client.post("/unknown", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert again.status_code == 409
    assert json.loads(again.content)["code"] == "idempotency_outcome_unknown"
    assert len(executions) == 1


def test_a_non_canonical_path_is_routed_as_its_canonical_form(executions: list) -> None:
    client, key = _client(), _key()
    first = client.post("/./charges", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    again = client.post("/charges", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert len(executions) == 1


def test_a_rate_limit_counts_and_refuses_with_problem_and_headers() -> None:
    client = _client()
    answers = [client.get("/limited") for _ in range(31)]
    assert [a.status_code for a in answers] == [201] * 30 + [429]
    assert answers[0]["RateLimit-Policy"] == '"shared";q=30;w=60'
    assert answers[0]["RateLimit"].startswith('"shared";r=29;')
    refused = answers[-1]
    assert refused["Content-Type"] == "application/problem+json"
    problem = json.loads(refused.content)
    assert problem["code"] == "rate_limit_exceeded"
    assert refused["Retry-After"] == str(problem["retry_after"])
    assert f"t={refused['Retry-After']}" in refused["RateLimit"]


def test_a_route_no_policy_covers_has_no_rate_limit_headers() -> None:
    response = _client().post("/charges", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=_key())
    assert "RateLimit" not in response


def test_idempotent_protects_a_single_view(executions: list) -> None:
    client, key = _client(), _key()
    assert client.post("/decorated", b"{}", JSON).status_code == 400
    first = client.post("/decorated", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    again = client.post("/decorated", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert len(executions) == 1


def test_idempotent_steps_aside_for_the_middleware(executions: list) -> None:
    # POST /both is protected by the middleware's default policy too: one reservation.
    client, key = _client(), _key()
    first = client.post("/both", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    again = client.post("/both", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert len(executions) == 1


def test_rate_limit_limits_a_single_view() -> None:
    client = _client()
    answers = [client.get("/decorated-limited") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    policy = "_django_views.decorated_limited"
    assert answers[0]["RateLimit-Policy"] == f'"{policy}";q=2;w=60'
    assert json.loads(answers[2].content)["policy"] == policy


def test_a_surefoot_error_a_view_raises_is_a_problem() -> None:
    # transactional_claim without a key raises IdempotencyKeyMissing: ProblemMiddleware
    # answers it (the view's transaction rolled back).
    response = _client().post("/orders", b'{"item": "x"}', JSON)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert json.loads(response.content)["code"] == "idempotency_key_missing"


def test_a_streamed_response_holds_its_concurrency_slot_until_closed() -> None:
    inflight = {"name": "inflight", "limits": ["1/minute"], "algorithm": "concurrency"}
    data = {
        **settings.SUREFOOT,
        "rate_limit": {"policies": [{**inflight, "routes": ["GET /feed"]}]},
    }
    with override_settings(SUREFOOT=data):
        client = _client()
        first = client.get("/feed")
        assert first.status_code == 200
        second = client.get("/feed")
        assert second.status_code == 429
        assert json.loads(second.content)["code"] == "concurrency_limit_exceeded"
        assert b"".join(first.streaming_content) == b"ab"
        first.close()  # the server closes the response: the slot goes back
        third = client.get("/feed")
        assert third.status_code == 200
        third.close()


def test_a_streamed_response_closed_early_releases_its_key(executions: list) -> None:
    # The client went away mid-stream: the view's work may be done, and the route's
    # on_server_error ("release", the in-process default) lets a retry run.
    client, key = _client(), _key()
    first = client.post("/stream", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert next(iter(first.streaming_content)) == b'{"streamed":'
    first.close()
    again = client.post("/stream", b"{}", JSON, HTTP_IDEMPOTENCY_KEY=key)
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert len(executions) == 2
