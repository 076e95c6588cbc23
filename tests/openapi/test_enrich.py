"""``enrich`` on hand-made documents: each policy setting, table-driven, against what the
middleware does with it; the document's own declarations and names left alone."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from surefoot.errors import ConfigurationError
from surefoot.idempotency import IdempotencyPolicy
from surefoot.openapi import PROBLEM_SCHEMA, enrich
from surefoot.ratelimit import Limit, RateLimitPolicy


def _doc(*paths: str, version: str = "3.0.3", **operation: Any) -> dict[str, Any]:
    """A document with a ``post`` and a ``get`` on each path, sharing one ``responses``
    dict (as a generated document may: ``enrich`` copies them apart)."""
    op = {"responses": {"200": {"description": "OK"}}, **operation}
    return {
        "openapi": version,
        "info": {"title": "t", "version": "1"},
        "paths": {p: {"summary": "s", "post": dict(op), "get": dict(op)} for p in paths},
    }


def _codes(doc: dict[str, Any], path: str = "/x", method: str = "post") -> dict[str, list[str]]:
    responses = doc["paths"][path][method]["responses"]
    return {s: r["x-surefoot-problems"] for s, r in responses.items() if "x-surefoot-problems" in r}


KEY = ["idempotency_key_invalid", "idempotency_key_missing"]
CONFLICT = [
    "idempotency_outcome_unknown",
    "idempotency_request_in_progress",
    "idempotency_response_not_stored",
]
STORE = ["store_capacity_exceeded", "store_unavailable"]


@pytest.mark.parametrize(
    ("policy", "changed", "required"),
    [
        (IdempotencyPolicy(), {}, True),
        # A keyless request passes through (rollout) or is let through (not required).
        (IdempotencyPolicy(rollout=True), {"400": ["idempotency_key_invalid"]}, False),
        (IdempotencyPolicy(required=False), {"400": ["idempotency_key_invalid"]}, False),
        # The key may come in the body: the header is not required, keys may disagree.
        (
            IdempotencyPolicy(body_field="key"),
            {"400": ["idempotency_key_ambiguous", *KEY]},
            False,
        ),
        # Nothing is ever left outcome unknown.
        (
            IdempotencyPolicy(on_lease_expiry="reexecute", on_server_error="store"),
            {"409": CONFLICT[1:]},
            True,
        ),
        (
            IdempotencyPolicy(max_records_per_principal=10),
            {"429": ["idempotency_records_exceeded"]},
            True,
        ),
        (
            IdempotencyPolicy(max_unknown_per_principal=10),
            {"429": ["idempotency_records_exceeded"]},
            True,
        ),
        # The store down: executed unprotected, never a 503 store_unavailable.
        (IdempotencyPolicy(on_store_error="fail_open"), {"503": STORE[:1]}, True),
    ],
)
def test_each_idempotency_setting_declares_what_the_middleware_answers(
    policy: IdempotencyPolicy, changed: dict[str, list[str]], required: bool
) -> None:
    doc = enrich(_doc("/x"), idempotency=policy)
    validate(doc)
    expected = {
        "400": KEY,
        "409": CONFLICT,
        "413": ["request_body_too_large"],
        "422": ["idempotency_key_reused"],
        "503": STORE,
        **changed,
    }
    assert _codes(doc) == expected
    assert _codes(doc, method="get") == {}
    (parameter,) = doc["paths"]["/x"]["post"]["parameters"]
    name = parameter["$ref"].rpartition("/")[2]
    assert doc["components"]["parameters"][name]["required"] is required
    ok = doc["paths"]["/x"]["post"]["responses"]["200"]["headers"]
    assert ("Idempotency-Status" in ok) is (policy.on_store_error == "fail_open")


@pytest.mark.parametrize(
    ("policies", "codes"),
    [
        ([RateLimitPolicy("p", limits=["1/second"])], {"429": ["rate_limit_exceeded"]}),
        # A shadow policy never refuses and its limits are never shown.
        ([RateLimitPolicy("p", limits=["1/second"], shadow=True)], {}),
        ([RateLimitPolicy("p", limits=["1/second"], routes=["GET /x"])], {}),
        ([RateLimitPolicy("p", limits=["1/second"], exempt=["POST /x"])], {}),
        (
            [
                RateLimitPolicy(
                    "p",
                    limits=["1/second"],
                    tiers={"free": [Limit(5, 86400, algorithm="quota", period="day")]},
                    overrides={"big": [Limit(2, 1, algorithm="concurrency")]},
                    on_store_error="fail_closed",
                )
            ],
            {
                "429": ["concurrency_limit_exceeded", "quota_exceeded", "rate_limit_exceeded"],
                "503": ["store_unavailable"],
            },
        ),
    ],
)
def test_each_rate_limit_setting_declares_what_the_middleware_answers(
    policies: list[RateLimitPolicy], codes: dict[str, list[str]]
) -> None:
    doc = enrich(_doc("/x"), rate_limits=policies)
    validate(doc)
    assert _codes(doc) == codes
    for response in doc["paths"]["/x"]["post"]["responses"].values():
        assert ("RateLimit" in response.get("headers", {})) is bool(codes)


@pytest.mark.parametrize(
    ("headers", "legacy", "expected"),
    [
        (True, False, {"RateLimit", "RateLimit-Policy"}),
        (
            True,
            True,
            {
                "RateLimit",
                "RateLimit-Policy",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            },
        ),
        (False, False, set()),
    ],
)
def test_the_rate_limit_fields_follow_the_middlewares_settings(
    headers: bool, legacy: bool, expected: set[str]
) -> None:
    policies = [RateLimitPolicy("p", limits=["1/second"])]
    doc = enrich(_doc("/x"), rate_limits=policies, headers=headers, legacy_headers=legacy)
    assert set(doc["paths"]["/x"]["get"]["responses"]["200"].get("headers", {})) == expected


def test_routes_are_matched_as_the_middleware_matches_them() -> None:
    routes = {"POST /users/me": None, "/files/*": IdempotencyPolicy(required=False)}
    doc = enrich(
        _doc("/users/me", "/users/{id}", "/Users/me/", "/files/{name}"), idempotency_routes=routes
    )
    # The default policy is the middleware's: IdempotencyPolicy().
    assert _codes(doc, "/users/{id}")["400"] == KEY
    assert _codes(doc, "/users/me") == {}
    # An unprotected route is strict: another spelling of it is still protected.
    assert _codes(doc, "/Users/me/")["400"] == KEY
    assert _codes(doc, "/files/{name}")["400"] == ["idempotency_key_invalid"]


def test_head_is_matched_as_get() -> None:
    doc = _doc()
    doc["paths"]["/x"] = {"head": {"responses": {"200": {"description": "OK"}}}}
    out = enrich(doc, rate_limits=[RateLimitPolicy("p", limits=["1/s"], routes=["GET /x"])])
    assert _codes(out, method="head") == {"429": ["rate_limit_exceeded"]}


def test_no_middleware_no_change() -> None:
    assert enrich(_doc("/x")) == _doc("/x")


def test_what_the_app_declared_wins() -> None:
    doc = _doc("/x")
    post = doc["paths"]["/x"]["post"]
    post["responses"] = {
        "default": {"description": "Anything"},
        "4XX": {"description": "Client errors"},
        "409": {
            "description": "Mine",
            "content": {"application/problem+json": {"schema": {"type": "object"}}},
            "headers": {"retry-after": {"schema": {"type": "string"}}},
        },
        "422": {"$ref": "#/components/responses/Invalid"},
        "200": {"description": "OK"},
    }
    post["parameters"] = [{"$ref": "#/components/parameters/Key"}]
    doc["components"] = {
        "responses": {"Invalid": {"description": "Invalid"}},
        "parameters": {"Key": {"name": "idempotency-key", "in": "header", "schema": {}}},
    }
    limits = [RateLimitPolicy("p", limits=["1/s"])]
    out = enrich(doc, idempotency=IdempotencyPolicy(), rate_limits=limits)
    validate(out)
    responses = out["paths"]["/x"]["post"]["responses"]
    assert list(responses) == ["200", "400", "409", "413", "422", "429", "503", "4XX", "default"]
    assert responses["409"]["description"] == "Mine"
    assert responses["409"]["content"] == post["responses"]["409"]["content"]
    assert set(responses["409"]["headers"]) == {
        "retry-after",
        "X-Request-Id",
        "Idempotent-Replayed",
        "RateLimit",
        "RateLimit-Policy",
    }
    assert responses["422"] == {"$ref": "#/components/responses/Invalid"}
    assert out["paths"]["/x"]["post"]["parameters"] == post["parameters"]
    assert "Idempotent-Replayed" in responses["default"]["headers"]


def test_a_key_parameter_of_the_path_item_counts() -> None:
    doc = _doc("/x")
    doc["paths"]["/x"]["parameters"] = [
        {"name": "Idempotency-Key", "in": "query", "schema": {"type": "string"}},
        {"$ref": "#/components/parameters/Gone"},
        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
    ]
    out = enrich(doc, idempotency=IdempotencyPolicy())
    assert "parameters" not in out["paths"]["/x"]["post"]


def test_an_operation_without_responses_gets_them() -> None:
    doc = _doc("/x")
    del doc["paths"]["/x"]["post"]["responses"]
    out = enrich(doc, rate_limits=[RateLimitPolicy("p", limits=["1/s"])])
    assert list(out["paths"]["/x"]["post"]["responses"]) == ["429"]


def test_a_taken_component_name_gets_the_prefix() -> None:
    doc = _doc("/x", version="3.1.0")
    doc["components"] = {"schemas": {"Problem": {"type": "string"}}}
    out = enrich(doc, idempotency=IdempotencyPolicy())
    validate(out)
    assert out["components"]["schemas"]["Problem"] == {"type": "string"}
    assert out["components"]["schemas"]["SurefootProblem"] == PROBLEM_SCHEMA
    media = out["paths"]["/x"]["post"]["responses"]["400"]["content"]["application/problem+json"]
    assert media["schema"] == {"$ref": "#/components/schemas/SurefootProblem"}
    assert enrich(out, idempotency=IdempotencyPolicy()) == out


def test_a_name_taken_twice_over_is_refused() -> None:
    doc = _doc("/x")
    doc["components"] = {"headers": {"RateLimit": {}, "SurefootRateLimit": {}}}
    with pytest.raises(ConfigurationError, match="'RateLimit' and 'SurefootRateLimit'"):
        enrich(doc, rate_limits=[RateLimitPolicy("p", limits=["1/s"])])


def test_a_custom_key_header_gets_a_parameter_of_its_own() -> None:
    policy = IdempotencyPolicy(header="X-Key!", body_field="key")
    out = enrich(_doc("/x"), idempotency=policy)
    validate(out)
    assert out["paths"]["/x"]["post"]["parameters"] == [
        {"$ref": "#/components/parameters/X-Key_.or-body.key.optional"}
    ]
    example = out["paths"]["/x"]["post"]["responses"]["400"]["content"]
    ambiguous = example["application/problem+json"]["examples"]["idempotency_key_ambiguous"]
    assert ambiguous["value"]["field"] == "key"
    assert ambiguous["value"]["header"] == "X-Key!"


@pytest.mark.parametrize("version", [None, "2.0", 3])
def test_only_openapi_3_is_enriched(version: object) -> None:
    doc = _doc("/x")
    doc["openapi"] = version
    with pytest.raises(ConfigurationError, match=r"OpenAPI 3\.x"):
        enrich(doc)
